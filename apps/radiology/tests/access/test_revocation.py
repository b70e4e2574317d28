"""Viewer-token revocation, by the service and by the admin action: the very next request fails.

A revoked token is 401 invalid_token on DICOMweb (and on the lite viewer's download-link
endpoint, a DICOMweb view) and the lite viewer page refuses it with 403; other tokens of the
same study keep working.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import AbstractBaseUser, Permission
from django.core import signing as django_signing
from django.db import connection
from django.http import HttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.radiology.access import signing
from apps.radiology.access.signing import VIEWER_TOKEN_SALT
from apps.radiology.models import AuditEvent, LinkRevocation, ViewerToken
from apps.radiology.pacs_lite_service import PACSLiteService
from apps.radiology.tests.api_fixtures import token_client
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.trust_helpers import (
    API,
    INVALID_TOKEN,
    StoredStudy,
    bearer_client,
    event_row,
    expected_event,
    ingest_study,
    issue_token,
    refused_token_event,
)

pytestmark = pytest.mark.django_db

REFUSED_PAGE = "This viewer link is not valid"


@pytest.fixture
def stored(make_order: MakeOrder) -> StoredStudy:
    return ingest_study(make_order(), images=1)


def _viewer_page(token: str, stored: StoredStudy) -> HttpResponse:
    return Client().get(f"{API}/viewer/", {"StudyInstanceUIDs": stored.study.study_uid, "token": token})


def _token_id(token: str) -> uuid.UUID:
    """The ViewerToken id a token names (read without checking expiry or revocation)."""
    return uuid.UUID(hex=django_signing.loads(token, salt=VIEWER_TOKEN_SALT)["t"])


def _page_then_action(
    client: Client, changelist: str, action: str, selected: list[str], *, follow: bool = True
) -> tuple[HttpResponse, HttpResponse]:
    """An admin changelist page, then `action` posted on the selected rows from it."""
    page = client.get(changelist)
    response = client.post(changelist, {"action": action, "_selected_action": selected, "index": "0"}, follow=follow)
    return page, response


def assert_token_works(token: str, stored: StoredStudy) -> None:
    metadata = bearer_client(token).get(stored.series_url("/metadata"))
    page = _viewer_page(token, stored)
    download = bearer_client(token).get(f"{API}/viewer/image-url/", {"image": stored.image.image_uid})
    assert metadata.status_code == 200
    assert metadata.json()[0]["00080018"]["Value"] == [stored.image.image_uid]
    assert page.status_code == 200
    assert stored.image.image_uid in page.content.decode()
    assert download.status_code == 200


def assert_token_refused(token: str, stored: StoredStudy) -> None:
    metadata = bearer_client(token).get(stored.series_url("/metadata"))
    search = bearer_client(token).get(f"{API}/dicomweb/studies")
    page = _viewer_page(token, stored)
    download = bearer_client(token).get(f"{API}/viewer/image-url/", {"image": stored.image.image_uid})
    for response in (metadata, search, download):
        assert response.status_code == 401
        assert response.json() == INVALID_TOKEN
        assert response["WWW-Authenticate"] == 'Bearer realm="pacs-lite dicomweb"'
    assert page.status_code == 403
    assert REFUSED_PAGE in page.content.decode()
    assert stored.image.image_uid not in page.content.decode()
    assert page["Cache-Control"] == "no-store"


def test_service_revocation_stops_the_token_at_once(stored: StoredStudy, doctor: AbstractBaseUser) -> None:
    token = issue_token(stored.study, user=doctor)
    other = issue_token(stored.study, user=doctor)
    assert_token_works(token, stored)
    token_id = _token_id(token)
    before = timezone.now()

    revoked = PACSLiteService.revoke_viewer_token(token_id=token_id)

    assert revoked is True
    record = ViewerToken.objects.get(pk=token_id)
    assert record.revoked_at is not None
    assert before <= record.revoked_at <= timezone.now()
    assert_token_refused(token, stored)
    assert_token_works(other, stored)
    assert ViewerToken.objects.get(pk=_token_id(other)).revoked_at is None


def test_revoking_twice_or_an_unknown_token_reports_false(stored: StoredStudy) -> None:
    token = issue_token(stored.study)
    token_id = _token_id(token)
    assert PACSLiteService.revoke_viewer_token(token_id=token_id) is True
    first = ViewerToken.objects.get(pk=token_id).revoked_at

    assert PACSLiteService.revoke_viewer_token(token_id=token_id) is False
    assert PACSLiteService.revoke_viewer_token(token_id=uuid.uuid4()) is False
    assert ViewerToken.objects.get(pk=token_id).revoked_at == first


def test_revoked_token_is_recorded_as_denied(stored: StoredStudy) -> None:
    token = issue_token(stored.study)
    PACSLiteService.revoke_viewer_token(token_id=_token_id(token))

    response = bearer_client(token).get(stored.study_url("/metadata"))

    assert response.status_code == 401
    # the signature is good: the trail names the revoked token
    assert event_row(AuditEvent.objects.get()) == refused_token_event(stored, _token_id(token))


def test_admin_action_revokes_the_selected_tokens(
    stored: StoredStudy, superuser: AbstractBaseUser, doctor: AbstractBaseUser
) -> None:
    chosen = issue_token(stored.study, user=doctor)
    already = issue_token(stored.study, user=doctor)
    kept = issue_token(stored.study, user=doctor)
    PACSLiteService.revoke_viewer_token(token_id=_token_id(already))
    already_at = ViewerToken.objects.get(pk=_token_id(already)).revoked_at
    assert_token_works(chosen, stored)
    client = Client()
    client.force_login(superuser)
    changelist = reverse("admin:radiology_viewertoken_changelist")

    page, response = _page_then_action(client, changelist, "revoke", [str(_token_id(chosen)), str(_token_id(already))])

    assert page.status_code == 200
    assert b'<option value="revoke">Revoke the selected viewer tokens (they stop working at once)</option>' in (
        page.content
    )
    assert b"delete_selected" not in page.content
    assert response.redirect_chain == [(changelist, 302)]
    assert [str(message) for message in response.context["messages"]] == ["Revoked 1 viewer token(s)."]
    assert ViewerToken.objects.get(pk=_token_id(already)).revoked_at == already_at
    assert ViewerToken.objects.filter(revoked_at__isnull=False).count() == 2
    assert_token_refused(chosen, stored)
    assert_token_works(kept, stored)
    post_event = AuditEvent.objects.get(method="POST")
    assert event_row(post_event) == expected_event(
        user=superuser.pk,
        username="admin-dana",
        role="superuser",
        channel="admin",
        action="write",
        route="radiology_viewertoken_changelist",
        method="POST",
        status_code=302,
        outcome="allowed",
    )


def test_admin_token_pages_change_nothing_else(stored: StoredStudy, superuser: AbstractBaseUser) -> None:
    token = issue_token(stored.study)
    token_id = _token_id(token)
    client = Client()
    client.force_login(superuser)

    add = client.get(reverse("admin:radiology_viewertoken_add"))
    change = client.post(reverse("admin:radiology_viewertoken_change", args=[token_id]), {"expires_at_0": "2099-01-01"})
    delete = client.post(reverse("admin:radiology_viewertoken_delete", args=[token_id]), {"post": "yes"})

    assert (add.status_code, change.status_code, delete.status_code) == (403, 403, 403)
    assert ViewerToken.objects.get(pk=token_id).revoked_at is None
    assert_token_works(token, stored)


def test_staff_without_superuser_cannot_revoke(stored: StoredStudy, doctor: AbstractBaseUser) -> None:
    token = issue_token(stored.study)
    doctor.is_staff = True
    doctor.save()
    client = Client()
    client.force_login(doctor)

    response = client.post(
        reverse("admin:radiology_viewertoken_changelist"),
        {"action": "revoke", "_selected_action": [str(_token_id(token))], "index": "0"},
    )

    assert response.status_code == 403
    assert ViewerToken.objects.get().revoked_at is None
    assert_token_works(token, stored)


def test_expired_token_is_refused_like_a_revoked_one(stored: StoredStudy) -> None:
    token = issue_token(stored.study, expires_in=-1)

    assert_token_refused(token, stored)
    assert ViewerToken.objects.get().revoked_at is None


def test_staff_who_may_only_view_tokens_cannot_revoke(stored: StoredStudy, doctor: AbstractBaseUser) -> None:
    token = issue_token(stored.study)
    doctor.is_staff = True
    doctor.save()
    doctor.user_permissions.add(Permission.objects.get(codename="view_viewertoken"))
    client = Client()
    client.force_login(doctor)
    changelist = reverse("admin:radiology_viewertoken_changelist")

    page, response = _page_then_action(client, changelist, "revoke", [str(_token_id(token))])

    assert page.status_code == 200
    assert str(_token_id(token)) in page.content.decode()
    assert b'value="revoke"' not in page.content
    assert response.status_code == 200
    assert list(response.context["messages"]) == []
    assert ViewerToken.objects.get().revoked_at is None
    assert_token_works(token, stored)


# --- links tied to their issuer ----------------------------------------------------------------------

LINK_REVOKED = {
    "detail": "This link was revoked: its issuer no longer has access, or its viewer link ended.",
    "code": "link_revoked",
}


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _api_image_url(user: AbstractBaseUser, stored: StoredStudy) -> str:
    """A signed image URL as the REST API hands it to `user`."""
    response = token_client(user).get(f"{API}/images/{stored.image.pk}/url/")
    assert response.status_code == 200
    return str(response.json()["image_url"])


def _viewer_image_url(token: str, stored: StoredStudy) -> str:
    """A signed image URL made through a viewer token (the lite viewer's download link)."""
    response = bearer_client(token).get(f"{API}/viewer/image-url/", {"image": stored.image.image_uid})
    assert response.status_code == 200
    return str(response.json()["image_url"])


def assert_link_serves(url: str, stored: StoredStudy) -> None:
    response = Client().get(_path(url))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == stored.contents[0]


def assert_link_revoked(url: str) -> None:
    response = Client().get(_path(url))
    assert response.status_code == 403
    assert response.json() == LINK_REVOKED


@pytest.fixture
def issued(stored: StoredStudy, doctor: AbstractBaseUser) -> dict[str, str]:
    """Every kind of link the doctor can make: a viewer token, an API image URL, an image URL through the token."""
    token = issue_token(stored.study, user=doctor)
    links = {"token": token, "api_url": _api_image_url(doctor, stored), "viewer_url": _viewer_image_url(token, stored)}
    assert_token_works(token, stored)
    assert_link_serves(links["api_url"], stored)
    assert_link_serves(links["viewer_url"], stored)
    return links


def assert_all_refused(links: dict[str, str], stored: StoredStudy) -> None:
    assert_token_refused(links["token"], stored)
    assert_link_revoked(links["api_url"])
    assert_link_revoked(links["viewer_url"])


def test_links_die_when_their_issuer_is_deactivated(
    stored: StoredStudy, doctor: AbstractBaseUser, issued: dict[str, str]
) -> None:
    doctor.is_active = False
    doctor.save(update_fields=["is_active"])

    assert_all_refused(issued, stored)
    assert ViewerToken.objects.get().revoked_at is None  # refused by the issuer's standing, not revoked


def test_links_die_when_their_issuer_leaves_the_radiology_groups(
    stored: StoredStudy, doctor: AbstractBaseUser, issued: dict[str, str]
) -> None:
    doctor.groups.clear()

    assert_all_refused(issued, stored)


def test_links_of_a_superuser_issuer_stand(stored: StoredStudy, superuser: AbstractBaseUser) -> None:
    token = issue_token(stored.study, user=superuser)

    assert_token_works(token, stored)
    assert_link_serves(_api_image_url(superuser, stored), stored)
    assert_link_serves(_viewer_image_url(token, stored), stored)


def test_revoking_a_viewer_token_ends_the_image_urls_made_through_it(
    stored: StoredStudy, doctor: AbstractBaseUser, issued: dict[str, str]
) -> None:
    PACSLiteService.revoke_viewer_token(token_id=_token_id(issued["token"]))

    assert_token_refused(issued["token"], stored)
    assert_link_revoked(issued["viewer_url"])
    assert_link_serves(issued["api_url"], stored)  # made by the doctor directly: still theirs


def test_revoke_links_of_ends_every_link_the_user_made_and_no_one_elses(
    stored: StoredStudy,
    doctor: AbstractBaseUser,
    radtech: AbstractBaseUser,
    superuser: AbstractBaseUser,
    issued: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    second = issue_token(stored.study, user=doctor)
    colleague_token = issue_token(stored.study, user=radtech)
    colleague_url = _api_image_url(radtech, stored)

    revoked = signing.revoke_links_of(user=doctor, revoked_by=superuser)

    assert revoked == 2
    assert set(ViewerToken.objects.filter(revoked_at__isnull=False).values_list("issued_to", flat=True)) == {doctor.pk}
    cutoff = LinkRevocation.objects.get(user=doctor)
    assert cutoff.revoked_by == superuser
    assert_all_refused(issued, stored)
    assert_token_refused(second, stored)
    assert_token_works(colleague_token, stored)
    assert_link_serves(colleague_url, stored)
    # Image URLs carry whole seconds: one made within the cut-off's second is refused, one made
    # in a later second works (signing's clock set to each).
    signed_at = cutoff.links_valid_after.timestamp()
    for moment, status in ((int(signed_at), 403), (int(signed_at) + 1, 200)):
        monkeypatch.setattr(signing, "time", SimpleNamespace(time=lambda moment=moment: float(moment)))
        url = signing.image_url(image=stored.image, user=doctor, expires_in=3600, base_url="http://testserver")
        assert Client().get(_path(url)).status_code == status
    assert_token_works(issue_token(stored.study, user=doctor), stored)  # a token issued after the cut-off


def test_admin_action_revokes_every_link_of_the_selected_users(
    stored: StoredStudy, doctor: AbstractBaseUser, superuser: AbstractBaseUser, issued: dict[str, str]
) -> None:
    client = Client()
    client.force_login(superuser)
    changelist = reverse("admin:auth_user_changelist")

    page, response = _page_then_action(client, changelist, "revoke_radiology_links", [str(doctor.pk)])

    assert b'value="revoke_radiology_links"' in page.content
    assert response.redirect_chain == [(changelist, 302)]
    assert [str(message) for message in response.context["messages"]] == [
        "Revoked every radiology link of 1 user(s), 1 of them active viewer token(s)."
    ]
    assert LinkRevocation.objects.get().user == doctor
    assert_all_refused(issued, stored)
    listed = client.get(reverse("admin:radiology_linkrevocation_changelist"))
    assert listed.status_code == 200
    assert [(row.user, row.revoked_by) for row in listed.context["cl"].result_list] == [(doctor, superuser)]


def test_staff_who_may_change_users_cannot_revoke_their_links(
    stored: StoredStudy, doctor: AbstractBaseUser, radtech: AbstractBaseUser, issued: dict[str, str]
) -> None:
    radtech.is_staff = True
    radtech.save()
    radtech.user_permissions.add(*Permission.objects.filter(codename__in=["view_user", "change_user"]))
    client = Client()
    client.force_login(radtech)
    changelist = reverse("admin:auth_user_changelist")

    page, _response = _page_then_action(client, changelist, "revoke_radiology_links", [str(doctor.pk)], follow=False)

    assert page.status_code == 200
    assert b"revoke_radiology_links" not in page.content
    assert LinkRevocation.objects.count() == 0
    assert_token_works(issued["token"], stored)


# --- the checks cost no query on the hot path ----------------------------------------------------------


def test_a_viewer_token_is_checked_in_one_query_issuer_included(
    stored: StoredStudy, doctor: AbstractBaseUser, django_assert_num_queries: Any
) -> None:
    with_issuer = issue_token(stored.study, user=doctor)
    without_issuer = issue_token(stored.study)

    with django_assert_num_queries(1):
        assert signing.verify_viewer_token(with_issuer).issuer_id == doctor.pk
    with django_assert_num_queries(1):
        assert signing.verify_viewer_token(without_issuer).issuer_id is None


def test_a_signed_image_url_costs_the_same_queries_with_or_without_an_issuer(
    stored: StoredStudy, doctor: AbstractBaseUser, django_assert_num_queries: Any
) -> None:
    token = issue_token(stored.study, user=doctor)
    plain = signing.image_url(image=stored.image, expires_in=60, base_url="http://testserver")
    by_user = signing.image_url(image=stored.image, user=doctor, expires_in=60, base_url="http://testserver")
    through_token = _viewer_image_url(token, stored)

    # One query for the image, its issuer and its viewer token; one for the request's audit event.
    for url in (plain, by_user, through_token):
        with django_assert_num_queries(2):
            assert_link_serves(url, stored)


def test_a_viewer_token_request_costs_the_same_with_an_issuer(
    stored: StoredStudy, doctor: AbstractBaseUser, django_assert_num_queries: Any
) -> None:
    bearer_client(issue_token(stored.study)).get(stored.series_url("/metadata"))  # warm what is read once
    counts = []
    for user in (None, doctor):
        client = bearer_client(issue_token(stored.study, user=user))
        with CaptureQueriesContext(connection) as captured:
            assert client.get(stored.series_url("/metadata")).status_code == 200
        counts.append(len(captured.captured_queries))

    assert counts[0] == counts[1]
