"""apps.radiology.fastpaths.dicom_json_fast: dicom_json's hand-written path gives exactly what pydicom gives.

Every file pydicom can read (its bundled test and character set files, the ingest fuzz
corpus) and a set of hand-encoded data sets aimed at each rule and each fallback are read
as parse_dicom reads them, converted by dicom_json (fast) and by _dicom_json_pydicom (the
reference), and compared value by value: keys, their order, values and value types. An
error must be the same error, since parse_dicom turns it into a refusal.
"""

from __future__ import annotations

import contextlib
import json
import struct
import warnings
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import config
from pydicom.data import get_charset_files, get_testdata_files
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from apps.radiology.fastpaths import dicom_json_fast
from apps.radiology.imagefiles import dicom
from apps.radiology.imagefiles.dicom import BULK_THRESHOLD, _dicom_json_pydicom, dicom_json

CORPUS_DIR = Path(__file__).parent.parent / "fuzz_corpus"
UNDEFINED = 0xFFFFFFFF
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


# --- Reading and comparing ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fast_path_on_the_installed_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every comparison here runs the fast path, whatever pydicom is installed.

    Outside these tests an unchecked pydicom sends everything to pydicom, so comparing would
    compare pydicom with itself. After an upgrade this file therefore says whether the rules
    still hold on the new release before it is added to CHECKED_PYDICOM_VERSIONS
    (test_private_api_versions.py fails until it is).
    """
    installed = frozenset({pydicom.__version__})
    monkeypatch.setattr(
        dicom_json_fast, "CHECKED_PYDICOM_VERSIONS", dicom_json_fast.CHECKED_PYDICOM_VERSIONS | installed
    )


@contextlib.contextmanager
def read_as_parse_dicom(path: Path, *, checked: bool = False) -> Iterator[pydicom.Dataset]:
    """The data set as parse_dicom has it when it calls dicom_json (the file still open).

    checked: also run parse_dicom's earlier checks, which convert a few elements (SOP Class
    UID, Rows, ...) so that dicom_json meets them already converted.
    """
    with warnings.catch_warnings(), path.open("rb") as handle:
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(handle, defer_size=BULK_THRESHOLD, stop_before_pixels=True)
        if checked:
            with contextlib.suppress(Exception):  # a refusal here is not what is tested
                dicom.locate_pixel_data(handle, dataset, handle.tell(), path.stat().st_size)
        yield dataset


def typed(node: Any) -> Any:
    """`node` with every dict, list and scalar tagged by its type, so == compares types and order too.

    pydicom's str subclasses (UID) count as str: they are str to json and jsonb alike.
    """
    if isinstance(node, dict):
        return ("dict", [(key, typed(value)) for key, value in node.items()])
    if isinstance(node, list):
        return ("list", [typed(item) for item in node])
    if isinstance(node, str):
        return ("str", str(node))
    if type(node) is float:
        return ("float", repr(node))  # repr: NaN equals NaN, -0.0 differs from 0.0
    return (type(node).__name__, node)


def outcome(convert: Callable[[pydicom.Dataset], dict[str, Any]], path: Path, *, checked: bool = False) -> Any:
    """What `convert` makes of the file: its typed JSON, or the type of the error it raised."""
    with read_as_parse_dicom(path, checked=checked) as dataset, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return typed(convert(dataset))
        except Exception as exc:
            return ("raised", type(exc).__name__)


def assert_same_as_pydicom(path: Path, *, checked: bool = False) -> dict[str, Any]:
    """dicom_json equals _dicom_json_pydicom on the file, each on its own fresh read; returns it."""
    fast = outcome(dicom_json, path, checked=checked)
    reference = outcome(_dicom_json_pydicom, path, checked=checked)
    assert fast == reference
    if fast[0] == "dict":
        with read_as_parse_dicom(path, checked=checked) as dataset:
            as_json = dicom_json(dataset)
        # What is stored: the jsonb text must be the same too.
        with read_as_parse_dicom(path, checked=checked) as dataset:
            assert json.dumps(as_json) == json.dumps(_dicom_json_pydicom(dataset))
        return as_json
    return {}


def _readable(path: Path) -> bool:
    try:
        with read_as_parse_dicom(path):
            return True
    except Exception:
        return False


def _corpus() -> list[Path]:
    candidates = [Path(name) for name in [*get_testdata_files(), *get_charset_files()]]
    candidates += sorted(path for path in CORPUS_DIR.iterdir() if path.is_file())
    # Files pydicom cannot read at all never reach dicom_json (parse_dicom refuses them first).
    return [path for path in candidates if _readable(path)]


CORPUS = _corpus()


def _corpus_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


# --- Files ----------------------------------------------------------------------------------


def test_corpus_holds_the_files_expected() -> None:
    names = {path.name for path in CORPUS}
    assert len(CORPUS) >= 40
    # Explicit, implicit and big endian; ISO 2022 and single-byte character sets; a fuzz find.
    for name in (
        "CT_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "chrJapMulti.dcm",
        "chrGerm.dcm",
        "chrSQEncoding.dcm",
        "deep_sq_64_undefined.dcm",
    ):
        assert name in names


@pytest.mark.parametrize("checked", [False, True], ids=["as-read", "after-checks"])
@pytest.mark.parametrize("path", CORPUS, ids=_corpus_id)
def test_file_json_is_pydicoms(path: Path, checked: bool) -> None:
    assert_same_as_pydicom(path, checked=checked)


def test_ct_small_is_converted_without_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    """The speed-up is real: on a CT header only elements pydicom already converted go to pydicom."""
    slow: list[str] = []
    pydicom_element = dicom._element_json_pydicom

    def counting(element: Any) -> dict[str, Any] | None:
        slow.append(f"{element.tag:08X}")
        return pydicom_element(element)

    monkeypatch.setattr(dicom, "_element_json_pydicom", counting)
    path = Path(pydicom.data.get_testdata_file("CT_small.dcm"))

    with read_as_parse_dicom(path) as dataset:
        as_json = dicom_json(dataset)

    # Specific Character Set (converted by dcmread) and Pixel Representation (converted by
    # pydicom when it parses the header's sequence, to fix ambiguous VRs inside it).
    assert slow == ["00080005", "00280103"]
    assert len(as_json) == 255  # of 256: a private OB of 2068 bytes is bulk data
    assert "00431029" not in as_json
    assert as_json["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]}
    assert as_json["00200032"] == {"vr": "DS", "Value": [-158.135803, -179.035797, -75.699997]}
    assert as_json["00280010"] == {"vr": "US", "Value": [128]}
    assert_same_as_pydicom(path)


# --- Hand-encoded data sets -----------------------------------------------------------------


def explicit(tag: int, vr: str, value: bytes, *, length: int | None = None) -> bytes:
    """One explicit VR little endian element, its bytes exactly as given (no padding)."""
    length = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in LONG_VRS:
        return head + struct.pack("<HI", 0, length) + value
    return head + struct.pack("<H", length) + value


def implicit(tag: int, value: bytes, *, length: int | None = None) -> bytes:
    length = len(value) if length is None else length
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length) + value


def item(content: bytes, *, defined: bool = True) -> bytes:
    if defined:
        return struct.pack("<HHI", 0xFFFE, 0xE000, len(content)) + content
    return struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED) + content + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)


def sequence(tag: int, items: list[bytes], *, defined: bool = True, vr: str | None = "SQ") -> bytes:
    """A sequence; vr=None encodes it implicit VR."""
    content = b"".join(items)
    if not defined:
        content += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    length = len(content) if defined else UNDEFINED
    if vr is None:
        return implicit(tag, content, length=length)
    return explicit(tag, vr, content, length=length)


def part10(tmp_path: Path, body: bytes, *, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    """A Part 10 file: preamble, file meta, then `body` (the data set's elements, as encoded)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = transfer_syntax
    buffer = BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path = tmp_path / "case.dcm"
    path.write_bytes(buffer.getvalue() + body)
    return path


def charset(value: bytes) -> bytes:
    return explicit(0x00080005, "CS", value)


# name -> the data set's elements. Tags need not be in order; each case is one file.
EXPLICIT_CASES: dict[str, bytes] = {
    "strings": b"".join(
        [
            explicit(0x00080008, "CS", b"ORIGINAL\\PRIMARY\\AXIAL "),
            explicit(0x00080020, "DA", b"20240131"),
            explicit(0x00080030, "TM", b"101010.123 "),
            explicit(0x0008002A, "DT", b"20240131101010 "),
            explicit(0x00101010, "AS", b"045Y"),
            explicit(0x00020016, "AE", b" STORE SCP  \\B "),
            explicit(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7\x00"),
            explicit(0x00081150, "UI", b" 1.2.3 \\4.5.6\x00"),
            explicit(0x00081190, "UR", b"http://example.org/a b  "),
            explicit(0x00081030, "LO", b"Head\\Neck  "),
            explicit(0x00080050, "SH", b"ACC123  "),
            explicit(0x00184000, "LT", b"line one\r\nline two\\with backslash  "),
            explicit(0x00204000, "LT", b"  leading kept"),
            explicit(0x00081080, "LO", b"\\\\"),
            explicit(0x0040A160, "UT", b"unlimited text "),
            explicit(0x00400280, "ST", b"short text\x00"),
            explicit(0x00189004, "CS", b"A\\\\B"),
        ]
    ),
    "empty values of every vr": b"".join(
        explicit(0x00111000 + index, vr, b"")
        for index, vr in enumerate(
            [
                "AE",
                "AS",
                "AT",
                "CS",
                "DA",
                "DS",
                "DT",
                "FD",
                "FL",
                "IS",
                "LO",
                "LT",
                "OB",
                "OD",
                "OF",
                "OL",
                "OV",
                "OW",
                "PN",
                "SH",
                "SL",
                "SQ",
                "SS",
                "ST",
                "SV",
                "TM",
                "UC",
                "UI",
                "UL",
                "UN",
                "UR",
                "US",
                "UT",
                "UV",
            ]
        )
    ),
    "blank values": b"".join(
        [
            explicit(0x00080060, "CS", b"  "),
            explicit(0x00200011, "IS", b"  "),
            explicit(0x00180050, "DS", b"  "),
            explicit(0x00100010, "PN", b"  "),
            explicit(0x00100020, "LO", b"  "),
            explicit(0x0020000D, "UI", b"\x00\x00"),
            explicit(0x00080090, "PN", b"=="),
            explicit(0x00080080, "LO", b"\x00"),
        ]
    ),
    "nul characters": b"".join(
        [
            explicit(0x00100020, "LO", b"ID\x0012\x00"),
            explicit(0x00100010, "PN", b"Doe\x00^John\x00=\x00"),
            explicit(0x00080060, "CS", b"\x00\\"),
            explicit(0x00080070, "LO", b"A\x00\\B\x00"),
            explicit(0x00081010, "SH", b"\x00\x00"),
            explicit(0x00200010, "SH", b"\x00A"),
            explicit(0x00184000, "LT", b"\x00text\x00"),
            explicit(0x00020016, "AE", b"AE\x00"),
        ]
    ),
    "person names": b"".join(
        [
            explicit(0x00100010, "PN", b"Yamada^Tarou=Ideo^Graphic=Pho^Netic "),
            explicit(0x00080090, "PN", b"=Ideographic only"),
            explicit(0x00081050, "PN", b"One^Two\\Three^Four=Five"),
            explicit(0x00081060, "PN", b"Alpha=Beta=="),
            explicit(0x00081070, "PN", b"^^^^"),
            explicit(0x00100050, "PN", b"A=B=C=D"),
        ]
    ),
    "person name list with an empty name (pydicom raises)": explicit(0x00081050, "PN", b"Doe^John\\"),
    "numbers": b"".join(
        [
            explicit(0x00280010, "US", struct.pack("<H", 512)),
            explicit(0x00280011, "US", struct.pack("<3H", 1, 2, 65535)),
            explicit(0x00280106, "SS", struct.pack("<2h", -32768, 7)),
            explicit(0x00091001, "UL", struct.pack("<I", 4294967295)),
            explicit(0x00091002, "SL", struct.pack("<2i", -5, 2147483647)),
            explicit(0x00091003, "FL", struct.pack("<f", 0.1)),
            explicit(0x00091004, "FL", struct.pack("<3f", 1.5, -2.25, 1e30)),
            explicit(0x00091005, "FD", struct.pack("<d", 0.1)),
            explicit(0x00091006, "FD", struct.pack("<2d", float("inf"), -0.0)),
            explicit(0x00091007, "SV", struct.pack("<q", -(2**62))),
            explicit(0x00091008, "UV", struct.pack("<2Q", 2**64 - 1, 3)),
            explicit(0x00091009, "FD", struct.pack("<d", float("nan"))),
            explicit(0x00090010, "LO", b"CREATOR "),
        ]
    ),
    "number with a length pydicom refuses": explicit(0x00280010, "US", b"\x01\x02\x03"),
    "lut descriptors": b"".join(
        [
            explicit(0x00281101, "US", struct.pack("<3H", 0, 0, 16)),
            explicit(0x00281102, "SS", struct.pack("<3h", -1, -2, 16)),
            explicit(0x00281103, "SS", struct.pack("<h", -1)),
        ]
    ),
    "attribute tags": b"".join(
        [
            explicit(0x00209165, "AT", struct.pack("<HH", 0x0020, 0x9056)),
            explicit(0x00209167, "AT", struct.pack("<4H", 0x0018, 0x9344, 0x7FE0, 0x0010)),
            explicit(0x00209213, "AT", struct.pack("<HH", 0, 0)),
        ]
    ),
    "attribute tag of 6 bytes": explicit(0x00209165, "AT", b"\x20\x00\x56\x90\x01\x00"),
    "decimal strings": b"".join(
        [
            explicit(0x00180050, "DS", b"2.5 "),
            explicit(0x00200032, "DS", b"-158.135803\\-179.035797\\-75.699997"),
            explicit(0x00200037, "DS", b"1\\0.\\.5\\+1e3\\-2E-2\\ 7 "),
            explicit(0x00281050, "DS", b"  40"),
            explicit(0x00281051, "DS", b"0400"),
            explicit(0x00181110, "DS", b"1e999"),
        ]
    ),
    "decimal string nan": explicit(0x00180050, "DS", b"nan "),
    "decimal string with comma": explicit(0x00180050, "DS", b"2,5 "),
    "decimal string with underscore": explicit(0x00180050, "DS", b"1_0 "),
    "decimal string with an empty value (pydicom raises)": explicit(0x00200032, "DS", b"1\\\\2 "),
    "decimal string with a tab": explicit(0x00180050, "DS", b"\t2\\3"),
    "decimal string letters": explicit(0x00180050, "DS", b"abc "),
    "integer strings": b"".join(
        [
            explicit(0x00200013, "IS", b"12"),
            explicit(0x00200011, "IS", b" -3 "),
            explicit(0x00200012, "IS", b"+7\\007\\0"),
            explicit(0x00280008, "IS", b"999999999999"),
        ]
    ),
    "integer string float": explicit(0x00200013, "IS", b"1.0 "),
    "integer string fraction": explicit(0x00200013, "IS", b"1.5 "),
    "integer string huge": explicit(0x00200013, "IS", b"123456789012345678901234"),
    "integer string letters": explicit(0x00200013, "IS", b"1a"),
    "integer string with an empty value": explicit(0x00200013, "IS", b"1\\\\2"),
    "integer string tab": explicit(0x00200013, "IS", b"\t"),
    "binary values": b"".join(
        [
            explicit(0x00091010, "OB", b"\x01\x02\x03\x04"),
            explicit(0x00091011, "OW", bytes(range(256)) * 3),  # 768: inline
            explicit(0x00091012, "OB", b"\x00" * 770),  # over 768 and up to 1024: pydicom marks it bulk
            explicit(0x00091013, "OB", b"\x00" * 2000),  # over 1024: skipped unread
            explicit(0x00091014, "OD", struct.pack("<2d", 1.0, 2.0)),
            explicit(0x00091015, "OF", struct.pack("<f", 1.0)),
            explicit(0x00091016, "OL", struct.pack("<I", 1)),
            explicit(0x00091017, "OV", struct.pack("<Q", 1)),
            explicit(0x00091018, "UN", b"\x01\x02"),
            explicit(0x00100010, "UN", b"Doe^Jane"),  # UN on a known tag: pydicom uses the dictionary's VR
            explicit(0x00090010, "LO", b"CREATOR "),
        ]
    ),
    "odd binary length": explicit(0x00091010, "OB", b"\x01\x02\x03"),
    "unknown vr": explicit(0x00091010, "XY", b"\x01\x02"),
    "long text deferred": explicit(0x00184000, "LT", b"x" * 3000 + b"  "),
    "sequences": b"".join(
        [
            sequence(
                0x00081140,
                [
                    item(explicit(0x00081150, "UI", b"1.2.3\x00") + explicit(0x00081155, "UI", b"1.2.3.4\x00")),
                    item(b""),
                    item(explicit(0x00081160, "IS", b"1\\2 "), defined=False),
                ],
            ),
            sequence(0x00082112, [], defined=False),
            sequence(0x00082111, []),
            sequence(
                0x00400275,
                [
                    item(
                        explicit(0x00321060, "LO", b"Head")
                        + sequence(
                            0x00400008,
                            [item(explicit(0x00080100, "SH", b"CODE") + explicit(0x00080104, "LO", b"Meaning "))],
                            defined=False,
                        )
                        + explicit(0x00091010, "OB", b"\x00" * 900)  # nested bulk: dropped
                        + explicit(0x00091011, "OB", b"\x01\x02")
                        + explicit(0x00090010, "LO", b"CREATOR "),
                        defined=False,
                    )
                ],
                defined=False,
            ),
            # More than 1024 bytes: deferred by dcmread, read again from the file.
            sequence(0x00400260, [item(explicit(0x00080104, "LO", b"y" * 60)) for _ in range(20)]),
        ]
    ),
    "latin-1 character set": charset(b"ISO_IR 100")
    + explicit(0x00100010, "PN", "Müller^Jürgen=Ærø".encode("latin-1"))
    + explicit(0x00081030, "LO", "Épaule\\Genoux ".encode("latin-1"))
    + explicit(0x00184000, "LT", "Über°".encode("latin-1")),
    "default character set with high bytes": explicit(0x00100010, "PN", "Müller^Zoë".encode("latin-1"))
    + explicit(0x00081030, "LO", b"\xe9\xff"),
    "utf-8 character set": charset(b"ISO_IR 192")
    + explicit(0x00100010, "PN", "Ďurović^Öß=山田^太郎".encode())
    + explicit(0x00081030, "LO", "脳 MRI\\Kopf".encode()),
    "utf-8 character set with a bad byte": charset(b"ISO_IR 192") + explicit(0x00081030, "LO", b"ok\xff "),
    "cyrillic character set": charset(b"ISO_IR 144")
    + explicit(0x00100010, "PN", "\u041b\u044e\u043a\u0441\u0435\u043c\u0431\u0443\u0440\u0433".encode("iso8859_5")),
    "escape in a single character set": charset(b"ISO_IR 100") + explicit(0x00081030, "LO", b"a\x1b(Bb"),
    "misspelt character set": charset(b"ISO-IR 100") + explicit(0x00100010, "PN", "Müller".encode("latin-1")),
    "unknown character set": charset(b"NOT A CHARSET") + explicit(0x00100010, "PN", "Müller".encode("latin-1")),
    "iso 2022 character sets": charset(b"\\ISO 2022 IR 87")
    + explicit(0x00100010, "PN", b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B")
    + explicit(0x00081030, "LO", b"plain"),
    "sequence item with its own character set": charset(b"ISO_IR 100")
    + sequence(
        0x00400275,
        [
            item(charset(b"ISO_IR 192") + explicit(0x00100010, "PN", "Ďurović".encode())),
            item(explicit(0x00100010, "PN", "Müller".encode("latin-1"))),
        ],
    ),
}


@pytest.mark.parametrize("body", EXPLICIT_CASES.values(), ids=EXPLICIT_CASES.keys())
def test_explicit_vr_data_set_json_is_pydicoms(tmp_path: Path, body: bytes) -> None:
    path = part10(tmp_path, body)
    assert_same_as_pydicom(path)
    assert_same_as_pydicom(path, checked=True)


IMPLICIT_CASES: dict[str, bytes] = {
    "public tags": b"".join(
        [
            implicit(0x00080060, b"CT"),
            implicit(0x00100010, b"Doe^John"),
            implicit(0x00280010, struct.pack("<H", 64)),
            implicit(0x00200032, b"1\\2\\3 "),
            implicit(0x00209165, struct.pack("<HH", 0x0020, 0x9056)),
            implicit(0x00080000, struct.pack("<I", 10)),  # a group length
        ]
    ),
    "ambiguous vrs": b"".join(
        [
            implicit(0x00280103, struct.pack("<H", 1)),  # pixel representation: signed
            implicit(0x00280106, struct.pack("<h", -100)),  # US or SS
            implicit(0x00281101, struct.pack("<3H", 0, 0, 16)),  # LUT descriptor
            implicit(0x60003000, b"\x01\x02"),  # overlay data: OB or OW
            sequence(
                0x00283010,
                [item(implicit(0x00283002, struct.pack("<3H", 2, 0, 16)) + implicit(0x00283006, b"\x01\x00\x02\x00"))],
                vr=None,
            ),
        ]
    ),
    "private tags": b"".join(
        [
            implicit(0x00090010, b"GEMS_IDEN_01"),
            implicit(0x00091001, b"CT01"),
            implicit(0x00091002, b"\x01\x02\x03\x04"),
            implicit(0x00190010, b"UNKNOWN CREATOR "),
            implicit(0x00191001, b"\x05\x06"),
            implicit(0x00191101, b"no creator"),
            implicit(0x00990001, b"\x01\x02"),
        ]
    ),
    "unknown public tag": implicit(0x00080001, b"\x01\x02"),
    "sequences": sequence(
        0x00081140, [item(implicit(0x00081150, b"1.2.3\x00"), defined=False), item(b"")], defined=False, vr=None
    )
    + sequence(0x00082112, [item(implicit(0x00081155, b"1.2.3.4\x00"))], vr=None),
}


@pytest.mark.parametrize("body", IMPLICIT_CASES.values(), ids=IMPLICIT_CASES.keys())
def test_implicit_vr_data_set_json_is_pydicoms(tmp_path: Path, body: bytes) -> None:
    path = part10(tmp_path, body, transfer_syntax=ImplicitVRLittleEndian)
    assert_same_as_pydicom(path)
    assert_same_as_pydicom(path, checked=True)


def test_values_come_out_as_the_json_model_says(tmp_path: Path) -> None:
    """A few results spelled out, so that a bug shared with pydicom's path would show here."""
    body = b"".join(
        [
            explicit(0x00100010, "PN", b"Yamada^Tarou=Ideo^Graphic=Pho^Netic "),
            explicit(0x00100020, "LO", b"ID\x0012\x00"),
            explicit(0x00200032, "DS", b"1\\2.5\\-3 "),
            explicit(0x00200013, "IS", b" 7 "),
            explicit(0x00209165, "AT", struct.pack("<HH", 0x0020, 0x9056)),
            explicit(0x00280011, "US", struct.pack("<2H", 1, 2)),
            explicit(0x00091010, "OB", b"\x01\x02\x03\x04"),
            explicit(0x00091012, "OB", b"\x00" * 800),
            explicit(0x00080060, "CS", b""),
            sequence(0x00081140, [item(explicit(0x00081150, "UI", b"1.2.3\x00")), item(b"")]),
        ]
    )

    as_json = assert_same_as_pydicom(part10(tmp_path, body))

    assert as_json == {
        "00100010": {
            "vr": "PN",
            "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "Ideo^Graphic", "Phonetic": "Pho^Netic"}],
        },
        "00100020": {"vr": "LO", "Value": ["ID12"]},
        "00200032": {"vr": "DS", "Value": [1.0, 2.5, -3.0]},
        "00200013": {"vr": "IS", "Value": [7]},
        "00209165": {"vr": "AT", "Value": ["00209056"]},
        "00280011": {"vr": "US", "Value": [1, 2]},
        "00091010": {"vr": "OB", "InlineBinary": "AQIDBA=="},
        "00080060": {"vr": "CS"},
        "00081140": {"vr": "SQ", "Value": [{"00081150": {"vr": "UI", "Value": ["1.2.3"]}}, {}]},
    }
    assert type(as_json["00200013"]["Value"][0]) is int
    assert type(as_json["00200032"]["Value"][0]) is float


# --- When pydicom converts everything -------------------------------------------------------
# (Whether the installed pydicom is one CHECKED_PYDICOM_VERSIONS names, and its private names
# the fast path reads: test_private_api_versions.py, with the other fast paths' guards.)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda monkeypatch: monkeypatch.setattr(pydicom, "__version__", "9.0.0"), id="other-version"),
        pytest.param(lambda monkeypatch: monkeypatch.setattr(config, "datetime_conversion", True), id="datetimes"),
        pytest.param(lambda monkeypatch: monkeypatch.setattr(config, "use_DS_decimal", True), id="ds-decimal"),
        pytest.param(
            lambda monkeypatch: monkeypatch.setattr(config.settings, "_reading_validation_mode", config.RAISE),
            id="raise-on-invalid",
        ),
        pytest.param(
            lambda monkeypatch: monkeypatch.setattr(config, "data_element_callback", lambda raw, **_: raw),
            id="element-callback",
        ),
    ],
)
def test_pydicom_away_from_its_defaults_converts_everything(
    monkeypatch: pytest.MonkeyPatch, change: Callable[[pytest.MonkeyPatch], None]
) -> None:
    change(monkeypatch)

    def not_called(*_args: Any, **_kwargs: Any) -> dict[str, Any]:
        raise AssertionError("the fast path ran")

    monkeypatch.setattr(dicom, "fast_dicom_json", not_called)
    path = Path(pydicom.data.get_testdata_file("MR_small.dcm"))
    with read_as_parse_dicom(path) as dataset:
        as_json = dicom_json(dataset)
    assert "0020000D" in as_json


def test_nan_and_infinity_are_null_on_both_paths(tmp_path: Path) -> None:
    """JSON has no NaN nor infinity: the model's empty value (null) stands for them, top level and nested."""
    nested = sequence(0x00540016, [item(explicit(0x00181074, "DS", b"NaN ") + explicit(0x00189328, "FD", b"\0" * 8))])
    body = (
        explicit(0x00091009, "FD", struct.pack("<4d", float("nan"), float("inf"), 1.5, float("-inf")))
        + explicit(0x00090010, "LO", b"CREATOR ")
        + explicit(0x00189327, "FD", struct.pack("<d", float("nan")))
        + explicit(0x00280034, "IS", b"1\\1 ")
        + nested
        + explicit(0x00660016, "FL", struct.pack("<2f", float("inf"), 2.0))
    )
    as_json = assert_same_as_pydicom(part10(tmp_path, body))

    assert as_json["00091009"] == {"vr": "FD", "Value": [None, None, 1.5, None]}
    assert as_json["00189327"] == {"vr": "FD", "Value": [None]}
    assert as_json["00660016"] == {"vr": "FL", "Value": [None, 2.0]}
    assert as_json["00540016"]["Value"][0]["00181074"] == {"vr": "DS", "Value": [None]}
    assert "NaN" not in json.dumps(as_json) and "Infinity" not in json.dumps(as_json)
