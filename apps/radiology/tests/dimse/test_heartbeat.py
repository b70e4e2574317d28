"""The DICOM listener's heartbeat (dimse/heartbeat.py) and what /healthz says about it.

The listener is a process of its own; it writes its row in the database, which /healthz (in
the app server) reads. Time is Django's clock (timezone.now), set by each test, so ages are exact.
The last test runs the real `manage.py run_dicom_listener` in a process of its own, against a
database of its own, and reads /healthz from a third process, as the deployments do.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError
from django.test import Client
from django.utils import timezone

from apps.radiology.dimse import heartbeat
from apps.radiology.dimse.heartbeat import Heartbeat, ListenerAddress, record_beat, record_start, record_stop
from apps.radiology.models import DicomListenerHeartbeat
from apps.radiology.operations import health
from apps.radiology.storage import free_space
from apps.radiology.tests.app_server import REPO, VENV_BIN, free_port, own_database

T0 = dt.datetime(2026, 12, 6, 9, 0, tzinfo=dt.UTC)
LISTENER = ListenerAddress("PACSLITE", "127.0.0.1", 11112)
HEALTHY = {"status": "ok", "database": "ok", "storage": "ok", "disk_space": "ok"}
ROW_FIELDS = (
    "ae_title",
    "host",
    "port",
    "pid",
    "heartbeat_seconds",
    "started_at",
    "beat_at",
    "active_associations",
    "stopped_at",
)


class Clock:
    """Django's clock, set by the test: timezone.now() is `now` everywhere it is read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = T0
        monkeypatch.setattr(timezone, "now", lambda: self.now)

    def at(self, seconds: float) -> dt.datetime:
        self.now = T0 + dt.timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def rows() -> list[dict[str, Any]]:
    return list(DicomListenerHeartbeat.objects.order_by("port", "ae_title").values(*ROW_FIELDS))


def row(
    *,
    started: float,
    beat: float,
    stopped: float | None = None,
    active: int = 0,
    pid: int = 4242,
    interval: int = 10,
    listener: ListenerAddress = LISTENER,
) -> dict[str, Any]:
    """A row as the test expects it, times in seconds after T0."""
    return {
        "ae_title": listener.ae_title,
        "host": listener.host,
        "port": listener.port,
        "pid": pid,
        "heartbeat_seconds": interval,
        "started_at": T0 + dt.timedelta(seconds=started),
        "beat_at": T0 + dt.timedelta(seconds=beat),
        "active_associations": active,
        "stopped_at": None if stopped is None else T0 + dt.timedelta(seconds=stopped),
    }


def listener_member(state: str, *, age: int, active: int = 0, port: int = 11112) -> dict[str, Any]:
    return {
        "state": state,
        "ae_title": "PACSLITE",
        "port": port,
        "beat_age_seconds": age,
        "active_associations": active,
    }


def healthz() -> tuple[int, dict[str, Any]]:
    response = Client().get("/healthz")
    return response.status_code, response.json()


# --- the rows the listener writes ------------------------------------------------------------------


@pytest.mark.django_db
def test_start_beats_stop_and_a_restart_write_one_row_per_listener(clock: Clock) -> None:
    record_start(LISTENER, heartbeat_seconds=10, pid=4242)
    assert rows() == [row(started=0, beat=0)]

    clock.at(10)
    assert record_beat(LISTENER, active_associations=2) is True
    assert rows() == [row(started=0, beat=10, active=2)]

    clock.at(15)
    record_stop(LISTENER, active_associations=0)
    assert rows() == [row(started=0, beat=15, stopped=15)]

    # supervisord starts it again: the same row, a new run (new pid, no stop).
    clock.at(40)
    record_start(LISTENER, heartbeat_seconds=10, pid=5151)
    assert rows() == [row(started=40, beat=40, pid=5151)]

    # Another port is another listener, with a row of its own.
    other = ListenerAddress("PACSLITE", "127.0.0.1", 11113)
    record_start(other, heartbeat_seconds=10, pid=6161)
    assert rows() == [row(started=40, beat=40, pid=5151), row(started=40, beat=40, pid=6161, listener=other)]


@pytest.mark.django_db
def test_a_beat_for_a_row_that_is_gone_says_so(clock: Clock) -> None:
    assert record_beat(LISTENER, active_associations=0) is False
    assert rows() == []


def in_a_thread(call: Callable[[], Any]) -> Any:
    """`call` in a thread of its own, with its own database connection, as the heartbeat's thread."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(call()))
    thread.start()
    thread.join()
    return result[0]


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_writes_its_start_then_beats_then_the_stop(clock: Clock) -> None:
    associations = [0]
    beating = Heartbeat(LISTENER, interval_seconds=10, active_associations=lambda: associations[0], pid=4242)

    assert in_a_thread(beating.beat) is True
    assert rows() == [row(started=0, beat=0)]

    clock.at(10)
    associations[0] = 3
    assert in_a_thread(beating.beat) is True
    assert rows() == [row(started=0, beat=10, active=3)]

    # The row deleted meanwhile (by hand): the next beat writes it anew.
    DicomListenerHeartbeat.objects.all().delete()
    clock.at(20)
    assert in_a_thread(beating.beat) is True
    assert rows() == [row(started=20, beat=20)]

    clock.at(25)
    associations[0] = 0
    assert in_a_thread(beating.write_stop) is True
    assert rows() == [row(started=20, beat=25, stopped=25)]


@pytest.mark.django_db(transaction=True)
def test_a_database_down_costs_beats_never_the_listener(
    clock: Clock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    beating = Heartbeat(LISTENER, interval_seconds=10, active_associations=lambda: 1, pid=4242)

    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("connection refused")

    with monkeypatch.context() as down:
        down.setattr(heartbeat, "record_start", unreachable)
        with caplog.at_level(logging.WARNING, logger="apps.radiology.dimse.heartbeat"):
            written = in_a_thread(beating.beat)

    assert written is False
    assert rows() == []
    assert [record.getMessage() for record in caplog.records] == [
        "DICOM listener PACSLITE: heartbeat not written; next try in 10 s (OperationalError)"
    ]

    # The database is back: the next beat writes the start row it could not write before.
    clock.at(10)
    assert in_a_thread(beating.beat) is True
    assert rows() == [row(started=10, beat=10)]

    with monkeypatch.context() as down:
        down.setattr(heartbeat, "record_beat", unreachable)
        clock.at(20)
        assert in_a_thread(beating.beat) is False
    clock.at(30)
    assert in_a_thread(beating.beat) is True
    assert rows() == [row(started=10, beat=30, active=1)]

    # Down at the stop: the row keeps its last beat, and /healthz will say not_responding.
    caplog.clear()
    with monkeypatch.context() as down, caplog.at_level(logging.WARNING, logger="apps.radiology.dimse.heartbeat"):
        down.setattr(heartbeat, "record_stop", unreachable)
        clock.at(35)
        assert in_a_thread(beating.write_stop) is False
    assert rows() == [row(started=10, beat=30, active=1)]
    assert [record.getMessage() for record in caplog.records] == [
        "DICOM listener PACSLITE: clean stop not written; /healthz will say not_responding (OperationalError)"
    ]


@pytest.mark.django_db(transaction=True)
def test_the_thread_writes_at_once_and_the_stop_when_stopped(clock: Clock) -> None:
    """Started, then stopped before its first interval ends: the start row, then the clean stop."""
    beating = Heartbeat(LISTENER, interval_seconds=3600, active_associations=lambda: 0, pid=4242)

    beating.start()
    beating.stop(timeout=60)

    assert rows() == [row(started=0, beat=0, stopped=0, interval=3600)]


# --- /healthz --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_never_started_leaves_healthz_as_it_was(clock: Clock) -> None:
    assert healthz() == (200, HEALTHY)


@pytest.mark.django_db
def test_listening(clock: Clock) -> None:
    record_start(LISTENER, heartbeat_seconds=10, pid=4242)
    clock.at(10)
    record_beat(LISTENER, active_associations=2)
    clock.at(17)

    assert healthz() == (200, {**HEALTHY, "dicom_listener": listener_member("listening", age=7, active=2)})


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("silent_seconds", "status", "state"),
    [(30, "ok", "listening"), (31, "degraded", "not_responding"), (86400, "degraded", "not_responding")],
)
def test_silent_for_more_than_three_intervals_is_not_responding_and_degraded(
    clock: Clock, silent_seconds: int, status: str, state: str
) -> None:
    record_start(LISTENER, heartbeat_seconds=10, pid=4242)
    clock.at(silent_seconds)

    assert healthz() == (
        200,
        {**HEALTHY, "status": status, "dicom_listener": listener_member(state, age=silent_seconds)},
    )


@pytest.mark.django_db
def test_a_clean_stop_is_stopped_and_ok_however_long_ago(clock: Clock) -> None:
    record_start(LISTENER, heartbeat_seconds=10, pid=4242)
    clock.at(5)
    record_stop(LISTENER, active_associations=0)
    clock.at(86405)

    assert healthz() == (200, {**HEALTHY, "dicom_listener": listener_member("stopped", age=86400)})


@pytest.mark.django_db
def test_silence_is_judged_by_the_listeners_own_interval(clock: Clock, settings: Any) -> None:
    """docker-compose's app and dicom services have environments of their own: the row carries the interval."""
    settings.RADIOLOGY_DICOM_HEARTBEAT_SECONDS = 10
    record_start(LISTENER, heartbeat_seconds=60, pid=4242)
    clock.at(100)

    assert healthz() == (200, {**HEALTHY, "dicom_listener": listener_member("listening", age=100)})


@pytest.mark.django_db
def test_only_the_most_recently_heard_listener_counts(clock: Clock) -> None:
    """The listener moved to port 11113; the one on 11112 was killed, never stopped cleanly."""
    record_start(LISTENER, heartbeat_seconds=10, pid=4242)
    clock.at(600)
    record_start(ListenerAddress("PACSLITE", "127.0.0.1", 11113), heartbeat_seconds=10, pid=5151)
    clock.at(604)

    assert healthz() == (200, {**HEALTHY, "dicom_listener": listener_member("listening", age=4, port=11113)})


@pytest.mark.django_db
def test_not_responding_with_low_disk_space(clock: Clock, settings: Any) -> None:
    settings.RADIOLOGY_MIN_FREE_BYTES = 2**62
    record_start(LISTENER, heartbeat_seconds=10, pid=4242)
    clock.at(45)

    assert healthz() == (
        200,
        {
            "status": "degraded",
            "database": "ok",
            "storage": "ok",
            "disk_space": "low",
            "dicom_listener": listener_member("not_responding", age=45),
            "detail": health.low_space_detail(free_space.short_places()),
        },
    )


@pytest.mark.django_db
def test_database_down_leaves_the_listener_out(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    record_start(LISTENER, heartbeat_seconds=10, pid=4242)

    class Unreachable:
        def cursor(self) -> Any:
            raise OperationalError("connection refused")

    monkeypatch.setattr(health, "connection", Unreachable())

    assert healthz() == (503, {"status": "unhealthy", "database": "unreachable", "storage": "ok", "disk_space": "ok"})


@pytest.mark.django_db
def test_an_unreadable_heartbeat_is_logged_and_left_out(
    clock: Clock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_table() -> None:
        raise OperationalError("no such table: radiology_dicomlistenerheartbeat")

    monkeypatch.setattr(health, "listener_health", no_table)

    with caplog.at_level(logging.ERROR, logger="apps.radiology.operations.health"):
        assert healthz() == (200, HEALTHY)
    assert [record.getMessage() for record in caplog.records] == [
        "healthz: DICOM listener heartbeat unreadable: OperationalError"
    ]


@pytest.mark.django_db
def test_the_heartbeat_is_read_in_one_query(clock: Clock, django_assert_num_queries: Any) -> None:
    record_start(LISTENER, heartbeat_seconds=10, pid=4242)

    with django_assert_num_queries(1):
        assert heartbeat.listener_health() is not None


# --- the real command, in a process of its own ------------------------------------------------------

# Variables config/ reads: none of the suite's may reach the listener's process.
_DROPPED_PREFIXES = ("AWS_", "MINIO_", "RADIOLOGY_", "DATABASE_", "DJANGO_", "PACS_", "MEDIA_", "OHIF_", "DEMO_")
START_SECONDS = 120


@pytest.fixture
def own_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a listener and a /healthz of their own: a temp var/ and database."""
    with own_database(tmp_path, "dicom_heartbeat") as database_url:
        inherited = {name: value for name, value in os.environ.items() if not name.startswith(_DROPPED_PREFIXES)}
        yield {
            **inherited,
            "DJANGO_SETTINGS_MODULE": "config.test_settings",
            "PACS_VAR_DIR": str(tmp_path / "var"),
            "DATABASE_URL": database_url,
            "RADIOLOGY_DICOM_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
        }


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(  # noqa: S603 (fixed argv)
        [str(VENV_BIN / "python"), "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


_HEALTHZ_SCRIPT = "import json; from django.test import Client; print(json.dumps(Client().get('/healthz').json()))"


def healthz_of(env: dict[str, str]) -> dict[str, Any]:
    """/healthz as another process on the same database answers it."""
    answer: dict[str, Any] = json.loads(manage(env, "shell", "-c", _HEALTHZ_SCRIPT).strip().splitlines()[-1])
    return answer


def without_age(body: dict[str, Any]) -> dict[str, Any]:
    """The body with the listener's beat age, which depends on how fast this machine is, set aside."""
    listener = body.get("dicom_listener")
    if not isinstance(listener, dict):
        return body
    assert isinstance(listener.get("beat_age_seconds"), int), listener
    return {**body, "dicom_listener": {**listener, "beat_age_seconds": "set"}}


def test_the_real_command_is_listening_then_stopped_after_sigterm(own_env: dict[str, str], tmp_path: Path) -> None:
    manage(own_env, "migrate", "--noinput")
    assert healthz_of(own_env) == HEALTHY
    port = int(own_env["RADIOLOGY_DICOM_PORT"])
    log_path = tmp_path / "listener.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 (fixed argv)
            [str(VENV_BIN / "python"), "manage.py", "run_dicom_listener", "--grace", "1"],
            cwd=REPO,
            env=own_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        listening = {
            **HEALTHY,
            "dicom_listener": {
                "state": "listening",
                "ae_title": "PACSLITE",
                "port": port,
                "beat_age_seconds": "set",
                "active_associations": 0,
            },
        }
        deadline = time.monotonic() + START_SECONDS
        seen = without_age(healthz_of(own_env))
        while seen != listening and time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text(errors="replace")
            time.sleep(0.5)
            seen = without_age(healthz_of(own_env))
        assert seen == listening, log_path.read_text(errors="replace")

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    stopped = {**listening, "dicom_listener": {**listening["dicom_listener"], "state": "stopped"}}
    assert without_age(healthz_of(own_env)) == stopped
    assert log_path.read_text().splitlines()[-1] == "DICOM listener stopped"
