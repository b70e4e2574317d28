"""multipart/related bodies: streaming them out (WADO-RS) and reading them in (STOW-RS).

Out: each part is `--boundary CRLF Content-Type: ... CRLF CRLF <bytes> CRLF`, closed by
`--boundary--`. The header is spelled exactly "Content-Type:" because OHIF's parser looks
for that spelling; bytes are streamed part by part, never a whole study in memory.
In: python-multipart's streaming parser writes each part to a temporary file as it arrives.
"""

from __future__ import annotations

import hashlib
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from django.conf import settings
from python_multipart.multipart import MultipartParser

from apps.radiology.errors import InvalidMultipart, RadiologyError, UnsupportedMediaType
from apps.radiology.request_streams import request_body  # noqa: F401 (re-exported for the views)
from apps.radiology.storage import STREAM_CHUNK_SIZE

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
    spool (the filesystem store links it in) instead of copying and hashing it again.
    """

    content_type: str
    file: IO[bytes]
    size: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    @property
    def path(self) -> Path:
        return Path(self.file.name)

    @property
    def checksum(self) -> str:
        return self.digest.hexdigest()


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
    return boundary, params.get("type")


def read_parts(stream: IO[bytes], content_type: str, *, max_parts: int = 10_000) -> list[ReceivedPart]:
    """Spool each part of a multipart/related request body to its own temporary file."""
    boundary, _type = boundary_of(content_type)
    parts: list[ReceivedPart] = []
    header_field = bytearray()
    header_value = bytearray()
    headers: dict[str, str] = {}
    ended: list[bool] = []
    settings.RADIOLOGY_STAGING_DIR.mkdir(parents=True, exist_ok=True)

    def on_part_begin() -> None:
        headers.clear()
        if len(parts) >= max_parts:
            raise InvalidMultipart("Too many parts in one request.")
        parts.append(
            ReceivedPart(
                content_type="",
                # Named "ingest-" as ingest's own spools: purge_interrupted_ingests removes
                # those a killed server process left behind.
                file=tempfile.NamedTemporaryFile(prefix="ingest-stow-", dir=settings.RADIOLOGY_STAGING_DIR),  # noqa: SIM115
            )
        )

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
        part.file.write(piece)
        part.digest.update(piece)
        part.size += end - start

    def on_end() -> None:
        ended.append(True)

    parser = MultipartParser(
        boundary.encode("latin-1"),
        callbacks={
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_end": on_end,
        },
    )
    try:
        while chunk := stream.read(STREAM_CHUNK_SIZE):
            parser.write(chunk)
        parser.finalize()
        if not ended:
            # python-multipart's finalize() does not check that the closing boundary came: a
            # body cut short (a client gone mid-upload) would otherwise store its last part cut.
            raise InvalidMultipart("The body ends before its closing boundary.")
    except RadiologyError:
        _close(parts)
        raise
    except Exception as exc:  # python-multipart raises its own error types on malformed input
        _close(parts)
        raise InvalidMultipart() from exc
    for part in parts:
        part.file.flush()
        part.file.seek(0)
    return parts


def _close(parts: list[ReceivedPart]) -> None:
    for part in parts:
        part.file.close()
