"""One hierarchy of radiology errors, each with a stable `code` the API returns as JSON.

Services raise these; the API's exception handler turns them into
`{"detail": ..., "code": ...}` with the class's HTTP status. Messages never contain
patient data, only UIDs and ids.
"""

from __future__ import annotations


class RadiologyError(Exception):
    """Base of every error PACS-lite reports to a client."""

    status_code = 400
    code = "radiology_error"
    default_detail = "The radiology request could not be processed."

    def __init__(self, detail: str | None = None, **extra: object) -> None:
        self.detail = detail or self.default_detail
        # Extra fields for the client beside detail and code (e.g. received_bytes to resume from).
        self.extra = extra
        super().__init__(self.detail)


class InvalidUID(RadiologyError):
    code = "invalid_uid"
    default_detail = "A UID must be digits and dots, without empty or zero-led components, at most 64 characters."


class UnsupportedFileType(RadiologyError):
    code = "unsupported_file_type"
    status_code = 415
    default_detail = "Only DICOM Part 10 files (with preamble) and JPEG images are accepted."


class UnsupportedTransferSyntax(RadiologyError):
    code = "unsupported_transfer_syntax"
    status_code = 415
    default_detail = "Deflated DICOM files are not accepted; send the file uncompressed or image-compressed."


class EmptyFile(RadiologyError):
    code = "empty_file"
    default_detail = "The file is empty."


class InvalidDicom(RadiologyError):
    code = "invalid_dicom"
    default_detail = "The DICOM file could not be read."


class TruncatedFile(RadiologyError):
    code = "truncated_file"
    default_detail = "The file ends before its content does."


class ImplausiblePixelData(InvalidDicom):
    """A compressed frame declaring more decoded bytes than its codec can produce from its data."""

    code = "implausible_pixel_data"
    default_detail = "The compressed pixel data is too small for the image size its header declares."


class InvalidJpeg(RadiologyError):
    code = "invalid_jpeg"
    default_detail = "The JPEG image could not be read."


class MissingUID(RadiologyError):
    code = "missing_uid"
    default_detail = "The DICOM file lacks a required UID."


class UIDMismatch(RadiologyError):
    code = "uid_mismatch"
    default_detail = "A UID sent with the image does not match the file's."


class InvalidFilename(RadiologyError):
    code = "invalid_filename"
    default_detail = "The filename has nothing usable left after removing unsafe characters."


class FileTooLarge(RadiologyError):
    code = "file_too_large"
    status_code = 413
    default_detail = "The file is larger than this server accepts."


class SizeMismatch(RadiologyError):
    code = "size_mismatch"
    default_detail = "The bytes received do not match the declared file size."


class ChecksumMismatch(RadiologyError):
    code = "checksum_mismatch"
    default_detail = "The SHA-256 of the bytes received does not match the declared checksum."


class ImageConflict(RadiologyError):
    code = "image_conflict"
    status_code = 409
    default_detail = "An image with this UID is already stored with different content."


class StudyMismatch(RadiologyError):
    code = "study_mismatch"
    status_code = 409
    default_detail = "The image belongs to another study than the one attached to this order."


class SeriesConflict(RadiologyError):
    code = "series_conflict"
    status_code = 409
    default_detail = "This series UID already belongs to another study."


class StudyConflict(RadiologyError):
    code = "study_conflict"
    status_code = 409
    default_detail = "This study UID already belongs to another order."


class ImmutableRecord(RadiologyError):
    code = "record_immutable"
    status_code = 409
    default_detail = "This record is written once and cannot be changed or deleted."


class ImmutableImage(ImmutableRecord):
    code = "image_immutable"
    default_detail = "Stored images cannot be changed or deleted."


class StorageFailure(RadiologyError):
    code = "storage_unavailable"
    status_code = 503
    default_detail = "The image store could not be reached; nothing was saved."


class UploadRangeMismatch(RadiologyError):
    code = "range_mismatch"
    status_code = 409
    default_detail = "This chunk does not start where the received bytes end; resume from received_bytes."


class InvalidContentRange(RadiologyError):
    code = "invalid_content_range"
    default_detail = "Content-Range must be 'bytes START-END/TOTAL' with TOTAL equal to the declared file_size."


class IncompleteBody(RadiologyError):
    code = "incomplete_body"
    default_detail = "The request body ended before its declared length; resume from received_bytes."


class OrderNotFound(RadiologyError):
    code = "order_not_found"
    status_code = 404
    default_detail = "No radiology order with this id."


# --- DICOMweb -----------------------------------------------------------------------------


class InvalidQuery(RadiologyError):
    code = "invalid_query"
    default_detail = "The search has an invalid parameter."


class InvalidMultipart(RadiologyError):
    code = "invalid_multipart"
    default_detail = "The body is not a valid multipart/related message with a boundary."


# STOW-RS limits, applied while the body is received (settings RADIOLOGY_MAX_UPLOAD_SIZE,
# RADIOLOGY_STOW_MAX_PARTS, RADIOLOGY_STOW_MAX_REQUEST_BYTES).
class TooManyParts(InvalidMultipart):
    code = "too_many_parts"
    status_code = 413
    default_detail = "Too many parts in one request."


class PartTooLarge(RadiologyError):
    code = "part_too_large"
    status_code = 413
    default_detail = "A part is larger than this server accepts for one file."


class RequestTooLarge(RadiologyError):
    code = "request_too_large"
    status_code = 413
    default_detail = "The request body is larger than this server accepts in one request."


class UnsupportedMediaType(RadiologyError):
    code = "unsupported_media_type"
    status_code = 415
    default_detail = 'STOW-RS takes multipart/related; type="application/dicom".'


class FrameNotFound(RadiologyError):
    code = "frame_not_found"
    status_code = 404
    default_detail = "The instance has no such frame."


class NotAcceptable(RadiologyError):
    code = "not_acceptable"
    status_code = 406
    default_detail = "None of the media types in Accept can be produced for this resource."


class RenderingFailed(RadiologyError):
    code = "rendering_failed"
    status_code = 422
    default_detail = "This image's pixel data could not be decoded."


# Rendering and retrieval limits (settings RADIOLOGY_MAX_DECODED_BYTES, RADIOLOGY_MAX_RENDER_SIDE,
# RADIOLOGY_MAX_FRAMES_PER_REQUEST), checked before any pixel is decoded or any byte is sent.
class ImageTooLargeToRender(RadiologyError):
    code = "image_too_large_to_render"
    status_code = 422
    default_detail = "This image is larger, decoded, than this server decodes in one request."


class ViewportTooLarge(RadiologyError):
    code = "viewport_too_large"
    default_detail = "The viewport is larger than this server renders."


class TooManyFrames(RadiologyError):
    code = "too_many_frames"
    default_detail = "More frames were asked for than this server sends in one request."


class StoredObjectMissing(StorageFailure):
    """The row says the bytes are there, the store has them not (or fewer): lost data, not a
    store that is briefly away, hence 500 rather than StorageFailure's 503."""

    code = "stored_object_missing"
    status_code = 500
    default_detail = "The stored file of this image is missing."


# Access: logins and links (login_protection.py, signing.py).
class LoginLockedOut(RadiologyError):
    """Too many failed logins for one username from one client address (django-axes counts them)."""

    code = "login_locked_out"
    status_code = 429
    default_detail = "Too many failed logins for this account from this address. Try again later."


class LinkRevoked(RadiologyError):
    """A correctly signed, unexpired link whose issuer lost access or had their links revoked."""

    code = "link_revoked"
    status_code = 403
    default_detail = "This link was revoked: its issuer no longer has access, or its viewer link ended."


class CodestreamMismatch(RenderingFailed):
    """A compressed frame whose codestream declares another size than the image header: its
    decoder would produce (and allocate) that size, not the one the budget weighed."""

    code = "codestream_mismatch"
    default_detail = "The frame's compressed data declares another image size than the image header."


class RenderingUnavailable(RadiologyError):
    """The server, not the image, failed a decode (out of memory, a full disk, an I/O error):
    answered 503 and never remembered as a failed render, so the next request tries again."""

    code = "rendering_unavailable"
    status_code = 503
    default_detail = "The server could not decode this image right now; try again later."
