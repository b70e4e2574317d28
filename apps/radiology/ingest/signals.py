"""What ingest tells the read paths once new images have committed.

A Django signal, because the read paths sit above ingest (pyproject.toml's layers): ingest
cannot call them, they listen. Sent after the transaction that created the rows has committed
(never for rows that were rolled back), from whichever process stored them: a web worker
(upload, STOW-RS), the DICOM listener or a bulk import.

images_committed: `series_ids`, the set of series that gained images.
Listened to by dicomweb/metadata_warming.py (a big series' metadata built once it stops growing).
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.dispatch import Signal

images_committed = Signal()


def announce_after_commit(series_ids: Iterable[int]) -> None:
    """Send images_committed once the current transaction commits (at once outside one)."""
    ids = frozenset(series_ids)
    if ids:
        transaction.on_commit(lambda: images_committed.send(sender=None, series_ids=ids))
