"""The one exception handler: every error leaves the API as {"detail": ..., "code": ...}.

RadiologyError (from services) and DRF's own exceptions share the shape, so the EMR
frontend can branch on a stable `code` rather than on English text.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from apps.radiology.errors import RadiologyError


class InvalidExpiresIn(exceptions.ValidationError):
    default_code = "invalid_expires_in"


def _first_message(detail: Any) -> str:
    if isinstance(detail, dict):
        for key, value in detail.items():
            message = _first_message(value)
            return message if key == "non_field_errors" else f"{key}: {message}"
        return "Invalid input."
    if isinstance(detail, list):
        return _first_message(detail[0]) if detail else "Invalid input."
    return str(detail)


def _first_code(detail: Any, fallback: str) -> str:
    if isinstance(detail, dict):
        return _first_code(next(iter(detail.values()), fallback), fallback) if detail else fallback
    if isinstance(detail, list):
        return _first_code(detail[0], fallback) if detail else fallback
    return str(getattr(detail, "code", None) or fallback)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Shape RadiologyError and DRF exceptions as {"detail", "code"} (+ "errors" per field)."""
    if isinstance(exc, RadiologyError):
        return Response({"detail": exc.detail, "code": exc.code, **exc.extra}, status=exc.status_code)
    # Django's own 404 and 403 (get_object_or_404, get_object) get the same shape and code
    # as DRF's; DRF's handler converts them only for its own response, not for `exc` here.
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    detail = exc.detail
    body: dict[str, Any] = {
        "detail": _first_message(detail),
        "code": _first_code(detail, exc.default_code),
    }
    if isinstance(detail, dict) and response.status_code == status.HTTP_400_BAD_REQUEST:
        body["errors"] = exc.get_full_details()
    response.data = body
    return response
