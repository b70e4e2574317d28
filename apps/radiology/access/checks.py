"""System checks of the access settings: a setting that promises what the code does not do is an error.

RADIOLOGY_SIGNED_URLS exists in the environment (and .env.example), but PACS-lite has no
unsigned way to serve an image or open a viewer: every image URL and viewer link is signed,
expiring and scoped (signing.py). Turning it off would change nothing while an operator
believed images were now served unsigned, so the server refuses to start with it off.

A malformed RADIOLOGY_FORWARD_DESTINATIONS is refused here too, at start, not by the first ingest.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register
from django.core.exceptions import ImproperlyConfigured

from apps.radiology.outbox.destinations import configured_destinations

UNSIGNED_URLS_REFUSED = "radiology.E001"
FORWARD_DESTINATIONS_MALFORMED = "radiology.E002"


@register()
def signed_urls_are_required(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """An error unless RADIOLOGY_SIGNED_URLS is True (or unset)."""
    if getattr(settings, "RADIOLOGY_SIGNED_URLS", True):
        return []
    return [
        Error(
            "RADIOLOGY_SIGNED_URLS is False, but every image and viewer link in PACS-lite is signed: "
            "unsigned links are not supported.",
            hint="Remove RADIOLOGY_SIGNED_URLS from the environment or set it to 1.",
            obj="settings.RADIOLOGY_SIGNED_URLS",
            id=UNSIGNED_URLS_REFUSED,
        )
    ]


@register()
def forward_destinations_are_well_formed(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """A malformed RADIOLOGY_FORWARD_DESTINATIONS stops the server at start (`manage.py check`, serve.sh),
    rather than failing every ingest, which reads the list to queue what it stores."""
    try:
        configured_destinations()
    except ImproperlyConfigured as error:
        return [Error(str(error), obj="settings.RADIOLOGY_FORWARD_DESTINATIONS", id=FORWARD_DESTINATIONS_MALFORMED)]
    return []
