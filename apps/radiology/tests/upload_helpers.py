"""Helpers of the upload sync tests: request makers, expected bodies, staged objects.

The expected JSON bodies are written out from the database rows and the known file, not
produced by the API's serializers, so a test that compares against them checks the shape
as well as the values.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from rest_framework.response import Response
from rest_framework.test import APIClient

from apps.radiology.imagefiles.declared import DeclaredImage
from apps.radiology.ingest.upload_sync import STAGING_PREFIX, UploadMetadata, upload_start
from apps.radiology.models import DICOM_MIME_TYPE, RadiologyImage, RadiologyOrder, RadiologyUpload
from apps.radiology.tests.factories import stored_keys

UPLOADS = "/api/v1/radiology/uploads/"

NOT_AUTHENTICATED = {"detail": "Authentication credentials were not provided.", "code": "not_authenticated"}
UPLOAD_PERMISSION_DENIED = {
    "detail": "Only radiology technicians may upload radiology images.",
    "code": "permission_denied",
}
UPLOAD_NOT_FOUND = {"detail": "No RadiologyUpload matches the given query.", "code": "not_found"}
CHECKSUM_MISMATCH = {
    "detail": "The SHA-256 of the bytes received does not match the declared checksum.",
    "code": "checksum_mismatch",
}
SIZE_MISMATCH = {"detail": "The bytes received do not match the declared file size.", "code": "size_mismatch"}
INVALID_CONTENT_RANGE = {
    "detail": "Content-Range must be 'bytes START-END/TOTAL' with TOTAL equal to the declared file_size.",
    "code": "invalid_content_range",
}
IMAGE_CONFLICT = {
    "detail": "An image with this UID is already stored with different content.",
    "code": "image_conflict",
}
STUDY_MISMATCH = {
    "detail": "The image belongs to another study than the one attached to this order.",
    "code": "study_mismatch",
}


def range_mismatch(received_bytes: int) -> dict[str, Any]:
    return {
        "detail": "This chunk does not start where the received bytes end; resume from received_bytes.",
        "code": "range_mismatch",
        "received_bytes": received_bytes,
    }


def incomplete_body(received_bytes: int) -> dict[str, Any]:
    return {
        "detail": "The request body ended before its declared length; resume from received_bytes.",
        "code": "incomplete_body",
        "received_bytes": received_bytes,
    }


def sha256_hex(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@dataclass(frozen=True)
class DeviceFile:
    """A file as a device holds it: bytes, the name it sends, what it declares."""

    filename: str
    content: bytes
    mime_type: str = DICOM_MIME_TYPE
    declared: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def checksum(self) -> str:
        return sha256_hex(self.content)


def metadata(
    order: RadiologyOrder | int,
    device_file: DeviceFile,
    *,
    client_upload_id: uuid.UUID | str | EllipsisType | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The JSON a device posts for `device_file` (a fresh client_upload_id unless given).

    An override whose value is `...` leaves that field out of the JSON.
    """
    payload: dict[str, Any] = {
        "client_upload_id": ... if client_upload_id is ... else str(client_upload_id or uuid.uuid4()),
        "radiology_order": order if isinstance(order, int) else order.pk,
        "filename": device_file.filename,
        "file_size": device_file.size,
        "mime_type": device_file.mime_type,
        "checksum": device_file.checksum,
        **device_file.declared,
    }
    payload.update(overrides)
    return {key: value for key, value in payload.items() if value is not ...}


def client_for(user: AbstractBaseUser | None) -> APIClient:
    """An API client authenticated as `user` (anonymous when None)."""
    client = APIClient()
    if user is not None:
        client.force_authenticate(user=user)
    return client


def upload_url(upload_id: int) -> str:
    return f"{UPLOADS}{upload_id}/"


def binary_url(upload_id: int) -> str:
    return f"{UPLOADS}{upload_id}/binary/"


def post_upload(client: APIClient, payload: dict[str, Any]) -> Response:
    return client.post(UPLOADS, payload, format="json")


def put_whole(client: APIClient, upload_id: int, body: bytes) -> Response:
    return client.put(binary_url(upload_id), data=body, content_type="application/octet-stream")


def put_chunk(client: APIClient, upload_id: int, body: bytes, content_range: str) -> Response:
    return client.put(
        binary_url(upload_id),
        data=body,
        content_type="application/octet-stream",
        headers={"Content-Range": content_range},
    )


def put_range(client: APIClient, upload_id: int, content: bytes, start: int, end: int) -> Response:
    """PUT bytes START..END (inclusive) of `content` with the matching Content-Range."""
    return put_chunk(client, upload_id, content[start : end + 1], f"bytes {start}-{end}/{len(content)}")


def send_in_chunks(client: APIClient, upload_id: int, content: bytes, chunk_size: int) -> list[Response]:
    """Send the whole file chunk by chunk; return every response."""
    responses = []
    for start in range(0, len(content), chunk_size):
        end = min(start + chunk_size, len(content)) - 1
        responses.append(put_range(client, upload_id, content, start, end))
    return responses


def staged_keys(upload_id: int | None = None) -> list[str]:
    """Keys of staged chunks in the radiology store (of one upload, or of all)."""
    prefix = f"{STAGING_PREFIX}/" if upload_id is None else f"{STAGING_PREFIX}/{upload_id}/"
    return [key for key in stored_keys() if key.startswith(prefix)]


def chunk_key(upload_id: int, start: int) -> str:
    """The documented key of a staged chunk: staging/uploads/{id}/{start, 15 digits}."""
    return f"staging/uploads/{upload_id}/{start:015d}"


def image_body(image: RadiologyImage) -> dict[str, Any]:
    """The `image` of an upload body, from the row."""
    return {
        "id": image.pk,
        "image_uid": image.image_uid,
        "series_uid": image.series.series_uid,
        "study_uid": image.series.study.study_uid,
        "study": image.series.study_id,
        "file_key": image.file_key,
        "file_size": image.file_size,
        "mime_type": image.mime_type,
        "checksum": image.checksum,
    }


def upload_body(
    upload: RadiologyUpload,
    *,
    status: str,
    received_bytes: int,
    image: RadiologyImage | None = None,
    error: dict[str, str] | None = None,
    held: bool = False,
) -> dict[str, Any]:
    """An upload's JSON: id, client id and size from the row; the rest as the test expects it."""
    return {
        "id": upload.pk,
        "client_upload_id": str(upload.client_upload_id),
        "status": status,
        "received_bytes": received_bytes,
        "file_size": upload.file_size,
        "image": image_body(image) if image is not None else None,
        "error": error,
        "held": held,
    }


def pending_body(upload: RadiologyUpload, received_bytes: int = 0) -> dict[str, Any]:
    return upload_body(upload, status="pending", received_bytes=received_bytes)


def completed_body(upload: RadiologyUpload, image: RadiologyImage) -> dict[str, Any]:
    return upload_body(upload, status="completed", received_bytes=upload.file_size, image=image)


def failed_body(upload: RadiologyUpload, error: dict[str, Any]) -> dict[str, Any]:
    return upload_body(
        upload, status="failed", received_bytes=0, error={"code": error["code"], "detail": error["detail"]}
    )


def start_upload(user: Any, order: RadiologyOrder, device_file: DeviceFile, **declared: Any) -> RadiologyUpload:
    """A new upload of `device_file` under `order` declared through the service (not the API)."""
    upload, created = upload_start(
        user=user,
        metadata=UploadMetadata(
            client_upload_id=uuid.uuid4(),
            radiology_order_id=order.pk,
            filename=device_file.filename,
            file_size=device_file.size,
            mime_type=device_file.mime_type,
            checksum=device_file.checksum,
            declared=DeclaredImage(**declared),
        ),
    )
    assert created
    return upload
