"""Who may read radiology data: the seed's CanViewRadiologyRequest, and who may upload."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

DOCTOR_GROUP = "Doctor"
RADIOLOGY_TECH_GROUP = "Radiology Tech"
# The only groups any radiology decision looks at.
RADIOLOGY_GROUPS = (DOCTOR_GROUP, RADIOLOGY_TECH_GROUP)


def group_names(user: AbstractBaseUser) -> frozenset[str]:
    """The user's radiology groups, read once per request (permission checks and the audit trail share it).

    Token requests learn them in the token's own query (token_auth.py); others ask here.
    """
    cached = getattr(user, "_radiology_group_names", None)
    if cached is None:
        cached = frozenset(user.groups.filter(name__in=RADIOLOGY_GROUPS).values_list("name", flat=True))
        remember_radiology_groups(user, cached)
    return cached


def remember_radiology_groups(user: AbstractBaseUser, names: set[str] | frozenset[str]) -> None:
    """Keep the user's radiology groups on this request's user object (see group_names)."""
    user._radiology_group_names = frozenset(names)  # type: ignore[union-attr]


def _in_groups(user: AbstractBaseUser | AnonymousUser, names: tuple[str, ...]) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    return not group_names(user).isdisjoint(names)


def can_view_radiology(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Doctors, radiology techs and superusers may read every radiology endpoint."""
    return _in_groups(user, RADIOLOGY_GROUPS)


def can_upload_radiology(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Only radiology techs (and superusers) add images."""
    return _in_groups(user, (RADIOLOGY_TECH_GROUP,))


class CanViewRadiologyRequest(BasePermission):
    """The seed's permission: Doctor or Radiology Tech (or superuser)."""

    message = "Only doctors and radiology technicians may view radiology images."

    def has_permission(self, request: Request, view: Any) -> bool:
        return can_view_radiology(request.user)


class CanUploadRadiology(BasePermission):
    message = "Only radiology technicians may upload radiology images."

    def has_permission(self, request: Request, view: Any) -> bool:
        return can_upload_radiology(request.user)
