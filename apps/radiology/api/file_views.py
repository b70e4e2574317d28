"""The signed image URL endpoint: no session, no header, only the URL's own signature.

Filesystem: the bytes are streamed by Django (Range supported). S3/MinIO: after the check,
a redirect to a presigned URL that lives only RADIOLOGY_PRESIGNED_REDIRECT_SECONDS, so the
app's signature, expiry and scope are what decide, whatever the store checks.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.views.decorators.http import require_safe

from apps.radiology import storage
from apps.radiology.access.signing import (
    LinkRevoked,
    SignatureRejected,
    check_link_issuer,
    image_for_link,
    parse_image_link,
    verify_image_url,
)
from apps.radiology.errors import LinkRevoked as LinkRevokedError
from apps.radiology.errors import StorageFailure
from apps.radiology.storage.responses import PRIVATE_NO_STORE, stream_object

_MAX_ID = 2**63 - 1
INVALID_SIGNATURE = {"detail": "This image link is invalid or has expired.", "code": "invalid_signature"}
# Only ever after a correct, unexpired signature: it tells nothing to someone who guesses links.
LINK_REVOKED = {"detail": LinkRevokedError.default_detail, "code": LinkRevokedError.code}


def _refused(body: dict[str, str] = INVALID_SIGNATURE) -> JsonResponse:
    response = JsonResponse(body, status=403)
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
    # One query: the image, and whether the link's issuer (and viewer token) still stand.
    image = image_for_link(image_id=image_id, link=link)
    if image is None:
        return _refused()  # same answer as a bad signature: ids are not enumerable
    try:
        verify_image_url(image=image, filename=filename, expires=expires, token=token)
        check_link_issuer(image=image, link=link)
    except LinkRevoked:
        return _refused(LINK_REVOKED)
    except SignatureRejected:
        return _refused()
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
        return JsonResponse({"detail": exc.detail, "code": exc.code}, status=exc.status_code)
    if handle is None:
        return JsonResponse({"detail": "The stored file is missing.", "code": "file_missing"}, status=404)
    return stream_object(request, handle, size=image.file_size, content_type=image.mime_type, filename=filename)
