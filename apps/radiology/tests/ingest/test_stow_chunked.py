"""STOW-RS bodies sent with Transfer-Encoding: chunked (no Content-Length).

dicomweb-client sends every STOW-RS body over 1 MB chunked. The app server de-chunks it and sets
wsgi.input_terminated; Django alone would read such a body as empty (it reads
CONTENT_LENGTH bytes), and the request failed with 400 before anything was stored.
"""

from __future__ import annotations

import io
from typing import Any

import pydicom
import pytest

from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import RadiologyImage
from apps.radiology.operations.demo import relabelled_dicom
from apps.radiology.tests.api_fixtures import token_client
from apps.radiology.tests.conftest import MakeOrder

pytestmark = pytest.mark.django_db

URL = "/api/v1/radiology/dicomweb/studies"
BOUNDARY = "chunked-stow-boundary"


def chunked_post(client: Any, url: str, body: bytes, *, terminated: bool) -> Any:
    """POST `body` as a WSGI server that de-chunked it hands it over: a stream, no CONTENT_LENGTH."""
    return client.generic(
        "POST",
        url,
        CONTENT_TYPE=f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"',
        HTTP_TRANSFER_ENCODING="chunked",
        HTTP_ACCEPT="application/dicom+json",
        **{"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": terminated},
    )


def two_instances() -> tuple[bytes, list[str]]:
    study_uid, series_uid = generate_uid(), generate_uid()
    files = [
        relabelled_dicom("CT_small.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=number)
        for number in (1, 2)
    ]
    body = b"".join(f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f for f in files)
    uids = [str(pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True).SOPInstanceUID) for f in files]
    return body + f"\r\n--{BOUNDARY}--".encode(), uids


def test_a_chunked_body_is_read_to_its_end(radtech: Any, make_order: MakeOrder) -> None:
    order = make_order()
    body, uids = two_instances()

    response = chunked_post(token_client(radtech), f"{URL}?radiology_order_id={order.pk}", body, terminated=True)

    assert response.status_code == 200, response.content[:300]
    stored = response.json()["00081199"]["Value"]
    assert [item["00081155"]["Value"][0] for item in stored] == uids
    assert sorted(RadiologyImage.objects.values_list("image_uid", flat=True)) == sorted(uids)


def test_an_unterminated_input_without_length_is_not_read(radtech: Any, make_order: MakeOrder) -> None:
    """Without the server's promise that the input ends, reading it could block: nothing is read."""
    order = make_order()
    body, _uids = two_instances()

    response = chunked_post(token_client(radtech), f"{URL}?radiology_order_id={order.pk}", body, terminated=False)

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_multipart"
    assert RadiologyImage.objects.count() == 0
