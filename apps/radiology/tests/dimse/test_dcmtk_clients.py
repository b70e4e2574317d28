"""The DICOM listener with dcmtk's findscu and storescu and pynetdicom, where test_listener.py and
test_query.py leave a gap.

test_query.py runs findscu against a bare C-FIND SCP (query.py's handler with a principal by AE
title); here findscu goes through the listener itself, the node list choosing the principal, at
STUDY, SERIES and IMAGE level, with the audit event of each request. Then the refusals of issue
18, each followed by proof that the listener keeps serving: a workstation that stores (refused,
and the same association still finds), a modality that finds (nothing, and a workstation then
finds), an instance that conflicts with a stored one (refused, and the next file of the same
storescu association is stored), and a full disk (0xA700, nothing written, and the same file
stored once space is freed). An unknown AE title and a malformed dataset are in test_listener.py,
each already followed by a successful association.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind, Verification

from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import AuditEvent, RadiologyImage, RadiologyOrder, UnmatchedImage
from apps.radiology.operations.demo import relabelled_dicom
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.dimse.conftest import MODALITY_AE, WORKSTATION_AE, Listener
from apps.radiology.tests.dimse.test_listener import (
    NOT_AUTHORIZED,
    PROCESSING_FAILURE,
    SUCCESS,
    ct_file,
    dataset_part,
    pynetdicom_store,
    run_dcmtk,
    storescu,
    without_trailing_padding,
    write,
)
from apps.radiology.tests.dimse.test_query import keys as response_keys
from apps.radiology.tests.factories import edited, read_stored, row_counts, stored_keys
from apps.radiology.tests.ingest.test_full_disk import SmallDisk, small_disk  # noqa: F401 (the fixture)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk (make system-packages) is not installed"),
]

OUT_OF_RESOURCES = 0xA700
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
STUDY_DATE = "20240110"
SHORT_OF_DISK = "The server is short of disk space; nothing was saved. Send it again once space is freed."


# --- a study sent by storescu, then found with findscu ---------------------------------------------


def study_files(order: RadiologyOrder) -> dict[str, bytes]:
    """One study of `order`: a CT series (numbers 1, 2) and an MR series (number 1), named by file."""
    study_uid, ct_series, mr_series = generate_uid(), generate_uid(), generate_uid()
    labels = {
        "AccessionNumber": order.accession_number,
        "PatientID": order.visit.patient.hospital_number,
        "StudyDate": STUDY_DATE,
        "StudyDescription": "CT head",
    }
    files = {
        f"study/ct_{number}.dcm": edited(
            ct_file(study_uid=study_uid, instance=number),
            SeriesInstanceUID=ct_series,
            SeriesNumber=1,
            SeriesDescription="Axial",
            **labels,
        )
        for number in (1, 2)
    }
    mr = without_trailing_padding(
        relabelled_dicom("MR_small.dcm", study_uid=study_uid, series_uid=mr_series, instance_number=1)
    )
    files["study/mr/mr_1.dcm"] = edited(mr, SeriesNumber=2, SeriesDescription="Sagittal T1", **labels)
    return files


def findscu(listener: Listener, folder: Path, *keys: str, calling: str = WORKSTATION_AE) -> list[dict[str, Any]]:
    """dcmtk's findscu (Study Root) through the listener; each response identifier as keyword -> value."""
    folder.mkdir()
    arguments = ["findscu", "-S", "-aet", calling, "-aec", listener.ae_title, "-X", "-od", str(folder)]
    for key in keys:
        arguments += ["-k", key]
    result = run_dcmtk(*arguments, listener.host, str(listener.port))
    assert result.returncode == 0, result.stderr
    return [response_keys(pydicom.dcmread(path)) for path in sorted(folder.glob("rsp*.dcm"))]


def find_events() -> list[tuple[str, str, str, str, int, str, str]]:
    return [
        (
            event.username,
            event.role,
            event.action,
            event.client_address,
            event.status_code,
            event.outcome,
            event.query_keys,
        )
        for event in AuditEvent.objects.filter(channel="dicom", method="C-FIND").order_by("id")
    ]


def test_findscu_through_the_listener_at_study_series_and_image_level(
    dicom_listener: Listener, make_order: MakeOrder, tmp_path: Path
) -> None:
    order = make_order(first_name="Ngozi", last_name="Balogun")
    files = study_files(order)
    for name, content in files.items():
        write(tmp_path, name, content)
    storescu(dicom_listener, tmp_path / "study", scan_dirs=True)
    headers = {name: pydicom.dcmread(tmp_path / name, stop_before_pixels=True) for name in files}
    ct1, ct2, mr = headers["study/ct_1.dcm"], headers["study/ct_2.dcm"], headers["study/mr/mr_1.dcm"]
    study_uid, hospital_number = str(ct1.StudyInstanceUID), order.visit.patient.hospital_number
    common = {"SpecificCharacterSet": "ISO_IR 192", "StudyInstanceUID": study_uid}

    studies = findscu(
        dicom_listener,
        tmp_path / "studies",
        "QueryRetrieveLevel=STUDY",
        f"PatientID={hospital_number}",
        "PatientName",
        "StudyDate",
        "StudyDescription",
        "AccessionNumber",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "StudyInstanceUID",
    )
    series = findscu(
        dicom_listener,
        tmp_path / "series",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study_uid}",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
    )
    images = findscu(
        dicom_listener,
        tmp_path / "images",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={study_uid}",
        f"SeriesInstanceUID={ct1.SeriesInstanceUID}",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
        "PatientName",
    )

    assert studies == [
        {
            **common,
            "StudyDate": STUDY_DATE,
            "AccessionNumber": order.accession_number,
            "QueryRetrieveLevel": "STUDY",
            "ModalitiesInStudy": ["CT", "MR"],
            "StudyDescription": "CT head",
            "PatientName": "Balogun^Ngozi",  # the EMR's, not the files' own
            "PatientID": hospital_number,
            "NumberOfStudyRelatedSeries": "2",
            "NumberOfStudyRelatedInstances": "3",
        }
    ]
    assert series == [
        {
            **common,
            "QueryRetrieveLevel": "SERIES",
            "Modality": modality,
            "SeriesDescription": description,
            "SeriesInstanceUID": str(header.SeriesInstanceUID),
            "SeriesNumber": number,
            "NumberOfSeriesRelatedInstances": count,
        }
        for header, modality, description, number, count in [
            (ct1, "CT", "Axial", "1", "2"),
            (mr, "MR", "Sagittal T1", "2", "1"),
        ]
    ]
    assert images == [
        {
            **common,
            "SOPClassUID": CT_IMAGE,
            "SOPInstanceUID": str(header.SOPInstanceUID),
            "QueryRetrieveLevel": "IMAGE",
            "PatientName": "Balogun^Ngozi",
            "SeriesInstanceUID": str(ct1.SeriesInstanceUID),
            "InstanceNumber": number,
        }
        for header, number in [(ct1, "1"), (ct2, "2")]
    ]
    assert str(mr.SOPClassUID) == MR_IMAGE
    # One event per C-FIND, as the calling node, naming the keys matched on (never their values).
    assert find_events() == [
        (WORKSTATION_AE, "workstation", "read", "127.0.0.1", 200, "allowed", keys)
        for keys in (
            "PatientID,QueryRetrieveLevel",
            "QueryRetrieveLevel,StudyInstanceUID",
            "QueryRetrieveLevel,SeriesInstanceUID,StudyInstanceUID",
        )
    ]


def test_a_modality_finds_nothing_and_a_workstation_then_finds_the_study(
    dicom_listener: Listener, make_order: MakeOrder, tmp_path: Path
) -> None:
    order = make_order()
    content = ct_file(accession=order.accession_number, patient_id=order.visit.patient.hospital_number)
    storescu(dicom_listener, write(tmp_path, "ct.dcm", content))
    keys = ("QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID")

    assert findscu(dicom_listener, tmp_path / "modality", *keys, calling=MODALITY_AE) == []
    found = findscu(dicom_listener, tmp_path / "workstation", *keys)

    study = RadiologyImage.objects.select_related("series__study").get().series.study
    assert found == [
        {
            "SpecificCharacterSet": "ISO_IR 192",
            "QueryRetrieveLevel": "STUDY",
            "PatientID": order.visit.patient.hospital_number,
            "StudyInstanceUID": study.study_uid,
        }
    ]
    assert find_events() == [
        (MODALITY_AE, "modality", "read", "127.0.0.1", 200, "allowed", "QueryRetrieveLevel"),
        (WORKSTATION_AE, "workstation", "read", "127.0.0.1", 200, "allowed", "QueryRetrieveLevel"),
    ]


# --- refusals, each followed by more work done -----------------------------------------------------


def test_a_workstation_refused_a_store_still_echoes_and_finds_on_the_same_association(
    dicom_listener: Listener, make_order: MakeOrder, tmp_path: Path
) -> None:
    """pynetdicom as a workstation proposing Verification, CT storage and C-FIND in one association."""
    order = make_order()
    content = ct_file(accession=order.accession_number, patient_id=order.visit.patient.hospital_number)
    storescu(dicom_listener, write(tmp_path, "stored.dcm", content))  # what the workstation will find
    other = pydicom.dcmread(write(tmp_path, "other.dcm", ct_file(accession=order.accession_number)))

    ae = AE(ae_title=WORKSTATION_AE)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(dicom_listener.host, dicom_listener.port, ae_title=dicom_listener.ae_title)
    assert assoc.is_established
    try:
        stored = assoc.send_c_store(other)
        echoed = assoc.send_c_echo()
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()

    assert (stored.Status, stored.ErrorComment) == (NOT_AUTHORIZED, "Only a modality may store")
    assert echoed.Status == SUCCESS
    study = RadiologyImage.objects.select_related("series__study").get().series.study
    assert [(int(status.Status), answer.StudyInstanceUID if answer else None) for status, answer in answers] == [
        (0xFF00, study.study_uid),
        (SUCCESS, None),
    ]
    assert RadiologyImage.objects.filter(image_uid=other.SOPInstanceUID).count() == 0
    assert UnmatchedImage.objects.count() == 0
    assert [
        (event.username, event.method, event.status_code, event.outcome)
        for event in AuditEvent.objects.filter(channel="dicom").order_by("id")
    ] == [
        (MODALITY_AE, "ASSOCIATE", 200, "allowed"),
        (MODALITY_AE, "C-STORE", 201, "allowed"),
        (WORKSTATION_AE, "ASSOCIATE", 200, "allowed"),
        (WORKSTATION_AE, "C-STORE", 403, "denied"),
        (WORKSTATION_AE, "C-FIND", 200, "allowed"),
    ]


def storescu_statuses(listener: Listener, *paths: Path) -> tuple[int, list[str]]:
    """storescu -v of `paths` in one association, going on after a refusal (-nh): its exit code and
    each "Received Store Response" line."""
    result = run_dcmtk(
        "storescu",
        "-v",
        "-nh",
        "-aet",
        MODALITY_AE,
        "-aec",
        listener.ae_title,
        listener.host,
        str(listener.port),
        *paths,
    )
    lines = (result.stdout + result.stderr).splitlines()
    return result.returncode, [
        line.split("Received Store Response", 1)[1].strip() for line in lines if "Received Store Response" in line
    ]


def test_a_conflicting_instance_is_refused_and_the_next_file_of_the_association_is_stored(
    dicom_listener: Listener, make_order: MakeOrder, tmp_path: Path
) -> None:
    order = make_order()
    patient_id = order.visit.patient.hospital_number
    first = write(tmp_path, "first.dcm", ct_file(accession=order.accession_number, patient_id=patient_id))
    storescu(dicom_listener, first)
    stored_before = read_stored(RadiologyImage.objects.get().file_key)
    conflicting = write(
        tmp_path, "conflicting.dcm", edited(first.read_bytes(), SeriesDescription="other bytes, same SOP Instance UID")
    )
    study_uid = str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)
    new = write(
        tmp_path,
        "new.dcm",
        ct_file(accession=order.accession_number, patient_id=patient_id, study_uid=study_uid, instance=2),
    )

    code, responses = storescu_statuses(dicom_listener, conflicting, new)

    # dcmtk names no C-STORE status 0x0110 (Processing Failure) but shows it as it came.
    assert responses == [f"(Unknown Status: 0x{PROCESSING_FAILURE:x})", "(Success)"], responses
    assert code == 0  # with -nh, storescu reports a refused file in its output only
    images = {image.image_uid: image for image in RadiologyImage.objects.all()}
    first_uid = str(pydicom.dcmread(first, stop_before_pixels=True).SOPInstanceUID)
    new_uid = str(pydicom.dcmread(new, stop_before_pixels=True).SOPInstanceUID)
    assert sorted(images) == sorted([first_uid, new_uid])
    assert read_stored(images[first_uid].file_key) == stored_before
    assert dataset_part(read_stored(images[new_uid].file_key)) == dataset_part(new.read_bytes())
    assert [
        (event.method, event.image_uid, event.status_code, event.outcome)
        for event in AuditEvent.objects.filter(channel="dicom").order_by("id")
    ] == [
        ("ASSOCIATE", "", 200, "allowed"),
        ("C-STORE", first_uid, 201, "allowed"),
        ("ASSOCIATE", "", 200, "allowed"),  # one association for both files
        ("C-STORE", first_uid, 409, "rejected"),
        ("C-STORE", new_uid, 201, "allowed"),
    ]


def test_a_full_disk_refuses_with_out_of_resources_and_the_file_is_stored_once_space_is_freed(
    dicom_listener: Listener,
    small_disk: SmallDisk,  # noqa: F811 (the imported fixture)
    make_order: MakeOrder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The staging directory and the store on a small disk (test_full_disk.py's), pynetdicom's
    received file on the staging disk as `run_dicom_listener` puts it."""
    small_disk.staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(small_disk.staging))
    order = make_order()
    content = ct_file(accession=order.accession_number, patient_id=order.visit.patient.hospital_number)
    dataset = pydicom.dcmread(write(tmp_path, "ct.dcm", content))
    small_disk.fill()

    refused = pynetdicom_store(dicom_listener, dataset)

    assert refused == (OUT_OF_RESOURCES, SHORT_OF_DISK[:64])
    assert row_counts() == (0, 0, 0)
    assert UnmatchedImage.objects.count() == 0
    assert stored_keys() == []
    assert small_disk.staging_files() == []  # pynetdicom's received file and ingest's spool both gone

    small_disk.free_up()
    stored = pynetdicom_store(dicom_listener, dataset)

    assert stored == (SUCCESS, "")
    image = RadiologyImage.objects.get()
    assert image.series.study.radiology_order_id == order.pk
    assert dataset_part(read_stored(image.file_key)) == dataset_part(content)
    assert stored_keys() == [image.file_key]
    assert small_disk.staging_files() == []
    assert [
        (event.username, event.role, event.method, event.client_address, event.status_code, event.outcome)
        for event in AuditEvent.objects.filter(channel="dicom").order_by("id")
    ] == [
        (MODALITY_AE, "modality", "ASSOCIATE", "127.0.0.1", 200, "allowed"),
        (MODALITY_AE, "modality", "C-STORE", "127.0.0.1", 507, "error"),
        (MODALITY_AE, "modality", "ASSOCIATE", "127.0.0.1", 200, "allowed"),
        (MODALITY_AE, "modality", "C-STORE", "127.0.0.1", 201, "allowed"),
    ]
