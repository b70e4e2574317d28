"""The front door by role: doctors and techs see and open studies, a nurse is told no, anonymous signs in first.

Opening a study issues a viewer token for the signed-in user through access/signing.py (the
API's own tokens): OHIF gets a new one per click (a POST), the lite viewer reuses the user's
recent one for the study as the API's quick look does.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.test import Client

from apps.radiology.access import signing
from apps.radiology.frontdoor.pages import NO_RADIOLOGY_ROLE, TECHS_ONLY
from apps.radiology.frontdoor.views import NO_SUCH_STUDY
from apps.radiology.models import RadiologyStudy, UnmatchedImage, ViewerToken
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.frontdoor.helpers import (
    FAILED,
    STUDIES,
    failed_upload,
    listed_patients,
    make_listed_study,
    signed_in,
    unmatched_file,
)

pytestmark = pytest.mark.django_db

OHIF = "http://ohif.example:3000/viewer"


@pytest.fixture
def study(make_order: MakeOrder) -> RadiologyStudy:
    return make_listed_study(
        make_order,
        first_name="Zanele",
        last_name="Quaxley",
        modality="MR",
        study_date=dt.date(2026, 3, 4),
        description="MRI Knee left",
        images=3,
    )


@pytest.fixture(autouse=True)
def _ohif(settings: Any) -> None:
    settings.OHIF_VIEWER_URL = OHIF
    settings.PACS_PUBLIC_URL = ""


def _open(client: Client, study_id: int, viewer: str) -> Any:
    return client.post(f"/radiology/studies/{study_id}/{viewer}/")


def _viewer_query(location: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(location).query).items()}


def test_anonymous_is_sent_to_sign_in_and_back(study: RadiologyStudy) -> None:
    client = Client()

    listing = client.get(STUDIES + "?page=2")
    opening = _open(client, study.pk, "ohif")
    failed = client.get(FAILED)

    assert (listing.status_code, listing["Location"]) == (302, "/sign-in/?next=/radiology/studies/%3Fpage%3D2")
    # A form's target is no page to come back to: the list is.
    assert (opening.status_code, opening["Location"]) == (302, "/sign-in/?next=/radiology/studies/")
    assert (failed.status_code, failed["Location"]) == (302, "/sign-in/?next=/radiology/uploads/failed/")
    assert ViewerToken.objects.count() == 0


def test_a_nurse_is_told_why_and_sees_nothing(study: RadiologyStudy, nurse: AbstractBaseUser) -> None:
    client = signed_in(nurse)

    responses = [
        client.get(STUDIES),
        _open(client, study.pk, "ohif"),
        _open(client, study.pk, "lite"),
        client.get(FAILED),
    ]

    for response in responses:
        body = response.content.decode()
        assert response.status_code == 403
        assert f'<p id="refused">{NO_RADIOLOGY_ROLE}</p>' in body
        assert "Quaxley" not in body and study.patient_id not in body
        # No menu entries a nurse cannot use.
        assert 'href="/radiology/studies/"' not in body
    assert ViewerToken.objects.count() == 0


@pytest.mark.parametrize("role", ["doctor", "radtech", "superuser"])
def test_doctor_tech_and_superuser_see_the_study_with_its_facts(
    role: str, study: RadiologyStudy, request: pytest.FixtureRequest
) -> None:
    response = signed_in(request.getfixturevalue(role)).get(STUDIES)

    body = response.content.decode()
    assert response.status_code == 200
    assert listed_patients(body) == ["Zanele Quaxley"]
    row = body.split(f'<tr data-study="{study.pk}">', 1)[1].split("</tr>", 1)[0]
    assert f'<span class="muted">{study.patient_id}</span>' in row
    assert '<td data-label="Date">2026-03-04</td>' in row
    assert '<td data-label="Modality">MR</td>' in row
    assert '<td data-label="Description">MRI Knee left</td>' in row
    assert '<td data-label="Images" class="number">3</td>' in row
    assert f'action="/radiology/studies/{study.pk}/ohif/"' in row
    assert f'action="/radiology/studies/{study.pk}/lite/"' in row
    assert '<p class="muted" id="summary">1 study, newest first.</p>' in body


def test_the_list_is_newest_first(make_order: MakeOrder, doctor: AbstractBaseUser) -> None:
    now = dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC)
    for days, name in [(3, "Old"), (1, "Newest"), (2, "Middle")]:
        make_listed_study(make_order, first_name=name, last_name="Patient", created_at=now - dt.timedelta(days=days))

    body = signed_in(doctor).get(STUDIES).content.decode()

    assert listed_patients(body) == ["Newest Patient", "Middle Patient", "Old Patient"]


def test_pages_are_not_cached_and_allow_nothing_from_elsewhere(study: RadiologyStudy, doctor: AbstractBaseUser) -> None:
    response = signed_in(doctor).get(STUDIES)

    assert "no-store" in response["Cache-Control"]
    policy = response["Content-Security-Policy"]
    nonce = policy.split("style-src 'nonce-", 1)[1].split("'", 1)[0]
    assert policy == (
        f"default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self'; "
        "form-action 'self' http://ohif.example:3000; base-uri 'none'; frame-ancestors 'none'"
    )
    body = response.content.decode()
    assert f'<style nonce="{nonce}">' in body
    assert "<script" not in body
    assert "http://" not in body and "https://" not in body  # nothing loaded or linked from another origin


def test_a_doctor_does_not_see_the_tech_panel_nor_failed_uploads(
    study: RadiologyStudy, doctor: AbstractBaseUser
) -> None:
    client = signed_in(doctor)

    listing = client.get(STUDIES).content.decode()
    failed = client.get(FAILED)

    assert 'id="attention"' not in listing
    assert 'href="/radiology/uploads/failed/"' not in listing
    assert failed.status_code == 403
    assert f'<p id="refused">{TECHS_ONLY}</p>' in failed.content.decode()


def test_a_tech_sees_own_failed_uploads_and_the_unmatched_inbox(
    study: RadiologyStudy, radtech: AbstractBaseUser, doctor: AbstractBaseUser, make_order: MakeOrder
) -> None:
    order = make_order(first_name="Femi", last_name="Adeyemi")
    failed_upload(order, radtech, filename="knee.dcm", code="invalid_dicom", detail="The file is not valid DICOM.")
    failed_upload(order, radtech, filename="chest.dcm", code="patient_mismatch", detail="Another patient's file.")
    failed_upload(order, doctor, filename="not-mine.dcm", code="invalid_dicom", detail="Someone else's.")
    for number in range(3):
        unmatched_file(number)
    unmatched_file(9, status=UnmatchedImage.Status.DISCARDED)
    client = signed_in(radtech)

    listing = client.get(STUDIES).content.decode()
    failed = client.get(FAILED)

    attention = listing.split('<div class="notice" id="attention">', 1)[1].split("</div>", 1)[0]
    assert '<a href="/radiology/uploads/failed/">2 failed uploads</a> of yours' in attention
    # Not staff: the inbox is counted, and the tech is told where it is.
    assert "Unmatched inbox:\n    3 files waiting for an order (the inbox is in admin" in attention
    body = failed.content.decode()
    assert failed.status_code == 200
    rows = body.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    assert [row.split('<td data-label="File">', 1)[1].split("<", 1)[0] for row in rows.split("<tr>")[1:]] == [
        "chest.dcm",
        "knee.dcm",
    ]
    assert '<td data-label="Error"><code>patient_mismatch</code> Another patient&#x27;s file.</td>' in rows
    assert '<td data-label="Patient">Femi Adeyemi' in rows
    assert f'<td data-label="Order">{order.accession_number}</td>' in rows
    assert "not-mine.dcm" not in body


def test_a_staff_tech_gets_a_link_to_the_waiting_files_in_admin(
    study: RadiologyStudy, radtech: AbstractBaseUser
) -> None:
    radtech.is_staff = True
    radtech.save()
    unmatched_file(1)

    listing = signed_in(radtech).get(STUDIES).content.decode()

    assert (
        '<a href="/admin/radiology/unmatchedimage/?status__exact=pending">Unmatched inbox</a>:\n'
        "    1 file waiting for an order." in listing
    )
    assert '<a href="/radiology/uploads/failed/">' not in listing.split('id="attention"', 1)[1].split("</div>")[0]
    assert "No failed uploads of yours." in listing


def test_opening_in_ohif_issues_this_user_a_token_for_the_study(
    study: RadiologyStudy, doctor: AbstractBaseUser
) -> None:
    client = signed_in(doctor)

    first = _open(client, study.pk, "ohif")
    second = _open(client, study.pk, "ohif")

    assert first.status_code == 302
    assert first["Location"].startswith(f"{OHIF}?StudyInstanceUIDs={study.study_uid}&token=")
    assert (first["Cache-Control"], first["Referrer-Policy"]) == ("no-store", "no-referrer")
    query = _viewer_query(first["Location"])
    grant = signing.verify_viewer_token(query["token"])
    assert (grant.study_id, grant.study_uid, grant.issuer_id) == (study.pk, study.study_uid, doctor.pk)
    # One token per click, as admin's "Open in viewer".
    assert _viewer_query(second["Location"])["token"] != query["token"]
    assert list(ViewerToken.objects.values_list("study_id", "issued_to_id")) == [(study.pk, doctor.pk)] * 2


def test_the_lite_viewer_reuses_the_users_recent_token(study: RadiologyStudy, radtech: AbstractBaseUser) -> None:
    client = signed_in(radtech)

    first = _open(client, study.pk, "lite")
    second = _open(client, study.pk, "lite")

    assert first.status_code == 302
    assert first["Location"].startswith(
        f"http://testserver/api/v1/radiology/viewer/?StudyInstanceUIDs={study.study_uid}&token="
    )
    grant = signing.verify_viewer_token(_viewer_query(first["Location"])["token"])
    assert (grant.study_id, grant.issuer_id) == (study.pk, radtech.pk)
    assert second["Location"] == first["Location"]
    assert ViewerToken.objects.count() == 1
    # The page it leads to opens.
    assert client.get(first["Location"]).status_code == 200


def test_without_ohif_only_the_lite_viewer_is_offered(
    study: RadiologyStudy, doctor: AbstractBaseUser, settings: Any
) -> None:
    settings.OHIF_VIEWER_URL = ""
    client = signed_in(doctor)

    body = client.get(STUDIES).content.decode()
    opened = _open(client, study.pk, "ohif")

    assert "/ohif/" not in body
    assert f'action="/radiology/studies/{study.pk}/lite/"' in body
    assert opened["Location"].startswith("http://testserver/api/v1/radiology/viewer/?StudyInstanceUIDs=")


def test_opening_a_missing_study_is_a_404_page(doctor: AbstractBaseUser) -> None:
    client = signed_in(doctor)

    for viewer in ("ohif", "lite"):
        response = _open(client, 999_999, viewer)
        assert response.status_code == 404
        assert f'<p id="refused">{NO_SUCH_STUDY}</p>' in response.content.decode()
    assert ViewerToken.objects.count() == 0


def test_open_and_search_take_only_post_and_the_list_only_get(study: RadiologyStudy, doctor: AbstractBaseUser) -> None:
    client = signed_in(doctor)

    assert client.get(f"/radiology/studies/{study.pk}/ohif/").status_code == 405
    assert client.get(f"/radiology/studies/{study.pk}/lite/").status_code == 405
    assert client.get("/radiology/studies/search/").status_code == 405
    assert client.post(STUDIES).status_code == 405
    assert ViewerToken.objects.count() == 0
