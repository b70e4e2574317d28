"""RadiologyTokenAuthentication: DRF's token answers, with the radiology roles read in the same query."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import AbstractBaseUser, Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token

from apps.radiology.access.permissions import DOCTOR_GROUP, RADIOLOGY_TECH_GROUP, group_names
from apps.radiology.access.token_auth import RadiologyTokenAuthentication
from apps.radiology.models import AuditEvent
from apps.radiology.tests.api_fixtures import PERMISSION_DENIED, token_client
from apps.radiology.tests.conftest import make_user

STUDIES = "/api/v1/radiology/studies/"
QIDO = "/api/v1/radiology/dicomweb/studies"


def authenticate(key: str) -> tuple[Any, Any]:
    return RadiologyTokenAuthentication().authenticate_credentials(key)


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ((), frozenset()),
        ((DOCTOR_GROUP,), frozenset({DOCTOR_GROUP})),
        ((RADIOLOGY_TECH_GROUP,), frozenset({RADIOLOGY_TECH_GROUP})),
        ((DOCTOR_GROUP, RADIOLOGY_TECH_GROUP), frozenset({DOCTOR_GROUP, RADIOLOGY_TECH_GROUP})),
        (("Nurse", DOCTOR_GROUP), frozenset({DOCTOR_GROUP})),
    ],
)
def test_one_query_gives_the_user_and_their_radiology_groups(
    db: None, groups: tuple[str, ...], expected: frozenset[str]
) -> None:
    user = make_user("someone", groups=groups)
    key = Token.objects.create(user=user).key

    with CaptureQueriesContext(connection) as captured:
        found, token = authenticate(key)
        names = group_names(found)

    assert (found.pk, token.key, names) == (user.pk, key, expected)
    assert len(captured.captured_queries) == 1


def test_group_names_without_the_token_path_reads_only_radiology_groups(db: None) -> None:
    user = make_user("session-user", groups=("Nurse", RADIOLOGY_TECH_GROUP))

    assert group_names(user) == frozenset({RADIOLOGY_TECH_GROUP})


def test_unknown_token_is_401_with_drfs_answer(db: None) -> None:
    response = Client(headers={"Authorization": "Token " + "0" * 40}).get(STUDIES)

    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid token.", "code": "authentication_failed"}
    assert response["WWW-Authenticate"] == "Token"


def test_inactive_user_is_401_even_with_a_valid_token(doctor: AbstractBaseUser) -> None:
    client = token_client(doctor)
    doctor.is_active = False
    doctor.save(update_fields=["is_active"])

    response = client.get(QIDO, headers={"Accept": "application/dicom+json"})

    assert response.status_code == 401
    assert response.json() == {"detail": "User inactive or deleted.", "code": "authentication_failed"}


def test_a_group_removed_is_seen_by_the_next_request(doctor: AbstractBaseUser) -> None:
    client = token_client(doctor)
    assert client.get(STUDIES).status_code == 200

    doctor.groups.remove(Group.objects.get(name=DOCTOR_GROUP))
    response = client.get(STUDIES)

    assert response.status_code == 403
    assert response.json() == PERMISSION_DENIED
    assert list(AuditEvent.objects.order_by("pk").values_list("role", "status_code")) == [
        ("doctor", 200),
        ("other", 403),
    ]
