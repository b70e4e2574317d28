"""Signing in and out of the front door, and `/` for someone who has not.

Sign-in is Django's LoginView for any user (admin's refuses non-staff), behind the same
django-axes lockout as the admin login and the token endpoint: failures are counted per
username and client address, and a locked-out account is refused even with the right password.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.test import Client

from apps.radiology.frontdoor.search import SESSION_KEY
from apps.radiology.tests.conftest import PASSWORD
from apps.radiology.tests.frontdoor.helpers import SEARCH, SIGN_IN, SIGN_OUT, STUDIES, signed_in

pytestmark = pytest.mark.django_db

NAT = "203.0.113.10"
ELSEWHERE = "198.51.100.77"
WRONG = "not-the-password"


def _sign_in(client: Client, username: str, password: str, *, address: str = NAT, next_page: str = "") -> Any:
    return client.post(SIGN_IN, {"username": username, "password": password, "next": next_page}, REMOTE_ADDR=address)


def test_the_sign_in_page_is_a_form_that_posts_to_itself() -> None:
    response = Client().get(SIGN_IN + "?next=/radiology/studies/%3Fpage%3D2")

    body = response.content.decode()
    assert response.status_code == 200
    assert '<form method="post" action="/sign-in/">' in body
    assert '<input type="hidden" name="next" value="/radiology/studies/?page=2">' in body
    assert 'name="csrfmiddlewaretoken"' in body
    assert "no-store" in response["Cache-Control"]


def test_a_doctor_signs_in_to_the_list_or_back_where_they_were(doctor: AbstractBaseUser) -> None:
    plain = _sign_in(Client(), "doctor-alice", PASSWORD)
    back = _sign_in(Client(), "doctor-alice", PASSWORD, next_page="/radiology/studies/?page=2")
    elsewhere = _sign_in(Client(), "doctor-alice", PASSWORD, next_page="https://evil.example/")

    assert (plain.status_code, plain["Location"]) == (302, STUDIES)
    assert (back.status_code, back["Location"]) == (302, "/radiology/studies/?page=2")
    assert (elsewhere.status_code, elsewhere["Location"]) == (302, STUDIES)
    assert plain.client.get(STUDIES).status_code == 200


def test_a_nurse_may_sign_in_and_is_told_there_is_nothing_for_her(nurse: AbstractBaseUser) -> None:
    response = _sign_in(Client(), "nurse-charlie", PASSWORD)

    assert (response.status_code, response["Location"]) == (302, STUDIES)
    assert response.client.get(STUDIES).status_code == 403


def test_a_wrong_password_says_so_and_signs_nobody_in(doctor: AbstractBaseUser) -> None:
    response = _sign_in(Client(), "doctor-alice", WRONG)

    body = response.content.decode()
    assert response.status_code == 200
    assert "Please enter a correct username and password." in body
    assert "_auth_user_id" not in response.client.session
    assert WRONG not in body


def test_failures_lock_one_account_from_one_address_only(
    doctor: AbstractBaseUser, radtech: AbstractBaseUser, settings: Any
) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    failures = [_sign_in(Client(), "doctor-alice", WRONG) for _ in range(3)]
    locked = _sign_in(Client(), "doctor-alice", PASSWORD)
    colleague = _sign_in(Client(), "radtech-bob", PASSWORD)
    elsewhere = _sign_in(Client(), "doctor-alice", PASSWORD, address=ELSEWHERE)

    assert [response.status_code for response in failures] == [200, 200, 429]
    assert locked.status_code == 429
    assert locked["Retry-After"] == "900"
    assert "_auth_user_id" not in locked.client.session
    assert "Too many failed logins for this account from this computer" in locked.content.decode()
    assert (colleague.status_code, colleague["Location"]) == (302, STUDIES)
    assert (elsewhere.status_code, elsewhere["Location"]) == (302, STUDIES)


def test_signed_in_the_sign_in_page_goes_to_the_list(doctor: AbstractBaseUser) -> None:
    response = signed_in(doctor).get(SIGN_IN)

    assert (response.status_code, response["Location"]) == (302, STUDIES)


def test_sign_out_is_a_post_that_forgets_the_search(doctor: AbstractBaseUser) -> None:
    client = signed_in(doctor)
    client.post(SEARCH, {"patient": "Quaxley", "date_from": "", "date_to": "", "modality": ""})
    assert SESSION_KEY in client.session

    refused = client.get(SIGN_OUT)
    signed_out = client.post(SIGN_OUT)

    assert refused.status_code == 405
    assert (signed_out.status_code, signed_out["Location"]) == (302, "/")
    assert SESSION_KEY not in client.session
    assert client.get(STUDIES)["Location"] == "/sign-in/?next=/radiology/studies/"
