"""Drop the staged chunks of partial uploads nobody has touched for a while, and any left under finished ones."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from apps.radiology.ingest.upload_sync import purge_finished_upload_chunks, purge_stale_uploads


class Command(BaseCommand):
    help = (
        "Purge staged chunks of pending uploads idle longer than --older-than-hours (they restart from byte 0), "
        "and staged chunks left under completed or failed uploads by a server killed as it finished them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than-hours",
            type=float,
            default=settings.RADIOLOGY_UPLOAD_STALE_HOURS,
            help="idle age in hours (default RADIOLOGY_UPLOAD_STALE_HOURS)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count = purge_stale_uploads(older_than=dt.timedelta(hours=options["older_than_hours"]))
        self.stdout.write(f"Purged {count} stale partial upload(s).")
        finished = purge_finished_upload_chunks()
        self.stdout.write(f"Removed staged chunks left under {finished} finished upload(s).")
