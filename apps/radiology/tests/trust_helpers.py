"""Helpers of the trust tests (audit trail, revocation, permission matrix, storage checks).

`ingest_study(order, images=3)` stores re-labelled copies of pydicom's CT_small.dcm through
the one ingest path, so every DICOMweb and signed-URL answer is served from real bytes.
`event_row(event)` is an AuditEvent as a plain dict of every column but its id and time,
so a test states the whole row it expects.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.forms.models import model_to_dict
from django.test import Client

from apps.radiology.access import signing
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import AuditEvent, RadiologyImage, RadiologyOrder, RadiologySeries, RadiologyStudy
from apps.radiology.pacs_lite_service import PACSLiteService
from apps.radiology.tests.factories import relabelled

API = "/api/v1/radiology"
DICOMWEB = f"{API}/dicomweb"
SAMPLE = "CT_small.dcm"

INVALID_TOKEN = {"detail": "The viewer token is invalid, expired or revoked.", "code": "invalid_token"}

# Every column of an event with its empty value; a test overrides what it expects set.
EMPTY_EVENT: dict[str, Any] = {
    "user": None,
    "username": "",
    "role": "",
    "viewer_token_id": None,
    "channel": "",
    "action": "",
    "route": "",
    "method": "",
    "order_id": None,
    "study_id": None,
    "image_id": None,
    "upload_id": None,
    "study_uid": "",
    "series_uid": "",
    "image_uid": "",
    "query_keys": "",
    "unmatched_id": None,
    "reason": "",
    "client_address": "127.0.0.1",
    "status_code": 0,
    "outcome": "",
}


@dataclass(frozen=True)
class StoredStudy:
    """A study ingested through PACSLiteService: one series of `images` CT instances."""

    study: RadiologyStudy
    series: RadiologySeries
    images: list[RadiologyImage]
    contents: list[bytes]

    @property
    def image(self) -> RadiologyImage:
        return self.images[0]

    def study_url(self, suffix: str = "") -> str:
        return f"{DICOMWEB}/studies/{self.study.study_uid}{suffix}"

    def series_url(self, suffix: str = "") -> str:
        return self.study_url(f"/series/{self.series.series_uid}{suffix}")

    def instance_url(self, suffix: str = "", image: RadiologyImage | None = None) -> str:
        image = image or self.image
        return self.series_url(f"/instances/{image.image_uid}{suffix}")


def ingest_study(order: RadiologyOrder, *, images: int = 1, user: AbstractBaseUser | None = None) -> StoredStudy:
    """Store `images` CT instances in one new series of the order's study, in instance order."""
    study_uid = order.study.study_uid if hasattr(order, "study") else generate_uid()
    series_uid = generate_uid()
    stored: list[RadiologyImage] = []
    contents: list[bytes] = []
    for number in range(1, images + 1):
        content = relabelled(SAMPLE, study_uid=study_uid, series_uid=series_uid, instance_number=number)
        result = PACSLiteService.ingest_image(
            order=order, stream=io.BytesIO(content), filename=f"ct_{number}.dcm", uploaded_by=user
        )
        assert result.created
        stored.append(result.image)
        contents.append(content)
    series = RadiologySeries.objects.select_related("study").get(series_uid=series_uid)
    return StoredStudy(study=series.study, series=series, images=stored, contents=contents)


def issue_token(study: RadiologyStudy, *, user: AbstractBaseUser | None = None, expires_in: int = 600) -> str:
    return signing.issue_viewer_token(study=study, user=user, expires_in=expires_in)


def bearer_client(token: str, **kwargs: Any) -> Client:
    """A client that sends `Authorization: Bearer <viewer token>` and carries no cookie."""
    return Client(headers={"Authorization": f"Bearer {token}"}, **kwargs)


def event_row(event: AuditEvent) -> dict[str, Any]:
    """Every column of an event but id and time; UUIDs as they are, the user as its id."""
    row = model_to_dict(event, exclude=["id"])
    row.pop("at", None)
    return row


def expected_event(**values: Any) -> dict[str, Any]:
    unknown = set(values) - set(EMPTY_EVENT)
    assert not unknown, f"not AuditEvent columns: {unknown}"
    return {**EMPTY_EVENT, **values}


def refused_token_event(
    stored: StoredStudy, token_id: uuid.UUID, *, route: str = "dicomweb-study-metadata", **what: Any
) -> dict[str, Any]:
    """The event of a DICOMweb request (study metadata unless `route` says) with a refused (expired,
    revoked) viewer token: denied, and, the signature being good, naming the token by its id.
    `what`: the UIDs the URL names (by default the study's)."""
    return expected_event(
        role="viewer_token",
        viewer_token_id=token_id,
        channel="dicomweb",
        action="read",
        route=route,
        method="GET",
        status_code=401,
        outcome="denied",
        **(what or {"study_uid": stored.study.study_uid}),
    )


def only_event() -> AuditEvent:
    """The one event in the trail (fails if there are none or several)."""
    events = list(AuditEvent.objects.all())
    assert len(events) == 1, [event_row(event) for event in events]
    return events[0]


def column_values(event: AuditEvent) -> list[str]:
    """Every column value of an event as text, to look for things that must never be there."""
    return [str(getattr(event, field.attname)) for field in AuditEvent._meta.concrete_fields]
