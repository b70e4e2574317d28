"""Who is asking: one Principal for every kind of caller, and what each may read (its ReadScope).

Every read path asks the door (visible.py) for rows *as a principal*, instead of re-checking a
role or a viewer token's study beside each query. A principal says only what it may read and
whether it may store; the door turns the read scope into the query's WHERE clause.

Kinds today:
- an EMR user (session or API token): doctors, radiology techs and superusers read everything,
  anyone else (a nurse, a clerk, an anonymous visitor) nothing;
- a viewer token's grant: reads exactly its one study;
- a signed image link's issuer (visible.image_behind_link): what the user who made it may
  still read, and only the study of the viewer token it was made through.
A DICOM node (the coming DIMSE listener's C-FIND/C-GET caller) slots in as DicomNodePrincipal:
a modality may only store, a workstation may read.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from apps.radiology.access.permissions import can_upload_radiology, can_view_radiology
from apps.radiology.access.signing import ImageLink, ViewerGrant, ViewerTokenClaims, check_viewer_token


@dataclass(frozen=True)
class ReadScope:
    """What a principal may read: everything, nothing, one study, or what a link's issuer still may.

    One study is named by its id, its UID, or both (a verified grant knows both); the door
    filters by the id when it has one, by the UID otherwise (prepared lookups, whose
    parameters are strings, pass the UID). `issued_by`: the signed image link whose issuer's
    standing (and viewer token) the door checks in the same query (see SignedLinkPrincipal).
    `via_viewer_token`: with a study UID, the viewer token whose row the door checks in the
    same query, for a token whose row was not read yet (ViewerTokenPrincipal.lookup_scope).
    """

    everything: bool = False
    study_id: int | None = None
    study_uid: str | None = None
    issued_by: ImageLink | None = None
    # With study_uid: only while this viewer token's row still grants that study, checked by the
    # lookup's own statement (ViewerTokenPrincipal.lookup_scope). A hex string or a UUID.
    via_viewer_token: uuid.UUID | str | None = None

    @property
    def is_nothing(self) -> bool:
        return not self.everything and self.study_id is None and self.study_uid is None and self.issued_by is None

    @classmethod
    def one_study(cls, *, study_id: int | None = None, study_uid: str | None = None) -> ReadScope:
        if study_id is None and study_uid is None:
            raise ValueError("A one-study scope names its study.")
        return cls(study_id=study_id, study_uid=study_uid)


EVERYTHING = ReadScope(everything=True)
NOTHING = ReadScope()


@runtime_checkable
class Principal(Protocol):
    """The caller of a read or a store, whatever the channel."""

    @property
    def read_scope(self) -> ReadScope: ...

    @property
    def may_store(self) -> bool: ...


@dataclass(frozen=True)
class EmrUserPrincipal:
    """An EMR user (or the anonymous visitor): reads everything with a radiology role, else nothing.

    The role check costs at most one query per request: the groups are remembered on the user
    object (token auth reads them with the token; permissions.group_names otherwise).
    """

    user: AbstractBaseUser | AnonymousUser

    @property
    def read_scope(self) -> ReadScope:
        return EVERYTHING if can_view_radiology(self.user) else NOTHING

    @property
    def may_store(self) -> bool:
        return can_upload_radiology(self.user)


class ViewerTokenPrincipal:
    """The request's user when it came with a viewer token: authenticated, but only for one study.

    It stands in for request.user (DRF and the audit trail read user attributes, signing reads
    `grant`), and is a Principal for the door. Made from a verified grant, or from the claims
    of a token whose signature alone was checked (ViewerTokenAuthentication): then its row is
    read the first time `grant` or `read_scope` is asked, once, and SignatureRejected raised
    if it no longer stands. A one-row lookup through the door (VisibleLookup) asks
    `lookup_scope` instead and checks the row in its own statement: a frame costs one query,
    not two, and a token revoked a moment ago is refused all the same.
    """

    is_authenticated = True
    is_active = True
    is_anonymous = False
    is_superuser = False
    is_staff = False
    pk = None
    id = None
    may_store = False

    def __init__(self, grant: ViewerGrant | ViewerTokenClaims) -> None:
        if isinstance(grant, ViewerGrant):
            self._grant: ViewerGrant | None = grant
            self.claims = ViewerTokenClaims(token_id=grant.token_id, study_uid=grant.study_uid)
        else:
            self._grant = None
            self.claims = grant

    def __str__(self) -> str:
        return f"viewer-token:{self.claims.token_id}"

    def get_username(self) -> str:
        return str(self)

    @property
    def checked(self) -> bool:
        """Whether the token's row has been read (and stood)."""
        return self._grant is not None

    @property
    def grant(self) -> ViewerGrant:
        """What the token grants, its row read now if it was not yet; SignatureRejected if it no longer stands."""
        if self._grant is None:
            self._grant = check_viewer_token(self.claims)
        return self._grant

    @property
    def read_scope(self) -> ReadScope:
        return ReadScope.one_study(study_id=self.grant.study_id, study_uid=self.grant.study_uid)

    @property
    def lookup_scope(self) -> ReadScope:
        """The scope for a lookup that checks the token's row in its own statement (no query here)."""
        if self._grant is not None:
            return self.read_scope
        return ReadScope(study_uid=self.claims.study_uid, via_viewer_token=self.claims.token_id)


def lookup_scope_of(principal: Principal) -> ReadScope:
    """The scope a one-row lookup or a permission check may use without a query of its own.

    A viewer token's principal whose row is not read yet gives a scope that checks the row
    in the lookup's statement; every other principal its read_scope.
    """
    if isinstance(principal, ViewerTokenPrincipal):
        return principal.lookup_scope
    return principal.read_scope


class DicomNodeRole(enum.StrEnum):
    """What a DICOM application entity is allowed to be."""

    MODALITY = "modality"  # sends images (C-STORE), reads nothing
    WORKSTATION = "workstation"  # queries and retrieves (C-FIND, C-GET/C-MOVE)


@dataclass(frozen=True)
class DicomNodePrincipal:
    """A known DICOM node (by AE title) calling the DIMSE listener."""

    ae_title: str
    role: DicomNodeRole

    @property
    def read_scope(self) -> ReadScope:
        return EVERYTHING if self.role == DicomNodeRole.WORKSTATION else NOTHING

    @property
    def may_store(self) -> bool:
        return self.role == DicomNodeRole.MODALITY


@dataclass(frozen=True)
class SignedLinkPrincipal:
    """Whoever holds a signed image URL: it reads what the link's issuer still may.

    The issuer must still be active, in a radiology role and not cut off since the link was
    made; a link made through a viewer token reads only while that token lives, and only its
    study. A link made for no user (code acting for nobody) is bounded by its signature alone.
    """

    link: ImageLink
    may_store = False

    @property
    def read_scope(self) -> ReadScope:
        if self.link.issuer_id is None and self.link.via_token_id is None:
            return EVERYTHING
        return ReadScope(issued_by=self.link)


@dataclass(frozen=True)
class ScopePrincipal:
    """A principal that is only a scope: for code that holds a scope, not a caller (prepared lookups)."""

    read_scope: ReadScope
    may_store: bool = False


def principal_of_user(user: Any) -> Principal:
    """The principal of a request's user: a viewer token's stand-in, or an EMR user (anonymous included)."""
    if isinstance(user, ViewerTokenPrincipal):
        return user
    return EmrUserPrincipal(user if user is not None else AnonymousUser())


def principal_of(request: Any) -> Principal:
    """The principal of a Django or DRF request, after authentication (user or viewer token)."""
    return principal_of_user(getattr(request, "user", None))
