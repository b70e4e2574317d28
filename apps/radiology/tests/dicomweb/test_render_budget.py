"""Issue 14 items 1 and 9: rendering and decoding within a budget, and no amplification.

Every path that decodes pixels (rendered, thumbnail of an instance, a series and a frame,
frames decoded to native pixels) weighs the frames asked for from the stored header before
reading a byte: rows x columns x samples x bytes per sample x frames against
RADIOLOGY_MAX_DECODED_BYTES. The files are real DICOM files written here (with the builders of
ingest_bombs.py): a 4096 x 5120 16-bit mammogram (renders), a valid 16384 x 16384 16-bit RLE
file (8 MiB, accepted by ingest, 512 MiB decoded) and a 6 KB RLE file declaring 65535 x 65535
pixels (ingest now refuses it as implausible, so it is stored as an older server stored it: its
bytes and a row). The decoder is watched with spies that wrap the real functions.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.cache import caches
from django.test import Client
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid

from apps.radiology import render_cache, storage
from apps.radiology.dicom import pixel_header_of
from apps.radiology.dicomweb import pixels
from apps.radiology.models import RadiologyImage, RadiologyOrder, RadiologySeries
from apps.radiology.pacs_lite_service import PACSLiteService
from apps.radiology.tests.ingest_bombs import file_start, rle_constant_segments, write_rle

from .conftest import Put, Stored
from .helpers import error, json_of, multipart_of

pytestmark = pytest.mark.django_db

OHIF_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
UNCOMPRESSED_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
BUDGET = 64 * 1024 * 1024  # the default RADIOLOGY_MAX_DECODED_BYTES


def too_large(decoded: int, frames: int = 1, budget: int = BUDGET) -> dict[str, str]:
    return error(
        f"Decoding {frames} frame(s) of this image takes {decoded} bytes; "
        f"this server decodes at most {budget} bytes per request.",
        "image_too_large_to_render",
    )


# --- files --------------------------------------------------------------------------------------


def header_dataset(*, rows: int, columns: int, bits: int, study_uid: str) -> Dataset:
    """A monochrome Secondary Capture header with fresh UIDs in the given study, no pixel data."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MG"
    ds.InstanceNumber = 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    return ds


def ingest_file(order: RadiologyOrder, path: Path) -> RadiologyImage:
    with path.open("rb") as stream:
        result = PACSLiteService.ingest_image(order=order, stream=stream, filename=path.name, uploaded_by=None)
    return RadiologyImage.objects.select_related("series__study").get(pk=result.image.pk)


def as_stored(image: RadiologyImage) -> Stored:
    return Stored(image=image, content=b"", path=Path())


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(image id, frame) of each decode that reaches the decoders: a spy around the real one."""
    calls: list[tuple[int, int]] = []
    real = pixels._decode_frame

    def spy(image: RadiologyImage, number: int) -> np.ndarray:
        calls.append((image.pk, number))
        return real(image, number)

    monkeypatch.setattr(pixels, "_decode_frame", spy)
    return calls


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """(key, offset, length) of each ranged read of a stored object: a spy around the real one."""
    calls: list[tuple[str, int, int]] = []
    real = storage.iter_object_range

    def spy(key: str, offset: int, length: int, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        calls.append((key, offset, length))
        return real(key, offset, length, *args, **kwargs)

    monkeypatch.setattr(storage, "iter_object_range", spy)
    return calls


def decoding_paths(stored: Stored) -> list[tuple[str, str]]:
    """(URL, Accept) of every resource that decodes the instance's first frame."""
    return [
        (stored.url("/rendered"), "image/jpeg"),
        (stored.url("/thumbnail"), "image/jpeg"),
        (stored.url("/frames/1/rendered"), "image/png"),
        (stored.series_url("/thumbnail"), "image/jpeg"),
        (stored.series_url("/rendered"), "image/jpeg"),
        (stored.url("/frames/1"), UNCOMPRESSED_ACCEPT),
    ]


# --- a real mammogram renders ---------------------------------------------------------------------


def test_a_4096_by_5120_16_bit_mammogram_renders_capped_at_2048_and_its_frame_decodes(
    order: RadiologyOrder, doctor_client: Client, tmp_path: Path
) -> None:
    study_uid = generate_uid()
    ds = header_dataset(rows=5120, columns=4096, bits=16, study_uid=study_uid)
    ramp = (np.arange(5120 * 4096, dtype=np.uint32) % 4096).astype(np.uint16)
    path = tmp_path / "mammogram.dcm"
    path.write_bytes(b"".join(file_start(ds, ExplicitVRLittleEndian)) + b"\xe0\x7f\x10\x00OW\x00\x00")
    with path.open("ab") as handle:
        handle.write(struct.pack("<I", ramp.nbytes) + ramp.tobytes())
    image = ingest_file(order, path)
    stored = as_stored(image)
    assert (image.rows, image.columns, pixels.decoded_frame_bytes(image)) == (5120, 4096, 40 * 1024 * 1024)

    full = doctor_client.get(stored.url("/rendered"), headers={"Accept": "image/png"})
    assert (full.status_code, full["Content-Type"]) == (200, "image/png")
    picture = Image.open(io.BytesIO(full.content))
    assert picture.size == (1638, 2048)  # no viewport: fitted into 2048 x 2048, never larger
    thumbnail = doctor_client.get(stored.url("/thumbnail"))
    assert (thumbnail.status_code, Image.open(io.BytesIO(thumbnail.content)).size) == (200, (102, 128))

    frames = doctor_client.get(stored.url("/frames/1"), headers={"Accept": UNCOMPRESSED_ACCEPT})
    assert frames.status_code == 200
    _type, parts = multipart_of(frames)
    assert [part.content for part in parts] == [ramp.tobytes()]


# --- files too large to decode ---------------------------------------------------------------------


def test_a_valid_16384_square_16_bit_rle_file_is_stored_but_never_decoded(
    order: RadiologyOrder,
    doctor_client: Client,
    tmp_path: Path,
    decodes: list[tuple[int, int]],
    reads: list[tuple[str, int, int]],
) -> None:
    side = 16384
    ds = header_dataset(rows=side, columns=side, bits=16, study_uid=generate_uid())
    path = tmp_path / "large.dcm"
    with path.open("wb") as handle:
        write_rle(handle, ds, rle_constant_segments(side=side, value=0))
    assert path.stat().st_size < 9 * 1024 * 1024
    image = ingest_file(order, path)  # the archive keeps it, byte-exact
    assert storage.read_object_range(image.file_key, 0, image.file_size) == path.read_bytes()
    reads.clear()
    stored = as_stored(image)

    for url, accept in decoding_paths(stored) * 2:
        response = doctor_client.get(url, headers={"Accept": accept})
        assert response.status_code == 422, url
        assert not response.streaming
        assert json_of(response) == too_large(side * side * 2)
    assert decodes == [] and reads == []

    # As stored, the frame still leaves (nothing is decoded): a viewer with its own decoder copes.
    response = doctor_client.get(stored.url("/frames/1"), headers={"Accept": OHIF_ACCEPT})
    assert response.status_code == 200
    _type, parts = multipart_of(response)
    assert len(parts[0].content) == 64 + side * side // 128 * 4
    assert decodes == []


def stored_bomb(series: RadiologySeries, tmp_path: Path) -> RadiologyImage:
    """A 6 KB RLE file declaring 65535 x 65535 16-bit pixels, stored as a server before issue 14
    stored it (ingest now refuses it: implausible_pixel_data): its bytes, and its row."""
    ds = header_dataset(rows=65535, columns=65535, bits=16, study_uid=series.study.study_uid)
    ds.SeriesInstanceUID = series.series_uid
    path = tmp_path / "bomb.dcm"
    with path.open("wb") as handle:
        offset = write_rle(handle, ds, [(b"\x81\x00" * 1024, 1)] * 2)
    content = path.read_bytes()
    key = storage.save_new_object(
        f"radiology/{series.study.study_uid}/{series.series_uid}/{ds.SOPInstanceUID}/bomb.dcm",
        io.BytesIO(content),
        content_type="application/dicom",
    )
    metadata = ds.to_json_dict()
    return RadiologyImage.objects.create(
        series=series,
        image_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        transfer_syntax_uid=RLELossless,
        instance_number=2,
        rows=65535,
        columns=65535,
        file_key=key,
        filename="bomb.dcm",
        file_size=len(content),
        mime_type="application/dicom",
        checksum=hashlib.sha256(content).hexdigest(),
        image_metadata=metadata,
        pixel_data={
            "vr": "OB",
            "offset": offset - 20,
            "length": -1,
            "encapsulated": True,
            "frames": [[[offset, 64 + 2 * 2048]]],
            "header": pixel_header_of(metadata),
        },
    )


def test_a_65535_square_rle_bomb_is_refused_on_every_decoding_path_without_reading_it(
    put: Put,
    doctor_client: Client,
    tmp_path: Path,
    decodes: list[tuple[int, int]],
    reads: list[tuple[str, int, int]],
) -> None:
    ct = put("CT_small.dcm")  # instance 1 of the series; the bomb is its middle instance
    bomb = as_stored(
        RadiologyImage.objects.select_related("series__study").get(pk=stored_bomb(ct.image.series, tmp_path).pk)
    )

    for url, accept in decoding_paths(bomb) * 2:
        response = doctor_client.get(url, headers={"Accept": accept})
        assert response.status_code == 422, url
        assert json_of(response) == too_large(65535 * 65535 * 2)
    assert decodes == [] and reads == []
    # The study's other image still renders.
    assert doctor_client.get(ct.url("/thumbnail")).status_code == 200


def test_the_budget_counts_the_distinct_frames_asked_for(
    put: Put, doctor_client: Client, settings: Any, decodes: list[tuple[int, int]]
) -> None:
    stored = put("SC_rgb_rle_2frame.dcm")  # 2 frames of 100 x 100 RGB, 8-bit: 30,000 bytes each
    settings.RADIOLOGY_MAX_DECODED_BYTES = 2 * 30_000 - 1

    one = doctor_client.get(stored.url("/frames/2,2"), headers={"Accept": UNCOMPRESSED_ACCEPT})
    assert one.status_code == 200
    assert [len(part.content) for part in multipart_of(one)[1]] == [30_000]

    both = doctor_client.get(stored.url("/frames/1,2"), headers={"Accept": UNCOMPRESSED_ACCEPT})
    assert both.status_code == 422
    assert json_of(both) == too_large(60_000, frames=2, budget=59_999)
    assert decodes == [(stored.image.pk, 2)]

    settings.RADIOLOGY_MAX_DECODED_BYTES = 29_999
    response = doctor_client.get(stored.url("/rendered"))
    assert (response.status_code, json_of(response)) == (422, too_large(30_000, budget=29_999))


# --- a failed decode is remembered ------------------------------------------------------------------


def test_a_frame_that_failed_to_decode_is_not_decoded_again(
    put: Put, doctor_client: Client, decodes: list[tuple[int, int]]
) -> None:
    stored = put("JPEG-lossy.dcm")  # its 12-bit stream defeats pylibjpeg and Pillow
    failed = error("Could not decode the pixel data: RuntimeError.", "rendering_failed")

    first = doctor_client.get(stored.url("/rendered"))
    assert (first.status_code, json_of(first)) == (422, failed)
    assert decodes == [(stored.image.pk, 1)]

    for url, accept in decoding_paths(stored):
        for viewport in ("64,64", "200,"):
            response = doctor_client.get(url, {"viewport": viewport}, headers={"Accept": accept})
            assert (response.status_code, json_of(response)) == (422, failed), url
    assert decodes == [(stored.image.pk, 1)]
    key = f"render-failed:{render_cache.RENDER_FORM}:{stored.image.pk}:{stored.image.checksum}:1"
    assert caches["renders"].get(key) == failed["detail"]


# --- amplification ------------------------------------------------------------------------------


@pytest.mark.parametrize("viewport", ["2049,10", "10,2049", "8192,8192", "2049,", ",99999"])
def test_a_viewport_larger_than_the_render_side_is_400(put: Put, doctor_client: Client, viewport: str) -> None:
    stored = put("CT_small.dcm")
    for suffix in ("/rendered", "/thumbnail", "/frames/1/rendered"):
        response = doctor_client.get(stored.url(suffix), {"viewport": viewport})
        assert response.status_code == 400
        assert json_of(response) == error("viewport must be width,height between 1 and 2048.", "viewport_too_large")


def test_a_render_is_never_larger_than_the_render_side(put: Put, doctor_client: Client, settings: Any) -> None:
    ct = put("CT_small.dcm")  # 128 x 128
    tall = put("JPEG2000.dcm")  # 256 wide, 1024 high

    largest = doctor_client.get(ct.url("/rendered"), {"viewport": "2048,2048"})
    assert Image.open(io.BytesIO(largest.content)).size == (2048, 2048)
    free_height = doctor_client.get(tall.url("/rendered"), {"viewport": "2048,"})  # 8192 high unbounded
    assert Image.open(io.BytesIO(free_height.content)).size == (512, 2048)

    settings.RADIOLOGY_MAX_RENDER_SIDE = 100
    full = doctor_client.get(ct.url("/rendered"))  # larger than the side: fitted into it
    assert (full.status_code, Image.open(io.BytesIO(full.content)).size) == (200, (100, 100))
    refused = doctor_client.get(ct.url("/rendered"), {"viewport": "101,1"})
    assert json_of(refused) == error("viewport must be width,height between 1 and 100.", "viewport_too_large")


@pytest.mark.parametrize(
    "window", ["nan,nan", "nan,400", "40,nan", "inf,400", "40,inf", "-inf,400", "1e999,400", "40,1e39"]
)
def test_a_window_that_is_not_a_finite_number_is_400(put: Put, doctor_client: Client, window: str) -> None:
    stored = put("CT_small.dcm")
    response = doctor_client.get(stored.url("/rendered"), {"window": window})
    assert response.status_code == 400
    assert json_of(response) == error("window center and width must be finite numbers.", "radiology_error")


@pytest.mark.parametrize("quality", ["abc", "0", "101", "-5", "9" * 5000, "\u0663"])
def test_quality_junk_still_renders_at_85(put: Put, doctor_client: Client, quality: str) -> None:
    stored = put("CT_small.dcm")
    expected = doctor_client.get(stored.url("/rendered"), {"quality": "85"})
    response = doctor_client.get(stored.url("/rendered"), {"quality": quality})
    assert (response.status_code, response["ETag"], response.content) == (200, expected["ETag"], expected.content)


def test_a_frame_asked_many_times_leaves_once(put: Put, doctor_client: Client) -> None:
    stored = put("CT_small.dcm")
    for accept in (OHIF_ACCEPT, UNCOMPRESSED_ACCEPT):
        response = doctor_client.get(stored.url("/frames/" + ",".join(["1"] * 1000)), headers={"Accept": accept})
        assert response.status_code == 200
        _type, parts = multipart_of(response)
        assert [part.content for part in parts] == [stored.dataset().PixelData]


def test_more_distinct_frames_than_the_limit_is_400(put: Put, doctor_client: Client, settings: Any) -> None:
    stored = put("rtdose.dcm")  # 15 frames
    settings.RADIOLOGY_MAX_FRAMES_PER_REQUEST = 2
    allowed = doctor_client.get(stored.url("/frames/3,1,3,1,1"), headers={"Accept": OHIF_ACCEPT})
    assert allowed.status_code == 200
    assert len(multipart_of(allowed)[1]) == 2
    for frames in ("1,2,3", "1,2,99"):
        response = doctor_client.get(stored.url(f"/frames/{frames}"), headers={"Accept": OHIF_ACCEPT})
        assert response.status_code == 400
        assert not response.streaming
        assert json_of(response) == error(
            "At most 2 distinct frames may be asked for in one request.", "too_many_frames"
        )


def test_the_default_limits() -> None:
    from config import settings as production_settings

    assert production_settings.RADIOLOGY_MAX_DECODED_BYTES == BUDGET
    assert production_settings.RADIOLOGY_MAX_RENDER_SIDE == 2048
    assert production_settings.RADIOLOGY_MAX_FRAMES_PER_REQUEST == 1000
