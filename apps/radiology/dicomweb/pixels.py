"""Frames and rendered images.

Frames are served from the byte ranges ingest recorded (storage range reads, no parsing):
as stored when the client accepts it (OHIF asks `transfer-syntax=*`), or decoded to native
little-endian pixels when the client wants `application/octet-stream` uncompressed.
Rendered and thumbnail images decode one frame with pydicom (pylibjpeg / openjpeg / RLE
plugins), apply rescale and the VOI window, invert MONOCHROME1 (or draw a PALETTE COLOR
frame's palette: render_palette), and fit the viewport.

Decoding reads only the frame's own bytes (the same byte ranges) and hands them to pydicom's
decoder with the Image Pixel attributes of the stored header (imagefiles/stored_header.py
keeps them with the image row), so a frame costs neither a parse of the file nor, on S3, a
download of all of it; what those ranges can't describe (bit-packed frames, big endian, frames
ingest could not delimit) is decoded from the whole file as before.

Nothing is decoded before its cost is known: check_decode_budget weighs the frames asked for
from the stored header (rows x columns x samples x bytes per sample x frames) against
RADIOLOGY_MAX_DECODED_BYTES, so a file declaring 65535 x 65535 pixels in a few kilobytes is a
422 in microseconds, not gigabytes of memory; a decode that failed is remembered (render_cache)
and not tried again. Renders are at most RADIOLOGY_MAX_RENDER_SIDE pixels a side.

The header is not the last word: a JPEG, JPEG-LS or JPEG 2000 decoder allocates what its
codestream declares, so each compressed frame's codestream is read from the frame's own bytes
(already in memory for its decoder) and weighed and compared with the header first
(check_codestream). A JPEG photo is decoded by libjpeg at the scale its render needs (1/2, 1/4,
1/8: Image.draft) and weighed at that scale. A decode that fails for the server's own reasons
(out of memory, a full disk, the store away) answers 503 and is not remembered.
"""

from __future__ import annotations

import array
import io
import math
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom.pixels
from django.conf import settings
from PIL import Image

from apps.radiology import storage
from apps.radiology.dicomweb import render_cache
from apps.radiology.errors import (
    CodestreamMismatch,
    FrameNotFound,
    ImageTooLargeToRender,
    NotAcceptable,
    RadiologyError,
    RenderingFailed,
    RenderingUnavailable,
    StoredObjectMissing,
    ViewportTooLarge,
)
from apps.radiology.imagefiles import stored_header
from apps.radiology.imagefiles.dicom import (
    CODESTREAM_HEAD_BYTES,
    CODESTREAM_SYNTAXES,
    UnreadableCodestream,
    codestream_size,
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
    bits = int(stored_header.pixel_value(image, "00280100", 8))
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


def decode_frame(image: RadiologyImage, number: int, viewport: tuple[int, int] | None = None) -> np.ndarray:
    """One frame decoded to a numpy array (colour as RGB), from its byte ranges or else the whole file.

    `viewport`: the render's (render_viewport); a JPEG photo is then decoded at the reduced scale
    that still covers it (DICOM frames are always decoded whole).
    """
    if not 1 <= number <= image.number_of_frames:
        raise FrameNotFound()
    check_decode_budget(image, viewport=viewport)
    remembered = render_cache.remembered_failure(image, number)
    if remembered is not None:
        raise remembered
    try:
        return _decode_frame(image, number, viewport)
    except (RenderingFailed, ImageTooLargeToRender) as failed:
        # The stored bytes never change: a frame that failed to decode (or whose codestream
        # declares too large or another size) fails again, so the next request (a viewer
        # retrying, every thumbnail of a study page) is answered from memory. A photo too large
        # for one viewport may fit a smaller one: not remembered.
        if image.is_dicom or isinstance(failed, RenderingFailed):
            render_cache.remember_failure(image, number, failed)
        raise


def _decode_frame(image: RadiologyImage, number: int, viewport: tuple[int, int] | None = None) -> np.ndarray:
    """Decode, sorting what goes wrong: the data (RenderingFailed, remembered), the server's own
    condition (RenderingUnavailable, 503, never remembered: out of memory, a full disk, an I/O
    error, all of which pass), or the store (StorageFailure, as the storage layer raises it)."""
    with _sorted_failures("Could not decode the pixel data"):
        return _decode_frame_of(image, number, viewport)


@contextmanager
def _sorted_failures(failed: str) -> Iterator[None]:
    """What goes wrong in a decoder, sorted: RadiologyError as raised; the stored file gone
    (StoredObjectMissing); the server's own condition (RenderingUnavailable); anything else is
    the data (RenderingFailed, "`failed`: <type>")."""
    try:
        yield
    except RadiologyError:
        raise
    except FileNotFoundError:  # the whole file read from disk is gone: lost data, not bad pixels
        raise StoredObjectMissing() from None
    except MemoryError:
        raise RenderingUnavailable("The server ran out of memory decoding this image; try again later.") from None
    except OSError as exc:
        # The system's errors carry an errno (ENOSPC, EIO, ...); Pillow's decoders raise OSError
        # without one for data they can't read ("image file is truncated"): that is bad pixels.
        if exc.errno is not None:
            raise RenderingUnavailable(
                f"The server could not read this image to decode it ({type(exc).__name__}); try again later."
            ) from exc
        raise RenderingFailed(f"{failed}: {type(exc).__name__}.") from exc
    except Exception as exc:  # decoders raise many types on data they can't handle
        raise RenderingFailed(f"{failed}: {type(exc).__name__}.") from exc


def _decode_frame_of(image: RadiologyImage, number: int, viewport: tuple[int, int] | None) -> np.ndarray:
    options = _decoding_options(image) if image.is_dicom else None
    source = _frame_source(image, number) if options is not None else None
    if options is not None and source is not None:
        native = _native_monochrome(image, source, options)
        if native is not None:
            return native
        if (image.pixel_data or {}).get("encapsulated"):
            check_codestream(image, _source_head(source))
        decoder = pydicom.pixels.get_decoder(image.transfer_syntax_uid)
        return decoder.as_array(source, index=0, validate=True, **options)[0]
    if not image.is_dicom:
        with storage.local_path(image.file_key) as path:
            return _decode_photo(image, path, viewport)
    if (image.pixel_data or {}).get("encapsulated"):
        # Frames ingest could not delimit: the first fragment is the one whose codestream can be
        # found without parsing the file (a later frame's is found by pydicom below).
        check_codestream(image, _first_fragment_head(image))
    with storage.local_path(image.file_key) as path:
        return pydicom.pixels.pixel_array(str(path), index=number - 1)


def _source_head(source: bytearray) -> bytes:
    """The first CODESTREAM_HEAD_BYTES of the frame's codestream in a buffer of _frame_source
    (an empty offset table, then each fragment behind its item header)."""
    head = bytearray()
    at = len(EMPTY_OFFSET_TABLE)
    while at + 8 <= len(source) and len(head) < CODESTREAM_HEAD_BYTES:
        (length,) = struct.unpack_from("<I", source, at + 4)
        head += source[at + 8 : at + 8 + min(length, CODESTREAM_HEAD_BYTES - len(head))]
        at += 8 + length
    return bytes(head)


def _first_fragment_head(image: RadiologyImage) -> bytes:
    """The first CODESTREAM_HEAD_BYTES of the first fragment: three small reads (the offset
    table's item header, the fragment's, its head), from where ingest found the pixel data."""
    if image.transfer_syntax_uid not in CODESTREAM_SYNTAXES:
        return b""
    at = int((image.pixel_data or {}).get("offset", 0))
    lengths = []
    for _item in ("offset table", "first fragment"):
        header = storage.read_object_range(image.file_key, at, 8)
        if len(header) < 8 or struct.unpack("<HH", header[:4]) != (0xFFFE, 0xE000):
            return b""  # not where ingest found it: pydicom reading the file decides
        lengths.append(struct.unpack("<I", header[4:])[0])
        at += 8
        if len(lengths) == 1:
            at += lengths[0]
    return storage.read_object_range(image.file_key, at, min(lengths[1], CODESTREAM_HEAD_BYTES))


def check_codestream(image: RadiologyImage, head: bytes) -> None:
    """Refuse, before its decoder allocates anything, a compressed frame whose codestream (its
    first bytes, `head`) declares more than the budget or another size than the header: the
    decoder allocates what the codestream says, which the header's budget did not weigh."""
    syntax = image.transfer_syntax_uid
    if syntax not in CODESTREAM_SYNTAXES:
        return
    try:
        size = codestream_size(head, syntax)
    except UnreadableCodestream as exc:
        raise RenderingFailed(f"The frame's codestream declares no usable image size: {exc}.") from None
    if size is None:
        return  # not the start of a codestream of this syntax: its decoder refuses it outright
    # pydicom's array has the header's bytes per sample (Bits Allocated), the codestream's size.
    bits = int(stored_header.pixel_value(image, "00280100", 8) or 8)
    decoded = max(size.decoded_bytes, size.rows * size.columns * max(size.components, 1) * max(-(-bits // 8), 1))
    budget = settings.RADIOLOGY_MAX_DECODED_BYTES
    if decoded > budget:
        raise ImageTooLargeToRender(_too_large_detail(decoded, 1, budget))
    rows = image.rows or stored_header.pixel_value(image, "00280010")
    columns = image.columns or stored_header.pixel_value(image, "00280011")
    if (size.rows, size.columns) != (int(rows or 0), int(columns or 0)):
        raise CodestreamMismatch(
            f"The frame's codestream declares {size.rows} x {size.columns} pixels; "
            f"the image header declares {rows} x {columns}."
        )


# What a photo is decoded to: Pillow's mode and its bytes per pixel.
_PHOTO_MODES = {"L": 1, "RGB": 3}


def _decode_photo(image: RadiologyImage, path: Any, viewport: tuple[int, int] | None) -> np.ndarray:
    """A JPEG photo decoded by Pillow, at the smallest of libjpeg's scales (1, 1/2, 1/4, 1/8)
    that still covers the viewport's fitted size (Image.draft: the DCT is scaled while decoding,
    so the full-size image is never held), weighed before decoding on that scale.

    A progressive JPEG costs more: libjpeg holds the whole image's DCT coefficients (2 bytes each,
    64 per 8 x 8 block of every component) until the last scan, at full size whatever the scale;
    that buffer (_progressive_allowance) is added to the weight. Pillow's own decompression-bomb
    guard (Image.MAX_IMAGE_PIXELS, left at its default) stays on: past twice that many pixels
    Image.open refuses, as ingest does (dicom.parse_jpeg).
    """
    try:
        photo_file = Image.open(path)
    except Image.DecompressionBombError:
        raise ImageTooLargeToRender("This photo has more pixels than this server decodes.") from None
    with photo_file as photo:
        mode = "L" if photo.mode == "L" else "RGB"
        full = photo.size
        if image.rows and image.columns and full != (image.columns, image.rows):
            raise CodestreamMismatch(
                f"The photo declares {full[1]} x {full[0]} pixels; "
                f"the image record says {image.rows} x {image.columns}."
            )
        target = _draft_target(full, viewport)
        if target is not None:
            photo.draft(mode, target)
        width, height = photo.size
        weight = width * height * _PHOTO_MODES[mode]
        if photo.info.get("progressive") or photo.info.get("progression"):
            weight += _progressive_allowance(photo, full)
        budget = settings.RADIOLOGY_MAX_DECODED_BYTES
        if weight > budget:
            raise ImageTooLargeToRender(_too_large_detail(weight, 1, budget))
        return np.asarray(photo if photo.mode == mode else photo.convert(mode))


def _draft_target(size: tuple[int, int], viewport: tuple[int, int] | None) -> tuple[int, int] | None:
    """The size fit() scales a picture of `size` to in `viewport` (None: left as it is)."""
    if viewport is None:
        return None
    side = settings.RADIOLOGY_MAX_RENDER_SIDE
    width, height = viewport[0] or side, viewport[1] or side
    scale = min(width / size[0], height / size[1])
    if scale >= 1:
        return None
    return max(round(size[0] * scale), 1), max(round(size[1] * scale), 1)


def _draft_scale(size: tuple[int, int], target: tuple[int, int] | None) -> int:
    """The reduction Image.draft picks for a JPEG of `size` asked for `target` (Pillow's rule:
    the largest of 8, 4, 2, 1 at most the smaller whole ratio of the sides)."""
    if target is None:
        return 1
    ratio = min(size[0] // target[0], size[1] // target[1])
    return next(scale for scale in (8, 4, 2, 1) if ratio >= scale)


def _progressive_allowance(photo: Image.Image, size: tuple[int, int]) -> int:
    """Bytes of the DCT coefficients libjpeg keeps for a progressive JPEG of `size` (full size:
    every component's blocks, padded to whole MCUs, 64 coefficients of 2 bytes each)."""
    layers = getattr(photo, "layer", None) or [("", 1, 1, 0)] * len(photo.getbands())
    most_h = max(layer[1] for layer in layers) or 1
    most_v = max(layer[2] for layer in layers) or 1
    mcus = -(-size[0] // (8 * most_h)) * -(-size[1] // (8 * most_v))
    return sum(mcus * layer[1] * layer[2] * 64 * 2 for layer in layers)


def decoded_frame_bytes(image: RadiologyImage, viewport: tuple[int, int] | None = None) -> int | None:
    """Bytes one decoded frame takes, from the stored header: rows x columns x samples x bytes
    per sample (what pydicom's pixel_array allocates: 1-bit data unpacked to a byte, 12-bit
    to two); None when the header gives no dimensions (then no decoder has any to use). A JPEG
    photo rendered for `viewport` is weighed at the scale it is decoded at (_decode_photo)."""
    if not image.is_dicom:  # a JPEG photo decodes to RGB (or grey) bytes
        if not (image.rows and image.columns):
            return None
        size = (image.columns, image.rows)
        scale = _draft_scale(size, _draft_target(size, viewport))
        return -(-size[0] // scale) * -(-size[1] // scale) * 3
    rows = image.rows or stored_header.pixel_value(image, "00280010")
    columns = image.columns or stored_header.pixel_value(image, "00280011")
    if not rows or not columns:
        return None
    samples = int(stored_header.pixel_value(image, "00280002", 1) or 1)
    bits = int(stored_header.pixel_value(image, "00280100", 8) or 8)
    frame = int(rows) * int(columns) * max(samples, 1) * max(-(-bits // 8), 1)
    if stored_header.pixel_value(image, "00280004") == PALETTE_COLOR:
        # A render looks the indices up in the palette: pydicom's RGB (16-bit entries at most),
        # then the 8-bit RGB drawn from it (render_palette).
        frame += int(rows) * int(columns) * 3 * (2 + 1)
    return frame


def _too_large_detail(decoded: int, frames: int, budget: int) -> str:
    return (
        f"Decoding {frames} frame(s) of this image takes {decoded} bytes; "
        f"this server decodes at most {budget} bytes per request."
    )


def check_decode_budget(image: RadiologyImage, frames: int = 1, *, viewport: tuple[int, int] | None = None) -> None:
    """422 image_too_large_to_render, before any byte is read, when decoding `frames` frames
    would take more than RADIOLOGY_MAX_DECODED_BYTES.

    The decoded frame is not the whole cost: a render adds a byte per pixel for the 8-bit
    display image (Pillow maps it, and the float32 window is applied a strip at a time, see
    to_display); the frame is read into one buffer that numpy uses as it is (_read_exactly);
    a compressed frame's decoder holds its input and two copies of its output (pydicom's
    array and the plugin's). Measured for a 16-bit frame just under the default 64 MiB:
    ~100 MiB above idle uncompressed, ~160 MiB as RLE (config/settings.py says more).

    The header's size is not the last word for a compressed frame: its codestream is weighed
    and compared with it before the decoder runs (check_codestream).
    """
    try:
        frame_bytes = decoded_frame_bytes(image, viewport)
    except (TypeError, ValueError):
        raise RenderingFailed("The image header's pixel description could not be read.") from None
    if frame_bytes is None:
        return
    budget = settings.RADIOLOGY_MAX_DECODED_BYTES
    if frame_bytes * frames > budget:
        raise ImageTooLargeToRender(_too_large_detail(frame_bytes * frames, frames, budget))


def _decoding_options(image: RadiologyImage) -> dict[str, Any] | None:
    """pydicom's decoding options for one frame, as pixel_array would take them from the file;
    None when the header lacks what a decoder needs (the whole file is read then)."""
    try:
        return _decoding_options_of(image)
    except (TypeError, ValueError):  # a malformed value: pydicom reading the file decides
        return None


def _decoding_options_of(image: RadiologyImage) -> dict[str, Any] | None:
    rows = image.rows or stored_header.pixel_value(image, "00280010")
    columns = image.columns or stored_header.pixel_value(image, "00280011")
    photometric = stored_header.pixel_value(image, "00280004")
    bits_allocated = stored_header.pixel_value(image, "00280100")
    if not (rows and columns and photometric and bits_allocated):
        return None
    samples = int(stored_header.pixel_value(image, "00280002", 1) or 1)
    options: dict[str, Any] = {
        "rows": int(rows),
        "columns": int(columns),
        "samples_per_pixel": samples,
        "photometric_interpretation": str(photometric),
        "bits_allocated": int(bits_allocated),
        "bits_stored": int(stored_header.pixel_value(image, "00280101", bits_allocated) or bits_allocated),
        "pixel_representation": int(stored_header.pixel_value(image, "00280103", 0) or 0),
        "number_of_frames": 1,
        "pixel_keyword": "PixelData",
    }
    if samples > 1:
        options["planar_configuration"] = int(stored_header.pixel_value(image, "00280006", 0) or 0)
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
    file: the end of their byte ranges. 404 (FrameNotFound) for a frame that does not exist or
    cannot be located, before any answer starts."""
    return max(offset + length for number in numbers for offset, length in frame_spans(image, number))


def require_stored(image: RadiologyImage, extent: int) -> None:
    """500 stored_object_missing, before any answer starts, unless the stored object holds at
    least `extent` bytes: one stat (filesystem) or HEAD (S3), instead of a 200 whose body
    breaks off where the bytes run out."""
    size = storage.object_size(image.file_key)
    if size is None:
        raise StoredObjectMissing()
    if size < extent:
        raise StoredObjectMissing(SHORT_OBJECT)


PALETTE_COLOR = "PALETTE COLOR"
# The most of a palette colour file's header read to find its palette: its three tables
# are at most 3 x 65536 16-bit entries (384 KiB), which leaves ample room for the rest.
PALETTE_HEADER_LIMIT = 4 * 1024 * 1024


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


def parse_overlays(raw: str | None) -> bool:
    """?overlays=true (the default) burns the overlay planes into a render; false leaves them out."""
    if raw is None or raw == "true":
        return True
    if raw == "false":
        return False
    raise RadiologyError("overlays must be true or false.")


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
    center, width = stored_header.pixel_value(image, "00281050"), stored_header.pixel_value(image, "00281051")
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
    slope = float(stored_header.pixel_value(image, "00281053", 1) or 1)
    intercept = float(stored_header.pixel_value(image, "00281052", 0) or 0)
    step = max(_STRIP_PIXELS // max(pixels[0].size, 1), 1)
    strips = range(0, pixels.shape[0], step)

    def rescale(stored: np.ndarray) -> np.ndarray:
        values = stored.astype(np.float32)
        if slope != 1:
            values *= slope
        if intercept:
            values += intercept
        return values

    chosen = window or _header_window(image)
    if chosen is None:
        # The rescale is monotonic, and so is float32 rounding: the extremes of the rescaled
        # frame are the rescaled extremes of the stored one (swapped for a negative slope), the
        # same values without rescaling the frame a second time.
        ends = rescale(np.array([pixels.min(), pixels.max()], dtype=pixels.dtype))
        low, high = float(ends.min()), float(ends.max())
        chosen = Window((low + high) / 2, max(high - low, 1.0))
    display = np.empty(pixels.shape, dtype=np.uint8)
    for start in strips:
        values = rescale(pixels[start : start + step])
        values -= chosen.center - 0.5
        if chosen.width <= 1:
            # PS3.3 C.11.2.1.2.1 with w = 1 is a threshold: x <= c - 0.5 is black, above it
            # white (the formula's w - 1 would divide by zero). A 1-bit segmentation's own
            # range, 0..1, is this window (c 0.5, w 1): 0 black, 1 white, nothing grey.
            display[start : start + step] = np.where(values > 0, 255, 0)
            continue
        values /= chosen.width - 1
        values += 0.5
        values *= 255.0
        display[start : start + step] = np.clip(values, 0, 255, out=values).astype(np.uint8)
    if stored_header.pixel_value(image, "00280004", "MONOCHROME2") == "MONOCHROME1":
        np.subtract(255, display, out=display)
    return Image.fromarray(display, "L")


def fit(
    picture: Image.Image, viewport: tuple[int, int] | None, full_size: tuple[int, int] | None = None
) -> Image.Image:
    """Scale to fit inside the viewport, keeping the aspect ratio (never enlarging past it).

    reducing_gap=3: a large reduction first averages whole pixel blocks, then resamples what is
    left with Lanczos (a 2048x2048 radiograph's 128x128 thumbnail in ~1.3 ms instead of ~11 ms);
    Pillow documents the result as indistinguishable from Lanczos alone at this gap.

    `full_size`: the image's own size when `picture` was decoded at a reduced scale (a photo,
    see _decode_photo), so the render has the size a full decode would give.
    """
    side = settings.RADIOLOGY_MAX_RENDER_SIDE
    full_width, full_height = full_size or picture.size
    if viewport is None:
        if max(full_width, full_height) <= side and picture.size == (full_width, full_height):
            return picture
        viewport = (side, side)
    # A side left free is bounded by the largest render side, so "1000," of a 1-pixel-wide
    # image is not 2048 x 1000 times taller.
    width, height = viewport[0] or side, viewport[1] or side
    scale = min(width / full_width, height / full_height)
    size = (max(round(full_width * scale), 1), max(round(full_height * scale), 1))
    if size == picture.size:
        return picture
    return picture.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def render(
    image: RadiologyImage,
    *,
    frame: int = 1,
    media_type: str = "image/jpeg",
    viewport: tuple[int, int] | None = None,
    window: Window | None = None,
    quality: int = 85,
    overlays: bool = True,
) -> bytes:
    """A frame as a displayable JPEG or PNG, its overlay planes burned in unless `overlays` is False.

    JPEGs use libjpeg's standard Huffman tables (no `optimize`): computing optimal ones is a
    second pass over the image, 3-4x the encoding time of a 512x512 frame, for files ~8% smaller.
    """
    decoded = decode_frame(image, frame, viewport)
    if image.is_dicom and stored_header.pixel_value(image, "00280004") == PALETTE_COLOR:
        decoded = render_palette(image, decoded)
    full_size = (image.columns, image.rows) if not image.is_dicom and image.rows and image.columns else None
    display = to_display(image, decoded, window)
    if overlays and has_overlays(image):
        display = burn_overlays(image, frame, display)
    picture = fit(display, viewport, full_size)
    buffer = io.BytesIO()
    if media_type == "image/png":
        picture.save(buffer, format="PNG", optimize=False)
    else:
        picture.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def render_palette(image: RadiologyImage, indices: np.ndarray) -> np.ndarray:
    """A PALETTE COLOR frame's indices looked up in its palette (PS3.3 C.7.6.3.1.5) by
    pydicom's apply_color_lut, as 8-bit RGB: 16-bit entries keep their high byte, as dcmtk draws them.

    Only a render draws the palette: decode_frame keeps the indices, which are the pixel data
    a frame request is sent (and a failed lookup is not remembered against the frame).
    """
    with _sorted_failures("Could not apply the colour palette"):  # a missing or malformed palette
        rgb = pydicom.pixels.apply_color_lut(indices, _palette_header(image))
    if rgb.dtype.itemsize > 1:
        rgb = (rgb >> (8 * (rgb.dtype.itemsize - 1))).astype(np.uint8)
    return rgb


def _palette_header(image: RadiologyImage) -> pydicom.Dataset:
    """The file's header up to its pixel data, where the palette is (descriptors, data, or
    segmented data, 0028,1101-1103 / 1201-1203 / 1221-1223): neither the stored pixel header
    nor, for tables above the bulk data threshold, the stored JSON holds them. One range read
    of the bytes before the pixel data, at most PALETTE_HEADER_LIMIT, parsed by pydicom."""
    offset = (image.pixel_data or {}).get("offset")
    syntax = image.transfer_syntax_uid
    if offset is None or (syntax not in NATIVE_SYNTAXES and syntax not in COMPRESSED_MEDIA):
        # No recorded place (or a deflated file, whose bytes are not its elements): pydicom
        # reads the file's header and stops at the pixel data.
        with storage.local_path(image.file_key) as path:
            return pydicom.dcmread(path, stop_before_pixels=True)
    if int(offset) > PALETTE_HEADER_LIMIT:
        raise ImageTooLargeToRender(
            f"The header of this palette colour image takes {int(offset)} bytes; "
            f"this server reads at most {PALETTE_HEADER_LIMIT} bytes of one to find its palette."
        )
    head = storage.read_object_range(image.file_key, 0, int(offset))
    return pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True, force=True)


# --- overlays (PS3.3 C.9) ----------------------------------------------------------------------
#
# Ingest records each plane of 1-bit Overlay Data (60xx,3000) with where its bits lie in the file
# (dicom.locate_overlays, pixel_data["overlays"]); a render reads, for the frame it draws, only the
# bits of the plane's rows that fall on the image, by one range read per plane, and burns them in
# white, as dcmtk's dcmj2pnm draws them by default (and OHIF over the image).

# A plane more than this many times as wide as its image is no overlay of it: not drawn, so a
# header declaring 65535 columns over a small image costs no large read.
OVERLAY_WIDTH_FACTOR = 4


def has_overlays(image: RadiologyImage) -> bool:
    """Whether the image has overlay planes a render can draw (from the row, no query)."""
    return bool(image.is_dicom and (image.pixel_data or {}).get("overlays"))


def overlay_mask(image: RadiologyImage, frame: int) -> np.ndarray | None:
    """Where the overlay planes shown on `frame` (1-based) cover the image: a rows x columns
    boolean array; None when none is shown on it."""
    rows, columns = int(image.rows or 0), int(image.columns or 0)
    if rows < 1 or columns < 1:
        return None
    mask: np.ndarray | None = None
    for plane in (image.pixel_data or {}).get("overlays") or []:
        bits = _plane_bits(image, plane, frame, rows, columns)
        if bits is None:
            continue
        mask = bits if mask is None else mask | bits
    return mask


def _plane_bits(image: RadiologyImage, plane: dict[str, Any], frame: int, rows: int, columns: int) -> np.ndarray | None:
    """One plane's bits on `frame`, placed at its origin and cut to the image (None: not on it)."""
    plane_rows, plane_columns = int(plane["rows"]), int(plane["columns"])
    if plane_columns > OVERLAY_WIDTH_FACTOR * columns or plane_rows > OVERLAY_WIDTH_FACTOR * rows:
        return None
    index = 0
    if plane.get("frames") is not None:  # a multi-frame overlay: frames first_frame .. first_frame + frames - 1
        index = frame - int(plane.get("first_frame") or 1)
        if not 0 <= index < int(plane["frames"]):
            return None
    top, left = (int(value) - 1 for value in plane["origin"])  # origin is 1-based (row, column)
    first_row, last_row = max(0, -top), min(plane_rows, rows - top)  # plane rows that land on the image
    first_column, last_column = max(0, -left), min(plane_columns, columns - left)
    if first_row >= last_row or first_column >= last_column:
        return None
    # The plane's bits run on from frame to frame, row by row, least significant bit first
    # (PS3.5 8.1.2), so a frame's rows need not start on a byte: read whole bytes (whole 16-bit
    # words when they are swapped) around the bits wanted, unpack, cut.
    start_bit = (index * plane_rows + first_row) * plane_columns
    end_bit = (index * plane_rows + last_row) * plane_columns
    word = 2 if plane.get("swapped") else 1
    start = start_bit // (8 * word) * word
    end = min(-(-end_bit // (8 * word)) * word, int(plane["length"]))
    raw = storage.read_object_range(image.file_key, int(plane["offset"]) + start, end - start)
    if plane.get("swapped"):
        raw = np.frombuffer(raw[: len(raw) // 2 * 2], dtype=">u2").astype("<u2").tobytes()
    unpacked = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
    skip = start_bit - start * 8
    wanted = (last_row - first_row) * plane_columns
    if unpacked.size < skip + wanted:
        return None  # the stored object is shorter than ingest recorded: draw nothing rather than fail
    cut = unpacked[skip : skip + wanted].reshape(last_row - first_row, plane_columns)[:, first_column:last_column]
    placed = np.zeros((rows, columns), dtype=bool)
    placed[top + first_row : top + last_row, left + first_column : left + last_column] = cut.astype(bool)
    return placed


def burn_overlays(image: RadiologyImage, frame: int, picture: Image.Image) -> Image.Image:
    """The display image with the frame's overlay planes burned in white (the brightest value)."""
    with _sorted_failures("Could not draw the overlays"):
        mask = overlay_mask(image, frame)
    if mask is None or mask.shape != (picture.height, picture.width):
        return picture
    drawn = np.array(picture)
    drawn[mask] = 255
    return Image.fromarray(drawn, picture.mode)


def rendered_media_type(accepted: list[MediaRange]) -> str:
    """image/jpeg (default) or image/png, per Accept; 406 for anything else."""
    for wanted in accepted:
        for offered in ("image/jpeg", "image/png"):
            if wanted.matches(offered):
                return offered
    raise NotAcceptable()
