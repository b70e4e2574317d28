"""Ingest against decompression bombs (issue 14, items 1 and 2): refused from the header, in bounded memory.

- A deflated data set is refused from the file meta, before pydicom would inflate it whole.
- Compressed pixel data smaller than its codec can encode the declared frames in is refused
  as `implausible_pixel_data`; huge-but-real files (a 16384 x 16384 RLE image, a blank JPEG
  2000 mammogram) are still stored byte-exact.
- What the parser allocates stays near the file's size (an offset table is not expanded).

Memory is measured with tracemalloc (Python's own allocations, which is where an inflated
data set or an expanded offset table would land), never with a clock. Every refusal leaves
no row, no stored object and no spool file.
"""

from __future__ import annotations

import io
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.data
import pytest
from django.conf import settings
from django.test import override_settings
from openjpeg import encode
from pydicom.filereader import read_file_meta_info
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from apps.radiology.errors import ImplausiblePixelData, RadiologyError, UnsupportedTransferSyntax
from apps.radiology.imagefiles.dicom import (
    CODESTREAM_HEAD_BYTES,
    CODESTREAM_SYNTAXES,
    DEFLATED_TRANSFER_SYNTAXES,
    META_SCAN_BYTES,
    _meta_transfer_syntaxes,
    check_transfer_syntax,
    parse_dicom,
)
from apps.radiology.ingest import parse_helper
from apps.radiology.ingest.bulk_import import ImportItem, ImportReport, import_item
from apps.radiology.models import DICOM_MIME_TYPE, RadiologyImage, RadiologyOrder
from apps.radiology.operations.demo import sample_path
from apps.radiology.pacs_lite_service import PACSLiteService
from apps.radiology.tests.factories import read_stored, row_counts, sample_bytes, stored_keys
from apps.radiology.tests.ingest_bombs import (
    MIB,
    codestream_file,
    deflate_bomb,
    encapsulated,
    image_header,
    j2k_blank,
    j2k_resized,
    jpeg_blank,
    jpeg_resized,
    rle_bomb,
    rle_constant,
    rle_fragment,
)

pytestmark = pytest.mark.django_db

UNSUPPORTED = "Deflated DICOM files are not accepted; send the file uncompressed or image-compressed."
JPIP_REFERENCED_DEFLATE = "1.2.840.10008.1.2.4.95"


def staging_files() -> list[Path]:
    staging = Path(settings.RADIOLOGY_STAGING_DIR)
    return sorted(path for path in staging.rglob("*") if path.is_file()) if staging.exists() else []


def assert_nothing_left() -> None:
    assert row_counts() == (0, 0, 0)
    assert stored_keys() == []
    assert staging_files() == []


def ingest(order: RadiologyOrder, content: bytes) -> Any:
    return PACSLiteService.ingest_image(order=order, stream=io.BytesIO(content), filename="in.dcm", uploaded_by=None)


def peak_allocated(action: Callable[[], Any]) -> tuple[Any, int]:
    """(what action returned or raised, the peak bytes Python allocated while it ran)."""
    tracemalloc.start()
    try:
        try:
            outcome: Any = action()
        except RadiologyError as error:
            outcome = error
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def refused(action: Callable[[], Any]) -> RadiologyError:
    with pytest.raises(RadiologyError) as raised:
        action()
    return raised.value


@pytest.fixture
def written(tmp_path: Path) -> Iterator[Callable[[bytes], Path]]:
    def write(content: bytes) -> Path:
        path = tmp_path / f"file-{len(list(tmp_path.iterdir()))}.dcm"
        path.write_bytes(content)
        return path

    yield write


# --- deflate bomb (item 2) -----------------------------------------------------------------


def test_the_deflate_bomb_builder_makes_a_real_deflated_file() -> None:
    """The same builder, small: pydicom inflates it to the declared pixel data, so the refusal below is the syntax."""
    dataset = pydicom.dcmread(io.BytesIO(deflate_bomb(inflated_bytes=2 * MIB)))

    assert dataset.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    assert len(dataset.PixelData) == 2 * MIB


def test_a_deflate_bomb_is_refused_from_the_file_meta_without_being_inflated(order: RadiologyOrder) -> None:
    bomb = deflate_bomb(inflated_bytes=256 * MIB)
    assert len(bomb) < 300_000

    error, peak = peak_allocated(lambda: ingest(order, bomb))

    assert isinstance(error, UnsupportedTransferSyntax)
    assert (error.status_code, error.code, error.detail) == (415, "unsupported_transfer_syntax", UNSUPPORTED)
    # Inflating would allocate the 256 MiB data set; spooling 256 KB in chunks allocates a few MiB at most.
    assert peak < 8 * MIB, peak
    assert_nothing_left()


def test_jpip_referenced_deflate_is_refused_the_same_way(written: Callable[[bytes], Path]) -> None:
    bomb = deflate_bomb(inflated_bytes=64 * MIB).replace(
        b"1.2.840.10008.1.2.1.99\x00", JPIP_REFERENCED_DEFLATE.encode() + b"\x00", 1
    )

    error = refused(lambda: parse_dicom(written(bomb)))

    assert (error.code, error.detail) == ("unsupported_transfer_syntax", UNSUPPORTED)


def test_the_transfer_syntax_is_read_from_the_file_meta_of_a_path_or_a_stream(
    written: Callable[[bytes], Path],
) -> None:
    bomb, ct = deflate_bomb(inflated_bytes=64 * MIB), sample_bytes("CT_small.dcm")

    assert check_transfer_syntax(written(ct)) == check_transfer_syntax(io.BytesIO(ct)) == "1.2.840.10008.1.2.1"
    for source in (written(bomb), io.BytesIO(bomb)):
        with pytest.raises(UnsupportedTransferSyntax):
            check_transfer_syntax(source)


def test_the_hand_walked_meta_agrees_with_pydicoms_reader_on_every_pydicom_test_file() -> None:
    """The fast walk of group 0002 either finds pydicom's transfer syntax or hands the file to pydicom."""
    files = sorted(
        path for path in Path(pydicom.data.__file__).parent.joinpath("test_files").rglob("*") if path.is_file()
    )
    walked = 0
    for path in files:
        try:
            expected: str | type[Exception] = str(read_file_meta_info(path).get("TransferSyntaxUID", "") or "")
        except Exception as exc:  # not Part 10: the walk must not decide either
            expected = type(exc)
        fast = _meta_transfer_syntaxes(path.read_bytes()[:META_SCAN_BYTES])
        walked += fast is not None
        if expected in DEFLATED_TRANSFER_SYNTAXES:
            with pytest.raises(UnsupportedTransferSyntax):
                check_transfer_syntax(path)
        elif isinstance(expected, str):
            assert check_transfer_syntax(path) == expected, path.name
        else:
            assert fast is None, path.name
    assert walked > 150


def test_bulk_import_into_an_order_refuses_a_deflate_bomb_in_bounded_memory(
    order: RadiologyOrder, written: Callable[[bytes], Path]
) -> None:
    path = written(deflate_bomb(inflated_bytes=256 * MIB))
    report = ImportReport()

    _, peak = peak_allocated(
        lambda: import_item(
            ImportItem("bomb.dcm", path.stat().st_size, lambda: path.open("rb")),
            order=order,
            uploaded_by=None,
            report=report,
        )
    )

    assert report.failures == [("bomb.dcm", f"unsupported_transfer_syntax: {UNSUPPORTED}")]
    assert (report.stored, report.skipped) == (0, 0)
    assert peak < 8 * MIB, peak
    assert_nothing_left()


# --- implausible compressed pixel data (item 1, ingest) --------------------------------------


def test_a_small_rle_file_declaring_65535_by_65535_pixels_is_implausible(order: RadiologyOrder) -> None:
    bomb = rle_bomb()
    assert len(bomb) < 8 * 1024

    error, peak = peak_allocated(lambda: ingest(order, bomb))

    assert isinstance(error, ImplausiblePixelData)
    assert (error.status_code, error.code) == (400, "implausible_pixel_data")
    assert error.detail == (
        "The pixel data holds 6464 bytes; 65535 x 65535 pixels x 1 frame(s) in this transfer syntax need at least "
        "67106882."
    )
    assert peak < 4 * MIB, peak
    assert_nothing_left()


def test_an_rle_file_whose_frames_outnumber_its_data_is_implausible(written: Callable[[bytes], Path]) -> None:
    """One real 256 x 256 frame declared as 1000 frames: the data is 1/1000 of the RLE minimum."""
    header = image_header(rows=256, columns=256, frames=1000)
    frame = rle_fragment([bytes([0x81, 7]) * 2 * 256])
    content = encapsulated(header, RLELossless, [frame])

    error = refused(lambda: parse_dicom(written(content)))

    assert error.code == "implausible_pixel_data"


@pytest.mark.parametrize(
    ("sample", "rows", "columns", "frames"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", 65535, 65535, 1),  # JPEG baseline
        ("JPEG-lossy.dcm", 30000, 30000, 1),  # JPEG extended
        ("MR_small_jpeg_ls_lossless.dcm", 65535, 65535, 4),  # JPEG-LS: a bit per line at least
        ("MR_small_RLE.dcm", 4096, 4096, 1),
    ],
)
def test_a_real_compressed_file_relabelled_to_an_absurd_size_is_implausible(
    order: RadiologyOrder, sample: str, rows: int, columns: int, frames: int
) -> None:
    dataset = pydicom.dcmread(sample_path(sample))
    dataset.Rows, dataset.Columns, dataset.NumberOfFrames = rows, columns, frames
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)

    error = refused(lambda: ingest(order, buffer.getvalue()))

    assert (error.status_code, error.code) == (400, "implausible_pixel_data")
    assert_nothing_left()


@pytest.mark.parametrize(
    "sample",
    [
        "MR_small_RLE.dcm",
        "SC_rgb_rle_32bit_2frame.dcm",
        "rtdose_rle.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "JPEG-lossy.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "JPEG2000.dcm",
    ],
)
def test_real_compressed_files_are_stored_byte_exact(order: RadiologyOrder, sample: str) -> None:
    content = sample_bytes(sample)

    result = ingest(order, content)

    assert result.created
    assert read_stored(result.image.file_key) == content


def test_a_valid_16384_by_16384_16_bit_image_is_stored_byte_exact(order: RadiologyOrder) -> None:
    """512 MiB decoded, 8 MiB as RLE: an archive refuses nothing real."""
    content = rle_constant(side=16384, value=1000)

    result = ingest(order, content)

    image = RadiologyImage.objects.get()
    assert (image.pk, image.rows, image.columns, image.file_size) == (result.image.pk, 16384, 16384, len(content))
    assert read_stored(image.file_key) == content


def test_a_blank_jpeg_2000_mammogram_is_stored_although_it_is_200000_to_1(order: RadiologyOrder) -> None:
    """JPEG 2000 has no size bound (an empty packet is one bit): its decode is bounded where it is rendered."""
    codestream = encode(np.zeros((5120, 4096), dtype=np.uint16))
    assert len(codestream) < 1000
    content = encapsulated(image_header(rows=5120, columns=4096, bits=16), JPEG2000Lossless, [codestream])

    result = ingest(order, content)

    assert read_stored(result.image.file_key) == content


# --- a codestream declaring another size than its header (review of item 1) ------------------


@pytest.mark.parametrize(
    ("codestream", "syntax"),
    [
        (lambda: j2k_resized(j2k_blank(rows=64, columns=64), rows=8192, columns=8192), JPEG2000Lossless),
        (lambda: j2k_resized(j2k_blank(rows=64, columns=64, jp2=True), rows=8192, columns=8192), JPEG2000),
        (lambda: jpeg_resized(jpeg_blank(rows=16, columns=16), rows=8192, columns=8192), JPEGBaseline8Bit),
    ],
    ids=["j2k", "jp2", "jpeg"],
)
def test_a_64_square_header_over_an_8192_square_codestream_is_implausible(
    order: RadiologyOrder, codestream: Callable[[], bytes], syntax: str
) -> None:
    """~1 KB, header 64 x 64 (8 KiB decoded), codestream 8192 x 8192: its decoder would allocate
    the codestream's size. Refused from the first bytes of the fragment, nothing decoded."""
    content, _offset = codestream_file(codestream(), syntax, rows=64, columns=64)
    assert len(content) < 1500

    error, peak = peak_allocated(lambda: ingest(order, content))

    assert isinstance(error, ImplausiblePixelData)
    assert (error.status_code, error.code, error.detail) == (
        400,
        "implausible_pixel_data",
        "The first frame's codestream declares 8192 x 8192 pixels; the header declares 64 x 64.",
    )
    assert peak < 4 * MIB, peak
    assert_nothing_left()


def test_a_smaller_codestream_than_its_header_is_implausible_too(order: RadiologyOrder) -> None:
    """The other way round, a real 128 x 96 JPEG 2000 behind a 256 x 256 header."""
    content, _offset = codestream_file(j2k_blank(rows=128, columns=96), JPEG2000Lossless, rows=256, columns=256)

    error = refused(lambda: ingest(order, content))

    assert (error.status_code, error.code, error.detail) == (
        400,
        "implausible_pixel_data",
        "The first frame's codestream declares 128 x 96 pixels; the header declares 256 x 256.",
    )
    assert_nothing_left()


def test_a_codestream_whose_frame_header_is_past_the_head_read_is_stored(order: RadiologyOrder) -> None:
    """What the first CODESTREAM_HEAD_BYTES cannot tell is stored (rendering refuses to decode it):
    a JPEG with 300 KB of application segments before its frame header."""
    jpeg = jpeg_blank(rows=64, columns=64)
    padding = (b"\xff\xe1" + struct.pack(">H", 65000) + bytes(64998)) * 5
    content, _offset = codestream_file(jpeg[:2] + padding + jpeg[2:], JPEGBaseline8Bit, rows=64, columns=64, bits=8)
    assert len(padding) > CODESTREAM_HEAD_BYTES

    result = ingest(order, content)

    assert read_stored(result.image.file_key) == content


def test_every_real_compressed_pydicom_file_agrees_with_its_codestream() -> None:
    """The first frame of every JPEG, JPEG-LS and JPEG 2000 test file of pydicom declares the
    header's size, except one synthetic file whose SIZ claims 3,722,445,056 columns."""
    refused_names = {}
    checked = 0
    for path in sorted(Path(pydicom.data.__file__).parent.joinpath("test_files").glob("*.dcm")):
        try:
            transfer_syntax = str(read_file_meta_info(path).get("TransferSyntaxUID", "") or "")
        except Exception:  # not Part 10
            transfer_syntax = ""
        if transfer_syntax not in CODESTREAM_SYNTAXES:
            continue
        checked += 1
        try:
            parse_dicom(path)
        except RadiologyError as error:
            if "codestream" in error.detail:
                refused_names[path.name] = error.detail
    assert checked >= 25
    assert refused_names == {
        "JPEG2000-embedded-sequence-delimiter.dcm": (
            "The first frame's codestream declares 1024 x 3722445056 pixels; the header declares 1024 x 256."
        )
    }


# --- what parsing itself may allocate --------------------------------------------------------


def test_a_huge_basic_offset_table_is_not_expanded_into_memory(
    order: RadiologyOrder, written: Callable[[bytes], Path]
) -> None:
    """8 MiB of offsets for a one-frame image: read as 2 million Python ints it would take ~80 MiB."""
    frame = rle_fragment([bytes([0x81, 7]) * 2 * 8])  # an 8 x 8 constant frame
    table = struct.pack("<2097152I", *range(1, 2097153))
    content = encapsulated(image_header(rows=16, columns=16), RLELossless, [frame], offset_table=table)
    path = written(content)

    parsed, peak = peak_allocated(lambda: parse_dicom(path))

    assert parsed.mime_type == DICOM_MIME_TYPE
    assert len(parsed.pixel_data["frames"]) == 1
    assert peak < 4 * MIB, peak


# --- the helper process parses the same way -------------------------------------------------


def test_the_parse_helper_refuses_the_bombs_as_this_process_does(written: Callable[[bytes], Path]) -> None:
    """The last part of a batch of 10 goes to the helper process; the bombs sit there."""
    good = [written(sample_bytes("CT_small.dcm")) for _ in range(8)]
    files = [(path, DICOM_MIME_TYPE) for path in [*good, written(deflate_bomb()), written(rle_bomb())]]
    with override_settings(RADIOLOGY_INGEST_PARSE_HELPER=True):
        assert parse_helper.wait_until_ready()
        helper = parse_helper.helper_pid()

        results = parse_helper.parse_files(files)

        assert parse_helper.helper_pid() == helper  # neither bomb took the helper down
    assert [type(result).__name__ for result in results] == ["ParsedImage"] * 8 + [
        "UnsupportedTransferSyntax",
        "ImplausiblePixelData",
    ]


def test_a_million_empty_fragments_are_refused_before_they_are_walked(order: RadiologyOrder) -> None:
    """8 MB of item headers took 14 s and 200 MiB to walk; now at most one fragment per 256 bytes of file."""
    content = encapsulated(image_header(rows=64, columns=64), JPEG2000Lossless, [b""] * 1_000_000)

    error, peak = peak_allocated(lambda: ingest(order, content))

    assert isinstance(error, RadiologyError)
    assert (error.status_code, error.code, error.detail) == (
        400,
        "invalid_dicom",
        "The encapsulated pixel data has too many fragments.",
    )
    assert peak < 8 * MIB, peak
    assert_nothing_left()
