"""C-STORE: an instance a modality sends, through the one ingest path, answered only once it is committed.

pynetdicom writes the incoming dataset straight to a file as its P-DATA fragments arrive
(_config.STORE_RECV_CHUNKED_DATASET, set by listener.py): a Part 10 file whose File Meta
Information is what the sender's presentation context implies (SOP class and instance from
the request, the accepted transfer syntax), followed by the dataset bytes exactly as sent.
Nothing holds the dataset in memory. That file is moved into RADIOLOGY_STAGING_DIR (a rename
on the same filesystem, else one copy), hashed once, and handed to the one ingest path
(pipeline.ingest_images) as a staged file, as a STOW-RS part is: ingest takes it over as its
spool without copying it again, parses, checks, links it into the store and commits. The
staged name starts with the spool prefix, so a listener killed mid-instance leaves nothing
`purge_interrupted_ingests` does not remove. The response is sent after ingest returns, that is after
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

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pydicom.filereader
from django.conf import settings
from django.db import close_old_connections
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pynetdicom.events import Event

from apps.radiology import storage
from apps.radiology.dimse.association import node_of_association
from apps.radiology.dimse.audit import record_request
from apps.radiology.dimse.nodes import DicomNode, NodeList
from apps.radiology.dimse.status import status_dataset
from apps.radiology.errors import (
    EmptyFile,
    FileTooLarge,
    ImageConflict,
    InsufficientStorage,
    InvalidDicom,
    InvalidUID,
    MissingUID,
    RadiologyError,
    StorageFailure,
    TruncatedFile,
    UIDMismatch,
    UnsupportedFileType,
    UnsupportedTransferSyntax,
)
from apps.radiology.ingest.pipeline import Arrival, HeldResult, IngestResult
from apps.radiology.ingest.routing import ingest_routed
from apps.radiology.ingest.spool import SPOOL_PREFIX, StagedFile
from apps.radiology.models import AuditEvent, RadiologyOrder
from apps.radiology.storage import free_space

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000

ARRIVAL = Arrival("dicom")
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


@dataclass(frozen=True)
class Answer:
    """The DIMSE status of one C-STORE, with what the audit trail says of it."""

    status: int
    http_status: int
    outcome: str
    comment: str = ""

    def as_dataset(self) -> Dataset:
        return status_dataset(self.status, self.comment)


def handle_store(event: Event, nodes: NodeList) -> Dataset:
    """EVT_C_STORE: refuse a node that may not store, else ingest the received file and answer."""
    close_old_connections()  # as Django does when a request starts
    try:
        node = node_of_association(event.assoc, nodes)
        if node is None or not node.principal.may_store:
            answer = Answer(NOT_AUTHORIZED, 403, AuditEvent.Outcome.DENIED, "Only a modality may store")
            _audit(event, node, answer)
            return answer.as_dataset()
        outcome = _stage_and_ingest(Path(event.dataset_path))
        answer = answer_for(outcome)
        if isinstance(outcome, RadiologyError) and answer.status != SUCCESS:
            logger.warning("C-STORE from %s refused: %s (%s)", node.ae_title, outcome.code, outcome.detail)
        _audit(event, node, answer, outcome)
        return answer.as_dataset()
    finally:
        close_old_connections()


def receive_into_staging() -> None:
    """Have this process's temporary files, pynetdicom's received datasets among them, written
    to RADIOLOGY_STAGING_DIR under the spool prefix.

    For the listener's own process only (`run_dicom_listener`): it sets the `tempfile` module's
    process-wide directory and prefix, which pynetdicom's NamedTemporaryFile uses (it takes no
    directory of its own). A dataset half-received when the listener is killed is then a spool
    file `purge_interrupted_ingests` removes, and moving a complete one into staging is a rename.
    """
    settings.RADIOLOGY_STAGING_DIR.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(settings.RADIOLOGY_STAGING_DIR)
    tempfile.template = f"{SPOOL_PREFIX}dimse-received-"


def _stage_and_ingest(received: Path) -> IngestResult | HeldResult | RadiologyError:
    try:
        with staged_copy(received) as staged:
            return _ingest(staged)
    except RadiologyError as refused:  # no room for a copy on the staging disk
        return refused
    except OSError as error:  # the staging disk refused the move or the copy
        logger.error("C-STORE: the received file could not be staged: %s", type(error).__name__)
        return InsufficientStorage() if storage.is_out_of_space(error) else StorageFailure()


@contextlib.contextmanager
def staged_copy(received: Path) -> Iterator[StagedFile]:
    """The received file in the staging directory, with its size and SHA-256; removed after.

    pynetdicom writes it to the system's temporary directory and removes it after this handler
    (ignoring that it is gone); moving it is what keeps the bytes from being copied again.
    """
    staging = settings.RADIOLOGY_STAGING_DIR
    staging.mkdir(parents=True, exist_ok=True)
    target = staging / f"{SPOOL_PREFIX}dimse-{uuid.uuid4().hex}"
    try:
        try:
            os.rename(received, target)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            free_space.require_free_space(incoming_bytes=received.stat().st_size)
            shutil.copyfile(received, target)
        with target.open("rb") as handle:
            checksum = hashlib.file_digest(handle, "sha256").hexdigest()
        yield StagedFile(path=target, size=target.stat().st_size, checksum=checksum)
    finally:
        target.unlink(missing_ok=True)


def _ingest(staged: StagedFile) -> IngestResult | HeldResult | RadiologyError:
    """The one ingest path, to the accession's order; held unmatched when none fits (routing.py,
    the rule a forwarding clinic's uploads follow too)."""
    return ingest_routed(staged, order_by_accession(staged.path), arrival=ARRIVAL)


_ACCESSION = Tag(0x0008, 0x0050)


def _past_accession(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return tag > _ACCESSION


def order_by_accession(path: Path) -> RadiologyOrder | None:
    """The order whose accession number the dataset carries; None when none has it or it cannot be read
    (ingest then says what is wrong with the file)."""
    try:
        with path.open("rb") as stream:
            # Reading stops after (0008,0050): the elements before it are a few dozen, the rest
            # of the header (parsed again by ingest) is not read here.
            header = pydicom.filereader.read_partial(stream, stop_when=_past_accession, specific_tags=[_ACCESSION])
        accession = str(header.get("AccessionNumber", "") or "").strip()
    except Exception:  # a malformed dataset: ingest refuses it with the reason
        return None
    return RadiologyOrder.objects.filter(accession_number=accession).order_by().first() if accession else None


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
