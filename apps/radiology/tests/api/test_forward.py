"""Store and forward in the REST API: each study's `deliveries` and `source_clinic`, and sending a study.

  GET  /api/v1/radiology/studies/ and /{id}/     each study with its deliveries ("sending 1 of 2", ...)
  POST /api/v1/radiology/studies/{id}/forward/   {"destination": ...} (or nothing with one destination):
                                                 202 and the delivery; queued, or a failed one retried
Rows are made directly (the API never reads a file); the clock is frozen where a time is shown.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.test import Client
from django.utils import timezone

from apps.radiology.access.principals import ReadScope, ScopePrincipal
from apps.radiology.api import views as api_views
from apps.radiology.models import ForwardTask, RadiologyStudy, StudyDelivery
from apps.radiology.outbox import progress
from apps.radiology.outbox.record import request_forwarding
from apps.radiology.tests.api_fixtures import (
    NOT_AUTHENTICATED,
    PERMISSION_DENIED,
    STUDIES,
    make_study_with_images,
    method_not_allowed,
    study_body,
    study_url,
    token_client,
)
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.trust_helpers import event_row, expected_event, only_event

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 2, 1, 12, 0, tzinfo=dt.UTC)
UNKNOWN_DESTINATION = {
    "detail": "No forwarding destination of that name is configured on this server.",
    "code": "unknown_destination",
}
NAME_THE_DESTINATION = {
    "detail": "Name the destination: this server has none or several.",
    "code": "unknown_destination",
}


def configure(settings: Any, destinations: str) -> None:
    settings.RADIOLOGY_FORWARD_DESTINATIONS = destinations
    settings.RADIOLOGY_FORWARD_TOKENS = {}


def forward(client: Client, study: RadiologyStudy, body: dict[str, Any] | None = None) -> Any:
    if body is None:
        return client.post(study_url(study, "forward/"))
    return client.post(study_url(study, "forward/"), body, content_type="application/json")


def tasks(study: RadiologyStudy) -> list[tuple[str, str]]:
    return list(
        ForwardTask.objects.filter(study=study).order_by("destination", "image_id").values_list("destination", "state")
    )


def delivery(
    destination: str,
    state: str,
    sent: int,
    total: int,
    summary: str,
    *,
    delivered_at: str | None = None,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "destination": destination,
        "state": state,
        "images_sent": sent,
        "images_total": total,
        "summary": summary,
        "delivered_at": delivered_at,
        "error": error,
    }


def study_json(study: RadiologyStudy, deliveries: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole body of a study: its row's values (as test_views reads them), and the deliveries the test expects."""
    return {**study_body(study), "deliveries": deliveries}


# --- deliveries and source_clinic in the study bodies -----------------------------------------------


@pytest.fixture
def studies_in_every_state(
    settings: Any, make_order: MakeOrder, monkeypatch: pytest.MonkeyPatch, radtech: AbstractBaseUser
) -> dict[str, RadiologyStudy]:
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    configure(settings, "regional=all@https://regional.example.org,teaching=on_request@http://teaching")
    untouched = make_study_with_images(make_order(), images=1)
    sending = make_study_with_images(make_order(), images=2)
    delivered = make_study_with_images(make_order(), images=1)
    failed = make_study_with_images(make_order(), images=1)
    RadiologyStudy.objects.filter(pk=failed.pk).update(source_clinic="Ikeja Clinic")  # as a regional server has it
    for study in (sending, delivered, failed):
        request_forwarding(study=study, destination="regional", requested_by=None)
    request_forwarding(study=sending, destination="teaching", requested_by=radtech)
    regional_first, _regional_second = ForwardTask.objects.filter(study=sending, destination="regional").order_by("id")
    sent = [regional_first, *ForwardTask.objects.filter(study=sending, destination="teaching")]
    for task in [*sent, *ForwardTask.objects.filter(study=delivered)]:
        progress.mark_sent(task, wire_bytes_added=1)
    done = StudyDelivery.objects.get(study=delivered)
    assert progress.apply_verification(done, confirmed=progress.sent_checksums(done))
    progress.mark_failed(
        ForwardTask.objects.get(study=failed),
        error_code="image_conflict",
        error_detail="An image with this UID is already stored with different content.",
        wire_bytes_added=0,
    )
    return {"untouched": untouched, "sending": sending, "delivered": delivered, "failed": failed}


SENDING_DELIVERIES = [
    delivery("regional", "sending", 1, 2, "sending 1 of 2"),
    delivery("teaching", "sending", 2, 2, "confirming 2 of 2"),
]
DELIVERED_DELIVERIES = [delivery("regional", "delivered", 1, 1, "delivered", delivered_at="2026-02-01T13:00:00+01:00")]
FAILED_DELIVERIES = [
    delivery(
        "regional",
        "failed",
        0,
        1,
        "failed: An image with this UID is already stored with different content.",
        error={
            "code": "image_conflict",
            "detail": "An image with this UID is already stored with different content.",
        },
    )
]


def test_the_list_shows_each_studys_deliveries_and_clinic(
    studies_in_every_state: dict[str, RadiologyStudy], doctor: AbstractBaseUser
) -> None:
    studies = studies_in_every_state

    response = token_client(doctor).get(STUDIES)

    assert response.status_code == 200
    assert response.json() == [  # newest first (same time: the last made first)
        study_json(studies["failed"], FAILED_DELIVERIES),
        study_json(studies["delivered"], DELIVERED_DELIVERIES),
        study_json(studies["sending"], SENDING_DELIVERIES),
        study_json(studies["untouched"], []),
    ]
    assert response.json()[0]["source_clinic"] == "Ikeja Clinic"
    assert response.json()[1]["source_clinic"] == ""


@pytest.mark.parametrize(
    ("name", "deliveries"),
    [
        ("untouched", []),
        ("sending", SENDING_DELIVERIES),
        ("delivered", DELIVERED_DELIVERIES),
        ("failed", FAILED_DELIVERIES),
    ],
)
def test_the_detail_shows_the_studys_deliveries(
    studies_in_every_state: dict[str, RadiologyStudy],
    doctor: AbstractBaseUser,
    name: str,
    deliveries: list[dict[str, Any]],
) -> None:
    study = studies_in_every_state[name]

    response = token_client(doctor).get(study_url(study))

    assert (response.status_code, response.json()) == (200, study_json(study, deliveries))


# --- POST /studies/{id}/forward/ -------------------------------------------------------------------------


@pytest.fixture
def study(make_order: MakeOrder) -> RadiologyStudy:
    return make_study_with_images(make_order(), images=2)


def test_a_tech_sends_a_study_to_a_named_destination(
    settings: Any, study: RadiologyStudy, radtech: AbstractBaseUser
) -> None:
    configure(settings, "regional=on_request@https://regional.example.org,teaching=on_request@http://teaching")

    response = forward(token_client(radtech), study, {"destination": "teaching"})

    assert (response.status_code, response.json()) == (202, delivery("teaching", "sending", 0, 2, "sending 0 of 2"))
    assert tasks(study) == [("teaching", "pending"), ("teaching", "pending")]
    assert StudyDelivery.objects.get().requested_by == radtech
    assert event_row(only_event()) == expected_event(
        user=radtech.pk,
        username=radtech.username,
        role="radiology_tech",
        channel="api",
        action="write",
        route="study-forward",
        method="POST",
        study_id=study.pk,
        status_code=202,
        outcome="allowed",
    )


def test_a_doctor_sends_to_the_only_destination_without_naming_it(
    settings: Any, study: RadiologyStudy, doctor: AbstractBaseUser
) -> None:
    configure(settings, "regional=on_request@https://regional.example.org")
    client = token_client(doctor)

    empty_body = forward(client, study)
    empty_json = forward(client, study, {})

    assert (empty_body.status_code, empty_body.json()) == (202, delivery("regional", "sending", 0, 2, "sending 0 of 2"))
    assert (empty_json.status_code, empty_json.json()) == (202, delivery("regional", "sending", 0, 2, "sending 0 of 2"))
    assert tasks(study) == [("regional", "pending"), ("regional", "pending")]  # asked twice, queued once
    assert StudyDelivery.objects.get().requested_by == doctor


def test_a_failed_study_is_retried(settings: Any, study: RadiologyStudy, radtech: AbstractBaseUser) -> None:
    configure(settings, "regional=all@https://regional.example.org")
    request_forwarding(study=study, destination="regional", requested_by=None)
    sent, refused = ForwardTask.objects.filter(study=study).order_by("id")
    progress.mark_sent(sent, wire_bytes_added=1)
    progress.mark_failed(refused, error_code="forbidden", error_detail="Refused by the far side.", wire_bytes_added=0)

    response = forward(token_client(radtech), study, {"destination": "regional"})

    assert (response.status_code, response.json()) == (202, delivery("regional", "sending", 1, 2, "sending 1 of 2"))
    assert tasks(study) == [("regional", "sent"), ("regional", "pending")]
    refused.refresh_from_db()
    assert (refused.state, refused.attempts) == ("pending", 0)


@pytest.mark.parametrize(
    ("destinations", "body", "answer"),
    [
        ("regional=on_request@http://r", {"destination": "elsewhere"}, UNKNOWN_DESTINATION),
        ("", {"destination": "regional"}, UNKNOWN_DESTINATION),
        ("", None, NAME_THE_DESTINATION),
        ("regional=on_request@http://r,teaching=all@http://t", None, NAME_THE_DESTINATION),
    ],
)
def test_an_unknown_destination_is_400_and_queues_nothing(
    settings: Any,
    study: RadiologyStudy,
    radtech: AbstractBaseUser,
    destinations: str,
    body: dict[str, Any] | None,
    answer: dict[str, str],
) -> None:
    configure(settings, destinations)

    response = forward(token_client(radtech), study, body)

    assert (response.status_code, response.json()) == (400, answer)
    assert ForwardTask.objects.count() == 0
    assert StudyDelivery.objects.count() == 0
    assert event_row(only_event()) == expected_event(
        user=radtech.pk,
        username=radtech.username,
        role="radiology_tech",
        channel="api",
        action="write",
        route="study-forward",
        method="POST",
        study_id=study.pk,
        status_code=400,
        outcome="rejected",
    )


def test_a_destination_that_is_not_a_name_is_a_validation_error(
    settings: Any, study: RadiologyStudy, radtech: AbstractBaseUser
) -> None:
    configure(settings, "regional=on_request@http://r")

    response = forward(token_client(radtech), study, {"destination": ""})

    assert response.status_code == 400
    assert response.json() == {
        "detail": "destination: This field may not be blank.",
        "code": "blank",
        "errors": {"destination": [{"message": "This field may not be blank.", "code": "blank"}]},
    }
    assert ForwardTask.objects.count() == 0


def test_a_nurse_is_refused_and_anonymous_must_sign_in(
    settings: Any, study: RadiologyStudy, nurse: AbstractBaseUser
) -> None:
    configure(settings, "regional=on_request@http://r")

    refused = forward(token_client(nurse), study, {"destination": "regional"})
    anonymous = forward(Client(), study, {"destination": "regional"})

    assert (refused.status_code, refused.json()) == (403, PERMISSION_DENIED)
    assert (anonymous.status_code, anonymous.json()) == (401, NOT_AUTHENTICATED)
    assert ForwardTask.objects.count() == 0
    assert StudyDelivery.objects.count() == 0


def test_a_study_the_caller_may_not_see_is_404(
    settings: Any,
    study: RadiologyStudy,
    make_order: MakeOrder,
    doctor: AbstractBaseUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(settings, "regional=on_request@http://r")
    other = make_study_with_images(make_order(), images=1)
    # The door of a caller who may read one study only (as a viewer token's holder).
    monkeypatch.setattr(
        api_views, "principal_of", lambda request: ScopePrincipal(ReadScope.one_study(study_id=other.pk))
    )
    client = token_client(doctor)

    hidden = forward(client, study, {"destination": "regional"})
    missing = client.post(f"{STUDIES}999999/forward/", {"destination": "regional"}, content_type="application/json")

    not_found = {"detail": "No RadiologyStudy matches the given query.", "code": "not_found"}
    assert (hidden.status_code, hidden.json()) == (404, not_found)
    assert (missing.status_code, missing.json()) == (404, not_found)
    assert ForwardTask.objects.count() == 0
    assert StudyDelivery.objects.count() == 0
    # The one it may see can be sent.
    assert forward(client, other, {"destination": "regional"}).status_code == 202


def test_only_post(settings: Any, study: RadiologyStudy, doctor: AbstractBaseUser) -> None:
    configure(settings, "regional=on_request@http://r")

    response = token_client(doctor).get(study_url(study, "forward/"))

    assert (response.status_code, response.json()) == (405, method_not_allowed("GET"))
    assert ForwardTask.objects.count() == 0
