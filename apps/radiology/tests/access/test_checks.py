"""RADIOLOGY_SIGNED_URLS means what it says: PACS-lite refuses to start with it off (links are always signed)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from apps.radiology.access.checks import UNSIGNED_URLS_REFUSED, signed_urls_are_required

MESSAGE = (
    "RADIOLOGY_SIGNED_URLS is False, but every image and viewer link in PACS-lite is signed: "
    "unsigned links are not supported."
)


def test_signed_urls_on_is_fine(settings: Any) -> None:
    settings.RADIOLOGY_SIGNED_URLS = True

    assert signed_urls_are_required() == []
    assert [message for message in checks.run_checks() if message.id == UNSIGNED_URLS_REFUSED] == []


def test_signed_urls_off_is_an_error_at_startup(settings: Any) -> None:
    settings.RADIOLOGY_SIGNED_URLS = False

    found = [message for message in checks.run_checks() if message.id == UNSIGNED_URLS_REFUSED]

    assert [(message.level, message.msg, message.obj) for message in found] == [
        (checks.ERROR, MESSAGE, "settings.RADIOLOGY_SIGNED_URLS")
    ]
    assert found[0].hint == "Remove RADIOLOGY_SIGNED_URLS from the environment or set it to 1."


def test_manage_py_check_refuses_to_go_on(settings: Any) -> None:
    """What runserver and migrate run first: the error stops them."""
    settings.RADIOLOGY_SIGNED_URLS = False

    with pytest.raises(SystemCheckError, match=r"radiology\.E001.*unsigned links are not supported"):
        call_command("check")
