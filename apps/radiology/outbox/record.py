"""Recording what is to be forwarded: at ingest, in the image's own transaction, and on a person's request.

Ingest calls `record_new_images` inside the transaction that creates the image rows
(ingest/commit.py), so no image stored by any way in (upload, STOW-RS, import, the DICOM
network, an assignment from the unmatched inbox) can miss its task, and no task can name an
image that did not commit. With no automatic destination configured it costs nothing; with
one, one statement per batch, and three when it queues anything (the tasks, the deliveries read,
their counters moved).

`send_study` / `request_forwarding` is "send to the radiologist" (front door, API, admin): the
study's images that have no task for the destination get one, failed ones are queued again
(which is also how a tech retries a study that failed).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from apps.radiology.errors import UnknownForwardDestination
from apps.radiology.models import ForwardTask, RadiologyImage, RadiologyOrder, RadiologyStudy, StudyDelivery
from apps.radiology.outbox.destinations import configured_destinations, destination_named


def record_new_images(images: Iterable[RadiologyImage]) -> None:
    """Queue new images for each destination whose rule takes them, or that their study was sent to
    (inside the ingest transaction).

    A study a doctor or tech sent (on request, or whole past a modality rule) goes on being sent:
    an image that joins it later joins its delivery. Each image's `series` (with its modality and study_id) is set, as
    commit.create_rows makes them.
    """
    destinations = configured_destinations()
    if not destinations:
        return
    images = list(images)
    # Studies a person sent (any delivery to an on_request destination is one): they go whole.
    sent_on_request = set(
        StudyDelivery.objects.filter(study_id__in={image.series.study_id for image in images})
        .filter(
            Q(destination__in=[destination.name for destination in destinations if not destination.automatic])
            | Q(destination__in=[destination.name for destination in destinations], requested_by__isnull=False)
        )
        .values_list("study_id", "destination")
    )
    tasks = [
        ForwardTask(destination=destination.name, image=image, study_id=image.series.study_id)
        for destination in destinations
        for image in images
        if destination.takes(image.series.modality or image.series.study.modality)
        or (image.series.study_id, destination.name) in sent_on_request
    ]
    if tasks:
        ForwardTask.objects.bulk_create(tasks)
        _count_new_tasks(Counter((task.study_id, task.destination) for task in tasks))


def _count_new_tasks(added: Counter[tuple[int, str]]) -> None:
    """Add new tasks to their studies' deliveries (made when missing); a delivered study is sending again."""
    study_ids = {study_id for study_id, _ in added}
    existing = {
        (delivery.study_id, delivery.destination)
        for delivery in StudyDelivery.objects.filter(study_id__in=study_ids).only("study_id", "destination")
    }
    missing = [key for key in added if key not in existing]
    if missing:
        StudyDelivery.objects.bulk_create(
            StudyDelivery(study_id=study_id, destination=destination, images_total=added[(study_id, destination)])
            for study_id, destination in missing
        )
    for study_id, destination in (key for key in added if key in existing):
        StudyDelivery.objects.filter(study_id=study_id, destination=destination).update(
            images_total=F("images_total") + added[(study_id, destination)],
            state=Case(
                When(state=StudyDelivery.State.DELIVERED, then=Value(StudyDelivery.State.SENDING)),
                default=F("state"),
            ),
            delivered_at=None,
            updated_at=timezone.now(),
        )


def send_study(
    *, study: RadiologyStudy, destination: str | None, requested_by: AbstractBaseUser | None
) -> StudyDelivery:
    """ "Send to the radiologist": queue the study for the named destination (or the only one configured).

    UnknownForwardDestination when the name is not configured, or none is given and there is
    not exactly one destination.
    """
    configured = configured_destinations()
    if destination is None:
        if len(configured) != 1:
            raise UnknownForwardDestination("Name the destination: this server has none or several.")
        destination = configured[0].name
    elif destination_named(destination) is None:
        raise UnknownForwardDestination()
    return request_forwarding(study=study, destination=destination, requested_by=requested_by)


def request_forwarding(
    *, study: RadiologyStudy, destination: str, requested_by: AbstractBaseUser | None
) -> StudyDelivery:
    """Queue the study's images for `destination` that are not on their way, and retry its failed ones.

    Idempotent: asking again for a study being sent or delivered changes nothing but who asked.
    """
    now = timezone.now()
    with transaction.atomic():
        # Serialise with ingest into the same study: commit.create_rows locks the order first.
        list(RadiologyOrder.objects.select_for_update().filter(pk=study.radiology_order_id).values_list("pk"))
        queued = set(
            ForwardTask.objects.filter(study=study, destination=destination).values_list("image_id", flat=True)
        )
        new_tasks = [
            ForwardTask(destination=destination, image_id=image_id, study=study)
            for image_id in RadiologyImage.objects.filter(series__study=study).values_list("pk", flat=True)
            if image_id not in queued
        ]
        ForwardTask.objects.bulk_create(new_tasks)
        if new_tasks:
            _count_new_tasks(Counter({(study.pk, destination): len(new_tasks)}))
        retried = ForwardTask.objects.filter(
            study=study, destination=destination, state=ForwardTask.State.FAILED
        ).update(state=ForwardTask.State.PENDING, attempts=0, next_attempt_at=now, lease_until=None, updated_at=now)
        delivery, _ = StudyDelivery.objects.get_or_create(study=study, destination=destination)
        changes: dict[str, object] = {"requested_by": requested_by, "updated_at": now}
        if retried or new_tasks or delivery.state == StudyDelivery.State.FAILED:
            changes.update(state=StudyDelivery.State.SENDING, error_code="", error_detail="")
        StudyDelivery.objects.filter(pk=delivery.pk).update(**changes)
        delivery.refresh_from_db()
    return delivery
