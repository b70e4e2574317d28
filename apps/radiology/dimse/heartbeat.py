"""The DICOM listener's heartbeat in the database, and what /healthz makes of it.

Why the database: the listener is a process of its own (supervisord's `dicom` program under
`make run`, docker-compose's `dicom` service), and /healthz is answered by the app server in another
process, or another container. The database is the one thing every process of both
deployments shares; a file would need a shared disk, a probe of the port a route between
containers and a node list that lets the probe in.

Writer: `Heartbeat`, a daemon thread `manage.py run_dicom_listener` starts once the listener
listens. It writes the listener's row (models.DicomListenerHeartbeat, one per AE title, host and
port) at once, then every RADIOLOGY_DICOM_HEARTBEAT_SECONDS with the number of associations under
way, and a last time with `stopped_at` when the command stops cleanly. A database that is down
for a while costs beats, never the listener: the failure is logged and the next beat tries again.

Reader: `listener_health()`, one indexed query for the most recent row (/healthz): "listening",
"stopped" (a clean stop), or "not_responding" (no beat for MISSED_BEATS intervals and no clean
stop: killed, hung, or its database connection lost); None when no listener ever wrote one.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from django.db import connections
from django.db.models import QuerySet
from django.utils import timezone

from apps.radiology.models import DicomListenerHeartbeat

logger = logging.getLogger(__name__)

# Silent this many of its own intervals without a clean stop: not responding. One late beat (a
# slow database, a busy machine) is not an outage; three are.
MISSED_BEATS = 3
# How long a stopping command waits for the heartbeat's last write: the stop's --grace (20 s)
# plus this stays below supervisord's stopwaitsecs (25 s), after which it kills.
STOP_WRITE_SECONDS = 4.0


@dataclass(frozen=True)
class ListenerAddress:
    """Which listener a row is about: its AE title, and the host and port it listens on."""

    ae_title: str
    host: str
    port: int

    def rows(self) -> QuerySet[DicomListenerHeartbeat]:
        return DicomListenerHeartbeat.objects.filter(ae_title=self.ae_title, host=self.host, port=self.port)


def record_start(listener: ListenerAddress, *, heartbeat_seconds: int, pid: int) -> None:
    """The listener's row as it starts: a restart of the same listener overwrites the last run's."""
    now = timezone.now()
    DicomListenerHeartbeat.objects.update_or_create(
        ae_title=listener.ae_title,
        host=listener.host,
        port=listener.port,
        defaults={
            "pid": pid,
            "heartbeat_seconds": heartbeat_seconds,
            "started_at": now,
            "beat_at": now,
            "active_associations": 0,
            "stopped_at": None,
        },
    )


def record_beat(listener: ListenerAddress, *, active_associations: int) -> bool:
    """One beat; False when the row is gone (deleted meanwhile), so the caller writes it anew."""
    return listener.rows().update(beat_at=timezone.now(), active_associations=active_associations) == 1


def record_stop(listener: ListenerAddress, *, active_associations: int) -> None:
    """The clean stop: /healthz says "stopped" (not "not_responding") from now on."""
    now = timezone.now()
    listener.rows().update(beat_at=now, stopped_at=now, active_associations=active_associations)


class Heartbeat:
    """A daemon thread writing the listener's row now, every `interval_seconds`, and on `stop()`.

    The thread has its own database connection (Django's are per thread) and closes it after
    each write: one connection every few seconds costs nothing, and a connection kept open
    would be the broken one after a database restart.
    """

    def __init__(
        self,
        listener: ListenerAddress,
        *,
        interval_seconds: int,
        active_associations: Callable[[], int],
        pid: int | None = None,
    ) -> None:
        self.listener = listener
        self.interval_seconds = interval_seconds
        self.active_associations = active_associations
        self.pid = pid if pid is not None else os.getpid()
        self._row_written = False  # this run's start row: until it is, each beat tries it again
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicom-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, timeout: float = STOP_WRITE_SECONDS) -> None:
        """Write the clean stop and end the thread (waiting at most `timeout` for the write)."""
        self._stopping.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        self.beat()
        while not self._stopping.wait(self.interval_seconds):
            self.beat()
        self.write_stop()

    def beat(self) -> bool:
        """One write (the start row until it is written, then a beat); False when it failed."""
        return self._write(self._write_beat, f"heartbeat not written; next try in {self.interval_seconds} s")

    def write_stop(self) -> bool:
        """The clean stop's write; False when it failed (/healthz will then say not_responding)."""
        return self._write(self._write_stop, "clean stop not written; /healthz will say not_responding")

    def _write_beat(self) -> None:
        if self._row_written and record_beat(self.listener, active_associations=self.active_associations()):
            return
        record_start(self.listener, heartbeat_seconds=self.interval_seconds, pid=self.pid)
        self._row_written = True

    def _write_stop(self) -> None:
        record_stop(self.listener, active_associations=self.active_associations())

    def _write(self, write: Callable[[], None], failure: str) -> bool:
        try:
            write()
        except Exception as exc:  # a database down for a while must not take the listener with it
            logger.warning("DICOM listener %s: %s (%s)", self.listener.ae_title, failure, type(exc).__name__)
            return False
        finally:
            connections.close_all()  # this thread's connections only
        return True


class ListenerState(StrEnum):
    LISTENING = "listening"
    STOPPED = "stopped"
    NOT_RESPONDING = "not_responding"


@dataclass(frozen=True)
class ListenerHealth:
    """What /healthz says about the DICOM listener (its `dicom_listener` member)."""

    state: ListenerState
    ae_title: str
    port: int
    beat_age_seconds: int
    active_associations: int

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "ae_title": self.ae_title,
            "port": self.port,
            "beat_age_seconds": self.beat_age_seconds,
            "active_associations": self.active_associations,
        }


def listener_health() -> ListenerHealth | None:
    """The most recently heard listener's state (one query on the beat_at index); None: never started.

    Only the latest row counts: an old row of a listener since moved to another port or AE
    title, stopped or not, says nothing about the one running now.
    """
    row = DicomListenerHeartbeat.objects.order_by("-beat_at").first()
    if row is None:
        return None
    silence = timezone.now() - row.beat_at
    if row.stopped_at is not None:
        state = ListenerState.STOPPED
    elif silence > dt.timedelta(seconds=MISSED_BEATS * row.heartbeat_seconds):
        state = ListenerState.NOT_RESPONDING
    else:
        state = ListenerState.LISTENING
    return ListenerHealth(
        state=state,
        ae_title=row.ae_title,
        port=row.port,
        beat_age_seconds=max(0, int(silence.total_seconds())),  # max: another machine's clock may run ahead
        active_associations=row.active_associations,
    )
