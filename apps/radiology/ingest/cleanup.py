"""Clearing up after ingests that were killed: stored files without rows, and their spool files.

Also the files of unmatched rows a tech has decided on, should their removal have failed.

commit.py removes the files of a transaction that failed; a process killed between writing a
file and committing its row (SIGKILL, out of memory, a power cut) cannot. This finds such
files later (run by the `purge_interrupted_ingests` management command) and removes them once
they are older than any ingest still under way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from apps.radiology import storage
from apps.radiology.ingest.spool import SPOOL_PREFIX
from apps.radiology.models import RadiologyImage, UnmatchedImage

logger = logging.getLogger(__name__)


def purge_interrupted_ingests(*, older_than: dt.timedelta) -> list[str]:
    """Remove the files killed ingests left without their rows, and their spool files; return the keys removed.

    Only what is untouched for `older_than` goes: a younger file may belong to an ingest
    still under way whose rows are about to commit. Each key is looked up again just
    before its file is deleted.
    """
    cutoff = timezone.now() - older_than
    removed: list[str] = []
    # An image's file is kept while its row exists; an unmatched file while it waits for a tech
    # (once assigned or discarded, its file is removed after the decision commits: unmatched.py).
    kept_by = {
        storage.KEY_PREFIX: RadiologyImage.objects.all(),
        storage.UNMATCHED_PREFIX: UnmatchedImage.objects.filter(status=UnmatchedImage.Status.PENDING),
    }
    for prefix, rows in kept_by.items():
        keys = storage.iter_keys(f"{prefix}/")
        while batch := list(itertools.islice(keys, 500)):
            referenced = set(rows.filter(file_key__in=batch).values_list("file_key", flat=True))
            for key in batch:
                if key in referenced:
                    continue
                modified = storage.object_modified_time(key)
                if modified is None or modified > cutoff or rows.filter(file_key=key).exists():
                    continue
                storage.delete_object(key)
                logger.warning("removed %s: written by an ingest that never committed its rows", key)
                removed.append(key)
    staging = Path(settings.RADIOLOGY_STAGING_DIR)
    for spool in staging.glob(f"{SPOOL_PREFIX}*") if staging.exists() else ():
        with contextlib.suppress(FileNotFoundError):
            if dt.datetime.fromtimestamp(spool.stat().st_mtime, tz=dt.UTC) <= cutoff:
                spool.unlink()
    return removed
