"""Whose file this is: the file's own PatientID against its order's patient, before anything is stored.

A study's identity is the EMR's (the order's patient); a file carries the identity the
modality was given, which is usually the same hospital number under another spelling of the
name, sometimes empty, and sometimes another patient's. The last is strong evidence the file
was sent to the wrong order, so it is refused (PatientMismatch) unless the radiology tech
sending it confirms, with a reason, that it belongs here anyway. Everything else is stored
under the order with what the file said recorded on the image (models.PatientIdentityCheck),
shown in admin and by the images endpoint. Every reader is then shown the EMR's identity
(imagefiles/patient_identity.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from apps.emr.models import Patient
from apps.radiology.errors import MismatchReasonRequired, PatientMismatch
from apps.radiology.imagefiles.patient_identity import FileIdentity
from apps.radiology.models import DICOM_MIME_TYPE, PERSON_NAME_MAX_LENGTH, PatientIdentityCheck, RadiologyOrder


@dataclass(frozen=True)
class MismatchConfirmation:
    """A radiology tech's word that a file naming another patient belongs to this order anyway."""

    reason: str
    channel: str  # the way in, for the audit trail: api, dicomweb, import, admin


def confirmation_of(confirm: str | None, reason: str | None, *, channel: str) -> MismatchConfirmation | None:
    """A confirmation from a way in's parameters (STOW-RS's query, the import command's options):
    none unless `confirm` is true/1/yes; then the reason is required (MismatchReasonRequired)."""
    if (confirm or "").strip().lower() not in ("true", "1", "yes"):
        return None
    reason = (reason or "").strip()
    if not reason:
        raise MismatchReasonRequired()
    return MismatchConfirmation(reason=reason[:255], channel=channel)


@dataclass(frozen=True)
class IdentityVerdict:
    """What ingest found, kept on the image row."""

    check: PatientIdentityCheck
    file_patient_id: str = ""
    file_patient_name: str = ""
    reason: str = ""

    @property
    def confirmed(self) -> bool:
        return self.check == PatientIdentityCheck.CONFIRMED_OTHER_PATIENT

    def columns(self) -> dict[str, str]:
        """The image row's identity columns."""
        return {
            "patient_identity": self.check,
            "file_patient_id": self.file_patient_id,
            "file_patient_name": self.file_patient_name,
            "patient_identity_reason": self.reason,
        }


PHOTO = IdentityVerdict(PatientIdentityCheck.NOT_APPLICABLE)


class KnownPatients:
    """The hospital numbers a batch's identity checks need: each order's patient's (read with the
    order row, resolve.KnownOrders) and, in one query, which of the other PatientIDs the files
    name are EMR patients (none when every file names its own order's patient, or for photos)."""

    def __init__(self, order_patients: dict[int, str], emr_patient_ids: set[str]) -> None:
        self.order_patients = order_patients
        self.emr_patient_ids = emr_patient_ids

    @classmethod
    def of(
        cls, placed: Iterable[tuple[RadiologyOrder, str, FileIdentity]], order_patients: dict[int, str]
    ) -> KnownPatients:
        """What is known of these (order, mime type, file identity) triples, given each order's
        patient's hospital number."""
        dicom = [(order, identity) for order, mime_type, identity in placed if mime_type == DICOM_MIME_TYPE]
        if not dicom:
            return cls({}, set())
        # `verdict` asks the EMR only about a PatientID that is not its order's patient's.
        file_ids = {
            identity.patient_id
            for order, identity in dicom
            if identity.patient_id and identity.patient_id != order_patients.get(order.pk)
        }
        return cls(
            order_patients,
            set(
                Patient.objects.filter(hospital_number__in=file_ids)
                .order_by()
                .values_list("hospital_number", flat=True)
            )
            if file_ids
            else set(),
        )

    def verdict(
        self,
        order: RadiologyOrder,
        mime_type: str,
        identity: FileIdentity,
        confirmation: MismatchConfirmation | None,
    ) -> IdentityVerdict:
        """The image's identity record; PatientMismatch when the file names another EMR patient
        and no one confirmed it belongs to this order."""
        if mime_type != DICOM_MIME_TYPE:
            return PHOTO
        file_id, file_name = identity.patient_id, identity.patient_name
        if not file_id:
            check = PatientIdentityCheck.MISSING_IN_FILE
        elif file_id == self.order_patients.get(order.pk):
            check = PatientIdentityCheck.MATCHED
        elif file_id not in self.emr_patient_ids:
            check = PatientIdentityCheck.UNKNOWN_TO_EMR
        elif confirmation is None:
            raise PatientMismatch()
        else:
            return IdentityVerdict(
                PatientIdentityCheck.CONFIRMED_OTHER_PATIENT,
                file_id[:64],
                file_name[:PERSON_NAME_MAX_LENGTH],
                confirmation.reason[:255],
            )
        return IdentityVerdict(check, file_id[:64], file_name[:PERSON_NAME_MAX_LENGTH])
