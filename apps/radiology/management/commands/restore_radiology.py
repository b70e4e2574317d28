"""`manage.py restore_radiology SRC`: a backup onto an empty install, every object re-checked.

SRC is what backup_radiology wrote to (a directory or s3://bucket/prefix). The database
(DATABASE_URL) must be new or freshly migrated and the configured store empty: a restore never
merges into a live install. Prints a summary; exits non-zero on any problem.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.radiology.management.commands.backup_radiology import add_s3_arguments, s3_settings
from apps.radiology.management.progress import progress_bar
from apps.radiology.operations.backup import BackupError, choose_snapshot, open_destination, run_restore


class Command(BaseCommand):
    help = (
        "Restore a backup made by backup_radiology from SRC (a directory or s3://bucket/prefix) onto an empty "
        "install (new database, empty store), then re-check every object's SHA-256 and print a summary."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("src", help="where backup_radiology wrote: a directory or s3://bucket/prefix")
        parser.add_argument("--snapshot", help="which snapshot (a name under SRC/snapshots/; default: the newest)")
        add_s3_arguments(parser)
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            source = open_destination(options["src"], s3_settings(options))
            snapshot = choose_snapshot(source, options["snapshot"])
            self.stdout.write(f"Restoring snapshot {snapshot} from {source.description}")
            report = run_restore(
                source,
                snapshot,
                progress_factory=lambda total: progress_bar(
                    self.stderr, total=total, unit="B", unit_scale=True, disable=options["no_progress"]
                ),
            )
        except BackupError as exc:
            raise CommandError(f"restore refused: {exc}") from exc
        for problem in report.problems:
            self.stdout.write(f"PROBLEM {problem}")
        self.stdout.write(
            f"Restored {report.vendor} database of snapshot {report.snapshot}: {report.images} images, "
            f"{report.unmatched_waiting} unmatched files waiting; {report.objects} objects ({report.bytes} bytes), "
            f"{report.verified} re-checked by SHA-256, {len(report.problems)} problem(s)."
        )
        if report.unmatched_marked_discarded:
            self.stdout.write(f"{report.unmatched_marked_discarded} unmatched file(s) discarded during the backup.")
        if report.uploads_restarted:
            self.stdout.write(f"{report.uploads_restarted} upload(s) in progress restart from byte 0.")
        if report.problems:
            raise CommandError(f"restore of {report.snapshot} has {len(report.problems)} problem(s)")
