"""Where a file belongs: its study, series and image UIDs, checked against the studies already
stored, and the study and series rows themselves (found, or created on first use).

Everything that decides which patient's study an image joins is here, so it is checked the
same way before any byte is written (KnownStudies) and when the rows are made
(create_study_for_order, create_series_for_study, under the order's row lock in commit.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.radiology.errors import MissingUID, SeriesConflict, StudyConflict, StudyMismatch, UIDMismatch
from apps.radiology.imagefiles.declared import DeclaredImage
from apps.radiology.imagefiles.dicom import ParsedImage
from apps.radiology.imagefiles.uids import generate_uid, uid_from_name, validate_uid
from apps.radiology.models import DICOM_MIME_TYPE, RadiologyOrder, RadiologySeries, RadiologyStudy


@dataclass(frozen=True)
class ResolvedUIDs:
    study_uid: str
    series_uid: str
    image_uid: str


def resolve_uids(parsed: ParsedImage, declared: DeclaredImage, *, order: RadiologyOrder, checksum: str) -> ResolvedUIDs:
    """The file's UIDs for DICOM (declared ones must agree); declared or derived for JPEG.

    A JPEG's missing UIDs are derived from the order and the bytes (its study is the order's
    study if it has one), so the same photo sent twice to one order is one image.
    """
    resolved: dict[str, str] = {}
    derived: dict[str, str] = {}
    if parsed.mime_type != DICOM_MIME_TYPE:
        # Only a JPEG needs the order's study UID: a DICOM file's ingest skips this query.
        order_study_uid = (
            RadiologyStudy.objects.filter(radiology_order=order).values_list("study_uid", flat=True).first()
        )
        derived = {
            "study_uid": order_study_uid or uid_from_name(f"order:{order.pk}:study"),
            "series_uid": uid_from_name(f"order:{order.pk}:jpeg:{checksum}:series"),
            "image_uid": uid_from_name(f"order:{order.pk}:jpeg:{checksum}:image"),
        }
    for name in ("study_uid", "series_uid", "image_uid"):
        from_file = getattr(parsed, name)
        from_client = getattr(declared, name)
        if from_client is not None:
            validate_uid(from_client, field=name)
        if parsed.mime_type == DICOM_MIME_TYPE:
            if from_file is None:
                raise MissingUID(f"The DICOM file has no {name}.")
            validate_uid(from_file, field=name)
            if from_client is not None and from_client != from_file:
                raise UIDMismatch(f"{name} sent does not match the file's.")
            resolved[name] = from_file
        else:
            resolved[name] = from_client or derived[name]
    return ResolvedUIDs(**resolved)


@dataclass(frozen=True)
class KnownOrders:
    """What a batch's checks need from each order's own row, in one query: the UID of the order's
    study (absent while it has none) and its patient's hospital number.

    The study is the order's one (a one-to-one) and the patient is the visit's, so both are one
    join away from the order row: asking for them together costs one query where the study
    check and the patient check used to ask one each.
    """

    study_uids: dict[int, str]
    patient_ids: dict[int, str]

    @classmethod
    def of(cls, orders: Iterable[RadiologyOrder]) -> KnownOrders:
        """What is known of these orders; no query for none."""
        order_ids = {order.pk for order in orders}
        if not order_ids:
            return cls({}, {})
        study_uids: dict[int, str] = {}
        patient_ids: dict[int, str] = {}
        # No ORDER BY: every row is one order's (pk, unique), read into dicts.
        rows = (
            RadiologyOrder.objects.filter(pk__in=order_ids)
            .order_by()
            .values_list("pk", "study__study_uid", "visit__patient__hospital_number")
        )
        for order_id, study_uid, hospital_number in rows:
            if study_uid is not None:
                study_uids[order_id] = study_uid
            patient_ids[order_id] = hospital_number
        return cls(study_uids, patient_ids)


class KnownStudies:
    """What the database says about a batch's orders, studies and series.

    Each order's study comes with the order row (KnownOrders); then one query for the series the
    files name, and one for their study UIDs only if some order has no study yet (a study UID
    can only be taken from under an order that has none to compare it with).
    """

    def __init__(
        self, order_studies: dict[int, str], study_orders: dict[str, int], series_studies: dict[str, str]
    ) -> None:
        self.order_studies = order_studies
        # study UID -> the order it belongs to, for the UIDs of files whose order had no study.
        self.study_orders = study_orders
        self.series_studies = series_studies

    @classmethod
    def of(cls, placed: Iterable[tuple[RadiologyOrder, ResolvedUIDs]], orders: KnownOrders) -> KnownStudies:
        """What is known of these (order, UIDs) pairs, given their orders' rows; no query for none."""
        placed = list(placed)
        if not placed:
            return cls({}, {}, {})
        order_studies = orders.study_uids
        # `check` reads study_orders only for an order with no study yet.
        unplaced_study_uids = {uids.study_uid for order, uids in placed if order.pk not in order_studies}
        series_uids = {uids.series_uid for _order, uids in placed}
        # No ORDER BY in either: UIDs are unique, and the rows are read into dicts.
        # Each study comes with its order: this query runs after the orders' rows were read, so a
        # study another request made for the same order in between is found here, and it is that
        # order's own study (commit.py finds it under the order lock), not a conflict.
        study_orders = (
            dict(
                RadiologyStudy.objects.filter(study_uid__in=unplaced_study_uids)
                .order_by()
                .values_list("study_uid", "radiology_order_id")
            )
            if unplaced_study_uids
            else {}
        )
        return cls(
            order_studies,
            study_orders,
            dict(
                RadiologySeries.objects.filter(series_uid__in=series_uids)
                .order_by()
                .values_list("series_uid", "study__study_uid")
            ),
        )

    def check(self, order: RadiologyOrder, uids: ResolvedUIDs) -> None:
        """Refuse, before any byte is written, an image that belongs to another study or order."""
        order_study_uid = self.order_studies.get(order.pk)
        if order_study_uid is not None and order_study_uid != uids.study_uid:
            raise StudyMismatch()
        if order_study_uid is None and self.study_orders.get(uids.study_uid, order.pk) != order.pk:
            raise StudyConflict()  # the study UID is another order's
        series_study_uid = self.series_studies.get(uids.series_uid)
        if series_study_uid is not None and series_study_uid != uids.study_uid:
            raise SeriesConflict()

    def series_in_order_study(self, order: RadiologyOrder, uids: ResolvedUIDs) -> bool:
        """Whether, when this was asked, the order's study was this file's and held its series
        already: the usual case of a study's second and later instances. Only a hint for
        commit.py, which then reads study and series in one query (and falls back if it is stale)."""
        study_uid = self.order_studies.get(order.pk)
        return study_uid is not None and study_uid == uids.study_uid == self.series_studies.get(uids.series_uid)


def create_study_for_order(
    *,
    radiology_order: RadiologyOrder,
    study_uid: str | None = None,
    study_description: str = "",
    modality: str = "",
    study_date: dt.date | None = None,
    **extra: Any,
) -> RadiologyStudy:
    """Return the order's study, creating it (with a patient snapshot) on first use.

    An order has exactly one study: asking for another study UID is StudyMismatch, and
    a study UID that already belongs to another order is StudyConflict.
    """
    if study_uid is not None:
        validate_uid(study_uid, field="study_uid")
    existing = RadiologyStudy.objects.filter(radiology_order=radiology_order).first()
    if existing is not None:
        if study_uid is not None and existing.study_uid != study_uid:
            raise StudyMismatch()
        return existing
    study_uid = study_uid or generate_uid()
    if RadiologyStudy.objects.filter(study_uid=study_uid).exists():
        raise StudyConflict()
    patient = radiology_order.visit.patient
    try:
        with transaction.atomic():
            return RadiologyStudy.objects.create(
                radiology_order=radiology_order,
                study_uid=study_uid,
                study_description=study_description or radiology_order.exam_requested,
                modality=modality or radiology_order.modality,
                study_date=study_date or timezone.localdate(),
                accession_number=extra.pop("accession_number", "") or radiology_order.accession_number,
                patient_name=patient.full_name,
                patient_dicom_name=patient.dicom_name,
                patient_id=patient.hospital_number,
                patient_birth_date=patient.date_of_birth,
                patient_sex=patient.sex,
                **extra,
            )
    except IntegrityError:
        # Another request created the order's study (or took the UID) a moment ago.
        existing = RadiologyStudy.objects.filter(radiology_order=radiology_order).first()
        if existing is not None and existing.study_uid == study_uid:
            return existing
        if existing is not None:
            raise StudyMismatch() from None
        raise StudyConflict() from None


def claim_source_clinic(study: RadiologyStudy, source_clinic: str) -> None:
    """Record the forwarding clinic that sent a file into `study`, if the study names none yet.

    The first clinic to send into a study keeps it: a study made here (or by another clinic)
    before a clinic's file joined it is not renamed after each sender. One UPDATE, only when
    there is something to record.
    """
    if not source_clinic or study.source_clinic:
        return
    source_clinic = source_clinic[: RadiologyStudy._meta.get_field("source_clinic").max_length]
    RadiologyStudy.objects.filter(pk=study.pk, source_clinic="").update(
        source_clinic=source_clinic, updated_at=timezone.now()
    )
    study.source_clinic = source_clinic


def create_series_for_study(
    *,
    study: RadiologyStudy,
    series_uid: str | None = None,
    series_number: int | None = None,
    series_description: str = "",
    modality: str = "",
    **extra: Any,
) -> RadiologySeries:
    """Return the series with this UID in the study, creating it if new.

    A series UID already used by another study is SeriesConflict: a series never
    moves between studies (that would move a patient's images to another patient).
    """
    if series_uid is not None:
        validate_uid(series_uid, field="series_uid")
    else:
        series_uid = generate_uid()
    try:
        # No savepoint of its own around this: get_or_create creates in one (its own atomic), so
        # a unique violation leaves the caller's transaction usable; the lookup needs none.
        series, _created = RadiologySeries.objects.get_or_create(
            series_uid=series_uid,
            defaults={
                "study": study,
                "series_number": series_number,
                "series_description": series_description,
                "modality": modality or study.modality,
                **extra,
            },
        )
    except IntegrityError:
        series = RadiologySeries.objects.get(series_uid=series_uid)
    if series.study_id != study.pk:
        raise SeriesConflict()
    return series
