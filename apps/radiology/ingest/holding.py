"""The unmatched inbox's way in: a DICOM file that came with no order is kept for a tech to place.

Ways in with no person at hand (bulk import by accession number when no order has the file's
accession, the DICOM network listener) must not guess which patient a file belongs to, nor
drop it. The file has passed the same checks as any other (spooled, hashed, parsed, UIDs
valid: pipeline.py); here its bytes are written byte-exact under `unmatched/` in the store
(outside any transaction, as commit.py does, and removed again if its row does not commit)
and an UnmatchedImage row lists what its header says. Nothing reads these through the read
door, so no doctor sees them; unmatched.py assigns them to an order (through the whole
pipeline again) or discards them.

Idempotent like ingest: the same file again is the row already waiting (or the image already
stored); the same image UID with other bytes is ImageConflict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction

from apps.radiology import storage
from apps.radiology.access.audit import role_of
from apps.radiology.errors import ImageConflict, RadiologyError
from apps.radiology.imagefiles import stored_header
from apps.radiology.imagefiles.patient_identity import PATIENT_BIRTH_DATE, PATIENT_SEX, first_value
from apps.radiology.ingest.commit import spool_reader
from apps.radiology.ingest.outcomes import HeldResult, IngestResult
from apps.radiology.models import PERSON_NAME_MAX_LENGTH, AuditEvent, RadiologyImage, UnmatchedImage

if TYPE_CHECKING:  # pipeline.py hands its prepared entries here
    from apps.radiology.ingest.pipeline import Prepared

logger = logging.getLogger(__name__)

Outcomes = list[IngestResult | HeldResult | RadiologyError | None]


@dataclass(frozen=True)
class Arrival:
    """How files with no order came, for the audit trail: the way in (import, dicom, upload)."""

    channel: str


def hold(
    entries: list[Prepared], outcomes: Outcomes, *, received_by: AbstractBaseUser | None, arrival: Arrival
) -> None:
    """Hold each entry (a file with no order) in the unmatched inbox; record each outcome."""
    uids = {entry.uids.image_uid for entry in entries}
    stored = {image.image_uid: image for image in RadiologyImage.objects.filter(image_uid__in=uids)}
    waiting = {
        unmatched.image_uid: unmatched
        for unmatched in UnmatchedImage.objects.filter(status=UnmatchedImage.Status.PENDING, image_uid__in=uids)
    }
    for entry in entries:
        image_uid = entry.uids.image_uid
        if (image := stored.get(image_uid)) is not None:
            # Already placed in a study (a tech assigned it, or it came with its order too).
            same = image.checksum == entry.spooled.checksum
            outcomes[entry.index] = IngestResult(image=image, created=False) if same else ImageConflict()
            continue
        if (unmatched := waiting.get(image_uid)) is None:
            try:
                unmatched = waiting[image_uid] = _hold_one(entry, received_by, arrival)
            except RadiologyError as error:
                outcomes[entry.index] = error
                continue
            outcomes[entry.index] = HeldResult(unmatched=unmatched, created=True)
        elif unmatched.checksum == entry.spooled.checksum:
            outcomes[entry.index] = HeldResult(unmatched=unmatched, created=False)
        else:
            outcomes[entry.index] = ImageConflict("A file with this image UID and other content is already unmatched.")


def _hold_one(entry: Prepared, received_by: AbstractBaseUser | None, arrival: Arrival) -> UnmatchedImage:
    """Write one file under unmatched/ and its row (with its audit event); no file without its row."""
    key = storage.build_unmatched_key(image_uid=entry.uids.image_uid, filename=entry.filename)
    with spool_reader(entry) as spool_file:
        stored_key = storage.save_new_object(
            key, spool_file, content_type=entry.spooled.mime_type, local_path=entry.spooled.path
        )
    parsed = entry.parsed
    identity = stored_header.file_identity(parsed)
    try:
        with transaction.atomic():
            unmatched = UnmatchedImage.objects.create(
                file_key=stored_key,
                filename=storage.original_filename(entry.filename),
                file_size=entry.spooled.size,
                checksum=entry.spooled.checksum,
                source=arrival.channel,
                source_clinic=entry.item.source_clinic,
                study_uid=entry.uids.study_uid,
                series_uid=entry.uids.series_uid,
                image_uid=entry.uids.image_uid,
                sop_class_uid=parsed.sop_class_uid,
                accession_number=parsed.accession_number[:16],
                modality=parsed.modality[:16],
                study_date=parsed.study_date,
                study_description=parsed.study_description[:255],
                series_description=parsed.series_description[:255],
                instance_number=parsed.instance_number,
                patient_id=identity.patient_id[:64],
                patient_name=identity.patient_name[:PERSON_NAME_MAX_LENGTH],
                patient_birth_date=first_value(identity.elements.get(PATIENT_BIRTH_DATE))[:8],
                patient_sex=first_value(identity.elements.get(PATIENT_SEX))[:16],
                received_by=received_by,
            )
            record_decision(unmatched, AuditEvent.IdentityAction.HOLD, user=received_by, channel=arrival.channel)
    except BaseException as failure:
        storage.delete_object(stored_key)
        if isinstance(failure, IntegrityError):
            # A concurrent arrival of the same image UID was held a moment ago.
            raise ImageConflict("A file with this image UID is already unmatched.") from None
        raise
    logger.info("unmatched file %s held (no order)", unmatched.pk)
    return unmatched


def record_decision(
    unmatched: UnmatchedImage,
    action: str,
    *,
    user: AbstractBaseUser | None,
    channel: str,
    reason: str = "",
    order_id: int | None = None,
    image_id: int | None = None,
) -> AuditEvent:
    """The audit event of one action on an unmatched file (held, assigned, discarded), written
    in the caller's transaction: the decision and its record stand or fall together."""
    return AuditEvent.objects.create(
        user=user,
        username=user.get_username() if user is not None else "",
        role=role_of(user) if user is not None else "system",
        channel=channel,
        action=action,
        route="unmatched",
        method="",
        unmatched_id=unmatched.pk,
        order_id=order_id,
        image_id=image_id,
        study_uid=unmatched.study_uid,
        series_uid=unmatched.series_uid,
        image_uid=unmatched.image_uid,
        status_code=201 if action != AuditEvent.IdentityAction.DISCARD else 200,
        outcome=AuditEvent.Outcome.ALLOWED,
        reason=reason[:255],
    )
