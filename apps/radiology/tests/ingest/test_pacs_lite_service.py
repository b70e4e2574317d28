"""PACSLiteService: the one ingest path, the seed's study/series calls, and the URL makers.

Every test that stores runs on both stores (`radiology_store`: filesystem, and S3 through
moto's server). After every refusal the test checks the error class, its code and status,
that no study/series/image row exists and that the store holds no object.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pydicom
import pytest
from django.db import IntegrityError, connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apps.radiology import storage
from apps.radiology.access import signing
from apps.radiology.errors import (
    EmptyFile,
    FileTooLarge,
    ImageConflict,
    InvalidFilename,
    InvalidUID,
    MissingUID,
    RadiologyError,
    SeriesConflict,
    StorageFailure,
    StudyConflict,
    StudyMismatch,
    TruncatedFile,
    UIDMismatch,
    UnsupportedFileType,
)
from apps.radiology.fastpaths import bulk_insert
from apps.radiology.imagefiles.dicom import JPEG_BASELINE_TRANSFER_SYNTAX, SECONDARY_CAPTURE_SOP_CLASS, parse_dicom_date
from apps.radiology.imagefiles.uids import generate_uid, is_valid_uid
from apps.radiology.ingest import commit
from apps.radiology.models import (
    DICOM_MIME_TYPE,
    JPEG_MIME_TYPE,
    RadiologyImage,
    RadiologyOrder,
    RadiologySeries,
    RadiologyStudy,
    ViewerToken,
)
from apps.radiology.operations.demo import jpeg_with_exif, relabelled_dicom, sample_path
from apps.radiology.pacs_lite_service import DeclaredImage, IngestItem, IngestResult, PACSLiteService
from apps.radiology.tests.conftest import IngestFile, MakeOrder
from apps.radiology.tests.factories import (
    assert_nothing_stored,
    dataset_bytes,
    edited,
    edited_sample,
    pydicom_json_without_bulk,
    read_stored,
    relabelled,
    row_counts,
    sample_bytes,
    served_json,
    sha256,
    stored_keys,
)
from apps.radiology.tests.stores import use_s3_store

# pydicom's samples include a few non-conformant UIDs (rtdose.dcm) and so do tests on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")

CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
CT_SERIES = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
CT_IMAGE = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"

# name -> (number_of_frames, transfer syntax): every kind of DICOM the demo must take.
DICOM_SAMPLES = {
    "CT_small.dcm": (1, "1.2.840.10008.1.2.1"),
    "MR_small.dcm": (1, "1.2.840.10008.1.2.1"),
    "JPEG-lossy.dcm": (1, "1.2.840.10008.1.2.4.51"),
    "MR_small_jp2klossless.dcm": (1, "1.2.840.10008.1.2.4.90"),
    "JPEG2000.dcm": (1, "1.2.840.10008.1.2.4.91"),
    "SC_rgb_rle_2frame.dcm": (2, "1.2.840.10008.1.2.5"),
    "rtdose.dcm": (15, "1.2.840.10008.1.2"),
}


def _is_generated_uid(value: str) -> bool:
    return value.startswith("2.25.") and is_valid_uid(value)


def _staging_files(settings: Any) -> list[Path]:
    staging = Path(settings.RADIOLOGY_STAGING_DIR)
    return list(staging.iterdir()) if staging.exists() else []


def _no_uids_at_all() -> bytes:
    dataset = pydicom.dcmread(sample_path("CT_small.dcm"))
    del dataset.SOPInstanceUID
    del dataset.file_meta.MediaStorageSOPInstanceUID
    return dataset_bytes(dataset, enforce_file_format=False)


# --- ingest of real files --------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("name", list(DICOM_SAMPLES))
def test_ingest_dicom_sample(
    radiology_store: str, name: str, order: RadiologyOrder, radtech: Any, ingest_file: IngestFile, settings: Any
) -> None:
    frames, transfer_syntax = DICOM_SAMPLES[name]
    path = sample_path(name)
    content = path.read_bytes()
    dataset = pydicom.dcmread(path)
    patient = order.visit.patient

    result = ingest_file(order, path, filename=name, user=radtech)

    assert result.created is True
    image = RadiologyImage.objects.select_related("series__study").get()
    assert image == result.image
    series = image.series
    study = series.study
    # Study: the header's UID and fields, the order's patient as a snapshot.
    assert study.radiology_order == order
    assert study.study_uid == dataset.StudyInstanceUID
    assert study.modality == dataset.Modality
    assert study.study_date == parse_dicom_date(dataset.StudyDate)
    assert study.study_description == (str(dataset.get("StudyDescription", "")) or order.exam_requested)
    assert study.accession_number == (str(dataset.get("AccessionNumber", "")) or order.accession_number)
    assert study.patient_name == f"{patient.first_name} {patient.last_name}" == "Ngozi Balogun"
    assert study.patient_id == patient.hospital_number
    assert study.patient_sex == "F"
    # Series.
    assert series.series_uid == dataset.SeriesInstanceUID
    assert series.modality == dataset.Modality
    assert series.series_number == int(dataset.SeriesNumber)
    assert series.series_description == str(dataset.get("SeriesDescription", ""))
    # Image.
    assert image.image_uid == dataset.SOPInstanceUID
    assert image.sop_class_uid == dataset.SOPClassUID
    assert image.transfer_syntax_uid == transfer_syntax
    assert image.number_of_frames == frames
    assert (image.rows, image.columns) == (int(dataset.Rows), int(dataset.Columns))
    assert image.instance_number == (int(dataset.InstanceNumber) if dataset.get("InstanceNumber") else 1)
    assert image.mime_type == DICOM_MIME_TYPE
    assert image.filename == name
    assert image.file_size == len(content)
    assert image.checksum == sha256(content)
    assert image.uploaded_by == radtech
    assert image.file_key == (
        f"radiology/{dataset.StudyInstanceUID}/{dataset.SeriesInstanceUID}/{dataset.SOPInstanceUID}/{name}"
    )
    # The header as the DICOM JSON model, without the pixel data, with the EMR's patient identity
    # (the file's differing values as Original Attributes).
    assert image.image_metadata == served_json(pydicom_json_without_bulk(path), study, image.image_metadata)
    assert image.image_metadata["00100020"] == {"vr": "LO", "Value": [patient.hospital_number]}
    assert "7FE00010" not in image.image_metadata
    # The bytes, stored once and byte-identical; the staging spool is gone.
    assert read_stored(image.file_key) == content
    assert stored_keys() == [image.file_key]
    assert _staging_files(settings) == []


@pytest.mark.django_db
def test_ingest_jpeg_with_exif(
    radiology_store: str, order: RadiologyOrder, radtech: Any, ingest_file: IngestFile
) -> None:
    content = jpeg_with_exif(width=320, height=240)

    result = ingest_file(order, content, filename="film photo.jpg", user=radtech)

    image = result.image
    assert result.created is True
    assert image.mime_type == JPEG_MIME_TYPE
    assert image.sop_class_uid == SECONDARY_CAPTURE_SOP_CLASS
    assert image.transfer_syntax_uid == JPEG_BASELINE_TRANSFER_SYNTAX
    assert (image.rows, image.columns, image.number_of_frames) == (240, 320, 1)
    assert image.image_metadata["exif"]["Make"] == "PACS-lite demo camera"
    assert image.image_metadata["exif"]["Model"] == "Phone X1"
    assert image.image_metadata["exif"]["DateTime"] == "2026:01:15 10:00:00"
    assert (image.image_metadata["width"], image.image_metadata["height"]) == (320, 240)
    assert image.filename == "film photo.jpg"
    assert image.checksum == sha256(content)
    assert image.file_size == len(content)
    assert image.instance_number == 1
    # No UIDs in a JPEG: all three generated; study and series take the order's modality.
    series = image.series
    study = series.study
    assert _is_generated_uid(study.study_uid)
    assert _is_generated_uid(series.series_uid)
    assert _is_generated_uid(image.image_uid)
    assert len({study.study_uid, series.series_uid, image.image_uid}) == 3
    assert study.modality == series.modality == order.modality == "CT"
    assert study.study_description == order.exam_requested
    assert image.file_key == f"radiology/{study.study_uid}/{series.series_uid}/{image.image_uid}/film_photo.jpg"
    assert read_stored(image.file_key) == content
    assert stored_keys() == [image.file_key]


@pytest.mark.django_db
def test_ingest_jpeg_uses_declared_uids_and_generates_the_missing_one(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile
) -> None:
    declared = DeclaredImage(
        study_uid="1.2.826.0.1.3680043.8.498.7",
        series_uid="1.2.826.0.1.3680043.8.498.7.3",
        series_description="Photo of film",
        series_number=3,
        instance_number=7,
        modality="OT",
        study_description="Film review",
    )

    image = ingest_file(order, jpeg_with_exif(), filename="photo.jpg", declared=declared).image

    assert image.series.study.study_uid == "1.2.826.0.1.3680043.8.498.7"
    assert image.series.series_uid == "1.2.826.0.1.3680043.8.498.7.3"
    assert _is_generated_uid(image.image_uid)
    assert image.sop_class_uid == SECONDARY_CAPTURE_SOP_CLASS
    assert image.instance_number == 7
    assert image.series.series_description == "Photo of film"
    assert image.series.series_number == 3
    assert image.series.modality == "OT"
    assert image.series.study.study_description == "Film review"
    assert stored_keys() == [image.file_key]


@pytest.mark.django_db
def test_ingest_jpeg_with_every_uid_declared(order: RadiologyOrder, ingest_file: IngestFile) -> None:
    declared = DeclaredImage(study_uid="1.2.3", series_uid="1.2.3.4", image_uid="1.2.3.4.5")
    image = ingest_file(order, jpeg_with_exif(), filename="photo.jpg", declared=declared).image
    assert (image.series.study.study_uid, image.series.series_uid, image.image_uid) == ("1.2.3", "1.2.3.4", "1.2.3.4.5")


@pytest.mark.django_db
def test_dicom_agreeing_declared_uids_are_accepted(order: RadiologyOrder, ingest_file: IngestFile) -> None:
    declared = DeclaredImage(study_uid=CT_STUDY, series_uid=CT_SERIES, image_uid=CT_IMAGE)
    image = ingest_file(order, "CT_small.dcm", declared=declared).image
    assert image.image_uid == CT_IMAGE


@pytest.mark.django_db
def test_mime_type_comes_from_the_bytes_not_the_filename(
    radiology_store: str, make_order: MakeOrder, ingest_file: IngestFile
) -> None:
    dicom = ingest_file(make_order(), "CT_small.dcm", filename="scan.jpg").image
    jpeg = ingest_file(make_order(), jpeg_with_exif(), filename="photo.dcm").image

    assert dicom.mime_type == DICOM_MIME_TYPE
    assert dicom.file_key.endswith("/scan.jpg")
    assert jpeg.mime_type == JPEG_MIME_TYPE
    assert jpeg.file_key.endswith("/photo.dcm")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("original", "base_name", "kept"),
    [
        ("../../etc/passwd", "passwd", "../../etc/passwd"),
        ("C:\\exports\\CT 1.dcm", "CT_1.dcm", "C:\\exports\\CT 1.dcm"),
        # PostgreSQL text cannot hold NUL: control characters leave the kept name too.
        ("scan\x00\x1f.dcm", "scan.dcm", "scan.dcm"),
    ],
)
def test_unsafe_filename_is_reduced_in_the_key_and_kept_in_the_row(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile, original: str, base_name: str, kept: str
) -> None:
    image = ingest_file(order, "CT_small.dcm", filename=original).image

    assert image.file_key == f"radiology/{CT_STUDY}/{CT_SERIES}/{CT_IMAGE}/{base_name}"
    assert image.filename == kept
    assert RadiologyImage.objects.get().filename == kept
    assert stored_keys() == [image.file_key]


@pytest.mark.django_db
def test_several_files_form_one_study(
    radiology_store: str, order: RadiologyOrder, radtech: Any, ingest_file: IngestFile
) -> None:
    study_uid = "1.2.826.0.1.3680043.8.498.100"
    ct_series, mr_series = f"{study_uid}.1", f"{study_uid}.2"
    contents = [
        relabelled_dicom("CT_small.dcm", study_uid=study_uid, series_uid=ct_series, instance_number=1),
        relabelled_dicom("CT_small.dcm", study_uid=study_uid, series_uid=ct_series, instance_number=2),
        relabelled_dicom("MR_small.dcm", study_uid=study_uid, series_uid=mr_series, instance_number=1),
    ]

    images = [
        ingest_file(order, content, filename=f"f{i}.dcm", user=radtech).image for i, content in enumerate(contents)
    ]
    photo = ingest_file(order, jpeg_with_exif(), filename="p.jpg", declared=DeclaredImage(study_uid=study_uid)).image

    assert row_counts() == (1, 3, 4)
    study = RadiologyStudy.objects.get()
    assert study.study_uid == study_uid
    assert study.radiology_order == order
    assert {s.series_uid: s.modality for s in study.series.all()} == {
        ct_series: "CT",
        mr_series: "MR",
        photo.series.series_uid: "CT",
    }
    assert [image.instance_number for image in RadiologyImage.objects.filter(series__series_uid=ct_series)] == [1, 2]
    assert stored_keys() == sorted(image.file_key for image in [*images, photo])
    for image, content in zip(images, contents, strict=True):
        assert read_stored(image.file_key) == content


@pytest.mark.django_db
def test_nul_padded_header_text_is_stored_on_every_database(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile
) -> None:
    """PostgreSQL refuses NUL in text and jsonb; the bytes stay as sent, the rows go without NUL."""
    content = edited_sample("CT_small.dcm", SeriesDescription="Axial\x00", StudyDescription="Head\x00CT")

    image = ingest_file(order, content, filename="nul.dcm").image

    image = RadiologyImage.objects.select_related("series__study").get(pk=image.pk)
    assert image.series.series_description == "Axial"
    assert image.series.study.study_description == "HeadCT"
    assert image.image_metadata["0008103E"] == {"vr": "LO", "Value": ["Axial"]}
    assert read_stored(image.file_key) == content
    assert image.checksum == sha256(content)


@pytest.mark.django_db
@pytest.mark.parametrize(("value", "stored"), [("3000000000", None), ("2147483647", 2147483647), ("-5", -5)])
def test_series_and_instance_numbers_outside_32_bits_are_dropped(
    order: RadiologyOrder, ingest_file: IngestFile, value: str, stored: int | None
) -> None:
    """IS is 32-bit; a larger value would fail PostgreSQL's integer column (and the ingest)."""
    content = edited_sample("CT_small.dcm", SeriesNumber=value, InstanceNumber=value)

    image = ingest_file(order, content, filename="big.dcm").image

    image = RadiologyImage.objects.select_related("series").get(pk=image.pk)
    assert image.series.series_number == stored
    assert image.instance_number == (1 if stored is None else stored)  # numbered in arrival order instead


@pytest.mark.django_db
def test_patient_snapshot_does_not_follow_later_emr_edits(order: RadiologyOrder, ingest_file: IngestFile) -> None:
    ingest_file(order, "CT_small.dcm")
    patient = order.visit.patient
    original_number = patient.hospital_number
    patient.first_name, patient.hospital_number = "Changed", "TEST-RENUMBERED"
    patient.save()

    study = RadiologyStudy.objects.get()
    assert (study.patient_name, study.patient_id) == ("Ngozi Balogun", original_number)


@pytest.mark.django_db
def test_second_image_of_a_series_without_instance_number_is_numbered_next(
    order: RadiologyOrder, ingest_file: IngestFile
) -> None:
    declared = DeclaredImage(study_uid="1.2.5", series_uid="1.2.5.1")
    first = ingest_file(order, jpeg_with_exif(), declared=declared).image
    second = ingest_file(order, jpeg_with_exif(make="Other camera"), declared=declared).image
    assert (first.instance_number, second.instance_number) == (1, 2)


@pytest.mark.django_db
def test_file_at_the_max_upload_size_is_accepted(order: RadiologyOrder, ingest_file: IngestFile, settings: Any) -> None:
    content = sample_bytes("CT_small.dcm")
    settings.RADIOLOGY_MAX_UPLOAD_SIZE = len(content)
    assert ingest_file(order, content, filename="ct.dcm").created is True


# --- idempotency and conflicts -------------------------------------------------------------------


@pytest.mark.django_db
def test_same_image_with_identical_bytes_is_idempotent(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile
) -> None:
    first = ingest_file(order, "CT_small.dcm")

    again = ingest_file(order, "CT_small.dcm", filename="renamed.dcm")

    assert first.created is True
    assert again.created is False
    assert again.image.pk == first.image.pk
    assert again.image.file_key == first.image.file_key
    assert row_counts() == (1, 1, 1)
    assert stored_keys() == [first.image.file_key]


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["dicom", "jpeg"])
def test_same_image_uid_with_other_bytes_is_image_conflict(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile, kind: str
) -> None:
    if kind == "dicom":
        original, declared = sample_bytes("CT_small.dcm"), None
        other = edited_sample("CT_small.dcm", SeriesDescription="Edited after the fact")
    else:
        declared = DeclaredImage(study_uid="1.2.9", series_uid="1.2.9.1", image_uid="1.2.9.1.1")
        original, other = jpeg_with_exif(), jpeg_with_exif(make="Another camera")
    stored = ingest_file(order, original, filename="a.dcm", declared=declared).image

    with pytest.raises(ImageConflict) as excinfo:
        ingest_file(order, other, filename="b.dcm", declared=declared)

    assert excinfo.value.code == "image_conflict"
    assert excinfo.value.status_code == 409
    assert row_counts() == (1, 1, 1)
    assert stored_keys() == [stored.file_key]
    assert read_stored(stored.file_key) == original
    assert sha256(read_stored(stored.file_key)) == stored.checksum == RadiologyImage.objects.get().checksum


@pytest.mark.django_db
def test_same_file_under_another_order_is_image_conflict(
    radiology_store: str, make_order: MakeOrder, ingest_file: IngestFile
) -> None:
    stored = ingest_file(make_order(), "CT_small.dcm").image
    other_order = make_order()

    with pytest.raises(ImageConflict) as excinfo:
        ingest_file(other_order, "CT_small.dcm")

    assert excinfo.value.code == "image_conflict"
    assert excinfo.value.detail == "An image with this UID is already stored under another order."
    assert not RadiologyStudy.objects.filter(radiology_order=other_order).exists()
    assert row_counts() == (1, 1, 1)
    assert stored_keys() == [stored.file_key]


@pytest.mark.django_db
def test_image_of_another_study_than_the_orders_is_study_mismatch(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile
) -> None:
    stored = ingest_file(order, "CT_small.dcm").image

    with pytest.raises(StudyMismatch) as excinfo:
        ingest_file(order, "MR_small.dcm")

    assert excinfo.value.code == "study_mismatch"
    assert excinfo.value.status_code == 409
    assert row_counts() == (1, 1, 1)
    assert stored_keys() == [stored.file_key]


@pytest.mark.django_db
def test_study_uid_of_another_order_is_study_conflict(
    radiology_store: str, make_order: MakeOrder, ingest_file: IngestFile
) -> None:
    stored = ingest_file(make_order(), "CT_small.dcm").image
    same_study = relabelled_dicom("CT_small.dcm", study_uid=CT_STUDY, series_uid="1.2.7.1", instance_number=2)

    with pytest.raises(StudyConflict) as excinfo:
        ingest_file(make_order(), same_study, filename="x.dcm")

    assert excinfo.value.code == "study_conflict"
    assert excinfo.value.status_code == 409
    assert row_counts() == (1, 1, 1)
    assert stored_keys() == [stored.file_key]


@pytest.mark.django_db
def test_series_uid_of_another_study_is_series_conflict(
    radiology_store: str, make_order: MakeOrder, ingest_file: IngestFile
) -> None:
    stored = ingest_file(make_order(), "CT_small.dcm").image
    moved = relabelled_dicom("CT_small.dcm", study_uid="1.2.7", series_uid=CT_SERIES, instance_number=2)

    with pytest.raises(SeriesConflict) as excinfo:
        ingest_file(make_order(), moved, filename="x.dcm")

    assert excinfo.value.code == "series_conflict"
    assert excinfo.value.status_code == 409
    assert row_counts() == (1, 1, 1)
    assert stored_keys() == [stored.file_key]


@pytest.mark.django_db
def test_ingest_never_overwrites_an_object_already_at_the_key(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile
) -> None:
    """A stray object at the key the image would take (say from a crashed import) stays as it is."""
    taken = f"radiology/{CT_STUDY}/{CT_SERIES}/{CT_IMAGE}/CT_small.dcm"
    assert PACSLiteService.store_image(file_content=b"stray", file_key=taken, content_type=DICOM_MIME_TYPE) == taken

    image = ingest_file(order, "CT_small.dcm").image

    assert image.file_key != taken
    assert image.file_key.startswith(f"radiology/{CT_STUDY}/{CT_SERIES}/{CT_IMAGE}/CT_small")
    assert read_stored(taken) == b"stray"
    assert read_stored(image.file_key) == sample_bytes("CT_small.dcm")
    assert stored_keys() == sorted([taken, image.file_key])


# --- bad input: nothing stored ---------------------------------------------------------------------

BAD_INPUTS: list[Any] = [
    pytest.param(
        lambda: jpeg_with_exif(),
        DeclaredImage(study_uid="1.02"),
        "photo.jpg",
        InvalidUID,
        "invalid_uid",
        400,
        id="declared-zero-led",
    ),
    pytest.param(
        lambda: jpeg_with_exif(),
        DeclaredImage(image_uid="1.2.abc"),
        "photo.jpg",
        InvalidUID,
        "invalid_uid",
        400,
        id="declared-letters",
    ),
    pytest.param(
        lambda: sample_bytes("CT_small.dcm"),
        DeclaredImage(series_uid="1..2"),
        "ct.dcm",
        InvalidUID,
        "invalid_uid",
        400,
        id="dicom-bad",
    ),
    pytest.param(
        lambda: edited_sample("CT_small.dcm", StudyInstanceUID="1.2.03"),
        None,
        "ct.dcm",
        InvalidUID,
        "invalid_uid",
        400,
        id="file-uid",
    ),
    pytest.param(
        lambda: b"hello, not an image\n" * 20,
        None,
        "x.dcm",
        UnsupportedFileType,
        "unsupported_file_type",
        415,
        id="text",
    ),
    pytest.param(
        lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 300,
        None,
        "x.png",
        UnsupportedFileType,
        "unsupported_file_type",
        415,
        id="png",
    ),
    pytest.param(
        lambda: sample_bytes("CT_small.dcm")[132:],
        None,
        "x.dcm",
        UnsupportedFileType,
        "unsupported_file_type",
        415,
        id="no-preamble",
    ),
    pytest.param(lambda: b"", None, "x.dcm", EmptyFile, "empty_file", 400, id="empty"),
    pytest.param(
        lambda: sample_bytes("MR_truncated.dcm"), None, "x.dcm", TruncatedFile, "truncated_file", 400, id="MR_truncated"
    ),
    pytest.param(
        lambda: sample_bytes("CT_small.dcm")[: len(sample_bytes("CT_small.dcm")) // 2],
        None,
        "x.dcm",
        TruncatedFile,
        "truncated_file",
        400,
        id="CT-half",
    ),
    pytest.param(
        lambda: sample_bytes("JPEG-lossy.dcm")[:-2000],
        None,
        "x.dcm",
        TruncatedFile,
        "truncated_file",
        400,
        id="JPEG-lossy-short",
    ),
    pytest.param(
        lambda: jpeg_with_exif()[: len(jpeg_with_exif()) // 2],
        None,
        "x.jpg",
        TruncatedFile,
        "truncated_file",
        400,
        id="jpeg-half",
    ),
    pytest.param(
        lambda: sample_bytes("meta_missing_tsyntax.dcm"), None, "x.dcm", MissingUID, "missing_uid", 400, id="no-uids"
    ),
    pytest.param(
        lambda: edited_sample("CT_small.dcm", StudyInstanceUID=None),
        None,
        "x.dcm",
        MissingUID,
        "missing_uid",
        400,
        id="no-study",
    ),
    pytest.param(
        lambda: edited_sample("CT_small.dcm", SeriesInstanceUID=None),
        None,
        "x.dcm",
        MissingUID,
        "missing_uid",
        400,
        id="no-series",
    ),
    pytest.param(_no_uids_at_all, None, "x.dcm", MissingUID, "missing_uid", 400, id="no-sop-instance"),
    pytest.param(
        lambda: sample_bytes("CT_small.dcm"),
        DeclaredImage(study_uid="1.2.3"),
        "x.dcm",
        UIDMismatch,
        "uid_mismatch",
        400,
        id="study",
    ),
    pytest.param(
        lambda: sample_bytes("CT_small.dcm"),
        DeclaredImage(image_uid=CT_SERIES),
        "x.dcm",
        UIDMismatch,
        "uid_mismatch",
        400,
        id="image",
    ),
    pytest.param(
        lambda: sample_bytes("CT_small.dcm"),
        None,
        "../",
        InvalidFilename,
        "invalid_filename",
        400,
        id="filename-dotdot",
    ),
    pytest.param(
        lambda: sample_bytes("CT_small.dcm"), None, "...", InvalidFilename, "invalid_filename", 400, id="filename-dots"
    ),
    pytest.param(
        lambda: sample_bytes("CT_small.dcm"),
        None,
        "\x00\x01",
        InvalidFilename,
        "invalid_filename",
        400,
        id="filename-control",
    ),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("content", "declared", "filename", "error", "code", "status"), BAD_INPUTS)
def test_bad_input_is_refused_and_nothing_is_stored(
    radiology_store: str,
    order: RadiologyOrder,
    ingest_file: IngestFile,
    settings: Any,
    content: Callable[[], bytes],
    declared: DeclaredImage | None,
    filename: str,
    error: type[RadiologyError],
    code: str,
    status: int,
) -> None:
    with pytest.raises(RadiologyError) as excinfo:
        ingest_file(order, content(), filename=filename, declared=declared)

    assert type(excinfo.value) is error
    assert excinfo.value.code == code
    assert excinfo.value.status_code == status
    assert_nothing_stored()
    assert _staging_files(settings) == []


@pytest.mark.django_db
def test_file_over_the_max_upload_size_is_file_too_large(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile, settings: Any
) -> None:
    content = sample_bytes("CT_small.dcm")
    settings.RADIOLOGY_MAX_UPLOAD_SIZE = len(content) - 1

    with pytest.raises(FileTooLarge) as excinfo:
        ingest_file(order, content, filename="ct.dcm")

    assert excinfo.value.code == "file_too_large"
    assert excinfo.value.status_code == 413
    assert_nothing_stored()
    assert _staging_files(settings) == []


# --- failure atomicity ----------------------------------------------------------------------------


def _fail(*_args: Any, **_kwargs: Any) -> Any:
    raise OSError("store unreachable")


@pytest.mark.django_db(transaction=True)
def test_storage_failure_leaves_no_row(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(type(storage.radiology_storage()), "_save", _fail)
    monkeypatch.setattr(storage.os, "link", _fail)  # the filesystem store links spools in

    with pytest.raises(StorageFailure) as excinfo:
        ingest_file(order, "CT_small.dcm")

    assert excinfo.value.code == "storage_unavailable"
    assert excinfo.value.status_code == 503
    monkeypatch.undo()
    assert_nothing_stored()


@pytest.mark.django_db(transaction=True)
def test_s3_bucket_missing_is_storage_failure_and_leaves_no_row(
    order: RadiologyOrder, ingest_file: IngestFile, settings: Any, s3_endpoint: str
) -> None:
    use_s3_store(settings, s3_endpoint, "pacs-lite-no-such-bucket")

    with pytest.raises(StorageFailure) as excinfo:
        ingest_file(order, "CT_small.dcm")

    assert excinfo.value.code == "storage_unavailable"
    assert row_counts() == (0, 0, 0)


@pytest.mark.django_db(transaction=True)
def test_row_failure_after_the_write_leaves_no_orphan_file(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[str] = []
    real_save = storage.save_new_object

    def save_and_remember(key: str, content: Any, **options: Any) -> str:
        written.append(real_save(key, content, **options))
        return written[-1]

    def database_down(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("database connection lost")

    monkeypatch.setattr(storage, "save_new_object", save_and_remember)
    monkeypatch.setattr(commit, "create_rows", database_down)

    with pytest.raises(RuntimeError, match="database connection lost"):
        ingest_file(order, "CT_small.dcm")

    assert written == [f"radiology/{CT_STUDY}/{CT_SERIES}/{CT_IMAGE}/CT_small.dcm"]  # it was written, then removed
    assert_nothing_stored()


@pytest.mark.django_db(transaction=True)
def test_image_row_failure_rolls_back_study_and_series_and_removes_the_file(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> list[RadiologyImage]:
        raise IntegrityError("simulated constraint failure")

    monkeypatch.setattr(bulk_insert, "insert_new", refuse)

    with pytest.raises(IntegrityError):
        ingest_file(order, "CT_small.dcm")

    assert_nothing_stored()


@pytest.mark.django_db(transaction=True)
def test_row_failure_on_a_later_image_keeps_the_earlier_ones(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    study_uid, series_uid = "1.2.826.0.1.3680043.8.498.200", "1.2.826.0.1.3680043.8.498.200.1"
    first_bytes = relabelled_dicom("CT_small.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=1)
    first = ingest_file(order, first_bytes, filename="1.dcm").image

    def refuse(*_args: Any, **_kwargs: Any) -> list[RadiologyImage]:
        raise IntegrityError("simulated constraint failure")

    monkeypatch.setattr(bulk_insert, "insert_new", refuse)
    second_bytes = relabelled_dicom("CT_small.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=2)
    with pytest.raises(IntegrityError):
        ingest_file(order, second_bytes, filename="2.dcm")

    assert row_counts() == (1, 1, 1)
    assert stored_keys() == [first.file_key]
    assert read_stored(first.file_key) == first_bytes


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("winner", ["same-bytes", "other-bytes"])
def test_losing_a_race_for_the_same_image_uid_leaves_only_the_winner(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile, monkeypatch: pytest.MonkeyPatch, winner: str
) -> None:
    """Another request stores the same image UID between our checks and our rows.

    Our write lands beside the winner's object (never over it); our row then fails the
    unique image_uid, our object is removed, and the answer is the winner's image (same
    bytes) or ImageConflict (other bytes).
    """
    ours = sample_bytes("CT_small.dcm")
    theirs = ours if winner == "same-bytes" else edited_sample("CT_small.dcm", SeriesDescription="Other bytes")
    real_save = storage.save_new_object
    winners: list[RadiologyImage] = []
    our_keys: list[str] = []

    def save_after_the_other_request(key: str, content: Any, **options: Any) -> str:
        monkeypatch.setattr(storage, "save_new_object", real_save)
        winners.append(ingest_file(order, theirs, filename="CT_small.dcm").image)
        our_keys.append(real_save(key, content, **options))
        return our_keys[-1]

    monkeypatch.setattr(storage, "save_new_object", save_after_the_other_request)

    if winner == "same-bytes":
        result = ingest_file(order, ours, filename="CT_small.dcm")
        assert result.created is False
        assert result.image.pk == winners[0].pk
    else:
        with pytest.raises(ImageConflict):
            ingest_file(order, ours, filename="CT_small.dcm")

    assert len(our_keys) == 1
    assert our_keys[0] != winners[0].file_key  # written beside the winner's object, then removed
    assert row_counts() == (1, 1, 1)
    assert stored_keys() == [winners[0].file_key]
    assert read_stored(winners[0].file_key) == theirs


# --- the seed's study and series calls -------------------------------------------------------------


@pytest.mark.django_db
def test_create_study_for_order_snapshots_the_patient_and_is_reused(order: RadiologyOrder) -> None:
    study = PACSLiteService.create_study_for_order(radiology_order=order)

    assert _is_generated_uid(study.study_uid)
    assert study.modality == order.modality
    assert study.study_description == order.exam_requested
    assert study.accession_number == order.accession_number
    assert study.patient_name == "Ngozi Balogun"
    assert study.patient_id == order.visit.patient.hospital_number
    assert study.study_date is not None
    assert PACSLiteService.create_study_for_order(radiology_order=order) == study
    assert PACSLiteService.create_study_for_order(radiology_order=order, study_uid=study.study_uid) == study
    assert RadiologyStudy.objects.count() == 1


@pytest.mark.django_db
def test_create_study_for_order_refusals(make_order: MakeOrder) -> None:
    order = make_order()
    PACSLiteService.create_study_for_order(radiology_order=order, study_uid="1.2.3")

    with pytest.raises(StudyMismatch):
        PACSLiteService.create_study_for_order(radiology_order=order, study_uid="1.2.4")
    with pytest.raises(StudyConflict):
        PACSLiteService.create_study_for_order(radiology_order=make_order(), study_uid="1.2.3")
    with pytest.raises(InvalidUID):
        PACSLiteService.create_study_for_order(radiology_order=make_order(), study_uid="1.2.03")
    assert RadiologyStudy.objects.count() == 1


@pytest.mark.django_db
def test_create_series_for_study(make_order: MakeOrder) -> None:
    study = PACSLiteService.create_study_for_order(radiology_order=make_order(), modality="MR")
    other_study = PACSLiteService.create_study_for_order(radiology_order=make_order())

    series = PACSLiteService.create_series_for_study(study=study, series_number=2, series_description="Axial T1")

    assert _is_generated_uid(series.series_uid)
    assert (series.study, series.series_number, series.series_description, series.modality) == (
        study,
        2,
        "Axial T1",
        "MR",
    )
    assert PACSLiteService.create_series_for_study(study=study, series_uid=series.series_uid) == series
    with pytest.raises(SeriesConflict) as excinfo:
        PACSLiteService.create_series_for_study(study=other_study, series_uid=series.series_uid)
    assert excinfo.value.code == "series_conflict"
    with pytest.raises(InvalidUID):
        PACSLiteService.create_series_for_study(study=study, series_uid="1.2.")
    assert RadiologySeries.objects.count() == 1


# --- URL makers -----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_generate_viewer_url_records_a_token_for_the_study(
    order: RadiologyOrder, ingest_file: IngestFile, doctor: Any, settings: Any
) -> None:
    settings.OHIF_VIEWER_URL = "https://viewer.example.org/viewer"
    ingest_file(order, "CT_small.dcm")

    url = PACSLiteService.generate_viewer_url(study_uid=CT_STUDY, user=doctor, expires_in=600)

    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://viewer.example.org/viewer"
    assert query["StudyInstanceUIDs"] == [CT_STUDY]
    assert len(query["token"]) == 1
    token = ViewerToken.objects.get()
    assert token.study.study_uid == CT_STUDY
    assert token.issued_to == doctor


@pytest.mark.django_db
def test_generate_image_url_is_signed_for_this_image(
    order: RadiologyOrder, ingest_file: IngestFile, doctor: Any, settings: Any
) -> None:
    settings.PACS_PUBLIC_URL = ""
    image = ingest_file(order, "CT_small.dcm").image

    url = PACSLiteService.generate_image_url(
        image=image, user=doctor, expires_in=60, base_url="https://pacs.example.org/"
    )

    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == "https://pacs.example.org"
    assert parts.path == f"/api/v1/radiology/files/{image.pk}/CT_small.dcm"
    assert set(parse_qs(parts.query)) == {"expires", "token"}


@pytest.mark.django_db
def test_generate_image_url_is_tied_to_the_user_it_was_made_for(
    order: RadiologyOrder, ingest_file: IngestFile, doctor: Any, settings: Any
) -> None:
    settings.PACS_PUBLIC_URL = ""
    image = ingest_file(order, "CT_small.dcm").image

    url = PACSLiteService.generate_image_url(image=image, user=doctor, expires_in=60, base_url="http://testserver")

    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    link = signing.verify_image_url(image=image, filename="CT_small.dcm", **query)
    assert (link.issuer_id, link.via_token_id) == (doctor.pk, None)
    assert link.issued_at is not None
    assert Client().get(f"{parts.path}?{parts.query}").status_code == 200
    signing.revoke_links_of(user=doctor)  # the issuer's links end, so this one does
    assert Client().get(f"{parts.path}?{parts.query}").status_code == 403


# --- batches: ingest_images ------------------------------------------------------------------------


def _sop_uid(content: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True).SOPInstanceUID)


def _series_uid(content: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True).SeriesInstanceUID)


def _series_of(count: int, *, study_uid: str, series_uid: str, first_number: int = 1) -> list[bytes]:
    """`count` instances of one series (CT_small re-labelled), numbered from `first_number`."""
    return [
        relabelled_dicom("CT_small.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=number)
        for number in range(first_number, first_number + count)
    ]


def _without_instance_number(*, study_uid: str, series_uid: str) -> bytes:
    return relabelled("CT_small.dcm", study_uid=study_uid, series_uid=series_uid, InstanceNumber=None)


def _items(order: RadiologyOrder, contents: list[bytes]) -> list[IngestItem]:
    """One item per content, named 0.dcm, 1.dcm, ... in input order."""
    return [
        IngestItem(order=order, stream=io.BytesIO(content), filename=f"{index}.dcm")
        for index, content in enumerate(contents)
    ]


def _created(outcome: IngestResult | RadiologyError) -> RadiologyImage:
    """The image of an outcome that must have created it."""
    assert isinstance(outcome, IngestResult), outcome
    assert outcome.created is True
    return outcome.image


def _key(*, study_uid: str, series_uid: str, content: bytes, filename: str) -> str:
    return f"radiology/{study_uid}/{series_uid}/{_sop_uid(content)}/{filename}"


# A batch's queries: 1 lookup of stored images, 1 of the order (its study's UID and its patient's
# hospital number), 1 of the study UID (the order has no study yet) and 1 of the series, then
# its transaction (a savepoint and its release here, as the test runs inside one) with the order
# lock, the study (lookup, UID check, savepoint, INSERT, release), the series (get, savepoint,
# INSERT, release) and one INSERT of every image row (on PostgreSQL a COPY, after one query for
# the rows' ids), and the EMR patients the files name (not their order's patient). None of them
# is per image.
BATCH_QUERIES = 18 if connection.vendor != "postgresql" else 19


@pytest.mark.django_db
def test_a_batch_of_one_series_is_created_in_order_with_as_many_queries_for_5_as_for_20(
    radiology_store: str, make_order: MakeOrder, radtech: Any, settings: Any
) -> None:
    query_counts: list[int] = []
    all_keys: list[str] = []
    for size in (5, 20):
        order = make_order()
        study_uid, series_uid = generate_uid(), generate_uid()
        contents = _series_of(size, study_uid=study_uid, series_uid=series_uid)

        with CaptureQueriesContext(connection) as queries:
            outcomes = PACSLiteService.ingest_images(_items(order, contents), uploaded_by=radtech)

        query_counts.append(len(queries))
        images = [_created(outcome) for outcome in outcomes]
        assert [image.image_uid for image in images] == [_sop_uid(content) for content in contents]
        expected = [
            (
                image.pk,
                _sop_uid(content),
                number,
                _key(study_uid=study_uid, series_uid=series_uid, content=content, filename=f"{number - 1}.dcm"),
                f"{number - 1}.dcm",
                len(content),
                sha256(content),
                radtech.pk,
            )
            for number, (image, content) in enumerate(zip(images, contents, strict=True), start=1)
        ]
        rows = RadiologyImage.objects.filter(series__study__radiology_order=order).order_by("instance_number")
        assert [
            (
                row.pk,
                row.image_uid,
                row.instance_number,
                row.file_key,
                row.filename,
                row.file_size,
                row.checksum,
                row.uploaded_by_id,
            )
            for row in rows
        ] == expected
        assert list(RadiologySeries.objects.filter(study__radiology_order=order).values_list("series_uid")) == [
            (series_uid,)
        ]
        for row, content in zip(rows, contents, strict=True):
            assert read_stored(row.file_key) == content
        all_keys.extend(row.file_key for row in rows)

    assert query_counts == [BATCH_QUERIES, BATCH_QUERIES]
    assert row_counts() == (2, 2, 25)
    assert stored_keys() == sorted(all_keys)
    assert _staging_files(settings) == []


@pytest.mark.django_db
def test_a_mixed_batch_stores_the_good_items_and_answers_each_bad_one(
    radiology_store: str, make_order: MakeOrder, ingest_file: IngestFile, settings: Any
) -> None:
    order, other_order = make_order(), make_order()
    study_uid, series_uid = generate_uid(), generate_uid()
    first, *good = _series_of(3, study_uid=study_uid, series_uid=series_uid)
    stored = ingest_file(order, first, filename="first.dcm").image  # the order now has its study
    elsewhere_bytes = relabelled_dicom(
        "MR_small.dcm", study_uid=generate_uid(), series_uid=generate_uid(), instance_number=1
    )
    elsewhere = ingest_file(other_order, elsewhere_bytes, filename="elsewhere.dcm").image
    whole = relabelled_dicom("CT_small.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=9)
    unreadable = whole[: len(whole) // 2]
    wrong_study = relabelled_dicom(
        "CT_small.dcm", study_uid=generate_uid(), series_uid=generate_uid(), instance_number=1
    )

    outcomes = PACSLiteService.ingest_images(
        _items(order, [good[0], unreadable, wrong_study, elsewhere_bytes, good[1]]), uploaded_by=None
    )

    assert [type(outcome) for outcome in outcomes] == [
        IngestResult,
        TruncatedFile,
        StudyMismatch,
        ImageConflict,
        IngestResult,
    ]
    refusals = [outcome for outcome in outcomes if isinstance(outcome, RadiologyError)]
    assert [(error.code, error.status_code, error.detail) for error in refusals] == [
        ("truncated_file", 400, TruncatedFile.default_detail),
        ("study_mismatch", 409, StudyMismatch.default_detail),
        ("image_conflict", 409, "An image with this UID is already stored under another order."),
    ]
    created = [_created(outcomes[0]), _created(outcomes[4])]
    assert [image.image_uid for image in created] == [_sop_uid(good[0]), _sop_uid(good[1])]
    assert [(image.file_key, image.checksum) for image in created] == [
        (_key(study_uid=study_uid, series_uid=series_uid, content=good[0], filename="0.dcm"), sha256(good[0])),
        (_key(study_uid=study_uid, series_uid=series_uid, content=good[1], filename="4.dcm"), sha256(good[1])),
    ]
    assert row_counts() == (2, 2, 4)
    assert list(RadiologyImage.objects.order_by("pk").values_list("image_uid", "checksum")) == [
        (stored.image_uid, sha256(first)),
        (elsewhere.image_uid, sha256(elsewhere_bytes)),
        (created[0].image_uid, sha256(good[0])),
        (created[1].image_uid, sha256(good[1])),
    ]
    assert stored_keys() == sorted([stored.file_key, elsewhere.file_key, *(image.file_key for image in created)])
    assert read_stored(created[0].file_key) == good[0]
    assert read_stored(created[1].file_key) == good[1]
    assert read_stored(elsewhere.file_key) == elsewhere_bytes
    assert _staging_files(settings) == []


@pytest.mark.django_db
@pytest.mark.parametrize("repeat", ["same-bytes", "other-bytes"])
def test_an_image_uid_repeated_within_a_batch_is_answered_after_its_first_copy(
    radiology_store: str, order: RadiologyOrder, repeat: str
) -> None:
    content = sample_bytes("CT_small.dcm")
    again = content if repeat == "same-bytes" else edited_sample("CT_small.dcm", SeriesDescription="Edited")
    neighbour = relabelled_dicom("CT_small.dcm", study_uid=CT_STUDY, series_uid=CT_SERIES, instance_number=2)

    outcomes = PACSLiteService.ingest_images(_items(order, [content, neighbour, again]), uploaded_by=None)

    image = _created(outcomes[0])
    other = _created(outcomes[1])
    if repeat == "same-bytes":
        assert outcomes[2] == IngestResult(image=image, created=False)
        assert outcomes[2].image.pk == image.pk  # type: ignore[union-attr]
    else:
        assert type(outcomes[2]) is ImageConflict
        assert (outcomes[2].code, outcomes[2].detail) == ("image_conflict", ImageConflict.default_detail)
    assert row_counts() == (1, 1, 2)
    assert image.file_key == f"radiology/{CT_STUDY}/{CT_SERIES}/{CT_IMAGE}/0.dcm"
    assert list(RadiologyImage.objects.filter(image_uid=CT_IMAGE).values_list("pk", "file_key", "checksum")) == [
        (image.pk, image.file_key, sha256(content))
    ]
    assert stored_keys() == sorted([image.file_key, other.file_key])
    assert read_stored(image.file_key) == content


@pytest.mark.django_db(transaction=True)
def test_two_studies_for_one_new_order_in_a_batch_fall_back_to_one_by_one(
    radiology_store: str, order: RadiologyOrder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pre-checks pass (the order has no study yet); the batch's transaction finds the second study."""
    first_study, second_study = generate_uid(), generate_uid()
    series_uid = generate_uid()
    first = relabelled_dicom("CT_small.dcm", study_uid=first_study, series_uid=series_uid, instance_number=1)
    second = relabelled_dicom("CT_small.dcm", study_uid=second_study, series_uid=generate_uid(), instance_number=1)
    real_save = storage.save_new_object
    written: list[str] = []

    def save_and_remember(key: str, content: Any, **options: Any) -> str:
        written.append(real_save(key, content, **options))
        return written[-1]

    monkeypatch.setattr(storage, "save_new_object", save_and_remember)

    outcomes = PACSLiteService.ingest_images(_items(order, [first, second]), uploaded_by=None)

    image = _created(outcomes[0])
    assert type(outcomes[1]) is StudyMismatch
    assert outcomes[1].code == "study_mismatch"
    first_key = f"radiology/{first_study}/{series_uid}/{_sop_uid(first)}/0.dcm"
    second_key = _key(study_uid=second_study, series_uid=_series_uid(second), content=second, filename="1.dcm")
    # The batch wrote both files and removed them; one by one, the first is kept, the second removed.
    assert written == [first_key, second_key, first_key, second_key]
    assert list(RadiologyStudy.objects.values_list("study_uid", "radiology_order_id")) == [(first_study, order.pk)]
    assert row_counts() == (1, 1, 1)
    assert image.file_key == first_key
    assert stored_keys() == [first_key]
    assert read_stored(first_key) == first


@pytest.mark.django_db(transaction=True)
def test_a_failed_batch_transaction_is_retried_one_by_one(
    radiology_store: str, order: RadiologyOrder, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    contents = _series_of(3, study_uid=study_uid, series_uid=series_uid)
    real_insert = bulk_insert.insert_new
    calls: list[list[str]] = []

    def fail_the_first_call(images: list[RadiologyImage]) -> None:
        calls.append([image.image_uid for image in images])
        if len(calls) == 1:
            raise IntegrityError("simulated constraint failure")
        real_insert(images)

    monkeypatch.setattr(bulk_insert, "insert_new", fail_the_first_call)

    outcomes = PACSLiteService.ingest_images(_items(order, contents), uploaded_by=None)

    uids = [_sop_uid(content) for content in contents]
    assert calls == [uids, [uids[0]], [uids[1]], [uids[2]]]
    images = [_created(outcome) for outcome in outcomes]
    expected_keys = [
        _key(study_uid=study_uid, series_uid=series_uid, content=content, filename=f"{index}.dcm")
        for index, content in enumerate(contents)
    ]
    assert [(image.image_uid, image.file_key) for image in images] == list(zip(uids, expected_keys, strict=True))
    assert list(RadiologyImage.objects.order_by("instance_number").values_list("pk", "file_key", "checksum")) == [
        (image.pk, key, sha256(content)) for image, key, content in zip(images, expected_keys, contents, strict=True)
    ]
    assert row_counts() == (1, 1, 3)
    assert stored_keys() == sorted(expected_keys)
    for key, content in zip(expected_keys, contents, strict=True):
        assert read_stored(key) == content
    assert _staging_files(settings) == []


@pytest.mark.django_db
def test_instances_without_instance_number_are_numbered_after_their_series_images(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile
) -> None:
    study_uid, series_uid, other_series_uid = generate_uid(), generate_uid(), generate_uid()
    for index, content in enumerate(_series_of(2, study_uid=study_uid, series_uid=series_uid)):
        ingest_file(order, content, filename=f"stored-{index}.dcm")
    contents = [
        _without_instance_number(study_uid=study_uid, series_uid=series_uid),
        _without_instance_number(study_uid=study_uid, series_uid=other_series_uid),
        _without_instance_number(study_uid=study_uid, series_uid=series_uid),
        _without_instance_number(study_uid=study_uid, series_uid=other_series_uid),
        _without_instance_number(study_uid=study_uid, series_uid=series_uid),
    ]

    outcomes = PACSLiteService.ingest_images(_items(order, contents), uploaded_by=None)

    assert [_created(outcome).instance_number for outcome in outcomes] == [3, 1, 4, 2, 5]
    assert {
        uid: list(
            RadiologyImage.objects.filter(series__series_uid=uid)
            .order_by("instance_number")
            .values_list("instance_number", flat=True)
        )
        for uid in (series_uid, other_series_uid)
    } == {series_uid: [1, 2, 3, 4, 5], other_series_uid: [1, 2]}
    assert list(
        RadiologyImage.objects.filter(image_uid__in=[_sop_uid(content) for content in contents])
        .order_by("pk")
        .values_list("image_uid", "instance_number")
    ) == [(_sop_uid(content), number) for content, number in zip(contents, [3, 1, 4, 2, 5], strict=True)]
    assert row_counts() == (1, 2, 7)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("shared", "error"), [("series", SeriesConflict), ("study", StudyConflict)])
def test_two_orders_in_one_batch_cannot_share_a_series_or_a_study(
    radiology_store: str, make_order: MakeOrder, shared: str, error: type[RadiologyError]
) -> None:
    """Neither is stored yet, so only the batch's transaction can see the clash; one by one refuses the second.

    A series shared by two orders' studies would put one patient's image into another patient's study.
    """
    first_order, second_order = make_order(), make_order()
    study_uid, series_uid = generate_uid(), generate_uid()
    first = relabelled_dicom("CT_small.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=1)
    second = relabelled_dicom(
        "CT_small.dcm",
        study_uid=generate_uid() if shared == "series" else study_uid,
        series_uid=series_uid if shared == "series" else generate_uid(),
        instance_number=2,
    )
    items = [
        IngestItem(order=first_order, stream=io.BytesIO(first), filename="first.dcm"),
        IngestItem(order=second_order, stream=io.BytesIO(second), filename="second.dcm"),
    ]

    outcomes = PACSLiteService.ingest_images(items, uploaded_by=None)

    image = _created(outcomes[0])
    assert type(outcomes[1]) is error
    assert outcomes[1].code == error.code
    assert list(RadiologyStudy.objects.values_list("study_uid", "radiology_order_id")) == [(study_uid, first_order.pk)]
    assert list(RadiologySeries.objects.values_list("series_uid", "study__study_uid")) == [(series_uid, study_uid)]
    assert list(RadiologyImage.objects.values_list("image_uid", "file_key")) == [
        (_sop_uid(first), f"radiology/{study_uid}/{series_uid}/{_sop_uid(first)}/first.dcm")
    ]
    assert stored_keys() == [image.file_key]
    assert read_stored(image.file_key) == first


@pytest.mark.django_db
def test_a_repeat_with_other_bytes_after_a_refused_first_copy_is_judged_on_its_own(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile
) -> None:
    """As one by one: the first copy (of another study) is refused and nothing is stored under its
    UID, so the corrected copy that follows is stored; a third copy like the first is refused again."""
    study_uid, series_uid = generate_uid(), generate_uid()
    stored = ingest_file(
        order, relabelled_dicom("CT_small.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=1)
    )
    wrong_study = relabelled("CT_small.dcm", study_uid=generate_uid(), series_uid=series_uid, instance_number=2)
    corrected = edited(wrong_study, StudyInstanceUID=study_uid)
    dataset = pydicom.dcmread(io.BytesIO(corrected))

    outcomes = PACSLiteService.ingest_images(_items(order, [wrong_study, corrected, wrong_study]), uploaded_by=None)

    assert type(outcomes[0]) is StudyMismatch
    image = _created(outcomes[1])
    assert type(outcomes[2]) is ImageConflict
    assert [(error.code, error.detail) for error in (outcomes[0], outcomes[2])] == [  # type: ignore[union-attr]
        ("study_mismatch", StudyMismatch.default_detail),
        ("image_conflict", ImageConflict.default_detail),
    ]
    assert (image.image_uid, image.checksum) == (dataset.SOPInstanceUID, sha256(corrected))
    assert row_counts() == (1, 1, 2)
    assert stored_keys() == sorted([stored.image.file_key, image.file_key])
    assert image.file_key == f"radiology/{study_uid}/{series_uid}/{dataset.SOPInstanceUID}/1.dcm"
    assert read_stored(image.file_key) == corrected
