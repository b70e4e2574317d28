"""Export the audit trail between two dates as CSV."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
from collections.abc import Iterator
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from apps.radiology.models import AuditEvent

COLUMNS = [
    "at",
    "username",
    "role",
    "viewer_token_id",
    "channel",
    "action",
    "method",
    "route",
    "order_id",
    "study_id",
    "image_id",
    "upload_id",
    "study_uid",
    "series_uid",
    "image_uid",
    "query_keys",
    "unmatched_id",
    "reason",
    "client_address",
    "status_code",
    "outcome",
]


def parse_day(value: str) -> dt.date:
    """A YYYY-MM-DD command-line argument (for argparse's type=)."""
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        # ArgumentTypeError: argparse reports it as a usage error (exit 2), not a traceback.
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


class Command(BaseCommand):
    help = "Write audit events from --since to --until (inclusive days, server time zone) as CSV."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", required=True, type=parse_day)
        parser.add_argument("--until", required=True, type=parse_day)
        parser.add_argument("--output", help="file to write (default: standard output)")

    def handle(self, *args: Any, **options: Any) -> None:
        since, until = options["since"], options["until"]
        if until < since:
            raise CommandError("--until is before --since")
        zone = timezone.get_current_timezone()
        start = dt.datetime.combine(since, dt.time.min, tzinfo=zone)
        end = dt.datetime.combine(until + dt.timedelta(days=1), dt.time.min, tzinfo=zone)
        events = AuditEvent.objects.filter(at__gte=start, at__lt=end).order_by("at", "id")
        rows = audit_rows(events, zone)
        if options["output"]:
            with open(options["output"], "w", newline="", encoding="utf-8") as handle:
                count = sum(1 for _ in map(csv.writer(handle).writerow, rows)) - 1
            self.stderr.write(f"Wrote {count} audit events to {options['output']}")
            return
        line = io.StringIO()
        writer = csv.writer(line)
        for row in rows:  # one line at a time: an export of months never sits in memory
            line.seek(0)
            line.truncate()
            writer.writerow(row)
            self.stdout.write(line.getvalue(), ending="")


def audit_rows(events: Any, zone: Any) -> Iterator[list[Any]]:
    """The CSV rows of these events, the header (COLUMNS) first; `at` in this time zone."""
    yield COLUMNS
    for event in events.iterator():
        row = [getattr(event, column) for column in COLUMNS]
        row[0] = event.at.astimezone(zone).isoformat()
        yield ["" if value is None else value for value in row]
