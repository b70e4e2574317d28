"""Fuzz the one ingest path with broken DICOM and JPEG files: stored whole, or refused without a trace.

Hypothesis starts from real files (pydicom's CT_small, MR_small and JPEG-lossy, a Pillow
JPEG, and the hand-made ones below) and mutates them: cut at any byte, bytes flipped or
overwritten in the header, element lengths made wrong or huge (0xFFFFFFFE, ...), VRs
replaced by bad ones, random bytes behind a valid preamble or a JPEG signature, a JPEG
frame header declaring other dimensions. Every file must end in one of two ways:
- stored: one image row whose file holds exactly the bytes sent (size, SHA-256, content);
- refused: a RadiologyError with a 4xx status, and nothing left behind: no study, series
  or image row, no object in the store, no spool file in the staging directory.

Every example gets a fresh order inside a savepoint that is rolled back afterwards, and a
stored example's object is removed, so each starts from an empty database and store. Runs
derandomized (the same files on every run) on the filesystem and, with fewer examples, on
S3 (moto's server). The hand-made files and the interesting inputs the fuzzing turned up
are kept in fuzz_corpus/ (see its README) and replayed by test_corpus_file.

fuzz_corpus/README.md says how the hand-made corpus files are rewritten (write_hand_made_corpus).
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from django.conf import settings as django_settings
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from apps.radiology import storage
from apps.radiology.errors import RadiologyError
from apps.radiology.models import RadiologyImage, RadiologyOrder
from apps.radiology.operations.demo import jpeg_with_exif, sample_path
from apps.radiology.pacs_lite_service import PACSLiteService
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.factories import read_stored, row_counts, stored_keys

CORPUS = Path(__file__).parent.parent / "fuzz_corpus"
EXPECTED_FILE = CORPUS / "expected.json"
STORED = "stored"
FILESYSTEM_EXAMPLES = 400
S3_EXAMPLES = 40
UNDEFINED = 0xFFFFFFFF

# --- Outcome and invariant ---------------------------------------------------------------


def _staged_files() -> list[Path]:
    staging = Path(django_settings.RADIOLOGY_STAGING_DIR)
    return sorted(path for path in staging.rglob("*") if path.is_file()) if staging.exists() else []


def ingest_outcome(order: RadiologyOrder, content: bytes) -> str:
    """Ingest `content` into `order`, check the invariant, and return "stored" or the error code.

    The database and store must be empty before; they are left as they were found after a
    refusal, and hold exactly the one image (removed again here) after a success.
    """
    assert row_counts() == (0, 0, 0)
    assert stored_keys() == []
    try:
        result = PACSLiteService.ingest_image(
            order=order, stream=io.BytesIO(content), filename="fuzz.bin", uploaded_by=None
        )
    except RadiologyError as error:
        assert 400 <= error.status_code < 500, (error.code, error.status_code, error.detail)
        assert row_counts() == (0, 0, 0), f"rows left behind after {error.code}"
        assert stored_keys() == [], f"objects left behind after {error.code}"
        assert _staged_files() == [], f"spool files left behind after {error.code}"
        return error.code
    try:
        image = RadiologyImage.objects.select_related("series__study").get(pk=result.image.pk)
        assert result.created
        assert row_counts() == (1, 1, 1)
        assert image.series.study.radiology_order_id == order.pk
        assert stored_keys() == [image.file_key]
        assert read_stored(image.file_key) == content
        assert (image.file_size, image.checksum) == (len(content), hashlib.sha256(content).hexdigest())
        assert _staged_files() == []
    finally:
        storage.delete_object(result.image.file_key)  # the next example starts from an empty store again
    return STORED


def isolated_outcome(make_order: MakeOrder, content: bytes) -> str:
    """ingest_outcome for a new order, inside a savepoint that is rolled back afterwards."""
    with transaction.atomic():
        outcome = ingest_outcome(make_order(), content)
        transaction.set_rollback(True)
    return outcome


# --- Seed files ---------------------------------------------------------------------------


def _dicom_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _nested(depth: int, *, undefined_lengths: bool) -> Dataset:
    """A dataset whose ContentSequence nests `depth` levels deep, innermost holding one code value."""
    inner = Dataset()
    inner.CodeValue = "FUZZ"
    for _level in range(depth):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        outer.ContentSequence.is_undefined_length = undefined_lengths
        inner.is_undefined_length_sequence_item = undefined_lengths
        inner = outer
    return inner


def tiny_mr() -> Dataset:
    """MR_small cut down to an 8 x 8 image: a valid, small file to build on."""
    dataset = pydicom.dcmread(sample_path("MR_small.dcm"))
    dataset.Rows = 8
    dataset.Columns = 8
    dataset.PixelData = bytes(range(128))
    del dataset.DataSetTrailingPadding
    return dataset


def tiny_mr_without(keyword: str) -> bytes:
    """The tiny MR with one element removed."""
    dataset = tiny_mr()
    delattr(dataset, keyword)
    return _dicom_bytes(dataset)


def deep_sequence_dicom(depth: int, *, undefined_lengths: bool) -> bytes:
    """The tiny MR carrying a ContentSequence nested `depth` levels, written by pydicom.

    (pydicom's writer needs memory exponential in the depth: 300 levels exhaust it.)
    """
    dataset = tiny_mr()
    dataset.ContentSequence = _nested(depth, undefined_lengths=undefined_lengths).ContentSequence
    return _dicom_bytes(dataset)


def crafted_deep_sequence(depth: int) -> bytes:
    """The tiny MR with a ContentSequence nested `depth` levels, all undefined lengths, spliced in as bytes."""
    base = _dicom_bytes(tiny_mr())
    pixel_data = base.rfind(b"\xe0\x7f\x10\x00")
    opening = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, UNDEFINED) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, UNDEFINED
    )
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    code_value = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 4) + b"FUZZ"
    return base[:pixel_data] + opening * depth + code_value + closing * depth + base[pixel_data:]


def dicom_pixel_bomb() -> bytes:
    """The tiny MR declaring 100,000 frames of 65535 x 65535 with 16 bytes of native pixel data."""
    dataset = tiny_mr()
    dataset.Rows = 65535
    dataset.Columns = 65535
    dataset.NumberOfFrames = 100000
    dataset.PixelData = b"\x00" * 16
    return _dicom_bytes(dataset)


def dicom_encapsulated_bomb() -> bytes:
    """JPEG-lossy declaring 100,000 frames of 65535 x 65535 around its single small fragment."""
    dataset = pydicom.dcmread(sample_path("JPEG-lossy.dcm"))
    dataset.Rows = 65535
    dataset.Columns = 65535
    dataset.NumberOfFrames = 100000
    return _dicom_bytes(dataset)


def small_jpeg() -> bytes:
    """A 64 x 48 Pillow JPEG with EXIF (the demo's photo, small)."""
    return jpeg_with_exif(width=64, height=48)


def _sof_offset(content: bytes) -> int | None:
    """Offset of the first baseline/progressive frame header (SOF0..SOF2) marker, if any."""
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        index = content.find(marker)
        if index >= 0:
            return index
    return None


def with_jpeg_dimensions(content: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header declaring width x height (the entropy data unchanged)."""
    offset = _sof_offset(content)
    if offset is None:
        return content
    # FFCx, length (2), precision (1), height (2), width (2)
    return content[: offset + 5] + struct.pack(">HH", height, width) + content[offset + 9 :]


def jpeg_pixel_bomb() -> bytes:
    """A tiny baseline JPEG whose frame header declares 60000 x 60000 pixels."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, format="JPEG", quality=50)
    return with_jpeg_dimensions(buffer.getvalue(), 60000, 60000)


def random_after_preamble(tail: bytes) -> bytes:
    return b"\x00" * 128 + b"DICM" + tail


SEEDS: dict[str, Callable[[], bytes]] = {
    "CT_small.dcm": lambda: sample_path("CT_small.dcm").read_bytes(),
    "MR_small.dcm": lambda: sample_path("MR_small.dcm").read_bytes(),
    "JPEG-lossy.dcm": lambda: sample_path("JPEG-lossy.dcm").read_bytes(),
    "photo.jpg": small_jpeg,
    "tiny_mr.dcm": lambda: _dicom_bytes(tiny_mr()),
    "deep_sq_64_defined.dcm": lambda: deep_sequence_dicom(64, undefined_lengths=False),
    "deep_sq_64_undefined.dcm": lambda: deep_sequence_dicom(64, undefined_lengths=True),
    "deep_sq_350_crafted.dcm": lambda: crafted_deep_sequence(350),
    "dicom_pixel_bomb.dcm": dicom_pixel_bomb,
    "dicom_encapsulated_bomb.dcm": dicom_encapsulated_bomb,
    "jpeg_pixel_bomb.jpg": jpeg_pixel_bomb,
}

# Hand-made files of the corpus (the seeds above that are not pydicom's own, and a few more).
HAND_MADE: dict[str, Callable[[], bytes]] = {
    "empty.bin": lambda: b"",
    "preamble_only.dcm": lambda: random_after_preamble(b""),
    "preamble_random.dcm": lambda: random_after_preamble(bytes(range(256)) * 4),
    "jpeg_signature_random.jpg": lambda: b"\xff\xd8\xff" + bytes(range(255, -1, -1)) * 4,
    "photo.jpg": small_jpeg,
    "jpeg_pixel_bomb.jpg": jpeg_pixel_bomb,
    "jpeg_9000x9000_tiny.jpg": lambda: with_jpeg_dimensions(small_jpeg(), 9000, 9000),
    "jpeg_zero_dimensions.jpg": lambda: with_jpeg_dimensions(small_jpeg(), 0, 0),
    "dicom_pixel_bomb.dcm": dicom_pixel_bomb,
    "dicom_encapsulated_bomb.dcm": dicom_encapsulated_bomb,
    "deep_sq_64_defined.dcm": lambda: deep_sequence_dicom(64, undefined_lengths=False),
    "deep_sq_64_undefined.dcm": lambda: deep_sequence_dicom(64, undefined_lengths=True),
    "deep_sq_350_crafted.dcm": lambda: crafted_deep_sequence(350),
    "tiny_mr.dcm": lambda: _dicom_bytes(tiny_mr()),
    "tiny_mr_without_study_uid.dcm": lambda: tiny_mr_without("StudyInstanceUID"),
}


_seed_cache: dict[str, bytes] = {}


def seed_bytes(name: str) -> bytes:
    if name not in _seed_cache:
        _seed_cache[name] = SEEDS[name]()
    return _seed_cache[name]


# --- Where things are in a file -------------------------------------------------------------

# Explicit VRs whose element header has 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


@dataclass(frozen=True)
class ElementHeader:
    """One top-level data element header of an explicit-VR little-endian Part 10 file."""

    tag: int
    vr_offset: int
    length_offset: int
    length_size: int  # 2 or 4 bytes
    length: int


def element_headers(content: bytes) -> list[ElementHeader]:
    """Top-level element headers after the preamble, up to the pixel data or an undefined length.

    Every seed is explicit VR little endian (the file meta group always is).
    """
    headers: list[ElementHeader] = []
    position = 132
    while position + 8 <= len(content):
        group, element = struct.unpack_from("<HH", content, position)
        vr = content[position + 4 : position + 6]
        if vr in LONG_VRS:
            if position + 12 > len(content):
                break
            length_offset, length_size = position + 8, 4
            length = struct.unpack_from("<I", content, length_offset)[0]
            value_offset = position + 12
        else:
            length_offset, length_size = position + 6, 2
            length = struct.unpack_from("<H", content, length_offset)[0]
            value_offset = position + 8
        headers.append(ElementHeader((group << 16) | element, position + 4, length_offset, length_size, length))
        if length == UNDEFINED or (group, element) == (0x7FE0, 0x0010):
            break
        position = value_offset + length
    return headers


def header_end(content: bytes) -> int:
    """Where the header ends: the pixel data element of a DICOM file, the scan start of a JPEG."""
    if content[128:132] == b"DICM":
        index = content.rfind(b"\xe0\x7f\x10\x00")
        return index if index > 0 else len(content)
    index = content.find(b"\xff\xda")
    return index if index > 0 else len(content)


# --- Mutations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Truncate:
    at: int

    def apply(self, content: bytes) -> bytes:
        return content[: self.at % (len(content) + 1)]


@dataclass(frozen=True)
class FlipHeaderBytes:
    positions: tuple[int, ...]
    mask: int

    def apply(self, content: bytes) -> bytes:
        end = header_end(content)
        if not end:
            return content
        changed = bytearray(content)
        for position in self.positions:
            changed[position % end] ^= self.mask
        return bytes(changed)


@dataclass(frozen=True)
class OverwriteHeader:
    position: int
    data: bytes

    def apply(self, content: bytes) -> bytes:
        end = header_end(content)
        if not end:
            return content
        start = self.position % end
        return content[:start] + self.data + content[start + len(self.data) :]


@dataclass(frozen=True)
class WrongLength:
    element: int
    length: int

    def apply(self, content: bytes) -> bytes:
        headers = element_headers(content)
        if not headers:
            return content
        header = headers[self.element % len(headers)]
        packed = struct.pack("<I", self.length) if header.length_size == 4 else struct.pack("<H", self.length & 0xFFFF)
        return content[: header.length_offset] + packed + content[header.length_offset + header.length_size :]


@dataclass(frozen=True)
class BadVR:
    element: int
    vr: bytes

    def apply(self, content: bytes) -> bytes:
        headers = element_headers(content)
        if not headers:
            return content
        header = headers[self.element % len(headers)]
        return content[: header.vr_offset] + self.vr + content[header.vr_offset + 2 :]


@dataclass(frozen=True)
class JpegDimensions:
    width: int
    height: int

    def apply(self, content: bytes) -> bytes:
        return with_jpeg_dimensions(content, self.width, self.height)


@dataclass(frozen=True)
class RandomBody:
    """Replace everything after the signature (DICOM preamble + DICM, or JPEG SOI) with random bytes."""

    tail: bytes

    def apply(self, content: bytes) -> bytes:
        if content[128:132] == b"DICM":
            return random_after_preamble(self.tail)
        return b"\xff\xd8\xff" + self.tail


Mutation = Truncate | FlipHeaderBytes | OverwriteHeader | WrongLength | BadVR | JpegDimensions | RandomBody

positions = st.integers(min_value=0, max_value=2**20)
lengths = st.one_of(
    st.sampled_from([0, 1, 2, 0xFFFF, 0xFFFE, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFF0]),
    st.integers(min_value=0, max_value=2**32 - 1),
)
vrs = st.one_of(
    st.sampled_from([b"ZZ", b"\x00\x00", b"SQ", b"OB", b"UN", b"UT", b"US", b"DA", b"UI", b"??", b"sq"]),
    st.binary(min_size=2, max_size=2),
)
dimensions = st.one_of(st.sampled_from([0, 1, 65535, 60000]), st.integers(min_value=0, max_value=65535))
mutations: st.SearchStrategy[Mutation] = st.one_of(
    st.builds(Truncate, at=positions),
    st.builds(FlipHeaderBytes, positions=st.tuples(positions, positions), mask=st.integers(1, 255)),
    st.builds(OverwriteHeader, position=positions, data=st.binary(min_size=1, max_size=8)),
    st.builds(WrongLength, element=positions, length=lengths),
    st.builds(BadVR, element=positions, vr=vrs),
    st.builds(JpegDimensions, width=dimensions, height=dimensions),
    st.builds(RandomBody, tail=st.binary(max_size=512)),
)


@dataclass(frozen=True)
class FuzzCase:
    seed: str
    mutations: tuple[Mutation, ...]

    def content(self) -> bytes:
        data = seed_bytes(self.seed)
        for mutation in self.mutations:
            data = mutation.apply(data)
        return data


fuzz_cases = st.builds(
    FuzzCase,
    seed=st.sampled_from(sorted(SEEDS)),
    mutations=st.lists(mutations, min_size=1, max_size=3).map(tuple),
)


# --- Tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_file_outcome_is_known(radiology_store: str, make_order: MakeOrder, name: str) -> None:
    """The unmutated seeds: pydicom's and Pillow's files are stored; the bombs are refused."""
    refused = {
        "dicom_pixel_bomb.dcm": "truncated_file",
        # Its one small JPEG fragment cannot hold 100,000 frames of 65535 x 65535 (see dicom._check_plausible).
        "dicom_encapsulated_bomb.dcm": "implausible_pixel_data",
        "jpeg_pixel_bomb.jpg": "invalid_jpeg",
        "deep_sq_350_crafted.dcm": "invalid_dicom",
    }

    assert isolated_outcome(make_order, seed_bytes(name)) == refused.get(name, STORED)


def test_mutated_files_are_stored_whole_or_refused_without_a_trace(radiology_store: str, make_order: MakeOrder) -> None:
    outcomes: dict[str, int] = {}

    @settings(
        max_examples=FILESYSTEM_EXAMPLES if radiology_store == "filesystem" else S3_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=fuzz_cases)
    def ingest_mutated(case: FuzzCase) -> None:
        outcome = isolated_outcome(make_order, case.content())
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    ingest_mutated()

    # The mutations reached both ends: some files still stored, several kinds of refusal.
    assert outcomes.get(STORED, 0) >= 1, outcomes
    assert len(set(outcomes) - {STORED}) >= 3, outcomes


def _corpus_files() -> list[str]:
    return sorted(path.name for path in CORPUS.iterdir() if path.name not in ("README.md", EXPECTED_FILE.name))


def test_corpus_is_small_and_every_file_has_an_expected_outcome() -> None:
    expected = json.loads(EXPECTED_FILE.read_text())
    sizes = {name: (CORPUS / name).stat().st_size for name in _corpus_files()}

    assert sorted(expected) == sorted(sizes)
    assert max(sizes.values()) <= 16 * 1024, sizes
    assert sum(sizes.values()) < 500 * 1024


@pytest.mark.parametrize("name", _corpus_files())
def test_corpus_file(radiology_store: str, make_order: MakeOrder, name: str) -> None:
    """Every kept input still ends as recorded: stored whole, or refused with this code and no trace."""
    expected = json.loads(EXPECTED_FILE.read_text())[name]

    assert isolated_outcome(make_order, (CORPUS / name).read_bytes()) == expected


def write_hand_made_corpus() -> None:
    """Write the hand-made corpus files (the fuzzed ones are kept as they were found)."""
    CORPUS.mkdir(exist_ok=True)
    for name, build in HAND_MADE.items():
        (CORPUS / name).write_bytes(build())
        print(f"{name}: {(CORPUS / name).stat().st_size} bytes", file=sys.stderr)
