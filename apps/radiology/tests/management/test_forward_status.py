"""manage.py forward_status: each destination's queue and the studies not yet delivered, line by line.

The clock is frozen (django.utils.timezone.now) and every time shown is set by the test, so
the output is compared exactly; --json prints what /healthz's `forwarding` member holds.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.radiology.management.commands import forward_status as command_module
from apps.radiology.models import ForwardTask, RadiologyStudy, StudyDelivery
from apps.radiology.outbox import progress
from apps.radiology.outbox.record import request_forwarding
from apps.radiology.tests.api_fixtures import make_study_with_images
from apps.radiology.tests.conftest import MakeOrder

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 2, 1, 12, 0, tzinfo=dt.UTC)
DESTINATIONS = "regional=all@https://regional.example.org,teaching=CR+DX@http://10.0.0.9:8000"


@pytest.fixture(autouse=True)
def _frozen(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    settings.RADIOLOGY_FORWARD_DESTINATIONS = DESTINATIONS
    settings.RADIOLOGY_FORWARD_TOKENS = {"regional": "secret-token-never-printed"}


def ago(**delta: float) -> dt.datetime:
    return NOW - dt.timedelta(**delta)


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("forward_status", *args, stdout=out)
    return out.getvalue()


def delivery(make_order: MakeOrder, destination: str, *, images: int, sent: int, since: dt.datetime) -> RadiologyStudy:
    """A study queued for `destination` with `sent` of its `images` images sent, its delivery made at `since`."""
    study = make_study_with_images(make_order(), images=images)
    request_forwarding(study=study, destination=destination, requested_by=None)
    for task in list(ForwardTask.objects.filter(study=study, destination=destination).order_by("id"))[:sent]:
        progress.mark_sent(task, wire_bytes_added=1)
    StudyDelivery.objects.filter(study=study).update(created_at=since, updated_at=since)
    ForwardTask.objects.filter(study=study).update(created_at=since)
    ForwardTask.objects.filter(study=study, state="sent").update(sent_at=since)
    return study


@pytest.fixture
def studies(make_order: MakeOrder) -> dict[str, RadiologyStudy]:
    sending = delivery(make_order, "regional", images=2, sent=1, since=ago(seconds=90))
    confirming = delivery(make_order, "teaching", images=2, sent=2, since=ago(minutes=45))
    failed = delivery(make_order, "regional", images=1, sent=0, since=ago(hours=3))
    (task,) = ForwardTask.objects.filter(study=failed)
    progress.mark_failed(
        task, error_code="image_conflict", error_detail="Stored there with other bytes.", wire_bytes_added=0
    )
    ForwardTask.objects.filter(pk=task.pk).update(error_at=ago(minutes=2))
    StudyDelivery.objects.filter(study=failed).update(updated_at=ago(hours=3))
    delivered = delivery(make_order, "regional", images=1, sent=1, since=ago(hours=5))
    assert progress.apply_verification(
        StudyDelivery.objects.get(study=delivered),
        confirmed=progress.sent_checksums(StudyDelivery.objects.get(study=delivered)),
    )
    return {"sending": sending, "confirming": confirming, "failed": failed, "delivered": delivered}


def test_queues_and_the_studies_not_yet_delivered(studies: dict[str, RadiologyStudy]) -> None:
    sending, confirming, failed = studies["sending"], studies["confirming"], studies["failed"]

    output = run()

    assert output.splitlines() == [
        "regional: https://regional.example.org (rule: all)",
        "teaching: http://10.0.0.9:8000 (rule: CR+DX)",
        "regional: 1 image(s) pending, 1 failed; oldest pending: 90 s; last success: 2026-02-01T11:58:30+00:00; "
        "last error: image_conflict at 2026-02-01T11:58:00+00:00",
        "teaching: 0 image(s) pending, 0 failed; oldest pending: none; last success: 2026-02-01T11:15:00+00:00; "
        "last error: none",
        "3 studies not yet delivered:",
        f"  study {failed.pk} ({failed.study_uid}) to regional: failed: Stored there with other bytes.; since 3 h",
        # Failed first (a tech must act), then the longest waiting.
        f"  study {confirming.pk} ({confirming.study_uid}) to teaching: confirming 2 of 2; since 45 min",
        f"  study {sending.pk} ({sending.study_uid}) to regional: sending 1 of 2; since 90 s",
    ]
    assert "secret-token-never-printed" not in output


def test_json_is_what_healthz_shows(studies: dict[str, RadiologyStudy]) -> None:
    assert json.loads(run("--json")) == [
        {
            "destination": "regional",
            "pending": 1,
            "failed": 1,
            "oldest_pending_seconds": 90,
            "last_success": "2026-02-01T11:58:30+00:00",
            "last_error": {"at": "2026-02-01T11:58:00+00:00", "code": "image_conflict"},
        },
        {
            "destination": "teaching",
            "pending": 0,
            "failed": 0,
            "oldest_pending_seconds": None,
            "last_success": "2026-02-01T11:15:00+00:00",
            "last_error": None,
        },
    ]


def test_a_long_list_is_cut_with_where_to_see_the_rest(
    studies: dict[str, RadiologyStudy], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(command_module, "STUDIES_LISTED", 1)
    failed = studies["failed"]

    lines = run().splitlines()

    assert lines[4:] == [
        "3 studies not yet delivered:",
        f"  study {failed.pk} ({failed.study_uid}) to regional: failed: Stored there with other bytes.; since 3 h",
        "  ... and 2 more (admin: Study deliveries)",
    ]


def test_one_study_on_its_way(make_order: MakeOrder) -> None:
    study = delivery(make_order, "regional", images=1, sent=0, since=ago(seconds=119))

    assert run().splitlines()[4:] == [
        "1 study not yet delivered:",
        f"  study {study.pk} ({study.study_uid}) to regional: sending 0 of 1; since 119 s",
    ]


def test_everything_delivered(make_order: MakeOrder) -> None:
    study = delivery(make_order, "regional", images=1, sent=1, since=ago(minutes=2))
    progress.apply_verification(
        StudyDelivery.objects.get(study=study),
        confirmed=progress.sent_checksums(StudyDelivery.objects.get(study=study)),
    )

    assert run().splitlines() == [
        "regional: https://regional.example.org (rule: all)",
        "teaching: http://10.0.0.9:8000 (rule: CR+DX)",
        "regional: 0 image(s) pending, 0 failed; oldest pending: none; last success: 2026-02-01T11:58:00+00:00; "
        "last error: none",
        "teaching: 0 image(s) pending, 0 failed; oldest pending: none; last success: never; last error: none",
        "Every study is delivered.",
    ]


def test_no_destination_configured(settings: Any, db: None) -> None:
    settings.RADIOLOGY_FORWARD_DESTINATIONS = ""
    settings.RADIOLOGY_FORWARD_TOKENS = {}

    assert run().splitlines() == [
        "No forwarding destination is configured (RADIOLOGY_FORWARD_DESTINATIONS).",
        "Every study is delivered.",
    ]
    assert json.loads(run("--json")) == []
