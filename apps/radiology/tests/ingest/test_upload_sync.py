"""upload_sync: staging of chunks in the shared store, resuming, replays and races, failures.

The API tests (test_upload_views.py) pin the answers; these pin the mechanics behind them,
calling the service directly where a test needs to step between two requests: which
objects sit under staging/uploads/{id}/ at each point (on both stores), what a replayed or
concurrent chunk does, and how an upload recovers when the store or the last request fails.
"""

from __future__ import annotations

import datetime as dt
import io
import uuid
from collections.abc import Callable
from typing import IO, Any

import pytest
from django.utils import timezone

from apps.radiology import storage
from apps.radiology.errors import (
    IncompleteBody,
    InvalidContentRange,
    RadiologyError,
    SizeMismatch,
    StorageFailure,
    UploadRangeMismatch,
)
from apps.radiology.ingest.upload_sync import (
    UploadMetadata,
    parse_content_range,
    purge_stale_uploads,
    upload_receive,
    upload_start,
)
from apps.radiology.models import JPEG_MIME_TYPE, RadiologyImage, RadiologyOrder, RadiologyUpload
from apps.radiology.operations.demo import jpeg_with_exif
from apps.radiology.tests.factories import read_stored, row_counts, sample_bytes, stored_keys
from apps.radiology.tests.upload_helpers import (
    DeviceFile,
    chunk_key,
    client_for,
    completed_body,
    metadata,
    pending_body,
    post_upload,
    put_range,
    put_whole,
    staged_keys,
    start_upload,
    upload_url,
)

CT = DeviceFile("CT_small.dcm", sample_bytes("CT_small.dcm"))
SIZE = CT.size  # 39206


def start(user: Any, order: RadiologyOrder, device_file: DeviceFile = CT, **declared: Any) -> RadiologyUpload:
    return start_upload(user, order, device_file, **declared)


def send(upload: RadiologyUpload, start_byte: int, end_byte: int, content: bytes = CT.content) -> RadiologyUpload:
    """One chunk through the service, as the view calls it (with the upload as loaded then)."""
    result, _finished = upload_receive(
        upload=upload,
        body=io.BytesIO(content[start_byte : end_byte + 1]),
        content_range=f"bytes {start_byte}-{end_byte}/{len(content)}",
    )
    return result


def fresh(upload: RadiologyUpload) -> RadiologyUpload:
    return RadiologyUpload.objects.get(pk=upload.pk)


# --- Content-Range parsing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes 0-0/10", (0, 0)),
        ("bytes 0-9/10", (0, 9)),
        ("bytes 9-9/10", (9, 9)),
        ("  bytes 3-7/10  ", (3, 7)),
    ],
)
def test_parse_content_range(header: str, expected: tuple[int, int]) -> None:
    assert parse_content_range(header, 10) == expected


@pytest.mark.parametrize(
    "header", ["bytes 0-10/10", "bytes 5-4/10", "bytes 0-9", "bytes=0-9/10", "bytes 0-9/*", "bytes a-9/10", ""]
)
def test_parse_content_range_refuses_malformed_headers(header: str) -> None:
    with pytest.raises(InvalidContentRange):
        parse_content_range(header, 10)


def test_parse_content_range_refuses_another_total() -> None:
    with pytest.raises(SizeMismatch, match=r"^Content-Range total 11 is not the declared file_size 10\.$"):
        parse_content_range("bytes 0-9/11", 10)


# --- Staging in the shared store ----------------------------------------------------------


def test_chunks_are_staged_in_the_radiology_store_until_the_file_is_complete(
    radtech: Any, order: RadiologyOrder, radiology_store: str
) -> None:
    upload = start(radtech, order)

    upload = send(upload, 0, 9999)
    assert stored_keys() == [chunk_key(upload.pk, 0)]
    upload = send(upload, 10000, 19999)
    upload = send(upload, 20000, 29999)

    keys = [chunk_key(upload.pk, offset) for offset in (0, 10000, 20000)]
    assert keys[1] == f"staging/uploads/{upload.pk}/000000000010000"
    assert stored_keys() == keys
    assert [read_stored(key) for key in keys] == [CT.content[0:10000], CT.content[10000:20000], CT.content[20000:30000]]
    assert (upload.status, upload.received_bytes, upload.chunk_offsets) == ("pending", 30000, [0, 10000, 20000])
    assert row_counts() == (0, 0, 0)

    upload = send(upload, 30000, SIZE - 1)

    image = RadiologyImage.objects.get()
    assert (upload.status, upload.image, upload.received_bytes) == ("completed", image, SIZE)
    assert stored_keys() == [image.file_key]
    assert read_stored(image.file_key) == CT.content


def test_chunks_of_several_uploads_are_kept_apart(radtech: Any, order: RadiologyOrder, radiology_store: str) -> None:
    first, second = start(radtech, order), start(radtech, order)

    send(first, 0, 99)
    send(second, 0, 199)

    assert staged_keys(first.pk) == [chunk_key(first.pk, 0)]
    assert staged_keys(second.pk) == [chunk_key(second.pk, 0)]
    assert read_stored(chunk_key(first.pk, 0)) == CT.content[:100]
    assert read_stored(chunk_key(second.pk, 0)) == CT.content[:200]


def test_any_app_server_can_take_the_next_chunk(radtech: Any, order: RadiologyOrder, radiology_store: str) -> None:
    """Nothing of a partial upload lives in a process: a fresh load of the row is enough."""
    upload = start(radtech, order)
    send(upload, 0, 20000)

    finished = send(fresh(upload), 20001, SIZE - 1)

    assert finished.status == "completed"
    assert read_stored(finished.image.file_key) == CT.content
    assert staged_keys() == []


def test_a_whole_file_after_some_chunks_completes_and_drops_the_chunks(
    radtech: Any, order: RadiologyOrder, radiology_store: str
) -> None:
    upload = send(start(radtech, order), 0, 9999)

    upload, finished = upload_receive(upload=upload, body=io.BytesIO(CT.content), content_range=None)

    assert (finished, upload.status) == (True, "completed")
    assert stored_keys() == [upload.image.file_key]


def test_an_orphan_of_an_interrupted_attempt_is_replaced(
    radtech: Any, order: RadiologyOrder, radiology_store: str
) -> None:
    """A server killed after staging a chunk but before counting it leaves an object behind."""
    upload = send(start(radtech, order), 0, 9999)
    orphan = chunk_key(upload.pk, 10000)
    storage.save_new_object(orphan, io.BytesIO(b"half of an earlier attempt"), content_type="application/octet-stream")

    upload = send(upload, 10000, 19999)

    assert staged_keys() == [chunk_key(upload.pk, 0), orphan]
    assert read_stored(orphan) == CT.content[10000:20000]
    upload = send(upload, 20000, SIZE - 1)
    assert upload.status == "completed"
    assert read_stored(upload.image.file_key) == CT.content
    assert stored_keys() == [upload.image.file_key]


def orphan_after_a_kill(radtech: Any, order: RadiologyOrder) -> tuple[RadiologyUpload, str]:
    """An upload with 0-4999 counted, and the chunk at 5000 staged by a server killed before counting it."""
    upload = send(start(radtech, order), 0, 4999)
    orphan = chunk_key(upload.pk, 5000)
    storage.save_new_object(orphan, io.BytesIO(CT.content[5000:10000]), content_type="application/octet-stream")
    assert (fresh(upload).chunk_offsets, staged_keys()) == ([0], [chunk_key(upload.pk, 0), orphan])
    return upload, orphan


def test_an_uncounted_chunk_goes_when_the_device_sends_the_whole_file_instead(
    radtech: Any, order: RadiologyOrder, radiology_store: str
) -> None:
    """No later request names the orphan's key: only a sweep of the upload's prefix finds it."""
    upload, _orphan = orphan_after_a_kill(radtech, order)

    upload, finished = upload_receive(upload=upload, body=io.BytesIO(CT.content), content_range=None)

    assert (finished, upload.status) == (True, "completed")
    assert read_stored(upload.image.file_key) == CT.content
    assert stored_keys() == [upload.image.file_key]


def test_an_uncounted_chunk_goes_when_the_upload_is_sent_back_to_byte_0(
    radtech: Any, order: RadiologyOrder, radiology_store: str
) -> None:
    upload, _orphan = orphan_after_a_kill(radtech, order)
    RadiologyUpload.objects.filter(pk=upload.pk).update(updated_at=timezone.now() - dt.timedelta(days=30))

    assert purge_stale_uploads(older_than=dt.timedelta(days=1)) == 1

    assert (fresh(upload).received_bytes, fresh(upload).chunk_offsets) == (0, [])
    assert stored_keys() == []


def test_an_incomplete_body_keeps_what_arrived_as_a_chunk_at_its_start(
    radtech: Any, order: RadiologyOrder, radiology_store: str
) -> None:
    upload = send(start(radtech, order), 0, 999)

    with pytest.raises(IncompleteBody) as raised:
        upload_receive(upload=upload, body=io.BytesIO(CT.content[1000:1500]), content_range=f"bytes 1000-1999/{SIZE}")

    assert (raised.value.code, raised.value.extra) == ("incomplete_body", {"received_bytes": 1500})
    assert staged_keys() == [chunk_key(upload.pk, 0), chunk_key(upload.pk, 1000)]
    assert read_stored(chunk_key(upload.pk, 1000)) == CT.content[1000:1500]
    assert (fresh(upload).received_bytes, fresh(upload).chunk_offsets) == (1500, [0, 1000])
    finished = send(fresh(upload), 1500, SIZE - 1)
    assert read_stored(finished.image.file_key) == CT.content
    assert stored_keys() == [finished.image.file_key]


def test_an_empty_body_stages_nothing(radtech: Any, order: RadiologyOrder, radiology_store: str) -> None:
    upload = send(start(radtech, order), 0, 999)

    with pytest.raises(IncompleteBody) as raised:
        upload_receive(upload=upload, body=io.BytesIO(b""), content_range=f"bytes 1000-1999/{SIZE}")

    assert (raised.value.code, raised.value.extra) == ("incomplete_body", {"received_bytes": 1000})
    assert staged_keys() == [chunk_key(upload.pk, 0)]
    assert (fresh(upload).received_bytes, fresh(upload).chunk_offsets) == (1000, [0])


# --- Replays and races --------------------------------------------------------------------


def test_a_replayed_chunk_changes_nothing(radtech: Any, order: RadiologyOrder, radiology_store: str) -> None:
    upload = send(start(radtech, order), 0, 9999)
    stale_copy = fresh(upload)
    upload = send(upload, 10000, 19999)

    # The replay carries other bytes for the same range: they must not replace what was counted.
    with pytest.raises(UploadRangeMismatch) as raised:
        send(stale_copy, 10000, 19999, content=bytes(SIZE))

    assert raised.value.extra == {"received_bytes": 20000}
    assert read_stored(chunk_key(upload.pk, 10000)) == CT.content[10000:20000]
    upload = send(upload, 20000, SIZE - 1)
    assert read_stored(upload.image.file_key) == CT.content
    assert stored_keys() == [upload.image.file_key]


SaveObject = Callable[..., str]


def _run_first_on_staging_write(monkeypatch: pytest.MonkeyPatch, before_write: Callable[[], None]) -> None:
    """Make the next write of a staged chunk first run `before_write` (another request)."""
    real_save: SaveObject = storage.save_new_object
    pending = [before_write]

    def save(key: str, content: IO[bytes], **options: Any) -> str:
        if key.startswith("staging/") and pending:
            pending.pop()()
        return real_save(key, content, **options)

    monkeypatch.setattr(storage, "save_new_object", save)


@pytest.mark.parametrize(("start_byte", "end_byte"), [(10000, 19999), (10000, SIZE - 1)], ids=["middle", "last"])
def test_concurrent_duplicate_chunks_count_once_and_leave_no_object_behind(
    radtech: Any,
    order: RadiologyOrder,
    radiology_store: str,
    monkeypatch: pytest.MonkeyPatch,
    start_byte: int,
    end_byte: int,
) -> None:
    """A device retries a chunk while the first attempt is still in flight, and the retry wins.

    Both passed the received_bytes check before either was counted; the loser's staged
    object must not stay in the store (it is no chunk of the upload).
    """
    upload = send(start(radtech, order), 0, 9999)
    winner: list[RadiologyUpload] = []
    _run_first_on_staging_write(monkeypatch, lambda: winner.append(send(fresh(upload), start_byte, end_byte)))

    with pytest.raises(UploadRangeMismatch) as raised:
        send(upload, start_byte, end_byte)

    assert raised.value.extra == {"received_bytes": end_byte + 1}
    current = fresh(upload)
    assert current.received_bytes == end_byte + 1
    if end_byte < SIZE - 1:
        assert current.chunk_offsets == [0, 10000]
        assert staged_keys() == [chunk_key(upload.pk, 0), chunk_key(upload.pk, 10000)]
        current = send(current, end_byte + 1, SIZE - 1)
    assert current.status == "completed"
    assert read_stored(current.image.file_key) == CT.content
    assert stored_keys() == [current.image.file_key]


def test_concurrent_duplicate_that_loses_after_writing_keeps_the_winners_chunk(
    radtech: Any, order: RadiologyOrder, radiology_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt has written its chunk when the retry writes over the same offset and wins."""
    upload = send(start(radtech, order), 0, 9999)
    real_save: SaveObject = storage.save_new_object
    calls: list[str] = []

    def save(key: str, content: IO[bytes], **options: Any) -> str:
        stored = real_save(key, content, **options)
        if key.startswith("staging/") and not calls:
            calls.append(key)
            send(fresh(upload), 10000, 19999)  # the retry, after the first attempt wrote its object
        return stored

    monkeypatch.setattr(storage, "save_new_object", save)

    with pytest.raises(UploadRangeMismatch):
        send(upload, 10000, 19999)

    assert staged_keys() == [chunk_key(upload.pk, 0), chunk_key(upload.pk, 10000)]
    assert read_stored(chunk_key(upload.pk, 10000)) == CT.content[10000:20000]
    finished = send(fresh(upload), 20000, SIZE - 1)
    assert read_stored(finished.image.file_key) == CT.content
    assert stored_keys() == [finished.image.file_key]


def test_upload_start_race_returns_the_upload_the_other_request_created(
    radtech: Any, order: RadiologyOrder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two copies of one POST: both miss the other's row, one insert fails on the unique constraint."""
    client_upload_id = uuid.uuid4()
    payload = UploadMetadata(
        client_upload_id=client_upload_id,
        radiology_order_id=order.pk,
        filename=CT.filename,
        file_size=CT.size,
        mime_type=CT.mime_type,
        checksum=CT.checksum,
    )
    first, _created = upload_start(user=radtech, metadata=payload)
    real_filter = RadiologyUpload.objects.filter
    missed: list[bool] = []

    def filter_missing_once(*args: Any, **kwargs: Any) -> Any:
        if not missed:
            missed.append(True)
            return real_filter(pk=-1)
        return real_filter(*args, **kwargs)

    monkeypatch.setattr(RadiologyUpload.objects, "filter", filter_missing_once)

    second, created = upload_start(user=radtech, metadata=payload)

    assert (second, created, missed) == (first, False, [True])
    assert RadiologyUpload.objects.count() == 1


# --- Failures of the store and of the last request ----------------------------------------


def test_store_failure_while_staging_is_503_and_counts_nothing(
    radtech: Any, order: RadiologyOrder, radiology_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for(radtech)
    upload = RadiologyUpload.objects.get(pk=post_upload(client, metadata(order, CT)).json()["id"])
    assert put_range(client, upload.pk, CT.content, 0, 9999).status_code == 202

    def unreachable(key: str, content: IO[bytes], **options: Any) -> str:
        raise StorageFailure()

    monkeypatch.setattr(storage, "save_new_object", unreachable)
    response = put_range(client, upload.pk, CT.content, 10000, 19999)
    monkeypatch.undo()

    assert response.status_code == 503
    assert response.json() == {
        "detail": "The image store could not be reached; nothing was saved.",
        "code": "storage_unavailable",
    }
    assert client.get(upload_url(upload.pk)).json() == pending_body(upload, 10000)
    assert staged_keys() == [chunk_key(upload.pk, 0)]
    assert put_range(client, upload.pk, CT.content, 10000, SIZE - 1).status_code == 201
    assert read_stored(RadiologyImage.objects.get().file_key) == CT.content


def test_store_failure_on_the_last_chunk_keeps_the_chunks_and_any_put_finishes(
    radtech: Any, order: RadiologyOrder, radiology_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every byte is in but storing the image failed: the device does not resend the file."""
    client = client_for(radtech)
    upload = RadiologyUpload.objects.get(pk=post_upload(client, metadata(order, CT)).json()["id"])
    assert put_range(client, upload.pk, CT.content, 0, 19999).status_code == 202
    real_save: SaveObject = storage.save_new_object

    def image_store_down(key: str, content: IO[bytes], **options: Any) -> str:
        if key.startswith("radiology/"):
            raise StorageFailure()
        return real_save(key, content, **options)

    monkeypatch.setattr(storage, "save_new_object", image_store_down)
    failed = put_range(client, upload.pk, CT.content, 20000, SIZE - 1)
    monkeypatch.undo()

    assert (failed.status_code, failed.json()["code"]) == (503, "storage_unavailable")
    assert client.get(upload_url(upload.pk)).json() == pending_body(upload, SIZE)
    assert staged_keys() == [chunk_key(upload.pk, 0), chunk_key(upload.pk, 20000)]
    assert row_counts() == (0, 0, 0)

    finished = put_whole(client, upload.pk, b"")

    image = RadiologyImage.objects.get()
    assert (finished.status_code, finished.json()) == (201, completed_body(upload, image))
    assert read_stored(image.file_key) == CT.content
    assert stored_keys() == [image.file_key]


def test_a_staged_chunk_lost_from_the_store_makes_the_device_start_again(
    radtech: Any, order: RadiologyOrder, radiology_store: str
) -> None:
    client = client_for(radtech)
    upload = RadiologyUpload.objects.get(pk=post_upload(client, metadata(order, CT)).json()["id"])
    assert put_range(client, upload.pk, CT.content, 0, 19999).status_code == 202
    storage.delete_object(chunk_key(upload.pk, 0))

    response = put_range(client, upload.pk, CT.content, 20000, SIZE - 1)

    assert response.status_code == 400
    assert response.json() == {
        "detail": "A staged chunk is missing; send the file again from byte 0.",
        "code": "size_mismatch",
    }
    assert client.get(upload_url(upload.pk)).json() == pending_body(upload, 0)
    assert stored_keys() == []
    assert put_whole(client, upload.pk, CT.content).status_code == 201
    assert read_stored(RadiologyImage.objects.get().file_key) == CT.content


def test_a_failed_upload_answers_with_its_stored_error(radtech: Any, order: RadiologyOrder) -> None:
    upload = start(radtech, order, series_uid="1.2.3")
    with pytest.raises(RadiologyError) as first:
        upload_receive(upload=upload, body=io.BytesIO(CT.content), content_range=None)

    upload = fresh(upload)
    assert (upload.status, upload.received_bytes, upload.chunk_offsets) == ("failed", 0, [])
    assert (upload.error_code, upload.error_detail, upload.error_status) == (
        "uid_mismatch",
        "series_uid sent does not match the file's.",
        400,
    )
    with pytest.raises(RadiologyError) as again:
        upload_receive(upload=upload, body=io.BytesIO(CT.content), content_range=None)
    assert (type(first.value).__name__, again.value.code, again.value.status_code, again.value.detail) == (
        "UIDMismatch",
        "uid_mismatch",
        400,
        "series_uid sent does not match the file's.",
    )


def test_declared_fields_reach_the_rows_of_a_jpeg(radtech: Any, order: RadiologyOrder) -> None:
    photo = DeviceFile("ward_photo.jpg", jpeg_with_exif(), mime_type=JPEG_MIME_TYPE)
    upload = start(
        radtech,
        order,
        photo,
        study_description="Bedside photos",
        series_description="Wound",
        series_number=9,
        instance_number=2,
        modality="OT",
    )

    upload, _ = upload_receive(upload=upload, body=io.BytesIO(photo.content), content_range=None)

    image = RadiologyImage.objects.select_related("series__study").get()
    assert upload.image == image
    assert (image.instance_number, image.series.series_number, image.series.series_description) == (2, 9, "Wound")
    assert (image.series.modality, image.series.study.study_description) == ("OT", "Bedside photos")
    assert image.uploaded_by == radtech
