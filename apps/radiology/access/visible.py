"""The read door: every read of studies, series and images starts from what a principal may see.

`visible_studies(principal)`, `visible_series(principal)` and `visible_images(principal)` are
QuerySets already restricted to the principal's read scope (principals.py): unrestricted for
everything, `.none()` for nothing, one WHERE condition for one study. REST, DICOMweb (QIDO and
WADO), the lite viewer, admin and signed image links all start here, so a new read path (the
coming DIMSE C-FIND/C-GET listener) cannot forget the check: it has no other door to use.

The restriction is a WHERE condition on the rows' study, never a second query, so query
counts stay what they were. Two shapes keep the fast paths fast:
- VisibleLookup: a one-row lookup compiled once per scope kind (prepared.py), with a one-study
  scope's study UID as one more parameter;
- image_behind_link: the signed file view's one query, with the door's verdict for the link's
  issuer as a column (the view must tell a revoked link from a forged one only after the
  signature, which needs the row).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from django.db.models import BooleanField, Exists, ExpressionWrapper, Model, OuterRef, Q, QuerySet, Value
from django.db.models.functions import Now

from apps.radiology.access.principals import (
    EVERYTHING,
    Principal,
    ReadScope,
    ScopePrincipal,
    SignedLinkPrincipal,
    ViewerTokenPrincipal,
    lookup_scope_of,
)
from apps.radiology.access.signing import ImageLink, trusted_issuers, viewer_token_stands
from apps.radiology.fastpaths.prepared import PreparedLookup
from apps.radiology.models import RadiologyImage, RadiologySeries, RadiologyStudy, ViewerToken

ModelT = TypeVar("ModelT", bound=Model)

# How each level reaches its study in a lookup.
STUDY = ""
SERIES_TO_STUDY = "study__"
IMAGE_TO_STUDY = "series__study__"


def _link_condition(link: ImageLink, to_study: str) -> Q:
    """What a signed link's issuer still may read: issuer in standing, viewer token live and of this study."""
    condition = Q()
    if link.issuer_id is not None:
        issued_at = dt.datetime.fromtimestamp(link.issued_at or 0, tz=dt.UTC)
        condition &= Q(Exists(trusted_issuers(issued_at=issued_at).filter(pk=link.issuer_id)))
    if link.via_token_id is not None:
        live_token = ViewerToken.objects.filter(
            pk=link.via_token_id,
            revoked_at__isnull=True,
            expires_at__gt=Now(),
            study_id=OuterRef(f"{to_study}pk"),
        )
        condition &= Q(Exists(live_token))
    return condition


def _hex(token: uuid.UUID | str) -> str:
    """A token id as the 32 hex digits both databases cast to a UUID (SQLite keeps UUIDs so)."""
    return token.hex if isinstance(token, uuid.UUID) else token


def read_condition(scope: ReadScope, to_study: str) -> Q | None:
    """The WHERE condition of rows (reaching their study by `to_study`) a scope may read; None: no row.

    An empty Q() is everything.
    """
    if scope.everything:
        return Q()
    if scope.study_id is not None:
        return Q(**{f"{to_study}pk": scope.study_id})
    if scope.study_uid is not None and scope.via_viewer_token is not None:
        return Q(**{f"{to_study}study_uid": scope.study_uid}) & Q(
            viewer_token_stands(_hex(scope.via_viewer_token), study=OuterRef(f"{to_study}pk"))
        )
    if scope.study_uid is not None:
        return Q(**{f"{to_study}study_uid": scope.study_uid})
    if scope.issued_by is not None:
        return _link_condition(scope.issued_by, to_study)
    return None


def _restricted(queryset: QuerySet[ModelT], principal: Principal, to_study: str) -> QuerySet[ModelT]:
    condition = read_condition(principal.read_scope, to_study)
    if condition is None:
        return queryset.none()
    return queryset.filter(condition) if condition else queryset


def visible_studies(principal: Principal) -> QuerySet[RadiologyStudy]:
    """The studies `principal` may read."""
    return _restricted(RadiologyStudy.objects.all(), principal, STUDY)


def visible_series(principal: Principal) -> QuerySet[RadiologySeries]:
    """The series `principal` may read (those of its visible studies)."""
    return _restricted(RadiologySeries.objects.all(), principal, SERIES_TO_STUDY)


def visible_images(principal: Principal) -> QuerySet[RadiologyImage]:
    """The images `principal` may read (those of its visible studies)."""
    return _restricted(RadiologyImage.objects.all(), principal, IMAGE_TO_STUDY)


class VisibleLookup(Generic[ModelT]):
    """A lookup through the door compiled once per scope kind: `build(door(principal), *values)`.

    `door` is visible_studies, visible_series or visible_images; `build` narrows it with
    `parameters` string values (a UID), as PreparedLookup wants. Everything-scopes run one
    prepared statement, one-study scopes another with the study UID as a last parameter, a
    viewer token not checked yet a third with the study UID and the token's id (its row is
    checked in the same statement); nothing-scopes run no query; any other scope runs through
    the ORM (correct, compiled per call).

    A viewer token's lookup that finds nothing reads the token's row before it answers: a
    revoked token is refused (SignatureRejected, a 401 to the caller) as before, never told
    "not found", and a live one hears "not found" only when the row is not its study's.
    """

    def __init__(
        self,
        door: Callable[[Principal], QuerySet[ModelT]],
        build: Callable[..., QuerySet[ModelT]],
        parameters: int,
    ) -> None:
        self.door = door
        self.build = build
        self._everything: PreparedLookup[ModelT] = PreparedLookup(
            lambda *values: build(door(ScopePrincipal(EVERYTHING)), *values), parameters=parameters
        )
        self._one_study: PreparedLookup[ModelT] = PreparedLookup(
            lambda *values: build(door(ScopePrincipal(ReadScope.one_study(study_uid=values[-1]))), *values[:-1]),
            parameters=parameters + 1,
        )
        self._via_viewer_token: PreparedLookup[ModelT] = PreparedLookup(
            lambda *values: build(
                door(ScopePrincipal(ReadScope(study_uid=values[-2], via_viewer_token=values[-1]))), *values[:-2]
            ),
            parameters=parameters + 2,
        )

    def _rows(self, principal: Principal, values: tuple[str, ...], *, one: bool) -> list[ModelT]:
        scope = lookup_scope_of(principal)
        if scope.is_nothing:
            return []
        if scope.everything:
            lookup, bound = self._everything, values
        elif scope.study_uid is not None and scope.via_viewer_token is not None:
            lookup, bound = self._via_viewer_token, (*values, scope.study_uid, _hex(scope.via_viewer_token))
        elif scope.study_uid is not None and scope.issued_by is None:
            lookup, bound = self._one_study, (*values, scope.study_uid)
        else:
            queryset = self.build(self.door(principal), *values)
            if not one:
                return list(queryset)
            return [row] if (row := next(iter(queryset), None)) is not None else []
        if one:
            row = lookup.first(*bound)
            found = [row] if row is not None else []
        else:
            found = lookup.all(*bound)
        if not found and isinstance(principal, ViewerTokenPrincipal):
            principal.grant  # noqa: B018 (reads the token's row: SignatureRejected if it no longer stands)
        return found

    def all(self, principal: Principal, *values: str) -> list[ModelT]:
        return self._rows(principal, values, one=False)

    def first(self, principal: Principal, *values: str) -> ModelT | None:
        """The first row (build should order and cut it to one, e.g. `.order_by()[:1]`)."""
        found = self._rows(principal, values, one=True)
        return found[0] if found else None


def image_behind_link(*, image_id: int, link: ImageLink) -> RadiologyImage | None:
    """The image a signed URL names, with `visible_to_link`: whether the link's principal may read it. One query.

    The row is read whatever the verdict: the file view checks the signature on it first, so a
    forged link learns nothing, and only a correctly signed one hears that it was revoked. The
    verdict is the door's condition for SignedLinkPrincipal(link) (visible_images would filter by it).
    """
    condition = read_condition(SignedLinkPrincipal(link).read_scope, IMAGE_TO_STUDY)
    verdict: Any = Value(condition is not None) if not condition else ExpressionWrapper(condition, BooleanField())
    return RadiologyImage.objects.filter(pk=image_id).annotate(visible_to_link=verdict).first()
