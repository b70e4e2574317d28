"""manage.py create_forwarding_clinic: the regional server's account for one clinic's PACS-lite.

It makes the user (no usable password) in the group "Forwarding Clinic" (made if missing), with
the clinic's name as its display name, and prints its API token once with where to put it. Run
again for the same username it prints the same token and changes nothing; it never prints the
token of an account that is not a clinic's.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.authtoken.models import Token

from apps.radiology.access.permissions import (
    FORWARDING_CLINIC_GROUP,
    can_upload_radiology,
    can_use_upload_sync,
    can_view_radiology,
    forwarding_clinic_name,
)

pytestmark = pytest.mark.django_db

WHERE = (
    "Put it on the clinic's server as RADIOLOGY_FORWARD_TOKEN_<NAME> (or in a file named by "
    "RADIOLOGY_FORWARD_TOKEN_<NAME>_FILE), NAME being this server's name in that server's "
    "RADIOLOGY_FORWARD_DESTINATIONS, upper-cased. Only this command shows it: keep it secret.\n"
)


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("create_forwarding_clinic", *args, stdout=out)
    return out.getvalue()


def snapshot() -> list[tuple[Any, ...]]:
    """Every user's row with its groups and token: what a re-run must leave as it was."""
    return [
        (
            *get_user_model().objects.filter(pk=user.pk).values_list().get(),
            tuple(user.groups.values_list("name", flat=True)),
            tuple(Token.objects.filter(user=user).values_list("key", "created")),
        )
        for user in get_user_model().objects.order_by("pk")
    ]


def test_it_makes_the_clinics_account_and_prints_its_token_once() -> None:
    output = run("Ikeja Clinic", "--username", "ikeja")

    user = get_user_model().objects.get(username="ikeja")
    token = Token.objects.get(user=user)
    assert output == f"Created the forwarding clinic account 'ikeja' (Ikeja Clinic).\nToken: {token.key}\n" + WHERE
    assert list(user.groups.values_list("name", flat=True)) == [FORWARDING_CLINIC_GROUP]
    assert (user.has_usable_password(), user.is_staff, user.is_superuser, user.is_active) == (False, False, False, True)
    assert (user.get_full_name(), forwarding_clinic_name(user)) == ("Ikeja Clinic", "Ikeja Clinic")
    # Upload sync only: not STOW-RS, the inbox or a tech's pages (can_upload_radiology), nor any read.
    assert (can_use_upload_sync(user), can_upload_radiology(user), can_view_radiology(user)) == (True, False, False)


def test_running_it_again_prints_the_same_token_and_changes_nothing() -> None:
    first = run("Ikeja Clinic", "--username", "ikeja")
    before = snapshot()

    again = run("Another Name", "--username", "ikeja")

    token = Token.objects.get(user__username="ikeja")
    assert f"Token: {token.key}\n" in first
    assert (
        again == f"The forwarding clinic account 'ikeja' exists; its token is unchanged.\nToken: {token.key}\n" + WHERE
    )
    assert snapshot() == before
    assert Group.objects.filter(name=FORWARDING_CLINIC_GROUP).count() == 1


def test_a_second_clinic_joins_the_same_group_with_its_own_token() -> None:
    run("Ikeja Clinic", "--username", "ikeja")
    run("Epe Clinic", "--username", "epe")

    group = Group.objects.get(name=FORWARDING_CLINIC_GROUP)
    assert sorted(group.user_set.values_list("username", flat=True)) == ["epe", "ikeja"]
    assert Token.objects.values("key").distinct().count() == 2


def test_it_never_prints_the_token_of_a_persons_account(radtech: Any) -> None:
    before = snapshot()

    with pytest.raises(CommandError) as raised:
        run("Ikeja Clinic", "--username", "radtech-bob")

    assert str(raised.value) == "The user 'radtech-bob' exists and is not a forwarding clinic account."

    assert snapshot() == before
    assert Token.objects.count() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("  ", "--username", "ikeja"), "The clinic's name must be 1 to 150 characters."),
        (("x" * 151, "--username", "ikeja"), "The clinic's name must be 1 to 150 characters."),
        (("Ikeja Clinic", "--username", " "), "--username must not be blank."),
    ],
)
def test_a_blank_or_overlong_name_is_refused(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(CommandError) as raised:
        run(*args)

    assert str(raised.value) == message

    assert get_user_model().objects.count() == 0
