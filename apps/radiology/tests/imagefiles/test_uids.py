"""apps.radiology.imagefiles.uids: PS3.5 9.1 validation and 2.25.<uuid> generation."""

from __future__ import annotations

import re

import pytest
from pydicom.uid import UID

from apps.radiology.errors import InvalidUID, RadiologyError
from apps.radiology.imagefiles.uids import MAX_UID_LENGTH, generate_uid, is_valid_uid, validate_uid

VALID_UIDS = [
    "0",
    "1.2",
    "1.2.840.10008.5.1.4.1.1.2",
    "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322",
    "2.25.0",
    "1.0.2",
    "2.25.329800735698586629295641978511506172918",
    "1." + "2" * (MAX_UID_LENGTH - 2),  # exactly 64 characters
]

INVALID_UIDS = [
    pytest.param("", id="empty"),
    pytest.param("1.2.a", id="letters"),
    pytest.param("1.2.3x", id="letter-suffix"),
    pytest.param("1..2", id="empty-component"),
    pytest.param(".1.2", id="leading-dot"),
    pytest.param("1.2.", id="trailing-dot"),
    pytest.param("1.02", id="zero-led-component"),
    pytest.param("01.2", id="zero-led-first-component"),
    pytest.param("1." + "2" * (MAX_UID_LENGTH - 1), id="65-characters"),
    pytest.param("1.2 ", id="trailing-space"),
    pytest.param("1.2\x00", id="nul-padding"),
    pytest.param("-1.2", id="negative"),
    pytest.param(None, id="none"),
    pytest.param(12, id="int"),
]


@pytest.mark.parametrize("uid", VALID_UIDS)
def test_valid_uids_are_accepted(uid: str) -> None:
    assert is_valid_uid(uid) is True
    assert validate_uid(uid) == uid
    assert UID(uid).is_valid  # the same rule as pydicom's


@pytest.mark.parametrize("uid", INVALID_UIDS)
def test_invalid_uids_are_rejected(uid: object) -> None:
    assert is_valid_uid(uid) is False
    with pytest.raises(InvalidUID) as excinfo:
        validate_uid(uid, field="series_uid")
    assert isinstance(excinfo.value, RadiologyError)
    assert excinfo.value.code == "invalid_uid"
    assert excinfo.value.status_code == 400
    assert excinfo.value.detail == (
        "series_uid is not a valid DICOM UID (digits and dots, no zero-led component, max 64)."
    )


def test_generate_uid_is_a_valid_2_25_uid_of_at_most_64_characters() -> None:
    uid = generate_uid()
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid)
    assert is_valid_uid(uid)
    assert UID(uid).is_valid
    assert len(uid) <= MAX_UID_LENGTH
    # A UUID is 128 bits: at most 39 decimal digits after "2.25.".
    assert int(uid.removeprefix("2.25.")) < 2**128


def test_generate_uid_is_unique() -> None:
    uids = {generate_uid() for _ in range(2000)}
    assert len(uids) == 2000
