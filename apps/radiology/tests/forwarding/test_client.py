"""One image pushed with the upload sync protocol (forwarding/client.py, chunking.py), and its outbox row after.

The far side is this app in live_server where only the protocol matters (the same database:
the upload finds the same order by accession and the same image by checksum, an idempotent
repeat), and far_side_stub.py where a fault must come on cue (a cut connection, a 503, a 409).
Chunks are RADIOLOGY_FORWARD_MAX_CHUNK_BYTES = 64 KiB here (the smallest allowed), so every
chunk's size, and so every byte on the wire, is known.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import uuid
from typing import Any

import pytest
import zstandard
from django.utils import timezone

from apps.radiology.forwarding import chunking
from apps.radiology.forwarding.chunking import ChunkEncoder, ChunkSizer, compression_may_pay
from apps.radiology.forwarding.client import (
    FAILED,
    FORWARD_NAMESPACE,
    RETRY,
    SENT,
    STOPPED,
    DestinationClient,
    make_pool,
    push_task,
    upload_metadata,
)
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import ForwardTask, RadiologyImage, RadiologyUpload
from apps.radiology.outbox import progress
from apps.radiology.outbox.destinations import destination_named
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.forwarding.far_side_stub import FarSideStub, StubUpload, far_side_stub
from apps.radiology.tests.forwarding.forwarder_helpers import (
    CHUNK,
    DESTINATION,
    STUB_TOKEN,
    clinic_account,
    delivery_row,
    forward_to,
    ingest,
    native_ct,
    noisy_jpeg,
    task_of,
    task_row,
)

UPLOAD = "/api/v1/radiology/uploads/1/"
STORAGE_UNAVAILABLE = {
    "detail": "The image store could not be reached; nothing was saved.",
    "code": "storage_unavailable",
}
IMAGE_CONFLICT = {
    "detail": "An image with this UID is already stored with different content.",
    "code": "image_conflict",
}


def push(task: ForwardTask, *, stop: threading.Event | None = None) -> str:
    destination = destination_named(DESTINATION)
    assert destination is not None
    client = DestinationClient(destination, make_pool(in_flight=1))
    return push_task(task, client=client, sizer=ChunkSizer(target_seconds=4, max_bytes=CHUNK), stop=stop)


def metadata_bytes(task: ForwardTask) -> int:
    """The POST body's size: the metadata JSON as the client encodes it."""
    return len(json.dumps(upload_metadata(task)).encode())


def chunks_of(content: bytes, start: int = 0) -> list[bytes]:
    return [content[offset : offset + CHUNK] for offset in range(start, len(content), CHUNK)]


def sent_row(task: ForwardTask, *, remote_upload_id: int, wire_bytes: int) -> dict[str, Any]:
    return {
        "state": "sent",
        "attempts": 0,
        "remote_upload_id": remote_upload_id,
        "resends": 0,
        "wire_bytes": wire_bytes,
        "error_code": "",
        "error_detail": "",
    }


@pytest.fixture
def stub(settings: Any) -> Any:
    with far_side_stub(STUB_TOKEN) as far_side:
        forward_to(settings, far_side.url, STUB_TOKEN)
        yield far_side


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def ct(stub: FarSideStub, make_order: MakeOrder) -> tuple[RadiologyImage, bytes]:
    """A native CT of 4 chunks stored at the clinic, its task queued for the stub."""
    content = native_ct(study_uid=generate_uid(), series_uid=generate_uid())
    assert 3 * CHUNK < len(content) < 4 * CHUNK
    return ingest(make_order(), content, "ct.dcm"), content


def put_ranges(stub: FarSideStub) -> list[tuple[int, int]]:
    """(start, decoded size) of every PUT's bytes, in order."""
    return [(received.start, received.size) for received in stub.received]


# --- Against the real far side (live_server, same database) ---------------------------------------------


def test_a_native_ct_goes_in_zstd_chunks_and_lands_on_its_order_by_accession(
    live_server: Any, settings: Any, make_order: MakeOrder
) -> None:
    forward_to(settings, live_server.url, clinic_account())
    order = make_order()
    content = native_ct(study_uid=generate_uid(), series_uid=generate_uid())
    image = ingest(order, content, "ct.dcm")
    task = task_of(image)

    assert push(task) == SENT

    compressed = [zstandard.ZstdCompressor(level=3).compress(chunk) for chunk in chunks_of(content)]
    assert all(len(wire) <= 0.9 * len(chunk) for wire, chunk in zip(compressed, chunks_of(content), strict=True))
    upload = RadiologyUpload.objects.get()
    wire_bytes = metadata_bytes(task) + sum(map(len, compressed))
    assert wire_bytes < len(content)  # compression more than pays for the metadata
    assert task_row(task) == sent_row(task, remote_upload_id=upload.pk, wire_bytes=wire_bytes)
    assert (
        upload.status,
        upload.client_upload_id,
        upload.radiology_order_id,
        upload.accession_number,
        upload.image_id,
        upload.received_bytes,
        upload.checksum,
    ) == (
        "completed",
        uuid.uuid5(FORWARD_NAMESPACE, f"{image.image_uid}/{image.checksum}/0"),
        None,
        order.accession_number,
        image.pk,
        len(content),
        image.checksum,
    )
    assert list(RadiologyImage.objects.values_list("pk", flat=True)) == [image.pk]
    assert delivery_row(image) == {
        "state": "sending",
        "images_total": 1,
        "images_sent": 1,
        "error_code": "",
        "error_detail": "",
    }


def test_a_jpeg_goes_raw_with_its_declared_fields(live_server: Any, settings: Any, make_order: MakeOrder) -> None:
    forward_to(settings, live_server.url, clinic_account())
    order = make_order(modality="XR", exam_requested="Chest X-ray")
    content = noisy_jpeg()
    assert len(content) > 2 * CHUNK
    image = ingest(order, content, "film.jpg", photographed_film=True, modality="XR", study_description="Chest")
    task = task_of(image)
    series = image.series

    assert upload_metadata(task) == {
        "client_upload_id": str(uuid.uuid5(FORWARD_NAMESPACE, f"{image.image_uid}/{image.checksum}/0")),
        "accession_number": order.accession_number,
        "filename": "film.jpg",
        "file_size": len(content),
        "mime_type": "image/jpeg",
        "checksum": image.checksum,
        "study_uid": series.study.study_uid,
        "series_uid": series.series_uid,
        "image_uid": image.image_uid,
        "study_description": "Chest",
        "series_description": series.series_description,
        "series_number": series.series_number,
        "instance_number": image.instance_number,
        "modality": "XR",
        "photographed_film": True,
    }
    assert push(task) == SENT

    upload = RadiologyUpload.objects.get()
    # Nothing compressed: the wire carries the metadata and the file's own bytes, once.
    assert task_row(task) == sent_row(task, remote_upload_id=upload.pk, wire_bytes=metadata_bytes(task) + len(content))
    assert (upload.status, upload.image_id, upload.photographed_film) == ("completed", image.pk, True)


def test_a_wrong_token_fails_the_task_and_the_study_for_good(
    live_server: Any, settings: Any, make_order: MakeOrder
) -> None:
    clinic_account()
    forward_to(settings, live_server.url, "not-the-clinic-token")
    image = ingest(make_order(), native_ct(study_uid=generate_uid(), series_uid=generate_uid()), "ct.dcm")
    task = task_of(image)

    assert push(task) == FAILED

    assert task_row(task) == {
        "state": "failed",
        "attempts": 0,
        "remote_upload_id": None,
        "resends": 0,
        "wire_bytes": metadata_bytes(task),
        "error_code": "authentication_failed",
        "error_detail": "Invalid token.",
    }
    assert delivery_row(image) == {
        "state": "failed",
        "images_total": 1,
        "images_sent": 0,
        "error_code": "authentication_failed",
        "error_detail": "Invalid token.",
    }
    assert not RadiologyUpload.objects.exists()


# --- Faults on cue (the stub) ------------------------------------------------------------------------------


def test_after_a_cut_the_push_resumes_where_the_far_side_bytes_end(
    stub: FarSideStub, ct: tuple[RadiologyImage, bytes], settings: Any
) -> None:
    settings.RADIOLOGY_FORWARD_COMPRESSION = "none"
    image, content = ct
    stub.cut_put(2, after=10_000)
    task = task_of(image)

    assert push(task) == SENT

    # The far side kept the cut chunk's 10,000 bytes; the next chunk starts right after them.
    assert put_ranges(stub) == [
        (0, CHUNK),
        (CHUNK, 10_000),
        *[
            (start, len(chunk))
            for start, chunk in zip(
                range(CHUNK + 10_000, len(content), CHUNK), chunks_of(content, CHUNK + 10_000), strict=True
            )
        ],
    ]
    assert sum(size for _start, size in put_ranges(stub)) == len(content)  # no byte came twice
    assert bytes(stub.uploads[1].received) == content
    assert stub.requests[:4] == [
        ("POST", "/api/v1/radiology/uploads/"),
        *[("PUT", UPLOAD + "binary/")] * 2,
        ("GET", UPLOAD),
    ]
    # On the wire: every byte once, plus what the cut chunk had in flight when the link died
    # (all of it handed to the socket before the reset, or, if the reset came first, none).
    once = metadata_bytes(task) + len(content) - 10_000
    assert task_row(task)["wire_bytes"] in {once + CHUNK, once}
    assert {**task_row(task), "wire_bytes": 0} == sent_row(task, remote_upload_id=1, wire_bytes=0)


def test_a_cut_zstd_chunk_is_sent_again_from_what_the_far_side_decoded(
    stub: FarSideStub, ct: tuple[RadiologyImage, bytes]
) -> None:
    image, content = ct
    stub.cut_put(2, after=5_000)  # less than one zstd block: nothing of it decodes

    assert push(task_of(image)) == SENT

    assert put_ranges(stub) == [
        (0, CHUNK),
        (CHUNK, 0),
        *[
            (start, len(chunk))
            for start, chunk in zip(range(CHUNK, len(content), CHUNK), chunks_of(content, CHUNK), strict=True)
        ],
    ]
    assert [received.encoding for received in stub.received] == ["zstd"] * len(stub.received)
    assert bytes(stub.uploads[1].received) == content


def test_a_restarted_push_asks_for_its_upload_and_sends_only_the_rest(
    stub: FarSideStub, ct: tuple[RadiologyImage, bytes], settings: Any
) -> None:
    settings.RADIOLOGY_FORWARD_COMPRESSION = "none"
    image, content = ct
    task = task_of(image)
    stub.uploads[1] = StubUpload(1, upload_metadata(task), bytearray(content[:100_000]))
    ForwardTask.objects.filter(pk=task.pk).update(remote_upload_id=1)
    task = task_of(image)

    assert push(task) == SENT

    assert stub.posts() == []
    assert stub.requests[0] == ("GET", UPLOAD)
    assert put_ranges(stub) == [
        (start, len(chunk))
        for start, chunk in zip(range(100_000, len(content), CHUNK), chunks_of(content, 100_000), strict=True)
    ]
    assert task_row(task) == sent_row(task, remote_upload_id=1, wire_bytes=len(content) - 100_000)


def test_an_upload_the_far_side_lost_is_declared_again(stub: FarSideStub, ct: tuple[RadiologyImage, bytes]) -> None:
    image, content = ct
    ForwardTask.objects.filter(pk=task_of(image).pk).update(remote_upload_id=77)

    assert push(task_of(image)) == SENT

    assert stub.requests[:2] == [("GET", "/api/v1/radiology/uploads/77/"), ("POST", "/api/v1/radiology/uploads/")]
    assert task_row(task_of(image))["remote_upload_id"] == 1
    assert bytes(stub.uploads[1].received) == content


def test_a_range_mismatch_is_read_again_and_the_push_carries_on(
    stub: FarSideStub, ct: tuple[RadiologyImage, bytes]
) -> None:
    image, content = ct
    stub.answer(
        "PUT",
        2,
        409,
        {
            "detail": "This chunk does not start where the received bytes end; resume from received_bytes.",
            "code": "range_mismatch",
            "received_bytes": CHUNK,
        },
    )

    assert push(task_of(image)) == SENT

    assert ("GET", UPLOAD) in stub.requests
    assert bytes(stub.uploads[1].received) == content
    assert task_row(task_of(image))["attempts"] == 0


@pytest.fixture
def backoff(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """backoff_seconds answers 37 s whatever the attempts; the attempts it was asked about, in order."""
    asked: list[int] = []

    def fixed(attempts: int, **_kwargs: Any) -> float:
        asked.append(attempts)
        return 37.0

    monkeypatch.setattr(progress, "backoff_seconds", fixed)
    return asked


def retry_delay(task: ForwardTask) -> dt.timedelta:
    row = ForwardTask.objects.get(pk=task.pk)
    assert row.lease_until is None
    return row.next_attempt_at - row.error_at


def test_a_503_backs_off_by_the_failed_attempts(
    stub: FarSideStub, ct: tuple[RadiologyImage, bytes], backoff: list[int]
) -> None:
    image, content = ct
    ForwardTask.objects.filter(pk=task_of(image).pk).update(attempts=3)
    stub.answer("PUT", 1, 503, STORAGE_UNAVAILABLE)
    task = task_of(image)
    first_chunk = zstandard.ZstdCompressor(level=3).compress(content[:CHUNK])

    assert push(task) == RETRY

    assert backoff == [3]
    assert retry_delay(task) == dt.timedelta(seconds=37)
    assert task_row(task) == {
        "state": "pending",
        "attempts": 4,
        "remote_upload_id": 1,
        "resends": 0,
        "wire_bytes": metadata_bytes(task) + len(first_chunk),
        "error_code": "storage_unavailable",
        "error_detail": STORAGE_UNAVAILABLE["detail"],
    }
    assert delivery_row(image) == {
        "state": "sending",
        "images_total": 1,
        "images_sent": 0,
        "error_code": "",
        "error_detail": "",
    }


def test_an_attempt_that_moved_bytes_backs_off_as_a_first_failure(
    stub: FarSideStub, ct: tuple[RadiologyImage, bytes], backoff: list[int]
) -> None:
    image, _content = ct
    ForwardTask.objects.filter(pk=task_of(image).pk).update(attempts=5)
    stub.answer("PUT", 2, 507, {"detail": "Full.", "code": "insufficient_storage", "received_bytes": CHUNK})

    assert push(task_of(image)) == RETRY

    assert backoff == [0]
    assert (task_row(task_of(image))["attempts"], task_row(task_of(image))["error_code"]) == (6, "insufficient_storage")
    assert len(stub.uploads[1].received) == CHUNK


def test_a_429_waits_at_least_its_retry_after(
    stub: FarSideStub, ct: tuple[RadiologyImage, bytes], backoff: list[int]
) -> None:
    image, _content = ct
    stub.answer("POST", 1, 429, {"detail": "Request was throttled.", "code": "throttled"}, {"Retry-After": "120"})
    task = task_of(image)

    assert push(task) == RETRY

    assert retry_delay(task) == dt.timedelta(seconds=120)
    assert {key: task_row(task)[key] for key in ("state", "attempts", "remote_upload_id", "error_code")} == {
        "state": "pending",
        "attempts": 1,
        "remote_upload_id": None,
        "error_code": "throttled",
    }


def test_an_image_conflict_fails_for_good_with_the_far_sides_words(
    stub: FarSideStub, ct: tuple[RadiologyImage, bytes]
) -> None:
    image, _content = ct
    stub.answer("PUT", 4, 409, IMAGE_CONFLICT)
    task = task_of(image)

    assert push(task) == FAILED

    assert {**task_row(task), "wire_bytes": 0} == {
        "state": "failed",
        "attempts": 0,
        "remote_upload_id": 1,
        "resends": 0,
        "wire_bytes": 0,
        **{"error_code": "image_conflict", "error_detail": IMAGE_CONFLICT["detail"]},
    }
    assert delivery_row(image) == {
        "state": "failed",
        "images_total": 1,
        "images_sent": 0,
        "error_code": "image_conflict",
        "error_detail": IMAGE_CONFLICT["detail"],
    }
    assert [method for method, _path in stub.requests] == ["POST", "PUT", "PUT", "PUT", "PUT"]


def test_an_upload_the_far_side_failed_fails_the_task(stub: FarSideStub, ct: tuple[RadiologyImage, bytes]) -> None:
    image, _content = ct
    task = task_of(image)
    error = {"code": "order_not_found", "detail": "No radiology order with this id exists."}
    stub.uploads[1] = StubUpload(1, upload_metadata(task), status="failed", error=error)
    ForwardTask.objects.filter(pk=task.pk).update(remote_upload_id=1)

    assert push(task_of(image)) == FAILED

    assert stub.requests == [("GET", UPLOAD)]
    assert (task_row(task)["state"], task_row(task)["error_code"], task_row(task)["error_detail"]) == (
        "failed",
        "order_not_found",
        "No radiology order with this id exists.",
    )


def test_a_stopping_push_ends_after_its_chunk_and_gives_its_task_back(
    stub: FarSideStub, ct: tuple[RadiologyImage, bytes], settings: Any
) -> None:
    settings.RADIOLOGY_FORWARD_COMPRESSION = "none"
    image, content = ct
    stop = threading.Event()
    stub.on_put = stop.set
    task = task_of(image)

    assert push(task, stop=stop) == STOPPED

    assert put_ranges(stub) == [(0, CHUNK)]
    row = ForwardTask.objects.get(pk=task.pk)
    assert row.lease_until is not None and row.lease_until <= timezone.now()
    assert task_row(task) == {
        "state": "pending",
        "attempts": 0,
        "remote_upload_id": 1,
        "resends": 0,
        "wire_bytes": metadata_bytes(task) + CHUNK,
        "error_code": "",
        "error_detail": "",
    }
    assert progress.claim_due(destination=DESTINATION, limit=5, lease_seconds=60) == [row]
    assert len(content) > CHUNK


# --- Chunk size and compression, alone ---------------------------------------------------------------------


def test_the_chunk_size_follows_the_link() -> None:
    sizer = ChunkSizer(target_seconds=4, max_bytes=8 * 1024 * 1024)
    assert sizer.next_size() == 256 * 1024

    sizer.measured(payload_bytes=256 * 1024, seconds=0.01)  # a LAN: grows, 4x at most
    assert sizer.next_size() == 1024 * 1024
    sizer.measured(payload_bytes=1024 * 1024, seconds=0.01)
    sizer.measured(payload_bytes=4 * 1024 * 1024, seconds=0.01)
    assert sizer.next_size() == 8 * 1024 * 1024  # the largest allowed
    sizer.measured(payload_bytes=1_000_000, seconds=32)  # 31,250 B/s: 4 s of it
    assert sizer.next_size() == 125_000
    sizer.measured(payload_bytes=1000, seconds=30)  # a file's tail: round trip, not rate
    assert sizer.next_size() == 125_000
    sizer.dropped()
    assert sizer.next_size() == 65_536  # half, but never below 64 KiB
    sizer.dropped()
    assert sizer.next_size() == 65_536


def test_compression_stops_for_good_at_the_first_chunk_that_does_not_pay() -> None:
    encoder = ChunkEncoder(compress=True)
    smooth = bytes(range(256)) * 256
    noise = bytes(uuid.uuid4().bytes * 1)  # 16 random bytes: a frame would be larger
    compressed, encoding = encoder.encode(smooth)
    assert (encoding, zstandard.ZstdDecompressor().decompress(compressed)) == (chunking.ZSTD, smooth)
    assert encoder.encode(noise) == (noise, None)
    assert encoder.encode(smooth) == (smooth, None)
    assert not encoder.compressing


@pytest.mark.parametrize(
    ("mime_type", "transfer_syntax_uid", "worth_trying"),
    [
        ("application/dicom", "1.2.840.10008.1.2.1", True),  # explicit VR little endian: native pixels
        ("application/dicom", "1.2.840.10008.1.2", True),
        ("application/dicom", "1.2.840.10008.1.2.4.50", False),  # JPEG baseline
        ("application/dicom", "1.2.840.10008.1.2.4.90", False),  # JPEG 2000
        ("application/dicom", "1.2.840.10008.1.2.5", False),  # RLE
        ("image/jpeg", "", False),
    ],
)
def test_compression_is_not_tried_on_compressed_pixels(
    mime_type: str, transfer_syntax_uid: str, worth_trying: bool
) -> None:
    image = RadiologyImage(mime_type=mime_type, transfer_syntax_uid=transfer_syntax_uid)
    assert compression_may_pay(image) is worth_trying


def test_a_link_down_is_retried_after_a_backoff(
    settings: Any, make_order: MakeOrder, backoff: list[int], unused_port: int
) -> None:
    forward_to(settings, f"http://127.0.0.1:{unused_port}", STUB_TOKEN)
    image = ingest(make_order(), native_ct(study_uid=generate_uid(), series_uid=generate_uid()), "ct.dcm")
    task = task_of(image)

    assert push(task) == RETRY

    assert backoff == [0]
    assert retry_delay(task) == dt.timedelta(seconds=37)
    assert task_row(task) == {
        "state": "pending",
        "attempts": 1,
        "remote_upload_id": None,
        "resends": 0,
        "wire_bytes": 0,
        "error_code": "connection_failed",
        "error_detail": "NewConnectionError on POST to regional",
    }
