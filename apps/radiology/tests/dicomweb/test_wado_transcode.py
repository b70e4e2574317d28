"""WADO-RS instances in the negotiated transfer syntax, with the served patient identity.

PS3.18 8.7.3: without a transfer-syntax parameter, application/dicom is Explicit VR Little
Endian, unless the pixel data is only available lossy compressed; `transfer-syntax=*` is the
server's choice, here the stored file byte for byte. Every part but `*` carries the EMR's
patient identity, the file's differing values in the Original Attributes Sequence, as the
WADO-RS metadata does; pixels never change.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from django.test import Client

from apps.radiology.models import RadiologyImage

from .conftest import PHOTO, Put
from .helpers import QUIET_UID_WARNINGS, dcmdump, error, json_of
from .test_wado_retrieve import emr_values, put_with_emr_identity, retrieve

pytestmark = [pytest.mark.django_db, QUIET_UID_WARNINGS]

EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
DICOM = 'multipart/related; type="application/dicom"'
STORED = f"{DICOM}; transfer-syntax=*"
EXPLICIT = f"{DICOM}; transfer-syntax={EXPLICIT_LITTLE}"
IDENTITY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")


def read(content: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(content))


def dumped(content: bytes, folder: Path, name: str) -> str:
    """dcmdump's reading of a part (it must read it whole, without complaint)."""
    path = folder / f"{name}.dcm"
    path.write_bytes(content)
    result = dcmdump(path)
    assert result.returncode == 0, result.stderr
    assert "E: " not in result.stderr and "W: " not in result.stderr, result.stderr
    return result.stdout


def identity_of(dataset: pydicom.Dataset) -> dict[str, str]:
    return {keyword: str(dataset.get(keyword, "") or "") for keyword in IDENTITY_KEYWORDS}


def original_attributes(dataset: pydicom.Dataset) -> dict[str, str]:
    """The file's own values as the last Original Attributes item records them."""
    [item] = dataset.OriginalAttributesSequence
    [modified] = item.ModifiedAttributesSequence
    assert (item.ReasonForTheAttributeModification, item.ModifyingSystem) == ("COERCE", "PACS-lite")
    return {keyword: str(modified.get(keyword)) for keyword in IDENTITY_KEYWORDS if keyword in modified}


def test_explicit_little_endian_with_the_emr_identity_is_the_stored_file(put: Put, doctor_client: Client) -> None:
    stored = put_with_emr_identity(put, "CT_small.dcm")
    for accept in (DICOM, EXPLICIT, STORED, "*/*"):
        assert retrieve(doctor_client, stored.url(), accept) == [
            (f"application/dicom; transfer-syntax={EXPLICIT_LITTLE}", stored.content)
        ]


def test_another_identity_is_replaced_and_recorded_pixels_and_the_rest_unchanged(
    radiology_store: str, put: Put, doctor_client: Client, tmp_path: Path
) -> None:
    stored = put("CT_small.dcm")  # CompressedSamples^CT1, 1CT1: not the order's patient
    source = stored.dataset()
    [(content_type, content)] = retrieve(doctor_client, stored.url())
    assert content_type == f"application/dicom; transfer-syntax={EXPLICIT_LITTLE}"
    served = read(content)
    assert identity_of(served) == emr_values(stored)
    assert original_attributes(served) == {
        "PatientName": "CompressedSamples^CT1",
        "PatientID": "1CT1",
        "PatientSex": "O",
    }
    # Everything from the pixel data on is the stored file's (it has nothing after it).
    pixel_offset = stored.image.pixel_data["offset"]
    assert content.endswith(stored.content[pixel_offset - 12 :])
    assert served.PixelData == source.PixelData
    assert served.file_meta.TransferSyntaxUID == EXPLICIT_LITTLE
    assert served.file_meta.MediaStorageSOPInstanceUID == stored.image_uid
    # What the metadata shows, the file says.
    [metadata] = json_of(doctor_client.get(stored.url("/metadata")))
    for tag in ("00100010", "00100020", "00100030", "00100040", "04000561"):
        assert served[tag].to_json_dict(None, None) == metadata[tag], tag
    # Every other element is the file's.
    for element in source:
        if element.keyword not in (*IDENTITY_KEYWORDS, "OriginalAttributesSequence", "PixelData"):
            assert served[element.tag] == element, element.keyword
    dump = dumped(content, tmp_path, stored.image_uid)
    assert "(0400,0561) SQ" in dump
    # transfer-syntax=* is the stored file, its own identity and all.
    assert retrieve(doctor_client, stored.url(), STORED) == [(content_type, stored.content)]


@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_native_pixel_data_in_another_encoding_leaves_as_explicit_little_endian(
    put: Put, doctor_client: Client, tmp_path: Path, name: str
) -> None:
    stored = put_with_emr_identity(put, name)
    source = stored.dataset()
    [(content_type, content)] = retrieve(doctor_client, stored.url())
    assert content_type == f"application/dicom; transfer-syntax={EXPLICIT_LITTLE}"
    served = read(content)
    assert served.file_meta.TransferSyntaxUID == EXPLICIT_LITTLE
    assert served.original_encoding == (False, True)
    assert np.array_equal(served.pixel_array, source.pixel_array)
    assert served.pixel_array.dtype == source.pixel_array.dtype.newbyteorder("=")  # now little endian
    assert identity_of(served) == emr_values(stored)
    assert "OriginalAttributesSequence" not in served
    for element in source:
        if element.keyword != "PixelData":
            assert served[element.tag].value == element.value, element.keyword
    dumped(content, tmp_path, stored.image_uid)
    assert retrieve(doctor_client, stored.url(), STORED) == [
        (f"application/dicom; transfer-syntax={stored.image.transfer_syntax_uid}", stored.content)
    ]


@pytest.mark.parametrize(
    "name",
    ["MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_jpeg_gdcm.dcm", "MR_small_jp2klossless.dcm"],
)
def test_lossless_compressed_pixel_data_is_decoded_frame_by_frame(
    radiology_store: str, put: Put, doctor_client: Client, tmp_path: Path, name: str
) -> None:
    stored = put(name)
    source = stored.dataset()
    [(content_type, content)] = retrieve(doctor_client, stored.url())
    assert content_type == f"application/dicom; transfer-syntax={EXPLICIT_LITTLE}"
    served = read(content)
    assert served.file_meta.TransferSyntaxUID == EXPLICIT_LITTLE
    assert served.SOPInstanceUID == stored.image_uid  # a lossless transcode keeps the instance
    assert np.array_equal(served.pixel_array, source.pixel_array)
    assert len(served.PixelData) == len(source.pixel_array.tobytes()) + len(source.pixel_array.tobytes()) % 2
    assert served.PhotometricInterpretation == source.PhotometricInterpretation
    assert identity_of(served) == emr_values(stored)
    assert original_attributes(served)["PatientName"] == str(source.PatientName)
    dumped(content, tmp_path, stored.image_uid)
    # Named, the stored syntax leaves as stored (with the served identity); * is the stored file.
    syntax = stored.image.transfer_syntax_uid
    [(named_type, named)] = retrieve(doctor_client, stored.url(), f"{DICOM}; transfer-syntax={syntax}")
    assert named_type == f"application/dicom; transfer-syntax={syntax}"
    assert identity_of(read(named)) == emr_values(stored)
    assert read(named).PixelData == source.PixelData
    assert retrieve(doctor_client, stored.url(), STORED) == [(named_type, stored.content)]


@pytest.mark.parametrize("name", ["JPEG-lossy.dcm", "SC_rgb_dcmtk_+eb+cr.dcm"])
def test_lossy_compressed_pixel_data_keeps_its_syntax(
    put: Put, doctor_client: Client, tmp_path: Path, name: str
) -> None:
    stored = put(name)
    source = stored.dataset()
    syntax = stored.image.transfer_syntax_uid
    [(content_type, content)] = retrieve(doctor_client, stored.url())
    assert content_type == f"application/dicom; transfer-syntax={syntax}"
    served = read(content)
    assert served.file_meta.TransferSyntaxUID == syntax
    assert served.PixelData == source.PixelData
    assert identity_of(served) == emr_values(stored)
    dumped(content, tmp_path, stored.image_uid)
    # Never decompressed on request: Explicit VR Little Endian alone is 406, with * beside it the file.
    response = doctor_client.get(stored.url(), headers={"Accept": EXPLICIT})
    assert response.status_code == 406
    assert json_of(response) == error(
        "None of the media types in Accept can be produced for this resource.", "not_acceptable"
    )
    assert retrieve(doctor_client, stored.url(), f"{EXPLICIT}, {STORED}") == [(content_type, stored.content)]


def test_a_lossy_file_with_the_emr_identity_is_the_stored_file(put: Put, doctor_client: Client) -> None:
    stored = put_with_emr_identity(put, "JPEG-lossy.dcm")
    assert retrieve(doctor_client, stored.url()) == [
        (f"application/dicom; transfer-syntax={stored.image.transfer_syntax_uid}", stored.content)
    ]


def test_each_part_of_a_study_has_its_own_syntax(put: Put, doctor_client: Client) -> None:
    ct = put("CT_small.dcm", SeriesNumber=1)
    rle = put("MR_small_RLE.dcm", SeriesNumber=2)
    lossy = put("JPEG-lossy.dcm", SeriesNumber=3)
    photo = put(PHOTO, declared=None)
    parts = retrieve(doctor_client, ct.study_url())
    photo_syntax = RadiologyImage.objects.get(pk=photo.image.pk).transfer_syntax_uid
    assert [content_type for content_type, _ in parts] == [
        f"application/dicom; transfer-syntax={syntax}"
        for syntax in (EXPLICIT_LITTLE, EXPLICIT_LITTLE, lossy.image.transfer_syntax_uid, photo_syntax)
    ]
    assert [read(content).SOPInstanceUID for _ct, content in parts] == [
        stored.image_uid for stored in (ct, rle, lossy, photo)
    ]
    # Asked for Explicit VR Little Endian or else what is stored: each part what it can be.
    mixed = retrieve(doctor_client, ct.study_url(), f"{EXPLICIT}, {STORED}")
    assert [content_type for content_type, _ in mixed][:3] == [
        f"application/dicom; transfer-syntax={syntax}"
        for syntax in (EXPLICIT_LITTLE, EXPLICIT_LITTLE, lossy.image.transfer_syntax_uid)
    ]
    assert mixed[2][1] == lossy.content
    # Explicit VR Little Endian alone: the lossy instance cannot be, so neither can the study.
    assert doctor_client.get(ct.study_url(), headers={"Accept": EXPLICIT}).status_code == 406
