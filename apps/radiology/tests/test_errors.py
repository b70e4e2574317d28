"""Every error the API answers: one hierarchy, one handler, one registry, and the docs' table of it.

The handler's tests (RadiologyError and DRF's exceptions leave as {"detail", "code"}) come first;
then the registry (errors.all_error_codes()) against docs/errors.md, the uniqueness of codes,
the byte-identical answers of the classes that replace raw `code="..."` strings, and a scan
that no code is spelled as a string literal outside apps/radiology/errors.py.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, JsonResponse
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory
from rest_framework.views import APIView

from apps.radiology import errors
from apps.radiology.errors import InvalidExpiresIn, RadiologyError, api_exception_handler


def handle(exc: Exception) -> Response:
    response = api_exception_handler(exc, {})
    assert response is not None
    return response


RADIOLOGY_ERRORS = sorted(errors.radiology_error_classes(), key=lambda cls: cls.__name__)


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


# --- The registry and docs/errors.md ----------------------------------------------------------

DOCS = Path(settings.BASE_DIR) / "docs" / "errors.md"
# A table row: | `code` | status | when | raised as |
_ROW = re.compile(r"^\|\s*`([a-z0-9_]+)`\s*\|\s*([0-9]{3})\s*\|(.*)\|")


def documented_codes() -> dict[str, int]:
    """code -> status of every row of the table in docs/errors.md; a code listed twice fails."""
    table: dict[str, int] = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line)
        if match is None:
            continue
        code, status, when = match.group(1), int(match.group(2)), match.group(3)
        assert code not in table, f"{code} is listed twice in docs/errors.md"
        assert when.split("|")[0].strip(), f"{code} has no 'when' in docs/errors.md"
        table[code] = status
    return table


def test_the_docs_table_lists_exactly_the_registry() -> None:
    documented = documented_codes()
    registered = {code: entry.status for code, entry in errors.all_error_codes().items()}

    assert sorted(set(registered) - set(documented)) == [], "codes missing from docs/errors.md"
    assert sorted(set(documented) - set(registered)) == [], "docs/errors.md lists codes no class answers"
    assert {code: status for code, status in documented.items() if registered[code] != status} == {}


def test_every_registered_code_has_a_status_and_a_one_line_meaning() -> None:
    for code, entry in errors.all_error_codes().items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", code), code
        assert 400 <= entry.status <= 599, code
        assert entry.meaning and "\n" not in entry.meaning, code


@pytest.mark.parametrize("error_class", RADIOLOGY_ERRORS, ids=lambda cls: cls.__name__)
def test_every_radiology_error_says_when_it_happens(error_class: type[RadiologyError]) -> None:
    """The registry's meaning is the first line of the class's own docstring (not its parent's)."""
    assert error_class.__dict__.get("__doc__"), f"{error_class.__name__} has no docstring of its own"
    assert errors.all_error_codes()[error_class.code] == (
        error_class.status_code,
        error_class,
        error_class.__doc__.strip().splitlines()[0],
    )


def test_a_code_claimed_twice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        errors,
        "BUILT_IN_ERRORS",
        (*errors.BUILT_IN_ERRORS, errors.BuiltInError("study_not_found", 404, exceptions.NotFound, "Twice.")),
    )

    with pytest.raises(ValueError, match="study_not_found"):
        errors.all_error_codes()


@pytest.mark.parametrize("entry", [*errors.BUILT_IN_ERRORS, *errors.VALIDATION_ERRORS], ids=lambda entry: entry.code)
def test_a_built_in_entry_is_what_its_drf_class_answers(entry: errors.BuiltInError) -> None:
    assert issubclass(entry.error_class, exceptions.APIException)
    assert not issubclass(entry.error_class, RadiologyError)
    assert entry.status == entry.error_class.status_code
    if entry.error_class is not exceptions.ValidationError:
        assert entry.code == entry.error_class.default_code


@pytest.mark.parametrize("drf_class", list(errors.DRF_ALIASES), ids=lambda cls: cls.__name__)
def test_a_drf_alias_answers_the_code_and_status_of_its_class(drf_class: type[exceptions.APIException]) -> None:
    """DRF's own NotAcceptable and UnsupportedMediaType answer codes our classes own: the same status."""
    owner = errors.DRF_ALIASES[drf_class]

    assert (drf_class.default_code, drf_class.status_code) == (owner.code, owner.status_code)
    assert errors.all_error_codes()[owner.code].error_class is owner


# Limits whose message DRF keeps on every field, but which only fire where the limit is set
# (and then as a validator, counted below).
_LIMIT_MESSAGES = {"max_length", "min_length", "max_value", "min_value"}


def _answerable_codes(field: Any) -> set[str]:
    codes = set(getattr(field, "error_messages", {})) - _LIMIT_MESSAGES
    codes |= {code for validator in getattr(field, "validators", []) if (code := getattr(validator, "code", None))}
    return codes


@pytest.mark.django_db
def test_input_serializers_and_filters_answer_only_registered_validation_codes() -> None:
    """The first failing field's code is the answer's `code`: every one a field can give is listed."""
    from apps.radiology.api.filters import StudyFilter
    from apps.radiology.api.serializers import TokenRequestSerializer
    from apps.radiology.api.upload_serializers import UploadCreateSerializer
    from apps.radiology.models import RadiologyStudy

    answerable: set[str] = set()
    for serializer_class in (UploadCreateSerializer, TokenRequestSerializer):
        serializer = serializer_class(data={})
        answerable |= _answerable_codes(serializer)
        for field in serializer.fields.values():
            answerable |= _answerable_codes(field)
    for field in StudyFilter(data={}, queryset=RadiologyStudy.objects.none()).form.fields.values():
        answerable |= _answerable_codes(field)
    validation = {entry.code for entry in errors.VALIDATION_ERRORS}

    assert {"required", "invalid", "invalid_choice", "max_length"} <= answerable
    assert sorted(answerable - validation) == []


# --- The classes that replace raw code strings answer byte for byte the same ------------------


class _OldInvalidExpiresIn(exceptions.ValidationError):
    """InvalidExpiresIn as it was (api/exceptions.py): a DRF ValidationError with its own code."""

    default_code = "invalid_expires_in"


def _rendered(exc: Exception) -> tuple[int, bytes, str]:
    response = _Raises.as_view(exc=exc)(APIRequestFactory().get("/anything/"))
    response.render()
    return response.status_code, response.content, response["Content-Type"]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (exceptions.NotFound("No such study.", code="study_not_found"), errors.StudyNotFound()),
        (exceptions.NotFound("No such series.", code="series_not_found"), errors.SeriesNotFound()),
        (exceptions.NotFound("No such instance.", code="instance_not_found"), errors.InstanceNotFound()),
        (
            exceptions.NotFound("The series has no instances.", code="instance_not_found"),
            errors.InstanceNotFound("The series has no instances."),
        ),
        (
            exceptions.NotFound("Use /studies, /series or /instances.", code="not_found"),
            exceptions.NotFound("Use /studies, /series or /instances."),
        ),
        (exceptions.NotFound("No radiology order with this id.", code="order_not_found"), errors.OrderNotFound()),
        (exceptions.NotFound("No such bulk data.", code="bulkdata_not_found"), errors.BulkDataNotFound()),
        (
            exceptions.NotFound("Frame numbers must be positive integers.", code="frame_not_found"),
            errors.FrameNotFound("Frame numbers must be positive integers."),
        ),
        (
            _OldInvalidExpiresIn("expires_in must be an integer from 1 to 86400 seconds."),
            InvalidExpiresIn("expires_in must be an integer from 1 to 86400 seconds."),
        ),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_a_class_answers_as_the_raw_code_it_replaces(old: Exception, new: Exception) -> None:
    assert _rendered(new) == _rendered(old)


def test_invalid_credentials_answers_as_the_response_it_replaces() -> None:
    class OldTokenView(APIView):
        authentication_classes: list[type] = []
        permission_classes: list[type] = []

        def get(self, request: Request) -> Response:
            return Response(
                {"detail": "Unable to log in with the provided credentials.", "code": "invalid_credentials"},
                status=400,
            )

    old = OldTokenView.as_view()(APIRequestFactory().get("/anything/"))
    old.render()

    assert _rendered(errors.InvalidCredentials()) == (old.status_code, old.content, old["Content-Type"])


def _old_malformed_token(request: Request) -> None:
    raise exceptions.AuthenticationFailed("Malformed bearer token.", code="invalid_token")


def _new_malformed_token(request: Request) -> None:
    raise errors.InvalidToken("Malformed bearer token.")


def _old_revoked_token(request: Request) -> None:
    raise exceptions.AuthenticationFailed("The viewer token is invalid, expired or revoked.", code="invalid_token")


def _new_revoked_token(request: Request) -> None:
    raise errors.InvalidToken()


def _authenticated_view(refuse: Any, *, challenge: str | None) -> Any:
    """A view whose one authenticator refuses as `refuse` does, offering `challenge` (or none)."""

    class Refusing(BaseAuthentication):
        def authenticate(self, request: Request) -> None:
            refuse(request)

        def authenticate_header(self, request: Request) -> str | None:
            return challenge

    class View(APIView):
        authentication_classes = [Refusing]
        permission_classes: list[type] = []

        def get(self, request: Request) -> Response:
            return Response({})

    return View.as_view()


@pytest.mark.parametrize("challenge", ['Bearer realm="pacs-lite dicomweb"', None], ids=["challenge", "no-challenge"])
@pytest.mark.parametrize(
    ("old", "new"),
    [(_old_malformed_token, _new_malformed_token), (_old_revoked_token, _new_revoked_token)],
    ids=["malformed", "revoked"],
)
def test_invalid_token_is_still_drf_authentication_failure(old: Any, new: Any, challenge: str | None) -> None:
    """401 with the view's WWW-Authenticate challenge, or 403 without one: DRF decides, as before."""
    answers = []
    for refuse in (old, new):
        response = _authenticated_view(refuse, challenge=challenge)(APIRequestFactory().get("/anything/"))
        response.render()
        answers.append((response.status_code, response.content, response.get("WWW-Authenticate")))

    assert answers[1] == answers[0]
    assert answers[1][0] == (401 if challenge else 403)
    assert answers[1][2] == challenge


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            JsonResponse(
                {"detail": "This image link is invalid or has expired.", "code": "invalid_signature"}, status=403
            ),
            errors.InvalidSignature(),
        ),
        (
            JsonResponse({"detail": "The stored file is missing.", "code": "file_missing"}, status=404),
            errors.FileMissing(),
        ),
        (
            JsonResponse(
                {"detail": "The requested range is not satisfiable.", "code": "range_not_satisfiable"}, status=416
            ),
            errors.RangeNotSatisfiable(),
        ),
        (
            JsonResponse(
                {"detail": errors.LoginLockedOut.default_detail, "code": errors.LoginLockedOut.code}, status=429
            ),
            errors.LoginLockedOut(),
        ),
        (
            JsonResponse({"detail": errors.LinkRevoked.default_detail, "code": errors.LinkRevoked.code}, status=403),
            errors.LinkRevoked(),
        ),
        (
            JsonResponse({"detail": "The request could not be read.", "code": "bad_request"}, status=400),
            errors.BadRequest(),
        ),
        (
            JsonResponse({"detail": "The server could not answer this request.", "code": "server_error"}, status=500),
            errors.ServerError(),
        ),
    ],
    ids=lambda value: type(value).__name__,
)
def test_error_json_response_answers_as_the_json_it_replaces(old: JsonResponse, new: RadiologyError) -> None:
    """Views outside DRF (signed links, ranges, the lockout, Django's own errors) keep their bytes."""
    response = errors.error_json_response(new)

    assert (response.status_code, response.content, response["Content-Type"]) == (
        old.status_code,
        old.content,
        old["Content-Type"],
    )


def test_error_json_response_carries_extra_fields() -> None:
    response = errors.error_json_response(errors.UploadRangeMismatch(received_bytes=1024))

    assert response.status_code == 409
    assert response.content == (
        b'{"detail": "This chunk does not start where the received bytes end; resume from received_bytes.", '
        b'"code": "range_mismatch", "received_bytes": 1024}'
    )


# --- No code spelled outside errors.py --------------------------------------------------------

APP_DIR = Path(errors.__file__).resolve().parent


def _raw_codes(path: Path, hierarchy_codes: set[str]) -> list[str]:
    """`code="..."` keywords, `{"code": "..."}` entries, and literals spelling a RadiologyError's code."""
    found: dict[tuple[int, int], str] = {}  # (line, column) of the literal -> how it was found
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.keyword) and node.arg == "code" and isinstance(node.value, ast.Constant):
            literal = node.value
            found.setdefault((literal.lineno, literal.col_offset), f"{literal.lineno}: code={literal.value!r}")
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "code" and isinstance(value, ast.Constant):
                    found.setdefault((value.lineno, value.col_offset), f"{value.lineno}: 'code': {value.value!r}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in hierarchy_codes:
            found.setdefault((node.lineno, node.col_offset), f"{node.lineno}: {node.value!r}")
    return [found[position] for position in sorted(found)]


def test_no_error_code_is_a_raw_string_outside_errors() -> None:
    """Every code is raised as its class (errors.StudyNotFound(), not NotFound(code="study_not_found")),
    so a code cannot drift from its status and meaning in one view and not another."""
    hierarchy_codes = {cls.code for cls in errors.radiology_error_classes()}
    offenders = {
        str(path.relative_to(APP_DIR)): raw
        for path in sorted(APP_DIR.rglob("*.py"))
        if "tests" not in path.relative_to(APP_DIR).parts
        and path.resolve() != Path(errors.__file__).resolve()
        and (raw := _raw_codes(path, hierarchy_codes))
    }

    assert offenders == {}
