"""How every front-door page is answered: who may open it, and the headers that keep it to itself.

Roles are the API's: doctors, radiology techs and superusers see studies (can_view_radiology),
techs (and superusers) their failed uploads and the unmatched inbox (can_upload_radiology).
Someone not signed in is sent to sign in; someone signed in without the role gets a page that
says so (403), never an empty list that would look like "no studies".

Each page allows only its own inline style (by nonce), no script at all, images from itself,
and forms that post to itself or to where a viewer link sends the browser (the OHIF origin, or
PACS_PUBLIC_URL): Chromium checks a form's redirect against form-action too.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers

from apps.radiology.access.permissions import can_upload_radiology, can_view_radiology

STYLE_NONCE = "style_nonce"


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else None


def content_security_policy(nonce: str) -> str:
    targets = {origin for origin in (_origin(settings.OHIF_VIEWER_URL), _origin(settings.PACS_PUBLIC_URL)) if origin}
    form_action = " ".join(["'self'", *sorted(targets)])
    return (
        f"default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self'; form-action {form_action}; "
        "base-uri 'none'; frame-ancestors 'none'"
    )


def with_page_headers(response: HttpResponse, nonce: str) -> HttpResponse:
    """Never cached (the pages name patients), CSP as described in the module docstring."""
    add_never_cache_headers(response)
    response["Content-Security-Policy"] = content_security_policy(nonce)
    return response


def page_context(request: HttpRequest, context: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """The template context every page gets: the style nonce, and the user's role flags for the menu."""
    nonce = secrets.token_urlsafe(16)
    user = request.user
    return {
        **(context or {}),
        STYLE_NONCE: nonce,
        "sees_studies": can_view_radiology(user),
        "is_tech": can_upload_radiology(user),
    }, nonce


def render_page(
    request: HttpRequest, template: str, context: dict[str, Any] | None = None, status: int = 200
) -> HttpResponse:
    full, nonce = page_context(request, context)
    return with_page_headers(render(request, template, full, status=status), nonce)


def refused(request: HttpRequest, *, status: int, message: str) -> HttpResponse:
    """A page that says why nothing is shown: no radiology role (403), or no such study (404)."""
    return render_page(request, "radiology/frontdoor/refused.html", {"message": message}, status=status)


NO_RADIOLOGY_ROLE = (
    "Your account has no radiology role. Doctors and radiology technicians see studies here; "
    "ask an administrator if you should be one of them."
)
TECHS_ONLY = "Only radiology technicians see failed uploads and the unmatched inbox."

View = Callable[..., HttpResponse]


def people_page(*, techs_only: bool = False) -> Callable[[View], View]:
    """Let in a signed-in user with the role; send anyone else to sign in, or tell them they may not."""

    def decorate(view: View) -> View:
        @wraps(view)
        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                # Back to this page after signing in; a form's target (POST only) is not a page.
                back = request.get_full_path() if request.method in ("GET", "HEAD") else reverse("frontdoor:studies")
                return redirect_to_login(back, reverse("frontdoor:sign-in"))
            if not can_view_radiology(request.user):
                return refused(request, status=403, message=NO_RADIOLOGY_ROLE)
            if techs_only and not can_upload_radiology(request.user):
                return refused(request, status=403, message=TECHS_ONLY)
            return view(request, *args, **kwargs)

        return guarded

    return decorate
