"""Make the account a clinic's PACS-lite forwards its studies with (run on the regional server).

The account is in the group "Forwarding Clinic": it may upload and ask what it delivered, and
reads nothing. Its display name is the clinic's name the radiologist sees on each study it
sent (source_clinic). It signs in with its API token only (no usable password): the token is
printed here, to be put on the clinic's server, never into a database in clear there.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from rest_framework.authtoken.models import Token

from apps.radiology.access.permissions import FORWARDING_CLINIC_GROUP

NAME_MAX_LENGTH = 150  # the user's first_name, and a study's source_clinic


class Command(BaseCommand):
    help = (
        "Create a forwarding clinic's account (group Forwarding Clinic, no password) and print its API token; "
        "for an existing clinic account, print its token again and change nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help='the clinic\'s name, as radiologists will see it ("Ikeja Clinic")')
        parser.add_argument("--username", required=True, help="the account's username (ikeja)")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"].strip()
        username = options["username"].strip()
        if not name or len(name) > NAME_MAX_LENGTH:
            raise CommandError(f"The clinic's name must be 1 to {NAME_MAX_LENGTH} characters.")
        if not username:
            raise CommandError("--username must not be blank.")
        user_model = get_user_model()
        with transaction.atomic():
            user = user_model.objects.filter(**{user_model.USERNAME_FIELD: username}).first()
            if user is None:
                # No password: the clinic's server signs in with the token alone.
                user = user_model.objects.create_user(username=username, password=None, first_name=name)
                group, _created = Group.objects.get_or_create(name=FORWARDING_CLINIC_GROUP)
                user.groups.add(group)
                self.stdout.write(f"Created the forwarding clinic account {username!r} ({name}).")
            elif not user.groups.filter(name=FORWARDING_CLINIC_GROUP).exists():
                # Never hand out a person's token: only a clinic account's is printed.
                raise CommandError(f"The user {username!r} exists and is not a forwarding clinic account.")
            else:
                self.stdout.write(f"The forwarding clinic account {username!r} exists; its token is unchanged.")
            token, _created = Token.objects.get_or_create(user=user)
        self.stdout.write(f"Token: {token.key}")
        self.stdout.write(
            "Put it on the clinic's server as RADIOLOGY_FORWARD_TOKEN_<NAME> (or in a file named by "
            "RADIOLOGY_FORWARD_TOKEN_<NAME>_FILE), NAME being this server's name in that server's "
            "RADIOLOGY_FORWARD_DESTINATIONS, upper-cased. Only this command shows it: keep it secret."
        )
