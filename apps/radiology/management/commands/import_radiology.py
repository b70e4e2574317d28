"""Import a folder, zip or CD/USB export of DICOM files through the one ingest path."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.radiology.dicomweb.metadata_warming import build_noted_now
from apps.radiology.errors import RadiologyError
from apps.radiology.ingest.bulk_import import ImportReport, count_items, import_item, iter_source
from apps.radiology.ingest.identity import confirmation_of
from apps.radiology.management.progress import progress_bar
from apps.radiology.models import RadiologyOrder


class Command(BaseCommand):
    help = (
        "Import every DICOM file under PATH (folder, .zip, or CD/USB export with DICOMDIR) into --order, "
        "or into the order matching each file's AccessionNumber (--by-accession; a file no order matches is "
        "held in the unmatched inbox for a tech to assign in admin). Files already stored (same image UID and "
        "checksum) are skipped; exits non-zero if any file failed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path)
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--order", type=int, help="radiology order id that receives every file")
        target.add_argument(
            "--by-accession", action="store_true", help="match each file to the order with its AccessionNumber"
        )
        parser.add_argument("--user", help="username recorded as uploader (default: none)")
        parser.add_argument(
            "--confirm-patient-mismatch",
            metavar="REASON",
            help="store files whose PatientID is another patient's hospital number under --order anyway, for "
            "this reason (audited; needs --user). Without it such files fail with patient_mismatch.",
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["path"]
        if not path.exists():
            raise CommandError(f"{path} does not exist")
        order = None
        if options["order"] is not None:
            order = RadiologyOrder.objects.filter(pk=options["order"]).first()
            if order is None:
                raise CommandError(f"No radiology order {options['order']}")
        uploaded_by = None
        if options["user"]:
            uploaded_by = get_user_model().objects.filter(username=options["user"]).first()
            if uploaded_by is None:
                raise CommandError(f"No user {options['user']}")

        confirmation = None
        if options["confirm_patient_mismatch"] is not None:
            if uploaded_by is None:
                raise CommandError("--confirm-patient-mismatch needs --user: the tech who confirms")
            try:
                confirmation = confirmation_of("true", options["confirm_patient_mismatch"], channel="import")
            except RadiologyError as error:
                raise CommandError(error.detail) from None

        report = ImportReport()
        started = time.monotonic()
        with progress_bar(
            self.stderr, total=count_items(path), unit="file", disable=options["no_progress"]
        ) as progress:
            for item in iter_source(path):
                import_item(item, order=order, uploaded_by=uploaded_by, report=report, confirmation=confirmation)
                elapsed = max(time.monotonic() - started, 1e-6)
                progress.set_postfix_str(f"{report.bytes_read / elapsed / 1e6:.1f} MB/s", refresh=False)
                progress.update(1)
        # Big series this import stored, built ahead now: this process ends before they would be quiet.
        build_noted_now()
        elapsed = max(time.monotonic() - started, 1e-6)
        self.stdout.write(
            f"Stored {report.stored}, held {report.held} unmatched, skipped {report.skipped} already stored, "
            f"ignored {report.ignored} non-DICOM, "
            f"failed {len(report.failures)}; {report.bytes_read / 1e6:.1f} MB in {elapsed:.1f} s "
            f"({(report.stored + report.skipped) / elapsed:.1f} files/s, {report.bytes_read / elapsed / 1e6:.1f} MB/s)"
        )
        for name, reason in report.failures:
            self.stdout.write(f"FAILED {name}: {reason}")
        if report.failures:
            raise CommandError(f"{len(report.failures)} file(s) failed to import")
