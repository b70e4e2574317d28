"""C-GET and C-MOVE: a workstation pulls studies, series or instances, as the read door lets it.

The listener binds `handle_get` and `handle_move` (pynetdicom's EVT_C_GET, EVT_C_MOVE) with the
node list. The identifier's unique keys select images through `visible_images(principal)`, the
calling node's principal: a workstation reads everything, a modality nothing (its retrieve has
no sub-operations and ends in success, as its C-FIND finds nothing).

Conformance (Query/Retrieve GET and MOVE SCP, PS3.4 C.4.2 and C.4.3):
- SOP classes: Patient Root and Study Root Query/Retrieve Information Model - GET and - MOVE.
  Levels: PATIENT (Patient Root only: PatientID), STUDY (StudyInstanceUID), SERIES
  (SeriesInstanceUID), IMAGE (SOPInstanceUID); UID lists backslash-separated; unique keys of the
  levels above narrow the selection when given. The patient is the EMR's (the study's patient id).
- C-MOVE sends to the Move Destination only when it is a node of RADIOLOGY_DICOM_NODES with a
  MOVE_PORT, at the address listed for it (never where the request came from, never a title
  alone); otherwise 0xA801, and 0xA801 too when that node cannot be reached.
- C-GET sends back over the caller's association, on the storage contexts it proposed with SCP
  role selection.
- Each instance leaves in a transfer syntax the receiver accepted for its SOP class: the stored
  one first (the stored file byte for byte, unless the file's own patient identity differs from
  the EMR's: then its header carries the EMR identity with the file's values in the Original
  Attributes Sequence, as WADO-RS serves it, the pixel data unchanged), else Explicit VR Little
  Endian when that is lossless (dicomweb/transcode.py), else Implicit VR Little Endian for native
  pixel data. An instance no accepted context fits is a failed sub-operation (0x0122 not sent).
  Files are sent from disk in chunks (fastpaths/dimse_file_send.py), never whole in memory.
- Statuses: FF00 after each sub-operation with the remaining, completed, failed and warning
  counts; then 0x0000 all completed, 0xB000 some failed (Failed SOP Instance UID List), 0xA702
  all failed; 0xFE00 after a C-CANCEL (checked before each instance); 0xA900 a level missing,
  not in the model, or without its unique key; 0xC000 an identifier that cannot be read;
  0xA701 more than RETRIEVE_LIMIT instances selected (narrow the request).
- Each request is one audit event (dimse/audit.py): C-GET or C-MOVE, with the study, series or
  instance UID when the request names one, and its outcome as an HTTP-like status.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.db import close_old_connections
from django.db.models import F, QuerySet
from pydicom.dataset import Dataset
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from apps.radiology import storage
from apps.radiology.access.principals import NOTHING, Principal, ScopePrincipal
from apps.radiology.access.visible import visible_images
from apps.radiology.dicomweb import transcode
from apps.radiology.dicomweb.qido import check_filter
from apps.radiology.dimse.association import node_of_association
from apps.radiology.dimse.audit import record_request
from apps.radiology.dimse.nodes import DicomNode, NodeList
from apps.radiology.dimse.status import element_values, status_dataset
from apps.radiology.errors import InvalidQuery, RadiologyError
from apps.radiology.fastpaths import dimse_file_send
from apps.radiology.fastpaths.dimse_file_send import PendingInstance
from apps.radiology.imagefiles import stored_header
from apps.radiology.ingest.spool import SPOOL_PREFIX
from apps.radiology.models import AuditEvent, RadiologyImage

logger = logging.getLogger(__name__)

GET_SOP_CLASSES = (PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet)
MOVE_SOP_CLASSES = (PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove)
# At most this many instances per request: sub-operation counts are US (65535 at most), and a
# request that large is a mistake better narrowed than served for an hour.
RETRIEVE_LIMIT = 10_000
# Rows loaded at a time while sending (each with its header JSON): memory stays bounded.
_BATCH = 100
# PS3.8 9.3.2.2: at most 128 presentation contexts an association (odd ids 1-255).
_MAX_CONTEXTS = 128
# Bytes gathered before one write to the retrieve spool.
_SPOOL_WRITE_BYTES = 1024 * 1024

SUCCESS = 0x0000
PENDING = 0xFF00
CANCELLED = 0xFE00
OUT_OF_RESOURCES_MATCHES = 0xA701
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
_PATIENT_ROOT = (PATIENT, STUDY, SERIES, IMAGE)
_STUDY_ROOT = (STUDY, SERIES, IMAGE)
LEVELS = {
    str(PatientRootQueryRetrieveInformationModelGet): _PATIENT_ROOT,
    str(PatientRootQueryRetrieveInformationModelMove): _PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelGet): _STUDY_ROOT,
    str(StudyRootQueryRetrieveInformationModelMove): _STUDY_ROOT,
}
# The unique key of each level, and the image column it selects on.
UNIQUE_KEY = {
    PATIENT: ("PatientID", "series__study__patient_id"),
    STUDY: ("StudyInstanceUID", "series__study__study_uid"),
    SERIES: ("SeriesInstanceUID", "series__series_uid"),
    IMAGE: ("SOPInstanceUID", "image_uid"),
}
_SEND_ORDER = (
    "series__study_id",
    F("series__series_number").asc(nulls_last=True),
    "series_id",
    F("instance_number").asc(nulls_last=True),
    "id",
)


class Refusal(Exception):
    """A request answered with one failure status and no sub-operation."""

    def __init__(self, status: int, comment: str, http_status: int = 400) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.http_status = http_status

    def as_dataset(self) -> Dataset:
        return status_dataset(self.status, self.comment)


def handle_get(event: Any, nodes: NodeList) -> Iterator[Any]:
    """EVT_C_GET: the count of sub-operations, then one PendingInstance per image."""
    node = node_of_association(event.assoc, nodes)
    yield from _retrieve(event, node, destination=None)


def handle_move(event: Any, nodes: NodeList) -> Iterator[Any]:
    """EVT_C_MOVE: the destination (address, port, association options), the count, the instances."""
    node = node_of_association(event.assoc, nodes)
    destination = nodes.move_destination(str(event.request.MoveDestination or "").strip())
    yield from _retrieve(event, node, destination=destination)


def _retrieve(event: Any, node: DicomNode | None, *, destination: DicomNode | None) -> Iterator[Any]:
    moving = str(event.request.AffectedSOPClassUID) in {str(uid) for uid in MOVE_SOP_CLASSES}
    method = "C-MOVE" if moving else "C-GET"
    principal: Principal = node.principal if node is not None else ScopePrincipal(NOTHING)
    tally = _Tally()
    spool = _Spool()
    close_old_connections()
    try:
        if moving and destination is None:
            tally.refusal = Refusal(MOVE_DESTINATION_UNKNOWN, "Move destination unknown")
            yield None, None  # pynetdicom answers 0xA801
            return
        try:
            selected = select(event, principal)
            image_ids = list(selected.order_by(*_SEND_ORDER).values_list("pk", flat=True)[: RETRIEVE_LIMIT + 1])
            if len(image_ids) > RETRIEVE_LIMIT:
                raise Refusal(OUT_OF_RESOURCES_MATCHES, f"More than {RETRIEVE_LIMIT} instances: narrow the request.")
        except Refusal as refusal:
            tally.refusal = refusal
            if destination is not None:  # a C-MOVE: pynetdicom wants the destination first
                yield destination.address, destination.move_port, _move_association([build_context(Verification)])
            yield 1  # and a count before any status
            yield refusal.as_dataset(), None
            return
        if destination is not None:
            yield destination.address, destination.move_port, _move_association(storage_contexts(selected))
        yield len(image_ids)
        for batch_start in range(0, len(image_ids), _BATCH):
            batch = image_ids[batch_start : batch_start + _BATCH]
            # The stored header (kilobytes of JSON a row) stays in the database: what sending
            # needs of it (the served identity, the pixel description) is read member by member.
            rows = RadiologyImage.objects.select_related("series__study").defer(stored_header.HEADER_COLUMN)
            loaded = rows.in_bulk(batch)
            for image_id in batch:
                if event.is_cancelled:
                    tally.cancelled = True
                    yield CANCELLED, None
                    return
                image = loaded.get(image_id)
                if image is None:  # removed meanwhile (never, images are immutable): not sent
                    continue
                pending = PendingInstance(image.image_uid, _materialiser(image, spool))
                tally.sent.append(pending)
                yield PENDING, pending
    finally:
        spool.close()
        _audit(event, node, method, tally, selection_named(event))
        close_old_connections()


def _move_association(contexts: list[Any]) -> dict[str, Any]:
    """How pynetdicom opens the association to a Move Destination: these contexts, TCP_NODELAY."""
    return {"contexts": contexts, "evt_handlers": [(evt.EVT_CONN_OPEN, dimse_file_send.no_delay)]}


def select(event: Any, principal: Principal) -> QuerySet[RadiologyImage]:
    """The images the identifier's keys select among those `principal` may read; Refusal when
    the identifier cannot be read, has no level of the model, or lacks the level's unique key."""
    try:
        identifier: Dataset = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        keys = {keyword: _key_values(identifier, keyword) for keyword, _column in UNIQUE_KEY.values()}
    except Exception:  # a peer's bytes pydicom cannot decode, whatever pydicom raises
        raise Refusal(UNABLE_TO_PROCESS, "The identifier cannot be decoded.") from None
    levels = LEVELS.get(str(event.request.AffectedSOPClassUID), ())
    if level not in levels:
        raise Refusal(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"QueryRetrieveLevel must be one of {', '.join(levels)}.")
    unique_keyword = UNIQUE_KEY[level][0]
    if not keys[unique_keyword]:
        raise Refusal(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"A {level} retrieve needs {unique_keyword}.")
    images = visible_images(principal)
    # The level's own key and those of the levels above it (in the model of the request).
    for each in levels[: levels.index(level) + 1]:
        keyword, column = UNIQUE_KEY[each]
        values = keys[keyword]
        if not values:
            continue
        try:
            check_filter(keyword, values)
        except InvalidQuery as error:
            raise Refusal(UNABLE_TO_PROCESS, error.detail) from None
        images = images.filter(**{f"{column}__in": values})
    return images


def _key_values(identifier: Dataset, keyword: str) -> list[str]:
    # Not identifier.get(keyword): pydicom's get gives the value, not the element.
    return element_values(identifier[keyword] if keyword in identifier else None)  # noqa: SIM401


def selection_named(event: Any) -> dict[str, str]:
    """The single study, series or instance UID the identifier names, for the audit event."""
    try:
        identifier = event.identifier
        found = {
            "study_uid": _key_values(identifier, "StudyInstanceUID"),
            "series_uid": _key_values(identifier, "SeriesInstanceUID"),
            "image_uid": _key_values(identifier, "SOPInstanceUID"),
        }
    except Exception:  # unreadable: the event names nothing
        return {}
    return {key: values[0][:64] for key, values in found.items() if len(values) == 1}


def storage_contexts(images: QuerySet[RadiologyImage]) -> list[Any]:
    """The presentation contexts C-MOVE proposes to its destination: for each SOP class, one
    with the uncompressed syntaxes (the receiver picks one) and one per other stored syntax (so
    a receiver that takes it gets the file as stored), at most 128 in all."""
    pairs = sorted(set(images.order_by().values_list("sop_class_uid", "transfer_syntax_uid").distinct()))
    sop_classes = sorted({sop_class for sop_class, _syntax in pairs if sop_class})
    contexts = [
        build_context(sop_class, [transcode.EXPLICIT_LITTLE, transcode.IMPLICIT_LITTLE]) for sop_class in sop_classes
    ]
    for sop_class, syntax in pairs:
        if sop_class and syntax not in (transcode.EXPLICIT_LITTLE, transcode.IMPLICIT_LITTLE):
            contexts.append(build_context(sop_class, [syntax]))
    return contexts[:_MAX_CONTEXTS]


def accepted_syntaxes(assoc: Association, sop_class: str) -> list[str]:
    """The transfer syntaxes `assoc` accepted for sending `sop_class` (this side as SCU)."""
    return [
        str(context.transfer_syntax[0])
        for context in assoc.accepted_contexts
        if str(context.abstract_syntax) == sop_class and context.as_scu
    ]


def choose_syntax(image: RadiologyImage, accepted: list[str]) -> str | None:
    """The stored syntax if accepted, else Explicit, else Implicit VR Little Endian, as lossless."""
    preference = (transcode.stored_syntax(image), transcode.EXPLICIT_LITTLE, transcode.IMPLICIT_LITTLE)
    return next((syntax for syntax in preference if syntax in accepted and transcode.can_send_in(image, syntax)), None)


def _materialiser(
    image: RadiologyImage, spool: _Spool
) -> Callable[[Association], tuple[Path, Callable[[], None]] | None]:
    """The instance as a Part 10 file in a syntax the sending association accepted (None: none fits)."""

    def materialise(assoc: Association) -> tuple[Path, Callable[[], None]] | None:
        syntax = choose_syntax(image, accepted_syntaxes(assoc, image.sop_class_uid))
        if syntax is None:
            logger.info("C-GET/C-MOVE: no accepted context fits instance %s (%s)", image.pk, image.transfer_syntax_uid)
            return None
        try:
            ready = transcode.prepare(transcode.PartPlan(image, syntax))
            own_file = storage.filesystem_path(image.file_key) if ready.stored_file else None
            if own_file is not None:
                return own_file, _nothing
            return spool.holding(ready.chunks), _nothing
        except (RadiologyError, OSError) as failed:
            logger.warning("C-GET/C-MOVE: instance %s could not be produced: %s", image.pk, failed)
            return None

    return materialise


class _Spool:
    """One file on the staging disk a request's instances are written to in turn (each is sent
    before the next is written), when an instance is not sent as its stored file: made at the
    first use, removed when the request ends. Under the spool prefix, so that
    purge_interrupted_ingests removes it should the listener be killed mid-request."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self.path: Path | None = None

    def holding(self, chunks: Iterable[bytes | memoryview]) -> Path:
        if self._file is None:
            settings.RADIOLOGY_STAGING_DIR.mkdir(parents=True, exist_ok=True)
            descriptor, name = tempfile.mkstemp(prefix=f"{SPOOL_PREFIX}retrieve-", dir=settings.RADIOLOGY_STAGING_DIR)
            self._file, self.path = os.fdopen(descriptor, "w+b", buffering=0), Path(name)
        out = self._file
        out.seek(0)
        # One write call for a small instance (the chunks joined), chunk by chunk for a large one.
        pending: list[bytes | memoryview] = []
        held = 0
        for chunk in chunks:
            pending.append(chunk)
            held += len(chunk)
            if held >= _SPOOL_WRITE_BYTES:
                out.write(b"".join(pending))
                pending, held = [], 0
        if pending:
            out.write(b"".join(pending))
        out.truncate()  # at the end of this instance: what the previous one had beyond it goes
        assert self.path is not None  # noqa: S101 (set with the file)
        return self.path

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _nothing() -> None:
    return None


@dataclass
class _Tally:
    """What one request did, for its audit event."""

    sent: list[PendingInstance] = field(default_factory=list)
    refusal: Refusal | None = None
    cancelled: bool = False

    def status_code(self) -> tuple[int, str]:
        if self.refusal is not None:
            return self.refusal.http_status, AuditEvent.Outcome.REJECTED
        if self.cancelled:
            return 499, AuditEvent.Outcome.ALLOWED
        completed = sum(1 for pending in self.sent if _delivered(pending.status))
        if completed == len(self.sent):
            return 200, AuditEvent.Outcome.ALLOWED
        return (207, AuditEvent.Outcome.ALLOWED) if completed else (502, AuditEvent.Outcome.ERROR)


def _delivered(status: int | None) -> bool:
    """Success, or a warning (PS3.4 B.2.3: 0xB000-0xBFFF, stored with coercion or the like)."""
    return status is not None and (status == SUCCESS or status & 0xF000 == 0xB000)


def _audit(event: Any, node: DicomNode | None, method: str, tally: _Tally, named: dict[str, str]) -> None:
    status_code, outcome = tally.status_code()
    record_request(event.assoc, node, method=method, status_code=status_code, outcome=outcome, action="read", **named)
