"""Store and forward, the regional side: a forwarding clinic's uploads by accession number.

A clinic's PACS-lite uploads each image with the accession number of its own order, in chunks
that may come zstd-compressed over a link that drops. Here: where the file goes (the order with
that accession, else the unmatched inbox, exactly as the DICOM listener routes), the clinic's
name on the study and the held row (and carried on when a tech assigns it), the bounded zstd
decoding (byte-identical files, a bomb refused, a corrupt frame refused, other encodings 415),
and a body cut short keeping what arrived, through the service and over real HTTP.
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import zstandard
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from apps.radiology.access.permissions import FORWARDING_CLINIC_GROUP
from apps.radiology.errors import IncompleteBody, InvalidContentEncoding
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.ingest import unmatched as inbox
from apps.radiology.ingest.upload_sync import upload_receive
from apps.radiology.models import (
    JPEG_MIME_TYPE,
    AuditEvent,
    RadiologyImage,
    RadiologyOrder,
    RadiologyStudy,
    RadiologyUpload,
    UnmatchedImage,
)
from apps.radiology.operations.demo import jpeg_with_exif, relabelled_dicom
from apps.radiology.tests.conftest import MakeOrder, make_user
from apps.radiology.tests.factories import read_stored, row_counts, stored_keys
from apps.radiology.tests.upload_helpers import (
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
    put_whole,
    staged_keys,
    start_upload,
    upload_body,
    upload_url,
)

CLINIC_NAME = "Ikeja Clinic"
ORDER_NOT_FOUND = {"detail": "No radiology order with this id.", "code": "order_not_found"}
INVALID_CONTENT_ENCODING = {
    "detail": "The body is not a valid zstd frame; nothing of it was kept. Send the chunk again.",
    "code": "invalid_content_encoding",
}
UNSUPPORTED_CONTENT_ENCODING = {
    "detail": "An upload's bytes may be sent as they are or with Content-Encoding: zstd, nothing else.",
    "code": "unsupported_content_encoding",
}
BODY_TOO_LONG = {"detail": "The body is longer than its Content-Range says.", "code": "invalid_content_range"}


@pytest.fixture
def clinic(db: None) -> Any:
    """A forwarding clinic's account, as manage.py create_forwarding_clinic makes it."""
    user = make_user("ikeja", groups=(FORWARDING_CLINIC_GROUP,))
    user.first_name = CLINIC_NAME
    user.save(update_fields=["first_name"])
    return user


@pytest.fixture
def sender(clinic: Any) -> APIClient:
    return client_for(clinic)


def ct_for(order: RadiologyOrder | None, *, patient_id: str | None = None, name: str = "ct.dcm") -> DeviceFile:
    """A CT instance of a new study, naming the order's patient (or `patient_id`)."""
    hospital_number = patient_id if patient_id is not None else order.visit.patient.hospital_number  # type: ignore[union-attr]
    content = relabelled_dicom(
        "CT_small.dcm",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        instance_number=1,
        patient_id=hospital_number,
        accession_number="CLINIC-ACC-1",
    )
    return DeviceFile(name, content)


def by_accession(accession: str, device_file: DeviceFile, **overrides: Any) -> dict[str, Any]:
    """The metadata a clinic's forwarder posts: the accession number instead of an order."""
    return metadata(0, device_file, radiology_order=..., accession_number=accession, **overrides)


def declare(client: APIClient, accession: str, device_file: DeviceFile) -> RadiologyUpload:
    response = post_upload(client, by_accession(accession, device_file))
    assert response.status_code == 201, response.json()
    return RadiologyUpload.objects.get(pk=response.json()["id"])


def zstd_frame(data: bytes, **params: Any) -> bytes:
    return zstandard.ZstdCompressor(**params).compress(data)


def zeros_frame(*, gigabytes: int) -> bytes:
    """One zstd frame of that many gigabytes of zeros, made a mebibyte at a time."""
    streaming = zstandard.ZstdCompressor().compressobj()
    mebibyte = bytes(1 << 20)
    return b"".join(streaming.compress(mebibyte) for _ in range(1024 * gigabytes)) + streaming.flush()


def put_zstd(client: APIClient, upload_id: int, content: bytes, start: int, end: int, **params: Any) -> Any:
    """PUT bytes START..END of `content` as one zstd frame (Content-Range in uncompressed offsets)."""
    return client.put(
        binary_url(upload_id),
        data=zstd_frame(content[start : end + 1], **params),
        content_type="application/octet-stream",
        headers={"Content-Range": f"bytes {start}-{end}/{len(content)}", "Content-Encoding": "zstd"},
    )


def held_body(upload: RadiologyUpload) -> dict[str, Any]:
    return upload_body(upload, status="completed", received_bytes=upload.file_size, held=True)


# --- Metadata -------------------------------------------------------------------------------


def test_an_upload_by_accession_records_the_accession_and_no_order(sender: APIClient, clinic: Any) -> None:
    device_file = ct_for(None, patient_id="WALK-IN-1")

    response = post_upload(sender, by_accession("CLINIC-0001", device_file))

    upload = RadiologyUpload.objects.get()
    assert (response.status_code, response.json()) == (201, pending_body(upload))
    assert (upload.uploaded_by, upload.radiology_order, upload.accession_number) == (clinic, None, "CLINIC-0001")
    again = post_upload(sender, by_accession("CLINIC-0001", device_file, client_upload_id=upload.client_upload_id))
    assert (again.status_code, again.json()) == (200, pending_body(upload))


def test_an_order_and_an_accession_together_or_neither_is_400(sender: APIClient, order: RadiologyOrder) -> None:
    device_file = ct_for(order)

    both = post_upload(sender, metadata(order, device_file, accession_number=order.accession_number))
    neither = post_upload(sender, metadata(order, device_file, radiology_order=...))

    assert (both.status_code, both.json()) == (
        400,
        {
            "detail": "accession_number: Give radiology_order or accession_number, not both.",
            "code": "invalid",
            "errors": {
                "accession_number": [
                    {"message": "Give radiology_order or accession_number, not both.", "code": "invalid"}
                ]
            },
        },
    )
    assert (neither.status_code, neither.json()) == (
        400,
        {
            "detail": "radiology_order: This field is required.",
            "code": "required",
            "errors": {"radiology_order": [{"message": "This field is required.", "code": "required"}]},
        },
    )
    assert RadiologyUpload.objects.count() == 0


# --- Routing: the order with the accession, else the unmatched inbox --------------------------


def test_a_file_goes_to_the_order_with_its_accession_and_the_study_names_the_clinic(
    sender: APIClient, clinic: Any, order: RadiologyOrder, radiology_store: str
) -> None:
    device_file = ct_for(order)
    upload = declare(sender, order.accession_number, device_file)

    response = put_whole(sender, upload.pk, device_file.content)

    upload.refresh_from_db()
    image = RadiologyImage.objects.select_related("series__study").get()
    assert (response.status_code, response.json()) == (201, completed_body(upload, image))
    assert (upload.status, upload.image, upload.unmatched, upload.radiology_order) == ("completed", image, None, None)
    study = image.series.study
    assert (study.radiology_order, study.source_clinic) == (order, CLINIC_NAME)
    assert (image.uploaded_by, image.checksum) == (clinic, device_file.checksum)
    assert read_stored(image.file_key) == device_file.content
    assert UnmatchedImage.objects.count() == 0
    assert stored_keys() == [image.file_key]
    # Asked again, the same answer.
    assert sender.get(upload_url(upload.pk)).json() == completed_body(upload, image)


def test_a_file_whose_accession_no_order_has_is_held_with_the_clinic(
    sender: APIClient, clinic: Any, radiology_store: str
) -> None:
    device_file = ct_for(None, patient_id="WALK-IN-1")
    upload = declare(sender, "NOSUCHACC", device_file)

    response = put_whole(sender, upload.pk, device_file.content)

    upload.refresh_from_db()
    held = UnmatchedImage.objects.get()
    assert (response.status_code, response.json()) == (201, held_body(upload))
    assert (upload.status, upload.image, upload.unmatched) == ("completed", None, held)
    assert (held.source, held.source_clinic, held.received_by, held.status) == (
        "upload",
        CLINIC_NAME,
        clinic,
        "pending",
    )
    assert (held.patient_id, held.accession_number, held.checksum) == (
        "WALK-IN-1",
        "CLINIC-ACC-1",
        device_file.checksum,
    )
    assert read_stored(held.file_key) == device_file.content
    assert stored_keys() == [held.file_key]
    assert row_counts() == (0, 0, 0)
    event = AuditEvent.objects.get(action=AuditEvent.IdentityAction.HOLD)
    assert (event.channel, event.unmatched_id, event.user) == ("upload", held.pk, clinic)
    assert sender.get(upload_url(upload.pk)).json() == held_body(upload)
    # A repeat of the same PUT changes nothing.
    assert (put_whole(sender, upload.pk, device_file.content).status_code, UnmatchedImage.objects.count()) == (200, 1)


def test_a_file_naming_another_patient_is_held_not_refused(
    sender: APIClient, make_order: MakeOrder, radiology_store: str
) -> None:
    order, other = make_order(), make_order(first_name="Tunde")
    device_file = ct_for(order, patient_id=other.visit.patient.hospital_number)
    upload = declare(sender, order.accession_number, device_file)

    response = put_whole(sender, upload.pk, device_file.content)

    upload.refresh_from_db()
    held = UnmatchedImage.objects.get()
    assert (response.status_code, response.json()) == (201, held_body(upload))
    assert (held.patient_id, held.source_clinic) == (other.visit.patient.hospital_number, CLINIC_NAME)
    assert row_counts() == (0, 0, 0)


def test_a_file_of_another_study_than_the_orders_is_held(
    sender: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    first, second = ct_for(order, name="a.dcm"), ct_for(order, name="b.dcm")  # two study UIDs
    assert put_whole(sender, declare(sender, order.accession_number, first).pk, first.content).status_code == 201

    upload = declare(sender, order.accession_number, second)
    response = put_whole(sender, upload.pk, second.content)

    upload.refresh_from_db()
    assert (response.status_code, response.json()) == (201, held_body(upload))
    assert (RadiologyImage.objects.count(), UnmatchedImage.objects.get().filename) == (1, "b.dcm")


def test_a_photo_with_no_order_fails_with_order_not_found(sender: APIClient, radiology_store: str) -> None:
    photo = DeviceFile("photo.jpg", jpeg_with_exif(), mime_type=JPEG_MIME_TYPE)
    upload = declare(sender, "NOSUCHACC", photo)

    response = put_whole(sender, upload.pk, photo.content)

    upload.refresh_from_db()
    assert (response.status_code, response.json()) == (404, ORDER_NOT_FOUND)
    assert (upload.status, upload.error_code, upload.error_status) == ("failed", "order_not_found", 404)
    assert sender.get(upload_url(upload.pk)).json() == failed_body(upload, ORDER_NOT_FOUND)
    assert (row_counts(), UnmatchedImage.objects.count(), stored_keys()) == ((0, 0, 0), 0, [])


def test_a_photo_finds_its_order_by_accession(sender: APIClient, order: RadiologyOrder, radiology_store: str) -> None:
    photo = DeviceFile("photo.jpg", jpeg_with_exif(), mime_type=JPEG_MIME_TYPE)
    upload = declare(sender, order.accession_number, photo)

    response = put_whole(sender, upload.pk, photo.content)

    image = RadiologyImage.objects.select_related("series__study").get()
    upload.refresh_from_db()
    assert (response.status_code, response.json()) == (201, completed_body(upload, image))
    assert (image.series.study.radiology_order, image.series.study.source_clinic) == (order, CLINIC_NAME)


# --- The clinic's name ------------------------------------------------------------------------


def test_a_techs_upload_names_no_clinic(radtech: Any, order: RadiologyOrder, radiology_store: str) -> None:
    device_file = ct_for(order)
    tech = client_for(radtech)
    upload = post_upload(tech, metadata(order, device_file)).json()

    assert put_whole(tech, upload["id"], device_file.content).status_code == 201

    assert RadiologyStudy.objects.get().source_clinic == ""


def test_a_clinics_file_names_a_study_that_named_no_clinic_and_not_one_that_did(
    sender: APIClient, radtech: Any, make_order: MakeOrder, radiology_store: str
) -> None:
    blank, named = make_order(), make_order()
    tech = client_for(radtech)
    for target in (blank, named):
        device_file = ct_for(target)
        upload_id = post_upload(tech, metadata(target, device_file)).json()["id"]
        assert put_whole(tech, upload_id, device_file.content).status_code == 201
    RadiologyStudy.objects.filter(radiology_order=named).update(source_clinic="Epe Clinic")

    for target in (blank, named):
        study = RadiologyStudy.objects.get(radiology_order=target)
        joining = DeviceFile(
            "more.dcm",
            relabelled_dicom(
                "CT_small.dcm",
                study_uid=study.study_uid,
                series_uid=generate_uid(),
                instance_number=2,
                patient_id=target.visit.patient.hospital_number,
            ),
        )
        upload = declare(sender, target.accession_number, joining)
        assert put_whole(sender, upload.pk, joining.content).status_code == 201

    assert dict(RadiologyStudy.objects.values_list("radiology_order_id", "source_clinic")) == {
        blank.pk: CLINIC_NAME,
        named.pk: "Epe Clinic",
    }


def test_the_clinic_goes_with_a_held_file_a_tech_assigns(
    sender: APIClient, radtech: Any, make_order: MakeOrder, radiology_store: str
) -> None:
    order = make_order()
    device_file = ct_for(order)
    upload = declare(sender, "NOT-YET-KNOWN", device_file)
    assert put_whole(sender, upload.pk, device_file.content).json()["held"] is True
    held = UnmatchedImage.objects.get()

    report = inbox.assign([held.pk], order=order, user=radtech, channel="admin")

    assert (report.assigned, report.refused) == ([held], [])
    image = RadiologyImage.objects.select_related("series__study").get()
    assert (image.series.study.radiology_order, image.series.study.source_clinic) == (order, CLINIC_NAME)
    assert read_stored(image.file_key) == device_file.content
    held.refresh_from_db()
    assert (held.status, held.image) == ("assigned", image)


# --- Content-Encoding: zstd -------------------------------------------------------------------


def test_zstd_chunks_are_decoded_and_stored_byte_identical(
    sender: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    device_file = ct_for(order)
    content = device_file.content
    upload = declare(sender, order.accession_number, device_file)

    first = put_zstd(sender, upload.pk, content, 0, 9999)
    assert (first.status_code, first.json()) == (202, pending_body(upload, 10000))
    assert read_stored(chunk_key(upload.pk, 0)) == content[:10000]
    last = put_zstd(sender, upload.pk, content, 10000, len(content) - 1, level=19)

    image = RadiologyImage.objects.select_related("series__study").get()
    upload.refresh_from_db()
    assert (last.status_code, last.json()) == (201, completed_body(upload, image))
    assert read_stored(image.file_key) == content
    assert (image.checksum, image.file_size) == (device_file.checksum, len(content))
    assert staged_keys() == []


def test_a_whole_file_may_come_as_one_zstd_frame(
    sender: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    device_file = ct_for(order)
    upload = declare(sender, order.accession_number, device_file)

    response = sender.put(
        binary_url(upload.pk),
        data=zstd_frame(device_file.content),
        content_type="application/octet-stream",
        headers={"Content-Encoding": "zstd"},
    )

    image = RadiologyImage.objects.get()
    upload.refresh_from_db()
    assert (response.status_code, response.json()) == (201, completed_body(upload, image))
    assert read_stored(image.file_key) == device_file.content


def test_the_checksum_is_checked_on_the_decoded_bytes(
    sender: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    """A frame that decodes to other bytes than the file's is a checksum mismatch: back to byte 0."""
    device_file = ct_for(order)
    tampered = bytearray(device_file.content)
    tampered[-1] ^= 0xFF
    upload = declare(sender, order.accession_number, device_file)
    assert put_zstd(sender, upload.pk, device_file.content, 0, 9999).status_code == 202

    response = put_zstd(sender, upload.pk, bytes(tampered), 10000, len(tampered) - 1)

    assert (response.status_code, response.json()["code"]) == (400, "checksum_mismatch")
    upload.refresh_from_db()
    assert (upload.status, upload.received_bytes, upload.chunk_offsets) == ("pending", 0, [])
    assert (stored_keys(), row_counts(), UnmatchedImage.objects.count()) == ([], (0, 0, 0), 0)


def test_a_zstd_bomb_is_refused_after_the_range_and_nothing_is_kept(
    sender: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    device_file = ct_for(order)
    upload = declare(sender, order.accession_number, device_file)
    assert put_zstd(sender, upload.pk, device_file.content, 0, 999).status_code == 202
    bomb = zeros_frame(gigabytes=1)
    assert len(bomb) < 100_000  # a few dozen kilobytes that decode to a gigabyte

    response = sender.put(
        binary_url(upload.pk),
        data=bomb,
        content_type="application/octet-stream",
        headers={"Content-Range": f"bytes 1000-1999/{device_file.size}", "Content-Encoding": "zstd"},
    )

    assert (response.status_code, response.json()) == (400, BODY_TOO_LONG)
    upload.refresh_from_db()
    assert (upload.received_bytes, upload.chunk_offsets) == (1000, [0])
    assert staged_keys() == [chunk_key(upload.pk, 0)]


def test_a_zstd_frame_that_asks_for_a_huge_window_is_refused_before_it_is_allocated(
    radtech: Any, order: RadiologyOrder, radiology_store: str
) -> None:
    device_file = ct_for(order)
    upload = start_upload(radtech, order, device_file)
    # Streamed without its size, the frame names the window its level asks for: a gigabyte.
    streaming = zstandard.ZstdCompressor(
        compression_params=zstandard.ZstdCompressionParameters(window_log=30)
    ).compressobj()
    frame = streaming.compress(device_file.content[:1000]) + streaming.flush()

    with pytest.raises(InvalidContentEncoding) as raised:
        upload_receive(
            upload=upload,
            body=io.BytesIO(frame),
            content_range=f"bytes 0-999/{device_file.size}",
            content_encoding="zstd",
        )

    assert "Frame requires too much memory" in str(raised.value.__cause__)
    upload.refresh_from_db()
    assert (upload.received_bytes, staged_keys()) == (0, [])


def test_a_corrupt_zstd_frame_is_400_invalid_content_encoding(
    sender: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    device_file = ct_for(order)
    upload = declare(sender, order.accession_number, device_file)
    corrupt = bytearray(zstd_frame(device_file.content[:10000], write_checksum=True))
    corrupt[len(corrupt) // 2] ^= 0xFF

    response = sender.put(
        binary_url(upload.pk),
        data=bytes(corrupt),
        content_type="application/octet-stream",
        headers={"Content-Range": f"bytes 0-9999/{device_file.size}", "Content-Encoding": "zstd"},
    )
    plain = sender.put(
        binary_url(upload.pk),
        data=device_file.content[:10000],
        content_type="application/octet-stream",
        headers={"Content-Range": f"bytes 0-9999/{device_file.size}", "Content-Encoding": "zstd"},
    )

    for refused in (response, plain):
        assert (refused.status_code, refused.json()) == (400, INVALID_CONTENT_ENCODING)
    upload.refresh_from_db()
    assert (upload.status, upload.received_bytes, staged_keys()) == ("pending", 0, [])


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd, gzip", "deflate"])
def test_another_content_encoding_is_415(sender: APIClient, order: RadiologyOrder, encoding: str) -> None:
    device_file = ct_for(order)
    upload = declare(sender, order.accession_number, device_file)

    response = sender.put(
        binary_url(upload.pk),
        data=device_file.content[:1000],
        content_type="application/octet-stream",
        headers={"Content-Range": f"bytes 0-999/{device_file.size}", "Content-Encoding": encoding},
    )

    assert (response.status_code, response.json()) == (415, UNSUPPORTED_CONTENT_ENCODING)
    upload.refresh_from_db()
    assert (upload.received_bytes, staged_keys()) == (0, [])


def test_identity_encoding_is_the_plain_body(sender: APIClient, order: RadiologyOrder) -> None:
    device_file = ct_for(order)
    upload = declare(sender, order.accession_number, device_file)

    response = sender.put(
        binary_url(upload.pk),
        data=device_file.content[:1000],
        content_type="application/octet-stream",
        headers={"Content-Range": f"bytes 0-999/{device_file.size}", "Content-Encoding": "identity"},
    )

    assert (response.status_code, response.json()) == (202, pending_body(upload, 1000))


# --- A body that ends early keeps what arrived (through the service) ----------------------------


class DroppedLink(io.RawIOBase):
    """A request body whose socket fails after `good` bytes: ConnectionResetError from then on."""

    def __init__(self, good: bytes) -> None:
        self._good = io.BytesIO(good)

    def read(self, size: int = -1) -> bytes:
        data = self._good.read(size)
        if not data:
            raise ConnectionResetError(104, "Connection reset by peer")
        return data


def test_a_read_error_from_the_socket_ends_the_body_and_keeps_what_came(
    radtech: Any, order: RadiologyOrder, radiology_store: str
) -> None:
    device_file = ct_for(order)
    content = device_file.content
    upload = start_upload(radtech, order, device_file)

    with pytest.raises(IncompleteBody) as raised:
        upload_receive(
            upload=upload, body=DroppedLink(content[:7000]), content_range=f"bytes 0-19999/{device_file.size}"
        )

    assert raised.value.body() == incomplete_body(7000)
    upload.refresh_from_db()
    assert (upload.received_bytes, upload.chunk_offsets) == (7000, [0])
    assert read_stored(chunk_key(upload.pk, 0)) == content[:7000]
    with pytest.raises(IncompleteBody) as nothing:
        upload_receive(upload=upload, body=DroppedLink(b""), content_range=f"bytes 7000-19999/{device_file.size}")
    assert nothing.value.body() == incomplete_body(7000)
    finished, done = upload_receive(
        upload=upload, body=io.BytesIO(content[7000:]), content_range=f"bytes 7000-{len(content) - 1}/{len(content)}"
    )
    assert (done, finished.status) == (True, "completed")
    assert read_stored(finished.image.file_key) == content  # type: ignore[union-attr]
    assert staged_keys() == []


SMALL_BLOCKS = {"compression_params": zstandard.ZstdCompressionParameters(window_log=10, compression_level=3)}


def test_a_zstd_frame_cut_short_keeps_its_whole_blocks(
    radtech: Any, order: RadiologyOrder, radiology_store: str
) -> None:
    """zstd decodes whole blocks: what a cut frame's complete blocks hold is kept, the rest resent."""
    device_file = ct_for(order)
    content = device_file.content
    upload = start_upload(radtech, order, device_file)
    frame = zstd_frame(content, **SMALL_BLOCKS)
    cut = frame[: len(frame) // 2]
    decodable = len(zstandard.ZstdDecompressor().decompressobj().decompress(cut))
    assert 0 < decodable < len(content)

    with pytest.raises(IncompleteBody) as raised:
        upload_receive(
            upload=upload,
            body=DroppedLink(cut),
            content_range=f"bytes 0-{len(content) - 1}/{len(content)}",
            content_encoding="zstd",
        )

    assert raised.value.body() == incomplete_body(decodable)
    assert read_stored(chunk_key(upload.pk, 0)) == content[:decodable]
    upload.refresh_from_db()
    finished, _done = upload_receive(
        upload=upload,
        body=io.BytesIO(zstd_frame(content[decodable:])),
        content_range=f"bytes {decodable}-{len(content) - 1}/{len(content)}",
        content_encoding="zstd",
    )
    assert read_stored(finished.image.file_key) == content  # type: ignore[union-attr]


# --- A link that drops, over real HTTP ---------------------------------------------------------


@pytest.fixture
def live_clinic(live_server: Any, clinic: Any, order: RadiologyOrder, radiology_store: str) -> Iterator[Any]:
    token = Token.objects.create(user=clinic)
    with requests.Session() as session:
        session.headers["Authorization"] = f"Token {token.key}"
        session.base_url = live_server.url  # type: ignore[attr-defined]
        session.token = token.key  # type: ignore[attr-defined]
        yield session


def drop_after(live_server: Any, token: str, path: str, head: dict[str, str], body_sent: bytes, length: int) -> bytes:
    """A PUT whose Content-Length promises `length` bytes; `body_sent` go out, then the link drops
    (the client's side closes). Returns what the server answered to whoever still listens."""
    parts = urlsplit(live_server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as sock:
        lines = [f"PUT {path} HTTP/1.1", f"Host: {parts.netloc}", f"Authorization: Token {token}"]
        lines += [f"{name}: {value}" for name, value in head.items()]
        lines += [f"Content-Length: {length}", "Connection: close", "", ""]
        sock.sendall("\r\n".join(lines).encode() + body_sent)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    return answer


def json_of(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize("encoded", [False, True], ids=["plain", "zstd"])
def test_over_http_a_dropped_chunk_keeps_what_arrived_and_the_resume_ends_byte_identical(
    live_server: Any, live_clinic: Any, order: RadiologyOrder, encoded: bool
) -> None:
    device_file = ct_for(order)
    content = device_file.content
    created = live_clinic.post(
        f"{live_clinic.base_url}/api/v1/radiology/uploads/", json=by_accession(order.accession_number, device_file)
    )
    assert created.status_code == 201
    upload_id = created.json()["id"]
    path = binary_url(upload_id)
    head = {"Content-Range": f"bytes 0-{len(content) - 1}/{len(content)}"}
    if encoded:
        head["Content-Encoding"] = "zstd"
        frame = zstd_frame(content, **SMALL_BLOCKS)
        sent = frame[: len(frame) // 2]
        kept = len(zstandard.ZstdDecompressor().decompressobj().decompress(sent))
        length = len(frame)
    else:
        sent = content[:15000]
        kept, length = 15000, len(content)

    answer = drop_after(live_server, live_clinic.token, path, head, sent, length)

    upload = RadiologyUpload.objects.get(pk=upload_id)
    assert json_of(answer) == (400, incomplete_body(kept))
    assert (upload.received_bytes, upload.chunk_offsets) == (kept, [0])
    state = live_clinic.get(f"{live_clinic.base_url}{upload_url(upload_id)}").json()
    assert state == pending_body(upload, kept)
    rest = content[kept:]
    resumed = live_clinic.put(
        f"{live_clinic.base_url}{path}",
        data=zstd_frame(rest) if encoded else rest,
        headers={
            "Content-Range": f"bytes {kept}-{len(content) - 1}/{len(content)}",
            **({"Content-Encoding": "zstd"} if encoded else {}),
        },
    )
    assert resumed.status_code == 201, resumed.text
    image = RadiologyImage.objects.select_related("series__study").get()
    upload.refresh_from_db()
    assert resumed.json() == completed_body(upload, image)
    assert read_stored(image.file_key) == content
    assert image.series.study.source_clinic == CLINIC_NAME
    assert staged_keys() == []
