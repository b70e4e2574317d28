"""apps.radiology.imagefiles.dicom: type sniffing, header fields, DICOM JSON, truncation, JPEG and EXIF."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from PIL import Image

from apps.radiology.errors import (
    InvalidDicom,
    InvalidJpeg,
    MissingPixelData,
    RadiologyError,
    TruncatedFile,
    UnsupportedFileType,
    UnsupportedTransferSyntax,
)
from apps.radiology.imagefiles.dicom import (
    JPEG_BASELINE_TRANSFER_SYNTAX,
    SECONDARY_CAPTURE_SOP_CLASS,
    ParsedImage,
    dicom_json,
    parse_dicom_date,
    parse_dicom_time,
    parse_image_file,
    sniff_mime_type,
)
from apps.radiology.imagefiles.patient_identity import HELD_TAGS
from apps.radiology.models import DICOM_MIME_TYPE, JPEG_MIME_TYPE
from apps.radiology.operations.demo import jpeg_with_exif, sample_path
from apps.radiology.tests.factories import edited_sample, pydicom_json_without_bulk, sample_bytes

# pydicom's samples include a few non-conformant UIDs (rtdose.dcm) and so do tests on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")

PIXEL_DATA = "7FE00010"

# name -> (modality, transfer syntax, frames, rows, columns)
SAMPLES = {
    "CT_small.dcm": ("CT", "1.2.840.10008.1.2.1", 1, 128, 128),
    "MR_small.dcm": ("MR", "1.2.840.10008.1.2.1", 1, 64, 64),
    "JPEG-lossy.dcm": ("NM", "1.2.840.10008.1.2.4.51", 1, 1024, 256),
    "MR_small_jp2klossless.dcm": ("MR", "1.2.840.10008.1.2.4.90", 1, 64, 64),
    "JPEG2000.dcm": ("NM", "1.2.840.10008.1.2.4.91", 1, 1024, 256),
    "SC_rgb_rle_2frame.dcm": ("OT", "1.2.840.10008.1.2.5", 2, 100, 100),
    "rtdose.dcm": ("RTDOSE", "1.2.840.10008.1.2", 15, 10, 10),
}


def _write(tmp_path: Path, content: bytes, name: str = "upload.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def _parse(tmp_path: Path, content: bytes) -> ParsedImage:
    return parse_image_file(_write(tmp_path, content), sniff_mime_type(content[:132]))


# --- sniffing ----------------------------------------------------------------------------------


def test_sniff_decides_from_the_bytes() -> None:
    assert sniff_mime_type(sample_bytes("CT_small.dcm")[:132]) == DICOM_MIME_TYPE
    assert sniff_mime_type(jpeg_with_exif()[:132]) == JPEG_MIME_TYPE


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"hello world" * 20, id="text"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, id="png"),
        pytest.param(b"%PDF-1.7" + b"\x00" * 200, id="pdf"),
        pytest.param(b"\x00" * 128 + b"DICN", id="bad-dicm-magic"),
        pytest.param(b"\x00" * 128 + b"DIC", id="dicm-cut-short"),
        pytest.param(b"\xff\xd8", id="jpeg-soi-only"),
    ],
)
def test_sniff_refuses_anything_else(head: bytes) -> None:
    with pytest.raises(UnsupportedFileType) as excinfo:
        sniff_mime_type(head)
    assert excinfo.value.code == "unsupported_file_type"
    assert excinfo.value.status_code == 415


def test_dicom_without_preamble_is_unsupported() -> None:
    """Only Part 10 files: a bare data set (no 128-byte preamble and DICM) is refused."""
    content = sample_bytes("CT_small.dcm")[132:]
    with pytest.raises(UnsupportedFileType):
        sniff_mime_type(content[:132])


# --- DICOM headers --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SAMPLES))
def test_parse_dicom_reads_the_header(name: str) -> None:
    modality, transfer_syntax, frames, rows, columns = SAMPLES[name]
    path = sample_path(name)
    dataset = pydicom.dcmread(path)

    parsed = parse_image_file(path, DICOM_MIME_TYPE)

    assert parsed.mime_type == DICOM_MIME_TYPE
    assert parsed.study_uid == dataset.StudyInstanceUID
    assert parsed.series_uid == dataset.SeriesInstanceUID
    assert parsed.image_uid == dataset.SOPInstanceUID
    assert parsed.sop_class_uid == dataset.SOPClassUID
    assert parsed.transfer_syntax_uid == transfer_syntax
    assert parsed.modality == modality
    assert parsed.number_of_frames == frames
    assert (parsed.rows, parsed.columns) == (rows, columns)
    assert parsed.study_date == parse_dicom_date(dataset.StudyDate)
    assert parsed.study_description == str(dataset.get("StudyDescription", ""))
    assert parsed.series_description == str(dataset.get("SeriesDescription", ""))
    assert parsed.series_number == (int(dataset.SeriesNumber) if dataset.get("SeriesNumber") is not None else None)
    assert parsed.instance_number == (
        int(dataset.InstanceNumber) if dataset.get("InstanceNumber") not in (None, "") else None
    )


def test_parse_dicom_ct_small_exact_values() -> None:
    parsed = parse_image_file(sample_path("CT_small.dcm"), DICOM_MIME_TYPE)
    assert parsed.study_uid == "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    assert parsed.series_uid == "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
    assert parsed.image_uid == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    assert parsed.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert parsed.study_date == dt.date(2004, 1, 19)
    assert parsed.study_time == dt.time(7, 27, 30)
    assert parsed.series_number == 1
    assert parsed.instance_number == 1


@pytest.mark.parametrize("name", list(SAMPLES))
def test_metadata_is_pydicoms_json_model_without_bulk_data(name: str) -> None:
    path = sample_path(name)

    parsed = parse_image_file(path, DICOM_MIME_TYPE)

    # The patient identity is held back beside the rest, for ingest to put the EMR's in its place.
    assert {**parsed.metadata, **parsed.metadata.held} == pydicom_json_without_bulk(path)
    assert not set(parsed.metadata) & set(parsed.metadata.held)
    assert set(parsed.metadata.held) <= set(HELD_TAGS)
    assert PIXEL_DATA not in parsed.metadata
    assert parsed.metadata["0020000D"] == {"vr": "UI", "Value": [pydicom.dcmread(path).StudyInstanceUID]}


def test_dicom_json_keeps_small_binary_values_inline() -> None:
    dataset = pydicom.dcmread(sample_path("CT_small.dcm"))
    dataset.add_new(0x00091001, "OB", b"\x01\x02\x03\x04")  # a small private binary value
    as_json = dicom_json(dataset)
    assert as_json["00091001"] == {"vr": "OB", "InlineBinary": "AQIDBA=="}
    assert PIXEL_DATA not in as_json


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda: sample_bytes("MR_truncated.dcm"), id="MR_truncated"),
        pytest.param(lambda: sample_bytes("CT_small.dcm")[: len(sample_bytes("CT_small.dcm")) // 2], id="CT-half"),
        pytest.param(lambda: sample_bytes("CT_small.dcm")[:-1], id="CT-one-byte-short"),
        pytest.param(lambda: sample_bytes("JPEG-lossy.dcm")[:-2000], id="JPEG-lossy-short"),
        pytest.param(lambda: sample_bytes("SC_rgb_rle_2frame.dcm")[:-100], id="RLE-short"),
        pytest.param(lambda: jpeg_with_exif()[: len(jpeg_with_exif()) // 2], id="jpeg-half"),
        pytest.param(lambda: jpeg_with_exif()[:-10], id="jpeg-no-end"),
    ],
)
def test_truncated_files_are_truncated_file(tmp_path: Path, content: Callable[[], bytes]) -> None:
    with pytest.raises(TruncatedFile) as excinfo:
        _parse(tmp_path, content())
    assert excinfo.value.code == "truncated_file"
    assert excinfo.value.status_code == 400


def test_dicom_with_garbage_after_the_preamble_is_invalid(tmp_path: Path) -> None:
    content = b"\x00" * 128 + b"DICM" + b"\xde\xad\xbe\xef" * 64
    with pytest.raises(RadiologyError) as excinfo:
        _parse(tmp_path, content)
    assert isinstance(excinfo.value, InvalidDicom | TruncatedFile)
    assert excinfo.value.code in ("invalid_dicom", "truncated_file")
    assert 400 <= excinfo.value.status_code < 500


def test_dicom_without_uids_parses_with_none(tmp_path: Path) -> None:
    """meta_missing_tsyntax.dcm has no UIDs: parsing says None, ingest refuses (missing_uid)."""
    parsed = parse_image_file(sample_path("meta_missing_tsyntax.dcm"), DICOM_MIME_TYPE)
    assert (parsed.study_uid, parsed.series_uid, parsed.image_uid) == (None, None, None)


def _strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [text for value in node.values() for text in _strings(value)]
    if isinstance(node, list):
        return [text for item in node for text in _strings(item)]
    return []


def test_nul_padded_text_is_read_without_nul(tmp_path: Path) -> None:
    """Some devices pad text with NUL; PostgreSQL can store NUL neither in text nor in jsonb."""
    content = edited_sample(
        "CT_small.dcm", SeriesDescription="Axial\x00T1\x00", StudyDescription="Head\x00", PatientName="Doe^Jo\x00"
    )

    parsed = _parse(tmp_path, content)

    assert parsed.series_description == "AxialT1"
    assert parsed.study_description == "Head"
    assert parsed.metadata["0008103E"] == {"vr": "LO", "Value": ["AxialT1"]}
    assert parsed.metadata.held["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jo"}]}
    assert not [text for text in _strings({**parsed.metadata, **parsed.metadata.held}) if "\x00" in text]


# --- JPEG ----------------------------------------------------------------------------------------


def test_parse_jpeg_reads_size_and_exif(tmp_path: Path) -> None:
    parsed = _parse(tmp_path, jpeg_with_exif(width=320, height=240))

    assert parsed.mime_type == JPEG_MIME_TYPE
    assert parsed.sop_class_uid == SECONDARY_CAPTURE_SOP_CLASS
    assert parsed.transfer_syntax_uid == JPEG_BASELINE_TRANSFER_SYNTAX
    assert (parsed.rows, parsed.columns) == (240, 320)
    assert (parsed.study_uid, parsed.series_uid, parsed.image_uid) == (None, None, None)
    assert parsed.metadata == {
        "width": 320,
        "height": 240,
        "mode": "RGB",
        "progressive": False,
        "sof": "SOF0",
        "exif": {"Make": "PACS-lite demo camera", "Model": "Phone X1", "DateTime": "2026:01:15 10:00:00"},
    }


def test_parse_jpeg_without_exif(tmp_path: Path) -> None:
    path = tmp_path / "plain.jpg"
    Image.new("RGB", (16, 8), "white").save(path, format="JPEG")
    parsed = parse_image_file(path, JPEG_MIME_TYPE)
    assert parsed.metadata == {"width": 16, "height": 8, "mode": "RGB", "progressive": False, "sof": "SOF0", "exif": {}}


def test_exif_text_with_nul_is_read_without_nul(tmp_path: Path) -> None:
    path = tmp_path / "nul.jpg"
    exif = Image.Exif()
    exif[0x010E] = "Film\x00scan"  # ImageDescription
    exif[0x010F] = "Maker\x00\x00"  # Make
    Image.new("RGB", (16, 8), "white").save(path, format="JPEG", exif=exif)

    parsed = parse_image_file(path, JPEG_MIME_TYPE)

    assert parsed.metadata["exif"] == {"ImageDescription": "Filmscan", "Make": "Maker"}


def test_jpeg_signature_on_something_else_is_invalid_jpeg(tmp_path: Path) -> None:
    with pytest.raises(InvalidJpeg) as excinfo:
        _parse(tmp_path, b"\xff\xd8\xff" + b"not really a jpeg" * 10)
    assert excinfo.value.code == "invalid_jpeg"
    assert excinfo.value.status_code == 400


# --- DA / TM ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("20040119", dt.date(2004, 1, 19)), ("", None), (None, None), ("2004", None), ("20041399", None)],
)
def test_parse_dicom_date(value: object, expected: dt.date | None) -> None:
    assert parse_dicom_date(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("072730", dt.time(7, 27, 30)),
        ("07:27:30", dt.time(7, 27, 30)),
        ("0727", dt.time(7, 27)),
        ("07", dt.time(7)),
        ("072730.123456", dt.time(7, 27, 30, 123456)),
        ("072730.5", dt.time(7, 27, 30, 500000)),
        ("235960", dt.time(23, 59, 59)),  # a leap second is clamped
        ("", None),
        (None, None),
        ("ab", None),
        ("250000", None),
    ],
)
def test_parse_dicom_time(value: object, expected: dt.time | None) -> None:
    assert parse_dicom_time(value) == expected


def test_deflated_dicom_is_refused_as_an_unsupported_transfer_syntax() -> None:
    """A deflated data set has no usable file offsets for frames: refused, with its own code."""
    with pytest.raises(UnsupportedTransferSyntax) as excinfo:
        parse_image_file(sample_path("image_dfl.dcm"), DICOM_MIME_TYPE)

    assert (excinfo.value.code, excinfo.value.status_code) == ("unsupported_transfer_syntax", 415)


def test_cmyk_jpeg_is_refused_with_the_mode_named(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 8), (0, 0, 0, 0)).save(path, format="JPEG")

    with pytest.raises(InvalidJpeg) as excinfo:
        parse_image_file(path, JPEG_MIME_TYPE)

    assert excinfo.value.detail == "JPEG colour mode CMYK is not supported; save the photo as RGB."
    assert excinfo.value.code == "invalid_jpeg"


def test_native_ybr_full_422_frames_are_two_bytes_a_pixel(tmp_path: Path) -> None:
    """4:2:2: two pixels share one Cb and one Cr (Y Y Cb Cr), PS3.3 C.7.6.3.1.2."""
    content = sample_bytes("SC_ybr_full_422_uncompressed.dcm")
    dataset = pydicom.dcmread(sample_path("SC_ybr_full_422_uncompressed.dcm"))

    parsed = _parse(tmp_path, content)

    assert (parsed.rows, parsed.columns, parsed.number_of_frames) == (100, 100, 1)
    assert {key: parsed.pixel_data[key] for key in ("vr", "offset", "length", "encapsulated", "frame_length")} == {
        "vr": "OB",
        "offset": content.index(dataset.PixelData),
        "length": 20_000,
        "encapsulated": False,
        "frame_length": 20_000,
    }


@pytest.mark.parametrize(("photometric", "frame_length"), [("YBR_PARTIAL_422", 20_000), ("YBR_FULL", 30_000)])
def test_the_native_frame_length_follows_the_subsampling(tmp_path: Path, photometric: str, frame_length: int) -> None:
    """YBR_PARTIAL_422 is laid out as YBR_FULL_422; YBR_FULL is not subsampled (30,000 bytes,
    so the same 20,000 are short of it)."""
    content = edited_sample("SC_ybr_full_422_uncompressed.dcm", PhotometricInterpretation=photometric)
    if frame_length > 20_000:
        with pytest.raises(TruncatedFile):
            _parse(tmp_path, content)
    else:
        assert _parse(tmp_path, content).pixel_data["frame_length"] == frame_length


def _header_end(content: bytes) -> int:
    """Where the last element before the pixel data ends."""
    dataset = pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True, defer_size=1024)
    last = list(dataset.values())[-1]
    return int(last.value_tell) + int(last.length)


def test_an_image_ending_whole_without_pixel_data_is_missing_pixel_data(tmp_path: Path) -> None:
    content = sample_bytes("CT_small.dcm")
    with pytest.raises(MissingPixelData) as excinfo:
        _parse(tmp_path, content[: _header_end(content)])
    assert (excinfo.value.code, excinfo.value.status_code) == ("missing_pixel_data", 400)
    assert str(excinfo.value.detail) == (
        "The file is an image object without Pixel Data (7FE0,0010), which every image must have."
    )


@pytest.mark.parametrize("extra", [1, 4, 7, 12])
def test_an_image_cut_inside_the_pixel_data_header_is_truncated_file(tmp_path: Path, extra: int) -> None:
    """Bytes after the last whole element that are no whole element: a cut, not a missing element."""
    content = sample_bytes("CT_small.dcm")
    with pytest.raises(TruncatedFile):
        _parse(tmp_path, content[: _header_end(content) + extra])
