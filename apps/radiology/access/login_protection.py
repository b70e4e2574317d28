"""Login protection that an attacker cannot turn against a whole clinic.

django-axes (a well-kept library, rather than hand-written counters) counts failed logins
per username AND client address together (AXES_LOCKOUT_PARAMETERS = [["username",
"ip_address"]]), on every path that calls django.contrib.auth.authenticate() with the
request: the token endpoint and /admin/login/. Ten wrong passwords for one account from
the clinic's NAT lock out that account from that address only; a colleague behind the same
NAT, or the same user from another address, still logs in. The lock lifts by itself after
AXES_COOLOFF_TIME (a clinic has no on-call engineer to unlock accounts).

The token endpoint's DRF throttle counted per client address alone (one person's typos
locked out the clinic); it now counts per username and address too, a cap on attempts of
any outcome that complements axes' count of failures.

Both count per username, so one address could still try a few passwords on every account in
turn (password spraying). A second, higher throttle counts every attempt from one address
whatever the username (RADIOLOGY_TOKEN_RATE_PER_ADDRESS, default 60/min): over it the answer
is a 429, never a lockout, so a busy clinic NAT is slowed for a minute, not locked out.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_credentials
from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from rest_framework.request import Request
from rest_framework.throttling import ScopedRateThrottle, SimpleRateThrottle

from apps.radiology.access.audit import client_address
from apps.radiology.errors import LoginLockedOut, error_json_response


def _cool_off_seconds() -> int:
    cool_off = settings.AXES_COOLOFF_TIME
    return int(cool_off.total_seconds()) if cool_off is not None else 0


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict[str, Any] | None = None
) -> HttpResponse:
    """429 for a locked-out username+address: JSON with a code on the API, a page on admin."""
    seconds = _cool_off_seconds()
    if not request.path.startswith("/api/"):  # a person's login page: admin's, or the front door's sign-in
        minutes = max(1, math.ceil(seconds / 60))
        context = {**admin.site.each_context(request), "minutes": minutes, "title": "Log in"}
        response: HttpResponse = render(
            request, "radiology/login_locked_out.html", context, status=LoginLockedOut.status_code
        )
    else:
        response = error_json_response(LoginLockedOut())
    if seconds:
        response["Retry-After"] = str(seconds)
    response["Cache-Control"] = "no-store"
    return response


class UsernameAndClientRateThrottle(ScopedRateThrottle):
    """DRF's scoped throttle, keyed by the username tried and the client address together.

    Keyed by address alone, one clinic NAT shares one budget; keyed by username alone, anyone
    could exhaust a colleague's. The key is a hash: usernames stay out of the cache.
    """

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        username = request.data.get("username") if hasattr(request.data, "get") else None
        name = username.strip().lower() if isinstance(username, str) else ""
        ident = hashlib.sha256(f"{name}\x00{client_address(request._request) or ''}".encode()).hexdigest()
        return self.cache_format % {"scope": self.scope, "ident": ident}


class ClientAddressRateThrottle(SimpleRateThrottle):
    """Every token request from one client address, whatever the username: against password spraying.

    Listed with UsernameAndClientRateThrottle; DRF asks every throttle, and either refuses. The
    rate is read from settings.RADIOLOGY_TOKEN_RATE_PER_ADDRESS on each request (not copied
    into the class at import, as DRF's DEFAULT_THROTTLE_RATES are).
    """

    scope = "auth-token-address"

    def get_rate(self) -> str | None:
        return settings.RADIOLOGY_TOKEN_RATE_PER_ADDRESS

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": client_address(request._request) or ""}


class LoginAttemptBackend(AxesStandaloneBackend):
    """django-axes' lockout check, for logins that come over the network (with a request).

    authenticate() without a request is not a login attempt from a client (a shell, a
    management command, the test client's login()): there is no address to count by, and
    axes' own backend would refuse it outright.
    """

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> None:
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def note_successful_login(request: HttpRequest, username: str) -> None:
    """Clear the failures of `username` from this address after a login that does not call login().

    axes resets the count on Django's user_logged_in signal (admin sends it); the token
    endpoint hands out a token instead of a session, so it says so here.
    """
    if not (settings.AXES_ENABLED and settings.AXES_RESET_ON_SUCCESS):
        return
    AxesProxyHandler.update_request(request)
    AxesProxyHandler.get_implementation().reset_user_attempts(request, get_credentials(username))
