"""Frames and rendered images.

Frames are served from the byte ranges ingest recorded (storage range reads, no parsing):
as stored when the client accepts it (OHIF asks `transfer-syntax=*`), or decoded to native
little-endian pixels when the client wants `application/octet-stream` uncompressed.
Rendered and thumbnail images decode one frame with pydicom (pylibjpeg / openjpeg / RLE
plugins), apply rescale and the VOI window, invert MONOCHROME1, and fit the viewport.
"""

from __future__ import annotations

import array
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom.pixels
from PIL import Image

from apps.radiology import storage
from apps.radiology.errors import FrameNotFound, NotAcceptable, RadiologyError, RenderingFailed
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


def _metadata_value(image: RadiologyImage, tag: str, default: Any = None) -> Any:
    values = (image.image_metadata.get(tag) or {}).get("Value") or []
    return values[0] if values else default


def frame_chunks(image: RadiologyImage, number: int, plan: FramePlan) -> Iterator[bytes]:
    """The bytes of one frame in the planned form."""
    if not plan.passthrough:
        yield decode_frame(image, number).tobytes()
        return
    spans = frame_spans(image, number)
    word = _big_endian_word(image)
    if word > 1:
        yield b"".join(_little_endian_range(image, offset, length, word) for offset, length in spans)
        return
    for offset, length in spans:
        yield from storage.iter_object_range(image.file_key, offset, length)


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
    """One frame decoded to a numpy array (colour as RGB), from a local copy of the file."""
    if not 1 <= number <= image.number_of_frames:
        raise FrameNotFound()
    try:
        with storage.local_path(image.file_key) as path:
            if not image.is_dicom:
                with Image.open(path) as photo:
                    return np.asarray(photo.convert("RGB" if photo.mode != "L" else "L"))
            return pydicom.pixels.pixel_array(str(path), index=number - 1)
    except RadiologyError:
        raise
    except Exception as exc:  # decoders raise many types on data they can't handle
        raise RenderingFailed(f"Could not decode the pixel data: {type(exc).__name__}.") from exc


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
    if width < 1:
        raise RadiologyError("window width must be at least 1.")
    return Window(center, width)


def parse_viewport(raw: str | None, default: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """?viewport=width,height (either may be empty: keep the aspect ratio)."""
    if not raw:
        return default
    parts = [*raw.split(","), ""][:2]
    try:
        width, height = (int(part) if part else 0 for part in parts[:2])
    except ValueError:
        raise RadiologyError("viewport must be width,height in pixels.") from None
    if width < 0 or height < 0 or width > 8192 or height > 8192 or (width == 0 and height == 0):
        raise RadiologyError("viewport must be width,height between 1 and 8192.")
    return width, height


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
    values = pixels.astype(np.float32)
    slope = float(_metadata_value(image, "00281053", 1) or 1)
    intercept = float(_metadata_value(image, "00281052", 0) or 0)
    values = values * slope + intercept
    chosen = window or _header_window(image)
    if chosen is None:
        low, high = float(values.min()), float(values.max())
        chosen = Window((low + high) / 2, max(high - low, 1.0))
    scaled = ((values - (chosen.center - 0.5)) / (chosen.width - 1 if chosen.width > 1 else 1) + 0.5) * 255.0
    display = np.clip(scaled, 0, 255).astype(np.uint8)
    if _metadata_value(image, "00280004", "MONOCHROME2") == "MONOCHROME1":
        display = 255 - display
    return Image.fromarray(display, "L")


def fit(picture: Image.Image, viewport: tuple[int, int] | None) -> Image.Image:
    """Scale to fit inside the viewport, keeping the aspect ratio (never enlarging past it)."""
    if viewport is None:
        return picture
    width, height = viewport
    scale = min(width / picture.width if width else float("inf"), height / picture.height if height else float("inf"))
    size = (max(round(picture.width * scale), 1), max(round(picture.height * scale), 1))
    return picture.resize(size, Image.Resampling.LANCZOS)


def render(
    image: RadiologyImage,
    *,
    frame: int = 1,
    media_type: str = "image/jpeg",
    viewport: tuple[int, int] | None = None,
    window: Window | None = None,
    quality: int = 85,
) -> bytes:
    """A frame as a displayable JPEG or PNG."""
    picture = fit(to_display(image, decode_frame(image, frame), window), viewport)
    buffer = io.BytesIO()
    if media_type == "image/png":
        picture.save(buffer, format="PNG", optimize=False)
    else:
        picture.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def rendered_media_type(accepted: list[MediaRange]) -> str:
    """image/jpeg (default) or image/png, per Accept; 406 for anything else."""
    for wanted in accepted:
        for offered in ("image/jpeg", "image/png"):
            if wanted.matches(offered):
                return offered
    raise NotAcceptable()
