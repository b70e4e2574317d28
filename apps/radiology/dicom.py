"""Reading what an incoming file is: DICOM header fields and JSON, or a JPEG's size and EXIF.

Everything here works on a file already spooled to disk, so no function needs the whole
file in memory: pydicom defers large values (pixel data stays on disk) and Pillow decodes a
JPEG at 1/8 scale just to prove it is complete.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from PIL import ExifTags, Image, TiffImagePlugin
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import UID

from apps.radiology.errors import InvalidDicom, InvalidJpeg, TruncatedFile, UnsupportedFileType
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
_BULK_SENTINEL = "pacs-lite:bulk"
# What pydicom warns when a file ends inside an undefined-length element.
_EOF_WARNING = "End of file reached before delimiter"
# Secondary Capture Image Storage: how a JPEG photo is presented to DICOM tools.
SECONDARY_CAPTURE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
JPEG_BASELINE_TRANSFER_SYNTAX = "1.2.840.10008.1.2.4.50"


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
    metadata: dict[str, Any] = field(default_factory=dict)


def parse_image_file(path: Path, mime_type: str) -> ParsedImage:
    """Parse a spooled file whose type `sniff_mime_type` already decided."""
    if mime_type == DICOM_MIME_TYPE:
        return parse_dicom(path)
    return parse_jpeg(path)


# --- DICOM ------------------------------------------------------------------------------


def parse_dicom(path: Path) -> ParsedImage:
    """Read a DICOM Part 10 file's header; reject it if it is truncated or unreadable."""
    file_size = path.stat().st_size
    try:
        with warnings.catch_warnings(record=True) as caught:
            # pydicom warns (rather than fails) on many malformed files; we decide below.
            warnings.simplefilter("always")
            dataset = pydicom.dcmread(str(path), defer_size=BULK_THRESHOLD)
            # An undefined-length element (encapsulated pixel data) cut short makes pydicom
            # warn and return an *empty* data set, which would otherwise pass as "no UIDs".
            if any(_EOF_WARNING in str(warning.message) for warning in caught):
                raise TruncatedFile()
            _check_complete(dataset, file_size)
            metadata = dicom_json(dataset)
            fields = _dicom_fields(dataset)
    except (TruncatedFile, InvalidDicom):
        raise
    except (InvalidDicomError, EOFError) as exc:
        raise InvalidDicom(f"The DICOM file could not be read: {type(exc).__name__}.") from exc
    except Exception as exc:  # pydicom raises many types on malformed values
        raise InvalidDicom(f"The DICOM file has malformed content: {type(exc).__name__}.") from exc
    return ParsedImage(mime_type=DICOM_MIME_TYPE, metadata=metadata, **fields)


def _vr_of(tag: BaseTag, raw: Any) -> str:
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _check_complete(dataset: Dataset, file_size: int) -> None:
    """Refuse files that end before their elements do.

    pydicom reads truncated files without complaint, returning whatever it got; a medical
    store must not keep half an image, so every defined-length top-level element has to
    fit in the file and uncompressed pixel data has to hold all its frames.
    """
    pixel_data_length: int | None = None
    for tag, raw in dataset.items():
        value_tell = getattr(raw, "value_tell", None)
        length = getattr(raw, "length", None)
        if tag == PIXEL_DATA_TAG:
            pixel_data_length = length
        if value_tell is None or length is None or length == UNDEFINED_LENGTH:
            continue
        if value_tell + length > file_size:
            raise TruncatedFile()
    has_pixels = any(keyword in dataset for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if "Rows" in dataset and "Columns" in dataset and "BitsAllocated" in dataset and not has_pixels:
        # An image whose pixel data vanished: pydicom drops an encapsulated element cut short.
        raise TruncatedFile()
    transfer_syntax = UID(str(dataset.file_meta.get("TransferSyntaxUID", "")))
    if "PixelData" in dataset and transfer_syntax and not transfer_syntax.is_compressed:
        expected = _native_pixel_length(dataset)
        if expected is not None and pixel_data_length is not None and pixel_data_length < expected:
            raise TruncatedFile()


def _native_pixel_length(dataset: Dataset) -> int | None:
    try:
        rows = int(dataset.Rows)
        columns = int(dataset.Columns)
        samples = int(dataset.get("SamplesPerPixel", 1))
        bits = int(dataset.BitsAllocated)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    total_bits = rows * columns * samples * frames * bits
    return (total_bits + 7) // 8


def dicom_json(dataset: Dataset) -> dict[str, Any]:
    """The header as the DICOM JSON model (PS3.18 F), bulk data left out.

    Large binary top-level elements (pixel data, overlays, waveforms) are skipped without
    being read; nested ones are dropped after pydicom marks them as bulk.
    """
    header = Dataset()
    for tag, raw in dataset.items():
        vr = _vr_of(tag, raw)
        length = getattr(raw, "length", 0) or 0
        if vr in BULK_VRS and (length > BULK_THRESHOLD or length == UNDEFINED_LENGTH):
            continue
        header.add(dataset[tag])
    as_json = header.to_json_dict(
        bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=lambda _element: _BULK_SENTINEL
    )
    return _drop_bulk(as_json)


def _drop_bulk(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: _drop_bulk(value)
            for key, value in node.items()
            if not (isinstance(value, dict) and value.get("BulkDataURI") == _BULK_SENTINEL)
        }
    if isinstance(node, list):
        return [_drop_bulk(item) for item in node]
    return node


def _text(dataset: Dataset, keyword: str, limit: int = 255) -> str:
    value = dataset.get(keyword)
    if value is None:
        return ""
    return str(value).strip()[:limit]


def _uid(dataset: Dataset, keyword: str) -> str | None:
    value = dataset.get(keyword)
    if value is None:
        return None
    text = str(value).strip().rstrip("\x00")
    return text or None


def _integer(dataset: Dataset, keyword: str) -> int | None:
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


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
    metadata = {"width": width, "height": height, "exif": exif}
    return ParsedImage(
        mime_type=JPEG_MIME_TYPE,
        sop_class_uid=SECONDARY_CAPTURE_SOP_CLASS,
        transfer_syntax_uid=JPEG_BASELINE_TRANSFER_SYNTAX,
        rows=height,
        columns=width,
        metadata=metadata,
    )


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
    return result
