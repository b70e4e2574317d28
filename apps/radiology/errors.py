"""Every error the PACS-lite API answers: one hierarchy, its exception handler, and its registry.

Each refusal is a class with a stable `code` and HTTP `status_code`; services and views raise
the class, never a DRF exception with a `code="..."` string, so a code is defined once and
the EMR frontend can branch on it rather than on English text. The API's exception handler
(`api_exception_handler`, settings.REST_FRAMEWORK["EXCEPTION_HANDLER"]) turns them, and DRF's
own exceptions, into `{"detail": ..., "code": ...}` (+ "errors" per field on a 400);
`error_json_response` gives views outside DRF (signed links, range refusals, the login lockout)
the same body. `all_error_codes()` enumerates every code the API can answer, with its status
and meaning: docs/errors.md is checked against it. Messages never contain patient data, only
UIDs and ids.

A class's docstring starts with one line saying when the error happens: the registry reads it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class RadiologyError(Exception):
    """A request PACS-lite refuses without a more specific code (a malformed ?window= or ?viewport=).

    The base of every error PACS-lite reports to a client; raised as is, it answers
    `radiology_error` with status 400.
    """

    status_code = 400
    code = "radiology_error"
    default_detail = "The radiology request could not be processed."

    def __init__(self, detail: str | None = None, **extra: object) -> None:
        self.detail = detail or self.default_detail
        # Extra fields for the client beside detail and code (e.g. received_bytes to resume from).
        self.extra = extra
        super().__init__(self.detail)

    def body(self) -> dict[str, Any]:
        """The JSON the client gets: detail, code, then any extra fields."""
        return {"detail": self.detail, "code": self.code, **self.extra}


# --- Files and ingest ----------------------------------------------------------------------


class InvalidUID(RadiologyError):
    """A UID (in the file, a form field or the URL) is not a valid DICOM UID."""

    code = "invalid_uid"
    default_detail = "A UID must be digits and dots, without empty or zero-led components, at most 64 characters."


class UnsupportedFileType(RadiologyError):
    """The uploaded file is neither DICOM Part 10 (with preamble) nor JPEG."""

    code = "unsupported_file_type"
    status_code = 415
    default_detail = "Only DICOM Part 10 files (with preamble) and JPEG images are accepted."


class UnsupportedTransferSyntax(RadiologyError):
    """The DICOM file is deflated, a transfer syntax PACS-lite does not accept."""

    code = "unsupported_transfer_syntax"
    status_code = 415
    default_detail = "Deflated DICOM files are not accepted; send the file uncompressed or image-compressed."


class EmptyFile(RadiologyError):
    """The uploaded file has no bytes."""

    code = "empty_file"
    default_detail = "The file is empty."


class InvalidDicom(RadiologyError):
    """The DICOM file cannot be parsed."""

    code = "invalid_dicom"
    default_detail = "The DICOM file could not be read."


class TruncatedFile(RadiologyError):
    """The file ends before the content its header declares."""

    code = "truncated_file"
    default_detail = "The file ends before its content does."


class MissingPixelData(InvalidDicom):
    """An image object (by its SOP class or image attributes) ends, whole, without Pixel Data."""

    code = "missing_pixel_data"
    default_detail = "The file is an image object without Pixel Data (7FE0,0010), which every image must have."


class ImplausiblePixelData(InvalidDicom):
    """A compressed frame declares more decoded bytes than its codec can produce from its data."""

    code = "implausible_pixel_data"
    default_detail = "The compressed pixel data is too small for the image size its header declares."


class InvalidJpeg(RadiologyError):
    """The JPEG image cannot be read."""

    code = "invalid_jpeg"
    default_detail = "The JPEG image could not be read."


class MissingUID(RadiologyError):
    """The DICOM file lacks a study, series or instance UID."""

    code = "missing_uid"
    default_detail = "The DICOM file lacks a required UID."


class UIDMismatch(RadiologyError):
    """A UID sent beside the image differs from the one in the file."""

    code = "uid_mismatch"
    default_detail = "A UID sent with the image does not match the file's."


class InvalidFilename(RadiologyError):
    """The filename has nothing usable left once unsafe characters are removed."""

    code = "invalid_filename"
    default_detail = "The filename has nothing usable left after removing unsafe characters."


class FileTooLarge(RadiologyError):
    """The file is larger than RADIOLOGY_MAX_UPLOAD_SIZE."""

    code = "file_too_large"
    status_code = 413
    default_detail = "The file is larger than this server accepts."


class SizeMismatch(RadiologyError):
    """The bytes received differ in number from the declared file_size."""

    code = "size_mismatch"
    default_detail = "The bytes received do not match the declared file size."


class ChecksumMismatch(RadiologyError):
    """The SHA-256 of the bytes received differs from the declared checksum."""

    code = "checksum_mismatch"
    default_detail = "The SHA-256 of the bytes received does not match the declared checksum."


class ImageConflict(RadiologyError):
    """An image with this UID is already stored with other content."""

    code = "image_conflict"
    status_code = 409
    default_detail = "An image with this UID is already stored with different content."


class UnknownForwardDestination(RadiologyError):
    """The forwarding destination asked for is not one of RADIOLOGY_FORWARD_DESTINATIONS (or none is configured)."""

    code = "unknown_destination"
    default_detail = "No forwarding destination of that name is configured on this server."


class StudyMismatch(RadiologyError):
    """The image belongs to another study than the one already attached to the order."""

    code = "study_mismatch"
    status_code = 409
    default_detail = "The image belongs to another study than the one attached to this order."


class SeriesConflict(RadiologyError):
    """The series UID already belongs to another study."""

    code = "series_conflict"
    status_code = 409
    default_detail = "This series UID already belongs to another study."


class StudyConflict(RadiologyError):
    """The study UID already belongs to another order."""

    code = "study_conflict"
    status_code = 409
    default_detail = "This study UID already belongs to another order."


class PatientMismatch(RadiologyError):
    """The file's PatientID is the hospital number of another EMR patient than the order's.

    Strong evidence of a wrong order: nothing is stored unless a radiology tech confirms the
    file belongs to this order anyway, with a reason (which is stored and audited).
    """

    code = "patient_mismatch"
    status_code = 409
    default_detail = (
        "The file's PatientID is another patient's hospital number. Nothing was stored; send it to the right "
        "order, or confirm it belongs to this one with confirm_patient_mismatch and a patient_mismatch_reason."
    )


class MismatchReasonRequired(RadiologyError):
    """A patient mismatch was confirmed without saying why (STOW-RS, bulk import, the inbox)."""

    code = "mismatch_reason_required"
    default_detail = "Confirming that a file naming another patient belongs to this order needs a reason."


class UnmatchedAlreadyHandled(RadiologyError):
    """An unmatched file was already assigned to an order or discarded."""

    code = "unmatched_already_handled"
    status_code = 409
    default_detail = "This unmatched file was already assigned or discarded."


class ImmutableRecord(RadiologyError):
    """A write-once record (an audit entry) was to be changed or deleted."""

    code = "record_immutable"
    status_code = 409
    default_detail = "This record is written once and cannot be changed or deleted."


class ImmutableImage(ImmutableRecord):
    """A stored image was to be changed or deleted."""

    code = "image_immutable"
    default_detail = "Stored images cannot be changed or deleted."


class StorageFailure(RadiologyError):
    """The image store (filesystem or S3) cannot be reached; nothing was saved."""

    code = "storage_unavailable"
    status_code = 503
    default_detail = "The image store could not be reached; nothing was saved."


class InsufficientStorage(StorageFailure):
    """Free disk space for staging or the filesystem store is below RADIOLOGY_MIN_FREE_BYTES; nothing was saved.

    A StorageFailure, so every way in treats it as passing, never as a bad file: an upload
    keeps the chunks it has and its device sends the refused one again later. 507, not
    503: the server and its store answer, they only lack room (storage/free_space.py).
    """

    code = "insufficient_storage"
    status_code = 507
    default_detail = "The server is short of disk space; nothing was saved. Send it again once space is freed."


class UploadRangeMismatch(RadiologyError):
    """An upload chunk does not start where the received bytes end (the body says received_bytes)."""

    code = "range_mismatch"
    status_code = 409
    default_detail = "This chunk does not start where the received bytes end; resume from received_bytes."


class InvalidContentRange(RadiologyError):
    """An upload chunk's Content-Range is malformed or disagrees with the declared file_size."""

    code = "invalid_content_range"
    default_detail = "Content-Range must be 'bytes START-END/TOTAL' with TOTAL equal to the declared file_size."


class IncompleteBody(RadiologyError):
    """The request body ended before its declared length (the body says received_bytes)."""

    code = "incomplete_body"
    default_detail = "The request body ended before its declared length; resume from received_bytes."


class InvalidContentEncoding(RadiologyError):
    """An upload chunk sent with Content-Encoding: zstd is not a valid zstd frame; nothing of it was kept."""

    code = "invalid_content_encoding"
    default_detail = "The body is not a valid zstd frame; nothing of it was kept. Send the chunk again."


class UnsupportedContentEncoding(RadiologyError):
    """An upload's bytes came with a Content-Encoding other than zstd (or identity)."""

    code = "unsupported_content_encoding"
    status_code = 415
    default_detail = "An upload's bytes may be sent as they are or with Content-Encoding: zstd, nothing else."


class OrderNotFound(RadiologyError):
    """No radiology order has the id given (an upload's radiology_order, STOW's ?radiology_order_id=)."""

    code = "order_not_found"
    status_code = 404
    default_detail = "No radiology order with this id."


# --- DICOMweb -----------------------------------------------------------------------------


class InvalidQuery(RadiologyError):
    """A search or list parameter is malformed (QIDO-RS, ?limit=, ?offset=)."""

    code = "invalid_query"
    default_detail = "The search has an invalid parameter."


class InvalidMultipart(RadiologyError):
    """A STOW-RS body is not a valid multipart/related message, or has no parts."""

    code = "invalid_multipart"
    default_detail = "The body is not a valid multipart/related message with a boundary."


# STOW-RS limits, applied while the body is received (settings RADIOLOGY_MAX_UPLOAD_SIZE,
# RADIOLOGY_STOW_MAX_PARTS, RADIOLOGY_STOW_MAX_REQUEST_BYTES).
class TooManyParts(InvalidMultipart):
    """A STOW-RS request has more parts than RADIOLOGY_STOW_MAX_PARTS."""

    code = "too_many_parts"
    status_code = 413
    default_detail = "Too many parts in one request."


class PartTooLarge(RadiologyError):
    """A STOW-RS part is larger than RADIOLOGY_MAX_UPLOAD_SIZE."""

    code = "part_too_large"
    status_code = 413
    default_detail = "A part is larger than this server accepts for one file."


class RequestTooLarge(RadiologyError):
    """A STOW-RS body is larger than RADIOLOGY_STOW_MAX_REQUEST_BYTES."""

    code = "request_too_large"
    status_code = 413
    default_detail = "The request body is larger than this server accepts in one request."


class UnsupportedMediaType(RadiologyError):
    """The request body's Content-Type cannot be read: STOW-RS without application/dicom parts, or DRF's parsers.

    DRF answers the same code (its exceptions.UnsupportedMediaType, an alias in the registry)
    when no parser of a JSON endpoint takes the Content-Type.
    """

    code = "unsupported_media_type"
    status_code = 415
    default_detail = 'STOW-RS takes multipart/related; type="application/dicom".'


class StudyNotFound(RadiologyError):
    """No study with this UID, or none the viewer token may see."""

    code = "study_not_found"
    status_code = 404
    default_detail = "No such study."


class SeriesNotFound(RadiologyError):
    """No series with this UID in the study, or none the viewer token may see."""

    code = "series_not_found"
    status_code = 404
    default_detail = "No such series."


class InstanceNotFound(RadiologyError):
    """No instance with this UID in the series (or the series has none), or none the viewer token may see."""

    code = "instance_not_found"
    status_code = 404
    default_detail = "No such instance."


class BulkDataNotFound(RadiologyError):
    """The instance has no bulk data under the tag asked for."""

    code = "bulkdata_not_found"
    status_code = 404
    default_detail = "No such bulk data."


class FrameNotFound(RadiologyError):
    """A frame number is not a positive integer, or past the instance's last frame."""

    code = "frame_not_found"
    status_code = 404
    default_detail = "The instance has no such frame."


class NotAcceptable(RadiologyError):
    """None of the media types in Accept can be produced (DICOMweb's negotiation, or DRF's).

    DRF answers the same code (its exceptions.NotAcceptable, an alias in the registry) when no
    renderer of a JSON endpoint matches Accept.
    """

    code = "not_acceptable"
    status_code = 406
    default_detail = "None of the media types in Accept can be produced for this resource."


class RenderingFailed(RadiologyError):
    """The image's pixel data cannot be decoded (remembered: asking again gives the same answer)."""

    code = "rendering_failed"
    status_code = 422
    default_detail = "This image's pixel data could not be decoded."


# Rendering and retrieval limits (settings RADIOLOGY_MAX_DECODED_BYTES, RADIOLOGY_MAX_RENDER_SIDE,
# RADIOLOGY_MAX_FRAMES_PER_REQUEST), checked before any pixel is decoded or any byte is sent.
class ImageTooLargeToRender(RadiologyError):
    """The image, decoded, is larger than RADIOLOGY_MAX_DECODED_BYTES."""

    code = "image_too_large_to_render"
    status_code = 422
    default_detail = "This image is larger, decoded, than this server decodes in one request."


class ViewportTooLarge(RadiologyError):
    """The viewport asked for is larger than RADIOLOGY_MAX_RENDER_SIDE."""

    code = "viewport_too_large"
    default_detail = "The viewport is larger than this server renders."


class TooManyFrames(RadiologyError):
    """More distinct frames were asked for than RADIOLOGY_MAX_FRAMES_PER_REQUEST."""

    code = "too_many_frames"
    default_detail = "More frames were asked for than this server sends in one request."


class StoredObjectMissing(StorageFailure):
    """The stored file of an image is gone or shorter than its row says (lost data).

    The row says the bytes are there, the store has them not (or fewer): lost data, not a
    store that is briefly away, hence 500 rather than StorageFailure's 503.
    """

    code = "stored_object_missing"
    status_code = 500
    default_detail = "The stored file of this image is missing."


class RangeNotSatisfiable(RadiologyError):
    """A Range header asks for bytes past the end of the file (Content-Range says its size)."""

    code = "range_not_satisfiable"
    status_code = 416
    default_detail = "The requested range is not satisfiable."


class CodestreamMismatch(RenderingFailed):
    """A compressed frame's codestream declares another image size than the image header.

    Its decoder would produce (and allocate) that size, not the one the budget weighed.
    """

    code = "codestream_mismatch"
    default_detail = "The frame's compressed data declares another image size than the image header."


class RenderingUnavailable(RadiologyError):
    """The server, not the image, failed a decode (out of memory, a full disk, an I/O error).

    Answered 503 and never remembered as a failed render, so the next request tries again.
    """

    code = "rendering_unavailable"
    status_code = 503
    default_detail = "The server could not decode this image right now; try again later."


# --- Access: logins, tokens and links (login_protection.py, signing.py, dicomweb/auth.py) ---


class LoginLockedOut(RadiologyError):
    """Too many failed logins for one username from one client address (django-axes counts them)."""

    code = "login_locked_out"
    status_code = 429
    default_detail = "Too many failed logins for this account from this address. Try again later."


class InvalidCredentials(RadiologyError):
    """The token endpoint got a wrong username or password, or an inactive user's."""

    code = "invalid_credentials"
    default_detail = "Unable to log in with the provided credentials."


class InvalidToken(RadiologyError, exceptions.AuthenticationFailed):
    """A viewer token (Authorization: Bearer) is malformed, altered, expired or revoked.

    Also a DRF AuthenticationFailed, so that DRF's APIView still decides its status as for any
    failed authentication: 401 with the view's WWW-Authenticate challenge, or 403 where the
    view has no challenge to offer.
    """

    code = default_code = "invalid_token"
    status_code = 401
    default_detail = "The viewer token is invalid, expired or revoked."


class InvalidSignature(RadiologyError):
    """A signed image link's signature is wrong or expired, or it names no image."""

    code = "invalid_signature"
    status_code = 403
    default_detail = "This image link is invalid or has expired."


class LinkRevoked(RadiologyError):
    """A correctly signed, unexpired link whose issuer lost access or had their links revoked."""

    code = "link_revoked"
    status_code = 403
    default_detail = "This link was revoked: its issuer no longer has access, or its viewer link ended."


class FileMissing(RadiologyError):
    """A signed image link is valid but the filesystem store has no file for the image."""

    code = "file_missing"
    status_code = 404
    default_detail = "The stored file is missing."


class InvalidExpiresIn(RadiologyError):
    """?expires_in= is not an integer from 1 to RADIOLOGY_MAX_URL_EXPIRES seconds."""

    code = "invalid_expires_in"
    default_detail = "expires_in must be an integer from 1 to RADIOLOGY_MAX_URL_EXPIRES seconds."


# --- Django's own refusals under /api/ (config/http_errors.py) -------------------------------


class BadRequest(RadiologyError):
    """Django refused the request before any view (RequestDataTooBig, a bad Host header)."""

    code = "bad_request"
    default_detail = "The request could not be read."


class ServerError(RadiologyError):
    """An unexpected failure inside the server (Django's handler500 under /api/)."""

    code = "server_error"
    status_code = 500
    default_detail = "The server could not answer this request."


# --- Answering errors -----------------------------------------------------------------------


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
        # InvalidToken is also DRF's AuthenticationFailed: APIView gave it the view's challenge.
        auth_header = getattr(exc, "auth_header", None)
        headers = {"WWW-Authenticate": auth_header} if auth_header else None
        return Response(exc.body(), status=exc.status_code, headers=headers)
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


def error_json_response(error: RadiologyError) -> JsonResponse:
    """The API's error body and status for a view outside DRF (signed links, ranges, the axes lockout)."""
    return JsonResponse(error.body(), status=error.status_code)


# --- The registry: every code the API can answer ---------------------------------------------


class ErrorCode(NamedTuple):
    """One code the API answers: its HTTP status, the class that raises it, and when it happens."""

    status: int
    error_class: type[Exception]
    meaning: str


class BuiltInError(NamedTuple):
    """A code that DRF (or Django, through the handler) answers with its own exception class."""

    code: str
    status: int
    error_class: type[Exception]
    meaning: str


# DRF's own codes, which the handler passes through: raised by DRF itself (authentication,
# permissions, parsers, throttles, get_object_or_404), so they have no RadiologyError class.
# A view that means one of them raises the DRF class without a code= (its default_code).
BUILT_IN_ERRORS: tuple[BuiltInError, ...] = (
    BuiltInError(
        "parse_error",
        400,
        exceptions.ParseError,
        "The request body is not valid for its Content-Type (malformed JSON).",
    ),
    BuiltInError(
        "authentication_failed",
        401,
        exceptions.AuthenticationFailed,
        "The API token (Authorization: Token ...) is unknown, or its user is inactive.",
    ),
    BuiltInError(
        "not_authenticated",
        401,
        exceptions.NotAuthenticated,
        "No credentials were sent to an endpoint that needs them.",
    ),
    BuiltInError(
        "permission_denied",
        403,
        exceptions.PermissionDenied,
        "The user's role may not do this (also a CSRF failure, and Django's 403 under /api/).",
    ),
    BuiltInError(
        "not_found",
        404,
        exceptions.NotFound,
        "No such record or route: get_object_or_404, an unmatched /api/ path, the DICOMweb root.",
    ),
    BuiltInError(
        "method_not_allowed", 405, exceptions.MethodNotAllowed, "The endpoint does not take this HTTP method."
    ),
    BuiltInError(
        "throttled",
        429,
        exceptions.Throttled,
        "Too many requests (the token endpoint's rate limits); Retry-After says when to try again.",
    ),
)

# Validation codes: a serializer or filter field's own code (the first failing field's), with
# "errors" listing every field. tests/test_errors.py checks that the API's input serializers
# and filters can answer no other.
VALIDATION_ERRORS: tuple[BuiltInError, ...] = tuple(
    BuiltInError(code, 400, exceptions.ValidationError, meaning)
    for code, meaning in (
        ("invalid", "A field (or the whole body) has the wrong type or format; 'errors' names the field."),
        ("required", "A required field is missing; 'errors' names the field."),
        ("null", "A field that may not be null is null."),
        ("blank", "A text field that may not be blank is empty."),
        ("max_length", "A text field is longer than its maximum."),
        ("max_value", "A number field is above its maximum."),
        ("min_value", "A number field is below its minimum."),
        ("max_string_length", "A number field's text is too long to be read as a number."),
        ("invalid_choice", "A field's value is not one of its choices (e.g. mime_type)."),
        ("null_characters_not_allowed", "A text field contains a NUL character."),
        ("surrogate_characters_not_allowed", "A text field contains a lone surrogate character."),
    )
)

# DRF's exceptions answering a code that a RadiologyError class owns: one code, one meaning.
DRF_ALIASES: dict[type[exceptions.APIException], type[RadiologyError]] = {
    exceptions.NotAcceptable: NotAcceptable,
    exceptions.UnsupportedMediaType: UnsupportedMediaType,
}


def radiology_error_classes() -> list[type[RadiologyError]]:
    """RadiologyError and every subclass, however deep (breadth first)."""
    found: list[type[RadiologyError]] = []
    pending: list[type[RadiologyError]] = [RadiologyError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def _meaning(cls: type[Exception]) -> str:
    """The first line of the class's own docstring: when the error happens."""
    doc = cls.__dict__.get("__doc__") or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def all_error_codes() -> dict[str, ErrorCode]:
    """Every code the API can answer -> (status, class, one-line meaning).

    A code claimed twice is a bug: raises ValueError rather than letting one entry hide another.
    """
    registry: dict[str, ErrorCode] = {}

    def add(code: str, entry: ErrorCode) -> None:
        if code in registry:
            raise ValueError(f"Error code {code!r} is claimed by {registry[code].error_class} and {entry.error_class}.")
        registry[code] = entry

    for cls in radiology_error_classes():
        add(cls.code, ErrorCode(cls.status_code, cls, _meaning(cls)))
    for built_in in (*BUILT_IN_ERRORS, *VALIDATION_ERRORS):
        add(built_in.code, ErrorCode(built_in.status, built_in.error_class, built_in.meaning))
    return registry
