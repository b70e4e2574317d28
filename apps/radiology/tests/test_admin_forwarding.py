"""Admin on a clinic that forwards: Study deliveries (with a tech's "send again") and Forward tasks.

Both lists are for who may see radiology data, through the read door (only the deliveries and
tasks of studies the user may read). A tech (or superuser) may send a delivery again, which
queues what is not on its way and retries what failed (outbox/record.request_forwarding); a
doctor sees the lists but is not offered the action, and posting it anyway changes nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from apps.radiology import admin as radiology_admin
from apps.radiology.access.permissions import DOCTOR_GROUP, RADIOLOGY_TECH_GROUP
from apps.radiology.access.principals import ReadScope, ScopePrincipal
from apps.radiology.models import ForwardTask, RadiologyStudy, StudyDelivery
from apps.radiology.outbox import progress
from apps.radiology.outbox.record import request_forwarding
from apps.radiology.tests.api_fixtures import make_study_with_images
from apps.radiology.tests.conftest import MakeOrder, make_user

pytestmark = pytest.mark.django_db

DELIVERIES = reverse("admin:radiology_studydelivery_changelist")
TASKS = reverse("admin:radiology_forwardtask_changelist")
VIEW_PERMISSIONS = ("view_studydelivery", "view_forwardtask")


def staff(username: str, *groups: str) -> Client:
    """A staff member in `groups` with the view permissions a deployment grants for these lists."""
    user = make_user(username, groups=groups)
    user.is_staff = True
    user.save()
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="radiology", codename__in=VIEW_PERMISSIONS)
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def tech_client(db: None) -> Client:
    return staff("tech-staff", RADIOLOGY_TECH_GROUP)


@pytest.fixture
def doctor_client(db: None) -> Client:
    return staff("doctor-staff", DOCTOR_GROUP)


@pytest.fixture
def deliveries(settings: Any, make_order: MakeOrder) -> dict[str, StudyDelivery]:
    """regional: one study failed (1 of 2 sent), one sending (0 of 1)."""
    settings.RADIOLOGY_FORWARD_DESTINATIONS = "regional=all@https://regional.example.org"
    settings.RADIOLOGY_FORWARD_TOKENS = {}
    failed: RadiologyStudy = make_study_with_images(make_order(), images=2)
    sending: RadiologyStudy = make_study_with_images(make_order(), images=1)
    for study in (failed, sending):
        request_forwarding(study=study, destination="regional", requested_by=None)
    sent, refused = ForwardTask.objects.filter(study=failed).order_by("id")
    progress.mark_sent(sent, wire_bytes_added=1)
    progress.mark_retry(refused, error_code="timeout", error_detail="slow", wire_bytes_added=0, delay_seconds=0)
    progress.mark_failed(refused, error_code="not_authenticated", error_detail="Token refused.", wire_bytes_added=0)
    return {
        "failed": StudyDelivery.objects.get(study=failed),
        "sending": StudyDelivery.objects.get(study=sending),
    }


def listed(response: Any) -> list[int]:
    assert response.status_code == 200
    return sorted(row.pk for row in response.context["cl"].result_list)


def offered_actions(response: Any) -> list[str]:
    form = response.context["action_form"]
    if form is None:  # no action offered at all
        return []
    return [name for name, _label in form.fields["action"].choices if name]


def send_again(client: Client, *selected: StudyDelivery) -> Any:
    return client.post(DELIVERIES, {"action": "send_again", "_selected_action": [d.pk for d in selected]})


def test_a_tech_sees_each_delivery_with_its_progress(tech_client: Client, deliveries: dict[str, StudyDelivery]) -> None:
    response = tech_client.get(DELIVERIES)
    body = response.content.decode()

    assert listed(response) == sorted(d.pk for d in deliveries.values())
    assert "failed: Token refused." in body
    assert "sending 0 of 1" in body
    assert offered_actions(response) == ["send_again"]


def test_a_tech_sends_a_failed_delivery_again(tech_client: Client, deliveries: dict[str, StudyDelivery]) -> None:
    failed, sending = deliveries["failed"], deliveries["sending"]

    response = send_again(tech_client, failed, sending)

    assert (response.status_code, response["Location"]) == (302, DELIVERIES)
    assert [str(message) for message in get_messages(response.wsgi_request)] == ["Queued 2 deliveries again."]
    failed.refresh_from_db()
    assert (failed.state, failed.images_sent, failed.images_total, failed.error_code, failed.error_detail) == (
        "sending",
        1,
        2,
        "",
        "",
    )
    assert failed.requested_by is not None
    assert failed.requested_by.username == "tech-staff"
    assert sorted(ForwardTask.objects.filter(study=failed.study).values_list("state", "attempts")) == [
        ("pending", 0),
        ("sent", 0),
    ]
    sending.refresh_from_db()
    assert (sending.state, sending.images_sent, sending.images_total) == ("sending", 0, 1)
    assert ForwardTask.objects.count() == 3  # nothing queued twice


def test_a_doctor_sees_the_list_but_cannot_send_again(
    doctor_client: Client, deliveries: dict[str, StudyDelivery]
) -> None:
    failed = deliveries["failed"]

    response = doctor_client.get(DELIVERIES)
    forced = send_again(doctor_client, failed)

    assert listed(response) == sorted(d.pk for d in deliveries.values())
    assert offered_actions(response) == []
    assert forced.status_code == 200  # the list again: there is no such action for a doctor
    failed.refresh_from_db()
    assert (failed.state, failed.error_code, failed.requested_by) == ("failed", "not_authenticated", None)
    assert sorted(ForwardTask.objects.filter(study=failed.study).values_list("state", flat=True)) == ["failed", "sent"]


def test_deliveries_are_read_only_even_for_a_tech(tech_client: Client, deliveries: dict[str, StudyDelivery]) -> None:
    failed = deliveries["failed"]
    change = reverse("admin:radiology_studydelivery_change", args=[failed.pk])

    page = tech_client.get(change)
    posted = tech_client.post(change, {"state": "delivered", "images_sent": 2})
    added = tech_client.get(reverse("admin:radiology_studydelivery_add"))

    assert page.status_code == 200
    assert posted.status_code == 403
    assert added.status_code == 403
    failed.refresh_from_db()
    assert (failed.state, failed.images_sent) == ("failed", 1)


def test_the_tasks_list_shows_each_images_attempts_and_error(
    tech_client: Client, doctor_client: Client, deliveries: dict[str, StudyDelivery]
) -> None:
    tech_view = tech_client.get(TASKS)
    doctor_view = doctor_client.get(TASKS)

    every_task = sorted(ForwardTask.objects.values_list("pk", flat=True))
    assert listed(tech_view) == every_task
    assert listed(doctor_view) == every_task
    assert "not_authenticated" in tech_view.content.decode()


def test_the_lists_show_only_the_studies_through_the_read_door(
    tech_client: Client, deliveries: dict[str, StudyDelivery], monkeypatch: pytest.MonkeyPatch
) -> None:
    visible = deliveries["sending"]
    monkeypatch.setattr(
        radiology_admin,
        "principal_of_user",
        lambda user: ScopePrincipal(ReadScope.one_study(study_id=visible.study_id)),
    )

    delivery_rows = tech_client.get(DELIVERIES)
    task_rows = tech_client.get(TASKS)
    hidden = send_again(tech_client, deliveries["failed"])

    assert listed(delivery_rows) == [visible.pk]
    assert listed(task_rows) == sorted(
        ForwardTask.objects.filter(study_id=visible.study_id).values_list("pk", flat=True)
    )
    assert "Token refused." not in delivery_rows.content.decode()
    # A delivery outside the door cannot be selected into the action either.
    assert (hidden.status_code, hidden["Location"]) == (302, DELIVERIES)
    assert [str(message) for message in get_messages(hidden.wsgi_request)] == ["Queued 0 deliveries again."]
    deliveries["failed"].refresh_from_db()
    assert deliveries["failed"].state == "failed"


def test_staff_without_a_radiology_role_see_neither_list(deliveries: dict[str, StudyDelivery]) -> None:
    clerk = staff("clerk-frank")

    assert clerk.get(DELIVERIES).status_code == 403
    assert clerk.get(TASKS).status_code == 403
    assert send_again(clerk, deliveries["failed"]).status_code == 403
    deliveries["failed"].refresh_from_db()
    assert deliveries["failed"].state == "failed"
