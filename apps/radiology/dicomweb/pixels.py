"""Frames and rendered images.

Frames are served from the byte ranges ingest recorded (storage range reads, no parsing):
as stored when the client accepts it (OHIF asks `transfer-syntax=*`), or decoded to native
little-endian pixels when the client wants `application/octet-stream` uncompressed.
Rendered and thumbnail images decode one frame with pydicom (pylibjpeg / openjpeg / RLE
plugins), apply rescale and the VOI window, invert MONOCHROME1, and fit the viewport.

Decoding reads only the frame's own bytes (the same byte ranges) and hands them to pydicom's
decoder with the Image Pixel attributes picked from the stored header JSON, so a frame costs
neither a parse of the file nor, on S3, a download of all of it; what those ranges can't
describe (bit-packed frames, big endian, frames ingest could not delimit) is decoded from the
whole file as before.

Nothing is decoded before its cost is known: check_decode_budget weighs the frames asked for
from the stored header (rows x columns x samples x bytes per sample x frames) against
RADIOLOGY_MAX_DECODED_BYTES, so a file declaring 65535 x 65535 pixels in a few kilobytes is a
422 in microseconds, not gigabytes of memory; a decode that failed is remembered (render_cache)
and not tried again. Renders are at most RADIOLOGY_MAX_RENDER_SIDE pixels a side.
"""

from __future__ import annotations

import array
import io
import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom.pixels
from django.conf import settings
from django.db import connections, router
from PIL import Image

from apps.radiology import render_cache, storage
from apps.radiology.dicom import PIXEL_HEADER_TAGS
from apps.radiology.errors import (
    FrameNotFound,
    ImageTooLargeToRender,
    NotAcceptable,
    RadiologyError,
    RenderingFailed,
    StoredObjectMissing,
    ViewportTooLarge,
)
from apps.radiology.models import RadiologyImage

from .accept import MediaRange

EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
NATIVE_SYNTAXES = {"1.2.840.10008.1.2", EXPLICIT_LITTLE, "1.2.840.10008.1.2.2"}
BIG_ENDIAN = "1.2.840.10008.1.2.2"
# Media type of a frame in each compressed transfer syntax (PS3.18 Table 8.7.3-2).
COMPRESSED_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
OCTET_STREAM = "application/octet-stream"
# An item holding an empty Basic Offset Table (PS3.5 A.4), which opens encapsulated pixel data.
EMPTY_OFFSET_TABLE = struct.pack("<HHI", 0xFFFE, 0xE000, 0)


@dataclass(frozen=True)
class FramePlan:
    """How frames will be sent: as stored (`passthrough`) or decoded to native pixels."""

    passthrough: bool
    media_type: str
    transfer_syntax: str

    @property
    def part_content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


def stored_media(image: RadiologyImage) -> tuple[str, str] | None:
    """(media type, transfer syntax) of the frames as stored; None if they can't be cut out."""
    syntax = image.transfer_syntax_uid
    if syntax in NATIVE_SYNTAXES:
        return OCTET_STREAM, EXPLICIT_LITTLE  # native bytes leave as explicit little endian
    if syntax in COMPRESSED_MEDIA:
        return COMPRESSED_MEDIA[syntax], syntax
    return None


def plan_frames(image: RadiologyImage, accepted: list[MediaRange]) -> FramePlan:
    """Pick the first acceptable way to send this instance's frames (else 406)."""
    stored = stored_media(image)
    for wanted in accepted:
        if wanted.media_type in ("*/*", "multipart/*"):
            if stored is not None:
                return FramePlan(True, *stored)
            continue
        if wanted.media_type != "multipart/related":
            continue
        part, syntax = wanted.part_type, wanted.transfer_syntax
        if part in (None, "*/*") and stored is not None:
            return FramePlan(True, *stored)
        if part == OCTET_STREAM:
            if syntax == "*" and stored is not None:
                return FramePlan(True, *stored)
            if syntax in (None, EXPLICIT_LITTLE):
                if stored is not None and stored[0] == OCTET_STREAM:
                    return FramePlan(True, *stored)
                return FramePlan(False, OCTET_STREAM, EXPLICIT_LITTLE)
        if stored is not None and part == stored[0] and syntax in (None, "*", stored[1]):
            return FramePlan(True, *stored)
    raise NotAcceptable()


def frame_spans(image: RadiologyImage, number: int) -> list[tuple[int, int]]:
    """Byte ranges (offset, length) in the stored file holding frame `number` (1-based)."""
    location = image.pixel_data or {}
    if not location or not 1 <= number <= image.number_of_frames:
        raise FrameNotFound()
    if location.get("encapsulated"):
        frames = location.get("frames") or []
        if number > len(frames):
            raise FrameNotFound("The frames of this instance could not be located.")
        return [(int(offset), int(length)) for offset, length in frames[number - 1]]
    frame_length = location.get("frame_length")
    if not frame_length:
        raise FrameNotFound("The frames of this instance are not byte-aligned.")
    return [(int(location["offset"]) + (number - 1) * int(frame_length), int(frame_length))]


def pixel_header(image: RadiologyImage) -> dict[str, Any]:
    """The elements of PIXEL_HEADER_TAGS in the image's header (DICOM JSON), read once per instance.

    Ingest keeps them in pixel_data["header"], loaded with the image row. For a row without
    them: views load images with the header JSON deferred (~12 kB for a CT, decoded on every read);
    loading it all to read a dozen elements cost a first render ~0.6 ms, picking them in the
    database ~0.1 ms. Plain SQL because Django's JSON key lookups take digit-only keys such
    as "00280100" for array indexes (on SQLite at every level, on PostgreSQL at the top), and
    the ORM would add ~0.3 ms; other databases load the whole header.
    """
    memo: dict[str, Any] | None = image.__dict__.get("_pixel_header")
    if memo is not None:
        return memo
    kept = (image.pixel_data or {}).get("header")
    if kept is not None:  # ingest keeps them beside the frame locations (dicom.parse_dicom)
        header = kept
    elif "image_metadata" in image.__dict__ or image.pk is None:
        header: dict[str, Any] = image.image_metadata
    else:
        header = _select_pixel_header(image)
    image.__dict__["_pixel_header"] = header
    return header


def _select_pixel_header(image: RadiologyImage) -> dict[str, Any]:
    """The PIXEL_HEADER_TAGS elements picked from the stored header by the database.

    Walking the header once with *_each, not one `->` per tag: PostgreSQL would decompress
    the (TOASTed) header for each of them, twice the time.
    """
    connection = connections[image._state.db or router.db_for_read(RadiologyImage, instance=image)]
    if connection.vendor == "postgresql":
        each, aggregate = "jsonb_each", "jsonb_object_agg(key, value)::text"
    elif connection.vendor == "sqlite":
        each, aggregate = "json_each", "json_group_object(key, json(value))"
    else:
        return image.image_metadata
    meta = RadiologyImage._meta
    quote = connection.ops.quote_name
    table, column = quote(meta.db_table), quote(meta.get_field("image_metadata").column)
    tags = ", ".join(f"'{tag}'" for tag in PIXEL_HEADER_TAGS)
    sql = (
        f"SELECT {aggregate} FROM {table}, {each}({table}.{column})"  # noqa: S608 (constants only)
        f" WHERE {table}.{quote(meta.pk.column)} = %s AND key IN ({tags})"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [image.pk])
        row = cursor.fetchone()
    value = row[0] if row else None  # NULL: none of the tags (or no such row)
    elements = json.loads(value) if isinstance(value, str) else value or {}
    return {tag: element for tag, element in elements.items() if element is not None}


def _metadata_value(image: RadiologyImage, tag: str, default: Any = None) -> Any:
    values = (pixel_header(image).get(tag) or {}).get("Value") or []
    return values[0] if values else default


def frame_chunks(image: RadiologyImage, number: int, plan: FramePlan) -> Iterator[bytes]:
    """The bytes of one frame in the planned form."""
    if not plan.passthrough:
        yield from decoded_chunks(decode_frame(image, number))
        return
    spans = frame_spans(image, number)
    word = _big_endian_word(image)
    if word > 1:
        yield b"".join(_little_endian_range(image, offset, length, word) for offset, length in spans)
        return
    for offset, length in spans:
        yield from storage.iter_object_range(image.file_key, offset, length)


def decoded_chunks(frame: np.ndarray) -> Iterator[memoryview]:
    """A decoded frame's bytes in 1 MiB pieces of the array itself: the server copies each
    piece as it sends it, never a second copy of the whole frame (tobytes() would be one)."""
    raw = memoryview(np.ascontiguousarray(frame)).cast("B")
    for start in range(0, len(raw), _SEND_CHUNK):
        yield raw[start : start + _SEND_CHUNK]


_SEND_CHUNK = 1024 * 1024


def _big_endian_word(image: RadiologyImage) -> int:
    """Bytes per swapped word of native big-endian pixel data (1: nothing to swap).

    16- and 32-bit samples swap per sample; 8-bit samples in an OW value are swapped per
    16-bit word too (PS3.5 7.3: OW is a stream of 16-bit words), only OB keeps its byte order.
    """
    if image.transfer_syntax_uid != BIG_ENDIAN:
        return 1
    bits = int(_metadata_value(image, "00280100", 8))
    if bits in (16, 32):
        return bits // 8
    return 2 if (image.pixel_data or {}).get("vr") == "OW" else 1


def _little_endian_range(image: RadiologyImage, offset: int, length: int, word: int) -> bytes:
    """`length` bytes from `offset` as little endian: whole words are read and swapped, then cut
    (a frame of 8-bit samples in OW need not start or end on a word boundary)."""
    base = int((image.pixel_data or {}).get("offset", offset))
    start = base + (offset - base) // word * word
    end = base + -(-(offset + length - base) // word) * word
    raw = storage.read_object_range(image.file_key, start, end - start)
    swapped = array.array({2: "H", 4: "I"}[word])
    swapped.frombytes(raw[: len(raw) // word * word])
    swapped.byteswap()
    return swapped.tobytes()[offset - start : offset - start + length]


def decode_frame(image: RadiologyImage, number: int) -> np.ndarray:
    """One frame decoded to a numpy array (colour as RGB), from its byte ranges or else the whole file."""
    if not 1 <= number <= image.number_of_frames:
        raise FrameNotFound()
    check_decode_budget(image)
    remembered = render_cache.remembered_failure(image, number)
    if remembered is not None:
        raise remembered
    try:
        return _decode_frame(image, number)
    except RenderingFailed as failed:
        # The stored bytes never change: a frame that failed to decode fails again, so the next
        # request (a viewer retrying, every thumbnail of a study page) is answered from memory.
        render_cache.remember_failure(image, number, failed)
        raise


def _decode_frame(image: RadiologyImage, number: int) -> np.ndarray:
    options = _decoding_options(image) if image.is_dicom else None
    try:
        source = _frame_source(image, number) if options is not None else None
        if options is not None and source is not None:
            native = _native_monochrome(image, source, options)
            if native is not None:
                return native
            decoder = pydicom.pixels.get_decoder(image.transfer_syntax_uid)
            return decoder.as_array(source, index=0, validate=True, **options)[0]
        with storage.local_path(image.file_key) as path:
            if not image.is_dicom:
                with Image.open(path) as photo:
                    return np.asarray(photo.convert("RGB" if photo.mode != "L" else "L"))
            return pydicom.pixels.pixel_array(str(path), index=number - 1)
    except RadiologyError:
        raise
    except FileNotFoundError:  # the whole file read from disk is gone: lost data, not bad pixels
        raise StoredObjectMissing() from None
    except Exception as exc:  # decoders raise many types on data they can't handle
        raise RenderingFailed(f"Could not decode the pixel data: {type(exc).__name__}.") from exc


def decoded_frame_bytes(image: RadiologyImage) -> int | None:
    """Bytes one decoded frame takes, from the stored header: rows x columns x samples x bytes
    per sample (what pydicom's pixel_array allocates: 1-bit data unpacked to a byte, 12-bit
    to two); None when the header gives no dimensions (then no decoder has any to use)."""
    if not image.is_dicom:  # a JPEG photo decodes to RGB (or grey) bytes
        return image.rows * image.columns * 3 if image.rows and image.columns else None
    rows = image.rows or _metadata_value(image, "00280010")
    columns = image.columns or _metadata_value(image, "00280011")
    if not rows or not columns:
        return None
    samples = int(_metadata_value(image, "00280002", 1) or 1)
    bits = int(_metadata_value(image, "00280100", 8) or 8)
    return int(rows) * int(columns) * max(samples, 1) * max(-(-bits // 8), 1)


def check_decode_budget(image: RadiologyImage, frames: int = 1) -> None:
    """422 image_too_large_to_render, before any byte is read, when decoding `frames` frames
    would take more than RADIOLOGY_MAX_DECODED_BYTES.

    The decoded frame is not the whole cost: a render adds a byte per pixel for the 8-bit
    display image (Pillow maps it, and the float32 window is applied a strip at a time, see
    to_display); the frame is read into one buffer that numpy uses as it is (_read_exactly);
    a compressed frame's decoder holds its input and two copies of its output (pydicom's
    array and the plugin's). Measured for a 16-bit frame just under the default 64 MiB:
    ~100 MiB above idle uncompressed, ~160 MiB as RLE (config/settings.py says more).
    """
    try:
        frame_bytes = decoded_frame_bytes(image)
    except (TypeError, ValueError):
        raise RenderingFailed("The image header's pixel description could not be read.") from None
    if frame_bytes is None:
        return
    budget = settings.RADIOLOGY_MAX_DECODED_BYTES
    if frame_bytes * frames > budget:
        raise ImageTooLargeToRender(
            f"Decoding {frames} frame(s) of this image takes {frame_bytes * frames} bytes; "
            f"this server decodes at most {budget} bytes per request."
        )


def _decoding_options(image: RadiologyImage) -> dict[str, Any] | None:
    """pydicom's decoding options for one frame, as pixel_array would take them from the file;
    None when the header lacks what a decoder needs (the whole file is read then)."""
    try:
        return _decoding_options_of(image)
    except (TypeError, ValueError):  # a malformed value: pydicom reading the file decides
        return None


def _decoding_options_of(image: RadiologyImage) -> dict[str, Any] | None:
    rows = image.rows or _metadata_value(image, "00280010")
    columns = image.columns or _metadata_value(image, "00280011")
    photometric = _metadata_value(image, "00280004")
    bits_allocated = _metadata_value(image, "00280100")
    if not (rows and columns and photometric and bits_allocated):
        return None
    samples = int(_metadata_value(image, "00280002", 1) or 1)
    options: dict[str, Any] = {
        "rows": int(rows),
        "columns": int(columns),
        "samples_per_pixel": samples,
        "photometric_interpretation": str(photometric),
        "bits_allocated": int(bits_allocated),
        "bits_stored": int(_metadata_value(image, "00280101", bits_allocated) or bits_allocated),
        "pixel_representation": int(_metadata_value(image, "00280103", 0) or 0),
        "number_of_frames": 1,
        "pixel_keyword": "PixelData",
    }
    if samples > 1:
        options["planar_configuration"] = int(_metadata_value(image, "00280006", 0) or 0)
    return options


def _native_monochrome(image: RadiologyImage, source: bytearray, options: dict[str, Any]) -> np.ndarray | None:
    """A native little-endian greyscale frame of 8, 16 or 32-bit samples straight into numpy:
    the array pydicom's decoder gives (same dtype, unused high bits masked or sign-extended as
    its correct_unused_bits does), without its ~50 us of set-up per call. None for anything else."""
    bits, stored = options["bits_allocated"], options["bits_stored"]
    rows, columns = options["rows"], options["columns"]
    if (
        image.transfer_syntax_uid not in NATIVE_SYNTAXES - {BIG_ENDIAN}
        or options["samples_per_pixel"] != 1
        or options["photometric_interpretation"] not in ("MONOCHROME1", "MONOCHROME2")
        or bits not in (8, 16, 32)
        or not 1 <= stored <= bits
        or len(source) < rows * columns * bits // 8
    ):
        return None
    dtype = np.dtype(f"<{'i' if options['pixel_representation'] else 'u'}{bits // 8}")
    # A view of the buffer read for it (ours alone, writable): no second copy of the frame.
    pixels = np.frombuffer(source, dtype=dtype, count=rows * columns).reshape(rows, columns)
    if stored < bits:
        np.left_shift(pixels, bits - stored, out=pixels)
        np.right_shift(pixels, bits - stored, out=pixels)
    return pixels


def _frame_source(image: RadiologyImage, number: int) -> bytearray | None:
    """The frame as a decoder's buffer: its native bytes, or its fragments as encapsulated pixel
    data of one frame; None when the byte ranges can't give it (bit-packed frames, big endian
    8-bit data in OW words, fragments ingest could not group into frames)."""
    if image.transfer_syntax_uid == BIG_ENDIAN:
        return None
    try:
        spans = frame_spans(image, number)
    except FrameNotFound:
        return None
    if not (image.pixel_data or {}).get("encapsulated"):
        offset, length = spans[0]
        return _read_exactly(image, offset, length)
    # One read from the first fragment to the end of the last: a frame's fragments are
    # consecutive items, and on S3 each read is a request. Between them the file holds their
    # item headers, the very bytes encapsulated pixel data of this one frame needs: the read
    # lands straight after an empty offset table and the first item's header, in one buffer.
    start = min(offset for offset, _length in spans)
    end = max(offset + length for offset, length in spans)
    first = struct.pack("<HHI", 0xFFFE, 0xE000, spans[0][1])
    source = _read_exactly(image, start, end - start, head=EMPTY_OFFSET_TABLE + first)
    at = len(EMPTY_OFFSET_TABLE) + len(first) - start
    if spans[0][0] == start and all(
        source[at + offset - 8 : at + offset] == struct.pack("<HHI", 0xFFFE, 0xE000, length) for offset, length in spans
    ):
        return source
    parts = [EMPTY_OFFSET_TABLE]  # anything else between the fragments: cut them out one by one
    for offset, length in spans:
        parts += (struct.pack("<HHI", 0xFFFE, 0xE000, length), source[at + offset : at + offset + length])
    return bytearray(b"".join(parts))


def _read_exactly(image: RadiologyImage, offset: int, length: int, *, head: bytes = b"") -> bytearray:
    """`head`, then `length` bytes of the stored file from `offset`, read into one buffer (a
    joined read would hold the frame twice). A stored object cut short is lost data (500),
    not pixel data a decoder cannot handle (which would be remembered as a failed render)."""
    buffer = bytearray(len(head) + length)
    buffer[: len(head)] = head
    filled = len(head)
    try:
        for chunk in storage.iter_object_range(image.file_key, offset, length):
            take = min(len(chunk), len(buffer) - filled)
            buffer[filled : filled + take] = chunk[:take]
            filled += take
    except StoredObjectMissing:
        raise StoredObjectMissing() from None  # the same answer as the frame views give
    if filled < len(buffer):
        raise StoredObjectMissing(SHORT_OBJECT)
    return buffer


SHORT_OBJECT = "The stored file of this image is shorter than its recorded pixel data."


def frames_extent(image: RadiologyImage, numbers: list[int]) -> int:
    """The end (exclusive) of the last byte a response with these frames reads from the stored
    file: the end of their byte ranges, or the whole file when they are decoded from it."""
    try:
        return max(offset + length for number in numbers for offset, length in frame_spans(image, number))
    except FrameNotFound:
        return image.file_size


def require_stored(image: RadiologyImage, extent: int) -> None:
    """500 stored_object_missing, before any answer starts, unless the stored object holds at
    least `extent` bytes: one stat (filesystem) or HEAD (S3), instead of a 200 whose body
    breaks off where the bytes run out."""
    size = storage.object_size(image.file_key)
    if size is None:
        raise StoredObjectMissing()
    if size < extent:
        raise StoredObjectMissing(SHORT_OBJECT)


@dataclass(frozen=True)
class Window:
    center: float
    width: float


def parse_window(raw: str | None) -> Window | None:
    """?window=center,width[,function] (only the linear function)."""
    if not raw:
        return None
    parts = raw.split(",")
    try:
        center, width = float(parts[0]), float(parts[1])
    except (IndexError, ValueError):
        raise RadiologyError("window must be center,width[,linear].") from None
    # float() takes "nan", "inf" and "1e999"; past float32's range the display would be NaN or
    # all black, and NaN slips through every comparison below.
    if not all(math.isfinite(value) and abs(value) <= _FLOAT32_MAX for value in (center, width)):
        raise RadiologyError("window center and width must be finite numbers.")
    if width < 1:
        raise RadiologyError("window width must be at least 1.")
    return Window(center, width)


_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Pixels windowed at a time by to_display (4 MiB of float32).
_STRIP_PIXELS = 1 << 20


def parse_viewport(raw: str | None, default: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """?viewport=width,height (either may be empty: keep the aspect ratio), each side at most
    RADIOLOGY_MAX_RENDER_SIDE: a 128 x 128 CT asked at 8192 x 8192 is 4,000 times the pixels
    to scale and encode, for nothing a screen shows."""
    if not raw:
        return default
    parts = [*raw.split(","), ""][:2]
    try:
        width, height = (int(part) if part else 0 for part in parts[:2])
    except ValueError:
        raise RadiologyError("viewport must be width,height in pixels.") from None
    side = settings.RADIOLOGY_MAX_RENDER_SIDE
    if width < 0 or height < 0 or (width == 0 and height == 0):
        raise RadiologyError(f"viewport must be width,height between 1 and {side}.")
    if width > side or height > side:
        raise ViewportTooLarge(f"viewport must be width,height between 1 and {side}.")
    return width, height


def render_viewport(image: RadiologyImage, viewport: tuple[int, int] | None) -> tuple[int, int] | None:
    """The viewport a render fits: the one asked for, or for a full-size render of an image
    larger than RADIOLOGY_MAX_RENDER_SIDE, that side square (renders are never larger)."""
    if viewport is not None:
        return viewport
    side = settings.RADIOLOGY_MAX_RENDER_SIDE
    if max(image.rows or 0, image.columns or 0) > side:
        return side, side
    return None


def _header_window(image: RadiologyImage) -> Window | None:
    center, width = _metadata_value(image, "00281050"), _metadata_value(image, "00281051")
    try:
        if center is not None and width is not None and float(width) >= 1:
            return Window(float(center), float(width))
    except (TypeError, ValueError):
        return None
    return None


def to_display(image: RadiologyImage, pixels: np.ndarray, window: Window | None) -> Image.Image:
    """Modality rescale, VOI window (PS3.3 C.11.2.1.2, linear), MONOCHROME1 inversion -> 8-bit image."""
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        if pixels.dtype != np.uint8:
            peak = float(pixels.max()) or 1.0
            pixels = (pixels.astype(np.float32) * (255.0 / peak)).astype(np.uint8)
        return Image.fromarray(pixels[..., :3], "RGB")
    if not image.is_dicom:
        return Image.fromarray(pixels.astype(np.uint8), "L")
    # A float32 copy of a strip of rows, then every step in place: the same operations in the
    # same order as ((v * slope + intercept - (c - 0.5)) / (w - 1) + 0.5) * 255, so the same
    # bytes, without a temporary array per step. (A lookup table indexed by the stored values
    # was tried: numpy's fancy indexing costs more than these passes up to at least 512x512.)
    # Strips of about a million pixels: a 512 x 512 frame is one strip, as before; a 4096 x 5120
    # mammogram costs 4 MiB of float32 at a time instead of 80 MiB (the decoded-size budget
    # counts on it, see check_decode_budget).
    slope = float(_metadata_value(image, "00281053", 1) or 1)
    intercept = float(_metadata_value(image, "00281052", 0) or 0)
    step = max(_STRIP_PIXELS // max(pixels[0].size, 1), 1)
    strips = range(0, pixels.shape[0], step)

    def rescaled(start: int) -> np.ndarray:
        values = pixels[start : start + step].astype(np.float32)
        if slope != 1:
            values *= slope
        if intercept:
            values += intercept
        return values

    chosen = window or _header_window(image)
    if chosen is None:
        extremes = [(float(values.min()), float(values.max())) for values in map(rescaled, strips)]
        low, high = min(low for low, _high in extremes), max(high for _low, high in extremes)
        chosen = Window((low + high) / 2, max(high - low, 1.0))
    display = np.empty(pixels.shape, dtype=np.uint8)
    for start in strips:
        values = rescaled(start)
        values -= chosen.center - 0.5
        values /= chosen.width - 1 if chosen.width > 1 else 1
        values += 0.5
        values *= 255.0
        display[start : start + step] = np.clip(values, 0, 255, out=values).astype(np.uint8)
    if _metadata_value(image, "00280004", "MONOCHROME2") == "MONOCHROME1":
        np.subtract(255, display, out=display)
    return Image.fromarray(display, "L")


def fit(picture: Image.Image, viewport: tuple[int, int] | None) -> Image.Image:
    """Scale to fit inside the viewport, keeping the aspect ratio (never enlarging past it).

    reducing_gap=3: a large reduction first averages whole pixel blocks, then resamples what is
    left with Lanczos (a 2048x2048 radiograph's 128x128 thumbnail in ~1.3 ms instead of ~11 ms);
    Pillow documents the result as indistinguishable from Lanczos alone at this gap.
    """
    side = settings.RADIOLOGY_MAX_RENDER_SIDE
    if viewport is None:
        if max(picture.size) <= side:
            return picture
        viewport = (side, side)
    # A side left free is bounded by the largest render side, so "1000," of a 1-pixel-wide
    # image is not 2048 x 1000 times taller.
    width, height = viewport[0] or side, viewport[1] or side
    scale = min(width / picture.width, height / picture.height)
    size = (max(round(picture.width * scale), 1), max(round(picture.height * scale), 1))
    return picture.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def render(
    image: RadiologyImage,
    *,
    frame: int = 1,
    media_type: str = "image/jpeg",
    viewport: tuple[int, int] | None = None,
    window: Window | None = None,
    quality: int = 85,
) -> bytes:
    """A frame as a displayable JPEG or PNG.

    JPEGs use libjpeg's standard Huffman tables (no `optimize`): computing optimal ones is a
    second pass over the image, 3-4x the encoding time of a 512x512 frame, for files ~8% smaller.
    """
    picture = fit(to_display(image, decode_frame(image, frame), window), viewport)
    buffer = io.BytesIO()
    if media_type == "image/png":
        picture.save(buffer, format="PNG", optimize=False)
    else:
        picture.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def rendered_media_type(accepted: list[MediaRange]) -> str:
    """image/jpeg (default) or image/png, per Accept; 406 for anything else."""
    for wanted in accepted:
        for offered in ("image/jpeg", "image/png"):
            if wanted.matches(offered):
                return offered
    raise NotAcceptable()
