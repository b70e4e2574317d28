"""WADO-RS retrieval of whole instances: a study, a series or one instance as
multipart/related; type="application/dicom".

Asked with transfer-syntax=*, each part must be byte for byte the stored file (sha256),
readable by pydicom and by dcmtk's dcmdump; without it, Explicit VR Little Endian with the
served identity (test_wado_transcode.py). A stored JPEG leaves as a DICOM Secondary Capture
file whose one pixel data fragment is the JPEG, unchanged.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pydicom.encaps
import pytest
import requests
from dicomweb_client import DICOMwebClient
from django.test import Client
from PIL import Image
from requests.structures import CaseInsensitiveDict

from apps.radiology.imagefiles.patient_identity import EmrIdentity
from apps.radiology.operations.demo import jpeg_with_exif
from apps.radiology.pacs_lite_service import DeclaredImage
from apps.radiology.tests.factories import pydicom_json_without_bulk, read_stored

from .conftest import PHOTO, Put, Stored
from .helpers import QUIET_UID_WARNINGS, body_of, dcmdump, error, json_of, parse_multipart, sha256

pytestmark = [pytest.mark.django_db, QUIET_UID_WARNINGS]

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
NOT_ACCEPTABLE = error("None of the media types in Accept can be produced for this resource.", "not_acceptable")
# The stored files themselves (without transfer-syntax=*, Explicit VR Little Endian and the EMR's identity).
STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"


def retrieve(
    client: Client, url: str, accept: str = 'multipart/related; type="application/dicom"'
) -> list[tuple[str, bytes]]:
    """(part Content-Type, bytes) of each part, read by our strict parser and by dicomweb-client's."""
    response = client.get(url, headers={"Accept": accept})
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "private, max-age=0, must-revalidate"
    body = body_of(response)
    part_type, parts = parse_multipart(response["Content-Type"], body)
    assert part_type == "application/dicom"
    ours = [(part.content_type, part.content) for part in parts]
    assert [content for _ct, content in ours] == decoded_by_dicomweb_client(response["Content-Type"], body)
    return ours


def decoded_by_dicomweb_client(content_type: str, body: bytes) -> list[bytes]:
    wrapped = requests.Response()
    wrapped.status_code = 200
    wrapped.headers = CaseInsensitiveDict({"Content-Type": content_type})
    wrapped._content = body
    reader = DICOMwebClient("http://testserver/api/v1/radiology/dicomweb")
    return list(reader._decode_multipart_message(wrapped, stream=False))


def check_with_dcmdump(content: bytes, image_uid: str, folder: Path) -> str:
    path = folder / f"{image_uid}.dcm"
    path.write_bytes(content)
    result = dcmdump(path)
    assert result.returncode == 0, result.stderr
    assert f"(0008,0018) UI [{image_uid}]" in result.stdout
    return result.stdout


def emr_values(stored: Stored) -> dict[str, str]:
    """The patient identity the study of `stored` shows, as DICOM keyword values."""
    emr = EmrIdentity.of_study(stored.study)
    return {
        "PatientName": emr.name,
        "PatientID": emr.patient_id,
        "PatientBirthDate": emr.birth_date,
        "PatientSex": emr.sex,
    }


def put_with_emr_identity(put: Put, name: str, **changes: object) -> Stored:
    """A sample stored in the test's study whose file already says the EMR's identity (so a
    default retrieval of an Explicit VR Little Endian file is the stored file)."""
    first = put("CT_small.dcm")
    return put(name, **emr_values(first), **changes)


def dicom_part(stored: Stored) -> tuple[str, str]:
    return f"application/dicom; transfer-syntax={stored.image.transfer_syntax_uid}", sha256(stored.content)


def test_a_study_series_and_instance_are_the_stored_files(
    radiology_store: str, put: Put, doctor_client: Client, tmp_path: Path
) -> None:
    ct2 = put("CT_small.dcm", SeriesNumber=1, instance_number=2)
    ct1 = put("CT_small.dcm", series_uid=ct2.series_uid, SeriesNumber=1, instance_number=1)
    rle = put("SC_rgb_rle_2frame.dcm", SeriesNumber=2)
    dose = put("rtdose.dcm", SeriesNumber=3)
    j2k = put("MR_small_jp2klossless.dcm", SeriesNumber=4)
    in_order = [ct1, ct2, rle, dose, j2k]
    for stored in in_order:
        assert read_stored(stored.image.file_key) == stored.content

    study = retrieve(doctor_client, ct1.study_url(), STORED)
    assert [(ct, sha256(content)) for ct, content in study] == [dicom_part(stored) for stored in in_order]
    for (_ct, content), stored in zip(study, in_order, strict=True):
        check_with_dcmdump(content, stored.image_uid, tmp_path)
        assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(content)).SOPInstanceUID == stored.image_uid

    series = retrieve(doctor_client, ct1.series_url(), STORED)
    assert [(ct, sha256(content)) for ct, content in series] == [dicom_part(ct1), dicom_part(ct2)]
    for stored in in_order:
        [(content_type, content)] = retrieve(doctor_client, stored.url(), STORED)
        assert (content_type, sha256(content)) == dicom_part(stored)
        assert content == stored.content


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="application/dicom"; transfer-syntax=*',
        "multipart/related; type=application/dicom; transfer-syntax=*",
        'multipart/related; type="application/dicom"; transfer-syntax="*"',
        'application/json, multipart/related; type="application/dicom"; transfer-syntax=*;q=0.5',
    ],
)
def test_accept_forms_for_the_stored_instances(put: Put, doctor_client: Client, accept: str) -> None:
    stored = put("MR_small_RLE.dcm")
    assert retrieve(doctor_client, stored.url(), accept) == [
        ("application/dicom; transfer-syntax=1.2.840.10008.1.2.5", stored.content)
    ]


@pytest.mark.parametrize(
    "accept",
    [
        "multipart/related; type=application/dicom",
        f"multipart/related; type=application/dicom; transfer-syntax={EXPLICIT_LITTLE}",
        "multipart/related",
        "multipart/*",
        "*/*",
        'application/json, multipart/related; type="application/dicom";q=0.5',
    ],
)
def test_accept_forms_of_the_default_transfer_syntax(put: Put, doctor_client: Client, accept: str) -> None:
    """The default media type and syntax (PS3.18 8.7.3): the RLE file decoded, as for the plain form."""
    stored = put("MR_small_RLE.dcm")
    default = retrieve(doctor_client, stored.url())
    assert [content_type for content_type, _ in default] == [f"application/dicom; transfer-syntax={EXPLICIT_LITTLE}"]
    assert np.array_equal(
        pydicom.dcmread(io.BytesIO(default[0][1])).pixel_array, pydicom.dcmread(stored.path).pixel_array
    )
    assert retrieve(doctor_client, stored.url(), accept) == default


def test_the_stored_transfer_syntax_may_be_named(put: Put, doctor_client: Client) -> None:
    # Files that already say the EMR's identity: named, their own syntax is the stored file.
    native = put_with_emr_identity(put, "CT_small.dcm")
    rle = put_with_emr_identity(put, "MR_small_RLE.dcm")
    for stored in (native, rle):
        syntax = stored.image.transfer_syntax_uid
        accept = f'multipart/related; type="application/dicom"; transfer-syntax={syntax}'
        assert retrieve(doctor_client, stored.url(), accept) == [
            (f"application/dicom; transfer-syntax={syntax}", stored.content)
        ]


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="application/octet-stream"',
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
        "application/dicom",
        "image/jpeg",
        "multipart/related; type=application/dicom;q=0",
    ],
)
def test_what_cannot_be_produced_is_406(put: Put, doctor_client: Client, accept: str) -> None:
    stored = put("CT_small.dcm")
    for url in (stored.url(), stored.series_url(), stored.study_url()):
        response = doctor_client.get(url, headers={"Accept": accept})
        assert response.status_code == 406
        assert json_of(response) == NOT_ACCEPTABLE


@pytest.mark.parametrize("padding", [b"", b"\x00"])
def test_a_jpeg_photo_leaves_as_a_secondary_capture_file_around_the_unchanged_jpeg(
    radiology_store: str, put: Put, doctor_client: Client, tmp_path: Path, padding: bytes
) -> None:
    jpeg = jpeg_with_exif() + padding  # an odd length too: the fragment is then padded to even
    stored = put(PHOTO, content=jpeg, declared=DeclaredImage(series_description="Photo of film", modality="OT"))
    [(content_type, content)] = retrieve(doctor_client, stored.url())
    assert content_type == f"application/dicom; transfer-syntax={JPEG_BASELINE}"
    dump = check_with_dcmdump(content, stored.image_uid, tmp_path)
    assert "(0008,0064) CS [SI]" in dump
    assert "(0028,2110) CS [01]" in dump
    dataset = pydicom.dcmread(tmp_path / f"{stored.image_uid}.dcm")
    assert dataset.file_meta.TransferSyntaxUID == JPEG_BASELINE
    assert dataset.file_meta.MediaStorageSOPClassUID == SC_CLASS
    assert dataset.file_meta.MediaStorageSOPInstanceUID == stored.image_uid
    assert (dataset.SOPClassUID, dataset.SOPInstanceUID) == (SC_CLASS, stored.image_uid)
    assert (dataset.StudyInstanceUID, dataset.SeriesInstanceUID) == (stored.study_uid, stored.series_uid)
    assert (dataset.ConversionType, dataset.LossyImageCompression) == ("SI", "01")
    # An empty basic offset table, then one fragment: the JPEG (padded to even length).
    fragment = jpeg + (b"\x00" if len(jpeg) % 2 else b"")
    assert dataset.PixelData == (
        b"\xfe\xff\x00\xe0" + bytes(4) + b"\xfe\xff\x00\xe0" + len(fragment).to_bytes(4, "little") + fragment
    )
    assert list(pydicom.encaps.generate_frames(dataset.PixelData, number_of_frames=1)) == [fragment]
    assert dataset.pixel_array.shape == (240, 320, 3)
    # The file says what the metadata says, bulk data aside.
    [metadata] = json_of(doctor_client.get(stored.url("/metadata")))
    metadata.pop("7FE00010")
    assert pydicom_json_without_bulk(tmp_path / f"{stored.image_uid}.dcm") == metadata


def test_a_study_with_dicom_and_a_photo(put: Put, doctor_client: Client, tmp_path: Path) -> None:
    ct = put("CT_small.dcm", SeriesNumber=1)
    photo = put(PHOTO, declared=DeclaredImage(series_number=2, modality="OT"))
    parts = retrieve(doctor_client, ct.study_url(), STORED)
    assert [content_type for content_type, _ in parts] == [
        "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
        f"application/dicom; transfer-syntax={JPEG_BASELINE}",
    ]
    assert parts[0][1] == ct.content
    # By default the photo's Secondary Capture is the same (its JPEG is lossy: never decoded).
    assert retrieve(doctor_client, ct.study_url())[1] == parts[1]
    check_with_dcmdump(parts[1][1], photo.image_uid, tmp_path)


def test_retrieving_what_is_not_there_is_404(put: Put, doctor_client: Client) -> None:
    stored = put("CT_small.dcm")
    base = "/api/v1/radiology/dicomweb"
    for url, body in (
        (f"{base}/studies/1.2.3", error("No such study.", "study_not_found")),
        (f"{base}/studies/{stored.study_uid}/series/1.2.3", error("No such series.", "series_not_found")),
        (stored.series_url("/instances/1.2.3"), error("No such instance.", "instance_not_found")),
    ):
        response = doctor_client.get(url)
        assert response.status_code == 404
        assert json_of(response) == body


def test_a_greyscale_jpeg_photo_is_a_monochrome_secondary_capture(
    put: Put, doctor_client: Client, tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((64, 48)).save(buffer, format="JPEG", quality=90)
    stored = put(PHOTO, content=buffer.getvalue())
    [metadata] = json_of(doctor_client.get(stored.url("/metadata")))
    assert {tag: metadata[tag] for tag in ("00280002", "00280004", "00280010", "00280011")} == {
        "00280002": {"vr": "US", "Value": [1]},
        "00280004": {"vr": "CS", "Value": ["MONOCHROME2"]},
        "00280010": {"vr": "US", "Value": [48]},
        "00280011": {"vr": "US", "Value": [64]},
    }
    assert "00280006" not in metadata  # PlanarConfiguration is for colour only
    [(_content_type, content)] = retrieve(doctor_client, stored.url())
    check_with_dcmdump(content, stored.image_uid, tmp_path)
    dataset = pydicom.dcmread(tmp_path / f"{stored.image_uid}.dcm")
    with Image.open(io.BytesIO(stored.content)) as photo:
        assert np.array_equal(dataset.pixel_array, np.asarray(photo))
