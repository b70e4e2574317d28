"""Writing the audit trail's request events in groups: one INSERT and one commit for many events.

Why: the audit middleware writes one event per request, after the response. On PostgreSQL with
its durable defaults (fsync on, synchronous_commit on), as a clinic runs it, each event was its
own transaction: a WAL flush per frame a viewer fetched. Under 32 connections asking for frames
that one INSERT and its commit were about a quarter of a worker's time (py-spy, bench/
compare_orthanc.py's load rows). Here each process keeps the events of the last
RADIOLOGY_AUDIT_FLUSH_MS (default 100 ms) and a thread of its own writes them in one bulk INSERT
(a COPY on PostgreSQL, fastpaths/bulk_insert.py, which lets the request threads of the process
run while it makes the rows): one commit for a hundred frames instead of a hundred. Each event
keeps the time it was made (AuditEvent.at), not the time of the write.

What that costs, said plainly in docs/security.md: an event reaches the database up to that
long after its response, and a process killed outright (SIGKILL, a power cut) loses the events
of that last interval. A clean stop (SIGTERM, Ctrl-C: the app server and the listener exit normally)
writes them first (atexit). RADIOLOGY_AUDIT_FLUSH_MS=0 writes each event at once, in the request's
thread, as before (the test settings do, so a test reads its event right after its request).

Bounded: at most MAX_PENDING events wait (a database down for a while); past that the oldest
are dropped, and the drop is logged with a count, never silently. A write that fails is logged
and its events dropped: the trail must never take the service down (audit.record's rule).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import deque

from django.conf import settings
from django.db import close_old_connections, connection, transaction

from apps.radiology.fastpaths import bulk_insert
from apps.radiology.models import AuditEvent

logger = logging.getLogger(__name__)

MAX_PENDING = 20_000  # ~10 MB of events: minutes of a busy reading room with the database away
MAX_BATCH = 1_000  # rows per INSERT; a longer queue is written in several


class AuditWriter:
    """The events of one process, written by one thread every `interval_seconds`."""

    def __init__(self, interval_seconds: float, *, max_pending: int = MAX_PENDING) -> None:
        self.interval_seconds = interval_seconds
        self.max_pending = max_pending
        self._pending: deque[AuditEvent] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._dropped = 0
        self._owner_pid: int | None = None  # the process whose thread runs (a fork starts its own)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.written = 0  # events written since the start (the health of the trail, and tests, read it)

    def add(self, event: AuditEvent) -> None:
        """Queue `event` (its `at` stamped when it was made) for the next write; starts the thread on first use."""
        with self._lock:
            if len(self._pending) >= self.max_pending:
                self._pending.popleft()
                self._dropped += 1
            self._pending.append(event)
            if self._owner_pid != os.getpid():
                self._start()

    def flush(self) -> int:
        """Write every pending event now, in this thread; the number written."""
        with self._lock:
            events, self._pending = list(self._pending), deque()
            dropped, self._dropped = self._dropped, 0
        if dropped:
            logger.error("audit: %d events dropped, more than %d waited to be written", dropped, self.max_pending)
        written = 0
        for start in range(0, len(events), MAX_BATCH):
            batch = events[start : start + MAX_BATCH]
            try:
                with transaction.atomic():
                    # COPY on PostgreSQL, letting go of the GIL as it goes (see bulk_insert.py).
                    bulk_insert.insert_new(batch)
                written += len(batch)
                self.written += len(batch)
            except Exception:  # the trail must not take the service down; the error is logged
                # A broken connection is closed by the thread's close_old_connections() after this flush.
                logger.exception("audit: %d events could not be written", len(batch))
        return written

    def _start(self) -> None:
        self._owner_pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        atexit.register(self._flush_at_exit, self._owner_pid)

    def stop(self) -> None:
        """Write what waits and end the thread (and its database connection)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None and self._owner_pid == os.getpid():
            self._thread.join(timeout=30)
        self.flush()

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._wake.wait(self.interval_seconds)
                self._wake.clear()
                self.flush()
                close_old_connections()  # past DATABASE_CONN_MAX_AGE, or unusable: reconnect next time
        finally:
            connection.close()

    def _flush_at_exit(self, pid: int) -> None:
        if os.getpid() == pid:  # not in a child forked after the thread started
            self.stop()


_writer: AuditWriter | None = None
_writer_lock = threading.Lock()


def buffered_writer() -> AuditWriter | None:
    """This process's writer; None when RADIOLOGY_AUDIT_FLUSH_MS is 0 (write each event at once)."""
    global _writer  # one writer per process, made on first use
    interval_ms = settings.RADIOLOGY_AUDIT_FLUSH_MS
    if interval_ms <= 0:
        return None
    if _writer is None:
        with _writer_lock:
            if _writer is None:
                _writer = AuditWriter(interval_ms / 1000)
    return _writer


def write_event(event: AuditEvent) -> None:
    """Write `event` with the next group (RADIOLOGY_AUDIT_FLUSH_MS), or at once when that is 0.

    The one way both trails write (access/audit.py's HTTP events, dimse/audit.py's DICOM ones).
    """
    writer = buffered_writer()
    if writer is None:
        event.save(force_insert=True)
    else:
        writer.add(event)
