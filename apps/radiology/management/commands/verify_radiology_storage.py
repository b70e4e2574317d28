"""Re-hash every stored image and look for missing, corrupt and orphaned objects.

Streams each object (never whole in memory), compares size and SHA-256 with its row (the
images', then the files waiting in the unmatched inbox), then lists the store for objects no
row references. Long runs can be interrupted and
resumed: the last verified image id and the problems so far are kept in a checkpoint
file. Exits non-zero when anything is wrong.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from apps.radiology import storage
from apps.radiology.errors import StorageFailure
from apps.radiology.ingest.upload_sync import staged_keys_of_finished_uploads
from apps.radiology.management.progress import progress_bar
from apps.radiology.models import RadiologyImage, UnmatchedImage


class Command(BaseCommand):
    help = "Verify every stored radiology file (size and SHA-256) and report missing, corrupt and orphaned objects."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--checkpoint",
            type=Path,
            default=None,
            help="checkpoint file (default var/verify-radiology-storage.json)",
        )
        parser.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        checkpoint: Path = options["checkpoint"] or settings.VAR_DIR / "verify-radiology-storage.json"
        state = {"last_id": 0, "verified": 0, "missing": [], "corrupt": []}
        if checkpoint.exists() and not options["restart"]:
            state = json.loads(checkpoint.read_text())
            self.stdout.write(f"Resuming after image id {state['last_id']} ({state['verified']} already verified)")
        images = RadiologyImage.objects.filter(pk__gt=state["last_id"]).order_by("pk")
        remaining = images.values_list("file_size", flat=True)
        try:
            with progress_bar(
                self.stderr, total=sum(remaining), unit="B", unit_scale=True, disable=options["no_progress"]
            ) as progress:
                for image in images.only("pk", "file_key", "file_size", "checksum").iterator():
                    problem = self._check(image, progress)
                    if problem:
                        state[problem].append({"id": image.pk, "file_key": image.file_key})
                    state["verified"] += 1
                    state["last_id"] = image.pk
                    if state["verified"] % 100 == 0:
                        self._save(checkpoint, state)
        finally:
            # Also when interrupted (Ctrl-C, a failing store): the images done so far are not redone.
            self._save(checkpoint, state)
        waiting = UnmatchedImage.objects.filter(status=UnmatchedImage.Status.PENDING).order_by("pk")
        unmatched_problems = []
        with tqdm(disable=True) as quiet:  # few files, and no checkpoint: verified whole each run
            for row in waiting.only("pk", "file_key", "file_size", "checksum").iterator():
                if problem := self._check(row, quiet):
                    unmatched_problems.append(f"{problem.upper()} unmatched file {row.pk}: {row.file_key}")
        orphans = self._orphans()
        for kind in ("missing", "corrupt"):
            for entry in state[kind]:
                self.stdout.write(f"{kind.upper()} image {entry['id']}: {entry['file_key']}")
        for line in unmatched_problems:
            self.stdout.write(line)
        for key in orphans:
            self.stdout.write(f"ORPHAN {key}")
        problems = len(state["missing"]) + len(state["corrupt"]) + len(orphans) + len(unmatched_problems)
        self.stdout.write(
            f"Verified {state['verified']} images: {len(state['missing'])} missing, "
            f"{len(state['corrupt'])} corrupt, {len(orphans)} orphaned objects; "
            f"{len(unmatched_problems)} problem(s) among unmatched files."
        )
        checkpoint.unlink(missing_ok=True)  # a complete run leaves nothing to resume
        if problems:
            raise CommandError(f"{problems} storage problem(s) found")

    def _check(self, image: RadiologyImage | UnmatchedImage, progress: tqdm) -> str | None:
        digest = hashlib.sha256()
        size = 0
        try:
            for chunk in storage.iter_object_chunks(image.file_key):
                digest.update(chunk)
                size += len(chunk)
                progress.update(len(chunk))
        except StorageFailure:
            progress.update(max(image.file_size - size, 0))
            return "missing"
        if size != image.file_size or digest.hexdigest() != image.checksum:
            progress.update(max(image.file_size - size, 0))
            return "corrupt"
        return None

    def _orphans(self) -> list[str]:
        """Objects in the store that no image row (or pending upload, or waiting unmatched file) accounts for."""
        orphans = []
        known = set(RadiologyImage.objects.values_list("file_key", flat=True))
        for key in storage.iter_keys(f"{storage.KEY_PREFIX}/"):
            if key not in known:
                orphans.append(key)
        waiting = set(
            UnmatchedImage.objects.filter(status=UnmatchedImage.Status.PENDING).values_list("file_key", flat=True)
        )
        orphans += [key for key in storage.iter_keys(f"{storage.UNMATCHED_PREFIX}/") if key not in waiting]
        orphans += [key for keys in staged_keys_of_finished_uploads().values() for key in keys]
        return orphans

    @staticmethod
    def _save(checkpoint: Path, state: dict[str, Any]) -> None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text(json.dumps(state))
