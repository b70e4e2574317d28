"""QIDO-RS under hostile queries: wildcards that used to backtrack, LIKE's own characters, bad numbers.

Issue 14 items 3 and 8. The world is test_qido.py's three studies (C, B, A newest first:
Smith^John, Okafor^Chidi, Balogun^Ngozi). Every answer is the exact list of study UIDs or the
exact error body; nothing is timed here (bench/hostile_inputs.py measures the seconds).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from apps.radiology.dicomweb.wildcards import like_pattern

from .conftest import API, Put
from .helpers import QUIET_UID_WARNINGS, error, json_of
from .test_qido import World, search, uids, world  # noqa: F401 (test_qido's fixture, used below)

pytestmark = [pytest.mark.django_db, QUIET_UID_WARNINGS]


@pytest.fixture
def studies(request: pytest.FixtureRequest) -> World:
    """test_qido.py's three studies."""
    return request.getfixturevalue("world")  # type: ignore[no-any-return]


# 23 characters that took 51 s as a regular expression on SQLite.
REDOS = "*?*?*?*?*?*?*?*?*?*?*?#"


@pytest.mark.parametrize("level", ["studies", "series", "instances"])
def test_the_backtracking_pattern_finds_nothing_at_every_level(
    studies: World, doctor_client: Client, level: str
) -> None:
    assert search(doctor_client, level, PatientName=REDOS) == []


def test_the_backtracking_shape_still_matches_what_it_should(studies: World, doctor_client: Client) -> None:
    # At least 11 characters, then a final "i": Okafor^Chidi and Balogun^Ngozi, not Smith^John.
    assert uids(search(doctor_client, "studies", PatientName=REDOS[:-1] + "i")) == [studies.b, studies.a]
    assert uids(search(doctor_client, "studies", PatientName="****Smith****")) == [studies.c]
    assert uids(search(doctor_client, "studies", PatientName="*?*?*?*?*?*?*?*?*?*?*?*?*?*?*")) == []


@pytest.mark.parametrize(
    "pattern",
    ["%", "_*", "Balogun%", "Balogun_Ngozi", "Balogun\\^Ngozi", "\\", "%o%", "[B]alogun*", "Balogun^Ngozi%"],
)
def test_like_characters_in_a_pattern_are_characters(studies: World, doctor_client: Client, pattern: str) -> None:
    assert search(doctor_client, "studies", PatientName=pattern) == []


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("O_Brien%*", ["literal"]),
        ("o_brien%^ann", ["literal"]),
        ("O?Brien%*", ["literal"]),
        ("O?Brien?^Ann", ["other", "literal"]),
        ("OXBrien*", ["other"]),
        ("O_Brien\\*", []),
    ],
)
def test_names_with_like_characters_match_literally(
    put: Put, make_order: Any, doctor_client: Client, pattern: str, expected: list[str]
) -> None:
    literal = put("CT_small.dcm", order=make_order(first_name="Ann", last_name="O_Brien%"))
    other = put("CT_small.dcm", order=make_order(first_name="Ann", last_name="OXBrienX"))
    names = {"literal": literal.study_uid, "other": other.study_uid}
    assert uids(search(doctor_client, "studies", PatientName=pattern)) == [names[item] for item in expected]


@pytest.mark.parametrize(
    ("wildcards", "like"),
    [
        ("Smith^J*", "Smith^J%"),
        ("***a**", "%a%"),
        ("*?*?#", "%_%_#"),
        ("50%_off\\", "50\\%\\_off\\\\"),
        ("S??th", "S__th"),
        ("", ""),
    ],
)
def test_like_pattern_escapes_and_collapses(wildcards: str, like: str) -> None:
    assert like_pattern(wildcards) == like


NOT_NEGATIVE = "{key} must be a non-negative integer."
TOO_LONG = "{key} must be a non-negative integer of at most 18 digits."


@pytest.mark.parametrize("key", ["limit", "offset"])
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (str(2**63), TOO_LONG),
        (str(2**64 + 5), TOO_LONG),
        ("9" * 5000, TOO_LONG),
        ("1" * 19, TOO_LONG),
        ("²", NOT_NEGATIVE),
        ("١٢", NOT_NEGATIVE),  # Arabic-Indic digits: str.isdigit() says yes
        ("\uff11\uff10", NOT_NEGATIVE),  # fullwidth
        (" 1", NOT_NEGATIVE),
        ("1\n", NOT_NEGATIVE),
        ("+1", NOT_NEGATIVE),
        ("0x10", NOT_NEGATIVE),
    ],
)
@pytest.mark.parametrize("level", ["studies", "series", "instances"])
def test_malformed_or_huge_limit_and_offset_are_400(
    studies: World, doctor_client: Client, level: str, key: str, raw: str, message: str
) -> None:
    response = doctor_client.get(f"{API}/{level}", {key: raw})
    assert (response.status_code, json_of(response)) == (400, error(message.format(key=key), "invalid_query"))


def test_the_largest_accepted_offset_is_an_empty_page(studies: World, doctor_client: Client) -> None:
    assert search(doctor_client, "studies", offset="9" * 18) == []
    assert search(doctor_client, "instances", offset="9" * 18, limit="9" * 18) == []
    assert uids(search(doctor_client, "studies", offset="000000000000000001", limit="1")) == [studies.b]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"SeriesNumber": "²"}, "SeriesNumber must be an integer."),
        ({"SeriesNumber": "1" * 4000}, "SeriesNumber must be an integer."),
        ({"SeriesNumber": str(2**31)}, "SeriesNumber must be an integer from -2147483648 to 2147483647."),
        ({"00200011": "-2147483649"}, "SeriesNumber must be an integer from -2147483648 to 2147483647."),
        ({"InstanceNumber": "٣"}, "InstanceNumber must be an integer."),
        ({"InstanceNumber": "9999999999"}, "InstanceNumber must be an integer from -2147483648 to 2147483647."),
        (
            {"StudyDate": "\uff12\uff10\uff12\uff14\uff10\uff11\uff11\uff10"},
            "StudyDate must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD.",
        ),
        ({"StudyDate": "20240110\n"}, "StudyDate must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD."),
        ({"StudyDate": "99999999"}, "StudyDate is not a valid date."),
        ({"PatientName": "Balogun\x00*"}, "A search parameter must not contain a NUL character."),
        ({"PatientID": "\x00"}, "A search parameter must not contain a NUL character."),
        ({"StudyInstanceUID": "1.2\x00"}, "A search parameter must not contain a NUL character."),
        ({"StudyInstanceUID": ",".join(["1.2"] * 1001)}, "StudyInstanceUID takes at most 1000 values."),
    ],
)
def test_malformed_attribute_values_are_400(
    studies: World, doctor_client: Client, params: dict[str, str], message: str
) -> None:
    # InstanceNumber is an instance-level key: a series search does not look at it.
    for level in ("instances",) if "InstanceNumber" in params else ("series", "instances"):
        response = doctor_client.get(f"{API}/{level}", params)
        assert (response.status_code, json_of(response)) == (400, error(message, "invalid_query"))


def test_extreme_but_valid_numbers_find_nothing(studies: World, doctor_client: Client) -> None:
    assert search(doctor_client, "series", SeriesNumber=str(2**31 - 1)) == []
    assert search(doctor_client, "instances", InstanceNumber=str(-(2**31))) == []
    assert len(search(doctor_client, "studies", StudyInstanceUID=",".join([studies.a] * 1000))) == 1
