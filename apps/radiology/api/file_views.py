"""The signed image URL endpoint: no session, no header, only the URL's own signature.

The link's principal is its issuer (access/principals.py SignedLinkPrincipal): the image is
read through the door, which says in the same query whether the issuer may still read it.

Filesystem: the bytes are streamed by Django (Range supported). S3/MinIO: after the check,
a redirect to a presigned URL that lives only RADIOLOGY_PRESIGNED_REDIRECT_SECONDS, so the
app's signature, expiry and scope are what decide, whatever the store checks.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.views.decorators.http import require_safe

from apps.radiology import storage
from apps.radiology.access.signing import SignatureRejected, parse_image_link, verify_image_url
from apps.radiology.access.visible import image_behind_link
from apps.radiology.errors import (
    FileMissing,
    InvalidSignature,
    LinkRevoked,
    RadiologyError,
    StorageFailure,
    error_json_response,
)
from apps.radiology.storage.responses import PRIVATE_NO_STORE, stream_object

_MAX_ID = 2**63 - 1


def _refused(error: RadiologyError | None = None) -> HttpResponse:
    """403, not cached. LinkRevoked only ever after a correct, unexpired signature: it tells
    nothing to someone who guesses links; everything else answers as a bad signature."""
    response = error_json_response(error or InvalidSignature())
    response["Cache-Control"] = PRIVATE_NO_STORE
    return response


@require_safe
def signed_image(request: HttpRequest, image_id: int, filename: str) -> HttpResponse:
    expires, token = request.GET.get("expires", ""), request.GET.get("token", "")
    try:
        link = parse_image_link(expires=expires, token=token)
    except SignatureRejected:
        return _refused()
    if image_id > _MAX_ID:  # the id column is a bigint: a longer id names no image
        return _refused()
    # One query through the read door: the image, and whether the link's issuer (and the
    # viewer token it was made through) may still read it.
    image = image_behind_link(image_id=image_id, link=link)
    if image is None:
        return _refused()  # same answer as a bad signature: ids are not enumerable
    try:
        verify_image_url(image=image, filename=filename, expires=expires, token=token)
    except SignatureRejected:
        return _refused()
    if not image.visible_to_link:
        return _refused(LinkRevoked())
    try:
        if storage.is_s3():
            response: HttpResponse = HttpResponseRedirect(
                storage.presigned_get_url(
                    image.file_key,
                    expires_in=settings.RADIOLOGY_PRESIGNED_REDIRECT_SECONDS,
                    content_type=image.mime_type,
                    filename=filename,
                )
            )
            response["Cache-Control"] = PRIVATE_NO_STORE
            response["Referrer-Policy"] = "no-referrer"
            return response
        handle = storage.open_object(image.file_key)
    except StorageFailure as exc:
        return error_json_response(exc)
    if handle is None:
        return error_json_response(FileMissing())
    return stream_object(request, handle, size=image.file_size, content_type=image.mime_type, filename=filename)
