"""Who may read radiology data: the seed's CanViewRadiologyRequest, and who may upload."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

DOCTOR_GROUP = "Doctor"
RADIOLOGY_TECH_GROUP = "Radiology Tech"
# A clinic's PACS-lite forwarding its studies to this (regional) server: its account uploads
# and asks what it delivered (`manage.py create_forwarding_clinic`), and reads nothing.
FORWARDING_CLINIC_GROUP = "Forwarding Clinic"
# The groups whose members read radiology data (and whose signed links stand, signing.py).
RADIOLOGY_GROUPS = (DOCTOR_GROUP, RADIOLOGY_TECH_GROUP)
# The only groups any radiology decision looks at: read together, in the one query that
# learns a request's roles (group_names, token_auth.py), so a third group costs no query.
KNOWN_GROUPS = (*RADIOLOGY_GROUPS, FORWARDING_CLINIC_GROUP)


def group_names(user: AbstractBaseUser) -> frozenset[str]:
    """The user's radiology groups, read once per request (permission checks and the audit trail share it).

    Token requests learn them in the token's own query (token_auth.py); others ask here.
    """
    cached = getattr(user, "_radiology_group_names", None)
    if cached is None:
        cached = frozenset(user.groups.filter(name__in=KNOWN_GROUPS).values_list("name", flat=True))
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
    """Doctors, radiology techs and superusers may read every radiology endpoint (forwarding clinics not)."""
    return _in_groups(user, RADIOLOGY_GROUPS)


def can_upload_radiology(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Only radiology techs (and superusers) add images (STOW-RS, uploads, the inbox, a tech's pages)."""
    return _in_groups(user, (RADIOLOGY_TECH_GROUP,))


def can_use_upload_sync(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Upload sync is the techs' way in, and the one way in of a forwarding clinic's studies.

    A clinic's account gets nothing else a tech has (STOW-RS, the unmatched inbox, the front
    door): it is a machine's credential kept on another server, so it may do only what forwarding needs.
    """
    return _in_groups(user, (RADIOLOGY_TECH_GROUP, FORWARDING_CLINIC_GROUP))


def is_forwarding_clinic(user: AbstractBaseUser | AnonymousUser) -> bool:
    """A forwarding clinic's account: in the group, and no superuser (a person's account, whose
    requests then cost no query for the group)."""
    if not user.is_authenticated or not user.is_active or user.is_superuser:
        return False
    return FORWARDING_CLINIC_GROUP in group_names(user)  # type: ignore[arg-type]


def forwarding_clinic_name(user: AbstractBaseUser | AnonymousUser) -> str:
    """The clinic a forwarding clinic's account stands for (its full name, else its username); "" for anyone else.

    Recorded as the source_clinic of what it sends, so the radiologist sees where a study came from.
    """
    if not is_forwarding_clinic(user):
        return ""
    full_name = getattr(user, "get_full_name", lambda: "")()
    return str(full_name or user.get_username())  # type: ignore[union-attr]


class CanViewRadiologyRequest(BasePermission):
    """The seed's permission: Doctor or Radiology Tech (or superuser)."""

    message = "Only doctors and radiology technicians may view radiology images."

    def has_permission(self, request: Request, view: Any) -> bool:
        return can_view_radiology(request.user)


class CanUploadRadiology(BasePermission):
    message = "Only radiology technicians may upload radiology images."

    def has_permission(self, request: Request, view: Any) -> bool:
        return can_upload_radiology(request.user)


class CanUseUploadSync(CanUploadRadiology):
    """Upload sync: radiology techs, superusers and forwarding clinics."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return can_use_upload_sync(request.user)


class IsForwardingClinic(BasePermission):
    message = "Only forwarding clinic accounts may ask what they delivered."

    def has_permission(self, request: Request, view: Any) -> bool:
        return is_forwarding_clinic(request.user)
