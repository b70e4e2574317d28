"""Offline upload sync: metadata first, then the bytes, whole or in resumable chunks.

Clinic links drop and power fails, so a device may resend any request, hours later,
without knowing whether the last one arrived. The rules that make that safe:
- the device's `client_upload_id` names the upload: posting it again returns the same one;
- a chunk must start exactly at `received_bytes` (else 409 with the current value), and
  the advance of `received_bytes` is a compare-and-set under a row lock, so a replayed or
  concurrent chunk can never be counted twice;
- chunks are objects in the radiology store under `staging/uploads/{id}/`, not files on
  one server's disk, so any app server can take the next chunk and a restart loses nothing;
- when the last byte is in, the chunks are read back in order through the one ingest path,
  which checks size and SHA-256 against the metadata before storing anything. A mismatch
  throws the chunks away and sets `received_bytes` back to 0 so the device resends;
- a server short of disk space refuses the bytes (507 insufficient_storage, with
  `received_bytes`) before writing any: nothing is counted or lost, and the device sends the
  same request again later, when space has been freed.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.radiology import storage
from apps.radiology.errors import (
    ChecksumMismatch,
    EmptyFile,
    FileTooLarge,
    IncompleteBody,
    InsufficientStorage,
    InvalidContentRange,
    OrderNotFound,
    RadiologyError,
    SizeMismatch,
    StorageFailure,
    UploadRangeMismatch,
)
from apps.radiology.imagefiles.declared import DECLARED_FIELDS, DeclaredImage
from apps.radiology.imagefiles.uids import validate_uid
from apps.radiology.ingest import pipeline
from apps.radiology.ingest.identity import MismatchConfirmation
from apps.radiology.models import RadiologyOrder, RadiologyUpload
from apps.radiology.storage import free_space

logger = logging.getLogger(__name__)

STAGING_PREFIX = "staging/uploads"
# ASCII digits, at most 19 (any int64): a header of thousands of digits must be a 400, not
# the ValueError int() raises past 4300 digits (a 500).
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19})")


@dataclass(frozen=True)
class UploadMetadata:
    """What a device declares before sending bytes (validated by the serializer)."""

    client_upload_id: Any
    radiology_order_id: int
    filename: str
    file_size: int
    mime_type: str
    checksum: str
    declared: DeclaredImage = field(default_factory=DeclaredImage)
    # Set when the tech confirms the file belongs to this order though it names another patient.
    patient_mismatch_reason: str = ""


def upload_start(*, user: AbstractBaseUser, metadata: UploadMetadata) -> tuple[RadiologyUpload, bool]:
    """Record an upload's metadata, or return the user's upload with this client_upload_id.

    Returns (upload, created). A repeated post answers with the upload in whatever state
    it is, so a device that lost the first answer simply carries on.
    """
    existing = RadiologyUpload.objects.filter(uploaded_by=user, client_upload_id=metadata.client_upload_id).first()
    if existing is not None:
        return existing, False
    if metadata.file_size > settings.RADIOLOGY_MAX_UPLOAD_SIZE:
        raise FileTooLarge()
    for name, spec in DECLARED_FIELDS.items():
        if spec.kind == "uid" and getattr(metadata.declared, name):
            validate_uid(getattr(metadata.declared, name), field=name)
    storage.safe_filename(metadata.filename)
    if not RadiologyOrder.objects.filter(pk=metadata.radiology_order_id).exists():
        raise OrderNotFound()
    try:
        with transaction.atomic():
            upload = RadiologyUpload.objects.create(
                client_upload_id=metadata.client_upload_id,
                uploaded_by=user,
                radiology_order_id=metadata.radiology_order_id,
                filename=metadata.filename,
                file_size=metadata.file_size,
                mime_type=metadata.mime_type,
                checksum=metadata.checksum.lower(),
                patient_mismatch_reason=metadata.patient_mismatch_reason[:255],
                **metadata.declared.columns(),
            )
    except IntegrityError:
        # The same device request arrived twice at once; the other one created it.
        return RadiologyUpload.objects.get(uploaded_by=user, client_upload_id=metadata.client_upload_id), False
    return upload, True


def parse_content_range(header: str, file_size: int) -> tuple[int, int]:
    """`bytes START-END/TOTAL` -> (START, END); TOTAL must be the declared size."""
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if match is None:
        raise InvalidContentRange()
    start, end, total = (int(group) for group in match.groups())
    if total != file_size:
        raise SizeMismatch(f"Content-Range total {total} is not the declared file_size {file_size}.")
    if start > end or end >= total:
        raise InvalidContentRange()
    return start, end


def upload_receive(
    *, upload: RadiologyUpload, body: IO[bytes] | None, content_range: str | None
) -> tuple[RadiologyUpload, bool]:
    """Take the whole file or one chunk; returns (upload, finished_now).

    finished_now is True when this request completed the upload (201), False when it was a
    chunk (202) or the upload was already complete (200). Too little free disk space for the
    file is InsufficientStorage with the received_bytes to resume from, this request's bytes
    not counted (refused before any is written, or removed again).
    """
    if upload.status == RadiologyUpload.Status.COMPLETED:
        return upload, False
    if upload.status == RadiologyUpload.Status.FAILED:
        raise _stored_error(upload)
    try:
        free_space.require_free_space(incoming_bytes=upload.file_size)
        return _receive(upload, body, content_range)
    except InsufficientStorage as full:
        current = RadiologyUpload.objects.get(pk=upload.pk)
        raise InsufficientStorage(received_bytes=current.received_bytes) from full


def _receive(
    upload: RadiologyUpload, body: IO[bytes] | None, content_range: str | None
) -> tuple[RadiologyUpload, bool]:
    """upload_receive for a pending upload."""
    if upload.received_bytes == upload.file_size:
        # Every byte was in but the last request died before ingest finished: finish now.
        return _finish(upload), True
    if content_range is None:
        return _receive_whole(upload, body), True
    start, end = parse_content_range(content_range, upload.file_size)
    if start != upload.received_bytes:
        raise UploadRangeMismatch(received_bytes=upload.received_bytes)
    _stage_chunk(upload, body, start, end)
    upload.refresh_from_db()
    if upload.received_bytes == upload.file_size:
        return _finish(upload), True
    return upload, False


def _receive_whole(upload: RadiologyUpload, body: IO[bytes] | None) -> RadiologyUpload:
    """A body without Content-Range is the whole file: ingest it straight from the request."""
    _discard_chunks(upload)
    return _ingest(upload, body if body is not None else _EmptyStream())


def _stage_chunk(upload: RadiologyUpload, body: IO[bytes] | None, start: int, end: int) -> None:
    """Store one chunk in the shared store, then advance received_bytes if still at `start`."""
    expected = end - start + 1
    settings.RADIOLOGY_STAGING_DIR.mkdir(parents=True, exist_ok=True)
    # The disk filling up under the chunk's spool (an unnamed file, gone once closed) is a 507.
    with (
        storage.refused_when_disk_full(),
        tempfile.SpooledTemporaryFile(
            max_size=storage.STREAM_CHUNK_SIZE * 16, dir=settings.RADIOLOGY_STAGING_DIR
        ) as spool,
    ):
        received = 0
        while body is not None and received < expected:
            piece = body.read(min(storage.STREAM_CHUNK_SIZE, expected - received))
            if not piece:
                break
            spool.write(piece)
            received += len(piece)
        if received != expected:
            raise IncompleteBody(received_bytes=upload.received_bytes)
        if body is not None and body.read(1):
            raise InvalidContentRange("The body is longer than its Content-Range says.")
        spool.seek(0)
        key = _chunk_key(upload, start)
        # `upload` was read when the request began; while its body streamed in, a concurrent
        # copy of this request may have counted this range. Its chunk sits at `key`: look
        # again before deleting anything there.
        current = RadiologyUpload.objects.get(pk=upload.pk)
        if current.status != RadiologyUpload.Status.PENDING or current.received_bytes != start:
            raise UploadRangeMismatch(received_bytes=current.received_bytes)
        # Nothing counted sits at `key`: only an orphan of an interrupted attempt at this offset
        # (or the object of a copy of this request still in flight, with the same range).
        storage.delete_object(key)
        stored_key = storage.save_new_object(key, spool, content_type="application/octet-stream")
    with transaction.atomic():
        current = RadiologyUpload.objects.select_for_update().get(pk=upload.pk)
        if current.status != RadiologyUpload.Status.PENDING or current.received_bytes != start:
            # A concurrent copy of this request was counted first. Our object is the counted
            # chunk only if it sits at the key of a recorded offset of a pending upload;
            # otherwise nothing would ever delete it.
            counted = (
                stored_key == key
                and current.status == RadiologyUpload.Status.PENDING
                and start in current.chunk_offsets
            )
            if not counted:
                storage.delete_object(stored_key)
            raise UploadRangeMismatch(received_bytes=current.received_bytes)
        if stored_key != key:
            storage.delete_object(stored_key)
            raise StorageFailure("Could not stage the chunk; send it again.")
        current.chunk_offsets = [*current.chunk_offsets, start]
        current.received_bytes = end + 1
        current.save(update_fields=["chunk_offsets", "received_bytes", "updated_at"])


def _finish(upload: RadiologyUpload) -> RadiologyUpload:
    """Read the staged chunks back in order through the ingest path."""
    chunks = _ChunkChain([_chunk_key(upload, offset) for offset in upload.chunk_offsets])
    try:
        return _ingest(upload, chunks)
    finally:
        chunks.close()


def _ingest(upload: RadiologyUpload, stream: IO[bytes]) -> RadiologyUpload:
    try:
        result = pipeline.ingest_image(
            order=upload.radiology_order,
            stream=stream,
            filename=upload.filename,
            uploaded_by=upload.uploaded_by,
            declared=DeclaredImage.from_row(upload),
            expected_size=upload.file_size,
            expected_checksum=upload.checksum,
            confirmation=MismatchConfirmation(upload.patient_mismatch_reason, channel="api")
            if upload.patient_mismatch_reason
            else None,
        )
    except (SizeMismatch, ChecksumMismatch, EmptyFile) as error:
        upload.refresh_from_db()
        if upload.status == RadiologyUpload.Status.COMPLETED:
            return upload  # a concurrent request finished it and cleared the chunks we were reading
        _reset(upload)
        if isinstance(error, EmptyFile):
            # file_size >= 1 was declared: no bytes at all is a lost body, not a bad file.
            raise SizeMismatch() from error
        raise
    except StorageFailure:
        raise  # transient: keep the chunks, the device retries
    except RadiologyError as error:
        _fail(upload, error)
        raise
    upload.status = RadiologyUpload.Status.COMPLETED
    upload.image = result.image
    upload.received_bytes = upload.file_size
    upload.save(update_fields=["status", "image", "received_bytes", "updated_at"])
    _discard_chunks(upload)
    return upload


def _reset(upload: RadiologyUpload) -> None:
    """Throw away what was received so the device can send the file again from byte 0."""
    _discard_chunks(upload)
    RadiologyUpload.objects.filter(pk=upload.pk, status=RadiologyUpload.Status.PENDING).update(
        received_bytes=0, chunk_offsets=[], updated_at=timezone.now()
    )
    upload.refresh_from_db()


def _fail(upload: RadiologyUpload, error: RadiologyError) -> None:
    """Record a rejection of the content itself: resending the same bytes cannot succeed."""
    _discard_chunks(upload)
    RadiologyUpload.objects.filter(pk=upload.pk, status=RadiologyUpload.Status.PENDING).update(
        status=RadiologyUpload.Status.FAILED,
        received_bytes=0,
        chunk_offsets=[],
        error_code=error.code,
        error_detail=str(error.detail)[:255],
        error_status=error.status_code,
        updated_at=timezone.now(),
    )
    upload.refresh_from_db()


def _stored_error(upload: RadiologyUpload) -> RadiologyError:
    error = RadiologyError(upload.error_detail or None)
    error.code = upload.error_code or RadiologyError.code
    error.status_code = upload.error_status or RadiologyError.status_code
    return error


def _chunk_key(upload: RadiologyUpload, start: int) -> str:
    return f"{STAGING_PREFIX}/{upload.pk}/{start:015d}"


def _discard_chunks(upload: RadiologyUpload) -> None:
    for offset in upload.chunk_offsets:
        storage.delete_object(_chunk_key(upload, offset))


def purge_stale_uploads(*, older_than: dt.timedelta) -> int:
    """Drop the staged chunks of pending uploads untouched for `older_than`; return how many.

    The upload row stays, with received_bytes back at 0: a device that comes back later is
    told (409) to start again from byte 0 instead of getting an unknown id.
    """
    cutoff = timezone.now() - older_than
    stale = RadiologyUpload.objects.filter(
        status=RadiologyUpload.Status.PENDING, received_bytes__gt=0, updated_at__lt=cutoff
    )
    count = 0
    for upload in stale.iterator():
        _reset(upload)
        count += 1
    return count


class _EmptyStream:
    def read(self, _size: int = -1) -> bytes:
        return b""


class _ChunkChain:
    """A read-only stream over several stored objects, one after another, never all in memory."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = iter(keys)
        self._current: IO[bytes] | None = None

    def _next_handle(self) -> IO[bytes] | None:
        key = next(self._keys, None)
        if key is None:
            return None
        handle = storage.open_object(key)
        if handle is None:
            # Purged or lost: the bytes are gone, so the device must send the file again.
            raise SizeMismatch("A staged chunk is missing; send the file again from byte 0.")
        return handle

    def read(self, size: int = -1) -> bytes:
        while True:
            if self._current is None:
                self._current = self._next_handle()
                if self._current is None:
                    return b""
            data = self._current.read(size if size and size > 0 else storage.STREAM_CHUNK_SIZE)
            if data:
                return data
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(storage.STREAM_CHUNK_SIZE):
            yield chunk
