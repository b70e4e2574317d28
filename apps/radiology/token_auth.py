"""DRF token authentication that also learns the user's radiology roles in the same query.

Every API and DICOMweb request checks the caller's role (permissions.py) and the audit trail
records it. DRF's TokenAuthentication reads the token and user, then the permission check
read the user's groups: two round trips before any work. OHIF asks for hundreds of frames
per study, so this one query per request is worth its few lines.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef
from django.utils.translation import gettext_lazy as _
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed

from apps.radiology.permissions import RADIOLOGY_GROUPS, remember_radiology_groups


class RadiologyTokenAuthentication(TokenAuthentication):
    """`Authorization: Token <key>`; the user comes back with their radiology groups known."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        memberships = get_user_model().groups.through.objects.filter(user_id=OuterRef("user_id"))
        flags = {
            f"in_group_{index}": Exists(memberships.filter(group__name=name))
            for index, name in enumerate(RADIOLOGY_GROUPS)
        }
        token = self.get_model().objects.select_related("user").annotate(**flags).filter(key=key).first()
        # The same answers and messages as DRF's own authenticate_credentials.
        if token is None:
            raise AuthenticationFailed(_("Invalid token."))
        if not token.user.is_active:
            raise AuthenticationFailed(_("User inactive or deleted."))
        remember_radiology_groups(
            token.user,
            {name for index, name in enumerate(RADIOLOGY_GROUPS) if getattr(token, f"in_group_{index}")},
        )
        return (token.user, token)
