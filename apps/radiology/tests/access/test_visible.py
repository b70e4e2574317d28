"""The read door (access/visible.py): each kind of principal sees exactly its rows, in the queries it already makes.

Two studies, each with two series of images (rows only). Every principal kind is asked for
studies, series and images, and the answer compared with the exact sets it may read.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import RequestFactory
from rest_framework.request import Request

from apps.radiology.access import signing
from apps.radiology.access.principals import (
    EVERYTHING,
    NOTHING,
    DicomNodePrincipal,
    DicomNodeRole,
    EmrUserPrincipal,
    Principal,
    ReadScope,
    ScopePrincipal,
    SignedLinkPrincipal,
    ViewerTokenPrincipal,
    principal_of,
)
from apps.radiology.access.selectors import studies_with_series_and_images, study_list
from apps.radiology.access.visible import (
    VisibleLookup,
    image_behind_link,
    visible_images,
    visible_series,
    visible_studies,
)
from apps.radiology.models import RadiologyImage, RadiologySeries, RadiologyStudy
from apps.radiology.tests.api_fixtures import make_image_row, make_series, make_study
from apps.radiology.tests.conftest import MakeOrder

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Rows:
    """One study's ids: the study, its series, its images."""

    study: RadiologyStudy
    series: frozenset[int]
    images: frozenset[int]


def _study_rows(order: Any) -> Rows:
    study = make_study(order)
    series = [make_series(study, series_number=number) for number in (1, 2)]
    images = [make_image_row(item, instance_number=number) for item in series for number in (1, 2)]
    return Rows(study, frozenset(item.pk for item in series), frozenset(image.pk for image in images))


@pytest.fixture
def two(make_order: MakeOrder) -> tuple[Rows, Rows]:
    return _study_rows(make_order()), _study_rows(make_order())


def seen(principal: Principal) -> tuple[set[int], set[int], set[int]]:
    """(study ids, series ids, image ids) the door lets `principal` see."""
    return (
        set(visible_studies(principal).values_list("pk", flat=True)),
        set(visible_series(principal).values_list("pk", flat=True)),
        set(visible_images(principal).values_list("pk", flat=True)),
    )


def everything(two: tuple[Rows, Rows]) -> tuple[set[int], set[int], set[int]]:
    return (
        {rows.study.pk for rows in two},
        set().union(*(rows.series for rows in two)),
        set().union(*(rows.images for rows in two)),
    )


def only(rows: Rows) -> tuple[set[int], set[int], set[int]]:
    return {rows.study.pk}, set(rows.series), set(rows.images)


NONE: tuple[set[int], set[int], set[int]] = (set(), set(), set())


def grant_of(study: RadiologyStudy, *, user: Any = None) -> signing.ViewerGrant:
    return signing.verify_viewer_token(signing.issue_viewer_token(study=study, user=user))


# --- EMR users ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["doctor", "radtech", "superuser"])
def test_radiology_roles_see_everything(request: pytest.FixtureRequest, two: tuple[Rows, Rows], role: str) -> None:
    principal = EmrUserPrincipal(request.getfixturevalue(role))

    assert principal.read_scope == EVERYTHING
    assert seen(principal) == everything(two)


def test_a_user_without_a_radiology_role_sees_nothing(nurse: Any, two: tuple[Rows, Rows]) -> None:
    principal = EmrUserPrincipal(nurse)

    assert principal.read_scope == NOTHING
    assert seen(principal) == NONE


def test_an_inactive_doctor_sees_nothing(doctor: Any, two: tuple[Rows, Rows]) -> None:
    doctor.is_active = False

    assert seen(EmrUserPrincipal(doctor)) == NONE


def test_anonymous_sees_nothing(two: tuple[Rows, Rows]) -> None:
    assert seen(EmrUserPrincipal(AnonymousUser())) == NONE


def test_nothing_is_answered_without_a_query(
    nurse: Any, two: tuple[Rows, Rows], django_assert_num_queries: Any
) -> None:
    principal = EmrUserPrincipal(nurse)
    principal.read_scope  # noqa: B018 (reads and remembers the user's groups: one query)

    with django_assert_num_queries(0):
        assert seen(principal) == NONE


@pytest.mark.parametrize(
    ("role", "stores"), [("doctor", False), ("radtech", True), ("superuser", True), ("nurse", False)]
)
def test_who_may_store(request: pytest.FixtureRequest, role: str, stores: bool) -> None:
    assert EmrUserPrincipal(request.getfixturevalue(role)).may_store is stores


# --- Viewer tokens -----------------------------------------------------------------------


def test_a_viewer_token_sees_exactly_its_study(two: tuple[Rows, Rows]) -> None:
    first, second = two
    principal = ViewerTokenPrincipal(grant_of(second.study))

    assert principal.read_scope == ReadScope(study_id=second.study.pk, study_uid=second.study.study_uid)
    assert seen(principal) == only(second)
    assert principal.may_store is False
    assert seen(ViewerTokenPrincipal(grant_of(first.study))) == only(first)


def test_a_one_study_scope_by_uid_alone_sees_the_same(two: tuple[Rows, Rows]) -> None:
    _first, second = two

    assert seen(ScopePrincipal(ReadScope.one_study(study_uid=second.study.study_uid))) == only(second)


def test_a_one_study_scope_names_its_study() -> None:
    with pytest.raises(ValueError, match="names its study"):
        ReadScope.one_study()


# --- DICOM nodes -------------------------------------------------------------------------


def test_a_workstation_reads_everything_and_stores_nothing(two: tuple[Rows, Rows]) -> None:
    workstation = DicomNodePrincipal(ae_title="READING1", role=DicomNodeRole.WORKSTATION)

    assert seen(workstation) == everything(two)
    assert workstation.may_store is False


def test_a_modality_stores_and_reads_nothing(two: tuple[Rows, Rows]) -> None:
    modality = DicomNodePrincipal(ae_title="CT01", role=DicomNodeRole.MODALITY)

    assert seen(modality) == NONE
    assert modality.may_store is True


# --- Signed image links (their issuer) ---------------------------------------------------


def _link(*, issuer_id: int | None = None, via: uuid.UUID | None = None) -> signing.ImageLink:
    return signing.ImageLink(
        expires_at=int(time.time()) + 60,
        signature="unchecked-here",
        issuer_id=issuer_id,
        issued_at=int(time.time()) if issuer_id is not None or via is not None else None,
        via_token_id=via,
    )


def test_a_link_of_a_doctor_sees_what_the_doctor_sees(doctor: Any, two: tuple[Rows, Rows]) -> None:
    assert seen(SignedLinkPrincipal(_link(issuer_id=doctor.pk))) == everything(two)


def test_a_link_of_a_user_who_lost_the_role_sees_nothing(doctor: Any, two: tuple[Rows, Rows]) -> None:
    link = _link(issuer_id=doctor.pk)
    doctor.groups.clear()

    assert seen(SignedLinkPrincipal(link)) == NONE


def test_a_link_of_a_user_whose_links_were_revoked_sees_nothing(doctor: Any, two: tuple[Rows, Rows]) -> None:
    link = _link(issuer_id=doctor.pk)
    signing.revoke_links_of(user=doctor)  # at or after the link's issue second

    assert seen(SignedLinkPrincipal(link)) == NONE


def test_a_link_made_through_a_viewer_token_sees_that_tokens_study_while_it_lives(
    doctor: Any, two: tuple[Rows, Rows]
) -> None:
    _first, second = two
    grant = grant_of(second.study, user=doctor)
    link = _link(issuer_id=doctor.pk, via=grant.token_id)

    assert seen(SignedLinkPrincipal(link)) == only(second)
    signing.revoke_viewer_token(grant.token_id)
    assert seen(SignedLinkPrincipal(link)) == NONE


def test_a_link_made_for_nobody_is_bounded_by_its_signature_alone(two: tuple[Rows, Rows]) -> None:
    principal = SignedLinkPrincipal(_link())

    assert principal.read_scope == EVERYTHING
    assert seen(principal) == everything(two)


def test_the_image_behind_a_link_carries_the_doors_verdict_in_one_query(
    doctor: Any, nurse: Any, two: tuple[Rows, Rows], django_assert_num_queries: Any
) -> None:
    first, second = two
    grant = grant_of(second.study, user=doctor)
    image_of_first, image_of_second = min(first.images), min(second.images)
    cases = [
        (_link(), image_of_first, True),
        (_link(issuer_id=doctor.pk), image_of_first, True),
        (_link(issuer_id=nurse.pk), image_of_first, False),
        (_link(issuer_id=doctor.pk, via=grant.token_id), image_of_second, True),
        (_link(issuer_id=doctor.pk, via=grant.token_id), image_of_first, False),  # another study
        (_link(issuer_id=doctor.pk, via=uuid.uuid4()), image_of_second, False),
    ]
    for link, image_id, visible in cases:
        with django_assert_num_queries(1):
            image = image_behind_link(image_id=image_id, link=link)
        assert image is not None
        assert (image.pk, image.visible_to_link) == (image_id, visible)
    with django_assert_num_queries(1):
        assert image_behind_link(image_id=10**12, link=_link()) is None


# --- Prepared lookups through the door ---------------------------------------------------

_STUDY_BY_UID = VisibleLookup(
    visible_studies, lambda studies, study_uid: studies.filter(study_uid=study_uid).order_by()[:1], parameters=1
)
_SERIES_OF_STUDY = VisibleLookup(
    visible_series,
    lambda series, study_uid: series.filter(study__study_uid=study_uid).order_by("series_number"),
    parameters=1,
)


def test_a_prepared_lookup_answers_each_principal_through_the_door(
    doctor: Any, nurse: Any, two: tuple[Rows, Rows], django_assert_num_queries: Any
) -> None:
    first, second = two
    doctor_principal = EmrUserPrincipal(doctor)
    doctor_principal.read_scope  # noqa: B018 (the groups, read once)
    token = ViewerTokenPrincipal(grant_of(second.study))
    workstation = DicomNodePrincipal(ae_title="READING1", role=DicomNodeRole.WORKSTATION)
    nurse_principal = EmrUserPrincipal(nurse)
    nurse_principal.read_scope  # noqa: B018

    for principal, rows, found in [
        (doctor_principal, first, True),
        (doctor_principal, second, True),
        (workstation, first, True),
        (token, second, True),
        (token, first, False),
    ]:
        with django_assert_num_queries(2):
            study = _STUDY_BY_UID.first(principal, rows.study.study_uid)
            series = _SERIES_OF_STUDY.all(principal, rows.study.study_uid)
        assert (study.pk if study else None) == (rows.study.pk if found else None)
        assert {item.pk for item in series} == (set(rows.series) if found else set())
    with django_assert_num_queries(0):
        assert _STUDY_BY_UID.first(nurse_principal, first.study.study_uid) is None
        assert _SERIES_OF_STUDY.all(nurse_principal, first.study.study_uid) == []


def claims_of(study: RadiologyStudy, *, user: Any = None) -> signing.ViewerTokenClaims:
    """A new token's claims, its signature checked and its row not read (as authentication leaves it)."""
    return signing.read_viewer_token(signing.issue_viewer_token(study=study, user=user))


def test_a_token_not_checked_yet_is_checked_in_the_lookups_own_statement(
    doctor: Any, two: tuple[Rows, Rows], django_assert_num_queries: Any
) -> None:
    first, second = two
    principal = ViewerTokenPrincipal(claims_of(second.study, user=doctor))
    assert principal.lookup_scope == ReadScope(
        study_uid=second.study.study_uid, via_viewer_token=principal.claims.token_id
    )
    _STUDY_BY_UID.first(principal, second.study.study_uid)  # compiles it

    _SERIES_OF_STUDY.all(principal, second.study.study_uid)
    with django_assert_num_queries(2):
        assert _STUDY_BY_UID.first(principal, second.study.study_uid) == second.study
        assert {item.pk for item in _SERIES_OF_STUDY.all(principal, second.study.study_uid)} == set(second.series)
    assert principal.checked is False  # found: the lookups' statements vouched for the row
    with django_assert_num_queries(2):
        # Another study's: the lookup finds nothing, then the token's row is read (it stands: "not found").
        assert _STUDY_BY_UID.first(principal, first.study.study_uid) is None
    assert principal.checked is True
    assert principal.grant == signing.ViewerGrant(
        token_id=principal.claims.token_id, study_id=second.study.pk, study_uid=second.study.study_uid
    )
    with django_assert_num_queries(1):  # checked now: the plain one-study lookup
        assert _SERIES_OF_STUDY.all(principal, first.study.study_uid) == []


@pytest.mark.parametrize("ends", ["revoked", "issuer_cut_off", "issuer_lost_the_role"])
def test_a_token_that_no_longer_stands_finds_nothing_and_is_refused(
    doctor: Any, two: tuple[Rows, Rows], ends: str
) -> None:
    _first, second = two
    claims = claims_of(second.study, user=doctor)
    assert _STUDY_BY_UID.first(ViewerTokenPrincipal(claims), second.study.study_uid) == second.study
    if ends == "revoked":
        signing.revoke_viewer_token(claims.token_id)
    elif ends == "issuer_cut_off":
        signing.revoke_links_of(user=doctor)
    else:
        doctor.groups.clear()

    principal = ViewerTokenPrincipal(claims)
    study_ids = visible_studies(ScopePrincipal(principal.lookup_scope)).values_list("pk", flat=True)
    assert list(study_ids) == []  # the door's condition alone
    with pytest.raises(signing.SignatureRejected):
        _STUDY_BY_UID.first(principal, second.study.study_uid)
    with pytest.raises(signing.SignatureRejected):
        principal.read_scope  # noqa: B018
    assert principal.checked is False


def test_another_scope_goes_through_the_orm(doctor: Any, two: tuple[Rows, Rows]) -> None:
    _first, second = two
    grant = grant_of(second.study, user=doctor)
    link = SignedLinkPrincipal(_link(issuer_id=doctor.pk, via=grant.token_id))

    assert _STUDY_BY_UID.first(link, second.study.study_uid) == second.study
    assert _STUDY_BY_UID.first(link, two[0].study.study_uid) is None


# --- Requests and selectors --------------------------------------------------------------


def test_the_principal_of_a_request(doctor: Any, two: tuple[Rows, Rows]) -> None:
    _first, second = two
    grant = grant_of(second.study)
    factory = RequestFactory()
    with_user = factory.get("/")
    with_user.user = doctor
    anonymous = factory.get("/")
    anonymous.user = AnonymousUser()
    drf = Request(factory.get("/"))
    drf.user = ViewerTokenPrincipal(grant)

    assert principal_of(with_user) == EmrUserPrincipal(doctor)
    assert principal_of(anonymous).read_scope == NOTHING
    assert principal_of(factory.get("/")).read_scope == NOTHING  # no authentication ran
    assert principal_of(drf).read_scope == ReadScope(study_id=second.study.pk, study_uid=second.study.study_uid)


def test_selectors_start_from_the_door(doctor: Any, two: tuple[Rows, Rows]) -> None:
    first, second = two
    token = ViewerTokenPrincipal(grant_of(first.study))

    assert [study.pk for study in study_list(EmrUserPrincipal(doctor))] == [second.study.pk, first.study.pk]
    assert [study.pk for study in study_list(token)] == [first.study.pk]
    (study,) = studies_with_series_and_images(token)
    assert {series.pk for series in study.series.all()} == set(first.series)
    assert {image.pk for series in study.series.all() for image in series.images.all()} == set(first.images)
    assert list(studies_with_series_and_images(ScopePrincipal(NOTHING))) == []


def test_the_door_gives_querysets_of_the_three_models(doctor: Any) -> None:
    principal = EmrUserPrincipal(doctor)

    assert visible_studies(principal).model is RadiologyStudy
    assert visible_series(principal).model is RadiologySeries
    assert visible_images(principal).model is RadiologyImage
