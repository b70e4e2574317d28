"""C-STORE: an instance a modality sends, through the one ingest path, answered only once it is committed.

pynetdicom writes the incoming dataset straight to a file as its P-DATA fragments arrive
(_config.STORE_RECV_CHUNKED_DATASET, set by listener.py): a Part 10 file whose File Meta
Information is what the sender's presentation context implies (SOP class and instance from
the request, the accepted transfer syntax), followed by the dataset bytes exactly as sent.
Nothing holds the dataset in memory. That file is the ingest item (pipeline.ingest_images),
as an upload or a STOW-RS part would be: spooled and hashed into RADIOLOGY_STAGING_DIR,
parsed, checked, written, committed. The response is sent after ingest returns, that is after
the row and the file are committed: an acknowledged instance is never lost.

Routing: to the order whose accession number the dataset carries; with none, or when the
file does not fit that order (another patient's PatientID, a study UID that belongs to
another order), to the unmatched inbox for a tech. Nothing a modality sends is dropped: it is
stored, held, or refused with a failure status the modality shows and retries.

Statuses (PS3.4 B.2.3, PS3.7 C): 0x0000 stored, held, or an identical repeat; 0x0124 Refused:
Not Authorized for a node that is not a modality; 0x0110 Processing Failure with an Error
Comment for an instance whose UID is stored with other bytes; 0xA700 Refused: Out of
Resources when disk space or the store is short; 0xC000 Error: Cannot Understand for a
dataset that is not valid DICOM, lacks its UIDs or pixel data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom
from django.db import close_old_connections
from pydicom.dataset import Dataset
from pynetdicom.events import Event

from apps.radiology.dimse.association import node_of_association
from apps.radiology.dimse.audit import record_request
from apps.radiology.dimse.nodes import DicomNode, NodeList
from apps.radiology.errors import (
    EmptyFile,
    FileTooLarge,
    ImageConflict,
    InvalidDicom,
    InvalidUID,
    MissingUID,
    PatientMismatch,
    RadiologyError,
    SeriesConflict,
    StorageFailure,
    StudyConflict,
    StudyMismatch,
    TruncatedFile,
    UIDMismatch,
    UnsupportedFileType,
    UnsupportedTransferSyntax,
)
from apps.radiology.ingest.pipeline import Arrival, HeldResult, IngestItem, IngestResult, ingest_images
from apps.radiology.models import AuditEvent, RadiologyOrder

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000

ARRIVAL = Arrival("dicom")
# Refusals that say the file does not belong to the order its accession named: held instead.
_DOES_NOT_FIT_ORDER = (PatientMismatch, StudyMismatch, SeriesConflict, StudyConflict)
_NOT_UNDERSTOOD = (
    InvalidDicom,
    TruncatedFile,
    EmptyFile,
    UnsupportedFileType,
    UnsupportedTransferSyntax,
    InvalidUID,
    MissingUID,
    UIDMismatch,
)
_OUT_OF_RESOURCES = (StorageFailure, FileTooLarge)
_ERROR_COMMENT_LENGTH = 64  # LO


@dataclass(frozen=True)
class Answer:
    """The DIMSE status of one C-STORE, with what the audit trail says of it."""

    status: int
    http_status: int
    outcome: str
    comment: str = ""

    def as_dataset(self) -> Dataset:
        answer = Dataset()
        answer.Status = self.status
        if self.comment:
            answer.ErrorComment = self.comment[:_ERROR_COMMENT_LENGTH]
        return answer


def handle_store(event: Event, nodes: NodeList) -> Dataset:
    """EVT_C_STORE: refuse a node that may not store, else ingest the received file and answer."""
    close_old_connections()  # as Django does when a request starts
    try:
        node = node_of_association(event.assoc, nodes)
        if node is None or not node.principal.may_store:
            answer = Answer(NOT_AUTHORIZED, 403, AuditEvent.Outcome.DENIED, "Only a modality may store")
            _audit(event, node, answer)
            return answer.as_dataset()
        path = Path(event.dataset_path)
        outcome = _ingest(path)
        answer = answer_for(outcome)
        if isinstance(outcome, RadiologyError) and answer.status != SUCCESS:
            logger.warning("C-STORE from %s refused: %s (%s)", node.ae_title, outcome.code, outcome.detail)
        _audit(event, node, answer, outcome)
        return answer.as_dataset()
    finally:
        close_old_connections()


def _ingest(path: Path) -> IngestResult | HeldResult | RadiologyError:
    """The one ingest path, to the accession's order; held unmatched when none fits."""
    order = order_by_accession(path)
    outcome = _ingest_into(path, order)
    if order is not None and isinstance(outcome, _DOES_NOT_FIT_ORDER):
        logger.info("C-STORE: the instance does not fit order %s (%s): held as unmatched", order.pk, outcome.code)
        outcome = _ingest_into(path, None)
    return outcome


def _ingest_into(path: Path, order: RadiologyOrder | None) -> IngestResult | HeldResult | RadiologyError:
    with path.open("rb") as stream:
        (outcome,) = ingest_images(
            [IngestItem(order=order, stream=stream, filename=None)], uploaded_by=None, arrival=ARRIVAL
        )
    return outcome


def order_by_accession(path: Path) -> RadiologyOrder | None:
    """The order whose accession number the dataset carries; None when none has it or it cannot be read
    (ingest then says what is wrong with the file)."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["AccessionNumber"])
        accession = str(header.get("AccessionNumber", "") or "").strip()
    except Exception:  # a malformed dataset: ingest refuses it with the reason
        return None
    return RadiologyOrder.objects.filter(accession_number=accession).first() if accession else None


def answer_for(outcome: IngestResult | HeldResult | RadiologyError) -> Answer:
    """The DIMSE status of an ingest outcome (see the module docstring)."""
    if isinstance(outcome, IngestResult):
        return Answer(SUCCESS, 201 if outcome.created else 200, AuditEvent.Outcome.ALLOWED)
    if isinstance(outcome, HeldResult):
        return Answer(SUCCESS, 202, AuditEvent.Outcome.ALLOWED)
    if isinstance(outcome, ImageConflict):
        return Answer(PROCESSING_FAILURE, 409, AuditEvent.Outcome.REJECTED, outcome.detail)
    if isinstance(outcome, _OUT_OF_RESOURCES):
        return Answer(OUT_OF_RESOURCES, outcome.status_code, AuditEvent.Outcome.ERROR, outcome.detail)
    if isinstance(outcome, _NOT_UNDERSTOOD):
        return Answer(CANNOT_UNDERSTAND, 400, AuditEvent.Outcome.REJECTED, outcome.detail)
    return Answer(PROCESSING_FAILURE, outcome.status_code, AuditEvent.Outcome.REJECTED, outcome.detail)


def _audit(
    event: Event,
    node: DicomNode | None,
    answer: Answer,
    outcome: IngestResult | HeldResult | RadiologyError | None = None,
) -> None:
    request = event.request
    what: dict[str, object] = {"image_uid": str(request.AffectedSOPInstanceUID or "")[:64]}
    if isinstance(outcome, IngestResult):
        image = outcome.image
        study = image.series.study
        what.update(image_id=image.pk, series_uid=image.series.series_uid, study_uid=study.study_uid)
        what.update(study_id=study.pk, order_id=study.radiology_order_id)
    elif isinstance(outcome, HeldResult):
        held = outcome.unmatched
        what.update(unmatched_id=held.pk, study_uid=held.study_uid, series_uid=held.series_uid)
    record_request(
        event.assoc,
        node,
        method="C-STORE",
        status_code=answer.http_status,
        outcome=answer.outcome,
        action="write",
        **what,
    )
