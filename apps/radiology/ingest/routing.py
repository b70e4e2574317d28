"""Where a file with an accession number goes: its order, else the unmatched inbox.

Two ways in carry an accession number instead of an order a person chose: the DICOM network
(the dataset's own AccessionNumber, dimse/store.py) and a forwarding clinic's uploads (the
clinic order's accession, upload_sync.py). Both follow one rule, here, so a study arrives in
the same place whichever way it came: the order with that accession number; with none, or
when the file does not fit that order (another patient's PatientID, a study or series that
belongs to another order), the unmatched inbox for a tech. Guessing is never an option: a
file that does not fit is held, not forced in nor dropped.

The inbox holds DICOM only (a tech places a file by what its header says): a photo that
finds no order is refused with OrderNotFound, so its sender shows why.
"""

from __future__ import annotations

import logging

from django.contrib.auth.models import AbstractBaseUser

from apps.radiology.errors import (
    OrderNotFound,
    PatientMismatch,
    RadiologyError,
    SeriesConflict,
    StudyConflict,
    StudyMismatch,
    UnsupportedFileType,
)
from apps.radiology.imagefiles.declared import DeclaredImage
from apps.radiology.imagefiles.dicom import SNIFF_LENGTH, sniff_mime_type
from apps.radiology.ingest.holding import Arrival
from apps.radiology.ingest.identity import MismatchConfirmation
from apps.radiology.ingest.outcomes import HeldResult, IngestResult
from apps.radiology.ingest.pipeline import IngestItem, ingest_images
from apps.radiology.ingest.spool import StagedFile
from apps.radiology.models import DICOM_MIME_TYPE, RadiologyOrder

logger = logging.getLogger(__name__)

# Refusals that say the file does not belong to the order its accession named: held instead.
DOES_NOT_FIT_ORDER = (PatientMismatch, StudyMismatch, SeriesConflict, StudyConflict)

Outcome = IngestResult | HeldResult | RadiologyError


def order_with_accession(accession_number: str) -> RadiologyOrder | None:
    """The order with this accession number; None for none (or a blank one)."""
    accession_number = accession_number.strip()
    if not accession_number:
        return None
    # No ORDER BY: the first match is as good as any (accession numbers name one order).
    return RadiologyOrder.objects.filter(accession_number=accession_number).order_by().first()


def ingest_routed(
    staged: StagedFile,
    order: RadiologyOrder | None,
    *,
    arrival: Arrival,
    uploaded_by: AbstractBaseUser | None = None,
    filename: str | None = None,
    declared: DeclaredImage | None = None,
    expected_size: int | None = None,
    expected_checksum: str | None = None,
    confirmation: MismatchConfirmation | None = None,
    source_clinic: str = "",
) -> Outcome:
    """Ingest a staged file into `order` (the one its accession named); hold it unmatched when
    there is none or the file does not fit it. A staged file can be read twice: the second
    attempt costs no copy of the bytes.

    `source_clinic`: the forwarding clinic that sent it, recorded on its study or held row.
    """

    def into(target: RadiologyOrder | None) -> Outcome:
        item = IngestItem(
            order=target,
            stream=None,
            filename=filename,
            declared=declared or DeclaredImage(),
            expected_size=expected_size,
            expected_checksum=expected_checksum,
            staged=staged,
            confirmation=confirmation if target is not None else None,
            source_clinic=source_clinic,
        )
        (outcome,) = ingest_images([item], uploaded_by=uploaded_by, arrival=arrival)
        return outcome

    if order is None:
        return into(None) if _is_dicom(staged) else OrderNotFound()
    outcome = into(order)
    if isinstance(outcome, DOES_NOT_FIT_ORDER) and _is_dicom(staged):
        logger.info(
            "%s: the file does not fit order %s (%s): held as unmatched", arrival.channel, order.pk, outcome.code
        )
        outcome = into(None)
    return outcome


def _is_dicom(staged: StagedFile) -> bool:
    """Whether the staged file is DICOM by its bytes (what the inbox can hold)."""
    with staged.path.open("rb") as handle:
        head = handle.read(SNIFF_LENGTH)
    try:
        return sniff_mime_type(head) == DICOM_MIME_TYPE
    except UnsupportedFileType:
        return True  # neither DICOM nor JPEG: ingest refuses it with that reason
