"""Accept headers as DICOMweb clients send them: OHIF's quoted and unquoted forms, several
ranges in one header, q-values; 406 for what cannot be produced.

The parser (dicomweb/accept.py) is tested on its own, then through the frames, metadata
and search endpoints.
"""

from __future__ import annotations

import pytest
from django.test import Client

from apps.radiology.dicomweb.accept import MediaRange, parse_accept

from .conftest import Put
from .helpers import QUIET_UID_WARNINGS, error, json_of, multipart_of

pytestmark = [pytest.mark.django_db, QUIET_UID_WARNINGS]

OCTET = "application/octet-stream"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
J2K = "1.2.840.10008.1.2.4.91"
NOT_ACCEPTABLE = error("None of the media types in Accept can be produced for this resource.", "not_acceptable")
OHIF_QUOTED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
OHIF_UNQUOTED = "multipart/related; type=application/octet-stream; transfer-syntax=*"


# --- the parser --------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "   "])
def test_no_accept_header_accepts_anything(header: str | None) -> None:
    assert parse_accept(header) == [MediaRange("*/*")]


@pytest.mark.parametrize(
    "header",
    [OHIF_QUOTED, OHIF_UNQUOTED, ' multipart/related ;type = "application/octet-stream" ;  transfer-syntax=* '],
)
def test_ohifs_quoted_and_unquoted_forms_are_the_same(header: str) -> None:
    assert parse_accept(header) == [MediaRange("multipart/related", {"type": OCTET, "transfer-syntax": "*"}, 1.0)]


def test_names_are_case_insensitive_and_the_part_type_is_lowered() -> None:
    [media] = parse_accept('Multipart/Related; TYPE="Application/Octet-Stream"; Transfer-Syntax=1.2.840.10008.1.2.1')
    assert media.media_type == "multipart/related"
    assert media.part_type == OCTET
    assert media.transfer_syntax == EXPLICIT_LITTLE


def test_several_ranges_in_one_header_keep_the_clients_order() -> None:
    header = f'multipart/related; type="image/jp2"; transfer-syntax={J2K}, {OHIF_UNQUOTED}, image/jpeg'
    assert parse_accept(header) == [
        MediaRange("multipart/related", {"type": "image/jp2", "transfer-syntax": J2K}),
        MediaRange("multipart/related", {"type": OCTET, "transfer-syntax": "*"}),
        MediaRange("image/jpeg"),
    ]


def test_a_comma_inside_quotes_does_not_split() -> None:
    assert parse_accept('multipart/related; type="a/b, c/d", image/png') == [
        MediaRange("multipart/related", {"type": "a/b, c/d"}),
        MediaRange("image/png"),
    ]


def test_q_values_order_the_ranges_best_first() -> None:
    header = "image/jpeg;q=0.5, image/png;q=0.9, image/gif, image/webp;q=0.5, image/bmp;q=0"
    assert [(item.media_type, item.quality) for item in parse_accept(header)] == [
        ("image/gif", 1.0),
        ("image/png", 0.9),
        ("image/jpeg", 0.5),
        ("image/webp", 0.5),
    ]


@pytest.mark.parametrize("header", ["image/png;q=0", "image/png;q=0, image/jpeg;q=0.0", "image/png;q=zero"])
def test_ranges_with_q_zero_accept_nothing(header: str) -> None:
    assert parse_accept(header) == []


@pytest.mark.parametrize(
    ("wanted", "offered", "matches"),
    [
        ("*/*", "image/png", True),
        ("image/*", "image/png", True),
        ("image/*", "application/json", False),
        ("image/png", "image/png", True),
        ("image/png", "IMAGE/PNG", True),
        ("image/png", "image/jpeg", False),
        ("application/dicom+json", "application/json", False),
    ],
)
def test_media_range_matching(wanted: str, offered: str, matches: bool) -> None:
    assert MediaRange(wanted).matches(offered) is matches


# --- through the endpoints ---------------------------------------------------------------


def frame_answer(client: Client, url: str, accept: str) -> tuple[int, str]:
    """(status, the part's Content-Type) of a frame request, or (status, error code)."""
    response = client.get(url, headers={"Accept": accept})
    if response.status_code != 200:
        assert json_of(response) == NOT_ACCEPTABLE
        return response.status_code, "not_acceptable"
    _type, [part] = multipart_of(response)
    return 200, part.content_type


NATIVE = f"{OCTET}; transfer-syntax={EXPLICIT_LITTLE}"
STORED_J2K = f"image/jp2; transfer-syntax={J2K}"


@pytest.mark.parametrize(
    ("accept", "native", "compressed"),
    [
        (OHIF_QUOTED, NATIVE, STORED_J2K),
        (OHIF_UNQUOTED, NATIVE, STORED_J2K),
        (f'multipart/related; type="{OCTET}"; transfer-syntax={EXPLICIT_LITTLE}', NATIVE, NATIVE),
        (f"multipart/related; type={OCTET}", NATIVE, NATIVE),
        ('multipart/related; type="image/jp2"', "not_acceptable", STORED_J2K),
        (f'multipart/related; type="image/jp2"; transfer-syntax={J2K}', "not_acceptable", STORED_J2K),
        ('multipart/related; type="image/jp2"; transfer-syntax=*', "not_acceptable", STORED_J2K),
        ('multipart/related; type="image/jpeg"', "not_acceptable", "not_acceptable"),
        (
            f'multipart/related; type="{OCTET}"; transfer-syntax=1.2.840.10008.1.2.4.50',
            "not_acceptable",
            "not_acceptable",
        ),
        ("application/json", "not_acceptable", "not_acceptable"),
        ("image/jp2", "not_acceptable", "not_acceptable"),
        ("*/*", NATIVE, STORED_J2K),
        ("multipart/*", NATIVE, STORED_J2K),
        ("multipart/related", NATIVE, STORED_J2K),
        ('multipart/related; type="*/*"', NATIVE, STORED_J2K),
        # Several ranges in one header: the first that can be produced.
        (f'multipart/related; type="image/jp2", multipart/related; type="{OCTET}"', NATIVE, STORED_J2K),
        (f'multipart/related; type="{OCTET}", multipart/related; type="image/jp2"', NATIVE, NATIVE),
        (f"application/json, {OHIF_UNQUOTED}", NATIVE, STORED_J2K),
        # q-values choose between them.
        (f'multipart/related; type="{OCTET}";q=0.5, multipart/related; type="image/jp2";q=0.9', NATIVE, STORED_J2K),
        (f'multipart/related; type="image/jp2";q=0.4, multipart/related; type="{OCTET}";q=0.8', NATIVE, NATIVE),
        (f'multipart/related; type="image/jp2", multipart/related; type="{OCTET}";q=0', "not_acceptable", STORED_J2K),
    ],
)
def test_frame_negotiation(put: Put, doctor_client: Client, accept: str, native: str, compressed: str) -> None:
    native_file = put("CT_small.dcm")
    j2k_file = put("JPEG2000.dcm")
    expected = [
        (406, "not_acceptable") if wanted == "not_acceptable" else (200, wanted) for wanted in (native, compressed)
    ]
    got = [frame_answer(doctor_client, stored.url("/frames/1"), accept) for stored in (native_file, j2k_file)]
    assert got == expected


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("application/dicom+json", 200),
        ("application/json", 200),
        ("application/*", 200),
        ("*/*", 200),
        ("application/dicom+xml, application/dicom+json;q=0.1", 200),
        ("application/dicom+xml", 406),
        ('multipart/related; type="application/dicom+xml"', 406),
        ("application/dicom+json;q=0", 406),
    ],
)
def test_metadata_and_search_negotiation(put: Put, doctor_client: Client, accept: str, status: int) -> None:
    stored = put("MR_small.dcm")
    for url in (
        stored.url("/metadata"),
        stored.series_url("/metadata"),
        stored.study_url("/series"),
        stored.study_url("/instances"),
    ):
        response = doctor_client.get(url, headers={"Accept": accept})
        assert response.status_code == status, url
        if status == 200:
            assert response["Content-Type"] == "application/dicom+json"
        else:
            assert json_of(response) == NOT_ACCEPTABLE
