"""Audit events written in groups (access/audit_writer.py): one INSERT for many, none lost on a clean stop.

The suite writes each event at once (RADIOLOGY_AUDIT_FLUSH_MS=0 in config/test_settings.py); here
the grouped writer runs as production runs it. Its thread is left out where a test calls flush()
itself, so what is written, and when, is the test's to say; one test runs the thread and polls.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.radiology.access import audit, audit_writer
from apps.radiology.access.audit_writer import AuditWriter
from apps.radiology.models import AuditEvent
from apps.radiology.tests.api_fixtures import token_client
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.trust_helpers import API, StoredStudy, event_row, expected_event, ingest_study

pytestmark = pytest.mark.django_db


def _event(route: str) -> AuditEvent:
    return AuditEvent(channel="api", action="read", route=route, method="GET", status_code=200, outcome="allowed")


@pytest.fixture
def unthreaded(monkeypatch: pytest.MonkeyPatch) -> Iterator[AuditWriter]:
    """A writer whose events wait until the test flushes them (no thread of its own)."""
    writer = AuditWriter(60)
    monkeypatch.setattr(writer, "_start", lambda: None)
    yield writer


def test_events_wait_for_the_flush_then_go_in_one_insert(unthreaded: AuditWriter) -> None:
    for route in ("study-list", "study-detail", "image-url"):
        unthreaded.add(_event(route))
    assert AuditEvent.objects.count() == 0

    with CaptureQueriesContext(connection) as queries:
        written = unthreaded.flush()

    statements = [query["sql"].split(" ")[0] for query in queries]
    if connection.vendor == "postgresql":  # the ids, then one COPY (fastpaths/bulk_insert.py)
        assert (written, statements) == (3, ["SAVEPOINT", "SELECT", "COPY", "RELEASE"])
    else:
        assert (written, statements) == (3, ["SAVEPOINT", "INSERT", "RELEASE"])
    assert list(AuditEvent.objects.order_by("id").values_list("route", "action", "status_code")) == [
        ("study-list", "read", 200),
        ("study-detail", "read", 200),
        ("image-url", "read", 200),
    ]
    assert unthreaded.flush() == 0


def test_past_the_bound_the_oldest_are_dropped_and_the_drop_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    writer = AuditWriter(60, max_pending=2)
    monkeypatch.setattr(writer, "_start", lambda: None)
    for route in ("first", "second", "third"):
        writer.add(_event(route))

    with caplog.at_level(logging.ERROR, logger="apps.radiology.access.audit_writer"):
        assert writer.flush() == 2

    assert list(AuditEvent.objects.order_by("id").values_list("route", flat=True)) == ["second", "third"]
    assert [record.getMessage() for record in caplog.records] == [
        "audit: 1 events dropped, more than 2 waited to be written"
    ]


def test_a_failed_write_is_logged_never_raised_and_the_next_one_works(
    unthreaded: AuditWriter, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    unthreaded.add(_event("lost"))
    with monkeypatch.context() as patched:
        patched.setattr(audit_writer.bulk_insert, "insert_new", _refuse)
        with caplog.at_level(logging.ERROR, logger="apps.radiology.access.audit_writer"):
            assert unthreaded.flush() == 0
    assert [record.getMessage() for record in caplog.records] == ["audit: 1 events could not be written"]

    unthreaded.add(_event("kept"))
    assert unthreaded.flush() == 1
    assert list(AuditEvent.objects.values_list("route", flat=True)) == ["kept"]


def _refuse(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("the database is away")


def test_an_event_keeps_the_time_it_was_made_not_the_time_it_was_written(unthreaded: AuditWriter) -> None:
    event = _event("study-list")
    made_at = event.at
    unthreaded.add(event)
    time.sleep(0.05)

    assert unthreaded.flush() == 1
    assert AuditEvent.objects.get().at == made_at
    assert made_at <= timezone.now() - dt.timedelta(seconds=0.05)


def test_a_clean_exit_writes_what_waits_but_a_forked_child_does_not(unthreaded: AuditWriter) -> None:
    unthreaded.add(_event("at-exit"))

    unthreaded._flush_at_exit(os.getpid() + 1)  # as in a process forked after the thread started
    assert AuditEvent.objects.count() == 0
    unthreaded._flush_at_exit(os.getpid())
    assert list(AuditEvent.objects.values_list("route", flat=True)) == ["at-exit"]


def test_a_request_event_goes_through_the_processs_writer_when_grouping_is_on(
    settings: object,
    monkeypatch: pytest.MonkeyPatch,
    unthreaded: AuditWriter,
    make_order: MakeOrder,
    radtech: AbstractBaseUser,
    doctor: AbstractBaseUser,
) -> None:
    stored: StoredStudy = ingest_study(make_order(last_name="Doe"), images=1, user=radtech)
    settings.RADIOLOGY_AUDIT_FLUSH_MS = 100  # type: ignore[attr-defined]
    monkeypatch.setattr(audit_writer, "_writer", unthreaded)
    before = AuditEvent.objects.count()  # the ingest's own decisions, written in its transaction

    response = token_client(doctor).get(f"{API}/studies/{stored.study.pk}/")

    assert response.status_code == 200
    assert AuditEvent.objects.count() == before
    assert unthreaded.flush() == 1
    event = AuditEvent.objects.order_by("-id").first()
    assert event_row(event) == expected_event(
        user=doctor.pk,
        username=doctor.username,
        role="doctor",
        channel="api",
        action="read",
        route="study-detail",
        method="GET",
        status_code=200,
        outcome="allowed",
        study_id=stored.study.pk,
    )


def test_with_grouping_off_each_event_is_written_at_once(settings: object) -> None:
    settings.RADIOLOGY_AUDIT_FLUSH_MS = 0  # type: ignore[attr-defined]
    assert audit_writer.buffered_writer() is None

    event = audit.record(user=None, channel="maintenance", action="read", route="r", method="CLI", status_code=200)

    assert event is not None and event.pk is not None
    assert list(AuditEvent.objects.values_list("route", flat=True)) == ["r"]


@pytest.mark.django_db(transaction=True)
def test_the_writers_thread_writes_the_events_by_itself() -> None:
    """A poll with a generous deadline, no timed assertion: the thread must get there.

    The poll reads the writer's count, not the table: SQLite's in-memory test database (shared
    cache) refuses a read while another connection writes, instead of waiting.
    """
    writer = AuditWriter(0.05)
    try:
        writer.add(_event("by-the-thread"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and writer.written == 0:
            time.sleep(0.05)
        thread = writer._thread
    finally:
        writer.stop()  # its thread's database connection closed before the test database goes

    assert writer.written == 1
    assert thread is not None and thread.name == "audit-writer" and not thread.is_alive()
    assert list(AuditEvent.objects.values_list("route", flat=True)) == ["by-the-thread"]
