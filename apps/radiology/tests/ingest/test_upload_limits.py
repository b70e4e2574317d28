"""Upload sync under odd numbers (issue 14, item 8): every malformed Content-Range or id is a 4xx JSON with a code.

A Content-Range of thousands of digits made int() raise (Python refuses more than 4300
digits): a 500. Now only ASCII numbers of at most 19 digits are read; anything else is
400 `invalid_content_range`, and a well-formed but absurd total is 400 `size_mismatch`.
After every refusal the upload is unchanged and nothing is staged or stored.
"""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from apps.radiology.models import RadiologyOrder, RadiologyUpload
from apps.radiology.tests.factories import assert_nothing_stored, sample_bytes
from apps.radiology.tests.upload_helpers import (
    INVALID_CONTENT_RANGE,
    UPLOAD_NOT_FOUND,
    DeviceFile,
    binary_url,
    client_for,
    metadata,
    post_upload,
    put_chunk,
    upload_url,
)

pytestmark = pytest.mark.django_db

CT = DeviceFile("CT_small.dcm", sample_bytes("CT_small.dcm"))


@pytest.fixture
def tech(radtech: Any) -> APIClient:
    return client_for(radtech)


def start_upload(client: APIClient, order: RadiologyOrder) -> RadiologyUpload:
    response = post_upload(client, metadata(order, CT))
    assert response.status_code == 201, response.json()
    return RadiologyUpload.objects.get(pk=response.json()["id"])


def assert_untouched(upload: RadiologyUpload) -> None:
    upload.refresh_from_db()
    assert (upload.status, upload.received_bytes, upload.chunk_offsets) == ("pending", 0, [])
    assert_nothing_stored()


@pytest.mark.parametrize(
    "header",
    [
        "bytes 0-99/" + "9" * 5000,
        "bytes " + "1" * 5000 + "-99/39206",
        "bytes 0-" + "9" * 5000 + "/39206",
        "bytes 0-99/" + "1" * 20,
        "bytes 0-99/\u0663\u0669",  # Arabic-Indic digits: \d and int() take them
    ],
    ids=["total-5000-digits", "start-5000-digits", "end-5000-digits", "total-20-digits", "non-ascii-digits"],
)
def test_a_content_range_with_absurd_numbers_is_400_invalid_content_range(
    tech: APIClient, order: RadiologyOrder, header: str
) -> None:
    upload = start_upload(tech, order)

    response = put_chunk(tech, upload.pk, CT.content[:100], header)

    assert (response.status_code, response.json()) == (400, INVALID_CONTENT_RANGE)
    assert_untouched(upload)


def test_a_19_digit_total_is_400_size_mismatch(tech: APIClient, order: RadiologyOrder) -> None:
    upload = start_upload(tech, order)
    total = "9" * 19

    response = put_chunk(tech, upload.pk, CT.content[:100], f"bytes 0-99/{total}")

    assert response.status_code == 400
    assert response.json() == {
        "detail": f"Content-Range total {total} is not the declared file_size {CT.size}.",
        "code": "size_mismatch",
    }
    assert_untouched(upload)


@pytest.mark.parametrize("upload_id", ["9" * 40, "9" * 19])
def test_an_upload_id_too_large_for_the_database_is_404(tech: APIClient, upload_id: str) -> None:
    put = tech.put(binary_url(upload_id), data=b"x", content_type="application/octet-stream")  # type: ignore[arg-type]
    for response in (tech.get(upload_url(upload_id)), put):  # type: ignore[arg-type]
        assert (response.status_code, response.json()) == (404, UPLOAD_NOT_FOUND)


def test_an_order_id_too_large_for_the_database_is_404_order_not_found(tech: APIClient, order: RadiologyOrder) -> None:
    response = post_upload(tech, metadata(order, CT, radiology_order=10**30))

    assert (response.status_code, response.json()) == (
        404,
        {"detail": "No radiology order with this id.", "code": "order_not_found"},
    )
    assert RadiologyUpload.objects.count() == 0


@pytest.mark.parametrize("field", ["radiology_order", "file_size", "series_number", "instance_number"])
def test_a_number_of_thousands_of_digits_in_the_metadata_is_400(
    tech: APIClient, order: RadiologyOrder, field: str
) -> None:
    response = post_upload(tech, metadata(order, CT, **{field: "9" * 5000}))

    assert response.status_code == 400
    assert response.json() == {
        "detail": f"{field}: String value too large.",
        "code": "max_string_length",
        "errors": {field: [{"message": "String value too large.", "code": "max_string_length"}]},
    }
    assert RadiologyUpload.objects.count() == 0
