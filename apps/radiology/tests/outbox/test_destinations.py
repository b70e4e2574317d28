"""RADIOLOGY_FORWARD_DESTINATIONS: every rule, and every malformed entry refused naming it.

parse_destinations is pure (text and tokens in, destinations out); configured_destinations
reads the current settings, the tokens from settings.RADIOLOGY_FORWARD_TOKENS (filled from
RADIOLOGY_FORWARD_TOKEN_<NAME> or its _FILE twin), never from the destinations' value.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from apps.radiology.outbox.destinations import (
    Destination,
    configured_destinations,
    destination_named,
    parse_destinations,
)

PREFIX = "RADIOLOGY_FORWARD_DESTINATIONS: "


def test_nothing_configured_is_no_destination() -> None:
    assert parse_destinations("") == ()
    assert parse_destinations(" , ,") == ()


def test_every_rule_and_its_token() -> None:
    destinations = parse_destinations(
        " regional = all @ https://pacs.regional.example.org/ ,"
        "teaching=cr+DX@http://10.0.0.9:8000,"
        "second_opinion=on_request@http://[::1]:8443/pacs/,",
        (("regional", "tok-regional"), ("teaching", "tok-teaching")),
    )

    assert destinations == (
        Destination("regional", "https://pacs.regional.example.org", "all", frozenset(), "tok-regional"),
        Destination("teaching", "http://10.0.0.9:8000", "modalities", frozenset({"CR", "DX"}), "tok-teaching"),
        # No token configured: empty (the forwarder refuses to start for it; ingest still queues).
        Destination("second_opinion", "http://[::1]:8443/pacs", "on_request", frozenset(), ""),
    )


def test_which_images_each_rule_takes() -> None:
    every, some, asked = parse_destinations("a=all@http://a,b=CR+DX@http://b,c=on_request@http://c")

    assert [every.automatic, some.automatic, asked.automatic] == [True, True, False]
    assert [every.takes(modality) for modality in ("CT", "CR", "")] == [True, True, True]
    assert [some.takes(modality) for modality in ("CR", "dx", "DX", "CT", "")] == [True, True, True, False, False]
    assert [asked.takes(modality) for modality in ("CT", "CR")] == [False, False]


def test_a_single_modality_is_a_rule() -> None:
    (destination,) = parse_destinations("mammo=MG@https://mg.example.org")

    assert (destination.rule, destination.modalities) == ("modalities", frozenset({"MG"}))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("regional", "'regional' is not NAME=RULE@URL"),
        ("regional=all", "'regional=all' is not NAME=RULE@URL"),
        ("regional=https://pacs.example.org", "'regional=https://pacs.example.org' is not NAME=RULE@URL"),
        ("=all@https://pacs.example.org", "'=all@https://pacs.example.org' is not NAME=RULE@URL"),
        ("re-gional=all@https://pacs.example.org", "'re-gional=all@https://pacs.example.org' is not NAME=RULE@URL"),
        ("région=all@https://pacs.example.org", "'région=all@https://pacs.example.org' is not NAME=RULE@URL"),
        (f"{'n' * 65}=all@http://a", f"'{'n' * 65}=all@http://a' is not NAME=RULE@URL"),
        ("a=all@http://a, a=CT@http://b", "'a' is listed twice"),
        ("a=all@ftp://pacs.example.org", "'a' needs an http(s) URL without credentials, not 'ftp://pacs.example.org'"),
        ("a=all@pacs.example.org", "'a' needs an http(s) URL without credentials, not 'pacs.example.org'"),
        ("a=all@https://", "'a' needs an http(s) URL without credentials, not 'https:'"),
        ("a=all@", "'a' needs an http(s) URL without credentials, not ''"),
        (
            "a=all@https://clinic:secret@pacs.example.org",
            "'a' needs an http(s) URL without credentials, not 'https://clinic:secret@pacs.example.org'",
        ),
        (
            "a=all@https://clinic@pacs.example.org",
            "'a' needs an http(s) URL without credentials, not 'https://clinic@pacs.example.org'",
        ),
        ("a=@http://a", "'a' has rule '': use all, on_request or CR+DX"),
        ("a=CR+@http://a", "'a' has rule 'CR+': use all, on_request or CR+DX"),
        ("a=CR DX@http://a", "'a' has rule 'CR DX': use all, on_request or CR+DX"),
        ("a=CR,DX@http://a", "'a=CR' is not NAME=RULE@URL"),
        ("a=C-R@http://a", "'a' has rule 'C-R': use all, on_request or CR+DX"),
        (f"a={'X' * 17}@http://a", f"'a' has rule '{'X' * 17}': use all, on_request or CR+DX"),
    ],
)
def test_a_malformed_entry_is_refused_naming_it(text: str, message: str) -> None:
    with pytest.raises(ImproperlyConfigured) as refused:
        parse_destinations(f"good=all@http://good,{text}")

    assert str(refused.value) == PREFIX + message


def test_configured_destinations_read_the_settings_and_their_tokens(settings: Any) -> None:
    settings.RADIOLOGY_FORWARD_DESTINATIONS = "regional=all@https://regional.example.org,teaching=on_request@http://t"
    settings.RADIOLOGY_FORWARD_TOKENS = {"regional": "secret-regional", "other": "unused"}

    assert configured_destinations() == (
        Destination("regional", "https://regional.example.org", "all", frozenset(), "secret-regional"),
        Destination("teaching", "http://t", "on_request", frozenset(), ""),
    )
    assert destination_named("teaching") == Destination("teaching", "http://t", "on_request", frozenset(), "")
    assert destination_named("Regional") is None
    assert destination_named("other") is None

    # A changed setting (a new token from a restart's environment) is read, not a stale parse.
    settings.RADIOLOGY_FORWARD_TOKENS = {"regional": "rotated"}
    assert destination_named("regional") == Destination(
        "regional", "https://regional.example.org", "all", frozenset(), "rotated"
    )


def test_no_setting_no_destination(settings: Any) -> None:
    settings.RADIOLOGY_FORWARD_DESTINATIONS = ""
    settings.RADIOLOGY_FORWARD_TOKENS = {}

    assert configured_destinations() == ()
    assert destination_named("regional") is None


def test_a_malformed_setting_is_refused_when_first_read(settings: Any) -> None:
    settings.RADIOLOGY_FORWARD_DESTINATIONS = "regional=all@https://user:pw@regional.example.org"
    settings.RADIOLOGY_FORWARD_TOKENS = {}

    with pytest.raises(ImproperlyConfigured) as refused:
        configured_destinations()

    assert str(refused.value) == (
        PREFIX + "'regional' needs an http(s) URL without credentials, not 'https://user:pw@regional.example.org'"
    )
