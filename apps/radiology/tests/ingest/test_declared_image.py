"""The declared-image fields: one definition (declared.py), honoured from upload sync to WADO-RS.

A device that says a JPEG is a photograph of a film (`photographed_film`) must get a
Secondary Capture whose ConversionType (0008,0064) is "DF"; without it the photo is a
screen capture, "SI". The serializer's fields, the upload's columns and the conversions
between them all come from `DeclaredImage`, so no field can again be accepted and dropped.
"""

from __future__ import annotations

import dataclasses
from types import EllipsisType
from typing import Any

import pytest
from rest_framework.test import APIClient

from apps.radiology.api.upload_serializers import UploadCreateSerializer
from apps.radiology.imagefiles.declared import DECLARED_FIELDS, DeclaredImage
from apps.radiology.models import JPEG_MIME_TYPE, RadiologyImage, RadiologyOrder, RadiologyUpload
from apps.radiology.operations.demo import jpeg_with_exif
from apps.radiology.tests.api_fixtures import token_client
from apps.radiology.tests.upload_helpers import DeviceFile, client_for, metadata, post_upload, put_whole

pytestmark = pytest.mark.django_db

PHOTO = DeviceFile("film_photo.jpg", jpeg_with_exif(), mime_type=JPEG_MIME_TYPE)
FILE_FIELDS = [
    "client_upload_id",
    "radiology_order",
    "accession_number",
    "filename",
    "file_size",
    "mime_type",
    "checksum",
]
# A tech's confirmation that a file naming another patient belongs to the order (test_identity.py).
CONFIRMATION_FIELDS = ["confirm_patient_mismatch", "patient_mismatch_reason"]
DICOMWEB = "/api/v1/radiology/dicomweb"


@pytest.fixture
def tech(radtech: Any) -> APIClient:
    return client_for(radtech)


@pytest.mark.parametrize(
    ("photographed_film", "stored", "conversion_type"),
    [(True, True, "DF"), (False, False, "SI"), (..., False, "SI")],
    ids=["photo-of-film", "said-not", "not-said"],
)
def test_photographed_film_in_upload_sync_is_the_conversion_type_in_wado_metadata(
    tech: APIClient,
    doctor: Any,
    order: RadiologyOrder,
    photographed_film: bool | EllipsisType,
    stored: bool,
    conversion_type: str,
) -> None:
    posted = post_upload(tech, metadata(order, PHOTO, photographed_film=photographed_film, modality="OT"))
    assert posted.status_code == 201, posted.json()
    upload = RadiologyUpload.objects.get(pk=posted.json()["id"])
    assert upload.photographed_film is stored  # kept on the upload until the bytes are in

    put = put_whole(tech, upload.pk, PHOTO.content)
    assert put.status_code == 201, put.json()
    image = put.json()["image"]
    assert RadiologyImage.objects.get(pk=image["id"]).image_metadata["conversion_type"] == conversion_type

    url = (
        f"{DICOMWEB}/studies/{image['study_uid']}/series/{image['series_uid']}/instances/{image['image_uid']}/metadata"
    )
    response = token_client(doctor).get(url, headers={"Accept": "application/dicom+json"})
    assert response.status_code == 200, response.content
    [instance] = response.json()
    assert instance["00080064"] == {"vr": "CS", "Value": [conversion_type]}
    assert instance["00080016"] == {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.7"]}  # Secondary Capture


def test_a_photographed_film_that_is_not_a_boolean_is_400(tech: APIClient, order: RadiologyOrder) -> None:
    response = post_upload(tech, metadata(order, PHOTO, photographed_film="perhaps"))

    assert response.status_code == 400
    assert response.json() == {
        "detail": "photographed_film: Must be a valid boolean.",
        "code": "invalid",
        "errors": {"photographed_film": [{"message": "Must be a valid boolean.", "code": "invalid"}]},
    }
    assert RadiologyUpload.objects.count() == 0


def test_the_serializer_and_the_upload_model_have_every_declared_field() -> None:
    declared = [each.name for each in dataclasses.fields(DeclaredImage)]

    assert list(DECLARED_FIELDS) == declared
    assert list(UploadCreateSerializer().fields) == FILE_FIELDS + CONFIRMATION_FIELDS + declared
    columns = {each.name for each in RadiologyUpload._meta.concrete_fields}
    assert set(declared) <= columns


def test_a_declared_image_survives_the_round_trip_through_upload_columns() -> None:
    declared = DeclaredImage(
        study_uid="1.2.3",
        series_description="Photo of film",
        series_number=3,
        instance_number=1,
        modality="OT",
        photographed_film=True,
    )

    columns = declared.columns()

    assert columns == {
        "study_uid": "1.2.3",
        "series_uid": "",  # a missing UID is a blank column ...
        "image_uid": "",
        "study_description": "",
        "series_description": "Photo of film",
        "series_number": 3,
        "instance_number": 1,
        "modality": "OT",
        "photographed_film": True,
    }
    assert DeclaredImage.from_columns(columns) == declared  # ... and no UID again when read back
    assert DeclaredImage.from_columns(DeclaredImage().columns()) == DeclaredImage()


def test_an_upload_row_becomes_the_declared_image_it_was_posted_with(tech: APIClient, order: RadiologyOrder) -> None:
    posted = post_upload(
        tech,
        metadata(order, PHOTO, series_uid="1.2.3.4", series_number=5, modality="OT", photographed_film=True),
    )
    assert posted.status_code == 201, posted.json()

    upload = RadiologyUpload.objects.get(pk=posted.json()["id"])

    assert DeclaredImage.from_row(upload) == DeclaredImage(
        series_uid="1.2.3.4", series_number=5, modality="OT", photographed_film=True
    )
