"""Issue 14 items 13 and 8 (Range): retrievals that cannot complete fail before the status line.

A frame, bulk-data, whole-instance (study, series, instance) or signed-file retrieval whose
stored object is missing, or shorter than the byte ranges the answer will read, is a JSON error
with code stored_object_missing (500: lost data, not a store that is briefly away) before any
200 is sent; a frame that does not exist stays 404 frame_not_found. Each test runs on the
filesystem store and on S3 (moto server). A Range header of any length never costs a 500.
"""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.http import HttpResponse
from django.test import Client

from apps.radiology import storage
from apps.radiology.pacs_lite_service import PACSLiteService
from apps.radiology.storage.responses import parse_range

from .conftest import Put, Stored
from .helpers import body_of, error, json_of, multipart_of

pytestmark = pytest.mark.django_db

OHIF_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
UNCOMPRESSED_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
DICOM_ACCEPT = 'multipart/related; type="application/dicom"'
# The stored files byte for byte (DICOM_ACCEPT is Explicit VR Little Endian with the EMR's identity).
STORED_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
MISSING = error("The stored file of this image is missing.", "stored_object_missing")
SHORT = error("The stored file of this image is shorter than its recorded pixel data.", "stored_object_missing")


def replace_stored(stored: Stored, content: bytes | None) -> None:
    """Lose the stored object (None) or put `content` in its place, under the same key."""
    key = stored.image.file_key
    storage.delete_object(key)
    assert storage.object_size(key) is None
    if content is not None:
        assert storage.save_new_object(key, io.BytesIO(content), content_type="application/dicom") == key


def assert_refused_before_streaming(response: HttpResponse, status: int, body: dict[str, str]) -> None:
    assert response.status_code == status
    assert not response.streaming
    assert response["Content-Type"] == "application/json"
    assert json_of(response) == body


def test_a_missing_stored_object_is_500_before_any_body_on_every_retrieval(
    radiology_store: str, put: Put, doctor_client: Client
) -> None:
    stored = put("CT_small.dcm")
    other = put("MR_small.dcm")  # another series of the study, still whole
    replace_stored(stored, None)
    whole = error(f"The stored file of instance {stored.image_uid} is missing.", "stored_object_missing")

    for url, accept, body in [
        (stored.url("/frames/1"), OHIF_ACCEPT, MISSING),
        (stored.url("/frames/1"), UNCOMPRESSED_ACCEPT, MISSING),
        (stored.url("/bulk/7FE00010"), "*/*", MISSING),
        (stored.url(), DICOM_ACCEPT, whole),
        (stored.series_url(), DICOM_ACCEPT, whole),
        (stored.study_url(), DICOM_ACCEPT, whole),
        (stored.url(), STORED_ACCEPT, whole),
        (stored.study_url(), STORED_ACCEPT, whole),
        (stored.url("/rendered"), "image/jpeg", MISSING),
        (stored.url("/thumbnail"), "image/jpeg", MISSING),
    ]:
        assert_refused_before_streaming(doctor_client.get(url, headers={"Accept": accept}), 500, body)
    # A frame that does not exist is still the client's mistake.
    response = doctor_client.get(stored.url("/frames/2"), headers={"Accept": OHIF_ACCEPT})
    assert_refused_before_streaming(response, 404, error("The instance has no such frame.", "frame_not_found"))
    # The rest of the study is unaffected.
    whole_other = doctor_client.get(other.url(), headers={"Accept": STORED_ACCEPT})
    assert whole_other.status_code == 200
    assert multipart_of(whole_other)[1][0].content == other.content


def test_an_object_shorter_than_its_frames_is_500_before_any_body_and_is_not_remembered(
    radiology_store: str, put: Put, doctor_client: Client
) -> None:
    stored = put("rtdose.dcm")  # 15 native frames of 10 x 10 32-bit samples (400 bytes each)
    location = stored.image.pixel_data
    cut = location["offset"] + 14 * 400 + 200  # halfway through frame 15
    replace_stored(stored, stored.content[:cut])

    first = doctor_client.get(stored.url("/frames/1,2"), headers={"Accept": OHIF_ACCEPT})
    assert first.status_code == 200  # every byte these frames need is there
    assert [len(part.content) for part in multipart_of(first)[1]] == [400, 400]
    for url, accept in [
        (stored.url("/frames/1,15"), OHIF_ACCEPT),
        (stored.url("/frames/15"), UNCOMPRESSED_ACCEPT),
        (stored.url("/bulk/7FE00010"), "*/*"),
        (stored.url("/frames/15/rendered"), "image/jpeg"),
    ]:
        assert_refused_before_streaming(doctor_client.get(url, headers={"Accept": accept}), 500, SHORT)
    short = error(f"The stored file of instance {stored.image_uid} is shorter than recorded.", "stored_object_missing")
    for url in (stored.url(), stored.series_url(), stored.study_url()):
        assert_refused_before_streaming(doctor_client.get(url, headers={"Accept": DICOM_ACCEPT}), 500, short)

    # Lost data is not a decode failure: once the object is restored, the frame renders.
    replace_stored(stored, stored.content)
    assert doctor_client.get(stored.url("/frames/15/rendered")).status_code == 200


def test_a_study_is_checked_with_one_listing_on_s3_and_one_stat_per_file_on_disk(
    radiology_store: str, put: Put, doctor_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = put("CT_small.dcm", instance_number=1)
    rest = [put("CT_small.dcm", series_uid=first.series_uid, instance_number=n) for n in (2, 3, 4)]
    asked: list[str] = []
    real_size = storage.object_size

    def counted(key: str) -> int | None:
        asked.append(key)
        return real_size(key)

    monkeypatch.setattr(storage, "object_size", counted)
    response = doctor_client.get(first.study_url(), headers={"Accept": STORED_ACCEPT})
    assert response.status_code == 200
    assert [part.content for part in multipart_of(response)[1]] == [first.content] + [s.content for s in rest]
    assert len(asked) == (0 if radiology_store == "s3" else 4)

    monkeypatch.setattr(storage, "object_size", real_size)
    replace_stored(rest[1], None)
    missing = error(f"The stored file of instance {rest[1].image_uid} is missing.", "stored_object_missing")
    for url in (first.study_url(), first.series_url()):
        assert_refused_before_streaming(doctor_client.get(url, headers={"Accept": DICOM_ACCEPT}), 500, missing)


# --- the signed file view ----------------------------------------------------------------------


def signed_path(stored: Stored, doctor: Any) -> str:
    url = PACSLiteService.generate_image_url(image=stored.image, user=doctor, expires_in=60)
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_a_signed_file_shorter_than_recorded_is_500_before_any_body(put: Put, doctor: Any) -> None:
    stored = put("CT_small.dcm")
    assert not storage.is_s3()  # on S3 the view redirects to the store, which answers itself
    path = signed_path(stored, doctor)
    replace_stored(stored, stored.content[:-10])

    for headers in ({}, {"Range": "bytes=0-99"}, {"Range": f"bytes=0-{len(stored.content) - 1}"}):
        response = Client().get(path, headers=headers)
        if headers.get("Range") == "bytes=0-99":  # the first 100 bytes are all there
            assert response.status_code == 206
            assert body_of(response) == stored.content[:100]
            continue
        assert_refused_before_streaming(
            response, 500, error("The stored file is shorter than recorded.", "stored_object_missing")
        )
        assert response["Cache-Control"] == "private, no-store, max-age=0"


def test_a_range_of_thousands_of_digits_is_answered_as_any_range(put: Put, doctor: Any) -> None:
    stored = put("CT_small.dcm")
    size = len(stored.content)
    path = signed_path(stored, doctor)
    huge = "9" * 5000

    past_the_end = Client().get(path, headers={"Range": f"bytes={huge}-"})
    assert (past_the_end.status_code, past_the_end["Content-Range"]) == (416, f"bytes */{size}")
    assert json_of(past_the_end) == error("The requested range is not satisfiable.", "range_not_satisfiable")
    for header in (f"bytes=0-{huge}", f"bytes=-{huge}", f"bytes={'0' * 5000}-{huge}"):
        response = Client().get(path, headers={"Range": header})
        assert (response.status_code, response["Content-Range"]) == (206, f"bytes 0-{size - 1}/{size}")
        assert body_of(response) == stored.content
    leading_zeros = Client().get(path, headers={"Range": f"bytes={'0' * 40}1-{'0' * 40}2"})
    assert (leading_zeros.status_code, body_of(leading_zeros)) == (206, stored.content[1:3])
    # Not ASCII digits, or not a single byte range: ignored (RFC 9110 14.2), the whole file.
    for header in ("bytes=\u0663-\u0664", "bytes=1-2,3-4", "items=0-1", f"bytes={huge}", "bytes=--1", "bytes=\x00-1"):
        response = Client().get(path, headers={"Range": header})
        assert (response.status_code, body_of(response)) == (200, stored.content), header


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 9)),
        ("bytes=5-", (5, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-0", "unsatisfiable"),
        ("bytes=100-", "unsatisfiable"),
        ("bytes=9-3", "unsatisfiable"),
        ("bytes=" + "9" * 19 + "-", "unsatisfiable"),
        ("bytes=" + "1" * 4301 + "-", "unsatisfiable"),
        ("bytes=0-" + "9" * 4301, (0, 99)),
        ("bytes=-" + "9" * 4301, (0, 99)),
        ("bytes=\u0661-\u0662", None),
        ("bytes=1-2, 3-4", None),
    ],
)
def test_parse_range(header: str | None, expected: Any) -> None:
    assert parse_range(header, 100) == expected
