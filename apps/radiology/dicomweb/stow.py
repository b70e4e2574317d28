"""STOW-RS: store the DICOM parts of a multipart/related request through the one ingest path.

Which order an instance goes to: `?radiology_order_id=` when given (it wins, for every
part); otherwise the order whose accession number equals the instance's AccessionNumber.
Good instances are stored even when others fail; the answer lists both (PS3.18 10.5):
200 all stored, 202 some failed, 409 none stored. An instance whose PatientID is another EMR
patient's fails with Failure Reason A900 (patient_mismatch) unless the request confirms it:
`?confirm_patient_mismatch=true&patient_mismatch_reason=...` (the tech's reason, audited).
A disk short of space refuses the whole request (507) before its body is read; one that fills
up while the received instances are stored fails those left with A700 (Out of Resources).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydicom
from django.contrib.auth.models import AbstractBaseUser
from pydicom.filereader import read_file_meta_info

from apps.radiology import errors
from apps.radiology.errors import OrderNotFound, RadiologyError, UnsupportedFileType, UnsupportedTransferSyntax
from apps.radiology.imagefiles.dicom import SNIFF_LENGTH, check_transfer_syntax, sniff_mime_type
from apps.radiology.ingest.identity import MismatchConfirmation
from apps.radiology.ingest.pipeline import IngestItem, IngestResult, StagedFile, ingest_images
from apps.radiology.models import DICOM_MIME_TYPE, RadiologyOrder

from .dicom_json import element
from .multipart import ReceivedPart

logger = logging.getLogger(__name__)

# Failure Reason (0008,1197) values, PS3.4 Annex C / PS3.18 Table 10.5.3-1.
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
STUDY_UID_MISMATCH = 0xC122  # the instance's study is not the study named in the URL

_REASONS: dict[type[RadiologyError], int] = {
    errors.ImageConflict: DUPLICATE_SOP_INSTANCE,
    errors.StudyMismatch: DATA_SET_DOES_NOT_MATCH,
    errors.StudyConflict: DATA_SET_DOES_NOT_MATCH,
    errors.PatientMismatch: DATA_SET_DOES_NOT_MATCH,
    errors.SeriesConflict: DATA_SET_DOES_NOT_MATCH,
    errors.UIDMismatch: DATA_SET_DOES_NOT_MATCH,
    errors.StorageFailure: OUT_OF_RESOURCES,
    errors.InsufficientStorage: OUT_OF_RESOURCES,
    errors.FileTooLarge: OUT_OF_RESOURCES,
    errors.InvalidDicom: CANNOT_UNDERSTAND,
    errors.TruncatedFile: CANNOT_UNDERSTAND,
    errors.MissingUID: CANNOT_UNDERSTAND,
    errors.InvalidUID: CANNOT_UNDERSTAND,
    errors.EmptyFile: CANNOT_UNDERSTAND,
    errors.UnsupportedFileType: CANNOT_UNDERSTAND,
    errors.UnsupportedTransferSyntax: CANNOT_UNDERSTAND,
    errors.ImplausiblePixelData: CANNOT_UNDERSTAND,
    errors.MissingPixelData: CANNOT_UNDERSTAND,
}


@dataclass
class StoreOutcome:
    referenced: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> int:
        if not self.failed:
            return 200
        return 202 if self.referenced else 409

    def as_json(self, study_url: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if study_url:
            body["00081190"] = element("UR", study_url)
        if self.failed:
            body["00081198"] = {"vr": "SQ", "Value": self.failed}
        body["00081199"] = {"vr": "SQ", "Value": self.referenced} if self.referenced else {"vr": "SQ"}
        return body


def _reference(sop_class: str | None, sop_instance: str | None) -> dict[str, Any]:
    return {"00081150": element("UI", sop_class), "00081155": element("UI", sop_instance)}


def _failed(sop_class: str | None, sop_instance: str | None, reason: int, code: str) -> dict[str, Any]:
    logger.info("STOW-RS instance refused: %s (reason 0x%04X)", code, reason)
    return {**_reference(sop_class, sop_instance), "00081197": element("US", reason)}


def store_instances(
    *,
    parts: list[ReceivedPart],
    user: AbstractBaseUser,
    order_id: int | None,
    study_uid: str | None,
    instance_url: Callable[[str, str, str], str],
    confirmation: MismatchConfirmation | None = None,
) -> StoreOutcome:
    """Ingest the application/dicom parts as one batch; collect referenced and failed instances.

    `confirmation`: the tech's word (with a reason) that instances naming another patient than
    their order's belong there anyway; without it they fail (PatientMismatch).
    """
    order = None
    if order_id is not None:
        order = RadiologyOrder.objects.filter(pk=order_id).first()
        if order is None:
            raise OrderNotFound()
    # One entry per part, in part order: a failure already known, or the batch item to ingest.
    answers: list[dict[str, Any] | tuple[str | None, str | None] | ReceivedPart] = []
    items: list[IngestItem] = []
    orders_by_accession: dict[str, RadiologyOrder | None] = {}
    for part in parts:
        media_type = part.content_type.split(";")[0].strip().lower()
        if media_type not in ("application/dicom", ""):
            answers.append(_failed(None, None, CANNOT_UNDERSTAND, "unsupported_part_type"))
            continue
        if order is not None and study_uid is None:
            # Nothing to decide before ingest (which reads the header anyway): the UIDs a
            # failure report needs are read only for a part that fails (see below).
            with part.open() as handle:
                head = handle.read(SNIFF_LENGTH)
            if not _looks_like_dicom(head):
                answers.append(_failed(None, None, CANNOT_UNDERSTAND, errors.InvalidDicom.code))
                continue
            items.append(
                IngestItem(order=order, stream=None, filename=None, staged=_staged(part), confirmation=confirmation)
            )
            answers.append(part)
            continue
        try:
            header = _header(part)
        except RadiologyError as refused:  # a data set no header can be read from without harm
            answers.append(_failed(*_meta_uids(part), _REASONS.get(type(refused), PROCESSING_FAILURE), refused.code))
            continue
        if header is None:
            answers.append(_failed(None, None, CANNOT_UNDERSTAND, errors.InvalidDicom.code))
            continue
        sop_class, sop_instance = _sop_uids(header)
        if study_uid is not None and str(header.get("StudyInstanceUID", "")) != study_uid:
            answers.append(_failed(sop_class, sop_instance, STUDY_UID_MISMATCH, "study_uid_mismatch"))
            continue
        target = order
        if target is None:
            accession = str(header.get("AccessionNumber", "") or "").strip()
            if accession not in orders_by_accession:
                orders_by_accession[accession] = _order_by_accession(accession)
            target = orders_by_accession[accession]
        if target is None:
            answers.append(_failed(sop_class, sop_instance, PROCESSING_FAILURE, OrderNotFound.code))
            continue
        items.append(
            IngestItem(
                order=target,
                stream=None,
                filename=f"{sop_instance or 'instance'}.dcm",
                staged=_staged(part),
                confirmation=confirmation,
            )
        )
        answers.append((sop_class, sop_instance))
    results = iter(ingest_images(items, uploaded_by=user))
    outcome = StoreOutcome()
    for answer in answers:
        if isinstance(answer, dict):
            outcome.failed.append(answer)
            continue
        result = next(results)
        if not isinstance(result, IngestResult):  # every part has an order: nothing is held
            result = result if isinstance(result, RadiologyError) else RadiologyError()
            sop_class, sop_instance = answer if isinstance(answer, tuple) else _uids_of(answer)
            outcome.failed.append(
                _failed(sop_class, sop_instance, _REASONS.get(type(result), PROCESSING_FAILURE), result.code)
            )
            continue
        image = result.image
        outcome.referenced.append(
            {
                **_reference(image.sop_class_uid, image.image_uid),
                "00081190": element(
                    "UR", instance_url(image.series.study.study_uid, image.series.series_uid, image.image_uid)
                ),
            }
        )
    return outcome


def _staged(part: ReceivedPart) -> StagedFile:
    return StagedFile(path=part.path, size=part.size, checksum=part.checksum)


def _header(part: ReceivedPart) -> pydicom.Dataset | None:
    """The part's few elements STOW-RS decides on, or None if it is not readable DICOM.

    Raises UnsupportedTransferSyntax for a deflated data set, decided from the file meta
    before the data set is read: pydicom would inflate all of it in memory first.
    """
    try:
        check_transfer_syntax(part.path)
        with part.open() as handle:
            return pydicom.dcmread(
                handle,
                stop_before_pixels=True,
                specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "AccessionNumber"],
            )
    except UnsupportedTransferSyntax:
        raise
    except Exception:  # any unreadable part is reported, not raised
        return None


def _looks_like_dicom(head: bytes) -> bool:
    """A Part 10 file (what pydicom reads without force); a JPEG sent as a DICOM part is not."""
    try:
        return sniff_mime_type(head) == DICOM_MIME_TYPE
    except UnsupportedFileType:
        return False


def _sop_uids(header: pydicom.Dataset) -> tuple[str | None, str | None]:
    """(SOP Class UID, SOP Instance UID) for a failure report; None for a missing or empty one."""
    return str(header.get("SOPClassUID", "") or "") or None, str(header.get("SOPInstanceUID", "") or "") or None


def _uids_of(part: ReceivedPart) -> tuple[str | None, str | None]:
    try:
        header = _header(part)
    except RadiologyError:
        return _meta_uids(part)
    return (None, None) if header is None else _sop_uids(header)


def _meta_uids(part: ReceivedPart) -> tuple[str | None, str | None]:
    """(SOP Class UID, SOP Instance UID) from the file meta alone, for a part whose data set is not read."""
    try:
        meta = read_file_meta_info(part.path)
    except Exception:  # an unreadable meta: the failure is reported without UIDs
        return None, None
    return (
        str(meta.get("MediaStorageSOPClassUID", "") or "") or None,
        str(meta.get("MediaStorageSOPInstanceUID", "") or "") or None,
    )


def _order_by_accession(accession: str) -> RadiologyOrder | None:
    if not accession:
        return None
    return RadiologyOrder.objects.filter(accession_number=accession).first()
