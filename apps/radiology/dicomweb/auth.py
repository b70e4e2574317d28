"""Who may use DICOMweb: EMR users by session or token, or a viewer token for one study.

OHIF v3 takes `token` from the viewer URL and sends it as `Authorization: Bearer <token>`
on every request. Such a token grants read of its one study only: searches see only that
study, any other UID is 404, writes are 403. An altered, expired or revoked token is 401.
"""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from apps.radiology.access.permissions import can_upload_radiology, can_view_radiology
from apps.radiology.access.signing import SignatureRejected, ViewerGrant, verify_viewer_token


class ViewerTokenPrincipal:
    """The request's user when it came with a viewer token: authenticated, but only for one study."""

    is_authenticated = True
    is_active = True
    is_anonymous = False
    is_superuser = False
    is_staff = False
    pk = None
    id = None

    def __init__(self, grant: ViewerGrant) -> None:
        self.grant = grant

    def __str__(self) -> str:
        return f"viewer-token:{self.grant.token_id}"

    def get_username(self) -> str:
        return str(self)


class ViewerTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <viewer token>`."""

    keyword = b"bearer"

    def authenticate(self, request: Request) -> tuple[ViewerTokenPrincipal, ViewerGrant] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("Malformed bearer token.", code="invalid_token")
        try:
            grant = verify_viewer_token(parts[1].decode("ascii"))
        except (SignatureRejected, UnicodeDecodeError):
            raise AuthenticationFailed(
                "The viewer token is invalid, expired or revoked.", code="invalid_token"
            ) from None
        return ViewerTokenPrincipal(grant), grant

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="pacs-lite dicomweb"'


def viewer_grant(request: Request) -> ViewerGrant | None:
    """The study scope of the request, if it came with a viewer token."""
    return request.auth if isinstance(request.auth, ViewerGrant) else None


class CanUseDicomWeb(BasePermission):
    """Viewer tokens read; doctors and radiology techs read; radiology techs store."""

    message = "Only doctors and radiology technicians may use DICOMweb; only technicians may store."

    def has_permission(self, request: Request, view: Any) -> bool:
        if viewer_grant(request) is not None:
            return request.method in SAFE_METHODS
        if request.method in SAFE_METHODS:
            return can_view_radiology(request.user)
        return can_upload_radiology(request.user)
