"""Signed, expiring, scoped links: image URLs and study-scoped viewer tokens.

Both are HMACs made with Django's signing module (keyed by SECRET_KEY, each with its own
salt so a token of one kind never passes as the other):
- an image URL signs image id, checksum, filename and expiry time; changing any character
  of its path or query breaks the signature, and it never serves another image;
- a viewer token names its ViewerToken row (so it can be revoked and audited without
  storing the token), its study and its expiry.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core import signing
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from apps.radiology.models import RadiologyImage, RadiologyStudy, ViewerToken

IMAGE_URL_SALT = "pacs-lite.image-url.v1"
VIEWER_TOKEN_SALT = "pacs-lite.viewer-token.v1"  # noqa: S105 (a salt, not a secret)


class SignatureRejected(Exception):
    """A signed link or token that is altered, expired, revoked or for something else."""


def default_expires_in(expires_in: int | None) -> int:
    return settings.RADIOLOGY_URL_EXPIRES if expires_in is None else int(expires_in)


def _image_message(image_id: int, checksum: str, filename: str, expires_at: int) -> str:
    return f"{image_id}/{checksum}/{filename}/{expires_at}"


def image_url(*, image: RadiologyImage, expires_in: int | None = None, base_url: str = "") -> str:
    """An absolute (given `base_url` or PACS_PUBLIC_URL) signed URL for one image's bytes."""
    expires_at = int(time.time()) + default_expires_in(expires_in)
    filename = image.file_key.rsplit("/", 1)[-1]
    signature = signing.Signer(salt=IMAGE_URL_SALT).signature(
        _image_message(image.pk, image.checksum, filename, expires_at)
    )
    path = reverse("radiology:signed-image", kwargs={"image_id": image.pk, "filename": filename})
    base = settings.PACS_PUBLIC_URL or base_url.rstrip("/")
    return f"{base}{path}?{urlencode({'expires': expires_at, 'token': signature})}"


def verify_image_url(*, image: RadiologyImage, filename: str, expires: str, token: str) -> None:
    """Raise SignatureRejected unless this URL was signed for exactly this image and is unexpired."""
    try:
        expires_at = int(expires)
    except (TypeError, ValueError):
        raise SignatureRejected("malformed expiry") from None
    if str(expires_at) != expires:
        raise SignatureRejected("malformed expiry")
    expected = signing.Signer(salt=IMAGE_URL_SALT).signature(
        _image_message(image.pk, image.checksum, filename, expires_at)
    )
    if not constant_time_compare(expected, token or ""):
        raise SignatureRejected("bad signature")
    if expires_at < time.time():
        raise SignatureRejected("expired")


@dataclass(frozen=True)
class ViewerGrant:
    """What a verified viewer token allows: reading one study."""

    token_id: uuid.UUID
    study_id: int
    study_uid: str


def issue_viewer_token(*, study: RadiologyStudy, user: AbstractBaseUser | None, expires_in: int | None = None) -> str:
    """Record a ViewerToken and return the signed token string for it."""
    lifetime = default_expires_in(expires_in)
    record = ViewerToken.objects.create(
        study=study,
        issued_to=user if user is not None and user.is_authenticated else None,
        expires_at=timezone.now() + dt.timedelta(seconds=lifetime),
    )
    payload = {"t": record.id.hex, "s": study.study_uid, "e": int(record.expires_at.timestamp())}
    return signing.dumps(payload, salt=VIEWER_TOKEN_SALT, compress=False)


def verify_viewer_token(token: str) -> ViewerGrant:
    """Return the grant of a valid token; raise SignatureRejected if altered, expired or revoked."""
    try:
        payload = signing.loads(token, salt=VIEWER_TOKEN_SALT)
        token_id = uuid.UUID(hex=payload["t"])
        study_uid = str(payload["s"])
        expires_at = int(payload["e"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise SignatureRejected("bad token") from None
    if expires_at < time.time():
        raise SignatureRejected("expired")
    record = ViewerToken.objects.select_related("study").filter(pk=token_id).first()
    if record is None or record.revoked_at is not None or record.study.study_uid != study_uid:
        raise SignatureRejected("revoked")
    return ViewerGrant(token_id=record.id, study_id=record.study_id, study_uid=study_uid)


def revoke_viewer_token(token_id: uuid.UUID) -> bool:
    """Revoke a token at once; True if it was active."""
    return bool(ViewerToken.objects.filter(pk=token_id, revoked_at__isnull=True).update(revoked_at=timezone.now()))


def _with_study_and_token(base: str, study: RadiologyStudy, token: str) -> str:
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}{urlencode({'StudyInstanceUIDs': study.study_uid, 'token': token})}"


def lite_viewer_url(
    *, study: RadiologyStudy, user: AbstractBaseUser | None, expires_in: int | None = None, base_url: str = ""
) -> str:
    """The built-in lightweight viewer of this server for the study (absolute: PACS_PUBLIC_URL or `base_url`)."""
    token = issue_viewer_token(study=study, user=user, expires_in=expires_in)
    base = (settings.PACS_PUBLIC_URL or base_url.rstrip("/")) + reverse("radiology:lite-viewer")
    return _with_study_and_token(base, study, token)


def viewer_url(
    *, study: RadiologyStudy, user: AbstractBaseUser | None, expires_in: int | None = None, base_url: str = ""
) -> str:
    """`{OHIF_VIEWER_URL}?StudyInstanceUIDs={uid}&token={token}` (OHIF v3 sends the token as Bearer).

    With OHIF_VIEWER_URL empty, the built-in lightweight viewer takes the same parameters.
    """
    if not settings.OHIF_VIEWER_URL:
        return lite_viewer_url(study=study, user=user, expires_in=expires_in, base_url=base_url)
    token = issue_viewer_token(study=study, user=user, expires_in=expires_in)
    return _with_study_and_token(settings.OHIF_VIEWER_URL, study, token)
