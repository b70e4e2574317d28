"""Login protection: failures counted per username AND client address, on the token endpoint and admin.

An attacker (or a colleague with a sticky caps lock) behind a clinic's NAT locks out one
account from one address, never the clinic: another user from the same address, and the
same user from another address, still log in. Every failed login leaves an audit event
with the username tried, the address and the channel, and never the password.
"""

from __future__ import annotations

from typing import Any

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.throttling import SimpleRateThrottle

from apps.radiology.access.login_protection import UsernameAndClientRateThrottle
from apps.radiology.models import AuditEvent
from apps.radiology.tests.conftest import PASSWORD
from apps.radiology.tests.trust_helpers import column_values, event_row, expected_event

pytestmark = pytest.mark.django_db

TOKEN_URL = "/api/v1/auth/token/"
ADMIN_LOGIN = "/admin/login/"
NAT = "203.0.113.10"
ELSEWHERE = "198.51.100.77"
WRONG = "not-the-password"
INVALID_CREDENTIALS = {"detail": "Unable to log in with the provided credentials.", "code": "invalid_credentials"}
LOCKED_OUT = {
    "detail": "Too many failed logins for this account from this address. Try again later.",
    "code": "login_locked_out",
}


@pytest.fixture(autouse=True)
def _three_failures_lock(settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    cache.clear()  # the token endpoint's throttle counts live in the cache


def _token(username: str, password: str, address: str) -> Any:
    return Client().post(TOKEN_URL, {"username": username, "password": password}, REMOTE_ADDR=address)


def _admin_login(username: str, password: str, address: str) -> Any:
    return Client().post(
        ADMIN_LOGIN, {"username": username, "password": password, "next": "/admin/"}, REMOTE_ADDR=address
    )


def _failed_login_event(*, username: str, channel: str, route: str, status_code: int, address: str) -> dict[str, Any]:
    return expected_event(
        username=username,
        role="anonymous",
        channel=channel,
        action="login",
        route=route,
        method="POST",
        status_code=status_code,
        outcome="denied",
        client_address=address,
    )


def test_token_endpoint_locks_one_account_from_one_address_only(
    doctor: AbstractBaseUser, radtech: AbstractBaseUser, superuser: AbstractBaseUser
) -> None:
    failures = [_token("doctor-alice", WRONG, NAT) for _ in range(3)]
    locked = _token("doctor-alice", PASSWORD, NAT)  # even the right password, while locked
    colleague = _token("radtech-bob", PASSWORD, NAT)
    elsewhere = _token("doctor-alice", PASSWORD, ELSEWHERE)

    # The third failure reaches the limit and is itself answered with the lockout.
    assert [(r.status_code, r.json()) for r in failures] == [(400, INVALID_CREDENTIALS)] * 2 + [(429, LOCKED_OUT)]
    assert (locked.status_code, locked.json()) == (429, LOCKED_OUT)
    assert locked["Retry-After"] == "900"
    assert "token" not in locked.json()
    assert (colleague.status_code, colleague.json()) == (200, {"token": Token.objects.get(user=radtech).key})
    assert (elsewhere.status_code, elsewhere.json()) == (200, {"token": Token.objects.get(user=doctor).key})
    assert not Token.objects.filter(user=superuser).exists()


def test_every_failed_token_login_is_audited_without_the_password(doctor: AbstractBaseUser) -> None:
    for _ in range(3):
        _token("doctor-alice", WRONG, NAT)
    _token("doctor-alice", PASSWORD, NAT)  # locked out: a failure too
    _token("nobody-here", WRONG, ELSEWHERE)
    _token("doctor-alice", PASSWORD, ELSEWHERE)  # a success leaves no login event

    events = list(AuditEvent.objects.order_by("id"))
    assert [event_row(event) for event in events] == [
        *[
            _failed_login_event(
                username="doctor-alice", channel="api", route="api-token", status_code=status, address=NAT
            )
            for status in (400, 400, 429, 429)
        ],
        _failed_login_event(
            username="nobody-here", channel="api", route="api-token", status_code=400, address=ELSEWHERE
        ),
    ]
    assert all(WRONG not in value and PASSWORD not in value for event in events for value in column_values(event))


def test_admin_login_locks_one_account_from_one_address_only(
    superuser: AbstractBaseUser, doctor: AbstractBaseUser
) -> None:
    doctor.is_staff = True
    doctor.save()
    failures = [_admin_login("admin-dana", WRONG, NAT) for _ in range(3)]
    locked = _admin_login("admin-dana", PASSWORD, NAT)
    colleague = _admin_login("doctor-alice", PASSWORD, NAT)
    elsewhere = _admin_login("admin-dana", PASSWORD, ELSEWHERE)

    assert [r.status_code for r in failures] == [200, 200, 429]
    assert all("Please enter the correct username and password" in r.content.decode() for r in failures[:2])
    assert locked.status_code == 429
    assert "Too many failed logins for this account from this computer" in locked.content.decode()
    assert "_auth_user_id" not in locked.client.session
    assert (colleague.status_code, colleague["Location"]) == (302, "/admin/")
    assert (elsewhere.status_code, elsewhere["Location"]) == (302, "/admin/")
    assert [event_row(event) for event in AuditEvent.objects.order_by("id")] == [
        *[
            _failed_login_event(username="admin-dana", channel="admin", route="login", status_code=status, address=NAT)
            for status in (200, 200, 429, 429)
        ],
    ]


def test_a_success_resets_the_count(doctor: AbstractBaseUser) -> None:
    for _ in range(2):
        _token("doctor-alice", WRONG, NAT)
    assert _token("doctor-alice", PASSWORD, NAT).status_code == 200
    responses = [_token("doctor-alice", WRONG, NAT) for _ in range(2)]

    assert [r.status_code for r in responses] == [400, 400]
    assert _token("doctor-alice", PASSWORD, NAT).status_code == 200


def test_the_token_throttle_counts_per_username_and_address(
    doctor: AbstractBaseUser, radtech: AbstractBaseUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(UsernameAndClientRateThrottle, "THROTTLE_RATES", {"auth-token": "2/min"})

    allowed = [_token("doctor-alice", PASSWORD, NAT) for _ in range(2)]
    throttled = _token("doctor-alice", PASSWORD, NAT)
    colleague = _token("radtech-bob", PASSWORD, NAT)
    elsewhere = _token("doctor-alice", PASSWORD, ELSEWHERE)

    assert [r.status_code for r in allowed] == [200, 200]
    assert throttled.status_code == 429
    assert throttled.json()["code"] == "throttled"
    assert colleague.status_code == 200
    assert elsewhere.status_code == 200


def test_one_address_trying_many_accounts_is_throttled_never_locked_out(
    doctor: AbstractBaseUser, radtech: AbstractBaseUser, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Password spraying: one wrong password per account stays under the per-account lockout
    # (3 here) and the per-username throttle; the per-address throttle stops the sweep.
    settings.RADIOLOGY_TOKEN_RATE_PER_ADDRESS = "4/min"
    clock = [1_800_000_000.0]
    monkeypatch.setattr(SimpleRateThrottle, "timer", lambda self: clock[0])
    accounts = ["doctor-alice", "radtech-bob", "admin-dana", "nobody-here"]

    sprayed = [_token(username, WRONG, NAT) for username in accounts]
    throttled = _token("nurse-charlie", WRONG, NAT)
    throttled_right_password = _token("radtech-bob", PASSWORD, NAT)
    elsewhere = _token("doctor-alice", PASSWORD, ELSEWHERE)
    clock[0] += 61  # a minute later the address may try again: nothing was locked
    after_a_minute = _token("doctor-alice", PASSWORD, NAT)

    assert [(r.status_code, r.json()) for r in sprayed] == [(400, INVALID_CREDENTIALS)] * 4
    assert [(r.status_code, r.json(), r["Retry-After"]) for r in (throttled, throttled_right_password)] == [
        (429, {"detail": "Request was throttled. Expected available in 60 seconds.", "code": "throttled"}, "60")
    ] * 2
    assert (elsewhere.status_code, elsewhere.json()) == (200, {"token": Token.objects.get(user=doctor).key})
    assert (after_a_minute.status_code, after_a_minute.json()) == (200, {"token": Token.objects.get(user=doctor).key})
    assert not Token.objects.filter(user=radtech).exists()
    # The throttled requests never reached a password check: the trail holds the four failures.
    assert [event_row(event) for event in AuditEvent.objects.order_by("id")] == [
        _failed_login_event(username=username, channel="api", route="api-token", status_code=400, address=NAT)
        for username in accounts
    ]
    # One failure per account from NAT: under axes' limit, so nobody is locked out.
    assert sorted(AccessAttempt.objects.values_list("username", "ip_address", "failures_since_start")) == sorted(
        (username, NAT, 1) for username in accounts if username != "doctor-alice"
    )
