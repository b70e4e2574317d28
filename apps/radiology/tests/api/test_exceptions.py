"""The one exception handler: RadiologyError and DRF's exceptions leave as {"detail", "code"}."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory
from rest_framework.views import APIView

from apps.radiology import errors
from apps.radiology.api.exceptions import InvalidExpiresIn, api_exception_handler
from apps.radiology.errors import RadiologyError


def handle(exc: Exception) -> Response:
    response = api_exception_handler(exc, {})
    assert response is not None
    return response


def all_radiology_errors() -> list[type[RadiologyError]]:
    found: list[type[RadiologyError]] = []
    pending = [RadiologyError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted(found, key=lambda cls: cls.__name__)


RADIOLOGY_ERRORS = all_radiology_errors()


def test_the_hierarchy_is_found() -> None:
    names = {cls.__name__ for cls in RADIOLOGY_ERRORS}

    assert {"RadiologyError", "InvalidUID", "ImageConflict", "StorageFailure", "FileTooLarge"} <= names
    assert all(cls.__module__ == errors.__name__ for cls in RADIOLOGY_ERRORS)


@pytest.mark.parametrize("error_class", RADIOLOGY_ERRORS, ids=lambda cls: cls.__name__)
def test_a_radiology_error_has_its_status_and_code(error_class: type[RadiologyError]) -> None:
    response = handle(error_class())

    assert response.status_code == error_class.status_code
    assert 400 <= response.status_code <= 599
    assert response.data == {"detail": error_class.default_detail, "code": error_class.code}
    assert error_class is RadiologyError or error_class.code != RadiologyError.code


def test_radiology_error_codes_are_unique() -> None:
    codes = [cls.code for cls in RADIOLOGY_ERRORS]

    assert len(codes) == len(set(codes))


@pytest.mark.parametrize(
    ("exc", "status", "body"),
    [
        (errors.InvalidUID("study_uid is not a valid DICOM UID."), 400, "study_uid is not a valid DICOM UID."),
        (errors.ImageConflict("Stored under another order."), 409, "Stored under another order."),
        (errors.FileTooLarge(), 413, errors.FileTooLarge.default_detail),
        (errors.UnsupportedFileType(), 415, errors.UnsupportedFileType.default_detail),
        (errors.StorageFailure(), 503, "The image store could not be reached; nothing was saved."),
    ],
)
def test_a_radiology_error_keeps_its_own_detail(exc: RadiologyError, status: int, body: str) -> None:
    response = handle(exc)

    assert response.status_code == status
    assert response.data == {"detail": body, "code": exc.code}


def test_a_radiology_error_carries_its_extra_fields() -> None:
    response = handle(errors.RadiologyError("Resume from byte 1024.", received_bytes=1024))

    assert response.data == {"detail": "Resume from byte 1024.", "code": "radiology_error", "received_bytes": 1024}


@pytest.mark.parametrize(
    ("exc", "status", "body"),
    [
        (
            exceptions.NotAuthenticated(),
            401,
            {"detail": "Authentication credentials were not provided.", "code": "not_authenticated"},
        ),
        (
            exceptions.AuthenticationFailed("Invalid token."),
            401,
            {"detail": "Invalid token.", "code": "authentication_failed"},
        ),
        (
            exceptions.PermissionDenied(),
            403,
            {"detail": "You do not have permission to perform this action.", "code": "permission_denied"},
        ),
        (exceptions.NotFound(), 404, {"detail": "Not found.", "code": "not_found"}),
        (
            exceptions.MethodNotAllowed("PUT"),
            405,
            {"detail": 'Method "PUT" not allowed.', "code": "method_not_allowed"},
        ),
        (
            exceptions.NotAcceptable(),
            406,
            {"detail": "Could not satisfy the request Accept header.", "code": "not_acceptable"},
        ),
        (
            exceptions.UnsupportedMediaType("text/plain"),
            415,
            {"detail": 'Unsupported media type "text/plain" in request.', "code": "unsupported_media_type"},
        ),
        (exceptions.ParseError(), 400, {"detail": "Malformed request.", "code": "parse_error"}),
        (
            exceptions.APIException(),
            500,
            {"detail": "A server error occurred.", "code": "error"},
        ),
        (
            exceptions.APIException("Store busy.", code="store_busy"),
            500,
            {"detail": "Store busy.", "code": "store_busy"},
        ),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_drf_exceptions_are_shaped(exc: exceptions.APIException, status: int, body: dict[str, str]) -> None:
    response = handle(exc)

    assert response.status_code == status
    assert response.data == body


def test_not_authenticated_keeps_the_www_authenticate_header() -> None:
    exc = exceptions.NotAuthenticated()
    exc.auth_header = "Token"  # set by APIView.handle_exception from the first authenticator

    response = handle(exc)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_throttled_keeps_retry_after() -> None:
    response = handle(exceptions.Throttled(wait=7))

    assert response.status_code == 429
    assert response["Retry-After"] == "7"
    assert response.data == {"detail": "Request was throttled. Expected available in 7 seconds.", "code": "throttled"}


@pytest.mark.parametrize(
    ("exc", "body"),
    [
        (exceptions.ValidationError("Bad value."), {"detail": "Bad value.", "code": "invalid"}),
        (exceptions.ValidationError("Bad value.", code="custom"), {"detail": "Bad value.", "code": "custom"}),
        (exceptions.ValidationError(["First.", "Second."]), {"detail": "First.", "code": "invalid"}),
        (exceptions.ValidationError([]), {"detail": "Invalid input.", "code": "invalid"}),
        (
            exceptions.ValidationError({"field": ["Bad value."]}),
            {
                "detail": "field: Bad value.",
                "code": "invalid",
                "errors": {"field": [{"message": "Bad value.", "code": "invalid"}]},
            },
        ),
        (
            exceptions.ValidationError({"field": ["This field is required."]}, code="required"),
            {
                "detail": "field: This field is required.",
                "code": "required",
                "errors": {"field": [{"message": "This field is required.", "code": "required"}]},
            },
        ),
        (
            exceptions.ValidationError({"non_field_errors": ["Both or neither."]}),
            {
                "detail": "Both or neither.",
                "code": "invalid",
                "errors": {"non_field_errors": [{"message": "Both or neither.", "code": "invalid"}]},
            },
        ),
        (
            exceptions.ValidationError({"series": {"number": ["Must be positive."]}}),
            {
                "detail": "series: number: Must be positive.",
                "code": "invalid",
                "errors": {"series": {"number": [{"message": "Must be positive.", "code": "invalid"}]}},
            },
        ),
        (exceptions.ValidationError({}), {"detail": "Invalid input.", "code": "invalid", "errors": {}}),
        (
            InvalidExpiresIn("expires_in must be an integer from 1 to 86400 seconds."),
            {"detail": "expires_in must be an integer from 1 to 86400 seconds.", "code": "invalid_expires_in"},
        ),
    ],
    ids=[
        "string",
        "string-with-code",
        "list",
        "empty-list",
        "field",
        "field-with-code",
        "non-field",
        "nested",
        "empty-dict",
        "invalid-expires-in",
    ],
)
def test_validation_errors_name_the_first_problem(exc: exceptions.ValidationError, body: dict[str, Any]) -> None:
    response = handle(exc)

    assert response.status_code == 400
    assert response.data == body


@pytest.mark.parametrize(
    ("exc", "status", "body"),
    [
        (Http404(), 404, {"detail": "Not found.", "code": "not_found"}),
        (
            Http404("No RadiologyStudy matches the given query."),
            404,
            {"detail": "No RadiologyStudy matches the given query.", "code": "not_found"},
        ),
        (
            DjangoPermissionDenied(),
            403,
            {"detail": "You do not have permission to perform this action.", "code": "permission_denied"},
        ),
        (DjangoPermissionDenied("Not yours."), 403, {"detail": "Not yours.", "code": "permission_denied"}),
    ],
    ids=["http404", "http404-message", "permission-denied", "permission-denied-message"],
)
def test_django_404_and_403_get_the_same_shape(exc: Exception, status: int, body: dict[str, str]) -> None:
    response = handle(exc)

    assert response.status_code == status
    assert response.data == body


@pytest.mark.parametrize("exc", [ValueError("boom"), KeyError("x"), RuntimeError()])
def test_other_exceptions_are_left_to_become_500(exc: Exception) -> None:
    assert api_exception_handler(exc, {}) is None


class _Raises(APIView):
    """A view that raises what it is given: the handler is wired in through REST_FRAMEWORK."""

    authentication_classes: list[type] = []
    permission_classes: list[type] = []
    exc: Exception = RuntimeError()

    def get(self, request: Request) -> Response:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "status", "body"),
    [
        (errors.StudyConflict(), 409, {"detail": errors.StudyConflict.default_detail, "code": "study_conflict"}),
        (Http404(), 404, {"detail": "Not found.", "code": "not_found"}),
        (InvalidExpiresIn("Out of range."), 400, {"detail": "Out of range.", "code": "invalid_expires_in"}),
    ],
)
def test_the_handler_is_the_api_exception_handler(exc: Exception, status: int, body: dict[str, str]) -> None:
    view = _Raises.as_view(exc=exc)

    response = view(APIRequestFactory().get("/anything/"))
    response.render()

    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert response.data == body
