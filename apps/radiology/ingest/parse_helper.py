"""Parsing the files of one ingest batch on two cores: this process and a helper process.

A STOW-RS batch of 50 CT instances spends about half its time reading DICOM headers with
pydicom, which is pure Python: threads would take turns on one core, so each server process
may keep one helper process (`RADIOLOGY_INGEST_PARSE_HELPER`, on by default on a machine
with more than one core). The helper gets the last part of every batch of at
least MIN_BATCH files in one message, parses it while this process parses the rest, and
answers in one message: parsed headers travel pickled, their JSON text already made
(stored_header.dicom_header), so taking them back costs a fraction of parsing them.

An earlier helper (a ProcessPoolExecutor, one task per file) gained nothing: its feeder and
result threads took the GIL from the parsing thread once per file. Here nothing runs in this
process while the helper works but the caller's own parsing.

The helper only reads spooled files: no database, no store. A file it could not parse comes
back as None and is parsed here, so a file's outcome (and its error) never depends on where
it was parsed. It is started in the background on first use, used from the first batch after
it is ready, started again if it dies, and stopped after IDLE_SECONDS unused; a batch never
waits for a helper to start.

The helper is a new interpreter (subprocess, fork then exec at once: never a fork of a threaded
server process) talking over a socket pair with multiprocessing's Connection (length-prefixed
pickles). Not a multiprocessing Process: its forkserver context leaves a forkserver and a
resource tracker behind in every app server worker that ever ingested, ~25 MiB that no idle stop
gives back (issue 19's memory budget).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

# Nothing here imports the radiology models (nor errors.py, which imports DRF) at import time:
# the helper imports this module before its Django is set up (_serve does that).
if TYPE_CHECKING:
    from apps.radiology.errors import RadiologyError
    from apps.radiology.imagefiles.dicom import ParsedImage

logger = logging.getLogger(__name__)

# Smaller batches are parsed here: the hand-over costs about a millisecond.
MIN_BATCH = 8
# The helper's share: a little under half, as taking a parsed file back costs ~5% of parsing it.
HELPER_SHARE = 0.45
# A helper that has not answered in this long is taken for hung: killed, its files parsed here.
ANSWER_TIMEOUT_SECONDS = 120
# A helper unused this long is stopped (the next batch starts another, in the background): it is
# a whole Django process (~90 MiB), and a modality's studies come in bursts minutes apart, while
# every app server worker that ever ingested would otherwise keep one (issue 19's memory budget).
IDLE_SECONDS = 30.0


# How the helper starts, in its own interpreter: its end of the socket pair is file descriptor N.
HELPER_COMMAND = "from apps.radiology.ingest.parse_helper import serve_descriptor; serve_descriptor({fd})"


class _Helper:
    def __init__(self, process: subprocess.Popen[bytes], connection: Connection) -> None:
        self.process = process
        self.connection = connection
        self.ready = threading.Event()
        self.busy = threading.Lock()  # one batch at a time; another thread's batch parses alone
        self.last_used = time.monotonic()

    def stop(self) -> None:
        self.connection.close()
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


_lock = threading.Lock()
_helper: _Helper | None = None


def parse_files(files: list[tuple[Path, str]]) -> list[ParsedImage | RadiologyError]:
    """Each (spooled path, MIME type) file parsed, or the RadiologyError that refuses it; in order."""
    helper = _ready_helper() if len(files) >= MIN_BATCH else None
    if helper is None or not helper.busy.acquire(blocking=False):
        return [_parse_here(path, mime) for path, mime in files]
    helper.last_used = time.monotonic()
    try:
        split = len(files) - int(len(files) * HELPER_SHARE)
        handed = _hand_over(helper, files[split:])
        results: list[ParsedImage | RadiologyError] = [_parse_here(path, mime) for path, mime in files[:split]]
        answers = _answers(helper, len(files) - split) if handed else None
    finally:
        helper.busy.release()
    for (path, mime), answer in zip(files[split:], answers or [None] * (len(files) - split), strict=True):
        results.append(answer if answer is not None else _parse_here(path, mime))
    return results


def _parse_here(path: Path, mime_type: str) -> ParsedImage | RadiologyError:
    from apps.radiology.errors import RadiologyError
    from apps.radiology.imagefiles.dicom import parse_image_file

    try:
        return parse_image_file(path, mime_type)
    except RadiologyError as refused:
        return refused


def _hand_over(helper: _Helper, files: list[tuple[Path, str]]) -> bool:
    try:
        helper.connection.send([(str(path), mime) for path, mime in files])
    except (OSError, ValueError):  # the helper is gone: this batch is parsed here
        _discard(helper)
        return False
    return True


def _answers(helper: _Helper, count: int) -> list[ParsedImage | None] | None:
    """The helper's answer to the files just handed over (None if it died or hung)."""
    try:
        if helper.connection.poll(ANSWER_TIMEOUT_SECONDS):
            answers = helper.connection.recv()
            if isinstance(answers, list) and len(answers) == count:
                return answers
    except (OSError, EOFError, ValueError):
        pass
    _discard(helper)
    return None


def _ready_helper() -> _Helper | None:
    """The helper if it is wanted and ready; otherwise None, starting one in the background."""
    global _helper
    if not settings.RADIOLOGY_INGEST_PARSE_HELPER:
        return None
    with _lock:
        helper = _helper
        if helper is None or (helper.ready.is_set() and helper.process.poll() is not None):
            if helper is not None:
                helper.stop()
            helper = _helper = _start()
    return helper if helper.ready.is_set() else None


def _start() -> _Helper:
    """A new helper process; `ready` is set (by a thread) once it has set up Django."""
    ours_socket, theirs_socket = socket.socketpair()
    popen = subprocess.Popen(  # noqa: S603 (our own interpreter and command)
        [sys.executable, "-c", HELPER_COMMAND.format(fd=theirs_socket.fileno())],
        cwd=settings.BASE_DIR,
        pass_fds=(theirs_socket.fileno(),),
        stdin=subprocess.DEVNULL,
    )
    theirs_socket.close()
    ours = Connection(ours_socket.detach())
    helper = _Helper(popen, ours)

    def wait_until_set_up() -> None:
        try:
            if ours.poll(60) and ours.recv() == "ready":
                helper.last_used = time.monotonic()  # idle from now, not from its start
                helper.ready.set()
                return
        except Exception:  # noqa: S110 (it is logged below; the batch parses here)
            pass
        logger.warning("the ingest parse helper did not start; ingest parses in the server process")

    threading.Thread(target=wait_until_set_up, name="parse-helper-start", daemon=True).start()
    threading.Thread(target=_stop_when_idle, args=(helper,), name="parse-helper-idle", daemon=True).start()
    return helper


def _stop_when_idle(helper: _Helper) -> None:
    """Stop `helper` once unused for IDLE_SECONDS; never while a batch uses it (its busy lock)."""
    global _helper
    while True:
        time.sleep(IDLE_SECONDS / 4)
        with _lock:
            if _helper is not helper:
                return  # discarded or replaced meanwhile
            idle = helper.ready.is_set() and time.monotonic() - helper.last_used >= IDLE_SECONDS
            if not idle or not helper.busy.acquire(blocking=False):
                continue
            _helper = None
        try:
            helper.stop()
        finally:
            helper.busy.release()
        return


def _discard(helper: _Helper) -> None:
    """Stop a helper that failed; the next batch starts a new one."""
    global _helper
    logger.warning("the ingest parse helper failed; it is started again for a later batch")
    with _lock:
        if _helper is helper:
            _helper = None
    helper.stop()


def wait_until_ready(timeout: float = 60) -> bool:
    """Start the helper and wait for it (tests, and servers that warm up before serving)."""
    _ready_helper()
    helper = _helper
    return helper is not None and helper.ready.wait(timeout) and _ready_helper() is helper


def helper_pid() -> int | None:
    helper = _helper
    return helper.process.pid if helper is not None and helper.ready.is_set() else None


def serve_descriptor(fd: int) -> None:
    """The helper process's entry (HELPER_COMMAND): serve the server process on socket `fd`."""
    _serve(Connection(fd))


def _serve(connection: Connection) -> None:
    """The helper: parse each list of files it is sent; answer a ParsedImage or None for each."""
    import django

    django.setup()
    from apps.radiology.imagefiles.dicom import parse_image_file
    from config.gc_tuning import tune_for_long_lived_process

    tune_for_long_lived_process()  # parsing makes as much garbage here as in the server process
    connection.send("ready")
    while True:
        try:
            files = connection.recv()
        except (EOFError, OSError):
            return  # the server process is gone
        answers: list[ParsedImage | None] = []
        for path, mime in files:
            try:
                answers.append(parse_image_file(Path(path), mime))
            except Exception:  # refused or failed: the server process parses it and answers
                answers.append(None)
        connection.send(answers)
