"""Parsing the DICOM files of one ingest batch on a second CPU core.

A STOW-RS batch spends most of its time in pydicom reading headers, which is pure Python:
threads would take turns on one core. So each server process may keep one helper process
(`RADIOLOGY_INGEST_PARSE_PROCESSES`, default 1 on a machine with more than one core, 0 to
turn it off) that parses part of each batch of at least `MIN_BATCH` DICOM files while the
server process parses the rest. Measured with bench/compare_orthanc.py: a 50-instance batch
spends ~60% of its time parsing; on 2 cores the helper takes ~a quarter off the whole batch.

The helper only reads spooled files and returns ParsedImage values: no database, no store.
It is started on first use in the background (forkserver: never a fork of a threaded server
process) and is used from the first batch after it is ready, so no request waits for it to
start. Anything the helper cannot answer (a refused file, a broken helper) is parsed again in
the server process, so a file's outcome never depends on where it was parsed.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

# Nothing here imports Django models at import time: the helper unpickles references to this
# module's functions before its Django is set up (the initializer does that).
if TYPE_CHECKING:
    from apps.radiology.dicom import ParsedImage

logger = logging.getLogger(__name__)

# Smaller batches are parsed in the server process: handing files over costs ~0.1 ms each.
MIN_BATCH = 8

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_ready: Future[bool] | None = None


def _start_django() -> None:
    import django

    django.setup()


def _warm() -> bool:
    return True


def _parse_or_none(path: str, mime_type: str) -> ParsedImage | None:
    """In the helper: the parsed file, or None for the server process to parse (and refuse) itself."""
    from apps.radiology.dicom import parse_image_file

    try:
        return parse_image_file(Path(path), mime_type)
    except Exception:
        return None


def helper_pool() -> ProcessPoolExecutor | None:
    """The helper, if it is wanted and ready; starts it (in the background) on first call."""
    global _pool, _ready
    if settings.RADIOLOGY_INGEST_PARSE_PROCESSES <= 0:
        return None
    with _lock:
        if _pool is None or (_ready is not None and _ready.done() and _ready.exception() is not None):
            if _pool is not None:  # it never started (say, its process was killed): a new one
                _pool.shutdown(wait=False, cancel_futures=True)
            _pool = ProcessPoolExecutor(
                max_workers=settings.RADIOLOGY_INGEST_PARSE_PROCESSES,
                mp_context=multiprocessing.get_context("forkserver"),
                initializer=_start_django,
            )
            _ready = _pool.submit(_warm)
            return None
        if _ready is None or not _ready.done():
            return None
        return _pool


def wait_until_ready(timeout: float = 60) -> bool:
    """Start the helper and wait for it (tests, and servers that warm up before serving)."""
    helper_pool()
    ready = _ready
    return bool(ready is not None and ready.result(timeout=timeout)) and helper_pool() is not None


def hand_over(files: list[tuple[Path, str]]) -> list[Future[ParsedImage | None] | None]:
    """Give the helper the last part of a big enough batch of (path, MIME type) files.

    One entry per file: a Future for those the helper parses, None for those the caller
    parses itself (the first part, while the helper works on the rest).
    """
    pool = helper_pool() if len(files) >= MIN_BATCH else None
    if pool is None:
        return [None] * len(files)
    # The helper is a little slower per file (the hand-over): it gets a bit less than half.
    split = (len(files) * 11) // 20
    try:
        remote = [pool.submit(_parse_or_none, str(path), mime) for path, mime in files[split:]]
    except Exception:  # a broken pool (its process was killed): everything is parsed here
        _discard(pool)
        return [None] * len(files)
    return [*([None] * split), *remote]


def result(future: Future[ParsedImage | None]) -> ParsedImage | None:
    """What the helper parsed, or None (refused, or the helper failed): the caller parses it."""
    try:
        return future.result(timeout=300)
    except Exception:
        with _lock:
            pool = _pool
        if pool is not None:
            _discard(pool)
        return None


def _discard(pool: ProcessPoolExecutor) -> None:
    """Drop a pool that failed (its helper was killed, say); the next batch starts a new one."""
    global _pool, _ready
    logger.warning("ingest parse helper failed; parsing in the server process until it is restarted")
    with _lock:
        if _pool is pool:
            _pool, _ready = None, None
    pool.shutdown(wait=False, cancel_futures=True)
