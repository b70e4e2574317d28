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

import errno
import hashlib
import io
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom.pixels
import pytest
from django.core.cache import caches
from django.test import Client
from PIL import Image, ImageFile
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from apps.radiology import storage
from apps.radiology.dicomweb import pixels, render_cache
from apps.radiology.imagefiles.stored_header import pixel_header_of
from apps.radiology.models import RadiologyImage, RadiologyOrder, RadiologySeries
from apps.radiology.pacs_lite_service import PACSLiteService
from apps.radiology.tests.ingest_bombs import (
    codestream_file,
    file_start,
    j2k_blank,
    j2k_resized,
    jpeg_blank,
    jpeg_resized,
    rle_constant_segments,
    write_rle,
)

from .conftest import PHOTO, Put, Stored
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


@pytest.fixture(autouse=True)
def forget_renders() -> Iterator[None]:
    """Renders and remembered failures are keyed by image id and checksum: ids are reused from one
    test to the next, and so are the checksums of the same built files; none outlives its test."""
    yield
    caches["renders"].clear()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(image id, frame) of each decode that reaches the decoders: a spy around the real one."""
    calls: list[tuple[int, int]] = []
    real = pixels._decode_frame

    def spy(image: RadiologyImage, number: int, *args: Any) -> np.ndarray:
        calls.append((image.pk, number))
        return real(image, number, *args)

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
    assert caches["renders"].get(key) == ("rendering_failed", failed["detail"])


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


# --- a codestream declaring more than its header (review of issue 14, item 1) -------------------
#
# The decoders allocate what the codestream's own frame header declares (JPEG SOFn, JPEG 2000 SIZ),
# not Rows x Columns: each frame's codestream is weighed and compared with the header before a
# decoder sees it. Ingest now refuses such a first frame (test_ingest_limits), so these files are
# stored as a server before that stored them: their bytes and a row.


@pytest.fixture
def decoders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What reached a real pixel decoder: a transfer syntax for each pydicom decoder asked for,
    "pixel_array" for each whole-file decode, "load WxH" for each Pillow decode (at that size)."""
    calls: list[str] = []
    real_decoder, real_pixel_array, real_load = (
        pydicom.pixels.get_decoder,
        pydicom.pixels.pixel_array,
        ImageFile.ImageFile.load,
    )

    def get_decoder(uid: str) -> Any:
        calls.append(str(uid))
        return real_decoder(uid)

    def pixel_array(*args: Any, **kwargs: Any) -> np.ndarray:
        calls.append("pixel_array")
        return real_pixel_array(*args, **kwargs)

    def load(self: ImageFile.ImageFile) -> Any:
        if self.tile:  # not decoded yet (load() of a loaded image is a no-op)
            calls.append(f"load {self.size[0]}x{self.size[1]}")
        return real_load(self)

    monkeypatch.setattr(pydicom.pixels, "get_decoder", get_decoder)
    monkeypatch.setattr(pydicom.pixels, "pixel_array", pixel_array)
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


def store_as_before(
    series: RadiologySeries,
    content: bytes,
    *,
    transfer_syntax: str,
    fragment: tuple[int, int],
    rows: int,
    columns: int,
    bits: int = 16,
    delimited: bool = True,
) -> Stored:
    """`content` (a one-frame DICOM file whose fragment lies at `fragment`) stored as instance 2 of
    `series` without ingest's checks, as a server before this review stored it (`delimited`
    False: as if ingest could not group its fragments into frames)."""
    image_uid = generate_uid()
    key = storage.save_new_object(
        f"radiology/{series.study.study_uid}/{series.series_uid}/{image_uid}/in.dcm",
        io.BytesIO(content),
        content_type="application/dicom",
    )
    ds = header_dataset(rows=rows, columns=columns, bits=bits, study_uid=series.study.study_uid)
    metadata = ds.to_json_dict()
    image = RadiologyImage.objects.create(
        series=series,
        image_uid=image_uid,
        sop_class_uid=ds.SOPClassUID,
        transfer_syntax_uid=transfer_syntax,
        instance_number=2,
        rows=rows,
        columns=columns,
        file_key=key,
        filename="in.dcm",
        file_size=len(content),
        mime_type="application/dicom",
        checksum=hashlib.sha256(content).hexdigest(),
        image_metadata=metadata,
        pixel_data={
            "vr": "OB",
            "offset": fragment[0] - 16,
            "length": -1,
            "encapsulated": True,
            "frames": [[list(fragment)]] if delimited else [],
            "header": pixel_header_of(metadata),
        },
    )
    return as_stored(RadiologyImage.objects.select_related("series__study").get(pk=image.pk))


def j2k_8192() -> tuple[bytes, str]:
    return j2k_resized(j2k_blank(rows=64, columns=64), rows=8192, columns=8192), JPEG2000Lossless


def jp2_8192() -> tuple[bytes, str]:
    return j2k_resized(j2k_blank(rows=64, columns=64, jp2=True), rows=8192, columns=8192), JPEG2000


def jpeg_8192() -> tuple[bytes, str]:
    return jpeg_resized(jpeg_blank(rows=16, columns=16), rows=8192, columns=8192), JPEGBaseline8Bit


@pytest.mark.parametrize("codestream", [j2k_8192, jp2_8192, jpeg_8192], ids=["j2k", "jp2", "jpeg"])
def test_a_64_square_header_carrying_an_8192_square_codestream_is_refused_before_any_decoder_runs(
    put: Put,
    doctor_client: Client,
    decoders: list[str],
    reads: list[tuple[str, int, int]],
    codestream: Any,
) -> None:
    """The reviewer's repro: a ~1 KB file, header 64 x 64 16-bit (8 KiB decoded), codestream
    8192 x 8192: 128 MiB as pydicom's 16-bit array, which is what is weighed."""
    data, syntax = codestream()
    content, offset = codestream_file(data, syntax, rows=64, columns=64)
    assert len(content) < 1500
    ct = put("CT_small.dcm")
    bomb = store_as_before(
        ct.image.series, content, transfer_syntax=syntax, fragment=(offset, len(data)), rows=64, columns=64
    )
    assert pixels.decoded_frame_bytes(bomb.image) == 64 * 64 * 2  # the header's budget passes it

    for url, accept in decoding_paths(bomb) * 2:
        response = doctor_client.get(url, headers={"Accept": accept})
        assert response.status_code == 422, url
        assert json_of(response) == too_large(8192 * 8192 * 2), url
    assert decoders == []
    # The frame was read once, its own bytes (a few hundred): then the refusal was remembered.
    assert reads == [(bomb.image.file_key, offset, len(data))]
    key = f"render-failed:{render_cache.RENDER_FORM}:{bomb.image.pk}:{bomb.image.checksum}:1"
    assert caches["renders"].get(key) == ("image_too_large_to_render", too_large(8192 * 8192 * 2)["detail"])
    assert doctor_client.get(ct.url("/thumbnail")).status_code == 200


def test_a_frame_ingest_could_not_delimit_is_weighed_from_its_first_fragment(
    put: Put, doctor_client: Client, decoders: list[str], reads: list[tuple[str, int, int]]
) -> None:
    """Decoded from the whole file (pydicom finds the frame): its first fragment's codestream is
    read first, three small reads from where ingest found the pixel data."""
    data, syntax = j2k_8192()
    content, offset = codestream_file(data, syntax, rows=64, columns=64)
    ct = put("CT_small.dcm")
    bomb = store_as_before(
        ct.image.series,
        content,
        transfer_syntax=syntax,
        fragment=(offset, len(data)),
        rows=64,
        columns=64,
        delimited=False,
    )

    for suffix in ("/rendered", "/thumbnail", "/frames/1/rendered"):
        response = doctor_client.get(bomb.url(suffix))
        assert (response.status_code, json_of(response)) == (422, too_large(8192 * 8192 * 2)), suffix
    assert decoders == []
    key = bomb.image.file_key
    assert reads == [(key, offset - 16, 8), (key, offset - 8, 8), (key, offset, len(data))]


@pytest.mark.parametrize(
    ("make", "syntax"),
    [
        (lambda: j2k_blank(rows=128, columns=96), JPEG2000Lossless),
        (lambda: j2k_blank(rows=128, columns=96, jp2=True), JPEG2000),
        (lambda: jpeg_blank(rows=128, columns=96), JPEGBaseline8Bit),
    ],
    ids=["j2k", "jp2", "jpeg"],
)
def test_a_codestream_of_another_size_than_its_header_is_codestream_mismatch_and_remembered(
    put: Put, doctor_client: Client, decoders: list[str], reads: list[tuple[str, int, int]], make: Any, syntax: str
) -> None:
    """Within the budget, but not the size the header says: the decoder would produce another
    image than the one described. A real codestream, 128 x 96, behind a 64 x 64 header."""
    data = make()
    content, offset = codestream_file(data, syntax, rows=64, columns=64, bits=8)
    ct = put("CT_small.dcm")
    stored = store_as_before(
        ct.image.series, content, transfer_syntax=syntax, fragment=(offset, len(data)), rows=64, columns=64, bits=8
    )
    mismatch = error(
        "The frame's codestream declares 128 x 96 pixels; the image header declares 64 x 64.", "codestream_mismatch"
    )

    for url, accept in decoding_paths(stored) * 2:
        response = doctor_client.get(url, headers={"Accept": accept})
        assert (response.status_code, json_of(response)) == (422, mismatch), url
    assert decoders == []
    assert reads == [(stored.image.file_key, offset, len(data))]


def test_a_jp2_whose_image_header_box_disagrees_with_its_codestream_is_not_decoded(
    put: Put, doctor_client: Client, decoders: list[str]
) -> None:
    jp2 = bytearray(j2k_blank(rows=64, columns=64, jp2=True))
    ihdr = jp2.index(b"ihdr")
    struct.pack_into(">II", jp2, ihdr + 4, 32, 32)  # ihdr says 32 x 32; the SIZ still says 64 x 64
    content, offset = codestream_file(bytes(jp2), JPEG2000, rows=64, columns=64)
    ct = put("CT_small.dcm")
    stored = store_as_before(
        ct.image.series, content, transfer_syntax=JPEG2000, fragment=(offset, len(jp2)), rows=64, columns=64
    )

    response = doctor_client.get(stored.url("/rendered"))
    assert (response.status_code, json_of(response)) == (
        422,
        error(
            "The frame's codestream declares no usable image size: "
            "a JP2 image header that disagrees with its codestream.",
            "rendering_failed",
        ),
    )
    assert decoders == []


def test_a_codestream_that_agrees_with_its_header_still_decodes(
    put: Put, doctor_client: Client, decoders: list[str]
) -> None:
    data = j2k_blank(rows=64, columns=64)
    content, offset = codestream_file(data, JPEG2000Lossless, rows=64, columns=64)
    ct = put("CT_small.dcm")
    stored = store_as_before(
        ct.image.series, content, transfer_syntax=JPEG2000Lossless, fragment=(offset, len(data)), rows=64, columns=64
    )

    response = doctor_client.get(stored.url("/frames/1"), headers={"Accept": UNCOMPRESSED_ACCEPT})
    assert response.status_code == 200
    assert [part.content for part in multipart_of(response)[1]] == [bytes(64 * 64 * 2)]
    assert decoders == [JPEG2000Lossless]


def test_a_codestream_whose_frame_header_is_past_the_head_read_is_stored_but_not_decoded(
    order: RadiologyOrder, doctor_client: Client, tmp_path: Path, decoders: list[str]
) -> None:
    """Ingest stores what the first CODESTREAM_HEAD_BYTES cannot tell; rendering does not hand it
    to a decoder (which would find, and allocate, whatever frame header lies further on)."""
    jpeg = jpeg_blank(rows=64, columns=64)
    padding = (b"\xff\xe1" + struct.pack(">H", 65000) + bytes(64998)) * 5
    content, _offset = codestream_file(jpeg[:2] + padding + jpeg[2:], JPEGBaseline8Bit, rows=64, columns=64, bits=8)
    path = tmp_path / "padded.dcm"
    path.write_bytes(content)
    stored = as_stored(ingest_file(order, path))
    unreadable = error(
        "The frame's codestream declares no usable image size: no JPEG frame header.", "rendering_failed"
    )

    for url, accept in decoding_paths(stored):
        response = doctor_client.get(url, headers={"Accept": accept})
        assert (response.status_code, json_of(response)) == (422, unreadable), url
    assert decoders == []


@pytest.mark.parametrize(
    "name", ["JPEG2000.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_real_compressed_files_pass_the_codestream_check_and_reach_their_decoder(
    put: Put, doctor_client: Client, decoders: list[str], name: str
) -> None:
    stored = put(name)
    response = doctor_client.get(stored.url("/rendered"), headers={"Accept": "image/png"})
    assert response.status_code == 200
    assert decoders == [stored.image.transfer_syntax_uid]


# --- JPEG photos decoded at the scale their render needs (review, item 2) ----------------------------


def photo_jpeg(width: int, height: int, *, progressive: bool = False, mode: str = "RGB") -> bytes:
    """A real JPEG photo, a horizontal gradient (Pillow)."""
    picture = Image.linear_gradient("L").resize((width, height))
    if mode == "RGB":
        picture = Image.merge("RGB", (picture, picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT), picture))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=80, progressive=progressive)
    return buffer.getvalue()


def photo_as_before(beside: Stored, content: bytes, *, rows: int = 0, columns: int = 0) -> Stored:
    """`content` stored as a JPEG photo in `beside`'s series as a server before this review stored
    it (no ingest: it would refuse it): its bytes, and a row saying rows x columns (else its own
    frame header's)."""
    if not (rows and columns):
        with Image.open(io.BytesIO(content)) as photo:
            columns, rows = photo.size
    key = storage.save_new_object(f"{beside.image.file_key}.2.jpg", io.BytesIO(content), content_type="image/jpeg")
    image = RadiologyImage.objects.create(
        series=beside.image.series,
        image_uid=generate_uid(),
        sop_class_uid=beside.image.sop_class_uid,
        transfer_syntax_uid=beside.image.transfer_syntax_uid,
        instance_number=2,
        rows=rows,
        columns=columns,
        file_key=key,
        filename="photo.jpg",
        file_size=len(content),
        mime_type="image/jpeg",
        checksum=hashlib.sha256(content).hexdigest(),
        image_metadata={"width": columns, "height": rows, "mode": "L", "progressive": False, "exif": {}},
        pixel_data={"vr": "OB", "offset": 0, "length": -1, "encapsulated": True, "frames": [[[0, len(content)]]]},
    )
    return as_stored(RadiologyImage.objects.select_related("series__study").get(pk=image.pk))


def test_a_24_megapixel_photo_renders_a_thumbnail_decoded_at_an_eighth(
    put: Put, doctor_client: Client, decoders: list[str]
) -> None:
    """6000 x 4000 RGB is 72 MB decoded whole, over the 64 MiB budget: libjpeg decodes it at 1/8
    (750 x 500, 1.1 MB) for a 128 px thumbnail, at 1/2 for a full-size render (capped at 2048)."""
    stored = put(PHOTO, content=photo_jpeg(6000, 4000))
    assert (stored.image.columns, stored.image.rows, stored.image.is_dicom) == (6000, 4000, False)
    assert decoders == ["load 750x500"]  # ingest proves the file whole at 1/8 (dicom.parse_jpeg)
    decoders.clear()

    thumbnail = doctor_client.get(stored.url("/thumbnail"))
    assert (thumbnail.status_code, Image.open(io.BytesIO(thumbnail.content)).size) == (200, (128, 85))
    assert decoders == ["load 750x500"]
    full = doctor_client.get(stored.url("/rendered"))
    assert (full.status_code, Image.open(io.BytesIO(full.content)).size) == (200, (2048, 1365))
    assert decoders[1:] == ["load 3000x2000"]

    # Native pixels are the whole photo: over the budget, refused before it is opened.
    frames = doctor_client.get(stored.url("/frames/1"), headers={"Accept": UNCOMPRESSED_ACCEPT})
    assert (frames.status_code, json_of(frames)) == (422, too_large(6000 * 4000 * 3))
    assert len(decoders) == 2


def test_a_progressive_photo_is_weighed_with_its_coefficient_buffer(
    put: Put, doctor_client: Client, settings: Any, decoders: list[str]
) -> None:
    """libjpeg keeps every DCT coefficient of a progressive JPEG until its last scan, at full size
    whatever the scale: 2048 x 2560 in 4:2:0 is 128 x 160 MCUs of 6 blocks of 64 two-byte
    coefficients (15,728,640 bytes), beside the 256 x 320 RGB it is decoded to (245,760)."""
    stored = put(PHOTO, content=photo_jpeg(2048, 2560, progressive=True))
    decoders.clear()
    weight = 128 * 160 * 6 * 64 * 2 + 256 * 320 * 3

    settings.RADIOLOGY_MAX_DECODED_BYTES = weight - 1
    refused = doctor_client.get(stored.url("/thumbnail"))
    assert (refused.status_code, json_of(refused)) == (422, too_large(weight, budget=weight - 1))
    assert decoders == []  # opened (its header read), never loaded
    settings.RADIOLOGY_MAX_DECODED_BYTES = weight  # not remembered: the next viewport may fit
    thumbnail = doctor_client.get(stored.url("/thumbnail"))
    assert (thumbnail.status_code, Image.open(io.BytesIO(thumbnail.content)).size) == (200, (102, 128))
    assert decoders == ["load 256x320"]


def test_an_absurd_photo_is_still_refused_without_being_decoded(
    put: Put, doctor_client: Client, decoders: list[str]
) -> None:
    """A photo declaring 65000 x 65000 pixels (a patched frame header; ingest refuses it, so it is
    stored as an older server stored it): even at 1/8 its decode is over the budget."""
    stored = photo_as_before(
        put(PHOTO),
        jpeg_resized(jpeg_blank(rows=16, columns=16), rows=65000, columns=65000),
        rows=65000,
        columns=65000,
    )
    decoders.clear()

    for url, accept in decoding_paths(stored):
        response = doctor_client.get(url, headers={"Accept": accept})
        assert response.status_code == 422, url
        assert json_of(response)["code"] == "image_too_large_to_render", url
    thumbnail = doctor_client.get(stored.url("/thumbnail"))
    assert json_of(thumbnail) == too_large(8125 * 8125 * 3)
    assert decoders == []
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's own guard is left on


def test_a_photo_whose_file_disagrees_with_its_record_is_codestream_mismatch(
    put: Put, doctor_client: Client, decoders: list[str]
) -> None:
    stored = photo_as_before(put(PHOTO), jpeg_blank(rows=240, columns=320), rows=24, columns=32)
    decoders.clear()

    response = doctor_client.get(stored.url("/thumbnail"))
    assert (response.status_code, json_of(response)) == (
        422,
        error("The photo declares 240 x 320 pixels; the image record says 24 x 32.", "codestream_mismatch"),
    )
    assert decoders == []


# --- the server's own failures are not remembered (review, item 3) -----------------------------------


def failure_key(stored: Stored) -> str:
    return f"render-failed:{render_cache.RENDER_FORM}:{stored.image.pk}:{stored.image.checksum}:1"


def test_running_out_of_memory_while_decoding_is_503_and_not_remembered(
    put: Put, doctor_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = put("SC_rgb_rle_2frame.dcm")
    real = pydicom.pixels.get_decoder

    class Exhausted:
        def as_array(self, *args: Any, **kwargs: Any) -> Any:
            raise MemoryError

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Exhausted())
    response = doctor_client.get(stored.url("/rendered"))
    assert (response.status_code, json_of(response)) == (
        503,
        error("The server ran out of memory decoding this image; try again later.", "rendering_unavailable"),
    )
    assert caches["renders"].get(failure_key(stored)) is None

    monkeypatch.setattr(pydicom.pixels, "get_decoder", real)
    assert doctor_client.get(stored.url("/rendered")).status_code == 200


def test_a_full_disk_while_decoding_is_503_and_not_remembered(
    put: Put, doctor_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = put(PHOTO)  # photos are decoded from a local path (a temporary copy on S3)
    real = storage.local_path

    def full_disk(key: str) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "local_path", full_disk)
    response = doctor_client.get(stored.url("/thumbnail"))
    assert (response.status_code, json_of(response)) == (
        503,
        error("The server could not read this image to decode it (OSError); try again later.", "rendering_unavailable"),
    )
    assert caches["renders"].get(failure_key(stored)) is None

    monkeypatch.setattr(storage, "local_path", real)
    assert doctor_client.get(stored.url("/thumbnail")).status_code == 200


def test_a_store_that_is_away_while_decoding_is_503_and_not_remembered(
    put: Put, doctor_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apps.radiology.errors import StorageFailure

    stored = put("SC_rgb_rle_2frame.dcm")
    real = storage.iter_object_range

    def away(*args: Any, **kwargs: Any) -> Iterator[bytes]:
        raise StorageFailure()

    monkeypatch.setattr(storage, "iter_object_range", away)
    response = doctor_client.get(stored.url("/rendered"))
    assert (response.status_code, json_of(response)["code"]) == (503, "storage_unavailable")
    assert caches["renders"].get(failure_key(stored)) is None

    monkeypatch.setattr(storage, "iter_object_range", real)
    assert doctor_client.get(stored.url("/rendered")).status_code == 200


def test_a_decoder_error_on_a_photo_is_remembered_as_rendering_failed(
    put: Put, doctor_client: Client, monkeypatch: pytest.MonkeyPatch, decoders: list[str]
) -> None:
    """Pillow's OSError for data it can't read has no errno: bad pixels, remembered."""
    stored = put(PHOTO)
    decoders.clear()

    def broken(self: ImageFile.ImageFile) -> Any:
        decoders.append("broken")
        raise OSError("broken data stream when reading image file")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken)
    failed = error("Could not decode the pixel data: OSError.", "rendering_failed")
    for _ in range(2):
        response = doctor_client.get(stored.url("/thumbnail"), {"viewport": "64,64"})
        assert (response.status_code, json_of(response)) == (422, failed)
    assert decoders == ["broken"]
    assert caches["renders"].get(failure_key(stored)) == ("rendering_failed", failed["detail"])
