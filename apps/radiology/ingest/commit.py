"""Storing checked files: their bytes in the store, then their rows, with no file left without its row.

The files are written *outside* any database transaction (a slow upload to S3 must not hold
locks), each at a key no one else can take (storage.save_new_object); then the study, series
and image rows of all of them are created in one transaction. If that fails, every file
written here that has no row is removed again before the failure goes on. A process killed
between the two cannot do that: cleanup.purge_interrupted_ingests removes such files later.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from apps.radiology import storage
from apps.radiology.access.audit import role_of
from apps.radiology.errors import SeriesConflict, StudyMismatch
from apps.radiology.fastpaths import bulk_insert
from apps.radiology.imagefiles import stored_header
from apps.radiology.imagefiles.patient_identity import EmrIdentity, served_members
from apps.radiology.ingest.resolve import claim_source_clinic, create_series_for_study, create_study_for_order
from apps.radiology.ingest.signals import announce_after_commit
from apps.radiology.models import (
    DICOM_MIME_TYPE,
    AuditEvent,
    RadiologyImage,
    RadiologyOrder,
    RadiologySeries,
    RadiologyStudy,
)
from apps.radiology.outbox.record import record_new_images

if TYPE_CHECKING:  # pipeline.py hands its prepared entries to commit()
    from apps.radiology.ingest.pipeline import Prepared

logger = logging.getLogger(__name__)


def commit(entries: list[Prepared], uploaded_by: AbstractBaseUser | None) -> None:
    """Write the entries' files, then all their rows in one transaction (setting each entry's
    stored_key and image); on any failure remove every file written here that has no row, and raise."""
    try:
        # Every file on disk (fsynced together) before any row commits.
        with storage.synced_together():
            for entry in entries:
                file_key = storage.build_file_key(
                    study_uid=entry.uids.study_uid,
                    series_uid=entry.uids.series_uid,
                    image_uid=entry.uids.image_uid,
                    filename=entry.filename,
                )
                with spool_reader(entry) as spool_file:
                    entry.stored_key = storage.save_new_object(
                        file_key, spool_file, content_type=entry.spooled.mime_type, local_path=entry.spooled.path
                    )
        create_rows(entries, uploaded_by)
    except BaseException:
        # The rows did not commit: take the files back out so no file lingers without its row.
        written = [entry.stored_key for entry in entries if entry.stored_key is not None]
        kept = set(RadiologyImage.objects.filter(file_key__in=written).values_list("file_key", flat=True))
        for key in written:
            if key not in kept:
                storage.delete_object(key)
        for entry in entries:
            entry.stored_key, entry.image = None, None
        raise
    announce_after_commit(entry.image.series_id for entry in entries)  # type: ignore[union-attr]
    for entry in entries:
        logger.info("radiology image %s stored in study %s", entry.image.pk, entry.uids.study_uid)  # type: ignore[union-attr]


@contextlib.contextmanager
def spool_reader(entry: Prepared) -> Iterator[IO[bytes]]:
    """The entry's spooled bytes from their start: its open spool, or its staged file opened just for this."""
    if entry.spool_file is not None:
        entry.spool_file.seek(0)
        yield entry.spool_file
        return
    with entry.spooled.path.open("rb") as handle:
        yield handle


def create_rows(entries: list[Prepared], uploaded_by: AbstractBaseUser | None) -> None:
    """Create or reuse each entry's study and series and create the image rows, in one transaction.

    Each DICOM image's stored header gets the study's (the EMR's) patient identity, with the
    file's differing values as Original Attributes; a tech's confirmation that a file naming
    another patient belongs here is audited in the same transaction as the image it let in.
    """
    now = timezone.now()
    with transaction.atomic():
        # Lock the orders (in one order, so two batches cannot deadlock) so two first images
        # of one order cannot both create its study.
        order_ids = sorted({entry.order.pk for entry in entries})
        list(RadiologyOrder.objects.select_for_update().filter(pk__in=order_ids).order_by("pk").values_list("pk"))
        studies: dict[int, RadiologyStudy] = {}
        series_by_uid: dict[str, RadiologySeries] = {}
        added_to_series: dict[int, int] = {}
        images: list[RadiologyImage] = []
        for entry in entries:
            order, parsed, declared, uids = entry.order, entry.parsed, entry.item.declared, entry.uids
            modality = parsed.modality or declared.modality
            study = studies.get(order.pk)
            if study is None and entry.series_known and uids.series_uid not in series_by_uid:
                # The order's study held this series before the transaction: read both in one
                # query, as create_study_for_order and create_series_for_study would find them.
                series = _series_in_order_study(order, uids.series_uid)
                if series is not None:  # its study's UID is checked below, as for any study found
                    study = studies[order.pk] = series.study
                    series_by_uid[uids.series_uid] = series
            if study is None:
                study = studies[order.pk] = create_study_for_order(
                    radiology_order=order,
                    study_uid=uids.study_uid,
                    study_description=parsed.study_description or declared.study_description,
                    modality=modality,
                    study_date=parsed.study_date,
                    study_time=parsed.study_time,
                    accession_number=parsed.accession_number,
                    referring_physician_name=parsed.referring_physician_name,
                    source_clinic=entry.item.source_clinic,
                )
            elif study.study_uid != uids.study_uid:
                raise StudyMismatch()
            claim_source_clinic(study, entry.item.source_clinic)  # a study that names no clinic yet
            series = series_by_uid.get(uids.series_uid)
            if series is not None and series.study_id != study.pk:
                # An earlier item of this batch made the series in another order's study.
                raise SeriesConflict()
            if series is None:
                series_number = parsed.series_number if parsed.series_number is not None else declared.series_number
                if series_number is None and parsed.mime_type != DICOM_MIME_TYPE:
                    # A photo with no number of its own goes after the study's series (viewers sort by it).
                    top = RadiologySeries.objects.filter(study=study).aggregate(top=Max("series_number"))["top"]
                    series_number = (top or 0) + 1
                series = series_by_uid[uids.series_uid] = create_series_for_study(
                    study=study,
                    series_uid=uids.series_uid,
                    series_number=series_number,
                    series_description=parsed.series_description or declared.series_description,
                    modality=modality,
                    series_date=parsed.series_date,
                    series_time=parsed.series_time,
                    body_part_examined=parsed.body_part_examined,
                )
                series.study = study  # the same row (create_series_for_study checked): no lazy query later
            instance_number = parsed.instance_number if parsed.instance_number is not None else declared.instance_number
            if instance_number is None:
                # After the series' stored images and those of this batch before it.
                instance_number = (
                    RadiologyImage.objects.filter(series=series).count() + added_to_series.get(series.pk, 0) + 1
                )
            added_to_series[series.pk] = added_to_series.get(series.pk, 0) + 1
            identity = None
            if parsed.mime_type == DICOM_MIME_TYPE:
                identity = served_members(stored_header.file_identity(parsed), EmrIdentity.of_study(study), at=now)
            entry.image = RadiologyImage(
                series=series,
                image_uid=uids.image_uid,
                sop_class_uid=parsed.sop_class_uid,
                transfer_syntax_uid=parsed.transfer_syntax_uid,
                instance_number=instance_number,
                number_of_frames=parsed.number_of_frames,
                rows=parsed.rows,
                columns=parsed.columns,
                file_key=entry.stored_key,
                filename=storage.original_filename(entry.filename),
                file_size=entry.spooled.size,
                mime_type=entry.spooled.mime_type,
                checksum=entry.spooled.checksum,
                # image_metadata, pixel_data, bulk_data, metadata_text: as the stored header writes them
                **stored_header.columns(parsed, declared, identity=identity),
                **(entry.identity.columns() if entry.identity is not None else {}),
                uploaded_by=uploaded_by,
            )
            images.append(entry.image)
        # One INSERT (COPY on PostgreSQL) for the batch; rows are new, so WriteOnceModel.save's
        # only check does not apply.
        bulk_insert.insert_new(images)
        _audit_confirmations(entries, uploaded_by)
        # Their forwarding tasks commit with them, or not at all (outbox/record.py).
        record_new_images(images)


def _series_in_order_study(order: RadiologyOrder, series_uid: str) -> RadiologySeries | None:
    """The series with this UID if it is in the order's study, with that study (None otherwise:
    the caller then finds or creates each on its own)."""
    # No ORDER BY: series_uid is unique.
    found = list(
        RadiologySeries.objects.select_related("study")
        .filter(series_uid=series_uid, study__radiology_order=order)
        .order_by()[:1]
    )
    return found[0] if found else None


def _audit_confirmations(entries: list[Prepared], uploaded_by: AbstractBaseUser | None) -> None:
    """One audit event for each file let in on a tech's word that it belongs to its order though
    it names another patient: who, which file, which order, and the reason they gave."""
    confirmed = [entry for entry in entries if entry.identity is not None and entry.identity.confirmed]
    if not confirmed:
        return
    AuditEvent.objects.bulk_create(
        AuditEvent(
            user=uploaded_by,
            username=uploaded_by.get_username() if uploaded_by is not None else "",
            role=role_of(uploaded_by),
            channel=entry.item.confirmation.channel if entry.item.confirmation else "",
            action=AuditEvent.IdentityAction.CONFIRM_MISMATCH,
            route="ingest",
            method="",
            order_id=entry.order.pk,
            study_uid=entry.uids.study_uid,
            series_uid=entry.uids.series_uid,
            image_uid=entry.uids.image_uid,
            status_code=201,
            outcome=AuditEvent.Outcome.ALLOWED,
            reason=entry.identity.reason,  # type: ignore[union-attr]
        )
        for entry in confirmed
    )


def store_new_object(*, file_content: bytes | IO[bytes], file_key: str, content_type: str) -> str:
    """Write bytes (or a readable stream) to a new object; return the key actually used.

    Never overwrites: if `file_key` is taken the store picks a free key beside it. Bytes go
    through a spooled buffer, as the store takes a stream.
    """
    if isinstance(file_content, bytes | bytearray):
        with tempfile.SpooledTemporaryFile(max_size=storage.STREAM_CHUNK_SIZE) as buffer:
            buffer.write(file_content)
            buffer.seek(0)
            return storage.save_new_object(file_key, buffer, content_type=content_type)
    return storage.save_new_object(file_key, file_content, content_type=content_type)
