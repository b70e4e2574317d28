"""How forwarding stands (outbox/status.py): each destination's queue, exact, with a frozen clock.

The rows are set up with every time a value depends on written by the test, so the counts,
ages and times asserted are exact.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from apps.radiology.models import ForwardTask, RadiologyStudy
from apps.radiology.outbox.record import request_forwarding
from apps.radiology.outbox.status import DestinationStatus, queue_status, queue_status_json
from apps.radiology.tests.api_fixtures import make_study_with_images
from apps.radiology.tests.conftest import MakeOrder

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 2, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timezone, "now", lambda: NOW)


def ago(**delta: float) -> dt.datetime:
    return NOW - dt.timedelta(**delta)


def queued(make_order: MakeOrder, destination: str, images: int) -> list[ForwardTask]:
    study: RadiologyStudy = make_study_with_images(make_order(), images=images)
    request_forwarding(study=study, destination=destination, requested_by=None)
    return list(ForwardTask.objects.filter(study=study, destination=destination).order_by("id"))


def set_task(task: ForwardTask, **values: Any) -> None:
    ForwardTask.objects.filter(pk=task.pk).update(**values)


@pytest.fixture
def queues(make_order: MakeOrder) -> None:
    """regional: 3 pending (oldest 2 h), 1 failed, 2 sent, the last error 5 min ago; teaching: nothing yet;
    retired (no longer configured): 1 pending; gone (no longer configured): only sent."""
    oldest, waiting, retrying, failed, sent_early, sent_late = queued(make_order, "regional", 6)
    set_task(oldest, created_at=ago(hours=2))
    set_task(waiting, created_at=ago(minutes=90))
    set_task(retrying, created_at=ago(hours=3), state="sent", sent_at=ago(hours=1))  # sent earlier ...
    set_task(
        retrying,  # ... found missing at verification: pending again, with its error
        state="pending",
        sent_at=None,
        error_code="not_confirmed",
        error_at=ago(minutes=5),
    )
    set_task(failed, state="failed", error_code="image_conflict", error_at=ago(minutes=30), created_at=ago(hours=5))
    set_task(sent_early, state="sent", sent_at=ago(minutes=40))
    set_task(sent_late, state="sent", sent_at=ago(minutes=10), error_code="timeout", error_at=ago(minutes=20))
    (retired,) = queued(make_order, "retired", 1)
    set_task(retired, created_at=ago(days=2))
    (gone,) = queued(make_order, "gone", 1)
    set_task(gone, state="sent", sent_at=ago(days=3))


def test_queue_status_per_destination(queues: None, django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(1 + 2 * 3):
        statuses = queue_status(["teaching", "regional"])

    assert statuses == [
        DestinationStatus(
            destination="regional",
            pending=3,
            failed=1,
            oldest_pending_at=ago(hours=3),
            last_success_at=ago(minutes=10),
            last_error_at=ago(minutes=5),
            last_error_code="not_confirmed",
        ),
        DestinationStatus(
            destination="retired",
            pending=1,
            failed=0,
            oldest_pending_at=ago(days=2),
            last_success_at=None,
            last_error_at=None,
            last_error_code="",
        ),
        DestinationStatus(
            destination="teaching",
            pending=0,
            failed=0,
            oldest_pending_at=None,
            last_success_at=None,
            last_error_at=None,
            last_error_code="",
        ),
    ]


def test_queue_status_json(queues: None) -> None:
    assert queue_status_json(["regional", "teaching"]) == [
        {
            "destination": "regional",
            "pending": 3,
            "failed": 1,
            "oldest_pending_seconds": 3 * 3600,
            "last_success": "2026-02-01T11:50:00+00:00",
            "last_error": {"at": "2026-02-01T11:55:00+00:00", "code": "not_confirmed"},
        },
        {
            "destination": "retired",
            "pending": 1,
            "failed": 0,
            "oldest_pending_seconds": 2 * 86400,
            "last_success": None,
            "last_error": None,
        },
        {
            "destination": "teaching",
            "pending": 0,
            "failed": 0,
            "oldest_pending_seconds": None,
            "last_success": None,
            "last_error": None,
        },
    ]


def test_nothing_configured_and_nothing_queued_is_an_empty_status(db: None) -> None:
    assert queue_status([]) == []
    assert queue_status_json([]) == []


def test_a_configured_destination_with_only_sent_images(make_order: MakeOrder) -> None:
    (task,) = queued(make_order, "regional", 1)
    set_task(task, state="sent", sent_at=ago(seconds=1))

    assert queue_status_json(["regional"]) == [
        {
            "destination": "regional",
            "pending": 0,
            "failed": 0,
            "oldest_pending_seconds": None,
            "last_success": "2026-02-01T11:59:59+00:00",
            "last_error": None,
        }
    ]
