"""C-FIND (dimse/query.py) against real clients: dcmtk's findscu and pynetdicom as an SCU.

A pynetdicom AE runs in this process on a free port with handle_find bound, its principal
chosen by the calling AE title (WS1 a workstation, CT1 a modality), as the listener does. The
server's association threads use their own database connections, hence transactional tests.

Three studies of three patients, stored through the one ingest path from re-labelled pydicom
samples (whose own PatientName is the sample's, not the EMR's):
  A  Balogun^Ngozi  2024-01-10  CT series (2 instances) + MR series (1)
  B  Okafor^Chidi   2024-02-15  MR series (1)
  C  Smith^John     2023-12-31  CT series (1)
created in that order, so QIDO's study list (newest first) is C, B, A, and so is C-FIND's.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from apps.radiology.access.principals import DicomNodePrincipal, DicomNodeRole
from apps.radiology.dimse.query import FIND_SOP_CLASSES, handle_find
from apps.radiology.tests.dicomweb.conftest import (  # noqa: F401 (the fixtures)
    API,
    Put,
    Stored,
    World,
    doctor_client,
    patient_order,
    put,
)
from apps.radiology.tests.dicomweb.helpers import QUIET_UID_WARNINGS, json_of

pytestmark = [
    pytest.mark.django_db(transaction=True),
    QUIET_UID_WARNINGS,
    # The SCU side's pydicom warns of the invalid date a test sends on purpose.
    pytest.mark.filterwarnings("ignore:Invalid value for VR DA:UserWarning"),
]

SCP_AE = "PACSLITE"
ROLES = {"WS1": DicomNodeRole.WORKSTATION, "CT1": DicomNodeRole.MODALITY}
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture
def world(put: Put, make_order: Any) -> World:  # noqa: F811 (put is the imported fixture)
    a = patient_order(make_order, "Ngozi", "Balogun", dt.date(1980, 5, 17))
    b = patient_order(make_order, "Chidi", "Okafor", None)
    c = patient_order(make_order, "John", "Smith", dt.date(1955, 1, 2))
    study = {"StudyDate": "20240110", "StudyTime": "093000", "StudyDescription": "CT head"}
    ct = {**study, "SeriesNumber": 1, "SeriesDescription": "Axial"}
    a_ct1 = put("CT_small.dcm", order=a, instance_number=1, **ct)
    a_ct2 = put("CT_small.dcm", order=a, series_uid=a_ct1.series_uid, instance_number=2, **ct)
    a_mr = put("MR_small.dcm", order=a, SeriesNumber=2, SeriesDescription="Sagittal T1", **study)
    b_mr = put("MR_small.dcm", order=b, StudyDate="20240215", StudyDescription="MR knee", SeriesNumber=1)
    c_ct = put("CT_small.dcm", order=c, StudyDate="20231231", StudyDescription="CT chest", SeriesNumber=1)
    return World(a_ct1, a_ct2, a_mr, b_mr, c_ct)


def _principal_of(event: Any) -> DicomNodePrincipal:
    ae_title = event.assoc.requestor.ae_title.strip()
    return DicomNodePrincipal(ae_title, ROLES[ae_title])


@pytest.fixture
def port() -> Iterator[int]:
    """A C-FIND SCP on a free port: handle_find with the principal of the calling AE title."""
    ae = AE(ae_title=SCP_AE)
    for sop_class in FIND_SOP_CLASSES:
        ae.add_supported_context(sop_class)
    handlers = [(evt.EVT_C_FIND, lambda event: handle_find(event, _principal_of(event)))]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def findscu(port: int, folder: Path, *keys: str, model: str = "-S", calling: str = "WS1") -> list[Dataset]:
    """dcmtk's findscu; the response identifiers it extracted, in the order received."""
    folder.mkdir(exist_ok=True)
    arguments = ["findscu", model, "-aet", calling, "-aec", SCP_AE, "-X", "-od", str(folder)]
    for key in keys:
        arguments += ["-k", key]
    command = [*arguments, "127.0.0.1", str(port)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)  # noqa: S603
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(path) for path in sorted(folder.glob("rsp*.dcm"))]


def find(
    port: int, identifier: Dataset, *, model: Any = StudyRootQueryRetrieveInformationModelFind, calling: str = "WS1"
) -> list[tuple[int, Dataset | None, Dataset]]:
    """pynetdicom as an SCU: (status, identifier, the status dataset) of every response."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    association = ae.associate("127.0.0.1", port, ae_title=SCP_AE)
    assert association.is_established
    try:
        return [(int(status.Status), answer, status) for status, answer in association.send_c_find(identifier, model)]
    finally:
        association.release()


def keys(dataset: Dataset) -> dict[str, Any]:
    """A response identifier as keyword -> value (multi-values as lists, names as text)."""
    out: dict[str, Any] = {}
    for element in dataset:
        value = element.value
        if element.VR == "PN":
            value = str(value) if value else ""
        elif isinstance(value, pydicom.multival.MultiValue):
            value = [str(item) for item in value]
        elif value is None:
            value = ""
        out[element.keyword] = value
    return out


def identifier(**elements: Any) -> Dataset:
    dataset = Dataset()
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    return dataset


def hospital_number(stored: Stored) -> str:
    return str(stored.study.radiology_order.visit.patient.hospital_number)


def qido_study_uids(client: Client, **params: str) -> list[str]:
    """QIDO-RS's answer over HTTP (as a doctor) to the same search, as study UIDs in order."""
    response = client.get(f"{API}/studies", params, headers={"Accept": "application/dicom+json"})
    assert response.status_code == 200, response.content
    return [item["0020000D"]["Value"][0] for item in json_of(response)]


# --- STUDY, SERIES, IMAGE with findscu ------------------------------------------------------


def test_findscu_study_level_answers_every_study_with_the_emr_identity(world: World, port: int, tmp_path: Path) -> None:
    answers = findscu(
        port,
        tmp_path / "rsp",
        "QueryRetrieveLevel=STUDY",
        "PatientName",
        "PatientID",
        "StudyDate",
        "StudyDescription",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
        "StudyInstanceUID",
    )
    expected = [
        (world.c_ct, "Smith^John", "20231231", "CT chest", "CT", "1"),
        (world.b_mr, "Okafor^Chidi", "20240215", "MR knee", "MR", "1"),
        (world.a_ct1, "Balogun^Ngozi", "20240110", "CT head", ["CT", "MR"], "3"),
    ]
    assert [keys(answer) for answer in answers] == [
        {
            "SpecificCharacterSet": "ISO_IR 192",
            "StudyDate": date,
            "QueryRetrieveLevel": "STUDY",
            "ModalitiesInStudy": modalities,
            "StudyDescription": description,
            "PatientName": name,
            "PatientID": hospital_number(stored),
            "StudyInstanceUID": stored.study_uid,
            "NumberOfStudyRelatedInstances": instances,
        }
        for stored, name, date, description, modalities, instances in expected
    ]
    # The files' own PatientName is the sample's: the answer is the EMR's.
    assert world.c_ct.dataset().PatientName != "Smith^John"


def test_findscu_series_level_of_one_study(world: World, port: int, tmp_path: Path) -> None:
    answers = findscu(
        port,
        tmp_path / "rsp",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={world.a}",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
        "PatientName",
    )
    assert [keys(answer) for answer in answers] == [
        {
            "SpecificCharacterSet": "ISO_IR 192",
            "QueryRetrieveLevel": "SERIES",
            "Modality": modality,
            "SeriesDescription": description,
            "PatientName": "Balogun^Ngozi",
            "StudyInstanceUID": world.a,
            "SeriesInstanceUID": stored.series_uid,
            "SeriesNumber": number,
            "NumberOfSeriesRelatedInstances": instances,
        }
        for stored, modality, description, number, instances in [
            (world.a_ct1, "CT", "Axial", "1", "2"),
            (world.a_mr, "MR", "Sagittal T1", "2", "1"),
        ]
    ]


def test_findscu_image_level_of_one_series(world: World, port: int, tmp_path: Path) -> None:
    answers = findscu(
        port,
        tmp_path / "rsp",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={world.a}",
        f"SeriesInstanceUID={world.a_ct1.series_uid}",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
        "PatientName",
        "PatientID",
        "RetrieveAETitle",
    )
    assert [keys(answer) for answer in answers] == [
        {
            "SpecificCharacterSet": "ISO_IR 192",
            "SOPClassUID": CT_IMAGE,
            "SOPInstanceUID": stored.image_uid,
            "QueryRetrieveLevel": "IMAGE",
            "RetrieveAETitle": SCP_AE,
            "PatientName": "Balogun^Ngozi",
            "PatientID": hospital_number(world.a_ct1),
            "StudyInstanceUID": world.a,
            "SeriesInstanceUID": world.a_ct1.series_uid,
            "InstanceNumber": number,
        }
        for stored, number in [(world.a_ct1, "1"), (world.a_ct2, "2")]
    ]


def test_findscu_patient_root_patient_and_study_levels(world: World, port: int, tmp_path: Path) -> None:
    patients = findscu(
        port,
        tmp_path / "patients",
        "QueryRetrieveLevel=PATIENT",
        "PatientName=B*",
        "PatientID",
        "NumberOfPatientRelatedStudies",
        model="-P",
    )
    assert [keys(answer) for answer in patients] == [
        {
            "SpecificCharacterSet": "ISO_IR 192",
            "QueryRetrieveLevel": "PATIENT",
            "PatientName": "Balogun^Ngozi",
            "PatientID": hospital_number(world.a_ct1),
            "NumberOfPatientRelatedStudies": "1",
        }
    ]
    studies = findscu(
        port,
        tmp_path / "studies",
        "QueryRetrieveLevel=STUDY",
        f"PatientID={hospital_number(world.b_mr)}",
        "StudyInstanceUID",
        "StudyDate",
        model="-P",
    )
    assert [keys(answer) for answer in studies] == [
        {
            "SpecificCharacterSet": "ISO_IR 192",
            "StudyDate": "20240215",
            "QueryRetrieveLevel": "STUDY",
            "PatientID": hospital_number(world.b_mr),
            "StudyInstanceUID": world.b,
        }
    ]


# --- Matching is QIDO's: pynetdicom as an SCU ----------------------------------------------


@pytest.mark.parametrize(
    ("keys_", "params"),
    [
        ({"PatientName": "bal*"}, {"PatientName": "bal*"}),
        ({"PatientName": "*i"}, {"PatientName": "*i"}),
        ({"PatientName": "?kafor^Chidi"}, {"PatientName": "?kafor^Chidi"}),
        ({"StudyDate": "20240101-20241231"}, {"StudyDate": "20240101-20241231"}),
        ({"StudyDate": "-20240110"}, {"StudyDate": "-20240110"}),
        ({"StudyDate": "20240215-"}, {"StudyDate": "20240215-"}),
        ({"StudyDate": "20231231"}, {"StudyDate": "20231231"}),
        ({"ModalitiesInStudy": ["MR"]}, {"ModalitiesInStudy": "MR"}),
        ({"PatientName": "*"}, {}),
    ],
)
def test_matching_is_qidos(
    world: World,
    port: int,
    doctor_client: Client,  # noqa: F811 (the imported fixture)
    keys_: dict[str, Any],
    params: dict[str, str],
) -> None:
    responses = find(port, identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="", **keys_))
    statuses = [status for status, _answer, _status in responses]
    found = [answer.StudyInstanceUID for status, answer, _ in responses if answer is not None]
    assert statuses == [0xFF00] * len(found) + [0x0000]
    assert found == qido_study_uids(doctor_client, **params)
    assert found  # every case here matches something


def test_uid_list_matching_is_qidos(world: World, port: int, doctor_client: Client) -> None:  # noqa: F811
    responses = find(port, identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=[world.a, world.c]))
    found = [answer.StudyInstanceUID for _status, answer, _ in responses if answer is not None]
    assert found == [world.c, world.a] == qido_study_uids(doctor_client, StudyInstanceUID=f"{world.a},{world.c}")
    images = find(
        port,
        identifier(
            QueryRetrieveLevel="IMAGE",
            SOPInstanceUID=[world.a_ct2.image_uid, world.b_mr.image_uid, world.a_mr.image_uid],
            SOPClassUID=MR_IMAGE,
        ),
    )
    assert [answer.SOPInstanceUID for _status, answer, _ in images if answer is not None] == [
        world.b_mr.image_uid,  # QIDO's order: by series number first
        world.a_mr.image_uid,
    ]


def test_a_key_not_matched_on_is_returned_with_the_pending_warning(world: World, port: int) -> None:
    responses = find(port, identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=world.b, StudyDescription="X*"))
    assert [(status, keys(answer) if answer else None) for status, answer, _ in responses] == [
        (
            0xFF01,
            {
                "SpecificCharacterSet": "ISO_IR 192",
                "QueryRetrieveLevel": "STUDY",
                "StudyDescription": "MR knee",
                "StudyInstanceUID": world.b,
            },
        ),
        (0x0000, None),
    ]


# --- The read door, refusals, cancel ------------------------------------------------------


def test_a_modality_finds_nothing(world: World, port: int) -> None:
    responses = find(port, identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=""), calling="CT1")
    assert [(status, answer) for status, answer, _ in responses] == [(0x0000, None)]


@pytest.mark.parametrize(
    ("model", "elements", "status", "comment"),
    [
        (
            StudyRootQueryRetrieveInformationModelFind,
            {},
            0xA900,
            "QueryRetrieveLevel must be one of STUDY, SERIES, IMAGE.",
        ),
        (
            StudyRootQueryRetrieveInformationModelFind,
            {"QueryRetrieveLevel": "PATIENT"},
            0xA900,
            "QueryRetrieveLevel must be one of STUDY, SERIES, IMAGE.",
        ),
        (
            PatientRootQueryRetrieveInformationModelFind,
            {"QueryRetrieveLevel": "FRAME"},
            0xA900,
            "QueryRetrieveLevel must be one of PATIENT, STUDY, SERIES, IMAGE.",
        ),
        (
            StudyRootQueryRetrieveInformationModelFind,
            {"QueryRetrieveLevel": "STUDY", "StudyDate": "2024"},
            0xC000,
            "StudyDate must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD.",
        ),
        (
            StudyRootQueryRetrieveInformationModelFind,
            {"QueryRetrieveLevel": "SERIES", "SeriesNumber": "3000000000"},
            0xC000,
            "SeriesNumber must be an integer from -2147483648 to 2147483647.",
        ),
    ],
)
def test_an_identifier_that_cannot_be_answered_fails(
    world: World, port: int, model: Any, elements: dict[str, Any], status: int, comment: str
) -> None:
    responses = find(port, identifier(StudyInstanceUID="", **elements), model=model)
    assert [(code, answer, str(full.get("ErrorComment", ""))) for code, answer, full in responses] == [
        (status, None, comment[:64])
    ]


class FakeEvent:
    """What handle_find reads of a pynetdicom event; cancelled once `cancel_after` answers were taken."""

    def __init__(self, dataset: Dataset, cancel_after: int | None = None) -> None:
        self.identifier = dataset
        self.request = Dataset()
        self.request.AffectedSOPClassUID = StudyRootQueryRetrieveInformationModelFind
        self.assoc = None
        self.cancel_after = cancel_after
        self.taken = 0

    @property
    def is_cancelled(self) -> bool:
        return self.cancel_after is not None and self.taken >= self.cancel_after


def run(event: FakeEvent) -> list[tuple[int, Dataset | None]]:
    out = []
    for status, answer in handle_find(event, DicomNodePrincipal("WS1", DicomNodeRole.WORKSTATION)):
        out.append((status, answer))
        event.taken += 1
    return out


def test_cancel_stops_before_the_next_match(world: World) -> None:
    responses = run(FakeEvent(identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=""), cancel_after=1))
    assert [(status, answer.StudyInstanceUID if answer else None) for status, answer in responses] == [
        (0xFF00, world.c),
        (0xFE00, None),
    ]


@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE"])
def test_a_fixed_number_of_queries_whatever_the_number_of_matches(
    put: Put,  # noqa: F811 (the imported fixture)
    make_order: Any,
    level: str,
) -> None:
    def queries() -> tuple[int, int]:
        query = identifier(QueryRetrieveLevel=level, StudyInstanceUID="", PatientName="", SeriesDescription="")
        with CaptureQueriesContext(connection) as context:
            answers = [answer for _status, answer in run(FakeEvent(query)) if answer is not None]
        return len(answers), len(context.captured_queries)

    put("CT_small.dcm", order=make_order())
    one, few = queries()
    for _ in range(3):
        put("CT_small.dcm", order=make_order())
    many, more = queries()
    assert (one, many) == (1, 4)
    assert few == more
