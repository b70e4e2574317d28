"""Reading what an incoming file is: DICOM header fields and JSON, or a JPEG's size and EXIF.

Everything here works on a file already spooled to disk, so no function needs the whole
file in memory: pydicom defers large values (pixel data stays on disk) and Pillow decodes a
JPEG at 1/8 scale just to prove it is complete.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pydicom
from PIL import ExifTags, Image, TiffImagePlugin
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16

from apps.radiology.errors import (
    ImplausiblePixelData,
    InvalidDicom,
    InvalidJpeg,
    MissingPixelData,
    TruncatedFile,
    UnsupportedFileType,
    UnsupportedTransferSyntax,
)
from apps.radiology.fastpaths.dicom_json_fast import fast_dicom_json, fast_path_supported
from apps.radiology.fastpaths.dicom_meta import file_meta_of
from apps.radiology.imagefiles import stored_header
from apps.radiology.imagefiles.uids import validate_uid
from apps.radiology.models import DICOM_MIME_TYPE, JPEG_MIME_TYPE

# The smallest prefix that tells DICOM Part 10 (128-byte preamble + "DICM") from JPEG.
SNIFF_LENGTH = 132
JPEG_SIGNATURE = b"\xff\xd8\xff"
# Binary VRs whose large values are bulk data: kept out of image_metadata (DICOMweb serves
# them as BulkDataURI from the file instead).
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
BULK_THRESHOLD = 1024
UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_DATA_TAG = 0x7FE00010
MAX_FRAGMENTS = 1_000_000
# Fragments are also limited by the file's size: walking one costs a seek, a read and a few
# Python objects (~4 us, ~200 bytes), so 8 MB of empty item headers (a million fragments)
# took 14 s and 200 MiB. One fragment per 256 bytes of file (plus FRAGMENT_ALLOWANCE) keeps
# that proportional to the upload; real encoders write one fragment per frame or a few
# kilobytes and more each.
BYTES_PER_FRAGMENT = 256
FRAGMENT_ALLOWANCE = 1024
# Explicit VRs whose element header has 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
# First bytes of a JPEG (SOI) and a JPEG 2000 codestream (SOC): where a new frame starts.
CODESTREAM_STARTS = (b"\xff\xd8", b"\xff\x4f")
_BULK_SENTINEL = "pacs-lite:bulk"
# IS values are signed 32-bit (PS3.5 6.2), as are the integer columns they go to.
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
# What pydicom warns when a file ends inside an undefined-length element.
_EOF_WARNING = "End of file reached before delimiter"
# Secondary Capture Image Storage: how a JPEG photo is presented to DICOM tools.
SECONDARY_CAPTURE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
JPEG_BASELINE_TRANSFER_SYNTAX = "1.2.840.10008.1.2.4.50"
DEFLATED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1.99"
# Transfer syntaxes whose whole data set (not only its frames) is deflated: Deflated Explicit
# VR Little Endian and JPIP Referenced Deflate. Frame offsets in such a file mean nothing,
# and pydicom inflates the whole data set in memory before reading a single element, so
# they are refused from the file meta alone (a 1 MB file can inflate to gigabytes).
DEFLATED_TRANSFER_SYNTAXES = frozenset({DEFLATED_TRANSFER_SYNTAX, "1.2.840.10008.1.2.4.95"})


def sniff_mime_type(head: bytes) -> str:
    """Decide the MIME type from the first bytes, never from the client's word."""
    if len(head) >= SNIFF_LENGTH and head[128:132] == b"DICM":
        return DICOM_MIME_TYPE
    if head.startswith(JPEG_SIGNATURE):
        return JPEG_MIME_TYPE
    raise UnsupportedFileType()


@dataclass(frozen=True)
class ParsedImage:
    """What ingest needs to know about a file, from its own header."""

    mime_type: str
    study_uid: str | None = None
    series_uid: str | None = None
    image_uid: str | None = None
    sop_class_uid: str = ""
    transfer_syntax_uid: str = ""
    study_date: dt.date | None = None
    study_time: dt.time | None = None
    study_description: str = ""
    accession_number: str = ""
    referring_physician_name: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    series_date: dt.date | None = None
    series_time: dt.time | None = None
    body_part_examined: str = ""
    instance_number: int | None = None
    number_of_frames: int = 1
    rows: int | None = None
    columns: int | None = None
    # The header (DICOM JSON without bulk data; a JPEG's size and EXIF), already in the form
    # it is stored in (stored_header.dicom_header).
    metadata: dict[str, Any] = field(default_factory=dict)
    # Where pixel data and other bulk data lie in the file (see locate_pixel_data); a DICOM
    # file's pixel data also carries its pixel description ("header", see stored_header).
    pixel_data: dict[str, Any] = field(default_factory=dict)
    bulk_data: dict[str, Any] = field(default_factory=dict)


def check_transfer_syntax(source: Path | IO[bytes]) -> str:
    """Read only a DICOM file's meta group (0002) and refuse a deflated data set; return its transfer syntax.

    It must come before anything reads the data set (see DEFLATED_TRANSFER_SYNTAXES). `source`
    is a path, or a binary stream at the file's start (left somewhere in the meta: seek back
    before reading the file). Raises pydicom's errors for a file that is not DICOM Part 10.
    """
    if isinstance(source, Path):
        with source.open("rb") as handle:
            values = _meta_transfer_syntaxes(handle.read(META_SCAN_BYTES))
    else:
        values = _meta_transfer_syntaxes(source.read(META_SCAN_BYTES))
        source.seek(0)
    if values is None:  # not a plain meta group: pydicom's own reader decides
        values = [_pydicom_meta_transfer_syntax(source)]
    if any(value in DEFLATED_TRANSFER_SYNTAXES for value in values):
        raise UnsupportedTransferSyntax()
    return values[-1] if values else ""


# Hand-walked rather than read with pydicom's read_file_meta_info, which costs ~200 us a file
# (3% of parsing a CT header) for what is a dozen short elements. Anything the walk does
# not fully understand goes to pydicom, so the two cannot disagree about deflate.
META_SCAN_BYTES = 16 * 1024
_META_VRS_16 = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_16)  # VRs with a 2-byte length


def _meta_transfer_syntaxes(head: bytes) -> list[str] | None:
    """Every (0002,0010) value of a plainly laid out Explicit VR Little Endian meta group, in order.

    None when the walk is not sure: no DICM prefix, an unknown VR, an undefined length, or a
    group that runs to or past the end of `head` (a stream may have returned fewer bytes).
    """
    if len(head) < SNIFF_LENGTH or head[128:132] != b"DICM":
        return None
    values: list[str] = []
    position = SNIFF_LENGTH
    while True:
        if position + 8 > len(head):
            return None
        group, element = struct.unpack_from("<HH", head, position)
        if group != 2:
            return values
        vr = head[position + 4 : position + 6]
        if vr in _META_VRS_16:
            length, value_offset = struct.unpack_from("<H", head, position + 6)[0], position + 8
        elif vr in LONG_LENGTH_VRS:
            if position + 12 > len(head):
                return None
            length, value_offset = struct.unpack_from("<I", head, position + 8)[0], position + 12
        else:
            return None
        if length == UNDEFINED_LENGTH or value_offset + length > len(head):
            return None
        if element == 0x0010:
            values.append(head[value_offset : value_offset + length].decode("latin-1").strip(" \x00\t\r\n"))
        position = value_offset + length


def _pydicom_meta_transfer_syntax(source: Path | IO[bytes]) -> str:
    return _uid(file_meta_of(source), "TransferSyntaxUID") or ""


def parse_image_file(path: Path, mime_type: str) -> ParsedImage:
    """Parse a spooled file whose type `sniff_mime_type` already decided."""
    if mime_type == DICOM_MIME_TYPE:
        return parse_dicom(path)
    return parse_jpeg(path)


# --- DICOM ------------------------------------------------------------------------------


def parse_dicom(path: Path) -> ParsedImage:
    """Read a DICOM Part 10 file's header and locate its pixel data; reject it if truncated or unreadable.

    pydicom reads everything up to the pixel data (large values deferred, so never in
    memory); the pixel data element itself is walked here, item header by item header,
    which both proves it is complete and records where each frame lies in the file, so
    frames can later be served by byte ranges without parsing the file again.
    """
    file_size = path.stat().st_size
    try:
        with warnings.catch_warnings(record=True) as caught, path.open("rb") as handle:
            # pydicom warns (rather than fails) on many malformed files; we decide below.
            warnings.simplefilter("always")
            check_transfer_syntax(handle)  # leaves the handle at the file's start
            dataset = pydicom.dcmread(handle, defer_size=BULK_THRESHOLD, stop_before_pixels=True)
            # An undefined-length element cut short makes pydicom warn and return an
            # *empty* data set, which would otherwise pass as "no UIDs".
            if any(_EOF_WARNING in str(warning.message) for warning in caught):
                raise TruncatedFile()
            pixel_position = handle.tell()
            _check_complete(dataset, file_size)
            pixel_data = locate_pixel_data(handle, dataset, pixel_position, file_size)
            if pixel_data and (overlays := locate_overlays(dataset, file_size)):
                pixel_data["overlays"] = overlays
            bulk_data = _bulk_elements(dataset)
            # Encoded here, where the file is parsed (the parse helper's process, for a big batch).
            metadata, pixel_data = stored_header.dicom_header(
                dicom_json(dataset), pixel_data=pixel_data, bulk_data=bulk_data
            )
            fields = _dicom_fields(dataset)
    except (TruncatedFile, InvalidDicom, UnsupportedTransferSyntax):
        raise  # MissingPixelData and ImplausiblePixelData are InvalidDicom
    except (InvalidDicomError, EOFError) as exc:
        raise InvalidDicom(f"The DICOM file could not be read: {type(exc).__name__}.") from exc
    except Exception as exc:  # pydicom raises many types on malformed values
        raise InvalidDicom(f"The DICOM file has malformed content: {type(exc).__name__}.") from exc
    # Only valid UIDs are stored (see uids.py); ingest checks the study, series and image UIDs,
    # these two are checked here. A mangled one (a wrong VR that reads it as numbers, an
    # embedded NUL) would otherwise fail its 64-character column on PostgreSQL: a 500.
    for name in ("sop_class_uid", "transfer_syntax_uid"):
        if fields[name]:
            validate_uid(fields[name], field=name)
    return ParsedImage(
        mime_type=DICOM_MIME_TYPE, metadata=metadata, pixel_data=pixel_data, bulk_data=bulk_data, **fields
    )


def _vr_of(tag: BaseTag, raw: Any) -> str:
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _check_complete(dataset: Dataset, file_size: int) -> None:
    """Refuse files whose header elements end beyond the end of the file.

    pydicom reads truncated files without complaint, returning whatever it got; a medical
    store must not keep half an image, so every defined-length top-level element has to fit.
    """
    for _tag, raw in dataset.items():
        value_tell = getattr(raw, "value_tell", None)
        length = getattr(raw, "length", None)
        if value_tell is None or length is None or length == UNDEFINED_LENGTH:
            continue
        if value_tell + length > file_size:
            raise TruncatedFile()


def locate_pixel_data(handle: IO[bytes], dataset: Dataset, position: int, file_size: int) -> dict[str, Any]:
    """Where the pixel data and each of its frames lie in the file ({} when it has none).

    Native: {"vr", "offset", "length", "encapsulated": False, "frame_length"}.
    Encapsulated: {"vr", "offset", "length": -1, "encapsulated": True, "frames": [[[offset, length], ...], ...]}
    with the fragments of each frame. Raises TruncatedFile if the element ends early, and
    MissingPixelData for an image whose data set ends, at an element's end, without it.
    """
    is_image = _is_image(dataset)
    implicit, endian = read_encoding(dataset)
    handle.seek(position)
    head = handle.read(8)
    if len(head) < 8 or struct.unpack(f"{endian}HH", head[:4]) != (0x7FE0, 0x0010):
        if not is_image:
            return {}
        if not head and _ends_with_last_element(handle, dataset, file_size, endian=endian):
            # The file ends exactly where its last element ends and holds no Pixel Data, which
            # is Type 1 in the Image Pixel module (PS3.3 C.7.6.3): a non-conformant image. It may
            # also have been cut exactly there; nothing in the bytes can tell, and "ends before
            # its content does" would mislead for the pydicom DICOMDIR samples written so on purpose.
            raise MissingPixelData()
        # Bytes after the last element that are no whole element (a cut inside the next
        # element's header: pydicom skips them), or another element where pixel data must be.
        raise TruncatedFile()
    if implicit:
        length, value_offset = struct.unpack("<I", head[4:8])[0], position + 8
        vr = "OB" if length == UNDEFINED_LENGTH else "OW"  # encapsulated pixel data is OB (PS3.5 A.4)
    else:
        vr = head[4:6].decode("ascii", "replace")
        extra = handle.read(4)
        if len(extra) < 4:
            raise TruncatedFile()
        length, value_offset = struct.unpack(f"{endian}I", extra)[0], position + 12
    if length != UNDEFINED_LENGTH:
        if value_offset + length > file_size:
            raise TruncatedFile()
        frame_length = _native_frame_length(dataset)
        frames = _frame_count(dataset)
        if frame_length is not None and length < frame_length * frames:
            raise TruncatedFile()
        _check_trailing_elements(handle, value_offset + length, file_size, endian=endian, implicit=implicit)
        return {
            "vr": vr,
            "offset": value_offset,
            "length": length,
            "encapsulated": False,
            "frame_length": frame_length,
        }
    frames = _frame_count(dataset)
    fragments, basic_offsets, end = _walk_items(handle, value_offset, file_size, frames=frames)
    _check_plausible(dataset, frames, sum(length for _start, _offset, length in fragments))
    _check_trailing_elements(handle, end, file_size, endian=endian, implicit=implicit)
    grouped = _fragments_by_frame(handle, fragments, basic_offsets, frames)
    first_spans = grouped[0] if grouped else [[data_offset, length] for _start, data_offset, length in fragments[:1]]
    check_first_codestream(handle, dataset, first_spans)
    return {
        "vr": vr,
        "offset": value_offset,
        "length": -1,
        "encapsulated": True,
        "frames": grouped,
    }


# Compressed pixel data cannot be smaller than its codec allows for the size its header
# declares; a file that is (the 6.5 KB RLE file declaring 65535 x 65535 pixels) is
# a decompression bomb, not an image. Each bound below is the codec's own minimum, so every
# real file passes; ENCODED_SLACK halves it again for encoders that pad or split oddly.
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
# Huffman-coded JPEG (ITU T.81): DCT processes, where every 8x8 block of the first component
# costs at least 2 bits (a 1-bit DC code and a 1-bit end-of-block), whatever the other
# components and their subsampling; and lossless processes, at least 1 bit per sample.
JPEG_DCT_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"})
JPEG_LOSSLESS_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"})
# JPEG-LS (ITU T.87 A.7.1): a run never crosses the end of a line and every line writes at
# least one bit, so a blank image still costs a bit per line.
JPEG_LS_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
# JPEG 2000 has no such bound: an empty packet is one bit whatever its size, and a blank
# 4096 x 5120 16-bit image encodes (OpenJPEG) to 183 bytes, 229,000:1. Its decode is bounded
# where pixels are decoded (rendering's budget), not here: the archive stores it.
ENCODED_SLACK = 2


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _check_plausible(dataset: Dataset, frames: int, encoded_bytes: int) -> None:
    """Refuse encapsulated pixel data smaller than its codec can encode the declared frames in."""
    transfer_syntax = _uid(dataset.file_meta, "TransferSyntaxUID") or ""
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        bytes_per_sample = _ceil_div(int(dataset.BitsAllocated), 8)
    except (AttributeError, TypeError, ValueError):
        return  # no usable size: nothing is decoded from it either
    if min(rows, columns, samples, bytes_per_sample) <= 0:
        return
    pixels = rows * columns
    if transfer_syntax == RLE_LOSSLESS:
        # PS3.5 G: a 64-byte header, then one segment per byte of each sample, in which a
        # 2-byte replicate run stands for at most 128 bytes.
        per_frame = 64 + samples * bytes_per_sample * 2 * _ceil_div(pixels, 128)
    elif transfer_syntax in JPEG_DCT_SYNTAXES:
        per_frame = _ceil_div(_ceil_div(rows, 8) * _ceil_div(columns, 8) * 2, 8)
    elif transfer_syntax in JPEG_LOSSLESS_SYNTAXES:
        per_frame = _ceil_div(pixels * samples, 8)
    elif transfer_syntax in JPEG_LS_SYNTAXES:
        per_frame = _ceil_div(rows, 8)
    else:
        return
    if encoded_bytes * ENCODED_SLACK < per_frame * frames:
        raise ImplausiblePixelData(
            f"The pixel data holds {encoded_bytes} bytes; {rows} x {columns} pixels x {frames} frame(s) "
            f"in this transfer syntax need at least {per_frame * frames}."
        )


# --- the size a compressed frame's own codestream declares ------------------------------------
#
# A JPEG, JPEG-LS or JPEG 2000 decoder allocates what the codestream's frame header declares,
# not the Rows and Columns of the DICOM header: a 1 KB file whose header says 64 x 64 can carry
# a blank 8192 x 8192 JPEG 2000 codestream (a few hundred bytes), whose decode peaks at hundreds
# of MiB. So ingest refuses a first frame whose codestream disagrees with Rows / Columns, and
# rendering weighs and compares every frame's codestream before its decoder sees it.
#
# A marker walk of our own rather than pydicom's: get_j2k_parameters (public) gives only the
# precision, not the size, and reads no JP2 'ihdr'; _get_jpg_parameters (private) skips no fill
# bytes and loops through a codestream that ends early. This one reads only `head` (the first
# CODESTREAM_HEAD_BYTES of the frame's fragments), skipping marker segments by their lengths:
# at most a few thousand steps, whatever the input.
JPEG_2000_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.92",
        "1.2.840.10008.1.2.4.93",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    }
)
JPEG_FAMILY_SYNTAXES = JPEG_DCT_SYNTAXES | JPEG_LOSSLESS_SYNTAXES | JPEG_LS_SYNTAXES
CODESTREAM_SYNTAXES = JPEG_FAMILY_SYNTAXES | JPEG_2000_SYNTAXES
# Everything before a JPEG frame header (SOFn) is tables and application data, and before a JPEG
# 2000 SIZ only the JP2 boxes: a few kilobytes in real files; 256 KiB leaves room for an ICC
# profile or EXIF block in front. A frame header not found in it is not decoded.
CODESTREAM_HEAD_BYTES = 256 * 1024
# JPEG SOF0-SOF15 less DHT (C4), JPG (C8) and DAC (CC); SOF55 (F7) is JPEG-LS's (T.87 C.2.2).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
# Markers without a length: TEM and RST0-RST7 (T.81 B.1.1.3).
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
J2K_START = b"\xff\x4f\xff\x51"  # SOC, then SIZ (always second, 15444-1 A.3)


@dataclass(frozen=True)
class CodestreamSize:
    """What a frame's codestream declares: its decoder allocates rows x columns x components
    samples of up to `bits` bits."""

    rows: int
    columns: int
    components: int
    bits: int
    # The frame header's marker (T.81 B.1.1.3): 0xC0 baseline, 0xC1 extended sequential,
    # 0xC2 progressive, ...; 0xF7 JPEG-LS; 0 for a JPEG 2000 codestream.
    marker: int = 0

    @property
    def decoded_bytes(self) -> int:
        return self.rows * self.columns * max(self.components, 1) * max(_ceil_div(self.bits, 8), 1)


class UnreadableCodestream(ValueError):
    """The head starts as a codestream of its syntax, but declares no usable size within it."""


def codestream_size(head: bytes | memoryview, transfer_syntax: str) -> CodestreamSize | None:
    """The size the codestream starting `head` declares; None when `head` does not start like a
    codestream of this transfer syntax (its decoder refuses such data) or the syntax has none
    (native, RLE: their decoders allocate Rows x Columns). Raises UnreadableCodestream when it
    starts like one but no frame header is found in `head`."""
    head = bytes(head[:CODESTREAM_HEAD_BYTES])
    if transfer_syntax in JPEG_FAMILY_SYNTAXES:
        return _jpeg_size(head) if head.startswith(b"\xff\xd8") else None
    if transfer_syntax in JPEG_2000_SYNTAXES:
        if head.startswith(JP2_SIGNATURE):
            return _jp2_size(head)
        return _siz_size(head, 0) if head.startswith(J2K_START) else None
    return None


def _jpeg_size(head: bytes) -> CodestreamSize:
    """The SOFn segment of a JPEG or JPEG-LS codestream (T.81 B.2.2, T.87 C.2.2)."""
    at = 2
    while at + 4 <= len(head):
        if head[at] != 0xFF:
            break  # not a marker where one must be
        marker = head[at + 1]
        if marker == 0xFF:  # a fill byte before the marker
            at += 1
            continue
        if marker in _STANDALONE_MARKERS:
            at += 2
            continue
        if marker in (0x00, 0xD8, 0xD9, 0xDA):
            break  # a stuffed byte, SOI again, EOI or a scan before any frame header
        length = int.from_bytes(head[at + 2 : at + 4], "big")
        if marker in _SOF_MARKERS:
            if length < 8 or at + 10 > len(head):
                break
            precision, rows, columns, components = struct.unpack(">BHHB", head[at + 4 : at + 10])
            # rows 0: set by a DNL marker after the first scan, i.e. unknown before decoding.
            return CodestreamSize(rows, columns, components, precision, marker)
        if length < 2:
            break
        at += 2 + length
    raise UnreadableCodestream("no JPEG frame header")


def _siz_size(head: bytes, at: int) -> CodestreamSize:
    """The SIZ segment of a JPEG 2000 codestream starting at `at` (15444-1 A.5.1)."""
    if head[at : at + 4] != J2K_START or at + 42 > len(head):
        raise UnreadableCodestream("no JPEG 2000 SIZ segment")
    x_size, y_size, x_origin, y_origin = struct.unpack(">IIII", head[at + 8 : at + 24])
    components = int.from_bytes(head[at + 40 : at + 42], "big")
    precisions = head[at + 42 : at + 42 + 3 * components : 3]  # Ssiz of each component present
    bits = max(((ssiz & 0x7F) + 1 for ssiz in precisions), default=1)
    return CodestreamSize(max(y_size - y_origin, 0), max(x_size - x_origin, 0), components, bits)


def _jp2_size(head: bytes) -> CodestreamSize:
    """The SIZ of the codestream box (jp2c) of a JP2 file, which is what the decoder reads; an
    image header box (ihdr) declaring another size makes it unreadable (15444-1 I.4, I.5.3.1)."""
    declared: CodestreamSize | None = None
    at, end = 0, len(head)
    while at + 8 <= end:
        length, kind = struct.unpack(">I4s", head[at : at + 8])
        header = 8
        if length == 1:  # an 8-byte length follows
            if at + 16 > end:
                break
            length, header = int.from_bytes(head[at + 8 : at + 16], "big"), 16
        elif length == 0:  # the box runs to the end of the file
            length = end - at
        if length < header:
            break
        if kind == b"jp2h":
            inner, stop = at + header, min(at + length, end)
            while inner + 8 <= stop:
                inner_length, inner_kind = struct.unpack(">I4s", head[inner : inner + 8])
                if inner_kind == b"ihdr" and inner + 19 <= stop:
                    rows, columns, components, depth = struct.unpack(">IIHB", head[inner + 8 : inner + 19])
                    declared = CodestreamSize(rows, columns, components, (depth & 0x7F) + 1)
                    break
                if inner_length < 8:
                    break
                inner += inner_length
        elif kind == b"jp2c":
            size = _siz_size(head, at + header)
            if declared is not None and (declared.rows, declared.columns) != (size.rows, size.columns):
                raise UnreadableCodestream("a JP2 image header that disagrees with its codestream")
            return size
        at += length
    raise UnreadableCodestream("no JPEG 2000 codestream box")


def check_first_codestream(handle: IO[bytes], dataset: Dataset, spans: list[list[int]]) -> None:
    """Refuse a first frame whose codestream declares another size than Rows x Columns (its
    decoder would allocate that size, not the header's), reading at most CODESTREAM_HEAD_BYTES
    of its fragments. What cannot be told from them is stored; rendering refuses to decode it."""
    transfer_syntax = _uid(dataset.file_meta, "TransferSyntaxUID") or ""
    if transfer_syntax not in CODESTREAM_SYNTAXES or not spans:
        return
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except (AttributeError, TypeError, ValueError):
        return
    head = bytearray()
    for offset, length in spans:
        if len(head) >= CODESTREAM_HEAD_BYTES:
            break
        handle.seek(offset)
        head += handle.read(min(length, CODESTREAM_HEAD_BYTES - len(head)))
    try:
        size = codestream_size(head, transfer_syntax)
    except UnreadableCodestream:
        return
    if size is not None and (size.rows, size.columns) != (rows, columns):
        raise ImplausiblePixelData(
            f"The first frame's codestream declares {size.rows} x {size.columns} pixels; "
            f"the header declares {rows} x {columns}."
        )


# Overlay planes (PS3.3 C.9.2): groups 6000-601E, even only, each with its own Overlay Data (60xx,3000).
OVERLAY_GROUPS = range(0x6000, 0x6020, 2)


def locate_overlays(dataset: Dataset, file_size: int) -> list[dict[str, Any]]:
    """Where each overlay plane's bits lie in the file, with what drawing them needs: its size,
    origin and frames ([] when there is none a render can draw).

    Kept beside the pixel data locations (pixel_data["overlays"]) so a render draws them from
    the image row and a byte range of the stored file, never the header JSON nor the whole file.
    Only planes of 1-bit Overlay Data whose bytes are all in the file are kept; a plane embedded
    in the pixel data's unused high bits (retired since 2004) is not drawn.
    """
    _implicit, endian = read_encoding(dataset)
    planes: list[dict[str, Any]] = []
    for group in OVERLAY_GROUPS:
        if (group, 0x3000) not in dataset:
            continue
        raw = dataset.get_item((group, 0x3000), keep_deferred=True)  # its place, its value left unread
        value_tell, length = getattr(raw, "value_tell", None), getattr(raw, "length", None)
        try:
            rows, columns = int(dataset[group, 0x0010].value), int(dataset[group, 0x0011].value)
            frames = _overlay_number(dataset, (group, 0x0015), 1)
            first_frame = _overlay_number(dataset, (group, 0x0051), 1)
            bits_allocated = _overlay_number(dataset, (group, 0x0100), 1)
            origin = dataset.get((group, 0x0050))
            origin_row, origin_column = (int(value) for value in origin.value) if origin is not None else (1, 1)
        except (KeyError, TypeError, ValueError):
            continue  # no usable size or origin: nothing to draw
        if value_tell is None or length is None or length == UNDEFINED_LENGTH or value_tell + length > file_size:
            continue
        if bits_allocated != 1 or min(rows, columns, frames) < 1 or length * 8 < rows * columns * frames:
            continue
        vr = _vr_of(BaseTag((group << 16) | 0x3000), raw)
        planes.append(
            {
                "group": f"{group:04X}",
                "offset": value_tell,
                "length": length,
                "rows": rows,
                "columns": columns,
                "origin": [origin_row, origin_column],
                # Number of Frames in Overlay absent: the plane is drawn on every frame (C.9.3).
                "frames": frames if (group, 0x0015) in dataset else None,
                "first_frame": first_frame,
                # 16-bit words of a big endian OW value: their bytes swap back before unpacking.
                "swapped": endian == ">" and vr == "OW",
            }
        )
    return planes


def _overlay_number(dataset: Dataset, tag: tuple[int, int], default: int) -> int:
    element = dataset.get(tag)
    if element is None or element.value in (None, ""):
        return default
    return int(element.value)


def read_encoding(dataset: Dataset) -> tuple[bool, str]:
    """(implicit VR, struct byte order "<" or ">") the data set was actually read with.

    Not always what its file meta says: pydicom looks at the first element and reads the data
    set as it finds it (SC_rgb_jpeg.dcm's meta says JPEG Baseline, explicit VR, over an implicit
    VR data set), and dcmread's original_encoding still reports the meta's. Each element pydicom
    has not converted yet records the encoding it was read with; a converted one does not, so
    the first that does decides, else original_encoding (which it infers when the meta lacks it).
    """
    for _tag, raw in dataset.items():
        implicit = getattr(raw, "is_implicit_VR", None)
        little_endian = getattr(raw, "is_little_endian", None)
        if implicit is not None and little_endian is not None:
            return bool(implicit), "<" if little_endian else ">"
    implicit, little_endian = dataset.original_encoding
    return bool(implicit), "<" if little_endian or little_endian is None else ">"


def _is_image(dataset: Dataset) -> bool:
    """Whether the data set is an image, so it must end in pixel data.

    An image SOP class counts even without its image attributes: a file cut at an element
    boundary before Rows would otherwise pass as a header-only object and be stored.
    """
    if all(keyword in dataset for keyword in ("Rows", "Columns", "BitsAllocated")):
        return True
    sop_class = dataset.get("SOPClassUID") or dataset.file_meta.get("MediaStorageSOPClassUID")
    return bool(sop_class) and "Image Storage" in UID(str(sop_class)).name


def _ends_with_last_element(handle: IO[bytes], dataset: Dataset, file_size: int, *, endian: str) -> bool:
    """Whether the file's last byte is the last byte of its last top-level element.

    A defined length says where that element ends. An undefined-length one (a sequence, which
    pydicom may hand over already converted) ends with a Sequence Delimitation Item: pydicom
    read up to one without warning, so the file ends whole when its last 8 bytes are one.
    """
    last = None
    for _tag, raw in dataset.items():
        last = raw
    if last is None:
        return False
    value_tell = getattr(last, "value_tell", None)
    length = getattr(last, "length", None)
    if value_tell is not None and length is not None and length != UNDEFINED_LENGTH:
        return bool(value_tell + length == file_size)
    if file_size < 8:
        return False
    handle.seek(file_size - 8)
    return handle.read(8) == struct.pack(f"{endian}HHI", 0xFFFE, 0xE0DD, 0)


def _check_trailing_elements(handle: IO[bytes], position: int, file_size: int, *, endian: str, implicit: bool) -> None:
    """Elements after the pixel data (usually trailing padding) must also end inside the file."""
    while position < file_size:
        handle.seek(position)
        header = handle.read(8)
        if len(header) < 8:
            raise TruncatedFile()
        if implicit:
            length, value_offset = struct.unpack("<I", header[4:8])[0], position + 8
        elif header[4:6] in LONG_LENGTH_VRS:
            extra = handle.read(4)
            if len(extra) < 4:
                raise TruncatedFile()
            length, value_offset = struct.unpack(f"{endian}I", extra)[0], position + 12
        else:
            length, value_offset = struct.unpack(f"{endian}H", header[6:8])[0], position + 8
        if length == UNDEFINED_LENGTH:
            return  # a sequence after the pixel data: rare, and not worth walking
        if value_offset + length > file_size:
            raise TruncatedFile()
        position = value_offset + length


def _walk_items(
    handle: IO[bytes], offset: int, file_size: int, *, frames: int = 1
) -> tuple[list[tuple[int, int, int]], list[int], int]:
    """Walk the items of encapsulated pixel data (PS3.5 A.4): the basic offset table, then fragments.

    Returns ([(item_start, data_offset, length), ...], basic offsets, end offset); raises TruncatedFile
    if the sequence delimiter is not reached inside the file. The offset table is read only
    when it has one entry per frame (the only case _fragments_by_frame uses it): a table
    declaring a gigabyte would otherwise become a list of 250 million integers.
    """
    fragments: list[tuple[int, int, int]] = []
    basic_offsets: list[int] = []
    most_fragments = min(MAX_FRAGMENTS, FRAGMENT_ALLOWANCE + file_size // BYTES_PER_FRAGMENT)
    position = offset
    first = True
    while True:
        handle.seek(position)
        header = handle.read(8)
        if len(header) < 8:
            raise TruncatedFile()
        group, element, length = struct.unpack("<HHI", header)
        if (group, element) == (0xFFFE, 0xE0DD):
            return fragments, basic_offsets, position + 8
        if (group, element) != (0xFFFE, 0xE000) or length == UNDEFINED_LENGTH:
            raise InvalidDicom("The encapsulated pixel data is malformed.")
        data_offset = position + 8
        if data_offset + length > file_size:
            raise TruncatedFile()
        if first:
            if frames > 1 and length == 4 * frames:
                basic_offsets = list(struct.unpack(f"<{frames}I", handle.read(length)))
            first = False
        else:
            fragments.append((position, data_offset, length))
            if len(fragments) > most_fragments:
                raise InvalidDicom("The encapsulated pixel data has too many fragments.")
        position = data_offset + length


def _fragments_by_frame(
    handle: IO[bytes], fragments: list[tuple[int, int, int]], basic_offsets: list[int], frames: int
) -> list[list[list[int]]]:
    """Group fragments into frames: one frame; one fragment per frame; the offset table; or codestream starts."""
    spans = [[data_offset, length] for _start, data_offset, length in fragments]
    if not spans:
        return []
    if frames <= 1:
        return [spans]
    if len(spans) == frames:
        return [[span] for span in spans]
    first_item = fragments[0][0]
    if len(basic_offsets) == frames:
        starts = set(basic_offsets)
        grouped: list[list[list[int]]] = []
        for item_start, data_offset, length in fragments:
            if item_start - first_item in starts or not grouped:
                grouped.append([])
            grouped[-1].append([data_offset, length])
        if len(grouped) == frames:
            return grouped
    grouped = []
    for _start, data_offset, length in fragments:
        handle.seek(data_offset)
        if handle.read(2) in CODESTREAM_STARTS or not grouped:
            grouped.append([])
        grouped[-1].append([data_offset, length])
    return grouped if len(grouped) == frames else []


def _frame_count(dataset: Dataset) -> int:
    try:
        return max(int(dataset.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


# Photometric interpretations whose native pixel data is 4:2:2 subsampled (PS3.3 C.7.6.3.1.2,
# PS3.5 8.2): two horizontally adjacent pixels share one Cb and one Cr, stored Y Y Cb Cr, so
# a pixel takes 2 samples, not 3. YBR_PARTIAL_422 (retired) differs only in its value range.
SUBSAMPLED_422 = frozenset({"YBR_FULL_422", "YBR_PARTIAL_422"})


def _native_frame_length(dataset: Dataset) -> int | None:
    """Bytes per frame of native pixel data (None when frames are not byte-aligned)."""
    try:
        bits = int(dataset.BitsAllocated) * int(dataset.Rows) * int(dataset.Columns)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    photometric = str(dataset.get("PhotometricInterpretation", "") or "").strip()
    if samples == 3 and photometric in SUBSAMPLED_422:
        samples = 2  # what pydicom's get_expected_length and its native decoder expect too
    bits *= samples
    return bits // 8 if bits % 8 == 0 else None


def _bulk_elements(dataset: Dataset) -> dict[str, dict[str, Any]]:
    """Top-level bulk elements other than pixel data, with their place in the file."""
    bulk: dict[str, dict[str, Any]] = {}
    for tag, raw in dataset.items():
        vr = _vr_of(tag, raw)
        length = getattr(raw, "length", 0) or 0
        value_tell = getattr(raw, "value_tell", None)
        if vr in BULK_VRS and BULK_THRESHOLD < length != UNDEFINED_LENGTH and value_tell is not None:
            bulk[f"{int(tag):08X}"] = {"vr": vr, "offset": value_tell, "length": length}
    return bulk


def dicom_json(dataset: Dataset) -> dict[str, Any]:
    """The header as the DICOM JSON model (PS3.18 F), bulk data and NUL characters left out.

    Decoded from the raw elements by dicom_json_fast (pydicom's own conversion was ~45% of
    ingest time), which hands every element it cannot reproduce exactly back to pydicom;
    the output is the same as _dicom_json_pydicom's.
    """
    if not fast_path_supported():
        return _dicom_json_pydicom(dataset)
    return fast_dicom_json(
        dataset,
        bulk_threshold=BULK_THRESHOLD,
        is_top_level_bulk=_is_top_level_bulk,
        element_json=_element_json_pydicom,
    )


def _is_top_level_bulk(tag: BaseTag, raw: Any) -> bool:
    """Whether a top-level element is bulk data to skip without reading (see _dicom_json_pydicom).

    The length is tested first: most elements are short, and the VR of an implicit VR element
    costs a dictionary lookup.
    """
    length = getattr(raw, "length", 0) or 0
    return (length > BULK_THRESHOLD or length == UNDEFINED_LENGTH) and _vr_of(tag, raw) in BULK_VRS


def _element_json_pydicom(element: DataElement) -> dict[str, Any] | None:
    """pydicom's JSON of one converted element, cleaned as _cleaned does; None when it is bulk data."""
    as_json = element.to_json_dict(
        bulk_data_element_handler=lambda _element: _BULK_SENTINEL, bulk_data_threshold=BULK_THRESHOLD
    )
    if as_json.get("BulkDataURI") == _BULK_SENTINEL:
        return None
    return _cleaned(as_json)


def _dicom_json_pydicom(dataset: Dataset) -> dict[str, Any]:
    """dicom_json by pydicom alone: the reference the fast path must equal, and its fallback.

    Large binary top-level elements (pixel data, overlays, waveforms) are skipped without
    being read; nested ones are dropped after pydicom marks them as bulk. Each element is
    converted straight from the data set read (copying them into a second Dataset first
    cost ingest ~6 ms of ~15 per CT header).
    """
    as_json: dict[str, Any] = {}
    for tag, raw in dataset.items():
        vr = _vr_of(tag, raw)
        length = getattr(raw, "length", 0) or 0
        if vr in BULK_VRS and (length > BULK_THRESHOLD or length == UNDEFINED_LENGTH):
            continue
        as_json[f"{tag:08X}"] = dataset[tag].to_json_dict(
            bulk_data_element_handler=lambda _element: _BULK_SENTINEL, bulk_data_threshold=BULK_THRESHOLD
        )
    return _cleaned(as_json)


def _cleaned(node: Any) -> Any:
    """Drop nested bulk data (marked by pydicom) and NUL characters from every string, in one pass,
    and make NaN and infinities None (as dicom_json_fast.finite_or_none does).

    NUL: some devices pad text with it, and PostgreSQL can hold NUL neither in text nor in
    jsonb (SQLite would, hiding the bug)."""
    if isinstance(node, str):
        return node.replace("\x00", "") if "\x00" in node else node
    if isinstance(node, float) and not math.isfinite(node):
        return None
    if isinstance(node, dict):
        return {
            key: _cleaned(value)
            for key, value in node.items()
            if not (isinstance(value, dict) and value.get("BulkDataURI") == _BULK_SENTINEL)
        }
    if isinstance(node, list):
        return [_cleaned(item) for item in node]
    return node


def _without_nul(node: Any) -> Any:
    """Drop NUL characters from every string (see _cleaned)."""
    if isinstance(node, str):
        return node.replace("\x00", "")
    if isinstance(node, dict):
        return {key: _without_nul(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_without_nul(item) for item in node]
    return node


def _text(dataset: Dataset, keyword: str, limit: int = 255) -> str:
    value = dataset.get(keyword)
    if value is None:
        return ""
    return str(value).replace("\x00", "").strip()[:limit]


def _uid(dataset: Dataset, keyword: str) -> str | None:
    value = dataset.get(keyword)
    if value is None:
        return None
    text = str(value).strip().rstrip("\x00")
    return text or None


def _integer(dataset: Dataset, keyword: str) -> int | None:
    """An IS/US value as int; None if absent, malformed, or outside IS's 32-bit range
    (PostgreSQL's integer refuses it, so one odd header would fail the whole ingest)."""
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if _INT32_MIN <= number <= _INT32_MAX else None


def parse_dicom_date(value: object) -> dt.date | None:
    """DA (YYYYMMDD) to a date; None for empty or invalid values."""
    text = str(value or "").strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()  # noqa: DTZ007 (a date, no zone)
    except ValueError:
        return None


def parse_dicom_time(value: object) -> dt.time | None:
    """TM (HH[MM[SS[.F]]]) to a time; None for empty or invalid values."""
    text = str(value or "").strip().replace(":", "")
    if not text:
        return None
    whole, _, fraction = text.partition(".")
    try:
        hour = int(whole[0:2])
        minute = int(whole[2:4] or 0)
        second = min(int(whole[4:6] or 0), 59)
        micro = int((fraction + "000000")[:6]) if fraction else 0
        return dt.time(hour, minute, second, micro)
    except ValueError:
        return None


def _dicom_fields(dataset: Dataset) -> dict[str, Any]:
    meta = dataset.file_meta
    return {
        "study_uid": _uid(dataset, "StudyInstanceUID"),
        "series_uid": _uid(dataset, "SeriesInstanceUID"),
        "image_uid": _uid(dataset, "SOPInstanceUID") or _uid(meta, "MediaStorageSOPInstanceUID"),
        "sop_class_uid": _uid(dataset, "SOPClassUID") or _uid(meta, "MediaStorageSOPClassUID") or "",
        "transfer_syntax_uid": _uid(meta, "TransferSyntaxUID") or "",
        "study_date": parse_dicom_date(dataset.get("StudyDate")),
        "study_time": parse_dicom_time(dataset.get("StudyTime")),
        "study_description": _text(dataset, "StudyDescription"),
        "accession_number": _text(dataset, "AccessionNumber", 16),
        "referring_physician_name": _text(dataset, "ReferringPhysicianName"),
        "modality": _text(dataset, "Modality", 16),
        "series_number": _integer(dataset, "SeriesNumber"),
        "series_description": _text(dataset, "SeriesDescription"),
        "series_date": parse_dicom_date(dataset.get("SeriesDate")),
        "series_time": parse_dicom_time(dataset.get("SeriesTime")),
        "body_part_examined": _text(dataset, "BodyPartExamined", 64),
        "instance_number": _integer(dataset, "InstanceNumber"),
        "number_of_frames": max(_integer(dataset, "NumberOfFrames") or 1, 1),
        "rows": _integer(dataset, "Rows"),
        "columns": _integer(dataset, "Columns"),
    }


# --- JPEG -------------------------------------------------------------------------------


def parse_jpeg(path: Path) -> ParsedImage:
    """Check a JPEG is whole (decoding it at 1/8 scale) and read its EXIF as JSON."""
    try:
        with Image.open(path) as image:
            if image.format != "JPEG":
                raise InvalidJpeg()
            width, height = image.size
            mode = image.mode
            if mode not in ("L", "RGB"):
                # CMYK or YCCK: no DICOM photometric interpretation fits it unchanged.
                raise InvalidJpeg(f"JPEG colour mode {mode} is not supported; save the photo as RGB.")
            progressive = bool(image.info.get("progressive") or image.info.get("progression"))
            exif = exif_json(image)
            # draft() lets libjpeg decode at 1/8 scale: every byte of the entropy-coded data
            # is still read, so a truncated file fails, at a fraction of the memory.
            image.draft("L", (max(width // 8, 1), max(height // 8, 1)))
            image.load()
    except InvalidJpeg:
        raise
    except Image.DecompressionBombError as exc:
        raise InvalidJpeg("The JPEG declares more pixels than this server decodes.") from exc
    except OSError as exc:
        message = str(exc).lower()
        if "truncated" in message:
            raise TruncatedFile() from exc
        raise InvalidJpeg() from exc
    except Exception as exc:
        raise InvalidJpeg() from exc
    frame_marker = jpeg_frame_marker(path)
    metadata = {
        "width": width,
        "height": height,
        "mode": mode,
        "progressive": progressive,
        "sof": frame_marker,
        "exif": exif,
    }
    file_size = path.stat().st_size
    return ParsedImage(
        mime_type=JPEG_MIME_TYPE,
        sop_class_uid=SECONDARY_CAPTURE_SOP_CLASS,
        transfer_syntax_uid=photo_transfer_syntax(frame_marker),
        rows=height,
        columns=width,
        metadata=metadata,
        # The whole file is the single frame of the Secondary Capture instance it appears as.
        pixel_data={"vr": "OB", "offset": 0, "length": -1, "encapsulated": True, "frames": [[[0, file_size]]]},
    )


# How a photo is presented as a Secondary Capture instance, by its JPEG process (the frame
# header's marker, T.81 B.1.1.3): baseline (SOF0) and 8-bit extended sequential (SOF1) as the
# JPEG unchanged, in the transfer syntax of that process; any other process (progressive SOF2
# above all; lossless, hierarchical or arithmetic-coded, rarely) as its decoded pixels in
# Explicit VR Little Endian. Progressive JPEG has a transfer syntax, the retired "JPEG Full
# Progression, Non-Hierarchical (Process 10 & 12)" 1.2.840.10008.1.2.4.55 (dcmtk's img2dcm
# writes it), but neither pydicom nor OHIF's decoder (cornerstone's dicom-image-loader) reads
# it: so labelled, the photo would not show in OHIF; labelled baseline, it would be a lie.
JPEG_EXTENDED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.4.51"
DECODED_PHOTO_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1"
PHOTO_TRANSFER_SYNTAXES = {"SOF0": JPEG_BASELINE_TRANSFER_SYNTAX, "SOF1": JPEG_EXTENDED_TRANSFER_SYNTAX}


def jpeg_frame_marker(path: Path) -> str:
    """The JPEG's frame header marker, "SOF0" to "SOF15", read from its first
    CODESTREAM_HEAD_BYTES (tables and EXIF come before it); "" when it is not in them."""
    with path.open("rb") as handle:
        head = handle.read(CODESTREAM_HEAD_BYTES)
    try:
        marker = _jpeg_size(head).marker
    except UnreadableCodestream:
        return ""
    return f"SOF{marker - 0xC0}" if 0xC0 <= marker <= 0xCF else ""


def photo_transfer_syntax(frame_marker: str) -> str:
    """The transfer syntax a photo of this JPEG process is presented in (see above)."""
    return PHOTO_TRANSFER_SYNTAXES.get(frame_marker, DECODED_PHOTO_TRANSFER_SYNTAX)


def _json_value(value: Any) -> Any:
    if isinstance(value, TiffImagePlugin.IFDRational):
        return float(value) if value.denominator else None
    if isinstance(value, bytes):
        text = value.rstrip(b"\x00")
        try:
            return text.decode("ascii")
        except UnicodeDecodeError:
            return None  # opaque binary (e.g. maker notes): not useful as metadata
    if isinstance(value, tuple | list):
        return [_json_value(item) for item in value]
    if isinstance(value, str):
        return value.rstrip("\x00")
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN nor infinity (see _cleaned)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return str(value)


def exif_json(image: Image.Image) -> dict[str, Any]:
    """EXIF tags by name (base IFD and the Exif sub-IFD), JSON-safe."""
    exif = image.getexif()
    result: dict[str, Any] = {}
    sources = [exif.items()]
    with contextlib.suppress(KeyError, OSError, ValueError):
        sources.append(exif.get_ifd(ExifTags.IFD.Exif).items())
    for items in sources:
        for tag, value in items:
            if tag in (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo, 0x927C):  # sub-IFD pointers, MakerNote
                continue
            name = ExifTags.TAGS.get(tag, f"0x{tag:04X}")
            converted = _json_value(value)
            if converted is not None:
                result[name] = converted
    return dict(_without_nul(result))
