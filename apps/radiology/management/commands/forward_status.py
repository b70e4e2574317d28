"""How store and forward stands: each destination's queue, and the studies not yet delivered.

For the IT person on the clinic's server: is anything waiting, for how long, what went wrong
last, and which studies need a tech (failed) or are still on their way. `--json` prints what
/healthz's `forwarding` member shows, for scripts.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from apps.radiology.models import StudyDelivery
from apps.radiology.outbox.destinations import configured_destinations
from apps.radiology.outbox.status import queue_status_json

STUDIES_LISTED = 20


class Command(BaseCommand):
    help = "Show the forwarding queue of each destination and the studies not yet delivered."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the queues as JSON (as /healthz does)")

    def handle(self, *args: Any, **options: Any) -> None:
        destinations = configured_destinations()
        queues = queue_status_json([destination.name for destination in destinations])
        if options["json"]:
            self.stdout.write(json.dumps(queues, indent=2))
            return
        if not destinations:
            self.stdout.write("No forwarding destination is configured (RADIOLOGY_FORWARD_DESTINATIONS).")
        for destination in destinations:
            self.stdout.write(f"{destination.name}: {destination.url} (rule: {destination.rule_text})")
        for queue in queues:
            error = queue["last_error"]
            last_error = f"{error['code']} at {error['at']}" if error else "none"
            self.stdout.write(
                f"{queue['destination']}: {queue['pending']} image(s) pending, {queue['failed']} failed; "
                f"oldest pending: {_age(queue['oldest_pending_seconds'])}; "
                f"last success: {queue['last_success'] or 'never'}; "
                f"last error: {last_error}"
            )
        open_deliveries = (
            StudyDelivery.objects.exclude(state=StudyDelivery.State.DELIVERED)
            .select_related("study")
            .order_by("state", "updated_at", "id")
        )
        total = open_deliveries.count()
        if not total:
            self.stdout.write("Every study is delivered.")
            return
        self.stdout.write(f"{total} stud{'y' if total == 1 else 'ies'} not yet delivered:")
        now = timezone.now()
        for delivery in open_deliveries[:STUDIES_LISTED]:
            waited = int((now - delivery.created_at).total_seconds())
            self.stdout.write(
                f"  study {delivery.study_id} ({delivery.study.study_uid}) to {delivery.destination}: "
                f"{delivery.summary}; since {_age(waited)}"
            )
        if total > STUDIES_LISTED:
            self.stdout.write(f"  ... and {total - STUDIES_LISTED} more (admin: Study deliveries)")


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "none"
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"
