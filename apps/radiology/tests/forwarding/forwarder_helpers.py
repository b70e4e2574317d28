"""Helpers of the forwarder's tests (test_client.py, test_forwarder.py): files, settings, accounts.

The far side is either this app in pytest-django's live_server (same database: forwarding an
image there is an idempotent repeat, found by accession with the same checksum, so the whole
protocol runs against the real endpoints) or far_side_stub.py, for faults on cue.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
from django.contrib.auth.models import Group
from PIL import Image
from rest_framework.authtoken.models import Token

from apps.radiology.access.permissions import FORWARDING_CLINIC_GROUP
from apps.radiology.imagefiles.declared import DeclaredImage
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import ForwardTask, RadiologyImage, RadiologyOrder, StudyDelivery
from apps.radiology.pacs_lite_service import PACSLiteService
from apps.radiology.tests.conftest import make_user
from apps.radiology.tests.factories import dataset_bytes, sample_bytes

DESTINATION = "regional"
STUB_TOKEN = "stub-token-0123456789abcdef"
CHUNK = 64 * 1024  # RADIOLOGY_FORWARD_MAX_CHUNK_BYTES in these tests: every chunk is this size (the smallest)


def native_ct(*, study_uid: str, series_uid: str, instance_number: int = 1, side: int = 320) -> bytes:
    """A CT with native (uncompressed) 16-bit pixels, side x side: a smooth body with a little noise,
    compressible as real CT is (CT_small.dcm's header, its pixels replaced)."""
    dataset = pydicom.dcmread(io.BytesIO(sample_bytes("CT_small.dcm")))
    rng = np.random.default_rng(instance_number)
    y, x = np.mgrid[0:side, 0:side]
    body = 900 + 200 * np.sin(x / 17.0) * np.cos(y / 23.0)
    pixels = (body + rng.normal(0, 6, (side, side))).astype(np.int16)
    image_uid = generate_uid()
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = series_uid
    dataset.SOPInstanceUID = image_uid
    dataset.file_meta.MediaStorageSOPInstanceUID = image_uid
    dataset.InstanceNumber = instance_number
    dataset.Rows = dataset.Columns = side
    dataset.PixelRepresentation = 1
    dataset.PixelData = pixels.tobytes()
    return dataset_bytes(dataset)


def noisy_jpeg(side: int = 480) -> bytes:
    """A photo that JPEG cannot shrink much (noise), over 64 KiB: several chunks, none worth compressing."""
    rng = np.random.default_rng(7)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def forward_to(settings: Any, url: str, token: str, *, rule: str = "all") -> None:
    """Configure one destination DESTINATION at `url` with `token` (before ingest: tasks are recorded then)."""
    settings.RADIOLOGY_FORWARD_DESTINATIONS = f"{DESTINATION}={rule}@{url}"
    settings.RADIOLOGY_FORWARD_TOKENS = {DESTINATION: token}
    settings.RADIOLOGY_FORWARD_MAX_CHUNK_BYTES = CHUNK


def clinic_account(username: str = "ikeja") -> str:
    """A forwarding clinic's account on the (same-database) far side; its token."""
    user = make_user(username)
    user.first_name = "Ikeja Clinic"
    user.save(update_fields=["first_name"])
    user.groups.add(Group.objects.get_or_create(name=FORWARDING_CLINIC_GROUP)[0])
    return Token.objects.create(user=user).key


def ingest(order: RadiologyOrder, content: bytes, filename: str, **declared: Any) -> RadiologyImage:
    result = PACSLiteService.ingest_image(
        order=order,
        stream=io.BytesIO(content),
        filename=filename,
        uploaded_by=None,
        declared=DeclaredImage(**declared),
    )
    return RadiologyImage.objects.get(pk=result.image.pk)


def task_of(image: RadiologyImage) -> ForwardTask:
    """The image's task, as claim_due hands it over (with its image, series, study and order)."""
    return ForwardTask.objects.select_related("image__series__study__radiology_order").get(image=image)


def task_row(task: ForwardTask) -> dict[str, Any]:
    """The columns of a task a test asserts (times apart)."""
    row = ForwardTask.objects.filter(pk=task.pk).values(
        "state", "attempts", "remote_upload_id", "resends", "wire_bytes", "error_code", "error_detail"
    )
    return dict(row.get())


def delivery_row(image: RadiologyImage) -> dict[str, Any]:
    row = StudyDelivery.objects.filter(study_id=image.series.study_id, destination=DESTINATION).values(
        "state", "images_total", "images_sent", "error_code", "error_detail"
    )
    return dict(row.get())
