"""System checks of the access settings: a setting that promises what the code does not do is an error.

RADIOLOGY_SIGNED_URLS exists in the environment (and .env.example), but PACS-lite has no
unsigned way to serve an image or open a viewer: every image URL and viewer link is signed,
expiring and scoped (signing.py). Turning it off would change nothing while an operator
believed images were now served unsigned, so the server refuses to start with it off.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register

UNSIGNED_URLS_REFUSED = "radiology.E001"


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
