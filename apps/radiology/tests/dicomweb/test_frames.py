"""WADO-RS frames: .../instances/{uid}/frames/{list} as multipart/related.

Native pixel data leaves byte for byte (a slice of pydicom's ds.PixelData) as
application/octet-stream in Explicit VR Little Endian; compressed frames leave as stored
when the Accept allows it (transfer-syntax=*), or decoded to pydicom's pixel_array bytes
when the client asks for uncompressed octet-stream. Each test checks the part's
Content-Type (with its transfer-syntax) and the exact bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydicom
import pydicom.encaps
import pydicom.pixels
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from PIL import Image

from apps.radiology.access import signing
from apps.radiology.fastpaths.prepared import executed_sql

from .conftest import PHOTO, Put, Stored
from .helpers import error, json_of, multipart_of

pytestmark = pytest.mark.django_db

OHIF_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
UNCOMPRESSED_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
NO_SUCH_FRAME = error("The instance has no such frame.", "frame_not_found")
BAD_FRAME_NUMBER = error("Frame numbers must be positive integers.", "frame_not_found")


def stored_frames(stored: Stored) -> list[bytes]:
    """Every frame of the stored file as pydicom cuts it (encapsulated: its frame items)."""
    dataset = stored.dataset()
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if dataset.file_meta.TransferSyntaxUID.is_encapsulated:
        return list(pydicom.encaps.generate_frames(dataset.PixelData, number_of_frames=frames))
    length = len(dataset.PixelData) // frames
    return [dataset.PixelData[index * length : (index + 1) * length] for index in range(frames)]


def get_frames(client: Client, stored: Stored, frames: str, accept: str) -> tuple[str, list[tuple[str, bytes]]]:
    response = client.get(stored.url(f"/frames/{frames}"), headers={"Accept": accept})
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "private, max-age=0, must-revalidate"
    part_type, parts = multipart_of(response)
    return part_type, [(part.content_type, part.content) for part in parts]


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_a_native_frame_is_exactly_the_pixel_data_bytes(
    radiology_store: str, put: Put, doctor_client: Client, name: str
) -> None:
    stored = put(name)
    part_type, parts = get_frames(doctor_client, stored, "1", OHIF_ACCEPT)
    assert part_type == "application/octet-stream"
    assert parts == [(f"application/octet-stream; transfer-syntax={EXPLICIT_LITTLE}", stored.dataset().PixelData)]


def test_every_frame_of_a_native_multiframe_instance(radiology_store: str, put: Put, doctor_client: Client) -> None:
    stored = put("rtdose.dcm")  # 15 frames, Implicit VR Little Endian, 32 bits
    expected = stored_frames(stored)
    assert len(expected) == 15
    assert all(len(frame) == 10 * 10 * 4 for frame in expected)
    _type, parts = get_frames(doctor_client, stored, ",".join(str(n) for n in range(1, 16)), OHIF_ACCEPT)
    assert parts == [(f"application/octet-stream; transfer-syntax={EXPLICIT_LITTLE}", frame) for frame in expected]
    # Asked out of order and twice: answered in the order first asked, each frame once.
    _type, parts = get_frames(doctor_client, stored, "15,1,7,7", OHIF_ACCEPT)
    assert [content for _ct, content in parts] == [expected[14], expected[0], expected[6]]


@pytest.mark.parametrize(
    ("name", "media_type", "syntax"),
    [
        ("JPEG-lossy.dcm", "image/jpeg", "1.2.840.10008.1.2.4.51"),
        ("SC_rgb_jpeg_dcmtk.dcm", "image/jpeg", "1.2.840.10008.1.2.4.50"),
        ("JPEG2000.dcm", "image/jp2", "1.2.840.10008.1.2.4.91"),
        ("MR_small_jp2klossless.dcm", "image/jp2", "1.2.840.10008.1.2.4.90"),
        ("MR_small_RLE.dcm", "image/dicom-rle", "1.2.840.10008.1.2.5"),
    ],
)
def test_a_compressed_frame_leaves_as_stored_when_any_syntax_is_accepted(
    radiology_store: str, put: Put, doctor_client: Client, name: str, media_type: str, syntax: str
) -> None:
    stored = put(name)
    [frame] = stored_frames(stored)
    part_type, parts = get_frames(doctor_client, stored, "1", OHIF_ACCEPT)
    assert part_type == media_type  # the response's type= names what its parts are
    assert parts == [(f"{media_type}; transfer-syntax={syntax}", frame)]
    # Asking for the stored media type itself gives the same.
    _type, parts = get_frames(doctor_client, stored, "1", f'multipart/related; type="{media_type}"')
    assert parts == [(f"{media_type}; transfer-syntax={syntax}", frame)]


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_jpeg_dcmtk.dcm",
        "JPEG2000.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_RLE.dcm",
        "SC_rgb_rle_2frame.dcm",
    ],
)
@pytest.mark.parametrize("accept", [UNCOMPRESSED_ACCEPT, 'multipart/related; type="application/octet-stream"'])
def test_a_compressed_frame_is_decoded_when_uncompressed_is_asked(
    put: Put, doctor_client: Client, name: str, accept: str
) -> None:
    stored = put(name)
    count = stored.image.number_of_frames
    _type, parts = get_frames(doctor_client, stored, ",".join(str(n) for n in range(1, count + 1)), accept)
    expected = [pydicom.pixels.pixel_array(str(stored.path), index=index).tobytes() for index in range(count)]
    assert parts == [(f"application/octet-stream; transfer-syntax={EXPLICIT_LITTLE}", frame) for frame in expected]


def test_each_frame_of_an_rle_multiframe_instance_is_its_own(
    radiology_store: str, put: Put, doctor_client: Client
) -> None:
    stored = put("SC_rgb_rle_2frame.dcm")
    first, second = stored_frames(stored)
    assert first != second
    dataset = stored.dataset()
    assert pydicom.encaps.get_frame(dataset.PixelData, 1, number_of_frames=2) == second
    for number, frame in ((1, first), (2, second)):
        _type, parts = get_frames(doctor_client, stored, str(number), OHIF_ACCEPT)
        assert parts == [("image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5", frame)]
    # Decoded, the two frames are pydicom's frame 1 and frame 2 (they differ).
    _type, parts = get_frames(doctor_client, stored, "2,1", UNCOMPRESSED_ACCEPT)
    decoded = [pydicom.pixels.pixel_array(str(stored.path), index=index) for index in (1, 0)]
    assert not np.array_equal(decoded[0], decoded[1])
    assert [content for _ct, content in parts] == [array.tobytes() for array in decoded]


def test_a_big_endian_frame_leaves_as_explicit_little_endian(put: Put, doctor_client: Client) -> None:
    stored = put("MR_small_bigendian.dcm")
    assert stored.image.transfer_syntax_uid == "1.2.840.10008.1.2.2"
    _type, parts = get_frames(doctor_client, stored, "1", OHIF_ACCEPT)
    little = pydicom.pixels.pixel_array(str(stored.path)).astype("<i2").tobytes()
    assert stored.dataset().PixelData != little  # the stored bytes are big endian
    assert parts == [(f"application/octet-stream; transfer-syntax={EXPLICIT_LITTLE}", little)]


def test_8_bit_samples_in_a_big_endian_ow_value_leave_unswapped(put: Put, doctor_client: Client) -> None:
    """OW is a stream of 16-bit words: big endian swaps 8-bit samples in pairs (and this frame is odd-sized)."""
    stored = put("SC_rgb_small_odd_big_endian.dcm")  # 3x3 RGB, 8 bits, OW, 27 bytes + 1 pad
    rgb = pydicom.pixels.pixel_array(str(stored.path)).tobytes()
    assert len(rgb) == 27
    assert stored.dataset().PixelData[:27] != rgb
    for accept in (OHIF_ACCEPT, UNCOMPRESSED_ACCEPT):
        _type, parts = get_frames(doctor_client, stored, "1", accept)
        assert parts == [(f"application/octet-stream; transfer-syntax={EXPLICIT_LITTLE}", rgb)]
    # The same file in little endian has those very bytes.
    little = put("SC_rgb_small_odd.dcm")
    assert get_frames(doctor_client, little, "1", OHIF_ACCEPT)[1] == parts


def test_a_jpeg_photo_frame_is_the_stored_jpeg_unchanged(radiology_store: str, put: Put, doctor_client: Client) -> None:
    stored = put(PHOTO)
    for accept in (
        OHIF_ACCEPT,
        'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50',
        "multipart/related; type=image/jpeg",
    ):
        _type, parts = get_frames(doctor_client, stored, "1", accept)
        assert parts == [("image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50", stored.content)]


def test_a_jpeg_photo_frame_decoded(put: Put, doctor_client: Client) -> None:
    stored = put(PHOTO)
    _type, parts = get_frames(doctor_client, stored, "1", UNCOMPRESSED_ACCEPT)
    with Image.open(stored.path) as photo:
        expected = np.asarray(photo.convert("RGB")).tobytes()
    assert parts == [(f"application/octet-stream; transfer-syntax={EXPLICIT_LITTLE}", expected)]
    assert len(expected) == 320 * 240 * 3


@pytest.mark.parametrize(
    ("name", "frames", "body"),
    [
        ("CT_small.dcm", "2", NO_SUCH_FRAME),
        ("rtdose.dcm", "16", NO_SUCH_FRAME),
        ("rtdose.dcm", "1,16", NO_SUCH_FRAME),
        ("SC_rgb_rle_2frame.dcm", "3", NO_SUCH_FRAME),
        (PHOTO, "2", NO_SUCH_FRAME),
        ("CT_small.dcm", "0", BAD_FRAME_NUMBER),
        ("CT_small.dcm", "-1", BAD_FRAME_NUMBER),
        ("CT_small.dcm", "one", BAD_FRAME_NUMBER),
        ("CT_small.dcm", ",", BAD_FRAME_NUMBER),
    ],
)
def test_a_frame_out_of_range_is_404(
    put: Put, doctor_client: Client, name: str, frames: str, body: dict[str, str]
) -> None:
    stored = put(name)
    for accept in (OHIF_ACCEPT, UNCOMPRESSED_ACCEPT):
        response = doctor_client.get(stored.url(f"/frames/{frames}"), headers={"Accept": accept})
        assert response.status_code == 404
        assert response["Content-Type"] == "application/json"
        assert json_of(response) == body


@pytest.mark.parametrize("frames", ["1", "1,1"])
def test_pixel_data_that_cannot_be_decoded_is_422_before_any_body(put: Put, doctor_client: Client, frames: str) -> None:
    """JPEG-lossy.dcm's 12-bit stream defeats pylibjpeg and Pillow (only GDCM reads it)."""
    stored = put("JPEG-lossy.dcm")
    response = doctor_client.get(stored.url(f"/frames/{frames}"), headers={"Accept": UNCOMPRESSED_ACCEPT})
    assert response.status_code == 422
    assert json_of(response) == error("Could not decode the pixel data: RuntimeError.", "rendering_failed")
    # As stored, the frame still leaves: the client may have a decoder that copes.
    _type, parts = get_frames(doctor_client, stored, frames, OHIF_ACCEPT)
    assert [content for _ct, content in parts] == stored_frames(stored)  # a frame asked twice leaves once


def test_an_instance_without_pixel_data_has_no_frames(put: Put, doctor_client: Client) -> None:
    stored = put("rtplan.dcm")
    assert stored.image.pixel_data == {}
    for accept in (OHIF_ACCEPT, UNCOMPRESSED_ACCEPT):
        response = doctor_client.get(stored.url("/frames/1"), headers={"Accept": accept})
        assert response.status_code == 404
        assert json_of(response) == NO_SUCH_FRAME
    response = doctor_client.get(stored.url("/frames/1/rendered"))
    assert response.status_code == 422
    assert json_of(response) == error("Could not decode the pixel data: AttributeError.", "rendering_failed")
    response = doctor_client.get(stored.url("/bulk/7FE00010"))
    assert (response.status_code, json_of(response)) == (404, error("No such bulk data.", "bulkdata_not_found"))


def test_a_frame_asked_with_a_viewer_token_costs_two_statements_and_reads_no_study_details(
    put: Put, doctor: Any
) -> None:
    """What OHIF sends for every frame: the instance, the token's row checked in that statement, the audit event.

    The instance comes with its series' and study's UIDs only: the patient's name, the study's
    description and the rest are not read for a frame.
    """
    stored = put("CT_small.dcm")
    viewer = Client(
        headers={"Authorization": f"Bearer {signing.issue_viewer_token(study=stored.image.series.study, user=doctor)}"}
    )
    viewer.get(stored.url("/frames/1"), headers={"Accept": OHIF_ACCEPT})  # compiles the lookups

    with CaptureQueriesContext(connection) as queries:
        part_type, parts = get_frames(viewer, stored, "1", OHIF_ACCEPT)

    assert (part_type, [content for _type, content in parts]) == (
        "application/octet-stream",
        [stored.dataset().PixelData],
    )
    statements = [executed_sql(query["sql"]) for query in queries.captured_queries]
    assert [sql.split(" ")[0] for sql in statements] == ["SELECT", "INSERT"]
    image_sql = statements[0]
    # The token's row (not revoked, of this study) and its issuer's standing, in the instance's statement.
    for table in ("radiology_radiologyimage", "radiology_viewertoken", "auth_user", "radiology_linkrevocation"):
        assert f'"{table}"' in image_sql
    for detail in ("patient_name", "patient_id", "study_description", "accession_number", "series_description"):
        assert f'"{detail}"' not in image_sql
    assert '"image_metadata"' not in image_sql and '"metadata_text"' not in image_sql
