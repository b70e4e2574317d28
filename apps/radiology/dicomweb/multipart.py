"""multipart/related bodies: streaming them out (WADO-RS) and reading them in (STOW-RS).

Out: each part is `--boundary CRLF Content-Type: ... CRLF CRLF <bytes> CRLF`, closed by
`--boundary--`. The header is spelled exactly "Content-Type:" because OHIF's parser looks
for that spelling; bytes are streamed part by part, never a whole study in memory.
In: python-multipart's streaming parser writes each part to a staging file as it arrives,
under the STOW-RS limits (parts, bytes per part, bytes per request) checked on the way, and
after a check that the disk has room for it (`check_room_for_body`): a disk that fills up
anyway is a 507 with every part staged so far removed, never a 500 or a partial file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from django.conf import settings
from python_multipart.multipart import MultipartParser

from apps.radiology import storage
from apps.radiology.errors import (
    InsufficientStorage,
    InvalidMultipart,
    PartTooLarge,
    RadiologyError,
    RequestTooLarge,
    TooManyParts,
    UnsupportedMediaType,
)
from apps.radiology.ingest.request_streams import request_body  # noqa: F401 (re-exported for the views)
from apps.radiology.storage import STREAM_CHUNK_SIZE, free_space

CRLF = b"\r\n"


def new_boundary() -> str:
    return f"pacs-lite-{secrets.token_hex(16)}"


def content_type_header(part_type: str, boundary: str) -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


@dataclass(frozen=True)
class Part:
    """One outgoing part: its Content-Type and a stream of its bytes."""

    content_type: str
    chunks: Iterable[bytes]
    location: str | None = None


def stream_parts(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """The body of a multipart/related response, part by part."""
    delimiter = b"--" + boundary.encode("ascii")
    for part in parts:
        header = delimiter + CRLF + b"Content-Type: " + part.content_type.encode("ascii") + CRLF
        if part.location:
            header += b"Content-Location: " + part.location.encode("ascii") + CRLF
        yield header + CRLF
        yield from part.chunks
        yield CRLF
    yield delimiter + b"--" + CRLF


@dataclass
class ReceivedPart:
    """One incoming part, spooled to a file of the staging directory as it arrived.

    Its size and SHA-256 are taken on the way in, so ingest can take the file over as its
    spool (the filesystem store links it in) instead of copying and hashing it again. The
    file is closed once its part is written and opened again only while it is read
    (`open`): a request of thousands of parts holds one open file at a time, not one per
    part. `discard` removes it; the request that received it always does.
    """

    content_type: str
    path: Path
    size: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    _reader: IO[bytes] | None = field(default=None, repr=False)

    @property
    def checksum(self) -> str:
        return self.digest.hexdigest()

    def open(self) -> IO[bytes]:
        """A new read handle on the staged bytes; the caller closes it."""
        return self.path.open("rb")

    @property
    def file(self) -> IO[bytes]:
        """One read handle kept for the part, opened on first use; closing it removes the part."""
        if self._reader is None or self._reader.closed:
            self._reader = _RemovingReader(self.path)
        return self._reader

    def discard(self) -> None:
        """Close the part's handle, if open, and remove its staged file."""
        if self._reader is not None:
            self._reader.close()
        self.path.unlink(missing_ok=True)


class _RemovingReader(io.BufferedReader):
    """A read handle that removes its file when closed (what a NamedTemporaryFile does)."""

    def __init__(self, path: Path) -> None:
        super().__init__(io.FileIO(path, "rb"))
        self._path = path

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._path.unlink(missing_ok=True)


def discard_parts(parts: list[ReceivedPart]) -> None:
    """Remove every staged file of a request (also those ingest has linked into the store)."""
    for part in parts:
        part.discard()


# RFC 2046 5.1.1 says a boundary is 1 to 70 characters, but Orthanc's DICOMweb plugin writes two
# UUIDs joined (73): the limit is lenient enough for real senders and still bounds the search.
MAX_BOUNDARY_LENGTH = 128


def boundary_of(content_type: str) -> tuple[str, str | None]:
    """(boundary, type=) of a multipart/related Content-Type header."""
    pieces = [piece.strip() for piece in content_type.split(";")]
    if not pieces or pieces[0].lower() != "multipart/related":
        raise UnsupportedMediaType()
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, _, value = piece.partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    boundary = params.get("boundary")
    if not boundary:
        raise InvalidMultipart()
    if len(boundary) > MAX_BOUNDARY_LENGTH or not boundary.isascii():
        raise InvalidMultipart("The multipart boundary must be 1 to 128 ASCII characters.")
    return boundary, params.get("type")


@dataclass(frozen=True)
class PartLimits:
    """What one request may bring: parts, bytes per part, bytes in all (the body as sent)."""

    max_parts: int
    max_part_size: int
    max_request_bytes: int

    @classmethod
    def from_settings(cls, *, max_parts: int | None = None) -> PartLimits:
        return cls(
            max_parts=max_parts if max_parts is not None else settings.RADIOLOGY_STOW_MAX_PARTS,
            max_part_size=settings.RADIOLOGY_MAX_UPLOAD_SIZE,
            max_request_bytes=settings.RADIOLOGY_STOW_MAX_REQUEST_BYTES,
        )


def _declared_length(content_length: str | None) -> int | None:
    """The Content-Length as a number, if it is a plain ASCII one; None for anything else.

    Anything else is left to the server and to the byte count kept while reading (which also
    covers chunked bodies).
    """
    text = (content_length or "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None


def check_declared_length(content_length: str | None, limits: PartLimits | None = None) -> None:
    """Refuse, before reading a byte, a body whose Content-Length is over the request limit."""
    limits = limits or PartLimits.from_settings()
    declared = _declared_length(content_length)
    if declared is not None and declared > limits.max_request_bytes:
        raise RequestTooLarge()


def check_room_for_body(content_length: str | None) -> None:
    """Refuse (507 insufficient_storage), before reading a byte, a body the disk has no room for:
    free space below RADIOLOGY_MIN_FREE_BYTES plus its Content-Length (when it says one)."""
    free_space.require_free_space(incoming_bytes=_declared_length(content_length) or 0)


def read_parts(
    stream: IO[bytes], content_type: str, *, max_parts: int | None = None, limits: PartLimits | None = None
) -> list[ReceivedPart]:
    """Spool each part of a multipart/related request body to its own staging file.

    The limits (see PartLimits; the settings by default) are checked as bytes arrive, so a
    request over one is refused (413) after reading at most one chunk past it, and every
    part already staged is removed. So is every part when the disk fills up on the way (507
    insufficient_storage). Only the part being written is open.
    """
    limits = limits or PartLimits.from_settings(max_parts=max_parts)
    boundary, _type = boundary_of(content_type)
    parts: list[ReceivedPart] = []
    writing: list[IO[bytes]] = []  # the one open file: the part being received
    header_field = bytearray()
    header_value = bytearray()
    headers: dict[str, str] = {}
    ended: list[bool] = []
    settings.RADIOLOGY_STAGING_DIR.mkdir(parents=True, exist_ok=True)

    def close_writing() -> None:
        while writing:
            writing.pop().close()

    def abandon() -> None:
        """Close the open part without minding its buffer (a full disk refuses it again), remove all."""
        while writing:
            with contextlib.suppress(OSError):
                writing.pop().close()
        discard_parts(parts)

    def on_part_begin() -> None:
        headers.clear()
        close_writing()
        if len(parts) >= limits.max_parts:
            raise TooManyParts()
        # Named "ingest-" as ingest's own spools: purge_interrupted_ingests removes those a
        # killed server process left behind.
        descriptor, name = tempfile.mkstemp(prefix="ingest-stow-", dir=settings.RADIOLOGY_STAGING_DIR)
        parts.append(ReceivedPart(content_type="", path=Path(name)))
        writing.append(os.fdopen(descriptor, "wb"))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[header_field.decode("latin-1").strip().lower()] = header_value.decode("latin-1").strip()
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        parts[-1].content_type = headers.get("content-type", "")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part, piece = parts[-1], memoryview(data)[start:end]
        if part.size + (end - start) > limits.max_part_size:
            raise PartTooLarge()
        writing[-1].write(piece)
        part.digest.update(piece)
        part.size += end - start

    def on_part_end() -> None:
        close_writing()

    def on_end() -> None:
        ended.append(True)

    try:
        parser = MultipartParser(
            boundary.encode("latin-1"),
            callbacks={
                "on_part_begin": on_part_begin,
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
                "on_headers_finished": on_headers_finished,
                "on_part_data": on_part_data,
                "on_part_end": on_part_end,
                "on_end": on_end,
            },
        )
        received = 0
        while chunk := stream.read(STREAM_CHUNK_SIZE):
            received += len(chunk)
            if received > limits.max_request_bytes:
                raise RequestTooLarge()
            parser.write(chunk)
        parser.finalize()
        if not ended:
            # python-multipart's finalize() does not check that the closing boundary came: a
            # body cut short (a client gone mid-upload) would otherwise store its last part cut.
            raise InvalidMultipart("The body ends before its closing boundary.")
        close_writing()
    except RadiologyError:
        abandon()
        raise
    except OSError as exc:
        abandon()
        if storage.is_out_of_space(exc):
            raise InsufficientStorage() from exc
        raise InvalidMultipart() from exc
    except Exception as exc:  # python-multipart raises its own error types on malformed input
        abandon()
        raise InvalidMultipart() from exc
    return parts
