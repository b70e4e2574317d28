"""Who may use DICOMweb: EMR users by session or token, or a viewer token for one study.

The request's principal (access/principals.py) decides; the views read through the door
(access/visible.py), which restricts a viewer token to its study.

OHIF v3 takes `token` from the viewer URL and sends it as `Authorization: Bearer <token>`
on every request. Such a token grants read of its one study only: searches see only that
study, any other UID is 404, writes are 403. An altered, expired or revoked token is 401.

Authentication checks the token's signature and expiry only; its row (not revoked, its issuer
in standing) is read by the view: with the instance in one statement for the views OHIF asks
hundreds of times (DicomWebView.token_checked_by_lookup), before anything else for the rest.
"""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from apps.radiology.access.principals import ViewerTokenPrincipal, lookup_scope_of, principal_of
from apps.radiology.access.signing import SignatureRejected, ViewerTokenClaims, read_viewer_token
from apps.radiology.errors import InvalidToken

__all__ = ["CanUseDicomWeb", "ViewerTokenAuthentication", "ViewerTokenPrincipal"]


class ViewerTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <viewer token>`."""

    keyword = b"bearer"

    def authenticate(self, request: Request) -> tuple[ViewerTokenPrincipal, ViewerTokenClaims] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise InvalidToken("Malformed bearer token.")
        try:
            claims = read_viewer_token(parts[1].decode("ascii"))
        except (SignatureRejected, UnicodeDecodeError):
            raise InvalidToken() from None
        return ViewerTokenPrincipal(claims), claims

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="pacs-lite dicomweb"'


class CanUseDicomWeb(BasePermission):
    """Principals that may read something read (viewer tokens, doctors, radiology techs); those that may store store.

    Which rows a reader sees is the read door's answer (access/visible.py), not this class's.
    """

    message = "Only doctors and radiology technicians may use DICOMweb; only technicians may store."

    def has_permission(self, request: Request, view: Any) -> bool:
        principal = principal_of(request)
        if request.method in SAFE_METHODS:
            return not lookup_scope_of(principal).is_nothing  # no query for a viewer token's row
        return principal.may_store
