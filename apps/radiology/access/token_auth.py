"""DRF token authentication that also learns the user's radiology roles in the same query.

Every API and DICOMweb request checks the caller's role (permissions.py) and the audit trail
records it. DRF's TokenAuthentication reads the token and user, then the permission check
read the user's groups: two round trips before any work. OHIF asks for hundreds of frames
per study, so this one query per request is worth its few lines.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, QuerySet
from django.utils.translation import gettext_lazy as _
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

from apps.radiology.access.permissions import KNOWN_GROUPS, remember_radiology_groups
from apps.radiology.fastpaths.prepared import PreparedLookup


def _token_with_roles(key: str) -> QuerySet[Token]:
    memberships = get_user_model().groups.through.objects.filter(user_id=OuterRef("user_id"))
    flags = {
        f"in_group_{index}": Exists(memberships.filter(group__name=name)) for index, name in enumerate(KNOWN_GROUPS)
    }
    return Token.objects.select_related("user").annotate(**flags).filter(key=key).order_by()[:1]


_TOKEN_WITH_ROLES = PreparedLookup(_token_with_roles, parameters=1)


class RadiologyTokenAuthentication(TokenAuthentication):
    """`Authorization: Token <key>`; the user comes back with their radiology groups known."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        token = _TOKEN_WITH_ROLES.first(key)
        # The same answers and messages as DRF's own authenticate_credentials.
        if token is None:
            raise AuthenticationFailed(_("Invalid token."))
        if not token.user.is_active:
            raise AuthenticationFailed(_("User inactive or deleted."))
        remember_radiology_groups(
            token.user,
            {name for index, name in enumerate(KNOWN_GROUPS) if getattr(token, f"in_group_{index}")},
        )
        return (token.user, token)
