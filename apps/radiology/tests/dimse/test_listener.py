"""The DICOM listener with real third-party clients (dcmtk's echoscu, storescu) and pynetdicom as an SCU.

Each test starts the listener in this process (conftest.py) and asserts the DIMSE outcome,
the rows, the audit events and the stored bytes. "Byte-exact" is checked on the dataset: the
stored Part 10 file's dataset bytes (after its File Meta Information, which the listener
writes from the association's presentation context) equal the sent file's dataset bytes, the
transfer syntax being the same (storescu sends the file's own, Explicit VR Little Endian). The
test files carry no Data Set Trailing Padding, which storescu would drop before sending.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import AuditEvent, RadiologyImage, RadiologyOrder, UnmatchedImage
from apps.radiology.operations.demo import relabelled_dicom
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.dimse.conftest import MODALITY_AE, WORKSTATION_AE, Listener, StartListener
from apps.radiology.tests.factories import read_stored

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk (make system-packages) is not installed"),
]

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NOT_AUTHORIZED = 0x0124
CANNOT_UNDERSTAND = 0xC000


def dataset_part(content: bytes) -> bytes:
    """The dataset bytes of a Part 10 file: after the preamble, "DICM" and the File Meta group."""
    assert content[128:132] == b"DICM"
    assert content[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) File Meta Information Group Length, UL
    (group_length,) = struct.unpack("<I", content[140:144])
    return content[144 + group_length :]


def without_trailing_padding(content: bytes) -> bytes:
    """The file without its (FFFC,FFFC) Data Set Trailing Padding, which storescu drops when it
    sends (so what it sends is then exactly the file's dataset)."""
    dataset = pydicom.dcmread(io.BytesIO(content))
    if 0xFFFCFFFC in dataset:
        del dataset[0xFFFCFFFC]
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def ct_file(*, accession: str = "", patient_id: str = "", study_uid: str = "", instance: int = 1) -> bytes:
    return without_trailing_padding(
        relabelled_dicom(
            "CT_small.dcm",
            study_uid=study_uid or generate_uid(),
            series_uid=generate_uid(),
            instance_number=instance,
            accession_number=accession,
            patient_id=patient_id,
        )
    )


def run_dcmtk(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (dcmtk with the test's own arguments)
        [str(arg) for arg in args], capture_output=True, text=True, timeout=120, check=False
    )


def storescu(listener: Listener, *paths: Path, calling: str = MODALITY_AE, scan_dirs: bool = False) -> None:
    options = ["+sd", "+r"] if scan_dirs else []
    result = run_dcmtk(
        "storescu", "-aet", calling, "-aec", listener.ae_title, *options, listener.host, str(listener.port), *paths
    )
    assert result.returncode == 0, result.stderr


def pynetdicom_store(listener: Listener, dataset: Dataset | Path, *, calling: str = MODALITY_AE) -> tuple[int, str]:
    """(status, error comment) of one C-STORE sent with pynetdicom as the SCU."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(listener.host, listener.port, ae_title=listener.ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(dataset)
    finally:
        assoc.release()
    return int(status.Status), str(status.get("ErrorComment", ""))


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# The audit event of an association let in (one per association, before its operations').
MODALITY_IN = (MODALITY_AE, "modality", "write", "ASSOCIATE", "127.0.0.1", 200, "allowed")
WORKSTATION_IN = (WORKSTATION_AE, "workstation", "read", "ASSOCIATE", "127.0.0.1", 200, "allowed")


def dicom_events() -> list[tuple[str, str, str, str, str, int, str]]:
    return [
        (event.username, event.role, event.action, event.method, event.client_address, event.status_code, event.outcome)
        for event in AuditEvent.objects.filter(channel="dicom").order_by("id")
    ]


# --- Associations and C-ECHO -------------------------------------------------------------------


def test_echo_from_a_known_node_succeeds(dicom_listener: Listener) -> None:
    result = run_dcmtk(
        "echoscu", "-aet", MODALITY_AE, "-aec", dicom_listener.ae_title, "127.0.0.1", dicom_listener.port
    )
    assert result.returncode == 0, result.stderr
    assert dicom_events() == [MODALITY_IN]


def test_an_unknown_ae_title_is_rejected_at_association_and_audited(dicom_listener: Listener) -> None:
    result = run_dcmtk("echoscu", "-aet", "STRANGER", "-aec", dicom_listener.ae_title, "127.0.0.1", dicom_listener.port)

    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr
    assert dicom_events() == [("STRANGER", "unknown_dicom_node", "read", "ASSOCIATE", "127.0.0.1", 403, "denied")]
    # The listener keeps serving.
    assert run_dcmtk("echoscu", "-aet", MODALITY_AE, "127.0.0.1", dicom_listener.port).returncode == 0


def test_a_known_ae_title_from_an_unlisted_address_is_rejected(start_dicom_listener: StartListener) -> None:
    listener = start_dicom_listener("CT_ELSEWHERE@192.0.2.7:modality")
    ae = AE(ae_title="CT_ELSEWHERE")
    ae.add_requested_context(Verification)
    assoc = ae.associate(listener.host, listener.port, ae_title=listener.ae_title)

    assert assoc.is_rejected
    assert (assoc.acceptor.primitive.result, assoc.acceptor.primitive.result_source) == (0x01, 0x01)
    assert assoc.acceptor.primitive.diagnostic == 0x03  # calling AE title not recognized
    assert dicom_events() == [("CT_ELSEWHERE", "modality", "write", "ASSOCIATE", "127.0.0.1", 403, "denied")]


def test_the_demo_switch_lets_any_ae_title_in_from_loopback(start_dicom_listener: StartListener) -> None:
    listener = start_dicom_listener("", local_role="modality")
    result = run_dcmtk("echoscu", "-aet", "ANY_LOCAL_AE", "127.0.0.1", listener.port)
    assert result.returncode == 0, result.stderr


# --- C-STORE -----------------------------------------------------------------------------------


def test_storescu_of_one_file_stores_it_under_the_order_of_its_accession(
    dicom_listener: Listener, make_order: MakeOrder, tmp_path: Path
) -> None:
    order = make_order()
    content = ct_file(accession=order.accession_number, patient_id=order.visit.patient.hospital_number)
    storescu(dicom_listener, write(tmp_path, "ct.dcm", content))

    image = RadiologyImage.objects.select_related("series__study").get()
    assert image.series.study.radiology_order_id == order.pk
    assert image.image_uid == pydicom.dcmread(tmp_path / "ct.dcm").SOPInstanceUID
    stored = read_stored(image.file_key)
    assert dataset_part(stored) == dataset_part(content)
    meta = pydicom.dcmread(tmp_path / "ct.dcm").file_meta
    stored_meta = pydicom.filereader.read_file_meta_info(write(tmp_path, "stored.dcm", stored))
    assert stored_meta.TransferSyntaxUID == meta.TransferSyntaxUID
    assert stored_meta.MediaStorageSOPClassUID == CTImageStorage
    assert stored_meta.MediaStorageSOPInstanceUID == image.image_uid
    assert UnmatchedImage.objects.count() == 0
    assert dicom_events() == [MODALITY_IN, (MODALITY_AE, "modality", "write", "C-STORE", "127.0.0.1", 201, "allowed")]
    event = AuditEvent.objects.get(channel="dicom", method="C-STORE")
    assert (event.image_id, event.order_id, event.image_uid) == (image.pk, order.pk, image.image_uid)


def test_storescu_of_a_folder_and_an_identical_repeat(
    dicom_listener: Listener, make_order: MakeOrder, tmp_path: Path
) -> None:
    order = make_order()
    study_uid = generate_uid()
    hospital_number = order.visit.patient.hospital_number
    files = {
        f"study/ct_{number}.dcm": ct_file(
            accession=order.accession_number, patient_id=hospital_number, study_uid=study_uid, instance=number
        )
        for number in (1, 2, 3)
    }
    files["study/mr/mr_1.dcm"] = without_trailing_padding(
        relabelled_dicom(
            "MR_small.dcm",
            study_uid=study_uid,
            series_uid=generate_uid(),
            instance_number=1,
            accession_number=order.accession_number,
            patient_id=hospital_number,
        )
    )
    for name, content in files.items():
        write(tmp_path, name, content)

    storescu(dicom_listener, tmp_path / "study", scan_dirs=True)
    storescu(dicom_listener, tmp_path / "study", scan_dirs=True)  # the same again: success, nothing new

    images = RadiologyImage.objects.select_related("series__study").all()
    assert {image.series.study.study_uid for image in images} == {study_uid}
    assert sorted(dataset_part(read_stored(image.file_key)) for image in images) == sorted(
        dataset_part(content) for content in files.values()
    )
    assert {image.sop_class_uid for image in images} == {CTImageStorage, MRImageStorage}
    assert [status for *_, status, _outcome in dicom_events()] == [200] + [201] * 4 + [200] + [200] * 4


def test_many_files_in_one_association(dicom_listener: Listener, make_order: MakeOrder, tmp_path: Path) -> None:
    order = make_order()
    study_uid = generate_uid()
    contents = [
        ct_file(
            accession=order.accession_number,
            patient_id=order.visit.patient.hospital_number,
            study_uid=study_uid,
            instance=number,
        )
        for number in range(1, 21)
    ]
    paths = [write(tmp_path, f"ct_{number}.dcm", content) for number, content in enumerate(contents)]
    storescu(dicom_listener, *paths)  # storescu sends every file it is given in one association

    assert RadiologyImage.objects.filter(series__study__radiology_order=order).count() == 20
    stored = sorted(dataset_part(read_stored(image.file_key)) for image in RadiologyImage.objects.all())
    assert stored == sorted(dataset_part(content) for content in contents)


def test_an_instance_with_no_matching_order_is_held_unmatched(dicom_listener: Listener, tmp_path: Path) -> None:
    content = ct_file(accession="NOSUCHACC1", patient_id="WALK-IN-1")
    storescu(dicom_listener, write(tmp_path, "ct.dcm", content))

    held = UnmatchedImage.objects.get()
    assert (held.source, held.accession_number, held.patient_id) == ("dicom", "NOSUCHACC1", "WALK-IN-1")
    assert held.status == UnmatchedImage.Status.PENDING
    assert dataset_part(read_stored(held.file_key)) == dataset_part(content)
    assert RadiologyImage.objects.count() == 0
    assert dicom_events()[-1] == (MODALITY_AE, "modality", "write", "C-STORE", "127.0.0.1", 202, "allowed")
    assert AuditEvent.objects.get(channel="dicom", method="C-STORE").unmatched_id == held.pk


def test_an_instance_naming_another_patient_is_held_unmatched_not_refused(
    dicom_listener: Listener, make_order: MakeOrder, tmp_path: Path
) -> None:
    order, other = make_order(), make_order()
    content = ct_file(accession=order.accession_number, patient_id=other.visit.patient.hospital_number)
    storescu(dicom_listener, write(tmp_path, "ct.dcm", content))

    held = UnmatchedImage.objects.get()
    assert (held.accession_number, held.patient_id) == (order.accession_number, other.visit.patient.hospital_number)
    assert RadiologyImage.objects.count() == 0
    assert not RadiologyOrder.objects.filter(pk=order.pk, study__isnull=False).exists()
    assert dicom_events()[-1][-2:] == (202, "allowed")


def test_a_conflicting_instance_gets_a_failure_status_with_a_comment(
    dicom_listener: Listener, make_order: MakeOrder, tmp_path: Path
) -> None:
    order = make_order()
    content = ct_file(accession=order.accession_number, patient_id=order.visit.patient.hospital_number)
    first = pydicom.dcmread(write(tmp_path, "first.dcm", content))
    assert pynetdicom_store(dicom_listener, first) == (SUCCESS, "")
    stored_before = read_stored(RadiologyImage.objects.get().file_key)

    changed = pydicom.dcmread(tmp_path / "first.dcm")
    changed.SeriesDescription = "other bytes, same SOP Instance UID"
    status, comment = pynetdicom_store(dicom_listener, changed)

    assert (status, comment) == (PROCESSING_FAILURE, "An image with this UID is already stored with different content.")
    assert read_stored(RadiologyImage.objects.get().file_key) == stored_before
    assert dicom_events()[-1] == (MODALITY_AE, "modality", "write", "C-STORE", "127.0.0.1", 409, "rejected")


def test_a_workstation_may_not_store(dicom_listener: Listener, make_order: MakeOrder, tmp_path: Path) -> None:
    order = make_order()
    dataset = pydicom.dcmread(write(tmp_path, "ct.dcm", ct_file(accession=order.accession_number)))

    assert pynetdicom_store(dicom_listener, dataset, calling=WORKSTATION_AE) == (
        NOT_AUTHORIZED,
        "Only a modality may store",
    )
    assert RadiologyImage.objects.count() == UnmatchedImage.objects.count() == 0
    assert dicom_events() == [
        WORKSTATION_IN,
        (WORKSTATION_AE, "workstation", "write", "C-STORE", "127.0.0.1", 403, "denied"),
    ]


def test_a_malformed_dataset_is_refused_and_the_listener_keeps_serving(
    dicom_listener: Listener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = ct_file(accession="NOSUCHACC2")
    truncated = write(tmp_path, "truncated.dcm", content[: len(content) // 2])
    # Sent as the raw bytes of the file (no decoding on the sending side), as a faulty modality would.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    status, comment = pynetdicom_store(dicom_listener, truncated)

    assert status == CANNOT_UNDERSTAND
    assert comment == "The file ends before its content does."
    assert RadiologyImage.objects.count() == UnmatchedImage.objects.count() == 0
    assert dicom_events() == [MODALITY_IN, (MODALITY_AE, "modality", "write", "C-STORE", "127.0.0.1", 400, "rejected")]
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
    whole = pydicom.dcmread(write(tmp_path, "whole.dcm", content))
    assert pynetdicom_store(dicom_listener, whole) == (SUCCESS, "")
    assert UnmatchedImage.objects.count() == 1


def test_a_workstation_finds_what_a_modality_stored_and_the_modality_finds_nothing(
    dicom_listener: Listener, make_order: MakeOrder, tmp_path: Path
) -> None:
    """C-FIND through the listener itself (query.py's own tests cover the matching rules)."""
    order = make_order()
    content = ct_file(accession=order.accession_number, patient_id=order.visit.patient.hospital_number)
    storescu(dicom_listener, write(tmp_path, "ct.dcm", content))
    study = RadiologyImage.objects.select_related("series__study").get().series.study

    def findscu(calling: str) -> list[Dataset]:
        ae = AE(ae_title=calling)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate(dicom_listener.host, dicom_listener.port, ae_title=dicom_listener.ae_title)
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        query.PatientID = ""
        query.PatientName = ""
        try:
            answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
        finally:
            assoc.release()
        assert answers[-1][0].Status == 0x0000
        return [identifier for status, identifier in answers[:-1]]

    [found] = findscu(WORKSTATION_AE)
    assert (found.StudyInstanceUID, found.PatientID, str(found.PatientName)) == (
        study.study_uid,
        study.patient_id,
        study.patient_dicom_name,
    )
    assert findscu(MODALITY_AE) == []
