"""Archive old audit events: write them to a CSV file, then remove exactly those rows.

The one sanctioned way to delete audit events (the database refuses every other DELETE,
db_triggers.py). The file is written and flushed to disk first; only the rows it holds
(events before --before, up to the last id written) are then deleted, in one transaction
holding a one-off permit that no other connection sees; if the count deleted is not the
count written, the delete is rolled back and the file removed. The archive leaves an event.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.utils import timezone

from apps.radiology.access import audit
from apps.radiology.db_triggers import AUDIT_TABLE, audit_delete_permit, datetime_parameter
from apps.radiology.management.commands.export_radiology_audit import audit_rows, parse_day
from apps.radiology.models import AuditEvent


class Command(BaseCommand):
    help = (
        "Move audit events from before --before (a day, server time zone) into a new CSV file "
        "(the export's columns) and delete them from the database."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--before", required=True, type=parse_day, help="archive events before this day (YYYY-MM-DD)"
        )
        parser.add_argument("--output", required=True, help="CSV file to create (must not exist)")

    def handle(self, *args: Any, **options: Any) -> None:
        zone = timezone.get_current_timezone()
        cutoff = dt.datetime.combine(options["before"], dt.time.min, tzinfo=zone)
        if cutoff > timezone.now():
            raise CommandError("--before is in the future: only past days can be archived")
        output = options["output"]
        events = AuditEvent.objects.filter(at__lt=cutoff).order_by("id")
        last_id = events.order_by("-id").values_list("id", flat=True).first()
        if last_id is None:
            self.stderr.write("No audit events before that day; nothing archived.")
            return
        written = self._write(output, events.filter(id__lte=last_id), zone)
        try:
            with audit_delete_permit(before=cutoff), connection.cursor() as cursor:
                # The cutoff as the database stores datetimes. SQLite compares text: an aware
                # cutoff's text ("2026-02-01 00:00:00-05:00") does not sort with the stored UTC
                # text ("2026-02-01 03:00:00"), and evening events west of UTC would not match.
                cursor.execute(
                    f"DELETE FROM {AUDIT_TABLE} WHERE at < %s AND id <= %s",  # noqa: S608 (a constant)
                    [datetime_parameter(cutoff), last_id],
                )
                deleted = cursor.rowcount
                if deleted != written:  # the file must hold every row removed: roll the delete back
                    raise CommandError(f"wrote {written} events but {deleted} matched; nothing deleted")
        except BaseException:
            # Nothing was deleted: a file next to a trail that still holds its rows would be
            # archived twice by the next run (and mistaken for the archive of this one).
            os.remove(output)
            raise
        audit.record(
            user=None,
            channel="maintenance",
            action="delete",
            route="archive_radiology_audit",
            method="CLI",
            status_code=200,
            query_keys="before,output",
        )
        self.stderr.write(f"Archived {written} audit events to {output}")

    @staticmethod
    def _write(output: str, events: Any, zone: Any) -> int:
        try:
            handle = open(output, "x", newline="", encoding="utf-8")  # noqa: SIM115 (closed below)
        except FileExistsError:
            raise CommandError(f"{output} exists; choose a new file") from None
        try:
            with handle:
                writer = csv.writer(handle)
                count = -1  # the header row is not an event
                for row in audit_rows(events, zone):
                    writer.writerow(row)
                    count += 1
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            os.remove(output)  # never a partial archive
            raise
        return count
