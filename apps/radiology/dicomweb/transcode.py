"""WADO-RS instances as application/dicom: the transfer syntax each part leaves in, and its bytes.

PS3.18 8.7.3 and 8.7.8.2: a DICOM media type without a transfer-syntax parameter means the
default, Explicit VR Little Endian (1.2.840.10008.1.2.1), "unless the origin server has only
access to the pixel data in lossy compressed form or ... in a lossless compressed ... form that
is of such length that it cannot be encoded in the Explicit VR Little Endian Transfer Syntax".
`transfer-syntax=*` leaves the choice to the server: here, the stored file byte for byte. Each
part is negotiated on its own (8.7.8.2, note 1), so one study can mix the two.

What is produced, per instance (plan_instances):
- `*`: the stored file as it was received, its own patient identity included.
- Explicit VR Little Endian (the default, or named): native pixel data is re-encoded (Implicit
  VR, big endian: element headers and byte order), lossless compressed pixel data (RLE, JPEG
  Lossless, JPEG-LS Lossless, JPEG 2000 / HTJ2K Lossless Only) is decoded frame by frame.
- Lossy compressed pixel data (JPEG Baseline/Extended, JPEG-LS Near-Lossless, JPEG 2000 and
  HTJ2K that may be lossy, video) is never decoded: the default leaves it in its stored syntax
  (what the standard allows), a request naming another syntax is 406. So is pixel data this
  server cannot decode or whose decoded frames exceed RADIOLOGY_MAX_DECODED_BYTES (the default
  then keeps the stored syntax too).
- The stored syntax named: no transcoding.
- Implicit VR Little Endian (never asked by WADO-RS; DIMSE retrieve, dimse/retrieve.py, sends it to
  a receiver that accepts nothing else): native pixel data only, re-encoded like the above.

Every part except `*` carries the patient identity every other reader is shown
(stored_header.served_identity: the EMR's, with the file's differing values in the Original
Attributes Sequence). When the file already says exactly that and needs no re-encoding, the part
is the stored file unchanged; otherwise its header (everything before Pixel Data, at most
HEADER_LIMIT bytes) is read, rewritten with pydicom and followed by the pixel data: the stored
bytes from storage when their encoding is kept, else re-encoded or decoded one frame at a time.
Elements after the pixel data (Data Set Trailing Padding, Digital Signatures) are kept: as stored
when the encoding is kept, re-encoded otherwise. A whole file is never held in memory.
"""

from __future__ import annotations

import array
import io
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
import pydicom.pixels
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

from apps.radiology import storage
from apps.radiology.errors import (
    NotAcceptable,
    RadiologyError,
    RenderingFailed,
    RenderingUnavailable,
    StoredObjectMissing,
)
from apps.radiology.imagefiles import stored_header
from apps.radiology.imagefiles.dicom import CODESTREAM_HEAD_BYTES
from apps.radiology.imagefiles.patient_identity import ORIGINAL_ATTRIBUTES, first_value, replace_identity
from apps.radiology.models import RadiologyImage

from . import pixels
from .accept import MediaRange
from .dicom_json import jpeg_as_part10

EXPLICIT_LITTLE = pixels.EXPLICIT_LITTLE
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
BIG_ENDIAN = pixels.BIG_ENDIAN
DICOM_PART = "application/dicom"
ANY_SYNTAX = "*"
# Compressed syntaxes whose decoding gives back exactly the pixels that were encoded.
# JPEG 2000 (.91) and HTJ2K (.203) may be either, so they count as lossy.
LOSSLESS_COMPRESSED = frozenset(
    {
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction
        "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 (Lossless Only)
        "1.2.840.10008.1.2.4.201",  # HTJ2K (Lossless Only)
        "1.2.840.10008.1.2.4.202",  # HTJ2K with RPCL Options (Lossless Only)
        "1.2.840.10008.1.2.5",  # RLE Lossless
    }
)
# The most of a file's header (the bytes before Pixel Data), or of the elements after it, read
# to rewrite it: pydicom holds it parsed, several times its size. Real headers are kilobytes
# (an enhanced multi-frame one a few megabytes).
HEADER_LIMIT = 16 * 1024 * 1024
# PS3.5 7.1.1: a defined value length is 32 bits, 0xFFFFFFFF meaning undefined.
MAX_VALUE_LENGTH = 0xFFFFFFFE
# Elements that only describe encapsulated pixel data (extended offset table and its lengths,
# total length): meaningless once the pixel data is native.
_ENCAPSULATION_TAGS = (0x7FE00001, 0x7FE00002, 0x7FE00003)
_PIXEL_TAG_LITTLE = struct.pack("<HH", 0x7FE0, 0x0010)
_PIXEL_TAG_BIG = struct.pack(">HH", 0x7FE0, 0x0010)
_ITEM = (0xFFFE, 0xE000)


@dataclass(frozen=True)
class PartPlan:
    """How one instance leaves: in `transfer_syntax`, or as the stored file (`original`).

    `chosen_by_default`: no syntax was named, so pixel data that turns out not to decode
    leaves in its stored syntax rather than failing the response.
    """

    image: RadiologyImage
    transfer_syntax: str
    original: bool = False
    chosen_by_default: bool = False

    @property
    def content_type(self) -> str:
        return f"{DICOM_PART}; transfer-syntax={self.transfer_syntax}"


def plan_instances(images: list[RadiologyImage], accepted: list[MediaRange]) -> list[PartPlan]:
    """Each instance's part, from the first acceptable media range it can be sent in; 406 when
    some instance can be sent in none (decided before anything is streamed)."""
    plans = []
    for image in images:
        plan = next((found for wanted in accepted if (found := _plan_for(image, wanted)) is not None), None)
        if plan is None:
            raise NotAcceptable()
        plans.append(plan)
    return plans


def _plan_for(image: RadiologyImage, wanted: MediaRange) -> PartPlan | None:
    if wanted.media_type in ("*/*", "multipart/*"):
        syntax = None  # the default media type, multipart/related; type="application/dicom", by default
    elif wanted.media_type == "multipart/related" and wanted.part_type in (None, DICOM_PART):
        syntax = wanted.transfer_syntax
    else:
        return None
    stored = stored_syntax(image)
    if syntax == ANY_SYNTAX:
        return PartPlan(image, stored, original=True)
    if syntax is None:
        return PartPlan(image, default_syntax(image), chosen_by_default=True)
    if syntax == stored or (syntax == EXPLICIT_LITTLE and can_make_explicit_little(image)):
        return PartPlan(image, syntax)
    return None


def can_send_in(image: RadiologyImage, syntax: str) -> bool:
    """Whether this instance can leave in `syntax` with its pixels unchanged (the DIMSE
    retrieve's choice among the syntaxes a receiver accepted): its stored syntax; Explicit VR
    Little Endian as the default allows (can_make_explicit_little); Implicit VR Little Endian
    for native pixel data of a stored DICOM file whose header this server rewrites."""
    if syntax == stored_syntax(image):
        return True
    if syntax == EXPLICIT_LITTLE:
        return can_make_explicit_little(image)
    if syntax == IMPLICIT_LITTLE:
        location = image.pixel_data or {}
        native = image.transfer_syntax_uid in (IMPLICIT_LITTLE, EXPLICIT_LITTLE, BIG_ENDIAN)
        return image.is_dicom and native and not location.get("encapsulated", False) and _header_fits(image)
    return False


def stored_syntax(image: RadiologyImage) -> str:
    """The syntax of the stored file (of a photo: of its Secondary Capture, jpeg_as_part10)."""
    return image.transfer_syntax_uid


def default_syntax(image: RadiologyImage) -> str:
    """Explicit VR Little Endian when it can be produced without loss, else the stored syntax."""
    return EXPLICIT_LITTLE if can_make_explicit_little(image) else stored_syntax(image)


def can_make_explicit_little(image: RadiologyImage) -> bool:
    """Whether this instance can be sent in Explicit VR Little Endian with its pixels unchanged:
    already so; native pixel data in another encoding; or lossless compressed pixel data this
    server decodes, every frame located, each frame within RADIOLOGY_MAX_DECODED_BYTES and all of
    them within one value length. A photo: only if its Secondary Capture already is."""
    syntax = image.transfer_syntax_uid
    if syntax == EXPLICIT_LITTLE or not image.is_dicom:
        return syntax == EXPLICIT_LITTLE
    if not _header_fits(image):
        return False
    location = image.pixel_data or {}
    if syntax in (IMPLICIT_LITTLE, BIG_ENDIAN) or not location:
        return not location.get("encapsulated", False)
    if syntax not in LOSSLESS_COMPRESSED or not location.get("encapsulated"):
        return False
    frames = location.get("frames") or []
    if len(frames) != image.number_of_frames:
        return False
    try:
        if not pydicom.pixels.get_decoder(syntax).is_available:
            return False
        pixels.check_decode_budget(image, 1)
        frame_bytes = _frame_bytes(image)
    except (NotImplementedError, RadiologyError, TypeError, ValueError):
        return False
    return frame_bytes is not None and frame_bytes * image.number_of_frames <= MAX_VALUE_LENGTH


def _header_fits(image: RadiologyImage) -> bool:
    location = image.pixel_data or {}
    header_end = int(location.get("offset", image.file_size))
    return header_end <= HEADER_LIMIT


def _frame_bytes(image: RadiologyImage) -> int | None:
    """Bytes of one decoded frame as native pixel data (None when the header lacks its size)."""
    rows = image.rows or stored_header.pixel_value(image, "00280010")
    columns = image.columns or stored_header.pixel_value(image, "00280011")
    bits = stored_header.pixel_value(image, "00280100")
    if not (rows and columns and bits):
        return None
    samples = int(stored_header.pixel_value(image, "00280002", 1) or 1)
    return int(rows) * int(columns) * max(samples, 1) * -(-int(bits) // 8)


# --- The bytes of one part -------------------------------------------------------------


@dataclass(frozen=True)
class ReadyPart:
    """A part whose Content-Type is settled: its first bytes are already prepared.

    `stored_file`: the chunks are the stored file unchanged (a sender that can read the stored
    object directly may do so instead of streaming these chunks).
    """

    content_type: str
    chunks: Iterable[bytes | memoryview]
    stored_file: bool = False


def prepare(plan: PartPlan) -> ReadyPart:
    """The part of one planned instance. The header is read and rewritten, and a decoded
    instance's first frame decoded, here (before the part's Content-Type is sent): pixel data
    that turns out not to decode then leaves in its stored syntax when the default was asked,
    or fails this call when Explicit VR Little Endian was named."""
    image = plan.image
    if plan.original and image.is_dicom:
        return ReadyPart(plan.content_type, storage.iter_object_chunks(image.file_key), stored_file=True)
    if not image.is_dicom:
        _length, chunks = jpeg_as_part10(image, study=image.series.study, series=image.series)
        return ReadyPart(plan.content_type, chunks)
    source = _Source.read(image)
    if source.is_stored_file(plan.transfer_syntax):
        return ReadyPart(plan.content_type, storage.iter_object_chunks(image.file_key), stored_file=True)
    if plan.transfer_syntax == image.transfer_syntax_uid or image.transfer_syntax_uid not in LOSSLESS_COMPRESSED:
        return ReadyPart(plan.content_type, source.kept_pixels(plan.transfer_syntax))
    try:
        first = _decode(image, 1)
    except RadiologyError as failed:
        if not plan.chosen_by_default:
            raise NotAcceptable(
                f"The pixel data of instance {image.image_uid} could not be decoded to "
                f"{plan.transfer_syntax}: {failed.detail}"
            ) from None
        stored = image.transfer_syntax_uid
        return ReadyPart(f"{DICOM_PART}; transfer-syntax={stored}", source.kept_pixels(stored))
    return ReadyPart(plan.content_type, source.decoded_pixels(first))


@dataclass
class _Source:
    """A stored DICOM file's header, parsed, and where the rest of it lies."""

    image: RadiologyImage
    dataset: Dataset
    element_start: int  # where the Pixel Data element begins (the file's size when it has none)
    implicit: bool  # how the data set is actually encoded (not always what its meta says)
    little_endian: bool

    @classmethod
    def read(cls, image: RadiologyImage) -> _Source:
        location = image.pixel_data or {}
        value_offset = int(location["offset"]) if location else image.file_size
        if value_offset > HEADER_LIMIT:
            raise NotAcceptable(
                f"The header of instance {image.image_uid} is over {HEADER_LIMIT} bytes, more than this server "
                "rewrites; ask for transfer-syntax=* to have the stored file."
            )
        head = storage.read_object_range(image.file_key, 0, value_offset)
        if len(head) < value_offset:
            raise StoredObjectMissing(pixels.SHORT_OBJECT)
        if not location:
            element_start, implicit, little = value_offset, None, None
        elif head[-12:-8] == _PIXEL_TAG_LITTLE and head[-8:-6].isalpha():
            element_start, implicit, little = value_offset - 12, False, True
        elif head[-12:-8] == _PIXEL_TAG_BIG and head[-8:-6].isalpha():
            element_start, implicit, little = value_offset - 12, False, False
        elif head[-8:-4] == _PIXEL_TAG_LITTLE:
            element_start, implicit, little = value_offset - 8, True, True
        else:
            raise NotAcceptable(f"The pixel data of instance {image.image_uid} is not where it was recorded.")
        dataset = pydicom.dcmread(io.BytesIO(head[:element_start]), force=True)
        if implicit is None:
            found_implicit, found_little = dataset.original_encoding
            implicit, little = bool(found_implicit), found_little is not False
        return cls(image, dataset, element_start, implicit, little)

    def identity_is_served(self) -> bool:
        """Whether the file's patient identity already is the one served (absent counts as empty)."""
        for tag, member in stored_header.served_identity(self.image).items():
            number = int(tag, 16)
            if tag == ORIGINAL_ATTRIBUTES:
                element = self.dataset.get(number)
                if len(member.get("Value") or []) != len(element.value if element is not None else []):
                    return False
            elif self._text_of(number) != first_value(member):
                return False
        return True

    def _text_of(self, number: int) -> str:
        """An element's first value as text: a plain ASCII value read from its raw bytes (what
        pydicom would make of it; converting a name costs more than the rest of the check), any
        other through pydicom."""
        raw = self.dataset.get_item(number)
        value = getattr(raw, "value", None) if raw is not None else None
        if isinstance(value, bytes) and value.isascii() and not any(mark in value for mark in b"\\="):
            return value.decode("ascii").strip(" \x00")
        return _text(self.dataset.get(number))

    def is_stored_file(self, transfer_syntax: str) -> bool:
        """Whether the stored file already is this instance in `transfer_syntax` as served."""
        image = self.image
        same_encoding = _encoding_of(transfer_syntax) == (self.implicit, self.little_endian)
        return same_encoding and transfer_syntax == image.transfer_syntax_uid and self.identity_is_served()

    def header(self, transfer_syntax: str, changes: dict[str, Any] | None = None) -> bytes:
        """The file's header (preamble, meta, data set up to Pixel Data) in `transfer_syntax`,
        with the served identity and `changes` (keyword: value)."""
        dataset = self.dataset
        replace_identity(dataset, stored_header.served_identity(self.image))
        _encodable(dataset)
        for keyword, value in (changes or {}).items():
            setattr(dataset, keyword, value)
        dataset.file_meta.TransferSyntaxUID = transfer_syntax
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        return buffer.getvalue()

    def kept_pixels(self, transfer_syntax: str) -> Iterator[bytes | memoryview]:
        """The instance in `transfer_syntax` with its pixel data as stored (re-encoded only
        from Implicit VR or big endian): the stored file itself when nothing would change."""
        image = self.image
        if self.is_stored_file(transfer_syntax):
            yield from storage.iter_object_chunks(image.file_key)
            return
        yield self.header(transfer_syntax)
        implicit, little_endian = _encoding_of(transfer_syntax)
        if (implicit, little_endian) == (self.implicit, self.little_endian):
            # The new header, then the stored bytes from Pixel Data on as they are.
            yield from storage.iter_object_range(
                image.file_key, self.element_start, image.file_size - self.element_start
            )
            return
        if not little_endian:
            raise NotAcceptable(f"Instance {image.image_uid} is not encoded as its transfer syntax says.")
        # Explicit (or Implicit) VR Little Endian from another encoding: the pixel data element anew.
        location = image.pixel_data or {}
        if not location:
            return
        offset = int(location["offset"])
        if location.get("encapsulated"):  # an encapsulated syntax over an Implicit VR data set
            if implicit:
                raise NotAcceptable(f"The pixel data of {image.image_uid} is encapsulated: not Implicit VR.")
            end = _encapsulated_end(image)
            yield _element_header(str(location.get("vr", "OB")), 0xFFFFFFFF)
            yield from storage.iter_object_range(image.file_key, offset, end - offset)
        else:
            length = int(location["length"])
            yield _element_header(self._native_vr(), length, implicit=implicit)
            chunks = storage.iter_object_range(image.file_key, offset, length)
            yield from chunks if self.little_endian else _swapped(chunks, _word_size(image))
            end = offset + length
        yield from self._trailing(end, implicit=implicit)

    def decoded_pixels(self, first: tuple[np.ndarray, dict[str, Any]]) -> Iterator[bytes | memoryview]:
        """The instance in Explicit VR Little Endian, its pixel data decoded frame by frame
        (`first`, frame 1 decoded and pydicom's description of it, says what the pixels are)."""
        image = self.image
        frame, meta = first
        changes: dict[str, Any] = {"PhotometricInterpretation": meta["photometric_interpretation"]}
        if int(meta.get("samples_per_pixel", 1)) > 1:
            changes["PlanarConfiguration"] = int(meta.get("planar_configuration", 0))
        for tag in _ENCAPSULATION_TAGS:
            self.dataset.pop(tag, None)
        frame_length = frame.nbytes
        length = frame_length * image.number_of_frames
        bits = int(stored_header.pixel_value(image, "00280100", 8) or 8)
        header = self.header(EXPLICIT_LITTLE, changes)
        # PS3.5 A.1 c: OB for at most 8 bits allocated, else OW; a value has an even length.
        yield header + _element_header("OB" if bits <= 8 else "OW", length + length % 2)
        yield from pixels.decoded_chunks(frame)
        del frame, first
        for number in range(2, image.number_of_frames + 1):
            frame, _meta = _decode(image, number)
            if frame.nbytes != frame_length:
                raise RenderingFailed(f"Frame {number} decodes to another size than frame 1.")
            yield from pixels.decoded_chunks(frame)
        if length % 2:
            yield b"\x00"
        yield from self._trailing(_encapsulated_end(image))

    def _native_vr(self) -> str:
        recorded = (self.image.pixel_data or {}).get("vr")
        if not self.implicit and recorded in ("OB", "OW"):
            return str(recorded)
        return "OB" if int(stored_header.pixel_value(self.image, "00280100", 8) or 8) <= 8 else "OW"

    def _trailing(self, end: int, *, implicit: bool = False) -> Iterator[bytes]:
        """The elements after the pixel data (from `end`), in Explicit (or Implicit) VR Little Endian."""
        image = self.image
        size = image.file_size - end
        if size <= 0:
            return
        if (self.implicit, self.little_endian) == (implicit, True):
            yield from storage.iter_object_range(image.file_key, end, size)
            return
        if size > HEADER_LIMIT:
            raise NotAcceptable(f"The elements after the pixel data of {image.image_uid} are too large to re-encode.")
        raw = DicomBytesIO(storage.read_object_range(image.file_key, end, size))
        raw.is_implicit_VR, raw.is_little_endian = self.implicit, self.little_endian
        trailing = pydicom.filereader.read_dataset(raw, self.implicit, self.little_endian)
        out = DicomBytesIO()
        out.is_implicit_VR, out.is_little_endian = implicit, True
        pydicom.filewriter.write_dataset(out, trailing)
        yield out.getvalue()


def _text(element: Any) -> str:
    if element is None or element.value is None:
        return ""
    value = element.value
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if value else ""
    return str(value).strip()


def _encodable(dataset: Dataset) -> None:
    """Make the data set's character set able to hold the identity just put in: text that is
    not ASCII, in a data set without UTF-8, turns the whole data set to UTF-8 (ISO_IR 192),
    every text value decoded first so that none is re-labelled without being re-encoded."""
    charset = dataset.get("SpecificCharacterSet") or ""
    if "ISO_IR 192" in (list(charset) if isinstance(charset, pydicom.multival.MultiValue) else [charset]):
        return
    identity = [dataset.get(tag) for tag in (0x00100010, 0x00100020, 0x00100030, 0x00100040)]
    if all(_text(element).isascii() for element in identity):
        return
    dataset.decode()  # every element, nested ones too, converted and decoded before the label changes
    dataset.SpecificCharacterSet = "ISO_IR 192"


def _encoding_of(transfer_syntax: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of a data set in `transfer_syntax` (deflate is never stored)."""
    if transfer_syntax == IMPLICIT_LITTLE:
        return True, True
    return False, transfer_syntax != BIG_ENDIAN


def _element_header(vr: str, length: int, *, implicit: bool = False) -> bytes:
    """(7FE0,0010) in Explicit VR Little Endian: tag, VR, two reserved bytes, 32-bit length
    (Implicit VR Little Endian: tag, 32-bit length)."""
    if implicit:
        return _PIXEL_TAG_LITTLE + struct.pack("<I", length)
    return _PIXEL_TAG_LITTLE + vr.encode("ascii") + b"\x00\x00" + struct.pack("<I", length)


def _encapsulated_end(image: RadiologyImage) -> int:
    """Where encapsulated pixel data ends: after its last fragment and the sequence delimiter."""
    frames = (image.pixel_data or {}).get("frames") or []
    if not frames:
        raise NotAcceptable(f"The fragments of instance {image.image_uid} could not be located.")
    last_offset, last_length = frames[-1][-1]
    return int(last_offset) + int(last_length) + 8


def _word_size(image: RadiologyImage) -> int:
    """Bytes per swapped word of big-endian native pixel data (PS3.5 7.3: OW is 16-bit words)."""
    bits = int(stored_header.pixel_value(image, "00280100", 8) or 8)
    if bits in (16, 32):
        return bits // 8
    return 2 if (image.pixel_data or {}).get("vr") == "OW" else 1


def _swapped(chunks: Iterable[bytes], word: int) -> Iterator[bytes]:
    """Big-endian words as little endian, chunk by chunk (a word split between chunks waits)."""
    if word == 1:
        yield from chunks
        return
    carry = b""
    for chunk in chunks:
        data = carry + bytes(chunk)
        whole = len(data) // word * word
        carry = data[whole:]
        words = array.array({2: "H", 4: "I"}[word])
        words.frombytes(data[:whole])
        words.byteswap()
        yield words.tobytes()
    if carry:
        yield carry


def _decode(image: RadiologyImage, number: int) -> tuple[np.ndarray, dict[str, Any]]:
    """One frame of lossless compressed pixel data, decoded as it was encoded (no colour
    conversion: as_rgb=False), within the decode budget and after its codestream is weighed
    (pixels.check_codestream), so a decoder never allocates more than a render would."""
    pixels.check_decode_budget(image, 1)
    spans = pixels.frame_spans(image, number)
    pieces: list[bytes] = [pixels.EMPTY_OFFSET_TABLE]
    for offset, length in spans:
        pieces.append(struct.pack("<HHI", *_ITEM, length))
        pieces.append(storage.read_object_range(image.file_key, offset, length))
    if len(pieces[2]) < spans[0][1]:
        raise StoredObjectMissing(pixels.SHORT_OBJECT)
    pixels.check_codestream(image, pieces[2][:CODESTREAM_HEAD_BYTES])
    source = b"".join(pieces)
    del pieces
    try:
        decoder = pydicom.pixels.get_decoder(image.transfer_syntax_uid)
        frame, meta = decoder.as_array(source, index=0, validate=True, as_rgb=False, **_decoding_options(image))
    except MemoryError:
        raise RenderingUnavailable("The server ran out of memory decoding this image; try again later.") from None
    except Exception as exc:  # decoders raise many types on data they can't handle
        raise RenderingFailed(f"Could not decode the pixel data: {type(exc).__name__}.") from exc
    expected = _frame_bytes(image)
    if expected is not None and frame.nbytes != expected:
        raise RenderingFailed(f"Frame {number} decodes to {frame.nbytes} bytes, not {expected}.")
    return frame, meta


def _decoding_options(image: RadiologyImage) -> dict[str, Any]:
    """pydicom's decoding options for one frame, from the stored pixel description."""
    value = stored_header.pixel_value
    bits_allocated = int(value(image, "00280100", 8) or 8)
    samples = int(value(image, "00280002", 1) or 1)
    options: dict[str, Any] = {
        "rows": int(image.rows or value(image, "00280010") or 0),
        "columns": int(image.columns or value(image, "00280011") or 0),
        "samples_per_pixel": samples,
        "photometric_interpretation": str(value(image, "00280004", "MONOCHROME2")),
        "bits_allocated": bits_allocated,
        "bits_stored": int(value(image, "00280101", bits_allocated) or bits_allocated),
        "pixel_representation": int(value(image, "00280103", 0) or 0),
        "number_of_frames": 1,
        "pixel_keyword": "PixelData",
    }
    if samples > 1:
        options["planar_configuration"] = int(value(image, "00280006", 0) or 0)
    return options
