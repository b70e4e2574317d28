"""Receiving an incoming file onto disk: spooled while it is hashed, then checked against what was declared.

The first stage of ingest, before anything is parsed or stored: nothing holds the whole file
in memory, the checksum is the server's own, and a file that is larger than declared (or than
RADIOLOGY_MAX_UPLOAD_SIZE) is refused as soon as the excess arrives. Nor does it fill the disk:
a file is refused (507) before its first byte when free space is short (storage/free_space.py),
and a write that still finds no room is refused the same way.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from django.conf import settings

from apps.radiology import storage
from apps.radiology.errors import ChecksumMismatch, EmptyFile, FileTooLarge, SizeMismatch
from apps.radiology.imagefiles.dicom import SNIFF_LENGTH, sniff_mime_type
from apps.radiology.storage import free_space

# How ingest's spool files in RADIOLOGY_STAGING_DIR are named (cleanup.py removes old ones).
SPOOL_PREFIX = "ingest-"


@dataclass(frozen=True)
class StagedFile:
    """A file already received into RADIOLOGY_STAGING_DIR, with the size and SHA-256 taken as it
    arrived. Nothing may write to it again: ingest takes it over as its spool (no copy, no
    second hash), and the filesystem store links it in. Ingest opens it only while it reads
    it (a STOW-RS batch of thousands of parts must not hold thousands of open files); its
    owner still removes it."""

    path: Path
    size: int
    checksum: str


@dataclass(frozen=True)
class Spooled:
    """A received file on disk: where, how large, its SHA-256 and its type (from its bytes)."""

    path: Path
    size: int
    checksum: str
    mime_type: str


def new_spool_file() -> IO[bytes]:
    """An open, empty spool file in RADIOLOGY_STAGING_DIR, removed when it is closed.

    Unbuffered (`spool` writes whole chunks itself): a buffered file would still hold bytes
    when a full disk refused a write, and closing it would fail again trying to write them.
    """
    return tempfile.NamedTemporaryFile(dir=settings.RADIOLOGY_STAGING_DIR, prefix=SPOOL_PREFIX, buffering=0)


def spool(
    stream: IO[bytes], spool_file: IO[bytes], *, expected_size: int | None, expected_checksum: str | None
) -> Spooled:
    """Copy the stream to disk in chunks, hashing as it goes; then check it against what was declared.

    Order of refusals: too little free disk space for it (before a byte is read), more bytes
    than declared (stop reading at once), fewer, another checksum; then an empty file; then a
    type that is neither DICOM nor JPEG. A disk that fills up while it is written is refused
    as too little space; the caller's closing of `spool_file` removes what was written.
    """
    free_space.require_free_space(incoming_bytes=expected_size or 0)
    digest = hashlib.sha256()
    size = 0
    head = b""
    with storage.refused_when_disk_full():
        while chunk := stream.read(storage.STREAM_CHUNK_SIZE):
            size += len(chunk)
            _check_size_so_far(size, expected_size)
            if len(head) < SNIFF_LENGTH:
                head += chunk[: SNIFF_LENGTH - len(head)]
            digest.update(chunk)
            _write_all(spool_file, chunk)
        spool_file.flush()
    return _checked(
        Path(spool_file.name),
        size,
        digest.hexdigest(),
        head,
        expected_size=expected_size,
        expected_checksum=expected_checksum,
    )


def _write_all(spool_file: IO[bytes], chunk: bytes) -> None:
    """Write all of `chunk`: an unbuffered write may take only part (a disk filling up)."""
    view = memoryview(chunk)
    while view:
        view = view[spool_file.write(view) :]


def take_staged(staged: StagedFile, *, expected_size: int | None, expected_checksum: str | None) -> Spooled:
    """A staged file (see StagedFile) checked as `spool` checks the bytes it copies.

    Its bytes are already on disk: free space is checked for the margin alone, before the
    store takes it in (a link on the same filesystem, a copy on another).
    """
    free_space.require_free_space()
    _check_size_so_far(staged.size, expected_size)
    with staged.path.open("rb") as handle:
        head = handle.read(SNIFF_LENGTH)
    return _checked(
        staged.path,
        staged.size,
        staged.checksum,
        head,
        expected_size=expected_size,
        expected_checksum=expected_checksum,
    )


def _check_size_so_far(size: int, expected_size: int | None) -> None:
    if expected_size is not None and size > expected_size:
        raise SizeMismatch()
    if size > settings.RADIOLOGY_MAX_UPLOAD_SIZE:
        raise FileTooLarge()


def _checked(
    path: Path, size: int, checksum: str, head: bytes, *, expected_size: int | None, expected_checksum: str | None
) -> Spooled:
    """The received file, if it is what was declared and of a type ingest takes."""
    if expected_size is not None and size != expected_size:
        raise SizeMismatch()
    if expected_checksum is not None and checksum != expected_checksum.lower():
        raise ChecksumMismatch()
    if size == 0:
        raise EmptyFile()
    return Spooled(path=path, size=size, checksum=checksum, mime_type=sniff_mime_type(head))
