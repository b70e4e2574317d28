"""Demo data built from real sample files: pydicom's bundled DICOM files and a Pillow JPEG.

Used by `seed_demo --with-images` and by the tests. pydicom's CT and MR samples come from
different studies; a demo order has one study, so copies are re-labelled with one study
UID, fresh series/instance UIDs, and the order's patient, exactly as a modality would
label a real exam.
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pydicom
from django.contrib.auth.models import AbstractBaseUser
from PIL import Image
from pydicom.data import get_testdata_file

from apps.radiology.imagefiles.declared import DeclaredImage
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.ingest.pipeline import ingest_image
from apps.radiology.models import RadiologyImage, RadiologyOrder


def sample_path(name: str) -> Path:
    """Path of one of pydicom's bundled test files (offline; see FIELD-NOTES)."""
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"pydicom sample {name} is not bundled")
    return Path(str(path))


def relabelled_dicom(
    name: str,
    *,
    study_uid: str,
    series_uid: str,
    instance_number: int,
    patient_name: str = "",
    patient_id: str = "",
    accession_number: str = "",
    series_number: int | None = None,
) -> bytes:
    """A pydicom sample re-labelled into the given study and series with a new SOP UID."""
    dataset = pydicom.dcmread(sample_path(name))
    image_uid = generate_uid()
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = series_uid
    dataset.SOPInstanceUID = image_uid
    dataset.file_meta.MediaStorageSOPInstanceUID = image_uid
    dataset.InstanceNumber = instance_number
    if series_number is not None:
        dataset.SeriesNumber = series_number
    if patient_name:
        dataset.PatientName = patient_name
    if patient_id:
        dataset.PatientID = patient_id
    if accession_number:
        dataset.AccessionNumber = accession_number
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def jpeg_with_exif(*, width: int = 320, height: int = 240, make: str = "PACS-lite demo camera") -> bytes:
    """A small greyscale-gradient JPEG carrying EXIF Make, Model and DateTime."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    exif = Image.Exif()
    exif[0x010F] = make  # Make
    exif[0x0110] = "Phone X1"  # Model
    exif[0x0132] = "2026:01:15 10:00:00"  # DateTime
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85, exif=exif)
    return buffer.getvalue()


def ingest_demo_study(order: RadiologyOrder, *, uploaded_by: AbstractBaseUser | None) -> list[RadiologyImage]:
    """Fill `order` with a CT series (3 images), an MR series (2 images) and a JPEG photo."""
    patient = order.visit.patient
    study_uid = generate_uid()
    images: list[RadiologyImage] = []
    plan = [("CT_small.dcm", 1, 3), ("MR_small.dcm", 2, 2)]
    for sample, series_number, count in plan:
        series_uid = generate_uid()
        for instance_number in range(1, count + 1):
            content = relabelled_dicom(
                sample,
                study_uid=study_uid,
                series_uid=series_uid,
                instance_number=instance_number,
                series_number=series_number,
                patient_name=patient.dicom_name,
                patient_id=patient.hospital_number,
                accession_number=order.accession_number,
            )
            result = ingest_image(
                order=order,
                stream=io.BytesIO(content),
                filename=f"{sample.removesuffix('.dcm')}_{instance_number}.dcm",
                uploaded_by=uploaded_by,
            )
            images.append(result.image)
    photo = ingest_image(
        order=order,
        stream=io.BytesIO(jpeg_with_exif()),
        filename="film_photo.jpg",
        uploaded_by=uploaded_by,
        declared=DeclaredImage(study_uid=study_uid, series_description="Photo of film", series_number=3, modality="OT"),
    )
    images.append(photo.image)
    return images


def demo_visit_date() -> dt.date:
    return dt.date(2026, 1, 15)
