"""What ingest says of each file: stored as an image, or held as unmatched (or a RadiologyError)."""

from __future__ import annotations

from dataclasses import dataclass

from apps.radiology.models import RadiologyImage, UnmatchedImage


@dataclass(frozen=True)
class IngestResult:
    image: RadiologyImage
    created: bool


@dataclass(frozen=True)
class HeldResult:
    """A file with no order, waiting in the unmatched inbox; created=False: it already was."""

    unmatched: UnmatchedImage
    created: bool
