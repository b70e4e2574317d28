"""The DICOM listener with Orthanc on the other end: as a modality (C-STORE) and as a workstation (C-FIND, C-MOVE).

Debian's Orthanc (1.10, `make test` installs it: scripts/system_packages.sh) is started by each
test with its own JSON configuration on free ports, storage and index in tmp_path, its DICOM
server on (Orthanc 1.10 has no bind address: it listens on every interface, so
RemoteAccessAllowed is false and the listener lets in 127.0.0.1 only). The test drives it
through its REST API on loopback, as a person would from Orthanc Explorer:

- ORTHANC_CT, a modality in PACS-lite's node list, stores with POST /modalities/pacs/store;
- ORTHANC_WS, a workstation whose C-MOVE port is its own DICOM port, queries with
  POST /modalities/pacs/query and retrieves into itself with POST /queries/{id}/retrieve
  and POST /modalities/pacs/move.

Each test asserts what PACS-lite stored (rows, dataset bytes, the unmatched inbox), the audit
trail, and the outcome Orthanc reports to its own user. C-MOVE is retrieve.py's (issue 18's
design: the instance sent byte-exact in its stored transfer syntax when the receiver takes it
and the file already carries the EMR's patient identity).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import AuditEvent, RadiologyImage, RadiologyOrder, UnmatchedImage
from apps.radiology.tests.app_server import free_port
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.dimse.conftest import Listener, StartListener
from apps.radiology.tests.dimse.test_listener import ct_file, dataset_part, dicom_events
from apps.radiology.tests.factories import edited, read_stored

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        shutil.which("Orthanc") is None, reason="Orthanc is not installed: run scripts/system_packages.sh as root"
    ),
]

MODALITY_AE = "ORTHANC_CT"
WORKSTATION_AE = "ORTHANC_WS"
PACS = "pacs"  # the name of PACS-lite in each Orthanc's DicomModalities
START_SECONDS = 60
WORKSTATION_READ = (WORKSTATION_AE, "workstation", "read")
LOOPBACK_OK = ("127.0.0.1", 200, "allowed")  # the client address, status and outcome of an answered request


@dataclass(frozen=True)
class Orthanc:
    """One running Orthanc: its REST base URL, AE title and DICOM port."""

    base: str
    ae_title: str
    dicom_port: int

    def post(self, path: str, body: Any) -> requests.Response:
        return requests.post(f"{self.base}{path}", data=json.dumps(body), timeout=120)

    def get(self, path: str) -> Any:
        response = requests.get(f"{self.base}{path}", timeout=60)
        assert response.status_code == 200, response.text
        return response.json() if "json" in response.headers.get("Content-Type", "") else response.content

    def upload(self, content: bytes) -> dict[str, Any]:
        response = requests.post(f"{self.base}/instances", data=content, timeout=60)
        assert response.status_code == 200, response.text
        uploaded: dict[str, Any] = response.json()
        assert uploaded["Status"] == "Success", uploaded
        return uploaded

    def instance_files(self) -> dict[str, bytes]:
        """SOP Instance UID -> the file Orthanc holds, for every instance it has."""
        files = {}
        for instance in self.get("/instances"):
            uid = self.get(f"/instances/{instance}/simplified-tags")["SOPInstanceUID"]
            files[uid] = self.get(f"/instances/{instance}/file")
        return files


StartOrthanc = Callable[[str, int, Listener], Orthanc]


@pytest.fixture
def start_orthanc(tmp_path: Path) -> Iterator[StartOrthanc]:
    """Factory: an Orthanc with AE title `ae_title` on DICOM port `dicom_port`, PACS-lite (`listener`)
    its one modality "pacs"; every Orthanc started is stopped (its whole process group) after the test."""
    processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def _start(ae_title: str, dicom_port: int, listener: Listener) -> Orthanc:
        folder = tmp_path / f"orthanc-{ae_title.lower()}"
        folder.mkdir()
        http_port = free_port()
        config = {
            "Name": ae_title,
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "HttpPort": http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": ae_title,
            "DicomPort": dicom_port,
            "DicomModalities": {PACS: [listener.ae_title, listener.host, listener.port]},
            # Orthanc takes what a C-MOVE sends it back from PACS-lite (a modality it knows by AE title).
            "DicomAlwaysAllowStore": True,
            "DicomCheckModalityHost": False,
            "DicomScuTimeout": 60,
            "SaveJobs": False,
            "Plugins": [],
        }
        config_path = folder / "orthanc.json"
        config_path.write_text(json.dumps(config))
        log_path = folder / "orthanc.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(  # noqa: S603 (Orthanc with the test's own configuration)
                [str(shutil.which("Orthanc")), "--verbose", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        processes.append((process, log_path))
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + START_SECONDS
        while True:
            assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/system", timeout=2).ok:
                    return Orthanc(base, ae_title, dicom_port)
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.1)

    yield _start
    for process, _log in processes:  # all told first: each takes a few seconds to stop
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    for process, _log in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@dataclass(frozen=True)
class Setup:
    listener: Listener
    modality: Orthanc
    workstation: Orthanc


@pytest.fixture
def orthancs(start_dicom_listener: StartListener, start_orthanc: StartOrthanc) -> Setup:
    """The listener knowing both Orthancs (the workstation's C-MOVE port: its DICOM port), then both Orthancs."""
    modality_port, workstation_port = free_port(), free_port()
    listener = start_dicom_listener(
        f"{MODALITY_AE}@127.0.0.1:modality,{WORKSTATION_AE}@127.0.0.1:workstation:{workstation_port}"
    )
    return Setup(
        listener,
        start_orthanc(MODALITY_AE, modality_port, listener),
        start_orthanc(WORKSTATION_AE, workstation_port, listener),
    )


def emr_labelled_study(order: RadiologyOrder, count: int, *, study_uid: str = "") -> list[bytes]:
    """`count` CT instances of one new series (of a new study unless `study_uid`) for `order`: its
    accession, and exactly its patient's EMR identity (so PACS-lite serves them byte-exact, with
    nothing to coerce)."""
    patient = order.visit.patient
    study_uid, series_uid = study_uid or generate_uid(), generate_uid()
    return [
        edited(
            ct_file(accession=order.accession_number, patient_id=patient.hospital_number, study_uid=study_uid),
            SeriesInstanceUID=series_uid,
            InstanceNumber=number,
            PatientName=patient.dicom_name,
            PatientSex=patient.sex,
            PatientBirthDate=None,
        )
        for number in range(1, count + 1)
    ]


def uid_of(content: bytes) -> str:
    return uids_of(content)[2]


def stored_datasets() -> dict[str, bytes]:
    """SOP Instance UID -> the dataset part of the file PACS-lite stored, for every image row."""
    return {image.image_uid: dataset_part(read_stored(image.file_key)) for image in RadiologyImage.objects.all()}


def store_from_modality(orthanc: Orthanc, resources: list[str]) -> requests.Response:
    return orthanc.post(f"/modalities/{PACS}/store", {"Resources": resources, "Synchronous": True})


# --- Orthanc as a modality: C-STORE ------------------------------------------------------------


def test_orthanc_stores_a_study_by_c_store_into_its_order(orthancs: Setup, make_order: MakeOrder) -> None:
    order = make_order()
    files = emr_labelled_study(order, 3)
    study = {orthancs.modality.upload(content)["ParentStudy"] for content in files}

    sent = store_from_modality(orthancs.modality, sorted(study))

    assert sent.status_code == 200, sent.text
    report = sent.json()
    assert (report["InstancesCount"], report["FailedInstancesCount"]) == (3, 0)
    assert (report["LocalAet"], report["RemoteAet"]) == (MODALITY_AE, orthancs.listener.ae_title)
    images = RadiologyImage.objects.select_related("series__study")
    assert {image.series.study.radiology_order_id for image in images} == {order.pk}
    assert stored_datasets() == {uid_of(content): dataset_part(content) for content in files}
    assert UnmatchedImage.objects.count() == 0
    assert dicom_events() == [
        (MODALITY_AE, "modality", "write", "ASSOCIATE", "127.0.0.1", 200, "allowed"),
        *[(MODALITY_AE, "modality", "write", "C-STORE", "127.0.0.1", 201, "allowed")] * 3,
    ]
    stored_uids = AuditEvent.objects.filter(method="C-STORE").values_list("image_uid", flat=True)
    assert sorted(stored_uids) == sorted(uid_of(content) for content in files)


def test_orthanc_stores_an_instance_no_order_expects_into_the_unmatched_inbox(orthancs: Setup) -> None:
    content = ct_file(accession="NO-SUCH-ACC", patient_id="WALK-IN-7")
    uploaded = orthancs.modality.upload(content)

    sent = store_from_modality(orthancs.modality, [uploaded["ID"]])

    assert sent.status_code == 200, sent.text
    assert (sent.json()["InstancesCount"], sent.json()["FailedInstancesCount"]) == (1, 0)
    held = UnmatchedImage.objects.get()
    assert (held.source, held.accession_number, held.patient_id, held.image_uid) == (
        "dicom",
        "NO-SUCH-ACC",
        "WALK-IN-7",
        uid_of(content),
    )
    assert dataset_part(read_stored(held.file_key)) == dataset_part(content)
    assert RadiologyImage.objects.count() == 0
    # The association, the inbox's own event (the file held), then the C-STORE's.
    assert dicom_events() == [
        (MODALITY_AE, "modality", "write", "ASSOCIATE", "127.0.0.1", 200, "allowed"),
        ("", "system", "hold", "", None, 201, "allowed"),
        (MODALITY_AE, "modality", "write", "C-STORE", "127.0.0.1", 202, "allowed"),
    ]
    assert AuditEvent.objects.get(method="C-STORE").unmatched_id == held.pk


def test_orthanc_is_told_when_an_instance_conflicts_with_a_stored_one(orthancs: Setup, make_order: MakeOrder) -> None:
    order = make_order()
    (content,) = emr_labelled_study(order, 1)
    first = orthancs.modality.upload(content)
    assert store_from_modality(orthancs.modality, [first["ID"]]).status_code == 200
    stored_before = read_stored(RadiologyImage.objects.get().file_key)
    # Other bytes under the same SOP Instance UID: Orthanc replaces its copy, then sends it.
    changed = edited(content, SeriesDescription="other bytes, same SOP Instance UID")
    requests.delete(f"{orthancs.modality.base}/instances/{first['ID']}", timeout=30).raise_for_status()
    second = orthancs.modality.upload(changed)

    refused = store_from_modality(orthancs.modality, [second["ID"]])

    # Orthanc 1.10 turns the C-STORE's failure status into an HTTP 500 for its own user.
    assert refused.status_code == 500, refused.text
    assert (
        refused.json()["Details"]
        == f'C-STORE SCU to AET "{orthancs.listener.ae_title}" has failed with DIMSE status 0x0110'
    )
    assert read_stored(RadiologyImage.objects.get().file_key) == stored_before
    assert dicom_events()[-1] == (MODALITY_AE, "modality", "write", "C-STORE", "127.0.0.1", 409, "rejected")
    assert UnmatchedImage.objects.count() == 0


# --- Orthanc as a workstation: C-FIND and C-MOVE --------------------------------------------------


def stored_study(setup: Setup, make_order: MakeOrder, count: int) -> tuple[RadiologyOrder, list[bytes]]:
    """A study stored in PACS-lite the way a modality sends it: by Orthanc-the-modality's C-STORE."""
    order = make_order(first_name="Chidi", last_name="Okafor")
    files = emr_labelled_study(order, count)
    resources = [setup.modality.upload(content)["ID"] for content in files]
    assert store_from_modality(setup.modality, resources).status_code == 200
    assert RadiologyImage.objects.filter(series__study__radiology_order=order).count() == count
    return order, files


def query(orthanc: Orthanc, level: str, keys: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
    """Orthanc's C-FIND to PACS-lite: (its query id, each answer's tags, simplified)."""
    response = orthanc.post(f"/modalities/{PACS}/query", {"Level": level, "Query": keys})
    assert response.status_code == 200, response.text
    query_id = response.json()["ID"]
    answers = [
        orthanc.get(f"/queries/{query_id}/answers/{index}/content?simplify")
        for index in orthanc.get(f"/queries/{query_id}/answers")
    ]
    return query_id, answers


def last_event_id() -> int:
    last = AuditEvent.objects.order_by("-id").first()
    return last.pk if last is not None else 0


def read_events(after: int) -> list[tuple[Any, ...]]:
    """The DICOM channel's events after event `after`: who, what, the outcome, and the keys
    (C-FIND) or UIDs (C-MOVE) they name."""
    return [
        (
            event.username,
            event.role,
            event.action,
            event.method,
            event.route,
            event.client_address,
            event.status_code,
            event.outcome,
            event.query_keys,
            event.study_uid,
            event.series_uid,
        )
        for event in AuditEvent.objects.filter(channel="dicom", pk__gt=after).order_by("id")
    ]


WORKSTATION_ASSOCIATES = (*WORKSTATION_READ, "ASSOCIATE", "associate", "127.0.0.1", 200, "allowed", "", "", "")


def find_event(node: tuple[str, str, str], matched_keys: str) -> tuple[Any, ...]:
    """The event of one answered C-FIND by `node` (AE title, role, action): the keys matched on, never their values."""
    return (*node, "C-FIND", "c-find", *LOOPBACK_OK, matched_keys, "", "")


def test_orthanc_finds_a_study_and_its_series_and_a_modality_finds_nothing(
    orthancs: Setup, make_order: MakeOrder
) -> None:
    order, files = stored_study(orthancs, make_order, 2)
    patient = order.visit.patient
    study_uid, series_uid = uids_of(files[0])[:2]
    since = last_event_id()

    _id, studies = query(
        orthancs.workstation,
        "Study",
        {"PatientID": patient.hospital_number, "PatientName": "", "StudyInstanceUID": "", "AccessionNumber": ""},
    )
    _id, series = query(
        orthancs.workstation,
        "Series",
        {"StudyInstanceUID": study_uid, "SeriesInstanceUID": "", "Modality": "", "NumberOfSeriesRelatedInstances": ""},
    )
    _id, nothing = query(orthancs.modality, "Study", {"PatientID": patient.hospital_number, "StudyInstanceUID": ""})

    # PACS-lite answers in ISO_IR 192; Orthanc keeps its answers in its own default encoding (Latin-1).
    assert studies == [
        {
            "AccessionNumber": order.accession_number,
            "PatientID": patient.hospital_number,
            "PatientName": patient.dicom_name,
            "QueryRetrieveLevel": "STUDY",
            "SpecificCharacterSet": "ISO_IR 100",
            "StudyInstanceUID": study_uid,
        }
    ]
    # Orthanc asks for the keys of the levels above too (AccessionNumber, PatientID): PACS-lite fills them.
    assert series == [
        {
            "AccessionNumber": order.accession_number,
            "Modality": "CT",
            "NumberOfSeriesRelatedInstances": "2",
            "PatientID": patient.hospital_number,
            "QueryRetrieveLevel": "SERIES",
            "SeriesInstanceUID": series_uid,
            "SpecificCharacterSet": "ISO_IR 100",
            "StudyInstanceUID": study_uid,
        }
    ]
    assert nothing == []
    # One event per association and per C-FIND, naming the keys matched on (never their values).
    # A search is a read, whoever makes it.
    assert read_events(since) == [
        WORKSTATION_ASSOCIATES,
        find_event(WORKSTATION_READ, "PatientID,QueryRetrieveLevel,SpecificCharacterSet"),
        WORKSTATION_ASSOCIATES,
        find_event(WORKSTATION_READ, "QueryRetrieveLevel,SpecificCharacterSet,StudyInstanceUID"),
        (MODALITY_AE, "modality", "write", "ASSOCIATE", "associate", *LOOPBACK_OK, "", "", ""),
        find_event((MODALITY_AE, "modality", "read"), "PatientID,QueryRetrieveLevel,SpecificCharacterSet"),
    ]


def received_datasets(orthanc: Orthanc) -> dict[str, bytes]:
    """SOP Instance UID -> the dataset part of each file Orthanc holds."""
    return {uid: dataset_part(content) for uid, content in orthanc.instance_files().items()}


def sent_datasets(files: list[bytes]) -> dict[str, bytes]:
    return {uid_of(content): dataset_part(content) for content in files}


def test_orthanc_retrieves_a_study_it_found_into_itself_by_c_move(orthancs: Setup, make_order: MakeOrder) -> None:
    _order, files = stored_study(orthancs, make_order, 3)
    study_uid = uids_of(files[0])[0]
    since = last_event_id()
    query_id, studies = query(orthancs.workstation, "Study", {"StudyInstanceUID": study_uid, "PatientName": ""})
    assert [answer["StudyInstanceUID"] for answer in studies] == [study_uid]

    moved = orthancs.workstation.post(
        f"/queries/{query_id}/retrieve", {"TargetAet": WORKSTATION_AE, "Synchronous": True}
    )

    assert moved.status_code == 200, moved.text
    assert moved.json()["RemoteAet"] == orthancs.listener.ae_title
    # Each instance as PACS-lite stored it (its stored syntax, Explicit VR Little Endian, which
    # Orthanc accepts; the files carry the EMR identity, so nothing is rewritten).
    assert received_datasets(orthancs.workstation) == sent_datasets(files)
    assert stored_datasets() == sent_datasets(files)  # PACS-lite's own copies unchanged
    assert read_events(since) == [
        WORKSTATION_ASSOCIATES,
        find_event(WORKSTATION_READ, "QueryRetrieveLevel,SpecificCharacterSet,StudyInstanceUID"),
        WORKSTATION_ASSOCIATES,
        (*WORKSTATION_READ, "C-MOVE", "c-move", *LOOPBACK_OK, "", study_uid, ""),
    ]


def test_orthanc_moves_one_series_and_a_destination_not_in_the_node_list_is_refused(
    orthancs: Setup, make_order: MakeOrder
) -> None:
    order, files = stored_study(orthancs, make_order, 2)
    study_uid, series_uid = uids_of(files[0])[:2]
    (other,) = emr_labelled_study(order, 1, study_uid=study_uid)  # another series of the study: not asked for
    assert store_from_modality(orthancs.modality, [orthancs.modality.upload(other)["ID"]]).status_code == 200
    assert RadiologyImage.objects.filter(series__study__study_uid=study_uid).count() == 3
    since = last_event_id()

    def move(target: str) -> requests.Response:
        return orthancs.workstation.post(
            f"/modalities/{PACS}/move",
            {
                "Level": "Series",
                "Resources": [{"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}],
                "TargetAet": target,
                "Synchronous": True,
            },
        )

    refused = move("NOT_A_NODE")

    assert refused.status_code == 500, refused.text
    assert refused.json()["Details"] == (
        f'C-MOVE SCU to AET "{orthancs.listener.ae_title}" has failed with DIMSE status 0xA801'
    )
    assert orthancs.workstation.get("/instances") == []

    moved = move(WORKSTATION_AE)

    assert moved.status_code == 200, moved.text
    assert received_datasets(orthancs.workstation) == sent_datasets(files)
    assert read_events(since) == [
        WORKSTATION_ASSOCIATES,
        (*WORKSTATION_READ, "C-MOVE", "c-move", "127.0.0.1", 400, "rejected", "", study_uid, series_uid),
        WORKSTATION_ASSOCIATES,
        (*WORKSTATION_READ, "C-MOVE", "c-move", *LOOPBACK_OK, "", study_uid, series_uid),
    ]


def uids_of(content: bytes) -> tuple[str, str, str]:
    """(study, series, SOP instance) UIDs of a file."""
    header = pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True)
    return str(header.StudyInstanceUID), str(header.SeriesInstanceUID), str(header.SOPInstanceUID)
