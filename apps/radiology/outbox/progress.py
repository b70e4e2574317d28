"""The forwarder's side of the outbox: claim due tasks, record how each attempt ended, verify studies.

Every change to a task that moves a study's counters happens in one transaction with it, and
every change is conditional on the state it expects (a task already sent is never counted
twice, whichever forwarder or retry got there first).

Claiming: a small outbox table with leases, not a job library. The task row must be written
in the image's own ingest transaction on SQLite (`make run`) as well as PostgreSQL, carry the
far side's upload id across restarts so a resend resumes instead of restarting, and add up to
a per-study "sending n of m"; django-tasks' database backend or Procrastinate (PostgreSQL only)
would keep a second record of the same thing. On PostgreSQL two forwarders claim with
`SELECT ... FOR UPDATE SKIP LOCKED`; SQLite has one writer at a time, so its claim is plain.
A lease, rather than a lock held while sending, is what lets a killed forwarder's tasks come
back on their own (after RADIOLOGY_FORWARD_LEASE_SECONDS).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Collection

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.radiology.models import ForwardTask, StudyDelivery

_SYSTEM_RANDOM = random.SystemRandom()
# The codes the outbox itself records on a task (beside the far side's and the link's).
NOT_CONFIRMED = "not_confirmed"
DISCARDED_THERE = "discarded_at_destination"
DISCARDED_THERE_DETAIL = "A tech at the destination discarded this image from its unmatched inbox."


def claim_due(*, destination: str, limit: int, lease_seconds: int) -> list[ForwardTask]:
    """Lease up to `limit` due pending tasks of `destination`, oldest first (with their image, study and order)."""
    now = timezone.now()
    with transaction.atomic():
        due = (
            ForwardTask.objects.filter(
                destination=destination, state=ForwardTask.State.PENDING, next_attempt_at__lte=now
            )
            .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
            .order_by("next_attempt_at", "id")
        )
        if connection.features.has_select_for_update_skip_locked:
            due = due.select_for_update(skip_locked=True, of=("self",))
        ids = list(due.values_list("pk", flat=True)[:limit])
        if not ids:
            return []
        ForwardTask.objects.filter(pk__in=ids).update(
            lease_until=now + dt.timedelta(seconds=lease_seconds), updated_at=now
        )
    return list(
        ForwardTask.objects.select_related("image__series__study__radiology_order")
        .filter(pk__in=ids)
        .order_by("next_attempt_at", "id")
    )


def save_progress(
    task: ForwardTask, *, remote_upload_id: int | None, wire_bytes_added: int, lease_seconds: int
) -> None:
    """Remember the far side's upload id and the bytes sent so far; renew the lease."""
    now = timezone.now()
    task.remote_upload_id = remote_upload_id
    ForwardTask.objects.filter(pk=task.pk).update(
        remote_upload_id=remote_upload_id,
        wire_bytes=F("wire_bytes") + wire_bytes_added,
        lease_until=now + dt.timedelta(seconds=lease_seconds),
        updated_at=now,
    )


def mark_sent(task: ForwardTask, *, wire_bytes_added: int) -> None:
    """The far side completed the upload (stored or held): count it toward the study's delivery."""
    now = timezone.now()
    with transaction.atomic():
        moved = ForwardTask.objects.filter(pk=task.pk, state=ForwardTask.State.PENDING).update(
            state=ForwardTask.State.SENT,
            sent_at=now,
            lease_until=None,
            attempts=0,
            wire_bytes=F("wire_bytes") + wire_bytes_added,
            updated_at=now,
        )
        if moved:
            StudyDelivery.objects.filter(study_id=task.study_id, destination=task.destination).update(
                images_sent=F("images_sent") + 1, updated_at=now
            )
    task.state = ForwardTask.State.SENT


def mark_retry(
    task: ForwardTask, *, error_code: str, error_detail: str, wire_bytes_added: int, delay_seconds: float
) -> None:
    """A transient failure (the link, the far side busy or full): try again after `delay_seconds`."""
    now = timezone.now()
    ForwardTask.objects.filter(pk=task.pk, state=ForwardTask.State.PENDING).update(
        attempts=F("attempts") + 1,
        next_attempt_at=now + dt.timedelta(seconds=delay_seconds),
        lease_until=None,
        wire_bytes=F("wire_bytes") + wire_bytes_added,
        error_code=error_code[:64],
        error_detail=error_detail[:255],
        error_at=now,
        updated_at=now,
    )


def mark_failed(task: ForwardTask, *, error_code: str, error_detail: str, wire_bytes_added: int) -> None:
    """Refused for good (a conflict, an auth failure, the file refused): the study shows why until a tech retries."""
    now = timezone.now()
    with transaction.atomic():
        moved = ForwardTask.objects.filter(pk=task.pk, state=ForwardTask.State.PENDING).update(
            state=ForwardTask.State.FAILED,
            lease_until=None,
            wire_bytes=F("wire_bytes") + wire_bytes_added,
            error_code=error_code[:64],
            error_detail=error_detail[:255],
            error_at=now,
            updated_at=now,
        )
        if moved:
            StudyDelivery.objects.filter(study_id=task.study_id, destination=task.destination).update(
                state=StudyDelivery.State.FAILED,
                error_code=error_code[:64],
                error_detail=error_detail[:255],
                updated_at=now,
            )
    task.state = ForwardTask.State.FAILED


def backoff_seconds(attempts: int, *, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: base x 2^attempts, capped, times a random 0.5-1.0.

    The jitter keeps clinics whose links came back at the same moment from retrying in step.
    """
    base = settings.RADIOLOGY_FORWARD_BACKOFF_SECONDS
    ceiling = settings.RADIOLOGY_FORWARD_BACKOFF_MAX_SECONDS
    delay = min(ceiling, base * 2 ** min(attempts, 32))
    return delay * (rng or _SYSTEM_RANDOM).uniform(0.5, 1.0)


def deliveries_to_verify(*, destination: str, limit: int) -> list[StudyDelivery]:
    """Sending deliveries of `destination` whose every image is sent: the far side is asked to confirm them."""
    return list(
        StudyDelivery.objects.select_related("study")
        .filter(
            destination=destination,
            state=StudyDelivery.State.SENDING,
            images_total__gt=0,
            images_sent=F("images_total"),
        )
        .order_by("updated_at", "id")[:limit]
    )


def sent_checksums(delivery: StudyDelivery) -> dict[str, str]:
    """image_uid -> checksum of the delivery's sent images."""
    return dict(
        ForwardTask.objects.filter(
            study_id=delivery.study_id, destination=delivery.destination, state=ForwardTask.State.SENT
        ).values_list("image__image_uid", "image__checksum")
    )


def apply_verification(delivery: StudyDelivery, *, confirmed: dict[str, str], discarded: Collection[str] = ()) -> bool:
    """Record the far side's answer for the study: delivered (True), or not yet (False).

    `confirmed` maps each image UID the far side holds for this clinic (stored or held) to its
    checksum there. An image missing or with another checksum is sent again as a new upload
    (resends + 1). An image a tech there discarded from the unmatched inbox is not: sending it
    again would only put it back before them. Its task fails, and with it the study, saying so,
    until a tech here decides (a retry sends it again).
    """
    now = timezone.now()
    sent = ForwardTask.objects.filter(
        study_id=delivery.study_id, destination=delivery.destination, state=ForwardTask.State.SENT
    ).values_list("pk", "image__image_uid", "image__checksum")
    unconfirmed = [(pk, image_uid) for pk, image_uid, checksum in sent if confirmed.get(image_uid) != checksum]
    thrown_away = [pk for pk, image_uid in unconfirmed if image_uid in discarded]
    missing = [pk for pk, image_uid in unconfirmed if image_uid not in discarded]
    with transaction.atomic():
        if thrown_away:
            moved = ForwardTask.objects.filter(pk__in=thrown_away, state=ForwardTask.State.SENT).update(
                state=ForwardTask.State.FAILED,
                resends=F("resends") + 1,
                remote_upload_id=None,
                sent_at=None,
                error_code=DISCARDED_THERE,
                error_detail=DISCARDED_THERE_DETAIL,
                error_at=now,
                updated_at=now,
            )
            StudyDelivery.objects.filter(pk=delivery.pk).update(
                images_sent=F("images_sent") - moved,
                state=StudyDelivery.State.FAILED,
                error_code=DISCARDED_THERE,
                error_detail=DISCARDED_THERE_DETAIL,
                updated_at=now,
            )
        if missing:
            moved = ForwardTask.objects.filter(pk__in=missing, state=ForwardTask.State.SENT).update(
                state=ForwardTask.State.PENDING,
                resends=F("resends") + 1,
                remote_upload_id=None,
                next_attempt_at=now,
                sent_at=None,
                error_code=NOT_CONFIRMED,
                error_detail="The far side did not confirm this image's checksum; sending it again.",
                error_at=now,
                updated_at=now,
            )
            StudyDelivery.objects.filter(pk=delivery.pk).update(images_sent=F("images_sent") - moved, updated_at=now)
        if unconfirmed:
            return False
        delivered = StudyDelivery.objects.filter(
            pk=delivery.pk, state=StudyDelivery.State.SENDING, images_sent=F("images_total")
        ).update(state=StudyDelivery.State.DELIVERED, delivered_at=now, error_code="", error_detail="", updated_at=now)
    return bool(delivered)
