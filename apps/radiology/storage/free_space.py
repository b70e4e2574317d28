"""Free disk space: ingest refuses a file (507) rather than fill the disk it writes to.

A disk that fills up half way through a file leaves a partial file and, worse, can stop the
database beside it. So before any byte is written, every way in (upload sync, STOW-RS, bulk
import, and the ingest spool itself) asks `require_free_space`: each filesystem ingest writes
to must keep RADIOLOGY_MIN_FREE_BYTES free beyond the incoming file (its declared size, when
known). Below that the request is refused with InsufficientStorage, nothing is written, and
the sender tries again later; /healthz reports "degraded" meanwhile (operations/health.py).

The filesystems watched are those of RADIOLOGY_STAGING_DIR (spools, STOW-RS parts) and, on
the filesystem backend, of the store's location. An S3/MinIO store has no disk here to
measure: only staging is checked, and a full MinIO answers the write itself with 507 (refused
the same way, see storage.is_out_of_space).
The check is a margin, not a promise (other processes write too): a write that still finds
no room (ENOSPC) is refused the same way, its partial file removed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage

from apps.radiology.errors import InsufficientStorage
from apps.radiology.storage import radiology_storage

logger = logging.getLogger(__name__)

# The places watched, as /healthz and the logs name them.
STAGING = "staging directory"
STORE = "image store"


def watched_places() -> dict[str, Path]:
    """Name -> directory of every filesystem ingest writes to (the store only if it is a filesystem)."""
    places = {STAGING: Path(settings.RADIOLOGY_STAGING_DIR)}
    store = radiology_storage()
    if isinstance(store, FileSystemStorage):
        places[STORE] = Path(store.location)
    return places


def free_bytes(directory: Path) -> int:
    """Bytes a process without root's reserve may still write on the filesystem of `directory`.

    A directory not made yet (staging is created on first use) is measured at its nearest
    existing parent: the filesystem it will be made on.
    """
    probe = directory
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    stats = os.statvfs(probe)
    return stats.f_bavail * stats.f_frsize


def short_places(incoming_bytes: int = 0) -> list[str]:
    """The watched places with less free than RADIOLOGY_MIN_FREE_BYTES plus `incoming_bytes`.

    A place that cannot be measured is left to the write itself (ENOSPC is refused the same
    way): a check that cannot look must not refuse every file.
    """
    needed = settings.RADIOLOGY_MIN_FREE_BYTES + max(incoming_bytes, 0)
    short: list[str] = []
    for name, directory in watched_places().items():
        try:
            free = free_bytes(directory)
        except OSError as exc:
            logger.warning("free space of the %s could not be measured: %s", name, type(exc).__name__)
            continue
        if free < needed:
            short.append(name)
    return short


def require_free_space(incoming_bytes: int = 0) -> None:
    """Raise InsufficientStorage unless every watched place keeps RADIOLOGY_MIN_FREE_BYTES free
    beyond `incoming_bytes` (the incoming file's size, when known)."""
    short = short_places(incoming_bytes)
    if short:
        logger.warning(
            "ingest refused a file of %d bytes: free space below RADIOLOGY_MIN_FREE_BYTES on the %s",
            incoming_bytes,
            " and the ".join(short),
        )
        raise InsufficientStorage()
