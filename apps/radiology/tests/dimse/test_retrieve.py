"""C-GET and C-MOVE (dimse/retrieve.py) with dcmtk's getscu, movescu and storescp, and pynetdicom as an SCU.

Each test stores instances through the one ingest path (the dicomweb `put` fixture), starts
the listener in this process (conftest.py), retrieves, and asserts the DIMSE statuses and
counts, the bytes received, and the audit events. "Byte-exact" compares the dataset part of
the received file with the stored one's (the receiver writes its own File Meta Information).
"""

from __future__ import annotations

import io
import logging
import shutil
import socket
import subprocess
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from apps.radiology.dimse.retrieve import RETRIEVE_LIMIT
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import AuditEvent, RadiologyOrder
from apps.radiology.operations.large_dicom import write_large_multiframe
from apps.radiology.pacs_lite_service import PACSLiteService
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.dicomweb.conftest import Put, Stored, put  # noqa: F401 (the fixture)
from apps.radiology.tests.dimse.conftest import MODALITY_AE, WORKSTATION_AE, Listener, StartListener
from apps.radiology.tests.dimse.test_listener import dataset_part, run_dcmtk
from apps.radiology.tests.factories import read_stored

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("getscu") is None, reason="dcmtk (make system-packages) is not installed"),
]

SUCCESS = 0x0000
WARNING = 0xB000
ALL_FAILED = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900
PENDING = 0xFF00


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def emr_identity(order: RadiologyOrder) -> dict[str, str]:
    """Patient attributes equal to the EMR's (make_order's patients have no birth date)."""
    patient = order.visit.patient
    return {
        "PatientName": f"{patient.last_name}^{patient.first_name}",
        "PatientID": patient.hospital_number,
        "PatientBirthDate": "",
        "PatientSex": "F",
    }


def retrieve_events() -> list[tuple[str, str, str, str, int, str, str, str, str]]:
    return [
        (e.username, e.role, e.method, e.route, e.status_code, e.outcome, e.study_uid, e.series_uid, e.image_uid)
        for e in AuditEvent.objects.filter(channel="dicom", method__in=("C-GET", "C-MOVE")).order_by("id")
    ]


def getscu(
    listener: Listener, folder: Path, *keys: str, patient_root: bool = False
) -> subprocess.CompletedProcess[str]:
    folder.mkdir(parents=True, exist_ok=True)
    model = ["-P"] if patient_root else ["-S"]
    arguments: list[str] = []
    for key in keys:
        arguments += ["-k", key]
    command = [
        "getscu", "-v", *model, "-aet", WORKSTATION_AE, "-aec", listener.ae_title, "-od", str(folder), *arguments,
        listener.host, str(listener.port),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=300, check=False)  # noqa: S603


def received(folder: Path) -> dict[str, Dataset]:
    """SOP Instance UID -> each dataset a dcmtk receiver wrote, without (FFFC,FFFC) Data Set Trailing
    Padding (dcmtk does not keep it)."""
    return without_padding({path.name: path.read_bytes() for path in sorted(folder.iterdir())})


def stored_datasets(study: list[Stored]) -> dict[str, Dataset]:
    return without_padding({stored.image.image_uid: read_stored(stored.image.file_key) for stored in study})


def without_padding(files: dict[str, bytes]) -> dict[str, Dataset]:
    out = {}
    for content in files.values():
        dataset = pydicom.dcmread(io.BytesIO(content))
        dataset.pop(0xFFFCFFFC, None)
        out[str(dataset.SOPInstanceUID)] = dataset
    return out


@pytest.fixture
def study(put: Put, make_order: MakeOrder) -> list[Stored]:  # noqa: F811 (the imported fixture)
    """Two series of one study (2 + 1 CT instances) whose files carry exactly the EMR's identity."""
    order = make_order()
    identity = emr_identity(order)
    first, second = generate_uid(), generate_uid()
    return [
        put("CT_small.dcm", order=order, series_uid=first, instance_number=1, **identity),
        put("CT_small.dcm", order=order, series_uid=first, instance_number=2, **identity),
        put("CT_small.dcm", order=order, series_uid=second, instance_number=1, **identity),
    ]


# --- C-GET with getscu -------------------------------------------------------------------------


def test_getscu_of_a_study_receives_every_instance(
    dicom_listener: Listener, study: list[Stored], tmp_path: Path
) -> None:
    result = getscu(
        dicom_listener, tmp_path / "got", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study[0].study_uid}"
    )

    assert result.returncode == 0, result.stderr
    # getscu writes what it received without the (FFFC,FFFC) Data Set Trailing Padding.
    assert received(tmp_path / "got") == stored_datasets(study)
    assert "Number of Completed Suboperations : 3" in result.stderr
    assert retrieve_events() == [
        (WORKSTATION_AE, "workstation", "C-GET", "c-get", 200, "allowed", study[0].study_uid, "", "")
    ]


def test_getscu_at_series_and_image_level_and_patient_root(
    dicom_listener: Listener, study: list[Stored], tmp_path: Path
) -> None:
    series_uid = study[0].series_uid
    by_series = getscu(
        dicom_listener, tmp_path / "series", "QueryRetrieveLevel=SERIES", f"SeriesInstanceUID={series_uid}"
    )
    by_image = getscu(
        dicom_listener,
        tmp_path / "image",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={study[0].study_uid}",
        f"SeriesInstanceUID={study[2].series_uid}",
        f"SOPInstanceUID={study[2].image.image_uid}",
    )
    patient_id = study[0].image.series.study.patient_id
    by_patient = getscu(
        dicom_listener, tmp_path / "patient", "QueryRetrieveLevel=PATIENT", f"PatientID={patient_id}", patient_root=True
    )

    assert (by_series.returncode, by_image.returncode, by_patient.returncode) == (0, 0, 0)
    assert set(received(tmp_path / "series")) == {study[0].image.image_uid, study[1].image.image_uid}
    assert set(received(tmp_path / "image")) == {study[2].image.image_uid}
    assert set(received(tmp_path / "patient")) == {stored.image.image_uid for stored in study}
    assert retrieve_events() == [
        (WORKSTATION_AE, "workstation", "C-GET", "c-get", 200, "allowed", "", series_uid, ""),
        (WORKSTATION_AE, "workstation", "C-GET", "c-get", 200, "allowed", study[0].study_uid, study[2].series_uid,
         study[2].image.image_uid),
        (WORKSTATION_AE, "workstation", "C-GET", "c-get", 200, "allowed", "", "", ""),
    ]  # fmt: skip


# --- C-GET with pynetdicom: transfer syntaxes, identity, refusals -------------------------------


def pynetdicom_get(
    listener: Listener,
    identifier: Dataset,
    *,
    syntaxes: list[str],
    calling: str = WORKSTATION_AE,
    model: Any = StudyRootQueryRetrieveInformationModelGet,
) -> tuple[list[tuple[int, Dataset]], list[Dataset]]:
    """(status, status dataset) of every C-GET response, and the datasets received (as sent, raw)."""
    got: list[Dataset] = []

    def on_store(event: Any) -> int:
        # The listener's build_ae turned chunked receiving on (a process-wide pynetdicom setting):
        # the dataset arrives as a file, its bytes exactly as sent after the File Meta Information.
        content = Path(event.dataset_path).read_bytes()
        dataset = pydicom.dcmread(io.BytesIO(content))
        dataset.raw_bytes = dataset_part(content)
        got.append(dataset)
        return SUCCESS

    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    ae.add_requested_context(CTImageStorage, syntaxes)
    assoc = ae.associate(
        listener.host,
        listener.port,
        ae_title=listener.ae_title,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        responses = [(int(status.Status), status) for status, _identifier in assoc.send_c_get(identifier, model)]
    finally:
        assoc.release()
    return responses, got


def study_identifier(study_uid: str, level: str = "STUDY") -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    identifier.StudyInstanceUID = study_uid
    return identifier


def test_a_receiver_of_the_stored_syntax_gets_the_stored_bytes(dicom_listener: Listener, study: list[Stored]) -> None:
    responses, got = pynetdicom_get(
        dicom_listener, study_identifier(study[0].study_uid), syntaxes=[ExplicitVRLittleEndian]
    )

    assert [status for status, _ in responses] == [PENDING, PENDING, PENDING, SUCCESS]
    assert {str(dataset.SOPInstanceUID): dataset.raw_bytes for dataset in got} == {
        stored.image.image_uid: dataset_part(read_stored(stored.image.file_key)) for stored in study
    }


def test_a_receiver_of_implicit_vr_only_gets_implicit_vr_with_the_same_pixels(
    dicom_listener: Listener, study: list[Stored]
) -> None:
    responses, got = pynetdicom_get(
        dicom_listener, study_identifier(study[0].study_uid), syntaxes=[ImplicitVRLittleEndian]
    )

    assert [status for status, _ in responses] == [PENDING, PENDING, PENDING, SUCCESS]
    assert [int(s.NumberOfCompletedSuboperations) for _, s in responses] == [1, 2, 3, 3]
    assert {str(dataset.file_meta.TransferSyntaxUID) for dataset in got} == {ImplicitVRLittleEndian}
    by_uid = {str(dataset.SOPInstanceUID): dataset for dataset in got}
    for stored in study:
        original = pydicom.dcmread(io.BytesIO(stored.content))
        assert by_uid[stored.image.image_uid].PixelData == original.PixelData
        assert by_uid[stored.image.image_uid].PatientID == original.PatientID


def test_a_receiver_that_accepts_no_syntax_of_the_instance_gets_failed_sub_operations(
    dicom_listener: Listener, study: list[Stored]
) -> None:
    responses, got = pynetdicom_get(dicom_listener, study_identifier(study[0].study_uid), syntaxes=[JPEG2000Lossless])

    final_status, final = responses[-1]
    assert got == []
    assert final_status == ALL_FAILED
    assert (int(final.NumberOfFailedSuboperations), int(final.NumberOfCompletedSuboperations)) == (3, 0)
    assert retrieve_events()[-1][4:6] == (502, "error")


def test_an_instance_whose_file_names_another_identity_leaves_with_the_emr_identity(
    dicom_listener: Listener,
    put: Put,  # noqa: F811 (the imported fixture)
    make_order: MakeOrder,
) -> None:
    order = make_order()
    identity = emr_identity(order) | {"PatientName": "FILE^OWN^NAME"}
    stored = put("CT_small.dcm", order=order, **identity)

    responses, got = pynetdicom_get(
        dicom_listener, study_identifier(stored.study_uid), syntaxes=[ExplicitVRLittleEndian]
    )

    assert [status for status, _ in responses] == [PENDING, SUCCESS]
    (dataset,) = got
    patient = order.visit.patient
    assert str(dataset.PatientName) == f"{patient.last_name}^{patient.first_name}"
    (original_attributes,) = dataset.OriginalAttributesSequence
    assert str(original_attributes.ModifiedAttributesSequence[0].PatientName) == "FILE^OWN^NAME"
    assert dataset.PixelData == pydicom.dcmread(io.BytesIO(stored.content)).PixelData


def test_refusals_bad_level_missing_key_and_a_modality_sees_nothing(
    dicom_listener: Listener, study: list[Stored]
) -> None:
    no_level = Dataset()
    no_level.StudyInstanceUID = study[0].study_uid
    no_key = study_identifier("", level="SERIES")
    patient_level = study_identifier(study[0].study_uid, level="PATIENT")  # not in Study Root

    statuses = [
        [status for status, _ in pynetdicom_get(dicom_listener, identifier, syntaxes=[ExplicitVRLittleEndian])[0]]
        for identifier in (no_level, no_key, patient_level)
    ]
    modality_responses, modality_got = pynetdicom_get(
        dicom_listener, study_identifier(study[0].study_uid), syntaxes=[ExplicitVRLittleEndian], calling=MODALITY_AE
    )

    assert statuses == [[IDENTIFIER_DOES_NOT_MATCH]] * 3
    assert ([status for status, _ in modality_responses], modality_got) == ([SUCCESS], [])
    assert [event[:6] for event in retrieve_events()] == [
        (WORKSTATION_AE, "workstation", "C-GET", "c-get", 400, "rejected"),
        (WORKSTATION_AE, "workstation", "C-GET", "c-get", 400, "rejected"),
        (WORKSTATION_AE, "workstation", "C-GET", "c-get", 400, "rejected"),
        (MODALITY_AE, "modality", "C-GET", "c-get", 200, "allowed"),
    ]


def test_patient_root_get_by_patient_id(dicom_listener: Listener, study: list[Stored]) -> None:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = study[0].image.series.study.patient_id

    responses, got = pynetdicom_get(
        dicom_listener, identifier, syntaxes=[ExplicitVRLittleEndian], model=PatientRootQueryRetrieveInformationModelGet
    )

    assert responses[-1][0] == SUCCESS
    assert sorted(str(d.SOPInstanceUID) for d in got) == sorted(s.image.image_uid for s in study)


def test_the_retrieve_limit_is_a_sub_operation_count() -> None:
    assert 0 < RETRIEVE_LIMIT <= 65535  # PS3.7: the counts are US


# --- C-MOVE with movescu to a storescp ---------------------------------------------------------


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk's storescp on a free port, writing what it receives to a folder; stopped after."""
    port, folder = free_port(), tmp_path / "storescp"
    folder.mkdir()
    process = subprocess.Popen(  # noqa: S603 (dcmtk with the test's own arguments)
        [shutil.which("storescp") or "storescp", "-aet", WORKSTATION_AE, "-od", str(folder), "+xa", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port, folder
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_movescu_sends_a_study_to_the_workstations_storage_port(
    start_dicom_listener: StartListener, study: list[Stored], storescp: tuple[int, Path], tmp_path: Path
) -> None:
    port, folder = storescp
    listener = start_dicom_listener(f"{MODALITY_AE}@127.0.0.1:modality,{WORKSTATION_AE}@127.0.0.1:workstation:{port}")

    result = run_dcmtk(
        "movescu", "-v", "-S", "-aet", WORKSTATION_AE, "-aec", listener.ae_title, "-aem", WORKSTATION_AE,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study[0].study_uid}",
        listener.host, str(listener.port),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert received(folder) == stored_datasets(study)
    assert retrieve_events() == [
        (WORKSTATION_AE, "workstation", "C-MOVE", "c-move", 200, "allowed", study[0].study_uid, "", "")
    ]


def test_a_move_to_an_unknown_destination_is_refused(dicom_listener: Listener, study: list[Stored]) -> None:
    ae = AE(ae_title=WORKSTATION_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(dicom_listener.host, dicom_listener.port, ae_title=dicom_listener.ae_title)
    assert assoc.is_established
    try:
        statuses = [
            int(status.Status)
            for status, _ in assoc.send_c_move(
                study_identifier(study[0].study_uid), "NOBODY", StudyRootQueryRetrieveInformationModelMove
            )
        ]
    finally:
        assoc.release()

    assert statuses == [MOVE_DESTINATION_UNKNOWN]
    assert [event[:6] for event in retrieve_events()] == [
        (WORKSTATION_AE, "workstation", "C-MOVE", "c-move", 400, "rejected")
    ]


# --- A large instance is sent from its file, not from memory -----------------------------------


def big_ct(path: Path, order: RadiologyOrder, *, frames: int, rows: int = 512, columns: int = 512) -> None:
    """A multi-frame 16-bit CT of the order's patient, written header first, then its pixel data frame by frame."""
    write_large_multiframe(
        path,
        frames=frames,
        rows=rows,
        columns=columns,
        SOPClassUID=CTImageStorage,
        SOPInstanceUID=generate_uid(),
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        AccessionNumber=order.accession_number,
        StudyDate="20040119",
        Modality="CT",
        SeriesNumber=1,
        InstanceNumber=1,
        **emr_identity(order),
    )


def test_a_64_mib_instance_is_sent_without_holding_it_in_memory(
    dicom_listener: Listener, make_order: MakeOrder, tmp_path: Path
) -> None:
    order = make_order()
    path = tmp_path / "big.dcm"
    big_ct(path, order, frames=128)  # 128 x 512 KiB = 64 MiB of pixel data
    with path.open("rb") as stream:
        image = PACSLiteService.ingest_image(order=order, stream=stream, filename="big.dcm", uploaded_by=None).image
    path.unlink()

    # getscu receives in another process: what is traced is the listener's sending alone.
    tracemalloc.start()
    try:
        result = getscu(
            dicom_listener,
            tmp_path / "got",
            "QueryRetrieveLevel=STUDY",
            f"StudyInstanceUID={image.series.study.study_uid}",
        )
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.returncode == 0, result.stderr
    (got,) = (tmp_path / "got").iterdir()
    assert got.stat().st_size >= image.file_size - 1024
    assert pydicom.dcmread(got, stop_before_pixels=True).SOPInstanceUID == image.image_uid
    assert peak < 16 * 1024 * 1024, peak


# --- No patient data in logs -------------------------------------------------------------------


def test_no_patient_name_or_id_reaches_the_logs_whatever_pynetdicoms_log_level(
    dicom_listener: Listener, study: list[Stored], caplog: pytest.LogCaptureFixture
) -> None:
    """pynetdicom logs request and response identifiers unless told not to (listener.build_ae does)."""
    caplog.set_level(logging.DEBUG, logger="pynetdicom")
    caplog.set_level(logging.DEBUG, logger="apps.radiology")
    patient = study[0].image.series.study
    ae = AE(ae_title=WORKSTATION_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(dicom_listener.host, dicom_listener.port, ae_title=dicom_listener.ae_title)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = patient.patient_dicom_name[:4] + "*"
    query.PatientID = patient.patient_id
    try:
        answers = [answer for _status, answer in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
    finally:
        assoc.release()
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = patient.patient_id
    responses, got = pynetdicom_get(
        dicom_listener, identifier, syntaxes=[ExplicitVRLittleEndian], model=PatientRootQueryRetrieveInformationModelGet
    )

    assert [str(answer.PatientID) for answer in answers if answer is not None] == [patient.patient_id]
    assert (responses[-1][0], len(got)) == (SUCCESS, 3)
    assert "pynetdicom" in caplog.text  # it did log, at DEBUG
    for secret in (patient.patient_id, patient.patient_dicom_name, patient.patient_dicom_name.split("^")[0]):
        assert secret not in caplog.text
