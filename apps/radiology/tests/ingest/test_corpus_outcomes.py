"""Outcomes of pydicom's bundled test files that ingest used to get wrong, each exact.

- SC_ybr_full_422_uncompressed.dcm: native YBR_FULL_422 is 4:2:2 subsampled (2 bytes a pixel at
  8 bits, PS3.3 C.7.6.3.1.2), so its 20,000 bytes are whole: stored, its frame located, served
  and rendered.
- Image objects that end, whole, without Pixel Data (the DICOMDIR samples, and a few fragments
  whose file meta names an image SOP class): refused as missing_pixel_data, not truncated_file.
- Objects that are no image keep their outcome (an RT Plan is stored without pixel data).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from django.test import Client
from PIL import Image
from pydicom.data import get_testdata_file

from apps.radiology.errors import MissingPixelData, RadiologyError, UnsupportedTransferSyntax
from apps.radiology.models import RadiologyImage, RadiologyOrder
from apps.radiology.tests.api_fixtures import token_client
from apps.radiology.tests.conftest import IngestFile
from apps.radiology.tests.dicomweb.helpers import multipart_of
from apps.radiology.tests.factories import (
    assert_nothing_stored,
    edited_sample,
    read_stored,
    row_counts,
    sample_bytes,
    stored_keys,
)

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning"),
    pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning"),
]

API = "/api/v1/radiology/dicomweb"
YBR_422 = "SC_ybr_full_422_uncompressed.dcm"
OHIF_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
MISSING_PIXEL_DATA_DETAIL = "The file is an image object without Pixel Data (7FE0,0010), which every image must have."
# One of the 50 CT Image Storage objects of pydicom's DICOMDIR tests: a header, no pixel data.
DICOMDIR_CT = "dicomdirtests/TINY_ALPHA/PT000000/ST000000/SE000000/IM000001"


def _testdata(relative: str) -> Path:
    """A file of pydicom's test data by its path under test_files (some names repeat in folders)."""
    return Path(get_testdata_file("CT_small.dcm")).parent / relative


def _url(image: RadiologyImage, suffix: str) -> str:
    study, series = image.series.study.study_uid, image.series.series_uid
    return f"{API}/studies/{study}/series/{series}/instances/{image.image_uid}{suffix}"


def test_native_ybr_full_422_is_stored_with_its_frame_located(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile, doctor: Any
) -> None:
    content = sample_bytes(YBR_422)
    dataset = pydicom.dcmread(io.BytesIO(content))
    assert (dataset.Rows, dataset.Columns, dataset.PhotometricInterpretation) == (100, 100, "YBR_FULL_422")
    assert len(dataset.PixelData) == 20_000  # 100 x 100 pixels x 2 bytes: Y Y Cb Cr per two pixels

    image = ingest_file(order, YBR_422).image

    image = RadiologyImage.objects.select_related("series__study").get(pk=image.pk)
    assert (image.rows, image.columns, image.number_of_frames) == (100, 100, 1)
    offset = content.index(dataset.PixelData)
    assert image.pixel_data["offset"] == offset
    assert (image.pixel_data["length"], image.pixel_data["frame_length"]) == (20_000, 20_000)
    assert image.pixel_data["encapsulated"] is False
    assert row_counts() == (1, 1, 1)
    assert read_stored(image.file_key) == content

    client: Client = token_client(doctor)
    response = client.get(_url(image, "/frames/1"), headers={"Accept": OHIF_ACCEPT})
    assert response.status_code == 200, response.content
    part_type, parts = multipart_of(response)
    assert part_type == "application/octet-stream"
    assert [(part.content_type, part.content) for part in parts] == [
        ("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1", dataset.PixelData)
    ]

    response = client.get(_url(image, "/rendered"))
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "image/jpeg"
    picture = Image.open(io.BytesIO(response.content))
    assert (picture.format, picture.size, picture.mode) == ("JPEG", (100, 100), "RGB")
    # pydicom upsamples the chroma and converts to RGB: the render is its picture (JPEG-lossy).
    expected = dataset.pixel_array.astype(np.int16)
    assert np.abs(np.asarray(picture).astype(np.int16) - expected).mean() < 8


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda: _testdata(DICOMDIR_CT).read_bytes(), id="dicomdir-CT"),
        pytest.param(lambda: sample_bytes("UN_sequence.dcm"), id="UN_sequence-CT-in-meta"),
        pytest.param(lambda: sample_bytes("no_meta_group_length.dcm"), id="no_meta_group_length-RT-image-in-meta"),
        pytest.param(lambda: sample_bytes("priv_SQ.dcm"), id="priv_SQ-MR-in-meta"),
        pytest.param(lambda: edited_sample("CT_small.dcm", PixelData=None), id="CT_small-without-pixel-data"),
    ],
)
def test_an_image_object_without_pixel_data_is_missing_pixel_data(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile, content: Callable[[], bytes]
) -> None:
    with pytest.raises(RadiologyError) as excinfo:
        ingest_file(order, content(), filename="x.dcm")

    assert type(excinfo.value) is MissingPixelData
    assert (excinfo.value.code, excinfo.value.status_code) == ("missing_pixel_data", 400)
    assert str(excinfo.value.detail) == MISSING_PIXEL_DATA_DETAIL
    assert_nothing_stored()


def test_every_dicomdir_image_without_pixel_data_is_missing_pixel_data(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile
) -> None:
    """All 50 of them (CT Image Storage, cut to a header on purpose by pydicom's authors)."""
    paths = sorted(
        path
        for path in (_testdata("dicomdirtests")).rglob("IM*")
        if path.is_file() and path.read_bytes()[128:132] == b"DICM"
    )
    assert len(paths) == 50
    codes = []
    for path in paths:
        with pytest.raises(RadiologyError) as excinfo:
            ingest_file(order, path.read_bytes(), filename="x.dcm")
        codes.append(excinfo.value.code)
    assert codes == ["missing_pixel_data"] * 50
    assert_nothing_stored()


def test_a_non_image_object_without_pixel_data_is_still_stored(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile
) -> None:
    content = sample_bytes("rtplan.dcm")

    image = ingest_file(order, "rtplan.dcm").image

    assert (image.number_of_frames, image.pixel_data) == (1, {})
    assert read_stored(image.file_key) == content
    assert row_counts() == (1, 1, 1)
    assert stored_keys() == [image.file_key]


SC_RGB_JPEG = "SC_rgb_jpeg.dcm"


def test_a_data_set_in_another_encoding_than_its_file_meta_says_is_read_as_pydicom_reads_it(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile, doctor: Any
) -> None:
    """SC_rgb_jpeg.dcm's meta says JPEG Baseline (explicit VR) over an implicit VR data set:
    pydicom reads the elements as it finds them, and so does locating its pixel data (it was
    refused as truncated_file, its Pixel Data header read as explicit)."""
    content = sample_bytes(SC_RGB_JPEG)
    dataset = pydicom.dcmread(io.BytesIO(content))
    assert dataset.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"

    image = ingest_file(order, SC_RGB_JPEG).image

    image = RadiologyImage.objects.select_related("series__study").get(pk=image.pk)
    assert (image.rows, image.columns, image.number_of_frames) == (256, 256, 1)
    assert image.transfer_syntax_uid == "1.2.840.10008.1.2.4.50"
    _offset_table, fragment = pydicom.encaps.generate_fragments(dataset.PixelData)  # the empty offset table first
    offset = content.index(fragment)
    assert {key: image.pixel_data[key] for key in ("vr", "encapsulated", "frames")} == {
        "vr": "OB",
        "encapsulated": True,
        "frames": [[[offset, len(fragment)]]],
    }
    assert read_stored(image.file_key) == content

    client: Client = token_client(doctor)
    response = client.get(_url(image, "/frames/1"), headers={"Accept": OHIF_ACCEPT})
    assert response.status_code == 200, response.content
    _part_type, parts = multipart_of(response)
    assert [(part.content_type, part.content) for part in parts] == [
        ("image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50", fragment)
    ]
    response = client.get(
        _url(image, "/frames/1"), headers={"Accept": 'multipart/related; type="application/octet-stream"'}
    )
    assert response.status_code == 200, response.content
    _part_type, parts = multipart_of(response)
    assert [part.content for part in parts] == [dataset.pixel_array.tobytes()]
    metadata = client.get(_url(image, "/metadata")).json()[0]
    assert metadata["7FE00010"]["vr"] == "OB"
    assert metadata["00280004"] == {"vr": "CS", "Value": ["RGB"]}


def test_a_deflated_file_is_unsupported_transfer_syntax(
    radiology_store: str, order: RadiologyOrder, ingest_file: IngestFile
) -> None:
    with pytest.raises(RadiologyError) as excinfo:
        ingest_file(order, "image_dfl.dcm")

    assert type(excinfo.value) is UnsupportedTransferSyntax
    assert (excinfo.value.code, excinfo.value.status_code) == ("unsupported_transfer_syntax", 415)
    assert str(excinfo.value.detail) == (
        "Deflated DICOM files are not accepted; send the file uncompressed or image-compressed."
    )
    assert_nothing_stored()
