"""Fixtures of the DICOMweb tests: clients by role, sample files stored through the one ingest path.

`put("CT_small.dcm")` stores a copy of one of pydicom's bundled files, re-labelled into the
test's study (a new series and SOP Instance UID, as a modality would label it), through
PACSLiteService.ingest_image, and returns what a test needs to check an answer against:
the image row, the exact bytes stored, and a path to those bytes for pydicom and dcmdump.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pydicom
import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.test import Client

from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import RadiologyImage, RadiologyOrder, RadiologyStudy
from apps.radiology.operations.demo import jpeg_with_exif
from apps.radiology.pacs_lite_service import DeclaredImage, PACSLiteService
from apps.radiology.tests.api_fixtures import token_client
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.factories import relabelled

API = "/api/v1/radiology/dicomweb"
PHOTO = "photo.jpg"


@dataclass(frozen=True)
class Stored:
    """One stored instance and the exact bytes that were ingested for it."""

    image: RadiologyImage
    content: bytes
    path: Path

    @property
    def study_uid(self) -> str:
        return self.image.series.study.study_uid

    @property
    def series_uid(self) -> str:
        return self.image.series.series_uid

    @property
    def image_uid(self) -> str:
        return self.image.image_uid

    @property
    def study(self) -> RadiologyStudy:
        return self.image.series.study

    def study_url(self, suffix: str = "") -> str:
        return f"{API}/studies/{self.study_uid}{suffix}"

    def series_url(self, suffix: str = "") -> str:
        return f"{API}/studies/{self.study_uid}/series/{self.series_uid}{suffix}"

    def url(self, suffix: str = "") -> str:
        return f"{API}/studies/{self.study_uid}/series/{self.series_uid}/instances/{self.image_uid}{suffix}"

    def absolute(self, suffix: str = "") -> str:
        return f"http://testserver{self.url(suffix)}"

    def dataset(self) -> pydicom.Dataset:
        return pydicom.dcmread(self.path)


class Put(Protocol):
    def __call__(
        self,
        name: str,
        *,
        order: RadiologyOrder | None = ...,
        series_uid: str | None = ...,
        instance_number: int = ...,
        declared: DeclaredImage | None = ...,
        content: bytes | None = ...,
        **changes: Any,
    ) -> Stored: ...


@dataclass(frozen=True)
class World:
    """Three patients' studies that the QIDO-RS and C-FIND tests search (each file builds its own)."""

    a_ct1: Stored
    a_ct2: Stored
    a_mr: Stored
    b_mr: Stored
    c_ct: Stored

    @property
    def a(self) -> str:
        return self.a_ct1.study_uid

    @property
    def b(self) -> str:
        return self.b_mr.study_uid

    @property
    def c(self) -> str:
        return self.c_ct.study_uid


def patient_order(make_order: Any, first: str, last: str, birth: dt.date | None) -> RadiologyOrder:
    """A new order of a new patient with this name and birth date."""
    order: RadiologyOrder = make_order(first_name=first, last_name=last)
    if birth is not None:
        order.visit.patient.date_of_birth = birth
        order.visit.patient.save()
    return order


@pytest.fixture
def put(make_order: MakeOrder, tmp_path: Path) -> Put:
    """Store a re-labelled pydicom sample (or PHOTO: demo.jpeg_with_exif(), or `content`) in an order's study.

    Without `order`, every call of one test goes to the same order (one study); each call
    gets its own series unless `series_uid` is given.
    """
    default: list[RadiologyOrder] = []
    study_uids: dict[int, str] = {}
    folder = tmp_path / "ingested"
    folder.mkdir()

    def _put(
        name: str,
        *,
        order: RadiologyOrder | None = None,
        series_uid: str | None = None,
        instance_number: int = 1,
        declared: DeclaredImage | None = None,
        content: bytes | None = None,
        **changes: Any,
    ) -> Stored:
        if order is None:
            if not default:
                default.append(make_order())
            order = default[0]
        study_uid = study_uids.setdefault(order.pk, generate_uid())
        if name == PHOTO:
            content = content if content is not None else jpeg_with_exif(**changes)
            declared = declared or DeclaredImage(study_uid=study_uid, series_uid=series_uid, modality="OT")
            suffix = "jpg"
        else:
            content = relabelled(
                name,
                study_uid=study_uid,
                series_uid=series_uid or generate_uid(),
                instance_number=instance_number,
                **changes,
            )
            suffix = "dcm"
        result = PACSLiteService.ingest_image(
            order=order,
            stream=io.BytesIO(content),
            filename=f"{name.rsplit('.', 1)[0]}.{suffix}",
            uploaded_by=None,
            declared=declared,
        )
        image = RadiologyImage.objects.select_related("series__study").get(pk=result.image.pk)
        path = folder / f"{image.image_uid}.{suffix}"
        path.write_bytes(content)
        return Stored(image=image, content=content, path=path)

    return _put


@pytest.fixture
def doctor_client(doctor: AbstractBaseUser) -> Client:
    return token_client(doctor)


@pytest.fixture
def radtech_client(radtech: AbstractBaseUser) -> Client:
    return token_client(radtech)
