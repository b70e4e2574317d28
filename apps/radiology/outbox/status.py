"""How forwarding stands: the whole queue of each destination (manage.py forward_status, /healthz).

One study's delivery in words is StudyDelivery.summary."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Min
from django.utils import timezone

from apps.radiology.models import ForwardTask


@dataclass(frozen=True)
class DestinationStatus:
    """The queue of one destination."""

    destination: str
    pending: int
    failed: int
    oldest_pending_at: dt.datetime | None
    last_success_at: dt.datetime | None
    last_error_at: dt.datetime | None
    last_error_code: str

    def as_json(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "pending": self.pending,
            "failed": self.failed,
            "oldest_pending_seconds": int((now - self.oldest_pending_at).total_seconds())
            if self.oldest_pending_at
            else None,
            "last_success": self.last_success_at.isoformat() if self.last_success_at else None,
            "last_error": {"at": self.last_error_at.isoformat(), "code": self.last_error_code}
            if self.last_error_at
            else None,
        }


def queue_status(destinations: list[str]) -> list[DestinationStatus]:
    """Each destination's queue, oldest pending task, last success and last error (1 + 2 queries per destination).

    Destinations no longer configured but with tasks left are listed too: their images are waiting.
    """
    pending_and_failed = {
        (row["destination"], row["state"]): row
        for row in ForwardTask.objects.filter(state__in=[ForwardTask.State.PENDING, ForwardTask.State.FAILED])
        .values("destination", "state")
        .annotate(count=Count("id"), oldest=Min("created_at"))
        .order_by()
    }
    names = sorted(set(destinations) | {destination for destination, _ in pending_and_failed})
    statuses = []
    for name in names:
        pending = pending_and_failed.get((name, ForwardTask.State.PENDING), {})
        failed = pending_and_failed.get((name, ForwardTask.State.FAILED), {})
        # Index-only lookups (rad_forward_sent, rad_forward_error), however many tasks there are.
        last_success = (
            ForwardTask.objects.filter(destination=name, sent_at__isnull=False)
            .order_by("-sent_at")
            .values_list("sent_at", flat=True)
            .first()
        )
        error = (
            ForwardTask.objects.filter(destination=name, error_at__isnull=False)
            .order_by("-error_at")
            .values_list("error_at", "error_code")
            .first()
        )
        statuses.append(
            DestinationStatus(
                destination=name,
                pending=pending.get("count", 0),
                failed=failed.get("count", 0),
                oldest_pending_at=pending.get("oldest"),
                last_success_at=last_success,
                last_error_at=error[0] if error else None,
                last_error_code=error[1] if error else "",
            )
        )
    return statuses


def queue_status_json(destinations: list[str]) -> list[dict[str, Any]]:
    now = timezone.now()
    return [status.as_json(now) for status in queue_status(destinations)]
