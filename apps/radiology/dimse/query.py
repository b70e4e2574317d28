"""C-FIND: workstations search studies, series and instances over DIMSE, with QIDO-RS's own matching.

The listener binds `handle_find` to pynetdicom's EVT_C_FIND for the SOP classes in
FIND_SOP_CLASSES, with the association's principal (a DicomNodePrincipal). A C-FIND identifier
becomes the filters of a QIDO SearchQuery, and the same search functions (dicomweb/qido.py) run
through the read door: UID lists, wildcards, date ranges, the EMR's patient identity and the
fixed number of queries are QIDO's, not a second copy that could drift from it.

Conformance (Query/Retrieve FIND SCP, PS3.4 C.4.1):
- SOP classes: Patient Root and Study Root Query/Retrieve Information Model - FIND.
  Levels: STUDY, SERIES and IMAGE in both; PATIENT in Patient Root (the distinct patients of the
  matching studies). Keys of a level above the query level are matched too (relational-style
  leniency: a Patient Root STUDY query may name the PatientID or not).
- Matching keys: StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, SOPClassUID (UID lists,
  backslash-separated), PatientID, AccessionNumber, Modality, SeriesNumber, InstanceNumber
  (single value), ModalitiesInStudy (any of the values), PatientName (`*` and `?`, case-
  insensitive), StudyDate (a date or a range `A-B`, `A-`, `-B`). A value of only `*` is
  universal matching (as an empty value). Any other key with a value is returned but not matched:
  its matches are sent with status FF01 (pending, optional keys not supported), as the standard says.
- Return keys: every key of the request, filled from what QIDO answers at that level (an
  instance's from its stored header), empty when PACS-lite has no value; plus
  QueryRetrieveLevel, SpecificCharacterSet (ISO_IR 192), the unique keys of the level and the
  levels above, RetrieveAETitle (this listener's AE title) when asked. The patient identity is
  the EMR's (the study row, the stored header), never a file's own.
- Statuses: FF00/FF01 per match, then 0000; FE00 after a C-CANCEL (checked before each match);
  A900 for an identifier without a QueryRetrieveLevel or with a level the model does not have;
  C000 with an ErrorComment for an identifier that cannot be read or a value that cannot be
  matched (an invalid date, a NUL, more than MAX_VALUES UIDs, a non-integer SeriesNumber).
- Bounded: at most MATCH_LIMIT matches (QIDO's MAX_LIMIT, 1000) per request, newest study first
  as QIDO lists them; the rest are not sent (narrow the query). DIMSE has no paging and a final
  warning status (B001) would follow pynetdicom's own final success, so the bound is silent.
- Access: a principal whose read scope is nothing (a modality) finds nothing and gets success
  with zero matches, exactly what the read door shows it; there is no "not allowed" status for
  C-FIND (the listener may also refuse a modality's Q/R presentation contexts at association).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db import close_old_connections
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from apps.radiology.access.principals import Principal
from apps.radiology.dicomweb.qido import (
    INSTANCE_MATCH_KEYS,
    MAX_LIMIT,
    SERIES_MATCH_KEYS,
    STUDY_MATCH_KEYS,
    SearchQuery,
    check_filter,
    search_instances,
    search_series,
    search_studies,
)
from apps.radiology.dimse.audit import record_request
from apps.radiology.dimse.nodes import DicomNode
from apps.radiology.dimse.status import element_values, status_dataset
from apps.radiology.errors import InvalidQuery
from apps.radiology.models import AuditEvent

FIND_SOP_CLASSES = (PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind)
MATCH_LIMIT = MAX_LIMIT

SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_KEYS_NOT_SUPPORTED = 0xFF01
CANCELLED = 0xFE00
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
LEVELS = {
    str(PatientRootQueryRetrieveInformationModelFind): (PATIENT, STUDY, SERIES, IMAGE),
    str(StudyRootQueryRetrieveInformationModelFind): (STUDY, SERIES, IMAGE),
}
# The keys QIDO matches on at each level (a level matches its own keys and those above it).
MATCHED_KEYS = {
    PATIENT: frozenset({"PatientID", "PatientName"}),
    STUDY: STUDY_MATCH_KEYS,
    SERIES: STUDY_MATCH_KEYS | SERIES_MATCH_KEYS,
    IMAGE: STUDY_MATCH_KEYS | SERIES_MATCH_KEYS | INSTANCE_MATCH_KEYS,
}
UNIQUE_KEYS = {
    PATIENT: ("PatientID",),
    STUDY: ("StudyInstanceUID",),
    SERIES: ("StudyInstanceUID", "SeriesInstanceUID"),
    IMAGE: ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}
PATIENT_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
# Not keys to match or return: they describe the request itself.
_NOT_KEYS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})
# Date and time keys: `*` is not universal matching for them (PS3.4 C.2.2.2.4), but a value.
_DATE_TIME_VRS = frozenset({"DA", "TM", "DT"})
_RETRIEVE_AE_TITLE = Tag("RetrieveAETitle")

FindResponse = tuple[int | Dataset, Dataset | None]


def handle_find(event: Any, principal: Principal, node: DicomNode | None = None) -> Iterator[FindResponse]:
    """pynetdicom's EVT_C_FIND handler: (status, identifier) per match, as `principal` may see them.

    A C-FIND is one unit of work like an HTTP request: the association thread's database
    connection is checked before and after (close_old_connections, what Django does around
    requests), and it is one audit event (dimse/audit.py) naming the keys it matched on.
    """
    close_old_connections()
    last_status: int | Dataset = SUCCESS
    try:
        for status, answer in _find(event, principal):
            last_status = status
            yield status, answer
    finally:
        _audit(event, node, last_status)
        close_old_connections()


def _audit(event: Any, node: DicomNode | None, last_status: int | Dataset) -> None:
    status = int(last_status.Status) if isinstance(last_status, Dataset) else last_status
    if status == SUCCESS:
        status_code, outcome = 200, AuditEvent.Outcome.ALLOWED
    elif status == CANCELLED:
        status_code, outcome = 499, AuditEvent.Outcome.ALLOWED
    else:
        status_code, outcome = 400, AuditEvent.Outcome.REJECTED
    try:
        keys = sorted(element.keyword for element in event.identifier if element.keyword and element_values(element))
    except Exception:  # an identifier that could not be read: its keys are not named
        keys = []
    record_request(
        event.assoc,
        node,
        method="C-FIND",
        status_code=status_code,
        outcome=outcome,
        action="read",
        query_keys=",".join(keys)[:255],
    )


def _find(event: Any, principal: Principal) -> Iterator[FindResponse]:
    try:
        identifier: Dataset = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    except Exception:  # a peer's bytes pydicom cannot decode, whatever pydicom raises
        yield status_dataset(UNABLE_TO_PROCESS, "The identifier cannot be decoded."), None
        return
    levels = LEVELS.get(str(event.request.AffectedSOPClassUID), ())
    if level not in levels:
        comment = f"QueryRetrieveLevel must be one of {', '.join(levels)}."
        yield status_dataset(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, comment), None
        return
    try:
        filters, unmatched = _filters(identifier, level)
        matches = _search(level, filters, principal)
    except InvalidQuery as error:
        yield status_dataset(UNABLE_TO_PROCESS, error.detail), None
        return
    except (ValueError, TypeError, KeyError):
        yield status_dataset(UNABLE_TO_PROCESS, "The identifier has a value that cannot be read."), None
        return
    pending = PENDING_KEYS_NOT_SUPPORTED if unmatched else PENDING
    retrieve_ae_title = _own_ae_title(event)
    for attributes in matches:
        if event.is_cancelled:
            yield CANCELLED, None
            return
        yield pending, _answer(identifier, level, attributes, retrieve_ae_title)
    yield SUCCESS, None


def _own_ae_title(event: Any) -> str:
    try:
        return str(event.assoc.acceptor.ae_title).strip()
    except AttributeError:
        return ""


def _filters(identifier: Dataset, level: str) -> tuple[dict[str, list[str]], set[str]]:
    """The identifier's matching keys as QIDO filters, and the keys with a value QIDO does not match on.

    Empty values and a lone `*` (universal matching) ask only for the key to be returned.
    """
    filters: dict[str, list[str]] = {}
    unmatched: set[str] = set()
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in _NOT_KEYS or element.VR == "SQ":
            continue
        values = element_values(element)
        if not values or (values == ["*"] and element.VR not in _DATE_TIME_VRS):
            continue
        if keyword not in MATCHED_KEYS[level]:
            unmatched.add(keyword)
            continue
        check_filter(keyword, values)
        filters[keyword] = values
    return filters, unmatched


def _search(level: str, filters: dict[str, list[str]], principal: Principal) -> list[dict[str, Any]]:
    """QIDO's answer (DICOM JSON per match) at `level`, every attribute QIDO has for it included."""
    query = SearchQuery(filters=filters, include_all=True, limit=MATCH_LIMIT)
    if level == PATIENT:
        return _patients(search_studies(query, principal=principal, url=_no_url))
    if level == STUDY:
        return search_studies(query, principal=principal, url=_no_url)
    if level == SERIES:
        return search_series(query, principal=principal, url=_no_url)
    return search_instances(query, principal=principal, url=_no_url)


def _no_url(*_uids: str) -> str:
    """DIMSE answers carry no RetrieveURL: a workstation retrieves with C-GET."""
    return ""


def _patients(studies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct patients of matching studies (by PatientID, in the studies' order), with their study count."""
    tags = {f"{tag_for_keyword(keyword):08X}" for keyword in PATIENT_ATTRIBUTES}
    patients: dict[str, dict[str, Any]] = {}
    for study in studies:
        patient_id = str(study.get("00100020", {}).get("Value", [""])[0])
        patient = patients.setdefault(patient_id, {tag: value for tag, value in study.items() if tag in tags})
        count = patient.get("00201200", {"vr": "IS", "Value": [0]})["Value"][0] + 1
        patient["00201200"] = {"vr": "IS", "Value": [count]}  # NumberOfPatientRelatedStudies
    return list(patients.values())


def _answer(identifier: Dataset, level: str, attributes: dict[str, Any], retrieve_ae_title: str) -> Dataset:
    """The response identifier: the requested keys (filled or empty), the level, its unique keys."""
    wanted = {element.tag for element in identifier if element.keyword not in _NOT_KEYS}
    wanted |= {Tag(keyword) for keyword in UNIQUE_KEYS[level]}
    found = Dataset.from_json({tag: value for tag, value in attributes.items() if Tag(int(tag, 16)) in wanted})
    answer = Dataset()
    answer.SpecificCharacterSet = "ISO_IR 192"
    answer.QueryRetrieveLevel = level
    requested = {element.tag: element for element in identifier}
    for tag in sorted(wanted):
        if tag in found:
            answer[tag] = found[tag]
        elif tag == _RETRIEVE_AE_TITLE and retrieve_ae_title:
            answer.RetrieveAETitle = retrieve_ae_title
        else:
            vr = requested[tag].VR if tag in requested else dictionary_VR(tag)
            answer.add_new(tag, vr, [] if vr == "SQ" else None)
    return answer
