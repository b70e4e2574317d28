"""The forwarder's transitions (outbox/progress.py): claim, progress, sent, retry, failed, verify.

Tasks are made the way a person's request makes them (record.request_forwarding) on image
rows made directly (progress never reads a file); the clock is frozen (django.utils.timezone.now)
and every time a test compares is set by the test, so each row is asserted exactly.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

import pytest
from django.utils import timezone

from apps.radiology.models import ForwardTask, RadiologyImage, RadiologyStudy, StudyDelivery
from apps.radiology.outbox import progress
from apps.radiology.outbox.record import request_forwarding
from apps.radiology.tests.api_fixtures import make_image_row, make_series, make_study
from apps.radiology.tests.conftest import MakeOrder

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 2, 1, 12, 0, tzinfo=dt.UTC)
LEASE = 300


@dataclass
class Clock:
    now: dt.datetime

    def move(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """timezone.now() as the outbox (and auto_now fields) see it, frozen at NOW until moved."""
    frozen = Clock(NOW)
    monkeypatch.setattr(timezone, "now", lambda: frozen.now)
    return frozen


@pytest.fixture(autouse=True)
def _destinations(settings: Any) -> None:
    settings.RADIOLOGY_FORWARD_DESTINATIONS = (
        "regional=on_request@https://regional.example.org,teaching=on_request@http://t"
    )
    settings.RADIOLOGY_FORWARD_TOKENS = {}


def queued_study(make_order: MakeOrder, *, images: int, destination: str = "regional") -> RadiologyStudy:
    """A study of `images` image rows, queued for `destination`, each task due at NOW minus its position."""
    study = make_study(make_order())
    series = make_series(study, series_number=1)
    for number in range(1, images + 1):
        make_image_row(series, instance_number=number)
    request_forwarding(study=study, destination=destination, requested_by=None)
    for position, task in enumerate(ForwardTask.objects.filter(study=study, destination=destination).order_by("id")):
        ForwardTask.objects.filter(pk=task.pk).update(next_attempt_at=NOW - dt.timedelta(minutes=10 - position))
    return study


def tasks_of(study: RadiologyStudy, destination: str = "regional") -> list[ForwardTask]:
    return list(ForwardTask.objects.filter(study=study, destination=destination).order_by("id"))


def delivery_of(study: RadiologyStudy, destination: str = "regional") -> StudyDelivery:
    return StudyDelivery.objects.get(study=study, destination=destination)


def task_row(task: ForwardTask) -> dict[str, Any]:
    task.refresh_from_db()
    return {
        "state": task.state,
        "attempts": task.attempts,
        "next_attempt_at": task.next_attempt_at,
        "lease_until": task.lease_until,
        "remote_upload_id": task.remote_upload_id,
        "resends": task.resends,
        "wire_bytes": task.wire_bytes,
        "sent_at": task.sent_at,
        "error_code": task.error_code,
        "error_detail": task.error_detail,
        "error_at": task.error_at,
    }


def delivery_row(delivery: StudyDelivery) -> dict[str, Any]:
    delivery.refresh_from_db()
    return {
        "state": delivery.state,
        "images_sent": delivery.images_sent,
        "images_total": delivery.images_total,
        "delivered_at": delivery.delivered_at,
        "error_code": delivery.error_code,
        "error_detail": delivery.error_detail,
        "summary": delivery.summary,
    }


def minutes_ago(minutes: int) -> dt.datetime:
    return NOW - dt.timedelta(minutes=minutes)


# --- claim_due -------------------------------------------------------------------------------


def test_claim_leases_the_oldest_due_tasks_of_the_destination(
    clock: Clock, make_order: MakeOrder, django_assert_num_queries: Any
) -> None:
    study = queued_study(make_order, images=3)
    first, second, third = tasks_of(study)

    claimed = progress.claim_due(destination="regional", limit=2, lease_seconds=LEASE)

    assert [task.pk for task in claimed] == [first.pk, second.pk]
    with django_assert_num_queries(0):  # image, series, study and order came with the claim
        assert [task.image.series.study.radiology_order_id for task in claimed] == [study.radiology_order_id] * 2
    leased_until = NOW + dt.timedelta(seconds=LEASE)
    assert [task.lease_until for task in claimed] == [leased_until, leased_until]
    assert [task_row(task)["lease_until"] for task in (first, second, third)] == [leased_until, leased_until, None]
    assert [task.state for task in claimed] == ["pending", "pending"]


def test_claim_skips_leased_not_due_settled_and_other_destinations_tasks(clock: Clock, make_order: MakeOrder) -> None:
    study = queued_study(make_order, images=6)
    leased, not_due, sent, failed, due, also_due = tasks_of(study)
    queued_study(make_order, images=1, destination="teaching")
    ForwardTask.objects.filter(pk=leased.pk).update(lease_until=NOW + dt.timedelta(seconds=1))
    ForwardTask.objects.filter(pk=not_due.pk).update(next_attempt_at=NOW + dt.timedelta(seconds=1))
    ForwardTask.objects.filter(pk=sent.pk).update(state=ForwardTask.State.SENT)
    ForwardTask.objects.filter(pk=failed.pk).update(state=ForwardTask.State.FAILED)
    ForwardTask.objects.filter(pk=also_due.pk).update(next_attempt_at=NOW)  # due exactly now: due

    claimed = progress.claim_due(destination="regional", limit=10, lease_seconds=LEASE)

    assert [task.pk for task in claimed] == [due.pk, also_due.pk]
    assert task_row(leased)["lease_until"] == NOW + dt.timedelta(seconds=1)  # its holder's lease untouched
    assert [task_row(task)["lease_until"] for task in (not_due, sent, failed)] == [None, None, None]


def test_the_oldest_due_first_whatever_the_order_they_were_made_in(clock: Clock, make_order: MakeOrder) -> None:
    study = queued_study(make_order, images=3)
    first, second, third = tasks_of(study)
    ForwardTask.objects.filter(pk=third.pk).update(next_attempt_at=minutes_ago(60))
    ForwardTask.objects.filter(pk=first.pk).update(next_attempt_at=minutes_ago(1))

    claimed = progress.claim_due(destination="regional", limit=3, lease_seconds=LEASE)

    assert [task.pk for task in claimed] == [third.pk, second.pk, first.pk]


def test_a_claimed_task_is_not_claimed_again_until_its_lease_lapses(clock: Clock, make_order: MakeOrder) -> None:
    study = queued_study(make_order, images=2)
    first, second = tasks_of(study)

    assert [task.pk for task in progress.claim_due(destination="regional", limit=1, lease_seconds=LEASE)] == [first.pk]
    assert [task.pk for task in progress.claim_due(destination="regional", limit=5, lease_seconds=LEASE)] == [second.pk]
    assert progress.claim_due(destination="regional", limit=5, lease_seconds=LEASE) == []

    clock.move(LEASE)  # both leases end exactly now: still held
    assert progress.claim_due(destination="regional", limit=5, lease_seconds=LEASE) == []
    clock.move(1)  # a killed forwarder's claims lapse on their own
    again = progress.claim_due(destination="regional", limit=5, lease_seconds=60)

    assert [task.pk for task in again] == [first.pk, second.pk]
    assert [task_row(task)["lease_until"] for task in again] == [clock.now + dt.timedelta(seconds=60)] * 2


def test_nothing_due_claims_nothing(clock: Clock, make_order: MakeOrder) -> None:
    assert progress.claim_due(destination="regional", limit=5, lease_seconds=LEASE) == []
    queued_study(make_order, images=1, destination="teaching")
    assert progress.claim_due(destination="regional", limit=5, lease_seconds=LEASE) == []


# --- save_progress, mark_sent ------------------------------------------------------------------


@pytest.fixture
def claimed(clock: Clock, make_order: MakeOrder) -> tuple[RadiologyStudy, list[ForwardTask]]:
    study = queued_study(make_order, images=2)
    return study, progress.claim_due(destination="regional", limit=2, lease_seconds=LEASE)


def test_save_progress_keeps_the_upload_id_adds_the_bytes_and_renews_the_lease(
    clock: Clock, claimed: tuple[RadiologyStudy, list[ForwardTask]]
) -> None:
    study, (task, _other) = claimed
    clock.move(100)

    progress.save_progress(task, remote_upload_id=41, wire_bytes_added=1000, lease_seconds=LEASE)
    progress.save_progress(task, remote_upload_id=41, wire_bytes_added=500, lease_seconds=LEASE)

    assert task.remote_upload_id == 41
    assert task_row(task) == {
        "state": "pending",
        "attempts": 0,
        "next_attempt_at": minutes_ago(10),
        "lease_until": NOW + dt.timedelta(seconds=100 + LEASE),
        "remote_upload_id": 41,
        "resends": 0,
        "wire_bytes": 1500,
        "sent_at": None,
        "error_code": "",
        "error_detail": "",
        "error_at": None,
    }
    assert delivery_row(delivery_of(study))["images_sent"] == 0


def test_mark_sent_counts_the_image_once_even_if_called_twice(
    clock: Clock, claimed: tuple[RadiologyStudy, list[ForwardTask]]
) -> None:
    study, (task, other) = claimed
    ForwardTask.objects.filter(pk=task.pk).update(attempts=3, error_code="timeout", error_detail="x", error_at=NOW)

    progress.mark_sent(task, wire_bytes_added=2048)
    progress.mark_sent(task, wire_bytes_added=2048)  # a second forwarder, or a retry, got there too

    assert task.state == ForwardTask.State.SENT
    assert task_row(task) == {
        "state": "sent",
        "attempts": 0,
        "next_attempt_at": minutes_ago(10),
        "lease_until": None,
        "remote_upload_id": None,
        "resends": 0,
        "wire_bytes": 2048,
        "sent_at": NOW,
        # The last error is kept after a success (admin shows what went wrong on the way).
        "error_code": "timeout",
        "error_detail": "x",
        "error_at": NOW,
    }
    assert task_row(other)["state"] == "pending"
    assert delivery_row(delivery_of(study)) == {
        "state": "sending",
        "images_sent": 1,
        "images_total": 2,
        "delivered_at": None,
        "error_code": "",
        "error_detail": "",
        "summary": "sending 1 of 2",
    }

    progress.mark_sent(other, wire_bytes_added=10)

    assert delivery_row(delivery_of(study))["summary"] == "confirming 2 of 2"


# --- mark_retry, mark_failed, backoff ----------------------------------------------------------


def test_mark_retry_moves_the_next_attempt_and_counts_the_attempt(
    clock: Clock, claimed: tuple[RadiologyStudy, list[ForwardTask]]
) -> None:
    study, (task, _other) = claimed

    progress.mark_retry(
        task, error_code="timeout", error_detail="No answer in 60 s.", wire_bytes_added=700, delay_seconds=4
    )
    clock.move(10)
    progress.mark_retry(task, error_code="c" * 70, error_detail="d" * 300, wire_bytes_added=300, delay_seconds=8.5)

    assert task_row(task) == {
        "state": "pending",
        "attempts": 2,
        "next_attempt_at": NOW + dt.timedelta(seconds=10 + 8.5),
        "lease_until": None,
        "remote_upload_id": None,
        "resends": 0,
        "wire_bytes": 1000,
        "sent_at": None,
        "error_code": "c" * 64,
        "error_detail": "d" * 255,
        "error_at": NOW + dt.timedelta(seconds=10),
    }
    assert delivery_row(delivery_of(study))["summary"] == "sending 0 of 2"
    # Not due before its time, due at it.
    assert [t.pk for t in progress.claim_due(destination="regional", limit=5, lease_seconds=LEASE)] == []
    clock.move(8.5)
    assert [t.pk for t in progress.claim_due(destination="regional", limit=5, lease_seconds=LEASE)] == [task.pk]


def test_mark_retry_of_a_task_already_sent_changes_nothing(
    clock: Clock, claimed: tuple[RadiologyStudy, list[ForwardTask]]
) -> None:
    _study, (task, _other) = claimed
    progress.mark_sent(task, wire_bytes_added=5)
    before = task_row(task)

    progress.mark_retry(task, error_code="timeout", error_detail="late", wire_bytes_added=9, delay_seconds=4)

    assert task_row(task) == before


def test_mark_failed_fails_the_study_with_why(clock: Clock, claimed: tuple[RadiologyStudy, list[ForwardTask]]) -> None:
    study, (task, other) = claimed
    progress.mark_sent(other, wire_bytes_added=100)

    progress.mark_failed(
        task,
        error_code="image_conflict",
        error_detail="An image with this UID is already stored with different content.",
        wire_bytes_added=12,
    )
    progress.mark_failed(task, error_code="other", error_detail="second call", wire_bytes_added=99)

    assert task.state == ForwardTask.State.FAILED
    assert task_row(task) == {
        "state": "failed",
        "attempts": 0,
        "next_attempt_at": minutes_ago(10),
        "lease_until": None,
        "remote_upload_id": None,
        "resends": 0,
        "wire_bytes": 12,
        "sent_at": None,
        "error_code": "image_conflict",
        "error_detail": "An image with this UID is already stored with different content.",
        "error_at": NOW,
    }
    assert delivery_row(delivery_of(study)) == {
        "state": "failed",
        "images_sent": 1,
        "images_total": 2,
        "delivered_at": None,
        "error_code": "image_conflict",
        "error_detail": "An image with this UID is already stored with different content.",
        "summary": "failed: An image with this UID is already stored with different content.",
    }
    # A failed task is never claimed again until a tech retries it.
    assert progress.claim_due(destination="regional", limit=5, lease_seconds=LEASE) == []


def test_backoff_doubles_up_to_the_cap_with_jitter_from_half_to_whole(settings: Any) -> None:
    settings.RADIOLOGY_FORWARD_BACKOFF_SECONDS = 2
    settings.RADIOLOGY_FORWARD_BACKOFF_MAX_SECONDS = 900
    expected_rng = random.Random(20)  # noqa: S311 (seeded jitter, not crypto)
    rng = random.Random(20)  # noqa: S311 (seeded jitter, not crypto)

    delays = [progress.backoff_seconds(attempts, rng=rng) for attempts in range(12)]

    ceilings = [2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900]
    assert delays == [ceiling * expected_rng.uniform(0.5, 1.0) for ceiling in ceilings]
    assert all(ceiling / 2 <= delay <= ceiling for delay, ceiling in zip(delays, ceilings, strict=True))


def test_backoff_bounds_over_many_draws_and_huge_attempt_counts(settings: Any) -> None:
    settings.RADIOLOGY_FORWARD_BACKOFF_SECONDS = 3
    settings.RADIOLOGY_FORWARD_BACKOFF_MAX_SECONDS = 60
    rng = random.Random(7)  # noqa: S311 (seeded jitter, not crypto)

    first_try = [progress.backoff_seconds(0, rng=rng) for _ in range(500)]
    capped = [progress.backoff_seconds(attempts, rng=rng) for attempts in (5, 6, 40, 10_000)]

    assert min(first_try) >= 1.5
    assert max(first_try) <= 3.0
    assert max(first_try) - min(first_try) > 1.2  # jittered, not a constant
    assert all(30.0 <= delay <= 60.0 for delay in capped)
    # Without a given generator it draws from the system's: still within bounds.
    assert 1.5 <= progress.backoff_seconds(0) <= 3.0


# --- verification --------------------------------------------------------------------------------


def sent_study(make_order: MakeOrder, *, images: int, destination: str = "regional") -> RadiologyStudy:
    study = queued_study(make_order, images=images, destination=destination)
    for task in progress.claim_due(destination=destination, limit=images, lease_seconds=LEASE):
        progress.mark_sent(task, wire_bytes_added=100)
    return study


def checksums(study: RadiologyStudy) -> dict[str, str]:
    return dict(RadiologyImage.objects.filter(series__study=study).values_list("image_uid", "checksum"))


def test_deliveries_to_verify_are_the_sending_ones_with_every_image_sent(clock: Clock, make_order: MakeOrder) -> None:
    ready = sent_study(make_order, images=2)
    clock.move(1)
    also_ready = sent_study(make_order, images=1)
    half_sent = queued_study(make_order, images=2)
    progress.mark_sent(tasks_of(half_sent)[0], wire_bytes_added=1)
    failed = sent_study(make_order, images=1)
    StudyDelivery.objects.filter(study=failed).update(state=StudyDelivery.State.FAILED)
    delivered = sent_study(make_order, images=1)
    assert progress.apply_verification(delivery_of(delivered), confirmed=checksums(delivered))
    empty = make_study(make_order())
    request_forwarding(study=empty, destination="regional", requested_by=None)  # 0 of 0: nothing to confirm
    sent_study(make_order, images=1, destination="teaching")

    found = progress.deliveries_to_verify(destination="regional", limit=10)
    first_only = progress.deliveries_to_verify(destination="regional", limit=1)

    assert [delivery.study_id for delivery in found] == [ready.pk, also_ready.pk]
    assert [delivery.study_id for delivery in first_only] == [ready.pk]
    assert found[0].study.study_uid == ready.study_uid  # the study came with it


def test_sent_checksums_are_those_of_the_sent_images_only(clock: Clock, make_order: MakeOrder) -> None:
    study = queued_study(make_order, images=3)
    first, _second, third = tasks_of(study)
    progress.mark_sent(first, wire_bytes_added=1)
    progress.mark_sent(third, wire_bytes_added=1)

    assert progress.sent_checksums(delivery_of(study)) == {
        image.image_uid: image.checksum for image in (first.image, third.image)
    }


def test_every_image_confirmed_is_delivered(clock: Clock, make_order: MakeOrder) -> None:
    study = sent_study(make_order, images=2)
    sent_before = [task_row(task) for task in tasks_of(study)]
    clock.move(30)
    confirmed = {**checksums(study), "1.2.3.999": "0" * 64}  # the far side's other images do not matter

    assert progress.apply_verification(delivery_of(study), confirmed=confirmed) is True

    assert delivery_row(delivery_of(study)) == {
        "state": "delivered",
        "images_sent": 2,
        "images_total": 2,
        "delivered_at": NOW + dt.timedelta(seconds=30),
        "error_code": "",
        "error_detail": "",
        "summary": "delivered",
    }
    assert [task_row(task) for task in tasks_of(study)] == sent_before
    assert progress.deliveries_to_verify(destination="regional", limit=10) == []
    # Asked again (a second forwarder): still delivered, nothing moves.
    assert progress.apply_verification(delivery_of(study), confirmed=confirmed) is False
    assert delivery_row(delivery_of(study))["delivered_at"] == NOW + dt.timedelta(seconds=30)


def test_a_missing_or_different_image_is_sent_again_as_a_new_upload(clock: Clock, make_order: MakeOrder) -> None:
    study = sent_study(make_order, images=3)
    missing, different, fine = tasks_of(study)
    ForwardTask.objects.filter(pk__in=[missing.pk, different.pk]).update(remote_upload_id=77, resends=1)
    clock.move(60)
    confirmed = {different.image.image_uid: "f" * 64, fine.image.image_uid: fine.image.checksum}

    assert progress.apply_verification(delivery_of(study), confirmed=confirmed) is False

    again = {
        "state": "pending",
        "attempts": 0,
        "next_attempt_at": NOW + dt.timedelta(seconds=60),
        "lease_until": None,
        "remote_upload_id": None,
        "resends": 2,
        "wire_bytes": 100,
        "sent_at": None,
        "error_code": "not_confirmed",
        "error_detail": "The far side did not confirm this image's checksum; sending it again.",
        "error_at": NOW + dt.timedelta(seconds=60),
    }
    assert task_row(missing) == again
    assert task_row(different) == again
    assert task_row(fine)["state"] == "sent"
    assert task_row(fine)["sent_at"] == NOW
    assert delivery_row(delivery_of(study)) == {
        "state": "sending",
        "images_sent": 1,
        "images_total": 3,
        "delivered_at": None,
        "error_code": "",
        "error_detail": "",
        "summary": "sending 1 of 3",
    }
    assert [task.pk for task in progress.claim_due(destination="regional", limit=5, lease_seconds=LEASE)] == [
        missing.pk,
        different.pk,
    ]


def test_an_image_discarded_there_fails_the_study_instead_of_being_sent_again(
    clock: Clock, make_order: MakeOrder
) -> None:
    study = sent_study(make_order, images=2)
    discarded, fine = tasks_of(study)
    clock.move(60)

    delivered = progress.apply_verification(
        delivery_of(study),
        confirmed={fine.image.image_uid: fine.image.checksum},
        discarded={discarded.image.image_uid},
    )

    assert delivered is False
    assert task_row(discarded) == {
        "state": "failed",
        "attempts": 0,
        "next_attempt_at": task_row(discarded)["next_attempt_at"],  # untouched: a failed task is not due
        "lease_until": None,
        "remote_upload_id": None,
        "resends": 1,
        "wire_bytes": 100,
        "sent_at": None,
        "error_code": "discarded_at_destination",
        "error_detail": "A tech at the destination discarded this image from its unmatched inbox.",
        "error_at": NOW + dt.timedelta(seconds=60),
    }
    assert delivery_row(delivery_of(study)) == {
        "state": "failed",
        "images_sent": 1,
        "images_total": 2,
        "delivered_at": None,
        "error_code": "discarded_at_destination",
        "error_detail": "A tech at the destination discarded this image from its unmatched inbox.",
        "summary": "failed: A tech at the destination discarded this image from its unmatched inbox.",
    }
    assert progress.claim_due(destination="regional", limit=5, lease_seconds=LEASE) == []
