"""DICOM JSON (PS3.18 F) straight from the raw elements pydicom read, for ingest.

Hand-written on purpose: pydicom's own route (``Dataset[tag]`` converting each raw element,
then ``DataElement.to_json_dict``) cost ~4-6 ms per CT header, most of the ~2 ms ingest
budget per instance. This module decodes the common value types from the raw bytes itself
and must give exactly what ``apps.radiology.imagefiles.dicom._dicom_json_pydicom`` gives: same keys,
order, values and value types. The rules below mirror pydicom 3.0.2 (values.py, dataelem.py,
valuerep.py, charset.py); the comment on each says which pydicom function it stands for.

Anything not certain to come out identical goes to pydicom, per element: sequences are
parsed by pydicom (their items then come back here), and so are deferred values, ambiguous
or unknown VRs (US or SS, UN, ...), LUT descriptors, big endian, undefined lengths, text
with ISO 2022 escapes or in a character set outside ``SIMPLE_CODECS``, bytes the character
set cannot decode, DS/IS strings that are not plain numbers, numbers whose length is not a
multiple of their size, and person names pydicom itself cannot put into JSON. When pydicom
is configured away from its defaults, or is not the version checked, the whole data set
goes to pydicom.

Pinned: the rules were checked against the pydicom releases in CHECKED_PYDICOM_VERSIONS
(requirements.txt pins 3.0.2). On any other release fast_path_supported() is False and
apps.radiology.imagefiles.dicom.dicom_json uses pydicom's own conversion (the same JSON, only
slower) until someone re-runs tests/fastpaths/test_dicom_json_fast.py against the new release
and adds it; tests/fastpaths/test_private_api_versions.py fails meanwhile.

Private pydicom API: ``Dataset._character_set`` (the character set Dataset.__getitem__ decodes
text with, inherited from the parent data set in a sequence item), read only while the fast
path runs. pydicom's private ``pydicom.tag._LUT_DESCRIPTOR_TAGS`` is copied here rather than
imported, so an upgrade that drops it still imports this module (and falls back); the version
test checks the copy is still pydicom's.
"""

from __future__ import annotations

import base64
import math
import re
import struct
from collections.abc import Callable
from typing import Any, Final

import pydicom
import pydicom.valuerep
from pydicom import config, hooks
from pydicom.charset import default_encoding
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

# The pydicom releases these rules were checked against, line by line. Another release falls
# back to pydicom (correct, only slower) until someone re-checks and adds it here; a test
# (test_private_api_versions.py) fails meanwhile so the slowdown is noticed.
CHECKED_PYDICOM_VERSIONS: Final = frozenset({"3.0.2"})

# Single-codec character sets (what pydicom.charset.convert_encodings returns for one value of
# Specific Character Set) whose strict decoding and re-encoding are plain Python codecs:
# "" / ISO_IR 6 -> iso8859 (pydicom decodes the default repertoire as Latin-1), ISO_IR 100,
# ISO_IR 192, and the other single-byte ISO 8859 parts. Multi-byte Asian sets (with their
# custom encoders for person names) and multi-valued ones (ISO 2022) go to pydicom.
SIMPLE_CODECS: Final = frozenset(
    {
        default_encoding,
        "latin_1",
        "UTF8",
        "iso8859_2",
        "iso8859_3",
        "iso8859_4",
        "iso_ir_126",
        "iso_ir_127",
        "iso_ir_138",
        "iso_ir_144",
        "iso_ir_148",
        "iso_ir_166",
    }
)

_UNDEFINED_LENGTH: Final = 0xFFFFFFFF
_ESC: Final = b"\x1b"
_LATIN_1: Final = "latin_1"  # pydicom's default_encoding "iso8859" is this codec
# Strings pydicom turns into exactly float(item) / int(item): no "nan", "1_000", "0x1", tabs.
_PLAIN_DS = re.compile(r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *")
# At most 15 digits: IS keeps a value only while int(item) == float(item), and a float holds
# every integer of up to 15 digits exactly.
_PLAIN_IS = re.compile(r" *[+-]?[0-9]{1,15} *")
# A whole multi-valued DS or IS string, items joined by backslashes: one regex call per value
# instead of one per item (CT headers hold IS and DS values with thousands of items).
_PLAIN_DS_LIST = re.compile(rf"{_PLAIN_DS.pattern}(?:\\{_PLAIN_DS.pattern})*")
_PLAIN_IS_LIST = re.compile(rf"{_PLAIN_IS.pattern}(?:\\{_PLAIN_IS.pattern})*")
# VR -> (struct code, size): the little endian standard sizes pydicom's convert_numbers uses.
_NUMBER_FORMATS: Final = {
    vr: (code, struct.calcsize(f"={code}"))
    for vr, code in {"US": "H", "SS": "h", "UL": "L", "SL": "l", "UV": "Q", "SV": "q", "FL": "f", "FD": "d"}.items()
}
# hooks.raw_element_value adds 65536 to a negative first value of these (US or SS) tags:
# Red/Green/Blue Palette Color LUT Descriptor and LUT Descriptor (pydicom.tag._LUT_DESCRIPTOR_TAGS).
_LUT_DESCRIPTORS: Final = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})
_BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
_FLOAT_VRS: Final = frozenset({"FL", "FD"})
_SLOW: Final = object()  # "let pydicom convert this element"

ElementJson = Callable[[DataElement], "dict[str, Any] | None"]
TopLevelBulk = Callable[[BaseTag, Any], bool]


def fast_path_supported() -> bool:
    """Whether pydicom is the checked version with the settings the rules here assume.

    Each of these changes what pydicom decodes (DS as Decimal or numpy, dates as objects,
    None for empty text, callbacks rewriting raw elements) or makes it raise where the fast
    path would not (RAISE validation), so any of them sends the whole data set to pydicom.
    """
    return (
        pydicom.__version__ in CHECKED_PYDICOM_VERSIONS
        and config.settings.reading_validation_mode != config.RAISE
        and not config.use_DS_numpy
        and not config.use_IS_numpy
        and not config.use_DS_decimal
        and pydicom.valuerep.DSclass is pydicom.valuerep.DSfloat
        and not config.datetime_conversion
        and not config.use_none_as_empty_text_VR_value
        and config.data_element_callback is None
        and hooks.hooks.raw_element_vr is hooks.raw_element_vr
        and hooks.hooks.raw_element_value is hooks.raw_element_value
        and not hooks.hooks.raw_element_kwargs
    )


def fast_dicom_json(
    dataset: Dataset,
    *,
    bulk_threshold: int,
    is_top_level_bulk: TopLevelBulk,
    element_json: ElementJson,
) -> dict[str, Any]:
    """The data set as DICOM JSON, bulk data and NUL characters left out.

    `is_top_level_bulk(tag, raw)` says which top-level elements to skip unread;
    `element_json(element)` is pydicom's conversion of one element (None when it is bulk),
    used for everything the fast path does not handle itself. Binary values longer than
    pydicom's inline limit for `bulk_threshold` are dropped, as pydicom marks them bulk.
    """
    converter = _Converter(bulk_threshold=bulk_threshold, element_json=element_json)
    codec = _simple_codec(dataset)
    as_json: dict[str, Any] = {}
    for tag, element in dataset.items():
        if is_top_level_bulk(tag, element):
            continue
        element_as_json = converter.element(dataset, tag, element, codec)
        if element_as_json is not None:
            as_json[f"{tag:08X}"] = element_as_json
    return as_json


def _simple_codec(dataset: Dataset) -> str | None:
    """The one Python codec text values of `dataset` are decoded with, or None for pydicom to decide.

    Mirrors Dataset.__getitem__ (original_character_set, else _character_set) and
    values.convert_value (an empty value means the default, a str means one encoding).
    """
    encodings = dataset.original_character_set or dataset._character_set
    encodings = encodings or [default_encoding]
    if isinstance(encodings, str):
        encodings = [encodings]
    if len(encodings) == 1 and encodings[0] in SIMPLE_CODECS:
        return encodings[0]
    return None


def finite_or_none(numbers: list[Any]) -> list[Any]:
    """`numbers` with NaN and infinities as None (JSON null, the DICOM JSON model's empty value).

    A device may write them in an FL or FD value (IEEE floats), but JSON has no such numbers:
    json.dumps would write NaN, which jsonb and SQLite's JSON refuse, failing the image's ingest.
    One sum tells whether any is there: it is finite only if every number is.
    """
    total = sum(numbers)
    if total - total == 0.0:
        return numbers
    return [number if math.isfinite(number) else None for number in numbers]


def _without_nul(text: str) -> str:
    # Some devices pad text with NUL; PostgreSQL cannot store it (see dicom._cleaned).
    return text.replace("\x00", "") if "\x00" in text else text


def _strings(vr: str, items: list[str]) -> dict[str, Any]:
    """JSON of a string value split into `items`, as DataElement.VM and to_json_dict see it.

    One item is a str, empty (VM 0, no "Value") when ""; several are a list, kept whole.
    """
    if len(items) == 1:
        if not items[0]:
            return {"vr": vr}
        return {"vr": vr, "Value": [_without_nul(items[0])]}
    return {"vr": vr, "Value": [_without_nul(item) for item in items]}


def _one_string(vr: str, text: str) -> dict[str, Any]:
    return {"vr": vr, "Value": [_without_nul(text)]} if text else {"vr": vr}


class _Converter:
    """Raw element -> DICOM JSON, one method per family of VRs (pydicom.values.converters)."""

    def __init__(self, *, bulk_threshold: int, element_json: ElementJson) -> None:
        # DataElement.to_json_dict puts a binary value inline up to 3/4 of the threshold
        # (base64 makes it a third longer) and marks anything longer as bulk data.
        self.max_inline = (bulk_threshold // 4) * 3
        self.element_json = element_json

    def element(self, dataset: Dataset, tag: BaseTag, element: Any, codec: str | None) -> dict[str, Any] | None:
        """One element of `dataset` as JSON, or None when it is bulk data (left out)."""
        if isinstance(element, RawDataElement) and (element.value is not None or element.length == 0):
            as_json = self.raw(dataset, element, codec)
            if as_json is not _SLOW:
                return as_json
        # pydicom converts it (reading a deferred value from the file, fixing an ambiguous VR)
        # and stores it in the data set, exactly as the pydicom-only path does.
        converted = dataset[tag]
        if converted.VR == "SQ":
            # Dataset.to_json_dict of each item, every item kept even when empty.
            return {"vr": "SQ", "Value": [self.item(item) for item in converted.value]}
        return self.element_json(converted)

    def item(self, item: Dataset) -> dict[str, Any]:
        """A sequence item (its own character set, if it has one, applies to its text)."""
        codec = _simple_codec(item)
        as_json: dict[str, Any] = {}
        for tag, element in item.items():
            element_as_json = self.element(item, tag, element, codec)
            if element_as_json is not None:
                as_json[f"{tag:08X}"] = element_as_json
        return as_json

    def raw(self, dataset: Dataset, raw: RawDataElement, codec: str | None) -> dict[str, Any] | object | None:
        """A raw element as JSON, None when bulk, or _SLOW when pydicom must convert it."""
        vr = raw.VR
        if vr is None:
            # Implicit VR: hooks.raw_element_vr, whose first step (dictionary_VR) is this lookup.
            entry = DicomDictionary.get(raw.tag)
            if entry is not None:
                vr = entry[0]
            else:  # repeating groups, private tags, group lengths, unknown tags
                found: dict[str, Any] = {}
                hooks.raw_element_vr(raw, found, ds=dataset)
                vr = found["VR"]
        method = self.by_vr.get(vr)
        if method is None:
            return _SLOW  # SQ, UN, ambiguous ("US or SS", ...) and unknown VRs
        if (vr == "US" or vr == "SS") and int(raw.tag) in _LUT_DESCRIPTORS:
            return _SLOW
        if raw.length == 0:
            return {"vr": vr}  # values.convert_value: the empty value, so no "Value"
        if raw.length == _UNDEFINED_LENGTH or not raw.is_little_endian:
            return _SLOW
        try:
            return method(self, vr, raw.value, codec)
        except Exception:  # a value these rules do not foresee: pydicom decides
            return _SLOW

    # --- values.convert_string (AS, CS, DA, DT, TM: config.datetime_conversion is off) ---
    def plain_string(self, vr: str, value: bytes, codec: str | None) -> dict[str, Any]:
        return _strings(vr, value.decode(_LATIN_1).rstrip(" \x00").split("\\"))

    # values.convert_AE_string: every item stripped on both sides.
    def ae(self, vr: str, value: bytes, codec: str | None) -> dict[str, Any]:
        return _strings(vr, [item.strip() for item in value.decode(_LATIN_1).split("\\")])

    # values.convert_UI: trailing NUL and spaces off, then UID() strips each item.
    def ui(self, vr: str, value: bytes, codec: str | None) -> dict[str, Any]:
        text = value.decode(_LATIN_1).rstrip("\0 ")
        return _strings(vr, [item.strip() for item in text.split("\\")])

    # values.convert_UR_string: one value, trailing whitespace off.
    def ur(self, vr: str, value: bytes, codec: str | None) -> dict[str, Any]:
        return _one_string(vr, value.decode(_LATIN_1).rstrip())

    # values.convert_DS_string: DSfloat per item; float() of it in jsonrep.convert_to_python_number.
    def ds(self, vr: str, value: bytes, codec: str | None) -> dict[str, Any] | object:
        text = value.decode(_LATIN_1).strip().rstrip(" \x00")
        if not text:
            return {"vr": vr}
        if not _PLAIN_DS_LIST.fullmatch(text):
            return _SLOW
        return {"vr": vr, "Value": finite_or_none(list(map(float, text.split("\\"))))}  # "1e999" is inf

    # values.convert_IS_string: IS per item; int() of it in convert_to_python_number.
    def is_(self, vr: str, value: bytes, codec: str | None) -> dict[str, Any] | object:
        text = value.decode(_LATIN_1).rstrip(" \x00")
        if not text:
            return {"vr": vr}
        if not _PLAIN_IS_LIST.fullmatch(text):
            return _SLOW
        return {"vr": vr, "Value": list(map(int, text.split("\\")))}

    # values.convert_numbers: little endian, a whole number of values (else pydicom raises).
    def numbers(self, vr: str, value: bytes, codec: str | None) -> dict[str, Any] | object:
        code, size = _NUMBER_FORMATS[vr]
        if not value or len(value) % size:
            return _SLOW
        numbers = list(struct.unpack(f"<{len(value) // size}{code}", value))
        if vr in _FLOAT_VRS:
            numbers = finite_or_none(numbers)
        return {"vr": vr, "Value": numbers}

    # values.convert_ATvalue; to_json_dict formats each tag as 8 hex digits.
    def at(self, vr: str, value: bytes, codec: str | None) -> dict[str, Any] | object:
        if not value or len(value) % 4:
            return _SLOW
        halves = struct.unpack(f"<{len(value) // 2}H", value)
        return {"vr": vr, "Value": [f"{halves[i] << 16 | halves[i + 1]:08X}" for i in range(0, len(halves), 2)]}

    # values.convert_OBvalue and friends; to_json_dict inlines small values, marks big ones bulk.
    def binary(self, vr: str, value: bytes, codec: str | None) -> dict[str, Any] | None:
        if not value:
            return {"vr": vr}
        if len(value) > self.max_inline:
            return None
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("utf-8")}

    # --- text in the data set's character set (charset.decode_bytes without escapes) ---
    @staticmethod
    def _decode(value: bytes, codec: str | None) -> str | None:
        if codec is None or _ESC in value:
            return None
        try:
            return value.decode(codec)
        except UnicodeDecodeError:
            return None  # pydicom would decode with replacement characters and warn

    # values.convert_text (SH, LO, UC): split, each item without trailing NUL and spaces.
    def text(self, vr: str, value: bytes, codec: str | None) -> dict[str, Any] | object:
        decoded = self._decode(value, codec)
        if decoded is None:
            return _SLOW
        return _strings(vr, [item.rstrip("\0 ") for item in decoded.split("\\")])

    # values.convert_single_string (ST, LT, UT): one value, trailing NUL and spaces off.
    def single_text(self, vr: str, value: bytes, codec: str | None) -> dict[str, Any] | object:
        decoded = self._decode(value, codec)
        if decoded is None:
            return _SLOW
        return _one_string(vr, decoded.rstrip("\0 "))

    # values.convert_PN and PersonName: "=" splits the groups, trailing empty groups dropped;
    # to_json_dict names the first three.
    def pn(self, vr: str, value: bytes, codec: str | None) -> dict[str, Any] | object:
        decoded = self._decode(value.rstrip(b"\x00 "), codec)
        if decoded is None:
            return _SLOW
        names: list[dict[str, str]] = []
        items = decoded.split("\\")
        for item in items:
            groups = item.split("=")
            while groups and not groups[-1]:
                groups.pop()
            if not groups:
                if len(items) == 1:
                    return {"vr": vr}  # an empty name: VM 0
                return _SLOW  # an empty name among several: pydicom raises IndexError
            if len(groups) > 3:
                return _SLOW
            name = {"Alphabetic": _without_nul(groups[0])}
            if len(groups) > 1:
                name["Ideographic"] = _without_nul(groups[1])
            if len(groups) > 2:
                name["Phonetic"] = _without_nul(groups[2])
            names.append(name)
        return {"vr": vr, "Value": names}

    by_vr: dict[str, Callable[..., Any]] = {
        **dict.fromkeys(("AS", "CS", "DA", "DT", "TM"), plain_string),
        "AE": ae,
        "UI": ui,
        "UR": ur,
        "DS": ds,
        "IS": is_,
        **dict.fromkeys(_NUMBER_FORMATS, numbers),
        "AT": at,
        **dict.fromkeys(_BINARY_VRS, binary),
        **dict.fromkeys(("SH", "LO", "UC"), text),
        **dict.fromkeys(("ST", "LT", "UT"), single_text),
        "PN": pn,
    }
