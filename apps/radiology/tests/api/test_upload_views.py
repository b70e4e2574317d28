"""The offline upload sync API: POST metadata, PUT the bytes (whole or chunked), GET the state.

Every answer is checked whole (status code and exact JSON body), and after every refusal
the test checks the rows (uploads, studies, series, images) and that the radiology store
holds nothing it should not: no image file and no staged chunk. Tests that store bytes run
on both stores (`radiology_store`: filesystem, and S3 through moto's server).
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import pytest
from rest_framework.test import APIClient

from apps.radiology.imagefiles.uids import generate_uid, uid_from_name
from apps.radiology.models import (
    DICOM_MIME_TYPE,
    JPEG_MIME_TYPE,
    RadiologyImage,
    RadiologyOrder,
    RadiologySeries,
    RadiologyStudy,
    RadiologyUpload,
)
from apps.radiology.operations.demo import jpeg_with_exif, relabelled_dicom
from apps.radiology.tests.conftest import IngestFile, MakeOrder
from apps.radiology.tests.factories import (
    assert_nothing_stored,
    edited_sample,
    read_stored,
    row_counts,
    sample_bytes,
    stored_keys,
)
from apps.radiology.tests.upload_helpers import (
    CHECKSUM_MISMATCH,
    IMAGE_CONFLICT,
    INVALID_CONTENT_RANGE,
    NOT_AUTHENTICATED,
    SIZE_MISMATCH,
    STUDY_MISMATCH,
    UPLOAD_NOT_FOUND,
    UPLOAD_PERMISSION_DENIED,
    UPLOADS,
    DeviceFile,
    binary_url,
    chunk_key,
    client_for,
    completed_body,
    failed_body,
    incomplete_body,
    metadata,
    pending_body,
    post_upload,
    put_chunk,
    put_range,
    put_whole,
    range_mismatch,
    send_in_chunks,
    staged_keys,
    upload_url,
)

CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
CT_SERIES = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
CT_IMAGE = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"

CT = DeviceFile("CT_small.dcm", sample_bytes("CT_small.dcm"))
MR = DeviceFile("MR_small.dcm", sample_bytes("MR_small.dcm"))
PHOTO = DeviceFile("film_photo.jpg", jpeg_with_exif(), mime_type=JPEG_MIME_TYPE)


@pytest.fixture
def tech(radtech: Any) -> APIClient:
    return client_for(radtech)


def start_upload(
    client: APIClient, order: RadiologyOrder, device_file: DeviceFile, **overrides: Any
) -> RadiologyUpload:
    """POST the metadata (201) and return the upload row."""
    response = post_upload(client, metadata(order, device_file, **overrides))
    assert response.status_code == 201, response.json()
    return RadiologyUpload.objects.get(pk=response.json()["id"])


def assert_only_image_files() -> None:
    """The store holds exactly the stored images' files: no staged chunk, no stray object."""
    assert sorted(RadiologyImage.objects.values_list("file_key", flat=True)) == stored_keys()


# --- POST: declaring an upload ------------------------------------------------------------


def test_post_declares_a_pending_upload(tech: APIClient, radtech: Any, order: RadiologyOrder) -> None:
    client_upload_id = uuid.uuid4()
    payload = metadata(
        order,
        CT,
        client_upload_id=client_upload_id,
        checksum=CT.checksum.upper(),
        study_uid=CT_STUDY,
        series_uid=CT_SERIES,
        image_uid=CT_IMAGE,
        study_description="Head CT",
        series_description="Axial",
        series_number=2,
        instance_number=7,
        modality="CT",
    )

    response = post_upload(tech, payload)

    upload = RadiologyUpload.objects.get()
    assert response.status_code == 201
    assert response.json() == {
        "id": upload.pk,
        "client_upload_id": str(client_upload_id),
        "status": "pending",
        "received_bytes": 0,
        "file_size": CT.size,
        "image": None,
        "error": None,
        "held": False,
    }
    assert (upload.uploaded_by, upload.radiology_order, upload.filename, upload.mime_type) == (
        radtech,
        order,
        "CT_small.dcm",
        DICOM_MIME_TYPE,
    )
    assert upload.checksum == CT.checksum  # stored lower-case whatever the device sent
    assert (upload.study_uid, upload.series_uid, upload.image_uid) == (CT_STUDY, CT_SERIES, CT_IMAGE)
    assert (upload.study_description, upload.series_description) == ("Head CT", "Axial")
    assert (upload.series_number, upload.instance_number, upload.modality) == (2, 7, "CT")
    assert (upload.chunk_offsets, upload.image, upload.error_code) == ([], None, "")
    assert row_counts() == (0, 0, 0)


def test_superuser_may_declare_an_upload(superuser: Any, order: RadiologyOrder) -> None:
    response = post_upload(client_for(superuser), metadata(order, CT))

    upload = RadiologyUpload.objects.get()
    assert response.status_code == 201
    assert response.json() == pending_body(upload)
    assert upload.uploaded_by == superuser


@pytest.mark.parametrize("role", ["doctor", "nurse"])
def test_doctor_and_nurse_may_not_upload(request: pytest.FixtureRequest, role: str, order: RadiologyOrder) -> None:
    client = client_for(request.getfixturevalue(role))

    response = post_upload(client, metadata(order, CT))

    assert response.status_code == 403
    assert response.json() == UPLOAD_PERMISSION_DENIED
    assert RadiologyUpload.objects.count() == 0


@pytest.mark.parametrize("role", ["doctor", "nurse"])
def test_doctor_and_nurse_may_not_read_or_send_to_an_upload(
    request: pytest.FixtureRequest, role: str, tech: APIClient, order: RadiologyOrder
) -> None:
    upload = start_upload(tech, order, CT)
    client = client_for(request.getfixturevalue(role))

    read = client.get(upload_url(upload.pk))
    sent = put_whole(client, upload.pk, CT.content)

    assert (read.status_code, read.json()) == (403, UPLOAD_PERMISSION_DENIED)
    assert (sent.status_code, sent.json()) == (403, UPLOAD_PERMISSION_DENIED)
    upload.refresh_from_db()
    assert (upload.status, upload.received_bytes) == ("pending", 0)
    assert_nothing_stored()


def test_anonymous_requests_are_401(tech: APIClient, order: RadiologyOrder) -> None:
    upload = start_upload(tech, order, CT)
    anonymous = client_for(None)

    responses = [
        post_upload(anonymous, metadata(order, MR)),
        anonymous.get(upload_url(upload.pk)),
        put_whole(anonymous, upload.pk, CT.content),
        put_range(anonymous, upload.pk, CT.content, 0, 99),
    ]

    assert [(response.status_code, response.json()) for response in responses] == [(401, NOT_AUTHENTICATED)] * 4
    assert RadiologyUpload.objects.count() == 1
    assert_nothing_stored()


def test_repeated_post_returns_the_same_upload_in_whatever_state(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    payload = metadata(order, CT)
    first = post_upload(tech, payload)
    upload = RadiologyUpload.objects.get()

    again = post_upload(tech, payload)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json() == pending_body(upload)

    assert put_range(tech, upload.pk, CT.content, 0, 9999).status_code == 202
    partial = post_upload(tech, payload)
    assert (partial.status_code, partial.json()) == (200, pending_body(upload, received_bytes=10000))

    assert put_range(tech, upload.pk, CT.content, 10000, CT.size - 1).status_code == 201
    done = post_upload(tech, payload)
    image = RadiologyImage.objects.get()
    assert (done.status_code, done.json()) == (200, completed_body(upload, image))

    # What the repeat says is not looked at: the client_upload_id names the upload.
    changed = post_upload(tech, {**payload, "filename": "other.dcm", "file_size": 5, "checksum": "0" * 64})
    assert (changed.status_code, changed.json()) == (200, completed_body(upload, image))
    assert RadiologyUpload.objects.count() == 1
    upload.refresh_from_db()
    assert (upload.filename, upload.file_size, upload.checksum) == ("CT_small.dcm", CT.size, CT.checksum)
    assert_only_image_files()


def test_same_client_upload_id_of_another_user_is_a_separate_upload(
    tech: APIClient, superuser: Any, order: RadiologyOrder
) -> None:
    payload = metadata(order, CT)
    mine = post_upload(tech, payload)
    theirs = post_upload(client_for(superuser), payload)

    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]
    assert mine.json()["client_upload_id"] == theirs.json()["client_upload_id"] == payload["client_upload_id"]
    assert RadiologyUpload.objects.filter(client_upload_id=payload["client_upload_id"]).count() == 2


def _field_error(field: str, message: str, code: str) -> dict[str, Any]:
    return {
        "detail": f"{field}: {message}",
        "code": code,
        "errors": {field: [{"message": message, "code": code}]},
    }


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"client_upload_id": ...}, _field_error("client_upload_id", "This field is required.", "required")),
        ({"client_upload_id": "device-42"}, _field_error("client_upload_id", "Must be a valid UUID.", "invalid")),
        ({"radiology_order": ...}, _field_error("radiology_order", "This field is required.", "required")),
        ({"radiology_order": "first"}, _field_error("radiology_order", "A valid integer is required.", "invalid")),
        (
            {"radiology_order": 0},
            _field_error("radiology_order", "Ensure this value is greater than or equal to 1.", "min_value"),
        ),
        ({"filename": ...}, _field_error("filename", "This field is required.", "required")),
        ({"filename": ""}, _field_error("filename", "This field may not be blank.", "blank")),
        ({"file_size": ...}, _field_error("file_size", "This field is required.", "required")),
        ({"file_size": 0}, _field_error("file_size", "Ensure this value is greater than or equal to 1.", "min_value")),
        ({"file_size": "big"}, _field_error("file_size", "A valid integer is required.", "invalid")),
        ({"mime_type": ...}, _field_error("mime_type", "This field is required.", "required")),
        ({"mime_type": "image/png"}, _field_error("mime_type", '"image/png" is not a valid choice.', "invalid_choice")),
        ({"checksum": ...}, _field_error("checksum", "This field is required.", "required")),
        (
            {"checksum": "abc123"},
            _field_error("checksum", "This value does not match the required pattern.", "invalid"),
        ),
        (
            {"checksum": "g" * 64},
            _field_error("checksum", "This value does not match the required pattern.", "invalid"),
        ),
        (
            {"series_number": "two"},
            _field_error("series_number", "A valid integer is required.", "invalid"),
        ),
        (
            {"image_uid": "1." * 32 + "1"},
            _field_error("image_uid", "Ensure this field has no more than 64 characters.", "max_length"),
        ),
    ],
    ids=lambda value: str(value)[:40],
)
def test_bad_metadata_is_400_with_the_field_and_code(
    tech: APIClient, order: RadiologyOrder, overrides: dict[str, Any], expected: dict[str, Any]
) -> None:
    response = post_upload(tech, metadata(order, CT, **overrides))

    assert response.status_code == 400
    assert response.json() == expected
    assert RadiologyUpload.objects.count() == 0


def test_body_that_is_not_a_json_object_is_400(tech: APIClient) -> None:
    response = tech.post(UPLOADS, data="[1, 2]", content_type="application/json")

    assert response.status_code == 400
    assert response.json() == {
        "detail": "Invalid data. Expected a dictionary, but got list.",
        "code": "invalid",
        "errors": {
            "non_field_errors": [{"message": "Invalid data. Expected a dictionary, but got list.", "code": "invalid"}]
        },
    }
    assert RadiologyUpload.objects.count() == 0


def test_unknown_order_is_404_order_not_found(tech: APIClient, order: RadiologyOrder) -> None:
    response = post_upload(tech, metadata(order.pk + 1000, CT))

    assert response.status_code == 404
    assert response.json() == {"detail": "No radiology order with this id.", "code": "order_not_found"}
    assert RadiologyUpload.objects.count() == 0


@pytest.mark.parametrize("field", ["study_uid", "series_uid", "image_uid"])
@pytest.mark.parametrize("bad_uid", ["1.2.03", "1..2", "1.2.a", "2.25."])
def test_invalid_declared_uid_is_400_invalid_uid(
    tech: APIClient, order: RadiologyOrder, field: str, bad_uid: str
) -> None:
    response = post_upload(tech, metadata(order, CT, **{field: bad_uid}))

    assert response.status_code == 400
    assert response.json() == {
        "detail": f"{field} is not a valid DICOM UID (digits and dots, no zero-led component, max 64).",
        "code": "invalid_uid",
    }
    assert RadiologyUpload.objects.count() == 0


def test_file_size_over_the_maximum_is_413(tech: APIClient, order: RadiologyOrder, settings: Any) -> None:
    settings.RADIOLOGY_MAX_UPLOAD_SIZE = CT.size - 1

    response = post_upload(tech, metadata(order, CT))

    assert response.status_code == 413
    assert response.json() == {"detail": "The file is larger than this server accepts.", "code": "file_too_large"}
    assert RadiologyUpload.objects.count() == 0


def test_file_size_at_the_maximum_is_accepted_and_stored(
    tech: APIClient, order: RadiologyOrder, settings: Any, radiology_store: str
) -> None:
    settings.RADIOLOGY_MAX_UPLOAD_SIZE = CT.size
    upload = start_upload(tech, order, CT)

    response = put_whole(tech, upload.pk, CT.content)

    assert response.status_code == 201
    assert response.json() == completed_body(upload, RadiologyImage.objects.get())


@pytest.mark.parametrize("filename", ["../", "...", "C:\\exports\\", "\x01\x1f", "***"])
def test_unusable_filename_is_400_invalid_filename(tech: APIClient, order: RadiologyOrder, filename: str) -> None:
    response = post_upload(tech, metadata(order, CT, filename=filename))

    assert response.status_code == 400
    assert response.json() == {
        "detail": "The filename has nothing usable left after removing unsafe characters.",
        "code": "invalid_filename",
    }
    assert RadiologyUpload.objects.count() == 0


# --- GET: an upload's state ---------------------------------------------------------------


def test_get_returns_the_state(tech: APIClient, order: RadiologyOrder) -> None:
    upload = start_upload(tech, order, CT)

    response = tech.get(upload_url(upload.pk))

    assert (response.status_code, response.json()) == (200, pending_body(upload))


def test_another_users_upload_is_404(tech: APIClient, superuser: Any, order: RadiologyOrder) -> None:
    upload = start_upload(client_for(superuser), order, CT)

    read = tech.get(upload_url(upload.pk))
    sent = put_whole(tech, upload.pk, CT.content)
    missing = tech.get(upload_url(upload.pk + 1000))

    assert [(r.status_code, r.json()) for r in (read, sent, missing)] == [(404, UPLOAD_NOT_FOUND)] * 3
    upload.refresh_from_db()
    assert (upload.status, upload.received_bytes) == ("pending", 0)
    assert_nothing_stored()


def test_uploads_cannot_be_listed_changed_or_deleted(tech: APIClient, order: RadiologyOrder) -> None:
    upload = start_upload(tech, order, CT)

    listed = tech.get(UPLOADS)
    patched = tech.patch(upload_url(upload.pk), {"status": "completed"}, format="json")
    deleted = tech.delete(upload_url(upload.pk))

    assert (listed.status_code, listed.json()) == (
        405,
        {"detail": 'Method "GET" not allowed.', "code": "method_not_allowed"},
    )
    assert (patched.status_code, patched.json()) == (
        405,
        {"detail": 'Method "PATCH" not allowed.', "code": "method_not_allowed"},
    )
    assert (deleted.status_code, deleted.json()) == (
        405,
        {"detail": 'Method "DELETE" not allowed.', "code": "method_not_allowed"},
    )
    upload.refresh_from_db()
    assert upload.status == "pending"


# --- PUT the whole file -------------------------------------------------------------------


def test_whole_file_put_completes_and_creates_the_orders_study(
    tech: APIClient, radtech: Any, order: RadiologyOrder, radiology_store: str
) -> None:
    upload = start_upload(tech, order, CT)
    assert RadiologyStudy.objects.filter(radiology_order=order).count() == 0

    response = put_whole(tech, upload.pk, CT.content)

    image = RadiologyImage.objects.select_related("series__study").get()
    key = f"radiology/{CT_STUDY}/{CT_SERIES}/{CT_IMAGE}/CT_small.dcm"
    assert response.status_code == 201
    assert response.json() == {
        "id": upload.pk,
        "client_upload_id": str(upload.client_upload_id),
        "status": "completed",
        "received_bytes": CT.size,
        "file_size": CT.size,
        "image": {
            "id": image.pk,
            "image_uid": CT_IMAGE,
            "series_uid": CT_SERIES,
            "study_uid": CT_STUDY,
            "study": order.study.pk,
            "file_key": key,
            "file_size": CT.size,
            "mime_type": DICOM_MIME_TYPE,
            "checksum": CT.checksum,
        },
        "error": None,
        "held": False,
    }
    assert image.series.study.radiology_order == order
    assert (image.uploaded_by, image.filename) == (radtech, "CT_small.dcm")
    assert row_counts() == (1, 1, 1)
    assert stored_keys() == [key]
    assert read_stored(key) == CT.content
    upload.refresh_from_db()
    assert (upload.status, upload.image, upload.received_bytes, upload.chunk_offsets) == (
        "completed",
        image,
        CT.size,
        [],
    )


def test_put_on_a_completed_upload_is_200_with_the_same_body(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    upload = start_upload(tech, order, CT)
    first = put_whole(tech, upload.pk, CT.content)

    again = put_whole(tech, upload.pk, CT.content)
    other_bytes = put_whole(tech, upload.pk, b"anything at all")
    late_chunk = put_range(tech, upload.pk, CT.content, 0, 99)
    state = tech.get(upload_url(upload.pk))

    assert first.status_code == 201
    for response in (again, other_bytes, late_chunk, state):
        assert (response.status_code, response.json()) == (200, first.json())
    assert row_counts() == (1, 1, 1)
    assert_only_image_files()


@pytest.mark.parametrize("body", [CT.content[:-1], CT.content + b"\x00", b""], ids=["short", "long", "empty"])
def test_whole_body_of_another_length_is_400_size_mismatch(
    tech: APIClient, order: RadiologyOrder, radiology_store: str, body: bytes
) -> None:
    upload = start_upload(tech, order, CT)

    response = put_whole(tech, upload.pk, body)

    assert (response.status_code, response.json()) == (400, SIZE_MISMATCH)
    assert tech.get(upload_url(upload.pk)).json() == pending_body(upload)
    assert_nothing_stored()
    # The device sends the right bytes and finishes.
    retry = put_whole(tech, upload.pk, CT.content)
    assert (retry.status_code, retry.json()) == (201, completed_body(upload, RadiologyImage.objects.get()))
    assert_only_image_files()


# --- PUT in chunks ------------------------------------------------------------------------


def test_chunks_advance_received_bytes_then_the_last_one_completes(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    upload = start_upload(tech, order, CT)
    size = CT.size

    first = put_range(tech, upload.pk, CT.content, 0, 16383)
    assert (first.status_code, first.json()) == (202, pending_body(upload, 16384))
    assert staged_keys() == [chunk_key(upload.pk, 0)]
    assert tech.get(upload_url(upload.pk)).json() == pending_body(upload, 16384)

    second = put_range(tech, upload.pk, CT.content, 16384, 32767)
    assert (second.status_code, second.json()) == (202, pending_body(upload, 32768))
    assert staged_keys() == [chunk_key(upload.pk, 0), chunk_key(upload.pk, 16384)]
    assert row_counts() == (0, 0, 0)

    last = put_range(tech, upload.pk, CT.content, 32768, size - 1)

    image = RadiologyImage.objects.get()
    assert (last.status_code, last.json()) == (201, completed_body(upload, image))
    assert staged_keys() == []
    assert stored_keys() == [image.file_key]
    assert read_stored(image.file_key) == CT.content
    assert image.checksum == CT.checksum


def test_one_byte_chunks_at_the_edges(tech: APIClient, order: RadiologyOrder) -> None:
    upload = start_upload(tech, order, MR)
    size = MR.size

    responses = [
        put_range(tech, upload.pk, MR.content, 0, 0),
        put_range(tech, upload.pk, MR.content, 1, size - 2),
        put_range(tech, upload.pk, MR.content, size - 1, size - 1),
    ]

    assert [r.status_code for r in responses] == [202, 202, 201]
    assert responses[0].json() == pending_body(upload, 1)
    assert responses[1].json() == pending_body(upload, size - 1)
    image = RadiologyImage.objects.get()
    assert responses[2].json() == completed_body(upload, image)
    assert read_stored(image.file_key) == MR.content
    assert_only_image_files()


def test_chunk_that_does_not_start_at_received_bytes_is_409_range_mismatch(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    upload = start_upload(tech, order, CT)
    assert put_range(tech, upload.pk, CT.content, 0, 9999).status_code == 202

    ahead = put_range(tech, upload.pk, CT.content, 20000, 29999)
    replayed = put_range(tech, upload.pk, CT.content, 0, 9999)
    overlapping = put_range(tech, upload.pk, CT.content, 5000, 14999)

    for response in (ahead, replayed, overlapping):
        assert (response.status_code, response.json()) == (409, range_mismatch(10000))
    upload.refresh_from_db()
    assert (upload.received_bytes, upload.chunk_offsets) == (10000, [0])
    assert staged_keys() == [chunk_key(upload.pk, 0)]
    # Resuming from received_bytes finishes the file with the right bytes.
    done = put_range(tech, upload.pk, CT.content, 10000, CT.size - 1)
    image = RadiologyImage.objects.get()
    assert (done.status_code, done.json()) == (201, completed_body(upload, image))
    assert read_stored(image.file_key) == CT.content
    assert_only_image_files()


@pytest.mark.parametrize(
    "header",
    [
        "bytes 0-99",
        "bytes=0-99/39206",
        "0-99/39206",
        "bytes 0-/39206",
        "bytes */39206",
        "bytes -1-99/39206",
        "bytes 100-99/39206",
        "bytes 0-39206/39206",
        "bytes 0-99/39206 junk",
        "items 0-99/39206",
    ],
)
def test_malformed_content_range_is_400_invalid_content_range(
    tech: APIClient, order: RadiologyOrder, header: str
) -> None:
    upload = start_upload(tech, order, CT)
    assert CT.size == 39206

    response = put_chunk(tech, upload.pk, CT.content[:100], header)

    assert (response.status_code, response.json()) == (400, INVALID_CONTENT_RANGE)
    upload.refresh_from_db()
    assert (upload.status, upload.received_bytes, upload.chunk_offsets) == ("pending", 0, [])
    assert_nothing_stored()


def test_content_range_total_other_than_file_size_is_400_size_mismatch(tech: APIClient, order: RadiologyOrder) -> None:
    upload = start_upload(tech, order, CT)

    response = put_chunk(tech, upload.pk, CT.content[:100], f"bytes 0-99/{CT.size + 1}")

    assert response.status_code == 400
    assert response.json() == {
        "detail": f"Content-Range total {CT.size + 1} is not the declared file_size {CT.size}.",
        "code": "size_mismatch",
    }
    upload.refresh_from_db()
    assert (upload.status, upload.received_bytes) == ("pending", 0)
    assert_nothing_stored()


def test_empty_body_is_400_incomplete_body_and_counts_nothing(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    upload = start_upload(tech, order, CT)
    assert put_range(tech, upload.pk, CT.content, 0, 999).status_code == 202

    empty = put_chunk(tech, upload.pk, b"", f"bytes 1000-1999/{CT.size}")

    assert (empty.status_code, empty.json()) == (400, incomplete_body(1000))
    upload.refresh_from_db()
    assert (upload.received_bytes, upload.chunk_offsets) == (1000, [0])
    assert staged_keys() == [chunk_key(upload.pk, 0)]
    assert row_counts() == (0, 0, 0)


def test_body_shorter_than_the_range_is_400_incomplete_body_and_keeps_what_came(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    upload = start_upload(tech, order, CT)
    assert put_range(tech, upload.pk, CT.content, 0, 999).status_code == 202

    short = put_chunk(tech, upload.pk, CT.content[1000:1500], f"bytes 1000-1999/{CT.size}")

    assert (short.status_code, short.json()) == (400, incomplete_body(1500))
    upload.refresh_from_db()
    assert (upload.received_bytes, upload.chunk_offsets) == (1500, [0, 1000])
    assert staged_keys() == [chunk_key(upload.pk, 0), chunk_key(upload.pk, 1000)]
    assert row_counts() == (0, 0, 0)
    # The device resumes where the server says; the file ends byte-identical.
    assert put_range(tech, upload.pk, CT.content, 0, 999).json() == range_mismatch(1500)
    done = put_range(tech, upload.pk, CT.content, 1500, CT.size - 1)
    assert done.status_code == 201
    upload.refresh_from_db()
    assert read_stored(upload.image.file_key) == CT.content
    assert staged_keys() == []


def test_body_longer_than_the_range_is_400_invalid_content_range(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    upload = start_upload(tech, order, CT)
    assert put_range(tech, upload.pk, CT.content, 0, 999).status_code == 202

    response = put_chunk(tech, upload.pk, CT.content[1000:2001], f"bytes 1000-1999/{CT.size}")

    assert (response.status_code, response.json()) == (
        400,
        {"detail": "The body is longer than its Content-Range says.", "code": "invalid_content_range"},
    )
    upload.refresh_from_db()
    assert (upload.received_bytes, upload.chunk_offsets) == (1000, [0])
    assert staged_keys() == [chunk_key(upload.pk, 0)]
    assert row_counts() == (0, 0, 0)


# --- Checks on the last byte --------------------------------------------------------------


def test_whole_file_checksum_mismatch_stores_nothing_and_the_device_can_resend(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    upload = start_upload(tech, order, CT)
    corrupted = bytearray(CT.content)
    corrupted[-1] ^= 0xFF

    response = put_whole(tech, upload.pk, bytes(corrupted))

    assert (response.status_code, response.json()) == (400, CHECKSUM_MISMATCH)
    assert tech.get(upload_url(upload.pk)).json() == pending_body(upload, 0)
    assert_nothing_stored()
    retry = put_whole(tech, upload.pk, CT.content)
    assert (retry.status_code, retry.json()) == (201, completed_body(upload, RadiologyImage.objects.get()))
    assert_only_image_files()


def test_chunked_checksum_mismatch_drops_the_chunks_and_resets_to_zero(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    upload = start_upload(tech, order, CT)
    corrupted = bytearray(CT.content)
    corrupted[20000] ^= 0x01

    responses = send_in_chunks(tech, upload.pk, bytes(corrupted), 16384)

    assert [r.status_code for r in responses] == [202, 202, 400]
    assert responses[-1].json() == CHECKSUM_MISMATCH
    assert tech.get(upload_url(upload.pk)).json() == pending_body(upload, 0)
    upload.refresh_from_db()
    assert upload.chunk_offsets == []
    assert_nothing_stored()
    # A chunk from where the device had got to is refused: it must start again from 0.
    stale = put_range(tech, upload.pk, CT.content, 32768, CT.size - 1)
    assert (stale.status_code, stale.json()) == (409, range_mismatch(0))
    resent = send_in_chunks(tech, upload.pk, CT.content, 16384)
    assert [r.status_code for r in resent] == [202, 202, 201]
    image = RadiologyImage.objects.get()
    assert resent[-1].json() == completed_body(upload, image)
    assert read_stored(image.file_key) == CT.content
    assert_only_image_files()


def test_declared_uid_other_than_the_files_is_400_uid_mismatch_and_the_upload_fails(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    upload = start_upload(tech, order, CT, series_uid="1.2.3.4")
    expected = {"detail": "series_uid sent does not match the file's.", "code": "uid_mismatch"}

    responses = send_in_chunks(tech, upload.pk, CT.content, 20000)

    assert [r.status_code for r in responses] == [202, 400]
    assert responses[-1].json() == expected
    assert_nothing_stored()
    assert tech.get(upload_url(upload.pk)).json() == failed_body(upload, expected)
    upload.refresh_from_db()
    assert (upload.error_code, upload.error_status, upload.chunk_offsets) == ("uid_mismatch", 400, [])
    # Sending the same bytes again cannot help: every further PUT gets the same answer.
    for retry in (put_whole(tech, upload.pk, CT.content), put_range(tech, upload.pk, CT.content, 0, 99)):
        assert (retry.status_code, retry.json()) == (400, expected)
    assert post_upload(tech, metadata(order, CT, client_upload_id=upload.client_upload_id)).json() == failed_body(
        upload, expected
    )
    assert_nothing_stored()


@pytest.mark.parametrize("field", ["study_uid", "image_uid"])
def test_each_declared_dicom_uid_is_checked(tech: APIClient, order: RadiologyOrder, field: str) -> None:
    upload = start_upload(tech, order, CT, **{field: "1.2.3.4"})

    response = put_whole(tech, upload.pk, CT.content)

    expected = {"detail": f"{field} sent does not match the file's.", "code": "uid_mismatch"}
    assert (response.status_code, response.json()) == (400, expected)
    assert tech.get(upload_url(upload.pk)).json() == failed_body(upload, expected)
    assert_nothing_stored()


def test_declared_uids_that_agree_with_the_file_are_accepted(tech: APIClient, order: RadiologyOrder) -> None:
    upload = start_upload(tech, order, CT, study_uid=CT_STUDY, series_uid=CT_SERIES, image_uid=CT_IMAGE)

    response = put_whole(tech, upload.pk, CT.content)

    image = RadiologyImage.objects.get()
    assert (response.status_code, response.json()) == (201, completed_body(upload, image))
    assert image.image_uid == CT_IMAGE


def test_image_uid_stored_with_other_bytes_is_409_image_conflict(
    tech: APIClient, order: RadiologyOrder, ingest_file: IngestFile, radiology_store: str
) -> None:
    original = ingest_file(order, "CT_small.dcm").image
    altered = DeviceFile("CT_small.dcm", edited_sample("CT_small.dcm", StudyDescription="Altered"))
    upload = start_upload(tech, order, altered)

    responses = send_in_chunks(tech, upload.pk, altered.content, 30000)

    assert [r.status_code for r in responses] == [202, 409]
    assert responses[-1].json() == IMAGE_CONFLICT
    assert tech.get(upload_url(upload.pk)).json() == failed_body(upload, IMAGE_CONFLICT)
    assert list(RadiologyImage.objects.all()) == [original]
    assert stored_keys() == [original.file_key]
    assert read_stored(original.file_key) == CT.content


def test_image_already_stored_with_the_same_bytes_completes_with_that_image(
    tech: APIClient, order: RadiologyOrder, ingest_file: IngestFile, radiology_store: str
) -> None:
    original = ingest_file(order, "CT_small.dcm").image
    upload = start_upload(tech, order, CT)

    response = put_whole(tech, upload.pk, CT.content)

    assert (response.status_code, response.json()) == (201, completed_body(upload, original))
    assert response.json()["image"]["id"] == original.pk
    assert row_counts() == (1, 1, 1)
    assert stored_keys() == [original.file_key]


def test_image_of_another_study_than_the_orders_is_409_study_mismatch(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    first = start_upload(tech, order, CT)
    assert put_whole(tech, first.pk, CT.content).status_code == 201
    study = RadiologyStudy.objects.get()
    other_study = DeviceFile(
        "other.dcm",
        relabelled_dicom("MR_small.dcm", study_uid=generate_uid(), series_uid=generate_uid(), instance_number=1),
    )
    upload = start_upload(tech, order, other_study)

    response = put_whole(tech, upload.pk, other_study.content)

    assert (response.status_code, response.json()) == (409, STUDY_MISMATCH)
    assert tech.get(upload_url(upload.pk)).json() == failed_body(upload, STUDY_MISMATCH)
    assert list(RadiologyStudy.objects.all()) == [study]
    assert study.study_uid == CT_STUDY
    assert row_counts() == (1, 1, 1)
    assert_only_image_files()


def test_images_of_one_study_in_several_uploads_share_the_orders_study(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    files = [
        DeviceFile(
            f"ct_{number}.dcm",
            relabelled_dicom("CT_small.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=number),
        )
        for number in (1, 2, 3)
    ]

    for device_file in files:
        upload = start_upload(tech, order, device_file)
        assert put_whole(tech, upload.pk, device_file.content).status_code == 201

    study = RadiologyStudy.objects.get()
    assert (study.radiology_order, study.study_uid) == (order, study_uid)
    assert RadiologySeries.objects.get().series_uid == series_uid
    assert sorted(RadiologyImage.objects.values_list("instance_number", flat=True)) == [1, 2, 3]
    for upload in RadiologyUpload.objects.all():
        assert read_stored(upload.image.file_key) == next(f.content for f in files if f.filename == upload.filename)
    assert_only_image_files()


# --- JPEG ---------------------------------------------------------------------------------


def test_jpeg_without_declared_uids_gets_uids_derived_from_order_and_bytes(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    upload = start_upload(tech, order, PHOTO)

    response = put_whole(tech, upload.pk, PHOTO.content)

    image = RadiologyImage.objects.get()
    study_uid = uid_from_name(f"order:{order.pk}:study")
    series_uid = uid_from_name(f"order:{order.pk}:jpeg:{PHOTO.checksum}:series")
    image_uid = uid_from_name(f"order:{order.pk}:jpeg:{PHOTO.checksum}:image")
    assert (response.status_code, response.json()) == (201, completed_body(upload, image))
    assert response.json()["image"] | {"id": 0, "study": 0} == {
        "id": 0,
        "image_uid": image_uid,
        "series_uid": series_uid,
        "study_uid": study_uid,
        "study": 0,
        "file_key": f"radiology/{study_uid}/{series_uid}/{image_uid}/film_photo.jpg",
        "file_size": PHOTO.size,
        "mime_type": JPEG_MIME_TYPE,
        "checksum": PHOTO.checksum,
    }
    assert read_stored(image.file_key) == PHOTO.content
    assert_only_image_files()


def test_jpeg_uses_declared_uids_and_descriptions(tech: APIClient, order: RadiologyOrder) -> None:
    study_uid, series_uid, image_uid = generate_uid(), generate_uid(), generate_uid()
    upload = start_upload(
        tech,
        order,
        PHOTO,
        study_uid=study_uid,
        series_uid=series_uid,
        image_uid=image_uid,
        study_description="Film photos",
        series_description="Photo of film",
        series_number=3,
        instance_number=4,
        modality="OT",
    )

    response = put_whole(tech, upload.pk, PHOTO.content)

    image = RadiologyImage.objects.select_related("series__study").get()
    assert (response.status_code, response.json()) == (201, completed_body(upload, image))
    assert (image.image_uid, image.series.series_uid, image.series.study.study_uid) == (
        image_uid,
        series_uid,
        study_uid,
    )
    assert (image.series.series_description, image.series.series_number, image.instance_number) == (
        "Photo of film",
        3,
        4,
    )
    assert (image.series.modality, image.series.study.study_description) == ("OT", "Film photos")
    assert image.file_key == f"radiology/{study_uid}/{series_uid}/{image_uid}/film_photo.jpg"


def test_same_jpeg_uploaded_twice_to_one_order_is_one_image(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    first = start_upload(tech, order, PHOTO)
    second = start_upload(tech, order, PHOTO)

    answers = [put_whole(tech, first.pk, PHOTO.content), put_range(tech, second.pk, PHOTO.content, 0, PHOTO.size - 1)]

    image = RadiologyImage.objects.get()
    assert [(r.status_code, r.json()) for r in answers] == [
        (201, completed_body(first, image)),
        (201, completed_body(second, image)),
    ]
    assert row_counts() == (1, 1, 1)
    assert_only_image_files()


def test_jpeg_after_dicom_joins_the_orders_study(tech: APIClient, order: RadiologyOrder) -> None:
    dicom = start_upload(tech, order, CT)
    assert put_whole(tech, dicom.pk, CT.content).status_code == 201
    photo = start_upload(tech, order, PHOTO)

    response = put_whole(tech, photo.pk, PHOTO.content)

    image = RadiologyImage.objects.get(mime_type=JPEG_MIME_TYPE)
    assert (response.status_code, response.json()) == (201, completed_body(photo, image))
    assert response.json()["image"]["study_uid"] == CT_STUDY
    assert RadiologyStudy.objects.count() == 1


def test_same_jpeg_to_two_orders_is_two_images(tech: APIClient, make_order: MakeOrder) -> None:
    orders = [make_order(), make_order()]

    for target in orders:
        upload = start_upload(tech, target, PHOTO)
        assert put_whole(tech, upload.pk, PHOTO.content).status_code == 201

    assert row_counts() == (2, 2, 2)
    assert {image.series.study.radiology_order for image in RadiologyImage.objects.all()} == set(orders)
    assert_only_image_files()


def test_declared_mime_type_does_not_decide_what_is_stored(tech: APIClient, order: RadiologyOrder) -> None:
    mislabelled = DeviceFile("scan.jpg", CT.content, mime_type=JPEG_MIME_TYPE)
    upload = start_upload(tech, order, mislabelled)

    response = put_whole(tech, upload.pk, CT.content)

    image = RadiologyImage.objects.get()
    assert (response.status_code, response.json()) == (201, completed_body(upload, image))
    assert (image.mime_type, image.image_uid) == (DICOM_MIME_TYPE, CT_IMAGE)


def test_binary_put_ignores_the_request_content_type(tech: APIClient, order: RadiologyOrder) -> None:
    upload = start_upload(tech, order, MR)

    response = tech.put(binary_url(upload.pk), data=MR.content, content_type="application/json")

    assert (response.status_code, response.json()) == (201, completed_body(upload, RadiologyImage.objects.get()))


def test_a_whole_file_sent_chunked_is_read_to_its_end(tech: APIClient, order: RadiologyOrder) -> None:
    """A device may stream the body with Transfer-Encoding: chunked (no Content-Length); the app server
    de-chunks it and sets wsgi.input_terminated, and the upload reads it to its end."""
    upload = start_upload(tech, order, CT)

    response = tech.generic(
        "PUT",
        binary_url(upload.pk),
        content_type="application/octet-stream",
        HTTP_TRANSFER_ENCODING="chunked",
        **{"wsgi.input": io.BytesIO(CT.content), "wsgi.input_terminated": True},
    )

    assert response.status_code == 201, response.content[:300]
    upload.refresh_from_db()
    assert (upload.status, upload.received_bytes, upload.image.checksum) == ("completed", CT.size, CT.checksum)
