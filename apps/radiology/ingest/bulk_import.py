"""Bulk import of a folder, a zip, or a CD/USB export (DICOMDIR) through the one ingest path.

Only DICOM files are imported: a CD export also carries a viewer program, autorun files
and HTML, which are counted as ignored, not as failures. With a DICOMDIR, the files it
references are the import list; otherwise every file under the folder is looked at.

Matched by accession number, a file whose accession no order has (or that has none) is not
a failure: it is held in the unmatched inbox for a tech to assign (ingest/holding.py).

A disk short of space (storage/free_space.py) fails each file still to come with
insufficient_storage before any of its bytes is written; run the import again once space is
freed: the files already stored are skipped.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pydicom
from django.contrib.auth.models import AbstractBaseUser
from pydicom.fileset import FileSet

from apps.radiology.errors import RadiologyError
from apps.radiology.imagefiles import dicom
from apps.radiology.imagefiles.dicom import SNIFF_LENGTH
from apps.radiology.ingest import pipeline
from apps.radiology.ingest.identity import MismatchConfirmation
from apps.radiology.models import RadiologyOrder
from apps.radiology.storage import free_space


@dataclass(frozen=True)
class ImportItem:
    """One file of the source: a display name, its size, and how to open it for reading."""

    name: str
    size: int
    open: Callable[[], IO[bytes]]


@dataclass
class ImportReport:
    stored: int = 0
    held: int = 0
    skipped: int = 0
    ignored: int = 0
    bytes_read: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def iter_source(path: Path) -> Iterator[ImportItem]:
    """The files of a folder, a zip, or a DICOMDIR (the file itself or its folder)."""
    if path.is_file() and zipfile.is_zipfile(path):
        yield from _iter_zip(path)
        return
    dicomdir = path if path.is_file() and path.name.upper() == "DICOMDIR" else path / "DICOMDIR"
    if dicomdir.is_file():
        yield from _iter_dicomdir(dicomdir)
        return
    if path.is_file():
        yield ImportItem(path.name, path.stat().st_size, lambda: path.open("rb"))
        return
    for file_path in sorted(p for p in path.rglob("*") if p.is_file()):
        yield ImportItem(str(file_path.relative_to(path)), file_path.stat().st_size, _opener(file_path))


def _opener(file_path: Path) -> Callable[[], IO[bytes]]:
    return lambda: file_path.open("rb")


def _iter_zip(path: Path) -> Iterator[ImportItem]:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.is_dir() or info.filename.startswith("__MACOSX/") or info.filename.upper().endswith("DICOMDIR"):
                continue
            yield ImportItem(info.filename, info.file_size, _zip_opener(archive, info))


def _zip_opener(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], IO[bytes]]:
    return lambda: archive.open(info)  # streams the member; never extracts it whole


def _iter_dicomdir(dicomdir: Path) -> Iterator[ImportItem]:
    dicom.check_transfer_syntax(dicomdir)  # never inflate a deflated DICOMDIR
    file_set = FileSet(pydicom.dcmread(dicomdir))
    for instance in file_set:
        file_path = Path(instance.path)
        yield ImportItem(str(file_path.relative_to(dicomdir.parent)), file_path.stat().st_size, _opener(file_path))


def is_dicom_item(item: ImportItem) -> bool:
    with item.open() as handle:
        head = handle.read(SNIFF_LENGTH)
    return len(head) == SNIFF_LENGTH and head[128:132] == b"DICM"


def order_by_accession(item: ImportItem) -> RadiologyOrder | None:
    """The order whose accession number the file's header carries; None if none has it."""
    with item.open() as handle:
        dicom.check_transfer_syntax(handle)  # a deflated data set is refused before it is inflated
        header = pydicom.dcmread(handle, stop_before_pixels=True, specific_tags=["AccessionNumber"])
    accession = str(header.get("AccessionNumber", "") or "").strip()
    return RadiologyOrder.objects.filter(accession_number=accession).first() if accession else None


def import_item(
    item: ImportItem,
    *,
    order: RadiologyOrder | None,
    uploaded_by: AbstractBaseUser | None,
    report: ImportReport,
    confirmation: MismatchConfirmation | None = None,
) -> None:
    """Ingest one file into `order` (or the order matched by AccessionNumber, or the unmatched
    inbox when none is), recording the outcome."""
    try:
        if not is_dicom_item(item):
            report.ignored += 1
            return
        free_space.require_free_space(incoming_bytes=item.size)
        target = order or order_by_accession(item)
        with item.open() as handle:
            (outcome,) = pipeline.ingest_images(
                [
                    pipeline.IngestItem(
                        order=target, stream=handle, filename=Path(item.name).name, confirmation=confirmation
                    )
                ],
                uploaded_by=uploaded_by,
                arrival=pipeline.Arrival("import"),
            )
        if isinstance(outcome, RadiologyError):
            raise outcome
        report.bytes_read += item.size
        if not outcome.created:
            report.skipped += 1
        elif isinstance(outcome, pipeline.HeldResult):
            report.held += 1
        else:
            report.stored += 1
    except RadiologyError as error:
        report.failures.append((item.name, f"{error.code}: {error.detail}"))
    except (OSError, ValueError, pydicom.errors.InvalidDicomError) as error:
        report.failures.append((item.name, f"unreadable: {type(error).__name__}"))


def count_items(path: Path) -> int | None:
    with contextlib.suppress(Exception):
        return sum(1 for _ in iter_source(path))
    return None
