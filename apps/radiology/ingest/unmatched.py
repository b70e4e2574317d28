"""A tech's decisions on the unmatched inbox: assign files (or a whole study) to an order, or discard them.

Assigning goes through the whole ingest pipeline with the file's stored bytes, exactly as if
the file had come with that order: the same UID, study and patient checks (a file naming
another patient needs the tech's confirmation and reason), the same commit. So an assigned
file is an image like any other, and a refused one stays waiting with the refusal reported.
A 500-file study is one action, ingested in batches (`ASSIGN_BATCH`) so no request holds
hundreds of files open at once.

Each decision is a conditional update from "pending" (two techs deciding at once: one wins,
the other is told), audited in the same transaction; the file under unmatched/ is removed
once the decision has committed (cleanup.py removes any a crash leaves behind).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from apps.radiology import storage
from apps.radiology.errors import (
    MismatchReasonRequired,
    RadiologyError,
    StoredObjectMissing,
    UnmatchedAlreadyHandled,
)
from apps.radiology.ingest.holding import record_decision
from apps.radiology.ingest.identity import MismatchConfirmation
from apps.radiology.ingest.outcomes import IngestResult
from apps.radiology.ingest.pipeline import IngestItem, ingest_images
from apps.radiology.models import AuditEvent, RadiologyOrder, UnmatchedImage

logger = logging.getLogger(__name__)

ASSIGN_BATCH = 25
PENDING = UnmatchedImage.Status.PENDING


@dataclass(frozen=True)
class Decider:
    """Who decides, for the record: the tech, and where (admin)."""

    user: AbstractBaseUser | None
    channel: str


@dataclass
class AssignReport:
    assigned: list[UnmatchedImage] = field(default_factory=list)
    refused: list[tuple[UnmatchedImage, RadiologyError]] = field(default_factory=list)


def pending_of_studies(unmatched_ids: Iterable[int]) -> list[int]:
    """The ids of every waiting file of the studies these files belong to ("the whole study")."""
    study_uids = UnmatchedImage.objects.filter(pk__in=list(unmatched_ids)).values_list("study_uid", flat=True)
    return list(
        UnmatchedImage.objects.filter(status=PENDING, study_uid__in=list(study_uids)).values_list("pk", flat=True)
    )


def assign(
    unmatched_ids: Iterable[int],
    *,
    order: RadiologyOrder,
    user: AbstractBaseUser | None,
    channel: str,
    mismatch_reason: str = "",
) -> AssignReport:
    """Ingest these waiting files into `order`; report which were assigned and which refused (and why).

    `user` is the tech deciding, `channel` where (admin). `mismatch_reason`: the tech's
    confirmation that files naming another patient belong to this order (stored on their
    images and audited); without it such files are refused.
    """
    decider = Decider(user, channel)
    rows = list(
        UnmatchedImage.objects.filter(pk__in=list(unmatched_ids), status=PENDING).order_by(
            "study_uid", "series_uid", "instance_number", "pk"
        )
    )
    confirmation = (
        MismatchConfirmation(reason=mismatch_reason.strip(), channel=decider.channel)
        if mismatch_reason.strip()
        else None
    )
    report = AssignReport()
    for start in range(0, len(rows), ASSIGN_BATCH):
        _assign_batch(rows[start : start + ASSIGN_BATCH], order, decider, confirmation, report)
    return report


def _assign_batch(
    rows: list[UnmatchedImage],
    order: RadiologyOrder,
    decider: Decider,
    confirmation: MismatchConfirmation | None,
    report: AssignReport,
) -> None:
    with contextlib.ExitStack() as files:
        items: list[IngestItem] = []
        readable: list[UnmatchedImage] = []
        for row in rows:
            try:
                path = files.enter_context(storage.local_path(row.file_key))
                stream = files.enter_context(path.open("rb"))
            except (FileNotFoundError, OSError):
                report.refused.append((row, StoredObjectMissing()))
                continue
            readable.append(row)
            items.append(
                IngestItem(
                    order=order,
                    stream=stream,
                    filename=row.filename,
                    expected_size=row.file_size,
                    expected_checksum=row.checksum,
                    confirmation=confirmation,
                    # The clinic that sent the file goes with it onto the study it joins.
                    source_clinic=row.source_clinic,
                )
            )
        outcomes = ingest_images(items, uploaded_by=decider.user)
    for row, outcome in zip(readable, outcomes, strict=True):
        if not isinstance(outcome, IngestResult):
            report.refused.append((row, outcome if isinstance(outcome, RadiologyError) else RadiologyError()))
            continue
        try:
            _decide(row, UnmatchedImage.Status.ASSIGNED, decider, reason="", order=order, image=outcome.image)
        except UnmatchedAlreadyHandled as error:
            report.refused.append((row, error))
            continue
        report.assigned.append(row)


def discard(
    unmatched_ids: Iterable[int], *, user: AbstractBaseUser | None, channel: str, reason: str
) -> list[UnmatchedImage]:
    """Discard these waiting files with the tech's reason (required); return those discarded.

    The row stays as the record of what arrived and who discarded it why; the file goes.
    """
    decider = Decider(user, channel)
    reason = reason.strip()
    if not reason:
        raise MismatchReasonRequired("A reason is required to discard an unmatched file.")
    discarded = []
    for row in UnmatchedImage.objects.filter(pk__in=list(unmatched_ids), status=PENDING):
        try:
            _decide(row, UnmatchedImage.Status.DISCARDED, decider, reason=reason)
        except UnmatchedAlreadyHandled:
            continue
        discarded.append(row)
    return discarded


def _decide(
    row: UnmatchedImage,
    status: str,
    decider: Decider,
    *,
    reason: str,
    order: RadiologyOrder | None = None,
    image: object | None = None,
) -> None:
    """Move one row from pending to `status`, audited, in one transaction; then remove its file."""
    now = timezone.now()
    with transaction.atomic():
        changed = UnmatchedImage.objects.filter(pk=row.pk, status=PENDING).update(
            status=status,
            handled_by=decider.user,
            handled_at=now,
            reason=reason[:255],
            radiology_order=order,
            image=image,
        )
        if not changed:
            raise UnmatchedAlreadyHandled()
        action = (
            AuditEvent.IdentityAction.ASSIGN
            if status == UnmatchedImage.Status.ASSIGNED
            else AuditEvent.IdentityAction.DISCARD
        )
        record_decision(
            row,
            action,
            user=decider.user,
            channel=decider.channel,
            reason=reason,
            order_id=order.pk if order is not None else None,
            image_id=getattr(image, "pk", None),
        )
        transaction.on_commit(lambda: _remove_file(row.file_key))
    row.refresh_from_db()


def _remove_file(key: str) -> None:
    try:
        storage.delete_object(key)
    except Exception:  # cleanup.py removes it later; the decision stands
        logger.exception("the file of a decided unmatched row could not be removed yet")
