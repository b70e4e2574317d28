"""Helpers of the REST API tests: rows made directly, clients by role, frozen signing time.

The API endpoints never read image bytes (only the signed-URL endpoint does), so most API
tests build study, series and image *rows* directly: fast, and exact about every value.
Tests of bytes over HTTP (test_file_views.py) ingest real files instead.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from apps.radiology.access import signing
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import (
    DICOM_MIME_TYPE,
    RadiologyImage,
    RadiologyOrder,
    RadiologySeries,
    RadiologyStudy,
    StudyDelivery,
)
from apps.radiology.pacs_lite_service import PACSLiteService

API = "/api/v1"
STUDIES = f"{API}/radiology/studies/"
TOKEN_URL = f"{API}/auth/token/"

NOT_AUTHENTICATED = {"detail": "Authentication credentials were not provided.", "code": "not_authenticated"}
PERMISSION_DENIED = {
    "detail": "Only doctors and radiology technicians may view radiology images.",
    "code": "permission_denied",
}
INVALID_EXPIRES_IN = {
    "detail": "expires_in must be an integer from 1 to 86400 seconds.",
    "code": "invalid_expires_in",
}
INVALID_SIGNATURE = {"detail": "This image link is invalid or has expired.", "code": "invalid_signature"}

# A fixed "now" for signing (2026-02-01T00:00:00Z), so expiry times in URLs are exact.
FROZEN_NOW = 1_769_904_000

_serial = itertools.count(1)


def method_not_allowed(method: str) -> dict[str, str]:
    return {"detail": f'Method "{method}" not allowed.', "code": "method_not_allowed"}


def study_url(study: RadiologyStudy, suffix: str = "") -> str:
    return f"{STUDIES}{study.pk}/{suffix}"


def image_url_endpoint(image: RadiologyImage) -> str:
    return f"{API}/radiology/images/{image.pk}/url/"


def make_study(
    order: RadiologyOrder,
    *,
    created_at: dt.datetime | None = None,
    study_date: dt.date | None = None,
    modality: str = "",
    study_description: str = "",
) -> RadiologyStudy:
    """The order's study through the service (patient snapshot included), optionally back-dated."""
    study = PACSLiteService.create_study_for_order(
        radiology_order=order,
        study_uid=generate_uid(),
        study_description=study_description,
        modality=modality,
        study_date=study_date,
    )
    if created_at is not None:
        RadiologyStudy.objects.filter(pk=study.pk).update(created_at=created_at)
        study.refresh_from_db()
    return study


def make_series(
    study: RadiologyStudy, *, series_number: int, series_description: str = "", modality: str = "CT"
) -> RadiologySeries:
    return RadiologySeries.objects.create(
        study=study,
        series_uid=generate_uid(),
        series_number=series_number,
        series_description=series_description,
        modality=modality,
    )


def make_image_row(
    series: RadiologySeries, *, instance_number: int, mime_type: str = DICOM_MIME_TYPE
) -> RadiologyImage:
    """An image row with no file behind it (enough for every endpoint but the file one)."""
    image_uid = generate_uid()
    extension = "dcm" if mime_type == DICOM_MIME_TYPE else "jpg"
    filename = f"image_{next(_serial)}.{extension}"
    return RadiologyImage.objects.create(
        series=series,
        image_uid=image_uid,
        instance_number=instance_number,
        file_key=f"radiology/{series.study.study_uid}/{series.series_uid}/{image_uid}/{filename}",
        filename=filename,
        file_size=1000 + instance_number,
        mime_type=mime_type,
        checksum=hashlib.sha256(image_uid.encode()).hexdigest(),
    )


def make_study_with_images(order: RadiologyOrder, *, images: int) -> RadiologyStudy:
    """One study with one series of `images` image rows."""
    study = make_study(order)
    series = make_series(study, series_number=1)
    for number in range(1, images + 1):
        make_image_row(series, instance_number=number)
    return study


def token_client(user: Any) -> Client:
    """A client that authenticates with `Authorization: Token <key>` and carries no cookie."""
    token, _created = Token.objects.get_or_create(user=user)
    return Client(headers={"Authorization": f"Token {token.key}"})


def local_iso(value: dt.datetime) -> str:
    """A datetime as DRF renders it: in the current time zone, ISO 8601, UTC as Z."""
    text = timezone.localtime(value).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def freeze_signing_time(monkeypatch: pytest.MonkeyPatch, now: float = FROZEN_NOW) -> Callable[[float], None]:
    """Make apps.radiology.access.signing see `now` as the time; return a setter to move it.

    Only the signing module's `time` is replaced, so everything else (and the live server's
    socket timeouts) keeps the real clock; the live server runs in a thread of this process,
    so it sees the same replacement.
    """
    clock = SimpleNamespace(now=float(now))
    monkeypatch.setattr(signing, "time", SimpleNamespace(time=lambda: clock.now))

    def move_to(value: float) -> None:
        clock.now = float(value)

    return move_to


def study_body(study: RadiologyStudy) -> dict[str, Any]:
    """What the API must answer for a study, read from its database row."""
    study.refresh_from_db()
    return {
        "id": study.pk,
        "study_uid": study.study_uid,
        "radiology_order": study.radiology_order_id,
        "study_description": study.study_description,
        "modality": study.modality,
        "study_date": study.study_date.isoformat() if study.study_date else None,
        "patient_name": study.patient_name,
        "patient_id": study.patient_id,
        "patient_birth_date": study.patient_birth_date.isoformat() if study.patient_birth_date else None,
        "patient_sex": study.patient_sex,
        "source_clinic": study.source_clinic,
        "deliveries": [delivery_body(delivery) for delivery in study.deliveries.order_by("destination")],
        "created_at": local_iso(study.created_at),
    }


def delivery_body(delivery: StudyDelivery) -> dict[str, Any]:
    """What the API must answer for a study's delivery to a forwarding destination."""
    failed = delivery.state == StudyDelivery.State.FAILED
    return {
        "destination": delivery.destination,
        "state": delivery.state,
        "images_sent": delivery.images_sent,
        "images_total": delivery.images_total,
        "summary": delivery.summary,
        "delivered_at": local_iso(delivery.delivered_at) if delivery.delivered_at else None,
        "error": {"code": delivery.error_code, "detail": delivery.error_detail} if failed else None,
    }
