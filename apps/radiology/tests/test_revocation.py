"""Viewer-token revocation, by the service and by the admin action: the very next request fails.

A revoked token is 401 invalid_token on DICOMweb (and on the lite viewer's download-link
endpoint, a DICOMweb view) and the lite viewer page refuses it with 403; other tokens of the
same study keep working.
"""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import AbstractBaseUser, Permission
from django.core import signing
from django.http import HttpResponse
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.radiology.models import AuditEvent, ViewerToken
from apps.radiology.pacs_lite_service import PACSLiteService
from apps.radiology.signing import VIEWER_TOKEN_SALT
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
    return uuid.UUID(hex=signing.loads(token, salt=VIEWER_TOKEN_SALT)["t"])


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
    assert event_row(AuditEvent.objects.get()) == expected_event(
        role="anonymous",
        channel="dicomweb",
        action="read",
        route="dicomweb-study-metadata",
        method="GET",
        study_uid=stored.study.study_uid,
        status_code=401,
        outcome="denied",
    )


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

    page = client.get(changelist)
    response = client.post(
        changelist,
        {"action": "revoke", "_selected_action": [str(_token_id(chosen)), str(_token_id(already))], "index": "0"},
        follow=True,
    )

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

    page = client.get(changelist)
    response = client.post(
        changelist, {"action": "revoke", "_selected_action": [str(_token_id(token))], "index": "0"}, follow=True
    )

    assert page.status_code == 200
    assert str(_token_id(token)) in page.content.decode()
    assert b'value="revoke"' not in page.content
    assert response.status_code == 200
    assert list(response.context["messages"]) == []
    assert ViewerToken.objects.get().revoked_at is None
    assert_token_works(token, stored)
