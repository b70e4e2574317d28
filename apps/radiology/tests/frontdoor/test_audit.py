"""The front door's reads of clinical data are in the audit trail, as the API's and admin's are.

Every page under `/radiology/` leaves one AuditEvent (channel `web`): who, role, route, the
study an open names, the outcome. Never the search: a patient's name searched for is in no
column. Someone not signed in, sent to sign in, is a denial; a failed sign-in is recorded
with the username tried, on channel `web`.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.test import Client

from apps.radiology.models import AuditEvent, RadiologyStudy
from apps.radiology.tests.conftest import PASSWORD, MakeOrder
from apps.radiology.tests.frontdoor.helpers import SEARCH, SIGN_IN, STUDIES, make_listed_study, signed_in
from apps.radiology.tests.trust_helpers import column_values, event_row, expected_event

pytestmark = pytest.mark.django_db


@pytest.fixture
def study(make_order: MakeOrder) -> RadiologyStudy:
    return make_listed_study(make_order, first_name="Zanele", last_name="Quaxley")


def _web_event(user: AbstractBaseUser | None, role: str, **fields: Any) -> dict[str, Any]:
    return expected_event(
        user=user.pk if user is not None else None,
        username=user.get_username() if user is not None else "",
        role=role,
        channel="web",
        **fields,
    )


def test_reads_and_opens_are_audited_without_the_search(
    study: RadiologyStudy, doctor: AbstractBaseUser, settings: Any
) -> None:
    settings.OHIF_VIEWER_URL = "http://ohif.example:3000/viewer"
    client = signed_in(doctor)

    client.post(SEARCH, {"patient": "Quaxley", "date_from": "", "date_to": "", "modality": ""})
    client.get(STUDIES + "?page=1")
    client.post(f"/radiology/studies/{study.pk}/ohif/")

    events = list(AuditEvent.objects.order_by("id"))
    common = {"user": doctor, "role": "doctor", "outcome": "allowed"}
    assert [event_row(event) for event in events] == [
        _web_event(**common, action="write", route="search", method="POST", status_code=302),
        _web_event(**common, action="read", route="studies", method="GET", status_code=200, query_keys="page"),
        _web_event(**common, action="write", route="open-ohif", method="POST", status_code=302, study_id=study.pk),
    ]
    assert all("Quaxley" not in value and "quaxley" not in value for event in events for value in column_values(event))


def test_refusals_are_audited_as_denials(study: RadiologyStudy, nurse: AbstractBaseUser) -> None:
    Client().get(STUDIES)
    signed_in(nurse).get(STUDIES)

    assert [event_row(event) for event in AuditEvent.objects.order_by("id")] == [
        _web_event(None, "anonymous", action="read", route="studies", method="GET", status_code=302, outcome="denied"),
        _web_event(nurse, "other", action="read", route="studies", method="GET", status_code=403, outcome="denied"),
    ]


def test_a_failed_sign_in_is_audited_on_the_web_channel(doctor: AbstractBaseUser) -> None:
    Client().post(SIGN_IN, {"username": "doctor-alice", "password": "wrong-" + PASSWORD})
    Client().get("/")  # the start page and the sign-in form show no clinical data: not audited
    Client().get(SIGN_IN)

    assert [event_row(event) for event in AuditEvent.objects.order_by("id")] == [
        expected_event(
            username="doctor-alice",
            role="anonymous",
            channel="web",
            action="login",
            route="sign-in",
            method="POST",
            status_code=200,
            outcome="denied",
        )
    ]
