"""Remove the files that ingests killed mid-way (SIGKILL, out of memory, power cut) left without their rows."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.radiology.pacs_lite_service import PACSLiteService


class Command(BaseCommand):
    help = (
        "Remove stored files no image row references and ingest spool files, untouched for "
        "--older-than-minutes (left by ingests killed between writing the file and committing its rows)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than-minutes",
            type=float,
            default=60.0,
            help="only files untouched this long: younger ones may belong to an ingest under way (default 60)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        removed = PACSLiteService.purge_interrupted_ingests(
            older_than=dt.timedelta(minutes=options["older_than_minutes"])
        )
        for key in removed:
            self.stdout.write(f"Removed {key}")
        self.stdout.write(f"Removed {len(removed)} file(s) left by interrupted ingests.")
