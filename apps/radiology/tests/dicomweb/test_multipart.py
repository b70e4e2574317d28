"""multipart/related framing: what WADO-RS writes (OHIF's parser is strict about it) and
what STOW-RS reads (dicomweb-client's bodies, quoted or unquoted boundaries).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pydicom.encaps
import pytest
import requests
from dicomweb_client import DICOMwebClient
from django.conf import settings
from django.test import Client
from requests.structures import CaseInsensitiveDict

from apps.radiology.dicomweb.multipart import (
    InvalidMultipart,
    Part,
    UnsupportedMediaType,
    boundary_of,
    content_type_header,
    new_boundary,
    read_parts,
    stream_parts,
)

from .conftest import Put
from .helpers import QUIET_UID_WARNINGS, body_of, media_params

pytestmark = [pytest.mark.django_db, QUIET_UID_WARNINGS]


@pytest.fixture(autouse=True)
def _staging(settings: Any, tmp_path: Path) -> None:
    settings.RADIOLOGY_STAGING_DIR = tmp_path / "staging"


def test_parts_are_written_with_the_exact_framing() -> None:
    parts = [
        Part("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1", [b"ab", b"cd"]),
        Part("image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50", iter([b"\xff\xd8\xff\xd9"]), location="http://x/1"),
    ]
    assert b"".join(stream_parts(parts, "B0UND")) == (
        b"--B0UND\r\n"
        b"Content-Type: application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"\r\n"
        b"abcd\r\n"
        b"--B0UND\r\n"
        b"Content-Type: image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50\r\n"
        b"Content-Location: http://x/1\r\n"
        b"\r\n"
        b"\xff\xd8\xff\xd9\r\n"
        b"--B0UND--\r\n"
    )
    assert b"".join(stream_parts([], "B0UND")) == b"--B0UND--\r\n"


def test_the_content_type_names_the_part_type_and_the_boundary() -> None:
    boundary = new_boundary()
    assert boundary.startswith("pacs-lite-") and len(boundary) == len("pacs-lite-") + 32
    assert boundary != new_boundary()
    assert (
        content_type_header("application/dicom", "xyz") == 'multipart/related; type="application/dicom"; boundary=xyz'
    )


def test_a_frames_response_is_framed_as_ohif_expects(put: Put, doctor_client: Client) -> None:
    stored = put("rtdose.dcm")
    response = doctor_client.get(
        stored.url("/frames/1,2"),
        headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
    )
    media_type, params = media_params(response["Content-Type"])
    assert (media_type, params["type"]) == ("multipart/related", "application/octet-stream")
    boundary = params["boundary"].encode()
    body = body_of(response)
    frame = 400
    pixel = stored.dataset().PixelData
    header = b"Content-Type: application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1\r\n\r\n"
    assert body == (
        b"--" + boundary + b"\r\n" + header + pixel[:frame] + b"\r\n"
        b"--" + boundary + b"\r\n" + header + pixel[frame : 2 * frame] + b"\r\n"
        b"--" + boundary + b"--\r\n"
    )
    # The first line of the body is the boundary OHIF takes (it reads it from the body).
    assert body.split(b"\r\n", 1)[0] == b"--" + boundary


def test_dicomweb_clients_reader_takes_our_parts(put: Put, doctor_client: Client) -> None:
    stored = put("SC_rgb_rle_2frame.dcm")
    response = doctor_client.get(
        stored.url("/frames/2,1"), headers={"Accept": "multipart/related; type=image/dicom-rle"}
    )
    wrapped = requests.Response()
    wrapped.status_code = 200
    wrapped.headers = CaseInsensitiveDict({"Content-Type": response["Content-Type"]})
    wrapped._content = body_of(response)
    first, second = pydicom.encaps.generate_frames(stored.dataset().PixelData, number_of_frames=2)
    reader = DICOMwebClient("http://testserver/api/v1/radiology/dicomweb")
    assert list(reader._decode_multipart_message(wrapped, stream=False)) == [second, first]


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ('multipart/related; type="application/dicom"; boundary=abc', ("abc", "application/dicom")),
        ('multipart/related; type="application/dicom"; boundary="a b:c"', ("a b:c", "application/dicom")),
        ("Multipart/Related; Boundary=abc", ("abc", None)),
        ("multipart/related;boundary=abc;type=application/dicom", ("abc", "application/dicom")),
    ],
)
def test_the_boundary_of_a_request(content_type: str, expected: tuple[str, str | None]) -> None:
    assert boundary_of(content_type) == expected


@pytest.mark.parametrize("content_type", ["", "application/dicom", "multipart/form-data; boundary=abc", "text/plain"])
def test_a_request_that_is_not_multipart_related_is_unsupported(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType):
        boundary_of(content_type)


@pytest.mark.parametrize(
    "content_type", ["multipart/related", 'multipart/related; type="application/dicom"', "multipart/related; boundary="]
)
def test_a_multipart_without_a_boundary_is_invalid(content_type: str) -> None:
    with pytest.raises(InvalidMultipart):
        boundary_of(content_type)


def test_parts_are_read_to_their_own_files() -> None:
    content_type = 'multipart/related; type="application/dicom"; boundary="0f3cf5c0"'
    body = DICOMwebClient._encode_multipart_message([b"first\r\n--not-a-boundary", b"", b"x" * 200_000], content_type)
    parts = read_parts(io.BytesIO(body), content_type)
    assert [(part.content_type, part.file.read()) for part in parts] == [
        ("application/dicom", b"first\r\n--not-a-boundary"),
        ("application/dicom", b""),
        ("application/dicom", b"x" * 200_000),
    ]


def test_each_part_is_a_staging_file_with_its_size_and_sha256_taken_as_it_arrived() -> None:
    contents = [b"first\r\n--not-a-boundary", b"", bytes(range(256)) * 1000]
    content_type = 'multipart/related; type="application/dicom"; boundary="0f3cf5c0"'
    body = DICOMwebClient._encode_multipart_message(contents, content_type)
    # Fed in small reads, so parts arrive in many pieces.
    parts = read_parts(io.BufferedReader(io.BytesIO(body), buffer_size=1000), content_type)
    staging = Path(settings.RADIOLOGY_STAGING_DIR)
    assert [(part.size, part.checksum) for part in parts] == [
        (len(content), hashlib.sha256(content).hexdigest()) for content in contents
    ]
    assert [part.path.parent for part in parts] == [staging] * 3
    assert all(part.path.name.startswith("ingest-") for part in parts)  # purge_interrupted_ingests' prefix
    assert [part.path.read_bytes() for part in parts] == contents
    for part in parts:
        part.file.close()
    assert list(staging.iterdir()) == []


def test_a_part_keeps_its_own_content_type() -> None:
    body = (
        b"--b\r\nContent-Type: image/jpeg\r\nContent-Location: x\r\n\r\nJ\r\n"
        b"--b\r\ncontent-type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n\r\nD\r\n"
        b"--b\r\n\r\nnone\r\n"
        b"--b--\r\n"
    )
    parts = read_parts(io.BytesIO(body), "multipart/related; boundary=b")
    assert [(part.content_type, part.file.read()) for part in parts] == [
        ("image/jpeg", b"J"),
        ("application/dicom; transfer-syntax=1.2.840.10008.1.2.1", b"D"),
        ("", b"none"),
    ]


def test_too_many_parts_are_refused() -> None:
    body = b"".join(b"--b\r\nContent-Type: application/dicom\r\n\r\nx\r\n" for _ in range(4)) + b"--b--\r\n"
    with pytest.raises(InvalidMultipart) as raised:
        read_parts(io.BytesIO(body), "multipart/related; boundary=b", max_parts=3)
    assert raised.value.detail == "Too many parts in one request."
    assert len(read_parts(io.BytesIO(body), "multipart/related; boundary=b", max_parts=4)) == 4


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            b"--b\r\nContent-Type: application/dicom\r\n\r\nno close delimiter",
            "The body ends before its closing boundary.",
        ),
        (
            b"--b\r\nContent-Type: application/dicom\r\n\r\nwhole\r\n--b\r\nContent-Type: app",
            "The body ends before its closing boundary.",
        ),
        (b"--b\r\nContent-Type: application/dicom\r\n\r\nx\r\n--b-", "The body ends before its closing boundary."),
        (
            b"--b\r\nthis header has no colon\r\n\r\nx\r\n--b--\r\n",
            "The body is not a valid multipart/related message with a boundary.",
        ),
        (
            b"--c\r\nContent-Type: application/dicom\r\n\r\nx\r\n--c--\r\n",
            "The body is not a valid multipart/related message with a boundary.",
        ),
    ],
)
def test_a_malformed_or_cut_body_is_invalid(body: bytes, detail: str) -> None:
    with pytest.raises(InvalidMultipart) as raised:
        read_parts(io.BytesIO(body), "multipart/related; boundary=b")
    assert raised.value.detail == detail
