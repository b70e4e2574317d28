"""The audit trail: every request that reads or writes clinical data leaves one AuditEvent.

Recorded by a middleware after the response, so every route, present and future, is
covered without each view remembering to: who (user, or viewer-token id), their role,
what (ids and UIDs from the URL), how (channel and route), when, the client address, and
the outcome (from the status code). Query *names* are kept, never their values (a search
by patient name must not copy the name into the trail), and never tokens.

Also recorded: every failed login, on the token endpoint and admin (the username tried,
the client address, the channel; never the password), and requests that came with a
viewer token that was refused: its id when the signature is good (expired or revoked), or
the role `invalid_viewer_token` when it is altered or malformed. A redirect to the admin
login page is a denial, not an "allowed".
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.contrib.auth.signals import user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.urls import NoReverseMatch, reverse

from apps.radiology.access.audit_writer import write_event
from apps.radiology.access.permissions import DOCTOR_GROUP, FORWARDING_CLINIC_GROUP, RADIOLOGY_TECH_GROUP, group_names
from apps.radiology.access.signing import viewer_token_id
from apps.radiology.fastpaths.after_response import when_closed
from apps.radiology.models import AuditEvent

logger = logging.getLogger(__name__)

# The front door's pages that show clinical data are all under /radiology/ (apps/radiology/frontdoor/).
AUDITED_PREFIXES = ("/api/v1/radiology/", "/admin/radiology/", "/radiology/")
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
INVALID_VIEWER_TOKEN_ROLE = "invalid_viewer_token"  # noqa: S105 (a role name)
# Set on the request by the user_login_failed receiver; the middleware records it with the answer.
_FAILED_LOGIN = "_radiology_failed_login"
_ID_KWARGS = {"pk": None, "image_id": "image_id", "study_id": "study_id"}


def role_of(user: Any) -> str:
    """A stable role name for the trail."""
    if user is None or isinstance(user, AnonymousUser) or not getattr(user, "is_authenticated", False):
        return "anonymous"
    if getattr(user, "claims", None) is not None:  # a viewer token's principal (its row need not be read)
        return "viewer_token"
    if user.is_superuser:
        return "superuser"
    names = group_names(user)
    if RADIOLOGY_TECH_GROUP in names:
        return "radiology_tech"
    if DOCTOR_GROUP in names:
        return "doctor"
    if FORWARDING_CLINIC_GROUP in names:
        return "forwarding_clinic"
    return "other"


def outcome_of(status_code: int) -> str:
    if status_code < 400:
        return AuditEvent.Outcome.ALLOWED
    if status_code in (401, 403):
        return AuditEvent.Outcome.DENIED
    if status_code == 404:
        return AuditEvent.Outcome.NOT_FOUND
    if status_code < 500:
        return AuditEvent.Outcome.REJECTED
    return AuditEvent.Outcome.ERROR


def channel_of(path: str, route: str) -> str:
    if path.startswith("/admin/"):
        return "admin"
    if path.startswith("/radiology/"):
        return "web"
    if "/dicomweb/" in path:
        return "dicomweb"
    if route == "signed-image":
        return "signed_url"
    if route.startswith("lite-viewer"):
        return "viewer"
    return "api"


def _ip_or_none(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def client_address(request: HttpRequest) -> str | None:
    """REMOTE_ADDR, or the last X-Forwarded-For hop when the request came through a trusted proxy.

    A proxy is trusted for every request with RADIOLOGY_TRUST_X_FORWARDED_FOR (compose: the app
    is reached only through one), or for a request that carries RADIOLOGY_VIEWER_PROXY_KEY in
    X-PACS-Proxy-Key (`make run`: nginx in front of the app servers, on both ports, sends it).
    Not by the peer's address: another proxy on the same box (a clinic's
    TLS proxy) would pass on whatever X-Forwarded-For its client made up. The proxy appends the
    address it saw to whatever the client sent (nginx's $proxy_add_x_forwarded_for), so only
    the last hop is the proxy's word; earlier hops are the client's own claims. Anything that
    is not an IP address is dropped: it would be a forged entry, and PostgreSQL's inet column
    would refuse the whole event.
    """
    if settings.RADIOLOGY_TRUST_X_FORWARDED_FOR or _through_viewer_proxy(request):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        last_hop = _ip_or_none(forwarded.rsplit(",", 1)[-1]) if forwarded else None
        if last_hop is not None:
            return last_hop
    return _ip_or_none(request.META.get("REMOTE_ADDR") or "")


def _through_viewer_proxy(request: HttpRequest) -> bool:
    """Whether the request carries the key `make run`'s nginx sends (compared in constant time)."""
    key = settings.RADIOLOGY_VIEWER_PROXY_KEY
    sent = request.META.get("HTTP_X_PACS_PROXY_KEY", "")
    return bool(key) and bool(sent) and hmac.compare_digest(sent.encode(), key.encode())


def record(
    *,
    user: AbstractBaseUser | AnonymousUser | Any | None,
    channel: str,
    action: str,
    route: str,
    method: str,
    status_code: int,
    address: str | None = None,
    query_keys: str = "",
    presented_token: str | None = None,
    outcome: str | None = None,
    username: str = "",
    **what: Any,
) -> AuditEvent | None:
    """Write one event (now, or with the next group: audit_writer.py); a failure to audit is
    logged loudly but never breaks the request.

    `presented_token`: the viewer token the request came with, if any; when it was refused
    (the request is anonymous) the event names it by id, or marks it invalid (see module doc).
    `username`: the name tried, for an event with no user (a failed login).
    """
    claims = getattr(user, "claims", None)
    real_user = user if getattr(user, "pk", None) is not None else None
    role = role_of(user)
    token_id = claims.token_id if claims is not None else None
    if role == "anonymous" and presented_token is not None:
        token_id = viewer_token_id(presented_token)  # an HMAC check, no query, off the request's latency
        role = "viewer_token" if token_id is not None else INVALID_VIEWER_TOKEN_ROLE
    try:
        event = AuditEvent(
            user=real_user,
            username=real_user.get_username() if real_user is not None else username[:150],
            role=role,
            viewer_token_id=token_id,
            channel=channel,
            action=action,
            route=route[:100],
            method=method[:10],
            status_code=status_code,
            outcome=outcome or outcome_of(status_code),
            client_address=address,
            query_keys=query_keys[:255],
            **{key: value for key, value in what.items() if value not in (None, "")},
        )
        write_event(event)  # with the others of the next RADIOLOGY_AUDIT_FLUSH_MS (audit_writer.py)
        return event
    except Exception:  # the trail must not take the service down; the error is logged
        logger.exception("audit event could not be written for route %s", route)
        return None


# Control characters in a query name: PostgreSQL refuses NUL in text, which would lose the event.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_ID = 2**63 - 1  # the id columns are BigIntegerField


def _id(value: Any) -> int | None:
    """An id from the URL as its column can hold it, else None: a URL must never break the event.

    isdecimal, not isdigit: "²" is a digit that int() refuses, and a 30-digit id overflows the column.
    """
    text = str(value)
    if not text.isdecimal() or len(text) > 19:  # int() of thousands of digits is slow, then refused
        return None
    number = int(text)
    return number if number <= _MAX_ID else None


def _what(route: str, kwargs: dict[str, Any], claims: Any) -> dict[str, Any]:
    what: dict[str, Any] = {}
    for key in ("study_uid", "series_uid"):
        if kwargs.get(key):
            what[key] = str(kwargs[key])[:64]
    if kwargs.get("image_uid"):
        what["image_uid"] = str(kwargs["image_uid"])[:64]
    if kwargs.get("image_id"):
        what["image_id"] = _id(kwargs["image_id"])
    if kwargs.get("study_id"):
        what["study_id"] = _id(kwargs["study_id"])
    pk = _id(kwargs.get("pk") or kwargs.get("object_id") or "")
    if pk is not None:
        if route.startswith("study") or "radiologystudy" in route:
            what["study_id"] = pk
        elif route.startswith("image") or "radiologyimage" in route:
            what["image_id"] = pk
        elif route.startswith("upload"):
            what["upload_id"] = pk
        elif "radiologyorder" in route:
            what["order_id"] = pk
    if claims is not None and "study_uid" not in what:
        what["study_uid"] = claims.study_uid
    return what


@receiver(user_login_failed, dispatch_uid="radiology-audit-failed-login")
def _note_failed_login(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any) -> None:
    """Mark the request; AuditMiddleware records the failure with the status it was answered with.

    Django hands over credentials with the password already masked; only the username is kept.
    A failure outside any request (a shell's authenticate()) is not a login attempt to audit.
    """
    if request is not None:
        tried = credentials.get("username")
        setattr(request, _FAILED_LOGIN, tried if isinstance(tried, str) else "")


def _presented_viewer_token(request: HttpRequest, route: str) -> str | None:
    """The viewer token the request came with: `Authorization: Bearer`, or the lite viewer's ?token=."""
    scheme, _, credentials = (request.META.get("HTTP_AUTHORIZATION") or "").partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    if route == "lite-viewer" and "token" in request.GET:
        return request.GET["token"]
    return None


def _login_channel(path: str) -> str:
    """Where a login was tried: admin's form, the API's token endpoint, or the front door's sign-in."""
    if path.startswith("/admin/"):
        return "admin"
    return "api" if path.startswith("/api/") else "web"


def _is_login_redirect(response: HttpResponse) -> bool:
    """A 3xx to a login page (admin's, the front door's sign-in): someone without access sent away."""
    if not 300 <= response.status_code < 400 or "Location" not in response:
        return False
    try:
        logins = {reverse("admin:login"), reverse("frontdoor:sign-in")}
    except NoReverseMatch:  # the viewer's port routes neither
        return False
    return urlsplit(response["Location"]).path in logins


class AuditMiddleware:
    """Record an AuditEvent for each request under the radiology API and radiology admin, and each failed login."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if hasattr(request, _FAILED_LOGIN):
            self._record_failed_login(request, response)
            return response
        if request.method == "OPTIONS" or not request.path.startswith(AUDITED_PREFIXES):
            return response
        match = request.resolver_match
        route = (match.url_name or match.view_name) if match is not None else "unresolved"
        user = getattr(request, "user", None)
        claims = getattr(user, "claims", None)  # a viewer token's: what its signature vouches for
        when_closed(
            response,
            record,
            user=user,
            channel=channel_of(request.path, route or ""),
            action="write" if request.method in WRITE_METHODS else "read",
            route=route or "unresolved",
            method=request.method or "",
            status_code=response.status_code,
            address=client_address(request),
            query_keys=",".join(sorted(_CONTROL.sub("?", key) for key in request.GET if key.lower() != "token")),
            presented_token=_presented_viewer_token(request, route or ""),
            outcome=AuditEvent.Outcome.DENIED if _is_login_redirect(response) else None,
            # A refused token's claimed study is no study the request touched (a revoked token's
            # search names none): recorded as when authentication itself refused the token.
            **_what(
                route or "",
                dict(match.kwargs) if match is not None else {},
                claims if response.status_code != HTTPStatus.UNAUTHORIZED else None,
            ),
        )  # off the request's latency: a viewer asks for hundreds of frames (after_response.py)
        return response

    @staticmethod
    def _record_failed_login(request: HttpRequest, response: HttpResponse) -> None:
        match = request.resolver_match
        when_closed(
            response,
            record,
            user=None,
            username=getattr(request, _FAILED_LOGIN),
            channel=_login_channel(request.path),
            action="login",
            route=(match.url_name if match is not None else None) or "login",
            method=request.method or "",
            status_code=response.status_code,
            outcome=AuditEvent.Outcome.DENIED,
            address=client_address(request),
        )
