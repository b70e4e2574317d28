"""The front door on a clinic that forwards: a "Sent to" column, Send and Retry buttons.

The column is there only when RADIOLOGY_FORWARD_DESTINATIONS names a destination. Each study
shows its delivery to each destination ("regional: sending 1 of 2"), a Retry button when one
failed, and a "Send to <name>" button for each destination it has no delivery to. Pressing one
queues the study (outbox/record.send_study) and comes back to the list's page.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.test import Client

from apps.radiology.access.principals import ReadScope, ScopePrincipal
from apps.radiology.frontdoor import views as frontdoor_views
from apps.radiology.frontdoor.pages import NO_RADIOLOGY_ROLE
from apps.radiology.frontdoor.views import NO_SUCH_STUDY
from apps.radiology.models import AuditEvent, ForwardTask, RadiologyStudy, StudyDelivery
from apps.radiology.outbox import progress
from apps.radiology.outbox.record import request_forwarding
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.frontdoor.helpers import STUDIES, make_listed_study, signed_in
from apps.radiology.tests.trust_helpers import event_row, expected_event

pytestmark = pytest.mark.django_db

DESTINATIONS = "regional=all@https://regional.example.org,teaching=on_request@http://teaching"
CSRF_VALUE = re.compile(r'name="csrfmiddlewaretoken" value="[^"]+"')


def configure(settings: Any, destinations: str) -> None:
    settings.RADIOLOGY_FORWARD_DESTINATIONS = destinations
    settings.RADIOLOGY_FORWARD_TOKENS = {}


def forward_url(study: RadiologyStudy) -> str:
    return f"/radiology/studies/{study.pk}/forward/"


def sent_to_cell(body: str, study: RadiologyStudy) -> str:
    """The study's "Sent to" cell, its lines stripped, CSRF token values left out."""
    row = body.split(f'<tr data-study="{study.pk}">', 1)[1].split("</tr>", 1)[0]
    cell = row.split('<td data-label="Sent to" class="deliveries">', 1)[1].split("</td>", 1)[0]
    cell = CSRF_VALUE.sub('name="csrfmiddlewaretoken" value="…"', cell)
    return "".join(line.strip() for line in cell.splitlines())


def button(study: RadiologyStudy, destination: str, label: str) -> str:
    return (
        f'<form method="post" action="/radiology/studies/{study.pk}/forward/">'
        '<input type="hidden" name="csrfmiddlewaretoken" value="…">'
        f'<input type="hidden" name="destination" value="{destination}">'
        '<input type="hidden" name="page" value="1">'
        f'<button class="secondary" type="submit">{label}</button></form>'
    )


def shown(destination: str, state: str, text: str, extra: str = "") -> str:
    return f'<div class="delivery {state}" data-destination="{destination}">{destination}: {text}{extra}</div>'


@pytest.fixture
def studies(settings: Any, make_order: MakeOrder) -> dict[str, RadiologyStudy]:
    """One study per state of its delivery to regional (and none to teaching), one never sent."""
    configure(settings, DESTINATIONS)
    made = {
        name: make_listed_study(make_order, last_name=name.capitalize(), images=2)
        for name in ("unsent", "sending", "confirming", "delivered", "failed")
    }
    for name in ("sending", "confirming", "delivered", "failed"):
        request_forwarding(study=made[name], destination="regional", requested_by=None)
    for name, sent in (("sending", 1), ("confirming", 2), ("delivered", 2)):
        for task in list(ForwardTask.objects.filter(study=made[name]).order_by("id"))[:sent]:
            progress.mark_sent(task, wire_bytes_added=1)
    delivered = StudyDelivery.objects.get(study=made["delivered"])
    assert progress.apply_verification(delivered, confirmed=progress.sent_checksums(delivered))
    failing = ForwardTask.objects.filter(study=made["failed"]).order_by("id").first()
    progress.mark_failed(
        failing,  # type: ignore[arg-type]
        error_code="image_conflict",
        error_detail="Stored there with <other> bytes.",
        wire_bytes_added=0,
    )
    return made


def test_each_study_shows_where_it_was_sent_with_send_and_retry_buttons(
    studies: dict[str, RadiologyStudy], doctor: AbstractBaseUser
) -> None:
    response = signed_in(doctor).get(STUDIES)
    body = response.content.decode()

    assert response.status_code == 200
    assert "<th>Images</th><th>Sent to</th><th>Open</th>" in body
    send_teaching = {name: button(study, "teaching", "Send to teaching") for name, study in studies.items()}
    assert {name: sent_to_cell(body, study) for name, study in studies.items()} == {
        "unsent": button(studies["unsent"], "regional", "Send to regional") + send_teaching["unsent"],
        "sending": shown("regional", "sending", "sending 1 of 2") + send_teaching["sending"],
        "confirming": shown("regional", "sending", "confirming 2 of 2") + send_teaching["confirming"],
        "delivered": shown("regional", "delivered", "delivered") + send_teaching["delivered"],
        "failed": shown(
            "regional",
            "failed",
            "failed: Stored there with &lt;other&gt; bytes.",
            " " + button(studies["failed"], "regional", "Retry"),
        )
        + send_teaching["failed"],
    }


def test_no_column_on_a_server_that_forwards_nothing(
    settings: Any, studies: dict[str, RadiologyStudy], radtech: AbstractBaseUser
) -> None:
    configure(settings, "")

    body = signed_in(radtech).get(STUDIES).content.decode()

    assert "<th>Images</th><th>Open</th>" in body
    assert "Sent to" not in body
    assert 'class="deliveries"' not in body
    assert "/forward/" not in body
    assert "sending 1 of 2" not in body


def test_send_queues_the_study_and_comes_back_to_the_page(
    studies: dict[str, RadiologyStudy], doctor: AbstractBaseUser
) -> None:
    study = studies["unsent"]
    client = signed_in(doctor)

    response = client.post(forward_url(study), {"destination": "teaching", "page": "2"})

    assert (response.status_code, response["Location"]) == (302, "/radiology/studies/?page=2")
    assert list(ForwardTask.objects.filter(study=study).values_list("destination", "state")) == [
        ("teaching", "pending"),
        ("teaching", "pending"),
    ]
    delivery = StudyDelivery.objects.get(study=study)
    assert (delivery.destination, delivery.state, delivery.images_total, delivery.requested_by) == (
        "teaching",
        "sending",
        2,
        doctor,
    )
    body = client.get(STUDIES).content.decode()
    assert sent_to_cell(body, study) == shown("teaching", "sending", "sending 0 of 2") + button(
        study, "regional", "Send to regional"
    )
    assert [event_row(event) for event in AuditEvent.objects.filter(route="forward")] == [
        expected_event(
            user=doctor.pk,
            username=doctor.get_username(),
            role="doctor",
            channel="web",
            action="write",
            route="forward",
            method="POST",
            study_id=study.pk,
            status_code=302,
            outcome="allowed",
        )
    ]


@pytest.mark.parametrize("page", ["", "x", "-1", "2;evil"])
def test_a_page_that_is_not_a_number_comes_back_to_the_list(
    studies: dict[str, RadiologyStudy], radtech: AbstractBaseUser, page: str
) -> None:
    response = signed_in(radtech).post(forward_url(studies["unsent"]), {"destination": "regional", "page": page})

    assert (response.status_code, response["Location"]) == (302, "/radiology/studies/")
    assert StudyDelivery.objects.get(study=studies["unsent"]).destination == "regional"


def test_retry_queues_a_failed_study_again(studies: dict[str, RadiologyStudy], radtech: AbstractBaseUser) -> None:
    study = studies["failed"]
    client = signed_in(radtech)

    response = client.post(forward_url(study), {"destination": "regional", "page": "1"})

    assert (response.status_code, response["Location"]) == (302, "/radiology/studies/?page=1")
    delivery = StudyDelivery.objects.get(study=study)
    assert (delivery.state, delivery.error_code, delivery.error_detail, delivery.requested_by) == (
        "sending",
        "",
        "",
        radtech,
    )
    assert sorted(ForwardTask.objects.filter(study=study).values_list("state", "attempts")) == [
        ("pending", 0),
        ("pending", 0),
    ]
    assert sent_to_cell(client.get(STUDIES).content.decode(), study) == shown(
        "regional", "sending", "sending 0 of 2"
    ) + button(study, "teaching", "Send to teaching")


def test_an_unknown_destination_says_so(studies: dict[str, RadiologyStudy], doctor: AbstractBaseUser) -> None:
    response = signed_in(doctor).post(forward_url(studies["unsent"]), {"destination": "elsewhere"})
    unnamed = signed_in(doctor).post(forward_url(studies["unsent"]), {"page": "1"})  # two destinations

    assert response.status_code == 400
    assert (
        '<p id="refused">No forwarding destination of that name is configured on this server.</p>'
        in response.content.decode()
    )
    assert unnamed.status_code == 400
    assert '<p id="refused">Name the destination: this server has none or several.</p>' in unnamed.content.decode()
    assert not StudyDelivery.objects.filter(study=studies["unsent"]).exists()


def test_the_only_destination_needs_no_name(settings: Any, make_order: MakeOrder, doctor: AbstractBaseUser) -> None:
    configure(settings, "regional=on_request@https://regional.example.org")
    study = make_listed_study(make_order, images=1)

    response = signed_in(doctor).post(forward_url(study), {})

    assert (response.status_code, response["Location"]) == (302, "/radiology/studies/")
    assert StudyDelivery.objects.get(study=study).destination == "regional"


def test_a_study_the_user_may_not_see_is_no_such_study(
    studies: dict[str, RadiologyStudy], doctor: AbstractBaseUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    visible = studies["unsent"]
    monkeypatch.setattr(
        frontdoor_views, "principal_of", lambda request: ScopePrincipal(ReadScope.one_study(study_id=visible.pk))
    )
    client = signed_in(doctor)
    before = StudyDelivery.objects.count()

    hidden = client.post(forward_url(studies["sending"]), {"destination": "teaching"})
    missing = client.post("/radiology/studies/999999/forward/", {"destination": "teaching"})

    for response in (hidden, missing):
        assert response.status_code == 404
        assert f'<p id="refused">{NO_SUCH_STUDY}</p>' in response.content.decode()
    assert StudyDelivery.objects.count() == before


def test_a_nurse_and_anonymous_cannot_send(studies: dict[str, RadiologyStudy], nurse: AbstractBaseUser) -> None:
    study = studies["unsent"]

    refused = signed_in(nurse).post(forward_url(study), {"destination": "regional"})
    anonymous = Client().post(forward_url(study), {"destination": "regional"})

    assert refused.status_code == 403
    assert f'<p id="refused">{NO_RADIOLOGY_ROLE}</p>' in refused.content.decode()
    assert (anonymous.status_code, anonymous["Location"]) == (302, "/sign-in/?next=/radiology/studies/")
    assert not StudyDelivery.objects.filter(study=study).exists()


def test_only_post(studies: dict[str, RadiologyStudy], doctor: AbstractBaseUser) -> None:
    response = signed_in(doctor).get(forward_url(studies["unsent"]))

    assert response.status_code == 405
    assert not StudyDelivery.objects.filter(study=studies["unsent"]).exists()
