"""`manage.py backup_radiology DEST`: a consistent, incremental backup for cron.

DEST is a directory (a USB disk, a NAS mount) or `s3://bucket/prefix` (S3 or MinIO). Each run
writes a database snapshot and a manifest under DEST/snapshots/<UTC time>/ and copies the
stored objects DEST lacks into DEST/objects/ (shared by every run): what, why and how is in
apps/radiology/operations/backup.py. Exits non-zero on any failure, so cron mails it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.radiology.management.progress import progress_bar
from apps.radiology.operations.backup import BackupError, S3Settings, open_destination, run_backup


class Command(BaseCommand):
    help = (
        "Back up the database (a consistent snapshot) and every stored radiology object to DEST, a directory "
        "or s3://bucket/prefix. Incremental: objects already in DEST are not copied again. Safe while images "
        "arrive. Exits non-zero on any failure."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dest", help="a directory (e.g. a mounted USB disk) or s3://bucket/prefix")
        add_s3_arguments(parser)
        parser.add_argument("--no-progress", action="store_true", help="no progress bar (cron)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            destination = open_destination(options["dest"], s3_settings(options))
            report = run_backup(
                destination,
                progress_factory=lambda total: progress_bar(
                    self.stderr, total=total, unit="B", unit_scale=True, disable=options["no_progress"]
                ),
            )
        except BackupError as exc:
            raise CommandError(f"backup failed: {exc}") from exc
        for warning in report.warnings:
            self.stdout.write(f"WARNING {warning}")
        for problem in report.problems:
            self.stdout.write(f"FAILED {problem}")
        if report.problems:
            raise CommandError(
                f"backup {report.snapshot} to {destination.description} is incomplete: {len(report.problems)} "
                f"object(s) could not be copied (no manifest written; the objects copied are kept for the next run)"
            )
        self.stdout.write(
            f"Backup {report.snapshot} to {destination.description}: {report.objects} objects "
            f"({report.bytes} bytes); copied {report.copied} ({report.copied_bytes} bytes), "
            f"{report.already_there} already there."
        )


def add_s3_arguments(parser: CommandParser) -> None:
    """Where an s3:// location is; credentials only from the environment (a command line is visible in ps)."""
    parser.add_argument(
        "--s3-endpoint-url",
        default=settings.PACS_BACKUP_S3_ENDPOINT_URL,
        help="S3/MinIO endpoint of an s3:// location (default: PACS_BACKUP_S3_ENDPOINT_URL, else the store's)",
    )
    parser.add_argument(
        "--s3-region",
        default=settings.PACS_BACKUP_S3_REGION,
        help="region of an s3:// location (default: PACS_BACKUP_S3_REGION, else the store's)",
    )


def s3_settings(options: dict[str, Any]) -> S3Settings:
    """PACS_BACKUP_S3_ACCESS_KEY_ID / PACS_BACKUP_S3_SECRET_ACCESS_KEY, else the image store's own."""
    return S3Settings(
        endpoint_url=options["s3_endpoint_url"] or None,
        access_key=settings.PACS_BACKUP_S3_ACCESS_KEY_ID or None,
        secret_key=settings.PACS_BACKUP_S3_SECRET_ACCESS_KEY or None,
        region=options["s3_region"] or None,
    )
