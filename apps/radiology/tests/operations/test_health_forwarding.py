"""/healthz's `forwarding` member: on a clinic that forwards, each destination's queue; never the status.

A clinic's link down for days is what store and forward is for, so a long queue or a failed
study leaves the status "ok"; monitoring reads the member instead. A server that forwards
nothing has no member at all (its body is what it was before store and forward).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import OperationalError
from django.test import Client
from django.utils import timezone

from apps.radiology.models import AuditEvent, ForwardTask
from apps.radiology.operations import health
from apps.radiology.outbox import progress
from apps.radiology.outbox.record import request_forwarding
from apps.radiology.tests.api_fixtures import make_study_with_images
from apps.radiology.tests.conftest import MakeOrder

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 2, 1, 12, 0, tzinfo=dt.UTC)
HEALTHY = {"status": "ok", "database": "ok", "storage": "ok", "disk_space": "ok"}
IDLE_QUEUE = {
    "pending": 0,
    "failed": 0,
    "oldest_pending_seconds": None,
    "last_success": None,
    "last_error": None,
}


@pytest.fixture(autouse=True)
def _frozen(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    settings.RADIOLOGY_FORWARD_TOKENS = {"regional": "secret-token-never-shown"}


@pytest.fixture
def queue(make_order: MakeOrder) -> None:
    """regional: one image waiting 10 minutes, one failed for good, one sent a minute ago."""
    study = make_study_with_images(make_order(), images=3)
    request_forwarding(study=study, destination="regional", requested_by=None)
    waiting, refused, sent = ForwardTask.objects.filter(study=study).order_by("id")
    ForwardTask.objects.filter(pk=waiting.pk).update(created_at=NOW - dt.timedelta(minutes=10))
    progress.mark_failed(refused, error_code="not_authenticated", error_detail="Token refused.", wire_bytes_added=0)
    progress.mark_sent(sent, wire_bytes_added=10)
    ForwardTask.objects.filter(pk=sent.pk).update(sent_at=NOW - dt.timedelta(minutes=1))


def test_a_clinic_sees_each_destinations_queue_and_the_status_is_unchanged(
    settings: Any, client: Client, queue: None
) -> None:
    settings.RADIOLOGY_FORWARD_DESTINATIONS = "regional=all@https://regional.example.org,teaching=CR@http://teaching"

    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {
        **HEALTHY,
        "forwarding": [
            {
                "destination": "regional",
                "pending": 1,
                "failed": 1,
                "oldest_pending_seconds": 600,
                "last_success": "2026-02-01T11:59:00+00:00",
                "last_error": {"at": "2026-02-01T12:00:00+00:00", "code": "not_authenticated"},
            },
            {"destination": "teaching", **IDLE_QUEUE},
        ],
    }
    assert "secret-token-never-shown" not in response.content.decode()
    assert AuditEvent.objects.count() == 0


def test_a_destination_with_nothing_queued_yet_is_listed(settings: Any, client: Client) -> None:
    settings.RADIOLOGY_FORWARD_DESTINATIONS = "regional=on_request@https://regional.example.org"

    response = client.get("/healthz")

    assert (response.status_code, response.json()) == (
        200,
        {**HEALTHY, "forwarding": [{"destination": "regional", **IDLE_QUEUE}]},
    )


def test_a_server_that_forwards_nothing_has_no_member(settings: Any, client: Client, queue: None) -> None:
    # Tasks left from a destination since removed from the settings: this server forwards nothing now.
    settings.RADIOLOGY_FORWARD_DESTINATIONS = ""

    response = client.get("/healthz")

    assert (response.status_code, response.json()) == (200, HEALTHY)


def test_no_member_when_the_database_is_down(
    settings: Any, client: Client, monkeypatch: pytest.MonkeyPatch, queue: None
) -> None:
    settings.RADIOLOGY_FORWARD_DESTINATIONS = "regional=all@https://regional.example.org"

    class Unreachable:
        def cursor(self) -> Any:
            raise OperationalError("connection refused")

    monkeypatch.setattr(health, "connection", Unreachable())

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == {"status": "unhealthy", "database": "unreachable", "storage": "ok", "disk_space": "ok"}


def test_an_unreadable_queue_leaves_the_member_out_and_the_status_alone(
    settings: Any, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.RADIOLOGY_FORWARD_DESTINATIONS = "regional=all@https://regional.example.org"

    def unreadable(names: list[str]) -> list[dict[str, Any]]:
        raise OperationalError("no such table: radiology_forwardtask")

    monkeypatch.setattr(health, "queue_status_json", unreadable)

    response = client.get("/healthz")

    assert (response.status_code, response.json()) == (200, HEALTHY)
