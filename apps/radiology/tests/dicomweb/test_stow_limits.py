"""STOW-RS under hostile and odd input (issue 14, items 2, 7 and 8).

Limits are applied while the body is received: a part over RADIOLOGY_MAX_UPLOAD_SIZE, more
parts than RADIOLOGY_STOW_MAX_PARTS, or a body over RADIOLOGY_STOW_MAX_REQUEST_BYTES is a
413 with its own code as soon as it is crossed, and every staged part of that request is
removed. Only the part being received is an open file, whatever the number of parts.
Bombs sent as parts fail alone (FailedSOPSequence) in bounded memory. After every request
the test checks the answer whole, the rows, the store and the staging directory.
"""

from __future__ import annotations

import io
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pydicom
import pytest
from django.conf import settings as django_settings
from django.test import Client

from apps.radiology import storage
from apps.radiology.dicomweb.multipart import PartLimits, read_parts
from apps.radiology.errors import PartTooLarge, RequestTooLarge, TooManyParts
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import RadiologyOrder
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.factories import relabelled, row_counts, stored_keys
from apps.radiology.tests.ingest_bombs import MIB, deflate_bomb, rle_bomb

from .conftest import API
from .helpers import QUIET_UID_WARNINGS, error, json_of

pytestmark = [pytest.mark.django_db, QUIET_UID_WARNINGS]

STUDIES = f"{API}/studies"
BOUNDARY = "stow-limits-boundary"
CANNOT_UNDERSTAND = 0xC000
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def staging_files() -> list[Path]:
    staging = Path(django_settings.RADIOLOGY_STAGING_DIR)
    return sorted(staging.iterdir()) if staging.exists() else []


def assert_nothing_left() -> None:
    assert row_counts() == (0, 0, 0)
    assert stored_keys() == []
    assert staging_files() == []


def open_staging_files() -> int:
    """How many of this process's open file descriptors are files of the staging directory."""
    staging = str(Path(django_settings.RADIOLOGY_STAGING_DIR).resolve())
    count = 0
    for descriptor in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{descriptor}")
        except OSError:
            continue
        count += target.startswith(staging + "/")
    return count


def multipart(*contents: bytes, boundary: str = BOUNDARY) -> bytes:
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + content + b"\r\n" for content in contents
    )
    return body + f"--{boundary}--\r\n".encode()


def content_type(boundary: str = BOUNDARY) -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(client: Client, body: bytes, *, boundary: str = BOUNDARY, query: str = "") -> Any:
    return client.post(
        f"{STUDIES}{query}",
        data=body,
        content_type=content_type(boundary),
        headers={"Accept": "application/dicom+json"},
    )


def ct(study_uid: str) -> bytes:
    return relabelled("CT_small.dcm", study_uid=study_uid, series_uid=generate_uid())


def failed(sop_class: str | None, sop_instance: str | None, reason: int) -> dict[str, Any]:
    return {
        "00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
        "00081155": {"vr": "UI", "Value": [sop_instance]} if sop_instance else {"vr": "UI"},
        "00081197": {"vr": "US", "Value": [reason]},
    }


class CountingStream:
    """A request body that counts what was read from it and samples the open staging files at each read."""

    def __init__(self, content: bytes) -> None:
        self._stream = io.BytesIO(content)
        self.read_bytes = 0
        self.most_open = 0

    def read(self, size: int = -1) -> bytes:
        self.most_open = max(self.most_open, open_staging_files())
        data = self._stream.read(size)
        self.read_bytes += len(data)
        return data


@pytest.fixture
def target(make_order: MakeOrder) -> RadiologyOrder:
    return make_order()


# --- limits while receiving (item 7) ---------------------------------------------------------


def test_a_part_over_the_upload_size_is_413_before_the_rest_is_read(
    radtech_client: Client, target: RadiologyOrder, settings: Any
) -> None:
    settings.RADIOLOGY_MAX_UPLOAD_SIZE = 1 * MIB
    body = multipart(ct(generate_uid()), bytes(8 * MIB))

    response = stow(radtech_client, body, query=f"?radiology_order_id={target.pk}")

    assert response.status_code == 413
    assert json_of(response) == error("A part is larger than this server accepts for one file.", "part_too_large")
    assert_nothing_left()
    # Directly: reading stops within one chunk of the limit, not at the end of the 8 MiB part.
    stream = CountingStream(body)
    with pytest.raises(PartTooLarge):
        read_parts(stream, content_type())  # type: ignore[arg-type]
    assert stream.read_bytes <= 1 * MIB + 40_000 + 2 * storage.STREAM_CHUNK_SIZE
    assert staging_files() == []


def test_more_parts_than_allowed_is_413_and_nothing_is_kept(
    radtech_client: Client, target: RadiologyOrder, settings: Any
) -> None:
    settings.RADIOLOGY_STOW_MAX_PARTS = 3
    study_uid = generate_uid()

    response = stow(
        radtech_client, multipart(*(ct(study_uid) for _ in range(4))), query=f"?radiology_order_id={target.pk}"
    )

    assert response.status_code == 413
    assert json_of(response) == error("Too many parts in one request.", "too_many_parts")
    assert_nothing_left()
    allowed = stow(
        radtech_client, multipart(*(ct(study_uid) for _ in range(3))), query=f"?radiology_order_id={target.pk}"
    )
    assert allowed.status_code == 200
    assert row_counts() == (1, 3, 3)
    assert staging_files() == []


def test_the_default_limit_refuses_a_10000_part_request_at_part_1001() -> None:
    assert django_settings.RADIOLOGY_STOW_MAX_PARTS == 1000
    body = multipart(*(b"x" for _ in range(10_000)))
    stream = CountingStream(body)

    with pytest.raises(TooManyParts) as raised:
        read_parts(stream, content_type())  # type: ignore[arg-type]

    assert (raised.value.status_code, raised.value.code) == (413, "too_many_parts")
    assert stream.read_bytes < len(body) // 2
    assert stream.most_open <= 1
    assert staging_files() == []


def test_a_body_declared_over_the_request_limit_is_413_before_a_byte_is_read(
    radtech_client: Client, target: RadiologyOrder, settings: Any
) -> None:
    settings.RADIOLOGY_STOW_MAX_REQUEST_BYTES = 100_000
    study_uid = generate_uid()
    body = multipart(ct(study_uid), ct(study_uid), ct(study_uid))
    assert len(body) > 100_000

    response = stow(radtech_client, body, query=f"?radiology_order_id={target.pk}")

    assert response.status_code == 413
    assert json_of(response) == error(
        "The request body is larger than this server accepts in one request.", "request_too_large"
    )
    assert_nothing_left()


def test_a_chunked_body_over_the_request_limit_stops_being_read_at_the_limit() -> None:
    """No Content-Length (Transfer-Encoding: chunked): the bytes are counted as they come."""
    body = multipart(*(bytes(300_000) for _ in range(10)))
    stream = CountingStream(body)

    with pytest.raises(RequestTooLarge):
        read_parts(stream, content_type(), limits=PartLimits(max_parts=1000, max_part_size=MIB, max_request_bytes=MIB))  # type: ignore[arg-type]

    assert stream.read_bytes <= MIB + storage.STREAM_CHUNK_SIZE
    assert stream.most_open <= 1
    assert staging_files() == []


def test_received_parts_are_closed_files_until_read() -> None:
    parts = read_parts(io.BytesIO(multipart(*(bytes([n]) * 100 for n in range(200)))), content_type())
    try:
        assert len(parts) == 200
        assert open_staging_files() == 0
        assert [part.size for part in parts] == [100] * 200
        with parts[7].open() as handle:
            assert handle.read() == bytes([7]) * 100
        assert open_staging_files() == 0
    finally:
        for part in parts:
            part.discard()
    assert staging_files() == []


def test_a_stow_of_many_parts_holds_a_small_constant_of_open_files(
    radtech_client: Client, target: RadiologyOrder, monkeypatch: pytest.MonkeyPatch
) -> None:
    study_uid = generate_uid()
    contents = [ct(study_uid) for _ in range(40)]
    seen: list[int] = []
    save = storage.save_new_object

    def counting_save(*args: Any, **kwargs: Any) -> str:
        seen.append(open_staging_files())
        return save(*args, **kwargs)

    monkeypatch.setattr(storage, "save_new_object", counting_save)

    response = stow(radtech_client, multipart(*contents), query=f"?radiology_order_id={target.pk}")

    assert response.status_code == 200
    assert row_counts() == (1, 40, 40)
    assert len(seen) == 40
    assert max(seen) <= 1  # the one part being stored
    assert staging_files() == []


# --- odd input (item 8) ------------------------------------------------------------------------


@pytest.mark.parametrize("length", [129, 257, 5000])
def test_a_boundary_over_128_characters_is_400(radtech_client: Client, target: RadiologyOrder, length: int) -> None:
    boundary = "b" * length

    response = stow(radtech_client, multipart(ct(generate_uid()), boundary=boundary), boundary=boundary)

    assert response.status_code == 400
    assert json_of(response) == error("The multipart boundary must be 1 to 128 ASCII characters.", "invalid_multipart")
    assert_nothing_left()


@pytest.mark.parametrize(
    "boundary",
    [
        "b" * 70,
        # Orthanc's DICOMweb plugin: two UUIDs joined, 73 characters (over RFC 2046's 70).
        "30eaa967-a96e-4e90-a695-3221f8fa2e55-30eaa967-a96e-4e90-a695-3221f8fa2e55",
        "b" * 128,
    ],
)
def test_a_boundary_up_to_128_characters_is_taken(
    radtech_client: Client, target: RadiologyOrder, boundary: str
) -> None:

    response = stow(
        radtech_client,
        multipart(ct(generate_uid()), boundary=boundary),
        boundary=boundary,
        query=f"?radiology_order_id={target.pk}",
    )

    assert response.status_code == 200
    assert row_counts() == (1, 1, 1)


@pytest.mark.parametrize("order_id", ["%C2%B2", "%D9%A3", "1" * 40, "0" * 19 + "1"])
def test_an_order_id_that_is_not_a_plain_number_is_404(
    radtech_client: Client, target: RadiologyOrder, order_id: str
) -> None:
    """'²' and '٣' are str.isdigit(); int() refuses the first and 40 digits overflow the id column."""
    response = stow(radtech_client, multipart(ct(generate_uid())), query=f"?radiology_order_id={order_id}")

    assert response.status_code == 404
    assert json_of(response) == error("No radiology order with this id.", "order_not_found")
    assert_nothing_left()


# --- bombs as parts (items 1 and 2) ------------------------------------------------------------


def _peak(action: Any) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        return action(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("with_order", [True, False], ids=["order in the query", "order by accession"])
def test_a_deflate_bomb_part_fails_alone_without_being_inflated(
    radtech_client: Client, target: RadiologyOrder, with_order: bool, tmp_path: Path
) -> None:
    bomb = deflate_bomb(inflated_bytes=256 * MIB)
    (tmp_path / "bomb.dcm").write_bytes(bomb)
    meta = pydicom.filereader.read_file_meta_info(tmp_path / "bomb.dcm")
    query = f"?radiology_order_id={target.pk}" if with_order else ""

    response, peak = _peak(lambda: stow(radtech_client, multipart(bomb), query=query))

    assert response.status_code == 409
    assert json_of(response) == {
        "00081198": {
            "vr": "SQ",
            "Value": [failed(SECONDARY_CAPTURE, str(meta.MediaStorageSOPInstanceUID), CANNOT_UNDERSTAND)],
        },
        "00081199": {"vr": "SQ"},
    }
    assert peak < 16 * MIB, peak
    assert_nothing_left()


def test_an_rle_bomb_part_fails_and_a_good_part_beside_it_is_stored(
    radtech_client: Client, target: RadiologyOrder
) -> None:
    bomb = rle_bomb()
    header = pydicom.dcmread(io.BytesIO(bomb), stop_before_pixels=True)
    good = ct(generate_uid())

    response = stow(radtech_client, multipart(bomb, good), query=f"?radiology_order_id={target.pk}")

    assert response.status_code == 202
    body = json_of(response)
    assert body["00081198"] == {
        "vr": "SQ",
        "Value": [failed(SECONDARY_CAPTURE, str(header.SOPInstanceUID), CANNOT_UNDERSTAND)],
    }
    assert len(body["00081199"]["Value"]) == 1
    assert row_counts() == (1, 1, 1)
    assert staging_files() == []
