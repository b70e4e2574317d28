"""Pushing one outbox task's image to a far PACS-lite with its upload sync protocol (docs: forwarding contract).

Per task: the metadata is POSTed (or, after a restart, the far side's upload is asked for by
the id the task remembers), then the bytes are PUT in chunks from the far side's
`received_bytes`, each chunk sized to the link and zstd-compressed where it pays (chunking.py).
The far side keeps the bytes of a chunk cut short, so after any drop the upload is asked for
again and the next chunk starts where the far side's bytes end: no byte it has is sent twice.

How each attempt ends is recorded in the outbox (outbox/progress.py), whose rows survive a kill:
- completed there (stored under the order with that accession, or held in its unmatched inbox):
  mark_sent;
- the link or the far side in trouble (no connection, a timeout, 5xx, 507 full, 429 busy):
  mark_retry after an exponential backoff with jitter. A 409 range_mismatch or a 400
  incomplete_body is not a failure: the upload is read again and the push carries on;
- refused for what it is (401/403: the token; 409 image_conflict and the like; 400, 404, 413,
  415, 422: the file or its metadata; an upload the far side failed): mark_failed with the far
  side's own code and detail, never retried until a tech asks.

The error codes of the far side come from its answers; those below are the forwarder's own,
for attempts that got no usable answer. Log lines name tasks, images, byte counts and codes,
never a patient (the metadata sent names none either: the far side reads identity from the file).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
from django.conf import settings
from django.db import DatabaseError, connection
from urllib3.exceptions import HTTPError as TransportFailure
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as TransportTimeout

from apps.radiology import errors, storage
from apps.radiology.forwarding.chunking import ZSTD, ChunkEncoder, ChunkSizer, compression_may_pay
from apps.radiology.imagefiles.stored_header import photo_conversion_type
from apps.radiology.models import JPEG_MIME_TYPE, ForwardTask
from apps.radiology.outbox import progress
from apps.radiology.outbox.destinations import Destination

logger = logging.getLogger(__name__)

# The namespace of client_upload_id = uuid5(FORWARD_NAMESPACE, "{image_uid}/{checksum}/{resends}"):
# fixed forever, so the same image sent again after any restart is the same upload on the far side.
FORWARD_NAMESPACE = uuid.UUID("5b0b6a8e-2f43-5c1d-9e7a-3c64d1f0a9b2")
UPLOADS_PATH = "/api/v1/radiology/uploads/"
FORWARDED_PATH = "/api/v1/radiology/forwarded/"

# The forwarder's own error codes (a task's error_code when no usable answer came).
LINK_FAILED = "connection_failed"  # refused, reset or cut mid-request
LINK_TIMEOUT = "timeout"  # nothing moved for RADIOLOGY_FORWARD_TIMEOUT_SECONDS
UNEXPECTED_ANSWER = "unexpected_answer"  # not a PACS-lite answer (a captive portal, a proxy's page, a redirect)
FORWARDER_FAULT = "forwarder_fault"  # a fault in this process (logged with its traceback)

UPLOAD_PENDING = "pending"
UPLOAD_COMPLETED = "completed"
UPLOAD_FAILED = "failed"
# Pieces handed to the socket one by one, so the bytes sent are known when the link drops mid-body.
_SEND_PIECE = 64 * 1024
# Progress (bytes on the wire, the lease) is written at most this often during a push.
SAVE_EVERY_SECONDS = 5.0
# Drops in a row with no byte gained before the attempt gives up and backs off.
MAX_FRUITLESS_RESUMES = 3


def client_upload_id(*, image_uid: str, checksum: str, resends: int) -> uuid.UUID:
    return uuid.uuid5(FORWARD_NAMESPACE, f"{image_uid}/{checksum}/{resends}")


def make_pool(*, in_flight: int) -> urllib3.PoolManager:
    """The forwarder's one connection pool: kept-alive connections, no retries or redirects of its own.

    The forwarder decides every retry itself (a blind retry of a PUT would resend bytes the
    far side has). The timeout applies to connecting and to each wait on the socket (a stall
    while sending or reading), not to a whole chunk.
    """
    seconds = settings.RADIOLOGY_FORWARD_TIMEOUT_SECONDS
    return urllib3.PoolManager(
        num_pools=8,
        maxsize=in_flight,
        block=False,
        timeout=urllib3.Timeout(connect=seconds, read=seconds),
        retries=False,
    )


class LinkError(Exception):
    """No usable answer: the connection failed, timed out, or what answered is not PACS-lite."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class FarSideRefusal(Exception):
    """The far side answered with an error status and (usually) its {"code", "detail"} body."""

    def __init__(
        self, status: int, code: str, detail: str, *, received_bytes: int | None = None, retry_after: float = 0.0
    ) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code
        self.detail = detail
        self.received_bytes = received_bytes
        self.retry_after = retry_after

    @property
    def means_resync(self) -> bool:
        """Our bytes and the far side's disagree on where the upload stands: read it again and carry on."""
        return (self.status, self.code) in {
            (errors.UploadRangeMismatch.status_code, errors.UploadRangeMismatch.code),
            (errors.IncompleteBody.status_code, errors.IncompleteBody.code),
        }

    @property
    def is_transient(self) -> bool:
        """The far side is busy, full, down or behind a failing proxy: the same request may pass later."""
        return self.status in {408, 425, 429} or self.status >= 500


@dataclass(frozen=True)
class RemoteUpload:
    """The far side's upload state, as its GET/POST/PUT answers give it."""

    id: int
    client_upload_id: str
    status: str
    received_bytes: int
    file_size: int
    held: bool = False
    error_code: str = ""
    error_detail: str = ""

    @classmethod
    def from_answer(cls, body: Any) -> RemoteUpload:
        try:
            error = body.get("error") or {}
            return cls(
                id=int(body["id"]),
                client_upload_id=str(body["client_upload_id"]),
                status=str(body["status"]),
                received_bytes=int(body["received_bytes"]),
                file_size=int(body["file_size"]),
                held=bool(body.get("held", False)),
                error_code=str(error.get("code", "")),
                error_detail=str(error.get("detail", "")),
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            raise LinkError(UNEXPECTED_ANSWER, "The far side's answer is not an upload state.") from None


class _CountedBody:
    """A request body handed to the socket piece by piece, each piece counted once it went.

    urllib3 sends each piece before asking for the next, so what is counted left this process
    even when the link drops half way (an exact Content-Length is given: no chunked framing).
    """

    def __init__(self, data: bytes, on_sent: Callable[[int], None]) -> None:
        self._data = memoryview(data)
        self._on_sent = on_sent

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[memoryview]:
        for start in range(0, len(self._data), _SEND_PIECE):
            piece = self._data[start : start + _SEND_PIECE]
            yield piece
            self._on_sent(len(piece))


class DestinationClient:
    """The HTTP calls of the protocol to one destination, over the forwarder's shared pool.

    Request bodies are counted as they go through `on_sent` (the caller's tally of bytes on the wire).
    """

    def __init__(self, destination: Destination, pool: urllib3.PoolManager) -> None:
        self.destination = destination
        self._pool = pool
        self._headers = {"Authorization": f"Token {destination.token}", "Accept": "application/json"}

    def _call(
        self, method: str, path: str, *, body: _CountedBody | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, float]:
        """(status, JSON body or None, Retry-After seconds); LinkError when no answer came."""
        try:
            response = self._pool.request(
                method,
                self.destination.url + path,
                body=body,
                headers={**self._headers, **(headers or {})},
                retries=False,
                redirect=False,
            )
        except NewConnectionError as exc:  # refused, or no route/name (a subclass of the timeout, for history)
            raise LinkError(LINK_FAILED, f"{type(exc).__name__} on {method} to {self.destination.name}") from exc
        except TransportTimeout as exc:
            raise LinkError(LINK_TIMEOUT, f"{type(exc).__name__} on {method} to {self.destination.name}") from exc
        except (TransportFailure, OSError) as exc:
            raise LinkError(LINK_FAILED, f"{type(exc).__name__} on {method} to {self.destination.name}") from exc
        try:
            answer = json.loads(response.data) if response.data else None
        except ValueError:
            answer = None
        return response.status, answer, _retry_after(response.headers.get("Retry-After"))

    def _answer(self, status: int, answer: Any, retry_after: float) -> Any:
        """The body of a 2xx answer; FarSideRefusal for any other status."""
        if 200 <= status < 300:
            return answer
        if isinstance(answer, dict) and isinstance(answer.get("code"), str):
            received = answer.get("received_bytes")
            raise FarSideRefusal(
                status,
                answer["code"],
                str(answer.get("detail", ""))[:255],
                received_bytes=received if isinstance(received, int) else None,
                retry_after=retry_after,
            )
        raise FarSideRefusal(
            status,
            UNEXPECTED_ANSWER,
            f"HTTP {status} without a PACS-lite error body (a redirect or a proxy in the way?).",
            retry_after=retry_after,
        )

    def post_upload(self, metadata: dict[str, Any], *, on_sent: Callable[[int], None]) -> RemoteUpload:
        """Declare the upload (201 new, 200 the same client_upload_id again): its state."""
        body = _CountedBody(json.dumps(metadata).encode(), on_sent)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        status, answer, retry_after = self._call("POST", UPLOADS_PATH, body=body, headers=headers)
        return RemoteUpload.from_answer(self._answer(status, answer, retry_after))

    def get_upload(self, upload_id: int) -> RemoteUpload | None:
        """The upload's state; None when the far side has no such upload (404)."""
        status, answer, retry_after = self._call("GET", f"{UPLOADS_PATH}{upload_id}/")
        if status == 404:
            return None
        return RemoteUpload.from_answer(self._answer(status, answer, retry_after))

    def put_chunk(
        self,
        upload_id: int,
        *,
        start: int,
        total: int,
        payload_size: int,
        body: bytes,
        encoding: str | None,
        on_sent: Callable[[int], None],
    ) -> RemoteUpload:
        """Bytes START..START+payload_size-1 (uncompressed offsets) of the file; `body` zstd-encoded or raw."""
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(body)),
            "Content-Range": f"bytes {start}-{start + payload_size - 1}/{total}",
        }
        if encoding:
            headers["Content-Encoding"] = encoding
        status, answer, retry_after = self._call(
            "PUT", f"{UPLOADS_PATH}{upload_id}/binary/", body=_CountedBody(body, on_sent), headers=headers
        )
        return RemoteUpload.from_answer(self._answer(status, answer, retry_after))

    def forwarded_images(self, study_uid: str) -> list[dict[str, Any]]:
        """What the far side holds of the study from this clinic: [{image_uid, checksum, file_size, state}]."""
        status, answer, retry_after = self._call("GET", f"{FORWARDED_PATH}{study_uid}/")
        body = self._answer(status, answer, retry_after)
        images = body.get("images") if isinstance(body, dict) else None
        if not isinstance(images, list) or not all(isinstance(image, dict) for image in images):
            raise LinkError(UNEXPECTED_ANSWER, "The far side's answer is not a list of forwarded images.")
        return images


def _retry_after(value: str | None) -> float:
    """Retry-After in seconds (the far side's throttle says when); 0 when absent or an HTTP date."""
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


def upload_metadata(task: ForwardTask) -> dict[str, Any]:
    """The POST body for the task's image: the order's accession instead of an order id, and what the rows say.

    For DICOM the far side reads UIDs, numbers and descriptions from the file itself (these
    must agree); for a JPEG they are all it has, so the regional copy lands in the same study.
    """
    image = task.image
    series = image.series
    study = series.study
    return {
        "client_upload_id": str(
            client_upload_id(image_uid=image.image_uid, checksum=image.checksum, resends=task.resends)
        ),
        "accession_number": study.radiology_order.accession_number,
        "filename": image.filename,
        "file_size": image.file_size,
        "mime_type": image.mime_type,
        "checksum": image.checksum,
        "study_uid": study.study_uid,
        "series_uid": series.series_uid,
        "image_uid": image.image_uid,
        "study_description": study.study_description,
        "series_description": series.series_description,
        "series_number": series.series_number,
        "instance_number": image.instance_number,
        "modality": series.modality or study.modality,
        "photographed_film": image.mime_type == JPEG_MIME_TYPE and photo_conversion_type(image) == "DF",
    }


# Waits before recording a push's outcome again when the database refused it.
RECORD_RETRY_SECONDS = (0.05, 0.2, 0.5, 1.0, 2.0)


def recorded(change: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Apply an outbox change, trying again a few times if the database refuses it for a moment.

    A push's outcome is worth a few seconds of waiting: unrecorded, its task sits out its
    lease (minutes) before anyone takes it up. SQLite answers "locked" when a writer held it
    past its timeout, PostgreSQL drops connections when it restarts; each try starts on a
    fresh connection. The changes are conditional on the task's state (outbox/progress.py),
    so one that committed before its error was reported is not applied twice.
    """
    for wait in (*RECORD_RETRY_SECONDS, None):
        try:
            change(*args, **kwargs)
            return
        except DatabaseError:
            if wait is None or connection.in_atomic_block:
                raise
            connection.close()
            time.sleep(wait)


# What push_task reports (the outbox rows say the same).
SENT = "sent"
RETRY = "retry"
FAILED = "failed"
STOPPED = "stopped"


@dataclass
class _Attempt:
    """One push attempt's bookkeeping: bytes on the wire (recorded or not yet), whether any got through."""

    task: ForwardTask
    last_saved: float
    unsaved_wire: int = 0
    wire_bytes: int = 0
    progressed: bool = False

    def count_sent(self, size: int) -> None:
        self.unsaved_wire += size
        self.wire_bytes += size

    def take_wire(self) -> int:
        taken, self.unsaved_wire = self.unsaved_wire, 0
        return taken

    def save(self, upload_id: int | None, *, lease_seconds: int | None = None) -> None:
        """Record the far side's upload id and the bytes sent; renew the lease (or give it back with 0)."""
        recorded(
            progress.save_progress,
            self.task,
            remote_upload_id=upload_id,
            wire_bytes_added=self.take_wire(),
            lease_seconds=settings.RADIOLOGY_FORWARD_LEASE_SECONDS if lease_seconds is None else lease_seconds,
        )
        self.last_saved = time.monotonic()


def push_task(
    task: ForwardTask, *, client: DestinationClient, sizer: ChunkSizer, stop: threading.Event | None = None
) -> str:
    """Push the task's image once and record how it ended in the outbox; returns SENT, RETRY, FAILED or STOPPED.

    `stop` set (the forwarder is shutting down): the push ends after the chunk in flight,
    records its progress and gives its lease back, so the next forwarder resumes it at once.
    """
    attempt = _Attempt(task, last_saved=time.monotonic())
    try:
        return _push(attempt, client, sizer, stop or threading.Event())
    except LinkError as error:
        return _retry(attempt, error.code, error.detail, retry_after=0.0)
    except FarSideRefusal as refusal:
        if refusal.is_transient or refusal.means_resync:
            return _retry(attempt, refusal.code, refusal.detail, retry_after=refusal.retry_after)
        return _fail(attempt, refusal.code, refusal.detail, status=refusal.status)
    except errors.StoredObjectMissing as missing:  # this server lost the file: no resend can help
        return _fail(attempt, missing.code, str(missing.detail), status=None)
    except errors.StorageFailure as failure:  # this server's own store did not answer
        return _retry(attempt, failure.code, str(failure.detail), retry_after=0.0)


def _push(attempt: _Attempt, client: DestinationClient, sizer: ChunkSizer, stop: threading.Event) -> str:
    task = attempt.task
    upload = _open_upload(attempt, client)
    encoder = ChunkEncoder(compress=settings.RADIOLOGY_FORWARD_COMPRESSION == ZSTD and compression_may_pay(task.image))
    fruitless = 0
    while True:
        if upload.status == UPLOAD_COMPLETED:
            recorded(progress.mark_sent, task, wire_bytes_added=attempt.take_wire())
            logger.info(
                "forward task %s image %s to %s: %s, %d of %d bytes on the wire",
                task.pk,
                task.image_id,
                task.destination,
                "held in its unmatched inbox" if upload.held else "stored",
                attempt.wire_bytes,
                task.image.file_size,
            )
            return SENT
        if upload.status == UPLOAD_FAILED:
            return _fail(attempt, upload.error_code or UNEXPECTED_ANSWER, upload.error_detail, status=None)
        if stop.is_set():
            attempt.save(upload.id, lease_seconds=0)
            return STOPPED
        if time.monotonic() - attempt.last_saved >= SAVE_EVERY_SECONDS:
            attempt.save(upload.id)
        start = upload.received_bytes
        try:
            upload = _send_chunk(attempt, client, sizer, encoder, upload)
        except (LinkError, FarSideRefusal) as error:
            if isinstance(error, FarSideRefusal) and not error.means_resync and error.status != 404:
                raise
            if isinstance(error, LinkError):
                sizer.dropped()
            # The far side kept what arrived: ask where it stands and go on from there (a
            # LinkError now ends the attempt). A 404: the far side lost the upload, declare it again.
            upload = client.get_upload(upload.id) or _open_upload(attempt, client, fresh=True)
            if upload.received_bytes > start or upload.status != UPLOAD_PENDING:
                attempt.progressed, fruitless = True, 0
                continue
            fruitless += 1
            if fruitless >= MAX_FRUITLESS_RESUMES:
                raise
            continue
        attempt.progressed, fruitless = True, 0


def _open_upload(attempt: _Attempt, client: DestinationClient, *, fresh: bool = False) -> RemoteUpload:
    """The far side's upload of this task: the one remembered, if the far side still has it; else a new POST."""
    task = attempt.task
    metadata = upload_metadata(task)
    if task.remote_upload_id is not None and not fresh:
        found = client.get_upload(task.remote_upload_id)
        if found is not None and found.client_upload_id == metadata["client_upload_id"]:
            return found
    upload = client.post_upload(metadata, on_sent=attempt.count_sent)
    attempt.save(upload.id)  # from here a kill resumes this upload
    return upload


def _send_chunk(
    attempt: _Attempt, client: DestinationClient, sizer: ChunkSizer, encoder: ChunkEncoder, upload: RemoteUpload
) -> RemoteUpload:
    """PUT the next chunk from the far side's received_bytes; its throughput sizes the next one."""
    image = attempt.task.image
    start = upload.received_bytes
    if start >= image.file_size:
        # Every byte is there but the far side stopped before finishing: any chunk makes it
        # finish (it looks before the range). The last byte goes, so a reset meanwhile is a 409.
        start = image.file_size - 1
    size = min(sizer.next_size(), image.file_size - start)
    payload = storage.read_object_range(image.file_key, start, size)
    if len(payload) != size:
        raise errors.StoredObjectMissing(f"The stored file of image {image.pk} is shorter than its recorded size.")
    body, encoding = encoder.encode(payload)
    began = time.monotonic()
    answer = client.put_chunk(
        upload.id,
        start=start,
        total=image.file_size,
        payload_size=size,
        body=body,
        encoding=encoding,
        on_sent=attempt.count_sent,
    )
    if answer.status == UPLOAD_PENDING:  # a completing chunk's time is mostly the far side's ingest
        sizer.measured(payload_bytes=size, seconds=time.monotonic() - began)
    return answer


def _retry(attempt: _Attempt, code: str, detail: str, *, retry_after: float) -> str:
    """A transient failure: back off, exponentially with the failed attempts in a row.

    An attempt that moved bytes counts as the first failure again: the link was up a moment
    ago, so the next try comes soon (a link that drops every half minute still makes way).
    The far side's Retry-After (a 429 or 503) is a floor.
    """
    task = attempt.task
    delay = progress.backoff_seconds(0 if attempt.progressed else task.attempts)
    delay = min(max(delay, retry_after), settings.RADIOLOGY_FORWARD_BACKOFF_MAX_SECONDS)
    recorded(
        progress.mark_retry,
        task,
        error_code=code,
        error_detail=detail,
        wire_bytes_added=attempt.take_wire(),
        delay_seconds=delay,
    )
    logger.warning(
        "forward task %s image %s to %s: %s, next try in %.1f s (%d bytes on the wire this attempt)",
        task.pk,
        task.image_id,
        task.destination,
        code,
        delay,
        attempt.wire_bytes,
    )
    return RETRY


def _fail(attempt: _Attempt, code: str, detail: str, *, status: int | None) -> str:
    """Refused for good: the task and its study's delivery show why until a tech retries."""
    task = attempt.task
    recorded(progress.mark_failed, task, error_code=code, error_detail=detail, wire_bytes_added=attempt.take_wire())
    logger.warning(
        "forward task %s image %s to %s: refused for good, %s%s",
        task.pk,
        task.image_id,
        task.destination,
        code,
        f" (HTTP {status})" if status else "",
    )
    return FAILED
