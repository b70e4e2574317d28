"""Helpers of the front door's tests: studies with chosen patient, date, modality and image count."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.test import Client

from apps.radiology.models import RadiologyOrder, RadiologyStudy, RadiologyUpload, UnmatchedImage
from apps.radiology.tests.api_fixtures import make_image_row, make_series, make_study
from apps.radiology.tests.conftest import MakeOrder

STUDIES = "/radiology/studies/"
SEARCH = "/radiology/studies/search/"
FAILED = "/radiology/uploads/failed/"
SIGN_IN = "/sign-in/"
SIGN_OUT = "/sign-out/"


def make_listed_study(
    make_order: MakeOrder,
    *,
    first_name: str = "Ngozi",
    last_name: str = "Balogun",
    modality: str = "CT",
    study_date: dt.date | None = None,
    description: str = "",
    images: int = 1,
    created_at: dt.datetime | None = None,
) -> RadiologyStudy:
    """A study of a new patient, with `images` image rows in one series."""
    order = make_order(first_name=first_name, last_name=last_name, modality=modality)
    study = make_study(
        order, study_date=study_date, modality=modality, study_description=description, created_at=created_at
    )
    if images:
        series = make_series(study, series_number=1, modality=modality)
        for number in range(1, images + 1):
            make_image_row(series, instance_number=number)
    return study


def signed_in(user: AbstractBaseUser) -> Client:
    client = Client()
    client.force_login(user)
    return client


def failed_upload(order: RadiologyOrder, user: AbstractBaseUser, *, filename: str, code: str, detail: str) -> Any:
    return RadiologyUpload.objects.create(
        client_upload_id=uuid.uuid4(),
        uploaded_by=user,
        radiology_order=order,
        filename=filename,
        file_size=100,
        mime_type="application/dicom",
        checksum="0" * 64,
        status=RadiologyUpload.Status.FAILED,
        error_code=code,
        error_detail=detail,
        error_status=400,
    )


def unmatched_file(number: int, *, status: str = UnmatchedImage.Status.PENDING) -> UnmatchedImage:
    return UnmatchedImage.objects.create(
        file_key=f"unmatched/{number}.dcm",
        filename=f"{number}.dcm",
        file_size=10,
        checksum="0" * 64,
        source="import",
        study_uid=f"1.2.3.{number}",
        series_uid=f"1.2.3.{number}.1",
        image_uid=f"1.2.3.{number}.1.1",
        status=status,
    )


def listed_patients(body: str) -> list[str]:
    """The patient names of the list's rows, in order (each row's <strong>)."""
    rows = body.split('<tr data-study="')[1:]
    return [row.split("<strong>", 1)[1].split("</strong>", 1)[0] for row in rows]
