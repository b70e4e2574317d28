"""Django's own 400/403/404/500 answers as `{"detail", "code"}` JSON under /api/ (handler400 etc.).

Errors raised inside DRF views already get that shape from the API's exception handler. These
are the answers Django gives before or around a view: a path no pattern matches (a fuzzed
frame list with an encoded "/", an id the URL converter refuses), a request Django itself
refuses (RequestDataTooBig, a bad Host: 400), a CSRF failure (403). A client of the API
branches on `code` there too, instead of parsing an HTML page. Elsewhere (admin, the viewer's
pages) Django's own pages stay.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions

from apps.radiology.errors import BadRequest, RadiologyError, ServerError, error_json_response

API_PREFIXES = ("/api/", "/healthz")


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIXES)


def _json(error: RadiologyError | exceptions.APIException) -> JsonResponse:
    """The error's body as the API answers it (its code is in errors.all_error_codes()), never cached."""
    if isinstance(error, RadiologyError):
        response = error_json_response(error)
    else:  # one of DRF's own codes, in DRF's own words
        response = JsonResponse({"detail": str(error.detail), "code": error.default_code}, status=error.status_code)
    response["Cache-Control"] = "no-store"
    return response


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return _json(BadRequest())
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return _json(exceptions.PermissionDenied())
    return defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return _json(exceptions.NotFound())
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return _json(ServerError())
    return defaults.server_error(request)
