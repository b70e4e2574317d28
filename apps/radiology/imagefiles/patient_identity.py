"""Whose image this is: the file's own patient identity, the EMR's, and how the two are reconciled.

A file carries the patient name, id, birth date and sex the modality was given; the study
carries the EMR's (a snapshot taken from the order's patient). PACS-lite shows one identity
everywhere a person or client reads it, the EMR's, and keeps the file's differing values in
what it serves as the Original Attributes Sequence (0400,0561), the standard's place for
"these attributes were coerced, here are the values they had" (PS3.3 C.12.1.1.9). The stored
file itself is never changed: a download of it is the original.

This module knows the four attributes and their DICOM JSON; ingest decides what to do about
a difference (ingest/identity.py), the stored header writes what it decides
(stored_header.columns), and WADO-RS's rewritten instances use `replace_identity`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from apps.radiology.models import RadiologyStudy

PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
PATIENT_BIRTH_DATE = "00100030"
PATIENT_SEX = "00100040"
ORIGINAL_ATTRIBUTES = "04000561"
# The patient attributes every reader is shown from the EMR, with their VRs.
IDENTITY_VRS = {PATIENT_NAME: "PN", PATIENT_ID: "LO", PATIENT_BIRTH_DATE: "DA", PATIENT_SEX: "CS"}
# What the stored header holds back from a parsed file, to be filled in with the EMR's.
HELD_TAGS = (*IDENTITY_VRS, ORIGINAL_ATTRIBUTES)

MODIFYING_SYSTEM = "PACS-lite"
# Reason for the Attribute Modification (0400,0565): "COERCE" = replaced by the receiving system.
COERCE = "COERCE"


def _element(vr: str, value: str) -> dict[str, Any]:
    if not value:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": value}]}
    return {"vr": vr, "Value": [value]}


@dataclass(frozen=True)
class EmrIdentity:
    """The patient identity every reader is shown: the study's snapshot of the EMR patient."""

    name: str  # DICOM Person Name form (Family^Given)
    patient_id: str
    birth_date: str  # YYYYMMDD or ""
    sex: str

    @classmethod
    def of_study(cls, study: RadiologyStudy) -> EmrIdentity:
        return cls(
            name=study.patient_dicom_name or study.patient_name,
            patient_id=study.patient_id,
            birth_date=study.patient_birth_date.strftime("%Y%m%d") if study.patient_birth_date else "",
            sex=study.patient_sex,
        )

    def elements(self) -> dict[str, dict[str, Any]]:
        """The four attributes as DICOM JSON, in tag order (present, empty when the EMR has no value)."""
        values = {
            PATIENT_NAME: self.name,
            PATIENT_ID: self.patient_id,
            PATIENT_BIRTH_DATE: self.birth_date,
            PATIENT_SEX: self.sex,
        }
        return {tag: _element(IDENTITY_VRS[tag], value) for tag, value in values.items()}


def first_value(element: dict[str, Any] | None) -> str:
    """An element's first value as text ("" when absent or empty); a person name's Alphabetic group."""
    values = (element or {}).get("Value") or []
    if not values:
        return ""
    value = values[0]
    if isinstance(value, dict):
        value = value.get("Alphabetic", "")
    return str(value or "").strip()


@dataclass(frozen=True)
class FileIdentity:
    """The identity elements a file carries (DICOM JSON, only those it has), as parsed."""

    elements: dict[str, dict[str, Any]]

    @property
    def patient_id(self) -> str:
        return first_value(self.elements.get(PATIENT_ID))

    @property
    def patient_name(self) -> str:
        return first_value(self.elements.get(PATIENT_NAME))


def served_members(file_identity: FileIdentity, emr: EmrIdentity, *, at: dt.datetime) -> dict[str, dict[str, Any]]:
    """The identity members of an instance's served metadata: the EMR's four attributes and,
    if any of the file's own differed, an Original Attributes Sequence item recording them
    (after any items the file already had)."""
    served = emr.elements()
    modified = {
        tag: element
        for tag in IDENTITY_VRS
        if (element := file_identity.elements.get(tag)) is not None and _values(element) != _values(served[tag])
    }
    members: dict[str, dict[str, Any]] = dict(served)
    items = list((file_identity.elements.get(ORIGINAL_ATTRIBUTES) or {}).get("Value") or [])
    if modified:
        items.append(
            {
                "04000550": {"vr": "SQ", "Value": [modified]},
                "04000562": {"vr": "DT", "Value": [at.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S.%f+0000")]},
                "04000563": {"vr": "LO", "Value": [MODIFYING_SYSTEM]},
                "04000564": {"vr": "LO"},
                "04000565": {"vr": "CS", "Value": [COERCE]},
            }
        )
    if items:
        members[ORIGINAL_ATTRIBUTES] = {"vr": "SQ", "Value": items}
    return members


def _values(element: dict[str, Any]) -> list[Any]:
    """An element's values, compared as text (a PN by its groups), ignoring DICOM's padding."""
    values = element.get("Value") or []
    return [
        {key: str(group).strip() for key, group in value.items()} if isinstance(value, dict) else str(value).strip()
        for value in values
        if value not in (None, "")
    ]


def replace_identity(dataset: Dataset, members: dict[str, dict[str, Any]]) -> None:
    """Put identity members (DICOM JSON, as stored_header.served_identity gives them) into a
    pydicom dataset in place: for a WADO-RS instance PACS-lite writes anew (transcoded, or
    with the EMR's identity), so the file says what the served metadata says."""
    from pydicom.dataset import Dataset as PydicomDataset  # pydicom loads lazily: a render never needs this

    for element in PydicomDataset.from_json(members):
        dataset[element.tag] = element
