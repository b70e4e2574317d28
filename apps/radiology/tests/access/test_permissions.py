"""Who may read radiology data (Doctor, Radiology Tech, superuser) and who may upload (Radiology Tech)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, Group
from rest_framework.test import APIRequestFactory

from apps.radiology.access.permissions import (
    DOCTOR_GROUP,
    RADIOLOGY_TECH_GROUP,
    CanUploadRadiology,
    CanViewRadiologyRequest,
    can_upload_radiology,
    can_view_radiology,
)
from apps.radiology.tests.conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("role", "may_view", "may_upload"),
    [
        ("doctor", True, False),
        ("radtech", True, True),
        ("superuser", True, True),
        ("nurse", False, False),
    ],
)
def test_roles(request: pytest.FixtureRequest, role: str, may_view: bool, may_upload: bool) -> None:
    user = request.getfixturevalue(role)

    assert can_view_radiology(user) is may_view
    assert can_upload_radiology(user) is may_upload


def test_anonymous_may_do_nothing() -> None:
    assert can_view_radiology(AnonymousUser()) is False
    assert can_upload_radiology(AnonymousUser()) is False


@pytest.mark.parametrize("role", ["doctor", "radtech", "superuser"])
def test_an_inactive_user_loses_access(request: pytest.FixtureRequest, role: str) -> None:
    user = request.getfixturevalue(role)
    user.is_active = False
    user.save()

    assert can_view_radiology(user) is False
    assert can_upload_radiology(user) is False


def test_staff_without_a_group_is_not_enough() -> None:
    staff = make_user("staff-erin")
    staff.is_staff = True
    staff.save()

    assert can_view_radiology(staff) is False


@pytest.mark.parametrize("name", ["doctor", "Doctors", "Radiology tech", "Radiology"])
def test_group_names_must_match_exactly(name: str) -> None:
    user = make_user(f"user-{name.replace(' ', '-').lower()}", groups=(name,))

    assert can_view_radiology(user) is False


def test_a_user_in_both_groups_may_view_and_upload() -> None:
    user = make_user("both-fola", groups=(DOCTOR_GROUP, RADIOLOGY_TECH_GROUP))

    assert can_view_radiology(user) is True
    assert can_upload_radiology(user) is True


def test_membership_is_read_at_each_check(doctor: Any) -> None:
    """Removing someone from the group takes effect on their next request."""
    assert can_view_radiology(doctor) is True

    doctor.groups.remove(Group.objects.get(name=DOCTOR_GROUP))
    next_request_user = type(doctor).objects.get(pk=doctor.pk)  # each request loads its user anew

    assert can_view_radiology(next_request_user) is False


def test_a_check_costs_one_query_and_none_for_a_superuser(
    doctor: Any, superuser: Any, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(1):
        assert can_view_radiology(doctor) is True
    with django_assert_num_queries(0):
        assert can_view_radiology(superuser) is True


@pytest.mark.parametrize(
    ("permission_class", "role", "allowed"),
    [
        (CanViewRadiologyRequest, "doctor", True),
        (CanViewRadiologyRequest, "radtech", True),
        (CanViewRadiologyRequest, "superuser", True),
        (CanViewRadiologyRequest, "nurse", False),
        (CanViewRadiologyRequest, "anonymous", False),
        (CanUploadRadiology, "doctor", False),
        (CanUploadRadiology, "radtech", True),
        (CanUploadRadiology, "superuser", True),
        (CanUploadRadiology, "nurse", False),
        (CanUploadRadiology, "anonymous", False),
    ],
)
def test_drf_permission_classes(
    request: pytest.FixtureRequest, permission_class: type, role: str, allowed: bool
) -> None:
    http_request = APIRequestFactory().get("/api/v1/radiology/studies/")
    http_request.user = AnonymousUser() if role == "anonymous" else request.getfixturevalue(role)

    assert permission_class().has_permission(http_request, None) is allowed


def test_permission_messages() -> None:
    assert CanViewRadiologyRequest.message == "Only doctors and radiology technicians may view radiology images."
    assert CanUploadRadiology.message == "Only radiology technicians may upload radiology images."
