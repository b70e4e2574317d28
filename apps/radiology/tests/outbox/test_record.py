"""Recording what is to be forwarded: by ingest in the image's own transaction, and on request.

Real DICOM files (pydicom's CT sample, relabelled into each test's study and, where a rule
needs it, given another Modality) go through the real ways in: ingest_images (one batch),
STOW-RS, the upload API and an assignment from the unmatched inbox. Each test asserts the
ForwardTask and StudyDelivery rows exactly.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.radiology.errors import UnknownForwardDestination
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.ingest import commit as commit_module
from apps.radiology.ingest import unmatched
from apps.radiology.ingest.pipeline import Arrival, HeldResult, IngestItem, IngestResult, ingest_images
from apps.radiology.models import (
    ForwardTask,
    RadiologyImage,
    RadiologyOrder,
    RadiologyStudy,
    StudyDelivery,
    UnmatchedImage,
)
from apps.radiology.outbox import progress
from apps.radiology.outbox import record as record_module
from apps.radiology.outbox.record import send_study
from apps.radiology.tests.api_fixtures import token_client
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.factories import relabelled, row_counts, stored_keys
from apps.radiology.tests.upload_helpers import DeviceFile, client_for, metadata, post_upload, put_whole

pytestmark = pytest.mark.django_db

STOW = "/api/v1/radiology/dicomweb/studies"
BOUNDARY = "forward-test-boundary"


def configure(settings: Any, destinations: str) -> None:
    settings.RADIOLOGY_FORWARD_DESTINATIONS = destinations
    settings.RADIOLOGY_FORWARD_TOKENS = {}


def dicom(study_uid: str, series_uid: str, number: int, modality: str = "CT") -> bytes:
    """A real DICOM file (pydicom's CT_small.dcm) in this study and series, of this modality."""
    return relabelled(
        "CT_small.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=number, Modality=modality
    )


def ingest(order: RadiologyOrder | None, *contents: bytes, user: AbstractBaseUser | None = None) -> list[Any]:
    items = [
        IngestItem(order=order, stream=io.BytesIO(content), filename=f"{number}.dcm")
        for number, content in enumerate(contents, 1)
    ]
    return ingest_images(items, uploaded_by=user, arrival=Arrival("import"))


def ingest_study(
    order: RadiologyOrder, *, images: int, modality: str = "CT", study_uid: str | None = None
) -> RadiologyStudy:
    """`images` new instances in a new series of the order's study (one batch); returns the study."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    outcomes = ingest(order, *(dicom(study_uid, series_uid, number, modality) for number in range(1, images + 1)))
    assert all(isinstance(outcome, IngestResult) and outcome.created for outcome in outcomes), outcomes
    return RadiologyStudy.objects.get(study_uid=study_uid)


def image_ids(study: RadiologyStudy) -> list[int]:
    return list(
        RadiologyImage.objects.filter(series__study=study)
        .order_by("instance_number", "pk")
        .values_list("pk", flat=True)
    )


def task_rows(**filters: Any) -> list[dict[str, Any]]:
    """Every task (matching `filters`), as (destination, image, study, state and counters), by id."""
    rows = []
    for task in ForwardTask.objects.filter(**filters).order_by("destination", "image_id"):
        assert task.next_attempt_at <= task.created_at  # due at once
        rows.append(
            {
                "destination": task.destination,
                "image": task.image_id,
                "study": task.study_id,
                "state": task.state,
                "attempts": task.attempts,
                "lease_until": task.lease_until,
                "remote_upload_id": task.remote_upload_id,
                "resends": task.resends,
                "wire_bytes": task.wire_bytes,
                "sent_at": task.sent_at,
                "error_code": task.error_code,
            }
        )
    return rows


def new_task(destination: str, image: int, study: RadiologyStudy) -> dict[str, Any]:
    return {
        "destination": destination,
        "image": image,
        "study": study.pk,
        "state": "pending",
        "attempts": 0,
        "lease_until": None,
        "remote_upload_id": None,
        "resends": 0,
        "wire_bytes": 0,
        "sent_at": None,
        "error_code": "",
    }


def delivery_rows() -> list[tuple[int, str, str, int, int, int | None, str]]:
    """(study, destination, state, sent, total, requested_by, summary) of every delivery."""
    return [
        (d.study_id, d.destination, d.state, d.images_sent, d.images_total, d.requested_by_id, d.summary)
        for d in StudyDelivery.objects.order_by("study_id", "destination")
    ]


# --- at ingest -------------------------------------------------------------------------------


def test_rule_all_queues_every_image_of_a_batch_with_its_study(settings: Any, make_order: MakeOrder) -> None:
    configure(settings, "regional=all@https://regional.example.org")

    study = ingest_study(make_order(), images=3)

    first, second, third = image_ids(study)
    assert task_rows() == [new_task("regional", image, study) for image in (first, second, third)]
    assert delivery_rows() == [(study.pk, "regional", "sending", 0, 3, None, "sending 0 of 3")]


def test_a_modality_rule_takes_its_modalities_only(settings: Any, make_order: MakeOrder) -> None:
    configure(
        settings,
        "regional=all@https://regional.example.org,teaching=CR+DX@http://teaching,second=on_request@http://second",
    )

    chest = ingest_study(make_order(modality="CR", exam_requested="Chest X-ray"), images=1, modality="CR")
    head = ingest_study(make_order(), images=2, modality="CT")

    (chest_image,) = image_ids(chest)
    head_first, head_second = image_ids(head)
    assert task_rows() == [
        new_task("regional", chest_image, chest),
        new_task("regional", head_first, head),
        new_task("regional", head_second, head),
        new_task("teaching", chest_image, chest),
    ]
    assert delivery_rows() == [
        (chest.pk, "regional", "sending", 0, 1, None, "sending 0 of 1"),
        (chest.pk, "teaching", "sending", 0, 1, None, "sending 0 of 1"),
        (head.pk, "regional", "sending", 0, 2, None, "sending 0 of 2"),
    ]


def test_on_request_or_no_destination_queues_nothing(settings: Any, make_order: MakeOrder) -> None:
    configure(settings, "regional=on_request@https://regional.example.org")
    ingest_study(make_order(), images=2)
    configure(settings, "")
    ingest_study(make_order(), images=1)

    assert ForwardTask.objects.count() == 0
    assert StudyDelivery.objects.count() == 0


def test_with_no_destination_ingest_makes_no_outbox_query(settings: Any, make_order: MakeOrder) -> None:
    configure(settings, "")

    with CaptureQueriesContext(connection) as queries:
        ingest_study(make_order(), images=2)

    assert not [query["sql"] for query in queries.captured_queries if "forward" in query["sql"].lower()]
    assert not [query["sql"] for query in queries.captured_queries if "studydelivery" in query["sql"].lower()]


def test_with_an_on_request_destination_ingest_only_asks_whether_the_study_was_sent(
    settings: Any, make_order: MakeOrder
) -> None:
    configure(settings, "regional=on_request@https://regional.example.org")

    with CaptureQueriesContext(connection) as queries:
        ingest_study(make_order(), images=2)

    outbox_queries = [
        query["sql"]
        for query in queries.captured_queries
        if "forward" in query["sql"].lower() or "studydelivery" in query["sql"].lower()
    ]
    assert len(outbox_queries) == 1
    assert outbox_queries[0].lstrip().upper().startswith("SELECT")
    assert ForwardTask.objects.count() == 0


def test_an_image_joining_a_study_sent_on_request_is_sent_too(settings: Any, make_order: MakeOrder) -> None:
    configure(settings, "regional=on_request@https://regional.example.org")
    order = make_order()
    study = ingest_study(order, images=1)
    record_module.request_forwarding(study=study, destination="regional", requested_by=None)
    StudyDelivery.objects.filter(study=study).update(
        state=StudyDelivery.State.DELIVERED, images_sent=1, delivered_at=timezone.now()
    )

    ingest_study(order, images=1, study_uid=study.study_uid)

    delivery = StudyDelivery.objects.get(study=study)
    assert (delivery.state, delivery.images_sent, delivery.images_total, delivery.delivered_at) == (
        StudyDelivery.State.SENDING,
        1,
        2,
        None,
    )
    assert ForwardTask.objects.filter(study=study, destination="regional").count() == 2


def test_stow_rs_queues_what_it_stores(settings: Any, make_order: MakeOrder, radtech: AbstractBaseUser) -> None:
    configure(settings, "regional=all@https://regional.example.org")
    order = make_order()
    study_uid, series_uid = generate_uid(), generate_uid()
    body = (
        b"".join(
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + dicom(study_uid, series_uid, n)
            + b"\r\n"
            for n in (1, 2)
        )
        + f"--{BOUNDARY}--\r\n".encode()
    )

    response = token_client(radtech).post(
        f"{STOW}?radiology_order_id={order.pk}",
        data=body,
        content_type=f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        headers={"Accept": "application/dicom+json"},
    )

    assert response.status_code == 200, response.content
    study = RadiologyStudy.objects.get(study_uid=study_uid)
    assert task_rows() == [new_task("regional", image, study) for image in image_ids(study)]
    assert delivery_rows() == [(study.pk, "regional", "sending", 0, 2, None, "sending 0 of 2")]


def test_the_upload_api_queues_what_it_stores(settings: Any, make_order: MakeOrder, radtech: AbstractBaseUser) -> None:
    configure(settings, "teaching=DX@http://teaching")
    order = make_order(modality="DX")
    device_file = DeviceFile("chest.dcm", dicom(generate_uid(), generate_uid(), 1, "DX"))
    client = client_for(radtech)

    created = post_upload(client, metadata(order, device_file))
    completed = put_whole(client, created.json()["id"], device_file.content)

    assert (created.status_code, completed.status_code) == (201, 201), completed.content
    study = RadiologyStudy.objects.get(radiology_order=order)
    assert task_rows() == [new_task("teaching", completed.json()["image"]["id"], study)]
    assert delivery_rows() == [(study.pk, "teaching", "sending", 0, 1, None, "sending 0 of 1")]


def test_a_held_file_is_queued_when_a_tech_assigns_it(
    settings: Any, make_order: MakeOrder, radtech: AbstractBaseUser
) -> None:
    configure(settings, "regional=all@https://regional.example.org")
    order = make_order()
    (held,) = ingest(None, dicom(generate_uid(), generate_uid(), 1))
    assert isinstance(held, HeldResult)
    assert ForwardTask.objects.count() == 0  # held files are no image of any study yet

    report = unmatched.assign(
        UnmatchedImage.objects.values_list("pk", flat=True),
        order=order,
        user=radtech,
        channel="admin",
        mismatch_reason="Registered under a temporary number.",
    )

    assert len(report.assigned) == 1, report.refused
    study = RadiologyStudy.objects.get(radiology_order=order)
    assert task_rows() == [new_task("regional", image, study) for image in image_ids(study)]
    assert delivery_rows() == [(study.pk, "regional", "sending", 0, 1, None, "sending 0 of 1")]


def test_a_repeated_file_is_not_queued_twice(settings: Any, make_order: MakeOrder) -> None:
    configure(settings, "regional=all@https://regional.example.org")
    order = make_order()
    content = dicom(generate_uid(), generate_uid(), 1)

    (first,) = ingest(order, content)
    (again,) = ingest(order, content)

    assert (first.created, again.created) == (True, False)
    study = RadiologyStudy.objects.get(radiology_order=order)
    assert task_rows() == [new_task("regional", first.image.pk, study)]
    assert delivery_rows() == [(study.pk, "regional", "sending", 0, 1, None, "sending 0 of 1")]


# --- atomicity: if the row exists, the task exists ---------------------------------------------


def test_a_batch_whose_tasks_fail_leaves_no_image_no_task_and_no_file(
    settings: Any, make_order: MakeOrder, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(settings, "regional=all@https://regional.example.org")
    order = make_order()
    study_uid, series_uid = generate_uid(), generate_uid()
    counted: list[int] = []

    def fail_after_the_tasks_are_written(*args: Any, **kwargs: Any) -> None:
        counted.append(ForwardTask.objects.count())  # inside the ingest transaction: written
        raise RuntimeError("the database went away")

    monkeypatch.setattr(record_module, "_count_new_tasks", fail_after_the_tasks_are_written)

    with pytest.raises(RuntimeError, match="the database went away"):
        ingest(order, dicom(study_uid, series_uid, 1), dicom(study_uid, series_uid, 2))

    assert counted == [2, 1]  # the batch, then its first item alone: each wrote its tasks, then failed
    assert ForwardTask.objects.count() == 0
    assert StudyDelivery.objects.count() == 0
    assert row_counts() == (0, 0, 0)
    assert stored_keys() == []


def test_a_batch_whose_image_insert_fails_leaves_no_task(
    settings: Any, make_order: MakeOrder, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(settings, "regional=all@https://regional.example.org")
    order = make_order()
    study_uid, series_uid = generate_uid(), generate_uid()

    def refuse(images: Any) -> None:
        raise RuntimeError("disk I/O error")

    monkeypatch.setattr(commit_module.bulk_insert, "insert_new", refuse)

    with pytest.raises(RuntimeError, match="disk I/O error"):
        ingest(order, dicom(study_uid, series_uid, 1), dicom(study_uid, series_uid, 2))

    assert ForwardTask.objects.count() == 0
    assert StudyDelivery.objects.count() == 0
    assert row_counts() == (0, 0, 0)
    assert stored_keys() == []


# --- a study that grows -----------------------------------------------------------------------------


def deliver_everything(study: RadiologyStudy, destination: str = "regional") -> None:
    """What the forwarder does when every image goes through and the far side confirms them."""
    for task in progress.claim_due(destination=destination, limit=100, lease_seconds=300):
        progress.mark_sent(task, wire_bytes_added=1)
    (delivery,) = progress.deliveries_to_verify(destination=destination, limit=10)
    assert progress.apply_verification(delivery, confirmed=progress.sent_checksums(delivery))


def test_a_new_image_of_a_delivered_study_puts_it_back_to_sending(settings: Any, make_order: MakeOrder) -> None:
    configure(settings, "regional=all@https://regional.example.org")
    order = make_order()
    study_uid, series_uid = generate_uid(), generate_uid()
    ingest(order, dicom(study_uid, series_uid, 1))
    study = RadiologyStudy.objects.get(study_uid=study_uid)
    deliver_everything(study)
    assert delivery_rows() == [(study.pk, "regional", "delivered", 1, 1, None, "delivered")]

    ingest(order, dicom(study_uid, series_uid, 2))

    first, second = image_ids(study)
    assert delivery_rows() == [(study.pk, "regional", "sending", 1, 2, None, "sending 1 of 2")]
    assert [(row["image"], row["state"]) for row in task_rows()] == [(first, "sent"), (second, "pending")]


def test_a_new_image_of_a_failed_study_is_queued_and_the_study_stays_failed(
    settings: Any, make_order: MakeOrder
) -> None:
    configure(settings, "regional=all@https://regional.example.org")
    order = make_order()
    study_uid, series_uid = generate_uid(), generate_uid()
    ingest(order, dicom(study_uid, series_uid, 1))
    (task,) = progress.claim_due(destination="regional", limit=1, lease_seconds=300)
    progress.mark_failed(
        task, error_code="image_conflict", error_detail="Stored there with other bytes.", wire_bytes_added=0
    )

    ingest(order, dicom(study_uid, series_uid, 2))

    study = RadiologyStudy.objects.get(study_uid=study_uid)
    assert delivery_rows() == [(study.pk, "regional", "failed", 0, 2, None, "failed: Stored there with other bytes.")]
    assert [row["state"] for row in task_rows()] == ["failed", "pending"]


# --- send_study / request_forwarding: "send to the radiologist", and a tech's retry -------------------


def test_sending_on_request_queues_every_image_once(
    settings: Any, make_order: MakeOrder, doctor: AbstractBaseUser, radtech: AbstractBaseUser
) -> None:
    configure(settings, "regional=on_request@https://regional.example.org")
    study = ingest_study(make_order(), images=2)
    assert ForwardTask.objects.count() == 0

    delivery = send_study(study=study, destination="regional", requested_by=doctor)

    first, second = image_ids(study)
    assert (delivery.study_id, delivery.destination, delivery.state, delivery.images_sent, delivery.images_total) == (
        study.pk,
        "regional",
        "sending",
        0,
        2,
    )
    assert task_rows() == [new_task("regional", first, study), new_task("regional", second, study)]
    assert delivery_rows() == [(study.pk, "regional", "sending", 0, 2, doctor.pk, "sending 0 of 2")]

    # Asked again, by someone else: nothing new is queued, only who asked changes.
    again = send_study(study=study, destination="regional", requested_by=radtech)

    assert again.pk == delivery.pk
    assert task_rows() == [new_task("regional", first, study), new_task("regional", second, study)]
    assert delivery_rows() == [(study.pk, "regional", "sending", 0, 2, radtech.pk, "sending 0 of 2")]


def test_sending_a_delivered_study_again_changes_nothing(
    settings: Any, make_order: MakeOrder, doctor: AbstractBaseUser
) -> None:
    configure(settings, "regional=all@https://regional.example.org")
    study = ingest_study(make_order(), images=2)
    deliver_everything(study)
    before = task_rows()

    delivery = send_study(study=study, destination="regional", requested_by=doctor)

    assert delivery.state == StudyDelivery.State.DELIVERED
    assert task_rows() == before
    assert delivery_rows() == [(study.pk, "regional", "delivered", 2, 2, doctor.pk, "delivered")]


def test_sending_the_whole_study_adds_the_images_the_rule_left_out(
    settings: Any, make_order: MakeOrder, radtech: AbstractBaseUser
) -> None:
    configure(settings, "teaching=CR+DX@http://teaching")
    order = make_order(modality="CR")
    study_uid = generate_uid()
    ingest(order, dicom(study_uid, generate_uid(), 1, "CR"))
    ingest(order, dicom(study_uid, generate_uid(), 1, "CT"))
    study = RadiologyStudy.objects.get(study_uid=study_uid)
    chest, head = image_ids(study)
    assert task_rows() == [new_task("teaching", chest, study)]

    send_study(study=study, destination="teaching", requested_by=radtech)

    assert task_rows() == [new_task("teaching", chest, study), new_task("teaching", head, study)]
    assert delivery_rows() == [(study.pk, "teaching", "sending", 0, 2, radtech.pk, "sending 0 of 2")]


def test_a_tech_retries_a_failed_study(settings: Any, make_order: MakeOrder, radtech: AbstractBaseUser) -> None:
    configure(settings, "regional=all@https://regional.example.org")
    study = ingest_study(make_order(), images=2)
    failing, fine = progress.claim_due(destination="regional", limit=2, lease_seconds=300)
    progress.mark_sent(fine, wire_bytes_added=10)
    progress.mark_retry(failing, error_code="timeout", error_detail="slow", wire_bytes_added=5, delay_seconds=0)
    progress.mark_retry(failing, error_code="timeout", error_detail="slow", wire_bytes_added=5, delay_seconds=0)
    progress.mark_failed(failing, error_code="forbidden", error_detail="The token was refused.", wire_bytes_added=0)
    assert delivery_rows() == [(study.pk, "regional", "failed", 1, 2, None, "failed: The token was refused.")]

    delivery = send_study(study=study, destination="regional", requested_by=radtech)

    assert (delivery.state, delivery.error_code, delivery.error_detail) == ("sending", "", "")
    assert delivery_rows() == [(study.pk, "regional", "sending", 1, 2, radtech.pk, "sending 1 of 2")]
    failing.refresh_from_db()
    assert (failing.state, failing.attempts, failing.lease_until, failing.wire_bytes) == ("pending", 0, None, 10)
    # The last error stays on the task for admin; it is due again at once.
    assert (failing.error_code, failing.error_detail) == ("forbidden", "The token was refused.")
    assert [task.pk for task in progress.claim_due(destination="regional", limit=5, lease_seconds=300)] == [failing.pk]


def test_the_only_destination_needs_no_name(settings: Any, make_order: MakeOrder, doctor: AbstractBaseUser) -> None:
    configure(settings, "regional=on_request@https://regional.example.org")
    study = ingest_study(make_order(), images=1)

    delivery = send_study(study=study, destination=None, requested_by=doctor)

    assert (delivery.destination, delivery.images_total) == ("regional", 1)
    assert [row["destination"] for row in task_rows()] == ["regional"]


@pytest.mark.parametrize(
    ("destinations", "asked", "detail"),
    [
        (
            "regional=on_request@http://r",
            "elsewhere",
            "No forwarding destination of that name is configured on this server.",
        ),
        (
            "regional=on_request@http://r",
            "Regional",
            "No forwarding destination of that name is configured on this server.",
        ),
        ("", "regional", "No forwarding destination of that name is configured on this server."),
        ("", None, "Name the destination: this server has none or several."),
        ("a=on_request@http://a,b=all@http://b", None, "Name the destination: this server has none or several."),
    ],
)
def test_an_unknown_destination_queues_nothing(
    settings: Any,
    make_order: MakeOrder,
    doctor: AbstractBaseUser,
    destinations: str,
    asked: str | None,
    detail: str,
) -> None:
    configure(settings, "")
    study = ingest_study(make_order(), images=1)
    configure(settings, destinations)

    with pytest.raises(UnknownForwardDestination) as refused:
        send_study(study=study, destination=asked, requested_by=doctor)

    assert refused.value.body() == {"code": "unknown_destination", "detail": detail}
    assert ForwardTask.objects.count() == 0
    assert StudyDelivery.objects.count() == 0


def test_a_study_a_tech_sent_whole_past_a_modality_rule_takes_its_later_images(
    settings: Any, make_order: MakeOrder, radtech: AbstractBaseUser
) -> None:
    configure(settings, "teaching=CR+DX@http://teaching,other=DX@http://other")
    order = make_order(modality="CR")
    study_uid = generate_uid()
    ingest(order, dicom(study_uid, generate_uid(), 1, "CR"))
    study = RadiologyStudy.objects.get(study_uid=study_uid)
    send_study(study=study, destination="teaching", requested_by=radtech)

    ingest(order, dicom(study_uid, generate_uid(), 1, "CT"))

    chest, head = image_ids(study)
    assert task_rows() == [new_task("teaching", chest, study), new_task("teaching", head, study)]
    assert delivery_rows() == [(study.pk, "teaching", "sending", 0, 2, radtech.pk, "sending 0 of 2")]
