"""Forwarding destinations (RADIOLOGY_FORWARD_DESTINATIONS): where studies go, which ones, with which credential.

One environment variable, comma-separated entries of the form

    NAME=RULE@URL        e.g. regional=all@https://pacs.regional.example.org,teaching=CR+DX@http://10.0.0.9:8000

NAME: letters, digits and underscores (it names the credential's variable and shows in the
front door); RULE: `all` (every image stored), `on_request` (only the studies a doctor or tech
sends), or modalities joined by `+` (the images of those modalities); URL: the far side's base
URL (http or https, no credentials in it). The credential is RADIOLOGY_FORWARD_TOKEN_<NAME> or
its _FILE twin (settings.RADIOLOGY_FORWARD_TOKENS): the far side's API token of the
forwarding-clinic account made for this server there. A malformed entry is ImproperlyConfigured
naming it, raised when ingest, the forwarder or the checks first read the list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

ALL = "all"
ON_REQUEST = "on_request"
_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_MODALITY = re.compile(r"^[A-Z0-9]{1,16}$")


@dataclass(frozen=True)
class Destination:
    """One forwarding destination; `modalities` empty with rule `all`/`on_request`."""

    name: str
    url: str  # without a trailing slash
    rule: str  # ALL, ON_REQUEST, or "modalities"
    modalities: frozenset[str] = frozenset()
    token: str = ""

    @property
    def rule_text(self) -> str:
        """The rule as written in the setting (modalities joined by +)."""
        return "+".join(sorted(self.modalities)) if self.rule == "modalities" else self.rule

    @property
    def automatic(self) -> bool:
        """Whether images are queued for it as they are stored (not only on request)."""
        return self.rule != ON_REQUEST

    def takes(self, modality: str) -> bool:
        """Whether an image of this modality is queued for it when stored (by its rule alone)."""
        if self.rule == ALL:
            return True
        return self.rule != ON_REQUEST and modality.upper() in self.modalities


def configured_destinations() -> tuple[Destination, ...]:
    """The destinations of the current settings (parsed once per value)."""
    return parse_destinations(
        settings.RADIOLOGY_FORWARD_DESTINATIONS, tuple(sorted(settings.RADIOLOGY_FORWARD_TOKENS.items()))
    )


def destination_named(name: str) -> Destination | None:
    return next((destination for destination in configured_destinations() if destination.name == name), None)


@cache
def parse_destinations(text: str, tokens: tuple[tuple[str, str], ...] = ()) -> tuple[Destination, ...]:
    """The destinations of a RADIOLOGY_FORWARD_DESTINATIONS value; ImproperlyConfigured naming a bad entry."""
    token_of = dict(tokens)
    found: list[Destination] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, equals, rest = entry.partition("=")
        rule, at, url = rest.partition("@")
        name, rule, url = name.strip(), rule.strip(), url.strip().rstrip("/")
        if not equals or not at or not _NAME.match(name):
            raise ImproperlyConfigured(f"RADIOLOGY_FORWARD_DESTINATIONS: {entry!r} is not NAME=RULE@URL")
        if any(existing.name == name for existing in found):
            raise ImproperlyConfigured(f"RADIOLOGY_FORWARD_DESTINATIONS: {name!r} is listed twice")
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname or parts.username or parts.password:
            raise ImproperlyConfigured(
                f"RADIOLOGY_FORWARD_DESTINATIONS: {name!r} needs an http(s) URL without credentials, not {url!r}"
            )
        modalities: frozenset[str] = frozenset()
        if rule.lower() in {ALL, ON_REQUEST}:
            rule = rule.lower()  # `ALL` is the keyword, not a modality named ALL
        else:
            modalities = frozenset(part.strip().upper() for part in rule.split("+"))
            if not modalities or not all(_MODALITY.match(modality) for modality in modalities):
                raise ImproperlyConfigured(
                    f"RADIOLOGY_FORWARD_DESTINATIONS: {name!r} has rule {rule!r}: use all, on_request or CR+DX"
                )
            rule = "modalities"
        found.append(Destination(name, url, rule, modalities, token_of.get(name, "")))
    return tuple(found)
