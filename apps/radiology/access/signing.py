"""Signed, expiring, scoped links: image URLs and study-scoped viewer tokens.

Both are HMACs made with Django's signing module (keyed by SECRET_KEY, each with its own
salt so a token of one kind never passes as the other):
- an image URL signs image id, checksum, filename and expiry time; changing any character
  of its path or query breaks the signature, and it never serves another image;
- a viewer token names its ViewerToken row (so it can be revoked and audited without
  storing the token), its study and its expiry.

No link outlives its issuer's access. An image URL made for a user also signs who issued it,
when, and the viewer token it was made through, if any (`token=<issuer>.<issued at>.<viewer
token id or ->.<signature>`); a viewer token's row names its issuer. Each is refused once the
issuer is inactive, no longer a doctor, radiology tech or superuser, or had all their links
revoked (`revoke_links_of`, a per-user cut-off time: image URLs are not stored), and an image
URL made through a viewer token dies with that token. These checks are folded into the one
query each link already makes (the door's `image_behind_link` in visible.py, and
`verify_viewer_token`): no extra round trip.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core import signing
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet, Subquery, UUIDField, Value
from django.db.models.functions import Cast, Now
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from apps.radiology.access.permissions import RADIOLOGY_GROUPS
from apps.radiology.fastpaths.prepared import PreparedLookup
from apps.radiology.models import LinkRevocation, RadiologyImage, RadiologyStudy, ViewerToken

IMAGE_URL_SALT = "pacs-lite.image-url.v1"
VIEWER_TOKEN_SALT = "pacs-lite.viewer-token.v1"  # noqa: S105 (a salt, not a secret)


class SignatureRejected(Exception):
    """A signed link or token that is altered, expired, revoked or for something else."""


class LinkRevoked(SignatureRejected):
    """A correctly signed, unexpired link whose issuer lost access, or whose viewer token ended."""


_MAX_ID = 2**63 - 1
_NO_TOKEN = "-"  # noqa: S105 (a placeholder, not a secret)


def default_expires_in(expires_in: int | None) -> int:
    return settings.RADIOLOGY_URL_EXPIRES if expires_in is None else int(expires_in)


def _image_message(image_id: int, checksum: str, filename: str, expires_at: int) -> str:
    return f"{image_id}/{checksum}/{filename}/{expires_at}"


@dataclass(frozen=True)
class ImageLink:
    """What an image URL's `token` says besides its signature (issuer fields None: a link made for no user)."""

    expires_at: int
    signature: str
    issuer_id: int | None = None
    issued_at: int | None = None
    via_token_id: uuid.UUID | None = None

    @property
    def has_issuer(self) -> bool:
        return self.issued_at is not None

    def message(self, image_id: int, checksum: str, filename: str) -> str:
        base = _image_message(image_id, checksum, filename, self.expires_at)
        if not self.has_issuer:
            return base
        via = self.via_token_id.hex if self.via_token_id is not None else _NO_TOKEN
        return f"{base}/{self.issuer_id or 0}/{self.issued_at}/{via}"

    def token(self) -> str:
        if not self.has_issuer:
            return self.signature
        via = self.via_token_id.hex if self.via_token_id is not None else _NO_TOKEN
        return f"{self.issuer_id or 0}.{self.issued_at}.{via}.{self.signature}"


def _issuer_of(user: Any) -> tuple[int | None, uuid.UUID | None, bool]:
    """(issuer user id, viewer token id, whether anyone issued it) for a link made for `user`."""
    grant = getattr(user, "grant", None)
    if isinstance(grant, ViewerGrant):
        return grant.issuer_id, grant.token_id, True
    if user is not None and getattr(user, "is_authenticated", False) and getattr(user, "pk", None) is not None:
        return int(user.pk), None, True
    return None, None, False


def image_url(*, image: RadiologyImage, user: Any = None, expires_in: int | None = None, base_url: str = "") -> str:
    """An absolute (given `base_url` or PACS_PUBLIC_URL) signed URL for one image's bytes.

    `user` is who asks for it: an EMR user, or a viewer-token principal (then the link also
    dies with that token). Without one (code acting for no user) the link names no issuer.
    """
    now = int(time.time())
    expires_at = now + default_expires_in(expires_in)
    filename = image.file_key.rsplit("/", 1)[-1]
    issuer_id, via, issued = _issuer_of(user)
    unsigned = ImageLink(
        expires_at=expires_at,
        signature="",
        issuer_id=issuer_id,
        issued_at=now if issued else None,
        via_token_id=via,
    )
    signature = signing.Signer(salt=IMAGE_URL_SALT).signature(unsigned.message(image.pk, image.checksum, filename))
    link = replace(unsigned, signature=signature)
    path = reverse("radiology:signed-image", kwargs={"image_id": image.pk, "filename": filename})
    base = settings.PACS_PUBLIC_URL or base_url.rstrip("/")
    return f"{base}{path}?{urlencode({'expires': expires_at, 'token': link.token()})}"


def _decimal(text: str) -> int:
    if not text.isdecimal() or not text.isascii() or len(text) > 19 or int(text) > _MAX_ID:
        raise SignatureRejected("malformed link")
    return int(text)


def parse_image_link(*, expires: str, token: str) -> ImageLink:
    """Read an image URL's `expires` and `token` (no signature check yet); SignatureRejected if malformed."""
    try:
        expires_at = int(expires)
    except (TypeError, ValueError):
        raise SignatureRejected("malformed expiry") from None
    if str(expires_at) != expires:
        raise SignatureRejected("malformed expiry")
    token = token or ""
    if "." not in token:
        return ImageLink(expires_at=expires_at, signature=token)
    parts = token.split(".")
    if len(parts) != 4:
        raise SignatureRejected("malformed link")
    issuer, issued_at, via, signature = parts
    try:
        via_token_id = None if via == _NO_TOKEN else uuid.UUID(hex=via)
    except ValueError:
        raise SignatureRejected("malformed link") from None
    if via_token_id is not None and via != via_token_id.hex:
        raise SignatureRejected("malformed link")
    issuer_id = _decimal(issuer)
    return ImageLink(
        expires_at=expires_at,
        signature=signature,
        issuer_id=issuer_id or None,
        issued_at=_decimal(issued_at),
        via_token_id=via_token_id,
    )


def verify_image_url(*, image: RadiologyImage, filename: str, expires: str, token: str) -> ImageLink:
    """Raise SignatureRejected unless this URL was signed for exactly this image and is unexpired.

    The issuer's standing is checked apart, on the row the door's `image_behind_link` read (visible.py).
    """
    link = parse_image_link(expires=expires, token=token)
    expected = signing.Signer(salt=IMAGE_URL_SALT).signature(link.message(image.pk, image.checksum, filename))
    if not constant_time_compare(expected, link.signature):
        raise SignatureRejected("bad signature")
    if link.expires_at < time.time():
        raise SignatureRejected("expired")
    return link


def trusted_issuers(*, issued_at: Any) -> QuerySet[Any]:
    """Users whose links made at `issued_at` still stand: active, in a radiology role, not cut off since.

    The door (visible.py) checks an image link's issuer with it; verify_viewer_token a token's.
    """
    user_model = get_user_model()
    memberships = user_model.groups.through.objects.filter(user_id=OuterRef("pk"), group__name__in=RADIOLOGY_GROUPS)
    return (
        user_model.objects.filter(is_active=True)
        .filter(Q(is_superuser=True) | Q(Exists(memberships)))
        .filter(
            Q(radiology_link_revocation__isnull=True) | Q(radiology_link_revocation__links_valid_after__lt=issued_at)
        )
    )


@dataclass(frozen=True)
class ViewerGrant:
    """What a verified viewer token allows: reading one study."""

    token_id: uuid.UUID
    study_id: int
    study_uid: str
    # Who issued the token (image URLs made through it carry it). Not part of the grant's
    # identity: two grants of the same token and study are the same grant.
    issuer_id: int | None = field(default=None, compare=False)


def _signed_viewer_token(record: ViewerToken, study_uid: str) -> str:
    payload = {"t": record.id.hex, "s": study_uid, "e": int(record.expires_at.timestamp())}
    return signing.dumps(payload, salt=VIEWER_TOKEN_SALT, compress=False)


def issue_viewer_token(*, study: RadiologyStudy, user: AbstractBaseUser | None, expires_in: int | None = None) -> str:
    """Record a ViewerToken and return the signed token string for it."""
    lifetime = default_expires_in(expires_in)
    record = ViewerToken.objects.create(
        study=study,
        issued_to=user if user is not None and user.is_authenticated else None,
        expires_at=timezone.now() + dt.timedelta(seconds=lifetime),
    )
    return _signed_viewer_token(record, study.study_uid)


# A reused token may end up to this share of its lifetime before a new one would (never
# after): repeated calls within that window hand out the same token and write no row.
REUSE_WINDOW_DIVISOR = 10
REUSABLE_TOKEN_ID = "reusable_viewer_token_id"  # noqa: S105 (an annotation name)
REUSABLE_TOKEN_EXPIRES_AT = "reusable_viewer_token_expires_at"  # noqa: S105 (an annotation name)


def reusable_viewer_token(*, user: Any, expires_in: int | None = None) -> dict[str, Subquery]:
    """Annotations for a study queryset: the caller's viewer token for each study that may be handed out again.

    Live and unrevoked, issued to `user`, expiring no later than a new token would (never a
    longer life than asked for) and at most a tenth of that lifetime earlier. Read as
    subqueries of the study's own query, so reusing costs no round trip. A caller that is
    not a user (a viewer token's stand-in) has no tokens of its own: nothing to reuse.
    """
    tokens = ViewerToken.objects.none()
    if getattr(user, "pk", None) is not None and getattr(user, "is_authenticated", False):
        lifetime = default_expires_in(expires_in)
        latest = timezone.now() + dt.timedelta(seconds=lifetime)
        earliest = latest - dt.timedelta(seconds=max(1, lifetime // REUSE_WINDOW_DIVISOR))
        tokens = ViewerToken.objects.filter(
            study_id=OuterRef("pk"),
            issued_to_id=user.pk,
            revoked_at__isnull=True,
            expires_at__gt=Now(),
            expires_at__gte=earliest,
            expires_at__lte=latest,
        ).order_by("-expires_at", "pk")
    return {
        REUSABLE_TOKEN_ID: Subquery(tokens.values("pk")[:1]),
        REUSABLE_TOKEN_EXPIRES_AT: Subquery(tokens.values("expires_at")[:1]),
    }


def reused_or_new_viewer_token(
    *, study: RadiologyStudy, user: AbstractBaseUser | None, expires_in: int | None = None
) -> str:
    """The token of the study's reusable ViewerToken (annotated by reusable_viewer_token), else a new one."""
    token_id = getattr(study, REUSABLE_TOKEN_ID, None)
    expires_at = getattr(study, REUSABLE_TOKEN_EXPIRES_AT, None)
    if token_id is None or expires_at is None:
        return issue_viewer_token(study=study, user=user, expires_in=expires_in)
    return _signed_viewer_token(ViewerToken(id=token_id, study=study, expires_at=expires_at), study.study_uid)


@dataclass(frozen=True)
class ViewerTokenClaims:
    """What a viewer token's signature vouches for, before its row is read: which token, for which study.

    Enough for the audit trail and for a lookup that checks the row in its own statement
    (`viewer_token_stands`, the door's `ReadScope.via_viewer_token`); what the token grants is
    only known once its row is (`check_viewer_token`).
    """

    token_id: uuid.UUID
    study_uid: str


def _standing(tokens: QuerySet[ViewerToken]) -> QuerySet[ViewerToken]:
    """The tokens among `tokens` that still grant their study: not revoked, their issuer (if any) in standing.

    The one definition of a live token's row: check_viewer_token reads it as a column, the door
    (visible.py, through viewer_token_stands) puts it in the WHERE clause of a one-row lookup.
    Expiry is the signature's to check (a token carries its own).
    """
    issuer_stands = Exists(trusted_issuers(issued_at=OuterRef("issued_at")).filter(pk=OuterRef("issued_to_id")))
    return tokens.filter(revoked_at__isnull=True).filter(Q(issued_to__isnull=True) | Q(issuer_stands)).order_by()


def viewer_token_stands(token_hex: Any, *, study: Any) -> Exists:
    """True while the ViewerToken `token_hex` names still grants `study` (its id as an OuterRef or F).

    `token_hex` is bound as text cast to a UUID, so a lookup using this can be compiled once
    (PreparedLookup binds plain strings).
    """
    return Exists(_standing(ViewerToken.objects.filter(pk=Cast(Value(token_hex), UUIDField()), study_id=study)))


def _viewer_token_by_id(token_hex: str) -> QuerySet[ViewerToken]:
    """The token's row with its study's UID (`study_uid`), and whether it still grants that study (`stands`).

    Compiled once (PreparedLookup): OHIF sends a viewer token with every frame it asks for,
    and compiling this query on each was three quarters of a frame request's CPU (cProfile,
    in-process frames on PostgreSQL: ~5 ms a frame against ~1.2 ms with an API token).
    """
    return (
        ViewerToken.objects.only("id", "study_id", "issued_to_id", "revoked_at")
        .annotate(
            stands=Exists(_standing(ViewerToken.objects.filter(pk=OuterRef("pk")))), study_uid=F("study__study_uid")
        )
        .filter(pk=Cast(Value(token_hex), UUIDField()))
        .order_by()[:1]
    )


_VIEWER_TOKEN = PreparedLookup(_viewer_token_by_id, parameters=1)


def read_viewer_token(token: str) -> ViewerTokenClaims:
    """The claims of a correctly signed, unexpired token; raise SignatureRejected if altered, malformed or expired.

    No query: whether its row still grants the study is check_viewer_token's (or a lookup's
    through the door with `ReadScope.via_viewer_token`).
    """
    try:
        payload = signing.loads(token, salt=VIEWER_TOKEN_SALT)
        token_id = uuid.UUID(hex=payload["t"])
        study_uid = str(payload["s"])
        expires_at = int(payload["e"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise SignatureRejected("bad token") from None
    if expires_at < time.time():
        raise SignatureRejected("expired")
    return ViewerTokenClaims(token_id=token_id, study_uid=study_uid)


def check_viewer_token(claims: ViewerTokenClaims) -> ViewerGrant:
    """The grant of a signed token whose row still stands; one query.

    SignatureRejected if it was revoked or is not of its study; LinkRevoked if its issuer no longer stands.
    """
    record = _VIEWER_TOKEN.first(claims.token_id.hex)
    if record is None or record.revoked_at is not None or record.study_uid != claims.study_uid:
        raise SignatureRejected("revoked")
    if not record.stands:
        raise LinkRevoked("issuer no longer trusted")
    return ViewerGrant(
        token_id=record.id, study_id=record.study_id, study_uid=claims.study_uid, issuer_id=record.issued_to_id
    )


def verify_viewer_token(token: str) -> ViewerGrant:
    """Return the grant of a valid token; raise SignatureRejected if altered, expired or revoked."""
    return check_viewer_token(read_viewer_token(token))


def viewer_token_id(token: str) -> uuid.UUID | None:
    """The ViewerToken id a correctly signed token names, expired or revoked alike; None if altered or malformed.

    For the audit trail only: it records which token a refused request came with.
    """
    try:
        return uuid.UUID(hex=signing.loads(token, salt=VIEWER_TOKEN_SALT)["t"])
    except (signing.BadSignature, KeyError, TypeError, ValueError, AttributeError):
        return None


def revoke_viewer_token(token_id: uuid.UUID) -> bool:
    """Revoke a token at once; True if it was active. Image URLs made through it stop too."""
    return bool(ViewerToken.objects.filter(pk=token_id, revoked_at__isnull=True).update(revoked_at=timezone.now()))


def revoke_links_of(*, user: AbstractBaseUser, revoked_by: AbstractBaseUser | None = None) -> int:
    """End every link `user` has issued so far: viewer tokens and signed image URLs; return the tokens revoked.

    Image URLs are not stored, so the user's cut-off time is what refuses them (and their viewer
    tokens, whatever their row says); their active token rows are marked revoked too, so admin
    shows them as such. Links the user makes afterwards work (if they still have the role).
    """
    now = timezone.now()
    with transaction.atomic():
        LinkRevocation.objects.update_or_create(
            user=user, defaults={"links_valid_after": now, "revoked_by": revoked_by}
        )
        return ViewerToken.objects.filter(issued_to=user, revoked_at__isnull=True).update(revoked_at=now)


def _with_study_and_token(base: str, study: RadiologyStudy, token: str) -> str:
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}{urlencode({'StudyInstanceUIDs': study.study_uid, 'token': token})}"


def lite_viewer_url(
    *,
    study: RadiologyStudy,
    user: AbstractBaseUser | None,
    expires_in: int | None = None,
    base_url: str = "",
    reuse: bool = False,
) -> str:
    """The built-in lightweight viewer of this server for the study (absolute: PACS_PUBLIC_URL or `base_url`).

    `reuse`: hand out the token reusable_viewer_token found for `study`, if any, instead of a new one.
    """
    if reuse:
        token = reused_or_new_viewer_token(study=study, user=user, expires_in=expires_in)
    else:
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
