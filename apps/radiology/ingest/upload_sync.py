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
  same request again later, when space has been freed;
- a body that ends early (the link dropped, a read error from the socket) keeps the bytes that
  came: they are a chunk of their own at its start offset and count, so after a drop the
  device resumes from `received_bytes` and no byte that arrived is sent twice (400
  incomplete_body says where to resume);
- a chunk may come compressed (`Content-Encoding: zstd`, Content-Range in uncompressed
  offsets): decoded while it streams in, never to more bytes than its range, so a
  decompression bomb costs no more than an honest chunk. What is staged, checked and stored
  is the decoded bytes, exactly the device's file.

An upload names its order (`radiology_order`, a tech's device) or an accession number (a
forwarding clinic's server, which knows its own order's accession, not this server's order
id): such a file goes where the DICOM listener would send it (routing.py), to the order with
that accession or, when there is none or the file does not fit it, the unmatched inbox
(the upload then completes `held`).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import zstandard
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from apps.radiology import storage
from apps.radiology.errors import (
    ChecksumMismatch,
    EmptyFile,
    FileTooLarge,
    IncompleteBody,
    InsufficientStorage,
    InvalidContentEncoding,
    InvalidContentRange,
    OrderNotFound,
    RadiologyError,
    SizeMismatch,
    StorageFailure,
    UnsupportedContentEncoding,
    UploadRangeMismatch,
)
from apps.radiology.imagefiles.declared import DECLARED_FIELDS, DeclaredImage
from apps.radiology.imagefiles.uids import validate_uid
from apps.radiology.ingest import pipeline, routing
from apps.radiology.ingest.holding import Arrival
from apps.radiology.ingest.identity import MismatchConfirmation
from apps.radiology.ingest.outcomes import HeldResult, IngestResult
from apps.radiology.ingest.spool import StagedFile, new_spool_file, spool
from apps.radiology.models import RadiologyOrder, RadiologyUpload, UnmatchedImage
from apps.radiology.storage import free_space

logger = logging.getLogger(__name__)

STAGING_PREFIX = "staging/uploads"
# ASCII digits, at most 19 (any int64): a header of thousands of digits must be a 400, not
# the ValueError int() raises past 4300 digits (a 500).
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19})")
# How a file sent by accession number arrived, for the unmatched inbox's audit trail.
UPLOAD_ARRIVAL = Arrival("upload")
ZSTD = "zstd"
# A zstd frame names the window (history) its decoder must keep. An honest frame of a chunk
# needs at most the chunk (its content size is its window) or, streamed without a size, its
# level's window (8 MiB up to level 19); a larger one is refused before it is allocated.
_ZSTD_WINDOW_FLOOR = 8 * 1024 * 1024


@dataclass(frozen=True)
class UploadMetadata:
    """What a device declares before sending bytes (validated by the serializer)."""

    client_upload_id: Any
    # None when the upload names `accession_number` instead (exactly one of the two).
    radiology_order_id: int | None
    filename: str
    file_size: int
    mime_type: str
    checksum: str
    declared: DeclaredImage = field(default_factory=DeclaredImage)
    # Set when the tech confirms the file belongs to this order though it names another patient.
    patient_mismatch_reason: str = ""
    # A forwarding clinic's upload: the accession number of the order it belongs to (routing.py).
    accession_number: str = ""


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
    # An accession number is looked up when the file is complete: its order may come later.
    if metadata.radiology_order_id is not None and not (
        RadiologyOrder.objects.filter(pk=metadata.radiology_order_id).exists()
    ):
        raise OrderNotFound()
    try:
        with transaction.atomic():
            upload = RadiologyUpload.objects.create(
                client_upload_id=metadata.client_upload_id,
                uploaded_by=user,
                radiology_order_id=metadata.radiology_order_id,
                accession_number=metadata.accession_number if metadata.radiology_order_id is None else "",
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


def content_encoding_of(header: str | None) -> str | None:
    """The Content-Encoding of an upload's bytes: ZSTD, or None for none; any other is UnsupportedContentEncoding."""
    value = (header or "").strip().lower()
    if value in ("", "identity"):
        return None
    if value == ZSTD:
        return ZSTD
    raise UnsupportedContentEncoding()


def upload_receive(
    *,
    upload: RadiologyUpload,
    body: IO[bytes] | None,
    content_range: str | None,
    content_encoding: str | None = None,
    source_clinic: str = "",
) -> tuple[RadiologyUpload, bool]:
    """Take the whole file or one chunk; returns (upload, finished_now).

    finished_now is True when this request completed the upload (201), False when it was a
    chunk (202) or the upload was already complete (200). Too little free disk space for the
    file is InsufficientStorage with the received_bytes to resume from, this request's bytes
    not counted (refused before any is written, or removed again). `content_encoding` is the
    request's Content-Encoding header; `source_clinic` the forwarding clinic sending it
    (access.permissions.forwarding_clinic_name of the uploader), recorded with the file.
    """
    encoding = content_encoding_of(content_encoding)
    if upload.status == RadiologyUpload.Status.COMPLETED:
        return upload, False
    if upload.status == RadiologyUpload.Status.FAILED:
        raise _stored_error(upload)
    try:
        free_space.require_free_space(incoming_bytes=upload.file_size)
        return _receive(upload, body, content_range, encoding, source_clinic)
    except InsufficientStorage as full:
        current = RadiologyUpload.objects.get(pk=upload.pk)
        raise InsufficientStorage(received_bytes=current.received_bytes) from full


def _receive(
    upload: RadiologyUpload, body: IO[bytes] | None, content_range: str | None, encoding: str | None, source_clinic: str
) -> tuple[RadiologyUpload, bool]:
    """upload_receive for a pending upload."""
    if upload.received_bytes == upload.file_size:
        # Every byte was in but the last request died before ingest finished: finish now.
        return _finish(upload, source_clinic), True
    if content_range is None:
        return _receive_whole(upload, body, encoding, source_clinic), True
    start, end = parse_content_range(content_range, upload.file_size)
    if start != upload.received_bytes:
        raise UploadRangeMismatch(received_bytes=upload.received_bytes)
    _stage_chunk(upload, body, start, end, encoding)
    upload.refresh_from_db()
    if upload.received_bytes == upload.file_size:
        return _finish(upload, source_clinic), True
    return upload, False


def _receive_whole(
    upload: RadiologyUpload, body: IO[bytes] | None, encoding: str | None, source_clinic: str
) -> RadiologyUpload:
    """A body without Content-Range is the whole file: ingest it straight from the request.

    Compressed, it decodes to at most one read past the declared file_size: spooling stops
    there (SizeMismatch).
    """
    _discard_chunks(upload)
    return _ingest(upload, decoded_body(body, encoding, bound=upload.file_size), source_clinic)


def _stage_chunk(upload: RadiologyUpload, body: IO[bytes] | None, start: int, end: int, encoding: str | None) -> None:
    """Store one chunk in the shared store, then advance received_bytes if still at `start`.

    A body that ends early keeps what came: those bytes are stored and counted as a chunk of
    their own (at `start`, like any), then IncompleteBody says where to resume. No byte at all
    changes nothing. Two copies of one request in flight at once that ended at different
    lengths can leave the counted offset's object with the other copy's length (each deletes
    the orphan at `key` before writing): never counted twice, and the size and checksum check
    at the end sends the device back to byte 0 rather than store anything but its file.
    """
    expected = end - start + 1
    settings.RADIOLOGY_STAGING_DIR.mkdir(parents=True, exist_ok=True)
    decoded = decoded_body(body, encoding, bound=expected)
    # The disk filling up under the chunk's spool (an unnamed file, gone once closed) is a 507.
    with (
        storage.refused_when_disk_full(),
        tempfile.SpooledTemporaryFile(
            max_size=storage.STREAM_CHUNK_SIZE * 16, dir=settings.RADIOLOGY_STAGING_DIR
        ) as spool_file,
    ):
        received = 0
        while received < expected:
            piece = decoded.read(min(storage.STREAM_CHUNK_SIZE, expected - received))
            if not piece:
                break
            spool_file.write(piece)
            received += len(piece)
        if received == 0:
            raise IncompleteBody(received_bytes=upload.received_bytes)
        if received == expected and decoded.read(1):
            raise InvalidContentRange("The body is longer than its Content-Range says.")
        spool_file.seek(0)
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
        stored_key = storage.save_new_object(key, spool_file, content_type="application/octet-stream")
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
        # A partial chunk's bytes count as much as a whole one's: the next starts after them.
        current.received_bytes = start + received
        current.save(update_fields=["chunk_offsets", "received_bytes", "updated_at"])
    if received != expected:
        logger.info("upload %s: the body ended after %d of %d bytes; they are kept", upload.pk, received, expected)
        raise IncompleteBody(received_bytes=start + received)


def _finish(upload: RadiologyUpload, source_clinic: str) -> RadiologyUpload:
    """Read the staged chunks back in order through the ingest path."""
    chunks = _ChunkChain([_chunk_key(upload, offset) for offset in upload.chunk_offsets])
    try:
        return _ingest(upload, chunks, source_clinic)
    finally:
        chunks.close()


def _ingest(upload: RadiologyUpload, stream: IO[bytes], source_clinic: str) -> RadiologyUpload:
    try:
        if upload.radiology_order_id is None:
            result = _ingest_by_accession(upload, stream, source_clinic)
        else:
            result = pipeline.ingest_image(
                order=upload.radiology_order,  # type: ignore[arg-type]
                stream=stream,
                filename=upload.filename,
                uploaded_by=upload.uploaded_by,
                declared=DeclaredImage.from_row(upload),
                expected_size=upload.file_size,
                expected_checksum=upload.checksum,
                confirmation=_confirmation(upload),
                source_clinic=source_clinic,
            )
    except (SizeMismatch, ChecksumMismatch, EmptyFile, InvalidContentEncoding) as error:
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
    if isinstance(result, HeldResult):
        upload.unmatched = result.unmatched
    else:
        upload.image = result.image
    upload.received_bytes = upload.file_size
    upload.save(update_fields=["status", "image", "unmatched", "received_bytes", "updated_at"])
    _discard_chunks(upload)
    return upload


def _ingest_by_accession(upload: RadiologyUpload, stream: IO[bytes], source_clinic: str) -> IngestResult | HeldResult:
    """An upload by accession number, routed as the DICOM listener routes an instance (routing.py).

    The bytes are spooled to the staging directory once (hashed and checked against the
    metadata as they come), so the second attempt, into the unmatched inbox when the file does
    not fit the order, reads them again without another copy.
    """
    settings.RADIOLOGY_STAGING_DIR.mkdir(parents=True, exist_ok=True)
    with new_spool_file() as spool_file:
        spooled = spool(stream, spool_file, expected_size=upload.file_size, expected_checksum=upload.checksum)
        outcome = routing.ingest_routed(
            StagedFile(path=spooled.path, size=spooled.size, checksum=spooled.checksum),
            routing.order_with_accession(upload.accession_number),
            arrival=UPLOAD_ARRIVAL,
            uploaded_by=upload.uploaded_by,
            filename=upload.filename,
            declared=DeclaredImage.from_row(upload),
            expected_size=upload.file_size,
            expected_checksum=upload.checksum,
            confirmation=_confirmation(upload),
            source_clinic=source_clinic,
        )
    if isinstance(outcome, RadiologyError):
        raise outcome
    return outcome


def _confirmation(upload: RadiologyUpload) -> MismatchConfirmation | None:
    if not upload.patient_mismatch_reason:
        return None
    return MismatchConfirmation(upload.patient_mismatch_reason, channel="api")


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
    """Delete every staged object of this upload: the counted chunks, then anything else under its prefix.

    The sweep finds what no offset records: a server killed after storing a chunk but before
    counting it leaves that object behind, and when the device resends from the counted offset
    with other chunk boundaries, no later request names its key again.
    """
    for offset in upload.chunk_offsets:
        storage.delete_object(_chunk_key(upload, offset))
    storage.delete_under(f"{STAGING_PREFIX}/{upload.pk}/")


@dataclass(frozen=True)
class DeliveredImage:
    """An image a user's completed uploads delivered, and where it is now."""

    image_uid: str
    checksum: str
    file_size: int
    state: str  # "stored" | "held" | "discarded"


# When several uploads delivered one image (a clinic resent it), the best news wins.
_STATE_RANK = {"discarded": 0, "held": 1, "stored": 2}
_STATE_OF_UNMATCHED = {
    UnmatchedImage.Status.PENDING: "held",
    UnmatchedImage.Status.ASSIGNED: "stored",
    UnmatchedImage.Status.DISCARDED: "discarded",
}


def delivered_images(*, user: AbstractBaseUser, study_uid: str) -> list[DeliveredImage]:
    """The images of this study UID that `user`'s completed uploads delivered, by image UID.

    What a forwarding clinic asks once per study to count it delivered (every image confirmed
    with its checksum): stored (in a study, also once a tech assigned it from the inbox),
    held (waiting in the unmatched inbox) or discarded (a tech threw it away). Only the user's
    own uploads: a clinic learns nothing of what others sent. One query, whatever the study's size.
    """
    rows = (
        # The declared study UID (a forwarder always declares it, and ingest checked it against
        # the file's) finds them by index rad_upload_user_study, however many the clinic sent.
        RadiologyUpload.objects.filter(uploaded_by=user, study_uid=study_uid, status=RadiologyUpload.Status.COMPLETED)
        .filter(Q(image__series__study__study_uid=study_uid) | Q(unmatched__study_uid=study_uid))
        .order_by()
        .values_list("image__image_uid", "unmatched__image_uid", "unmatched__status", "checksum", "file_size")
    )
    best: dict[str, DeliveredImage] = {}
    for stored_uid, held_uid, held_status, checksum, file_size in rows:
        state = "stored" if stored_uid is not None else _STATE_OF_UNMATCHED[held_status]
        image_uid = stored_uid if stored_uid is not None else held_uid
        known = best.get(image_uid)
        if known is None or _STATE_RANK[state] > _STATE_RANK[known.state]:
            best[image_uid] = DeliveredImage(image_uid=image_uid, checksum=checksum, file_size=file_size, state=state)
    return [best[image_uid] for image_uid in sorted(best)]


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


def staged_keys_of_finished_uploads() -> dict[str, list[str]]:
    """Staged objects no pending upload accounts for, by the upload id in their key.

    An upload no longer pending (completed, failed) or whose row is gone, or a folder under
    staging/uploads/ that is no upload id at all: what verify_radiology_storage reports as
    orphans and purge_finished_upload_chunks removes.
    """
    by_upload: dict[str, list[str]] = {}
    for key in storage.iter_keys(f"{STAGING_PREFIX}/"):
        by_upload.setdefault(key[len(STAGING_PREFIX) + 1 :].split("/", 1)[0], []).append(key)
    pending = {
        str(pk)
        for pk in RadiologyUpload.objects.filter(status=RadiologyUpload.Status.PENDING).values_list("pk", flat=True)
    }
    return {upload_id: keys for upload_id, keys in by_upload.items() if upload_id not in pending}


def purge_finished_upload_chunks() -> int:
    """Drop staged objects of uploads that are no longer pending (or whose row is gone); return how many uploads.

    Completing or failing an upload discards its chunks right after the status is saved; a
    server killed between the two leaves them under a finished upload, where no request and no
    stale-upload purge ever looks again. No age is needed: a finished upload takes no chunk
    (a request still writing one to it deletes its own object when it finds the status changed).
    A folder that is no upload id is left for an operator (verify_radiology_storage lists it).
    """
    finished = sorted(int(upload_id) for upload_id in staged_keys_of_finished_uploads() if upload_id.isdigit())
    for upload_id in finished:
        storage.delete_under(f"{STAGING_PREFIX}/{upload_id}/")
    return len(finished)


class _EmptyStream:
    def read(self, _size: int = -1) -> bytes:
        return b""


def decoded_body(body: IO[bytes] | None, encoding: str | None, *, bound: int) -> IO[bytes]:
    """The request body as the file's bytes: read errors from the socket are its end, and a
    zstd body is decoded as it is read, each read returning at most the bytes asked for.

    `bound` is how many decoded bytes the caller takes (a chunk's range, a whole file's size):
    the decoder's window is refused beyond what that many bytes, or an honest compressor, need.
    """
    raw = _UntilDropped(body)
    if encoding != ZSTD:
        return raw  # type: ignore[return-value]
    return _ZstdDecoded(raw, bound=bound)  # type: ignore[return-value]


class _UntilDropped:
    """A request body whose read error (the client's link dropped: a reset, a timeout) reads as its end.

    Django raises UnreadablePostError (an OSError) for what the server's socket raised; the
    bytes read before it are good, so the caller keeps them and the device resumes after them.
    """

    def __init__(self, body: IO[bytes] | None) -> None:
        self._body = body
        self.dropped = False

    def read(self, size: int = -1) -> bytes:
        if self._body is None or self.dropped:
            return b""
        try:
            return self._body.read(size)
        except OSError as error:
            logger.info("an upload body ended with a read error: %s", type(error).__name__)
            self.dropped = True
            return b""


class _ZstdDecoded:
    """One zstd frame's decoded bytes, read from a body as they are asked for.

    zstandard's stream reader decodes into a buffer of the size asked, never more, so a frame
    that would expand to gigabytes (a decompression bomb) costs one read's worth; the caller
    asks for no more than its range and one byte to see whether the frame goes on. A frame cut
    short (the link dropped) ends after its last whole block; a corrupt one, or trailing bytes
    that are not a frame, is InvalidContentEncoding.
    """

    def __init__(self, raw: _UntilDropped, *, bound: int) -> None:
        decompressor = zstandard.ZstdDecompressor(max_window_size=max(bound, _ZSTD_WINDOW_FLOOR))
        self._reader = decompressor.stream_reader(
            raw, read_size=storage.STREAM_CHUNK_SIZE, read_across_frames=True, closefd=False
        )

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = storage.STREAM_CHUNK_SIZE  # never "all of it": that is what a bomb wants
        try:
            return self._reader.read(size)
        except zstandard.ZstdError as error:
            raise InvalidContentEncoding() from error


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
