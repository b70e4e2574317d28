"""One instance per call, as the DICOM listener ingests (a sender waits for each answer, so nothing batches).

What a later instance of a series already stored under its order costs in queries, and that
the shortcut taken for it (study and series read in one query, on what was known before the
transaction) gives the same rows and outcomes as the long way, also when what was known is wrong.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.radiology.errors import SeriesConflict, StudyConflict, StudyMismatch
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.ingest import resolve
from apps.radiology.ingest.pipeline import Arrival, IngestItem, IngestResult, ingest_images
from apps.radiology.ingest.spool import SPOOL_PREFIX, StagedFile
from apps.radiology.models import (
    PatientIdentityCheck,
    RadiologyImage,
    RadiologyOrder,
    RadiologySeries,
    RadiologyStudy,
    UnmatchedImage,
)
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.factories import read_stored, relabelled, row_counts

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")

# A later instance of a stored series, its file naming its order's patient: which images are
# stored (1), the order's study UID and patient (1), the series' study (1); then the transaction
# (a savepoint and its release here, as the test runs inside one) with the order lock, the series
# and its study (1) and the image row (an INSERT; on PostgreSQL the query for its id, then a
# COPY). Before the merged checks and this shortcut: 14 (15 on PostgreSQL).
LATER_INSTANCE_QUERIES = 8 if connection.vendor != "postgresql" else 9


def _staged(content: bytes) -> StagedFile:
    """The file as the listener hands it over: in the staging directory, hashed."""
    staging = Path(settings.RADIOLOGY_STAGING_DIR)
    staging.mkdir(parents=True, exist_ok=True)
    path = staging / f"{SPOOL_PREFIX}test-{uuid.uuid4().hex}"
    path.write_bytes(content)
    return StagedFile(path=path, size=len(content), checksum=hashlib.sha256(content).hexdigest())


def _ingest_one(order: RadiologyOrder, content: bytes) -> Any:
    staged = _staged(content)
    try:
        (outcome,) = ingest_images(
            [IngestItem(order=order, stream=None, filename=None, staged=staged)],
            uploaded_by=None,
            arrival=Arrival("dicom"),
        )
    finally:
        staged.path.unlink(missing_ok=True)
    return outcome


def _instance(order: RadiologyOrder, *, study_uid: str, series_uid: str, number: int) -> bytes:
    return relabelled(
        "CT_small.dcm",
        study_uid=study_uid,
        series_uid=series_uid,
        instance_number=number,
        PatientID=order.visit.patient.hospital_number,
    )


@pytest.mark.django_db
def test_a_later_instance_of_a_stored_series_takes_few_queries(radiology_store: str, make_order: MakeOrder) -> None:
    order = make_order()
    study_uid, series_uid = generate_uid(), generate_uid()
    first = _ingest_one(order, _instance(order, study_uid=study_uid, series_uid=series_uid, number=1))
    assert isinstance(first, IngestResult) and first.created
    content = _instance(order, study_uid=study_uid, series_uid=series_uid, number=2)
    order = RadiologyOrder.objects.get(pk=order.pk)  # as the listener finds it: no related rows loaded

    with CaptureQueriesContext(connection) as queries:
        outcome = _ingest_one(order, content)

    assert len(queries) == LATER_INSTANCE_QUERIES, [query["sql"][:120] for query in queries]
    assert isinstance(outcome, IngestResult) and outcome.created
    image = outcome.image
    with CaptureQueriesContext(connection) as after:
        # What the listener's audit reads of the outcome: nothing loaded lazily.
        assert (image.series.series_uid, image.series.study.study_uid) == (series_uid, study_uid)
        assert image.series.study.radiology_order_id == order.pk
        assert image.series_id == first.image.series_id
    assert len(after) == 0
    assert (image.instance_number, image.patient_identity) == (2, PatientIdentityCheck.MATCHED)
    assert read_stored(image.file_key) == content
    assert row_counts() == (1, 1, 2)


@pytest.mark.django_db
def test_a_stale_hint_that_the_series_is_known_still_creates_the_series(
    radiology_store: str, make_order: MakeOrder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever was known before the transaction, commit finds or creates the rows itself."""
    monkeypatch.setattr(resolve.KnownStudies, "series_in_order_study", lambda *_args: True)
    order = make_order()
    study_uid = generate_uid()
    first_series, second_series = generate_uid(), generate_uid()

    outcomes = [
        _ingest_one(order, _instance(order, study_uid=study_uid, series_uid=first_series, number=1)),
        _ingest_one(order, _instance(order, study_uid=study_uid, series_uid=second_series, number=1)),
        _ingest_one(order, _instance(order, study_uid=study_uid, series_uid=first_series, number=2)),
    ]

    assert all(isinstance(outcome, IngestResult) and outcome.created for outcome in outcomes)
    assert [(o.image.series.series_uid, o.image.instance_number) for o in outcomes] == [
        (first_series, 1),
        (second_series, 1),
        (first_series, 2),
    ]
    assert sorted(RadiologySeries.objects.filter(study__radiology_order=order).values_list("series_uid")) == sorted(
        [(first_series,), (second_series,)]
    )
    assert row_counts() == (1, 2, 3)


@pytest.mark.django_db
def test_one_at_a_time_a_file_of_another_study_or_another_orders_series_is_refused(
    radiology_store: str, make_order: MakeOrder
) -> None:
    order, other = make_order(), make_order()
    study_uid, series_uid = generate_uid(), generate_uid()
    other_study, other_series = generate_uid(), generate_uid()
    stored = [
        _ingest_one(order, _instance(order, study_uid=study_uid, series_uid=series_uid, number=1)),
        _ingest_one(other, _instance(other, study_uid=other_study, series_uid=other_series, number=1)),
    ]
    assert all(isinstance(outcome, IngestResult) for outcome in stored)

    another_study = _ingest_one(order, _instance(order, study_uid=generate_uid(), series_uid=series_uid, number=2))
    others_series = _ingest_one(order, _instance(order, study_uid=study_uid, series_uid=other_series, number=2))

    assert isinstance(another_study, StudyMismatch)
    assert isinstance(others_series, SeriesConflict)
    assert row_counts() == (2, 2, 2)
    assert RadiologyImage.objects.filter(series__series_uid=other_series).count() == 1


@pytest.mark.django_db
def test_the_orders_study_made_by_another_request_between_the_reads_is_no_conflict(
    radiology_store: str, make_order: MakeOrder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two first instances of a new study arrive at once (two forwarded uploads, two C-STOREs).

    This one read its order's row before the other committed the study, and the study UIDs after.
    The UID is taken, but by this order's own study: the file joins it. It was refused as
    StudyConflict (and a forwarded or DICOM-network file held in the unmatched inbox).
    The interleaving is forced here: the other request's commit runs right after the orders
    are read, as it did once in the two-server forwarding test on PostgreSQL.
    """
    order = make_order()
    study_uid, series_uid = generate_uid(), generate_uid()
    read_orders = resolve.KnownOrders.of.__func__
    others: list[Any] = []

    def orders_then_the_other_request_commits(cls: type[resolve.KnownOrders], *args: Any) -> resolve.KnownOrders:
        known = read_orders(cls, *args)
        if not others:  # this request's read: the other one runs whole before it goes on
            others.append(None)
            others[0] = _ingest_one(order, _instance(order, study_uid=study_uid, series_uid=series_uid, number=1))
        return known

    monkeypatch.setattr(resolve.KnownOrders, "of", classmethod(orders_then_the_other_request_commits))
    outcome = _ingest_one(order, _instance(order, study_uid=study_uid, series_uid=series_uid, number=2))

    assert isinstance(others[0], IngestResult) and others[0].created
    assert isinstance(outcome, IngestResult) and outcome.created
    assert (outcome.image.series.study.study_uid, outcome.image.instance_number) == (study_uid, 2)
    assert outcome.image.series.study.radiology_order_id == order.pk
    assert sorted(
        RadiologyImage.objects.filter(series__study__radiology_order=order).values_list("instance_number", flat=True)
    ) == [1, 2]
    assert row_counts() == (1, 1, 2)
    assert UnmatchedImage.objects.count() == 0


@pytest.mark.django_db
def test_a_study_uid_of_another_order_is_still_a_conflict(radiology_store: str, make_order: MakeOrder) -> None:
    order, other = make_order(), make_order()
    study_uid = generate_uid()
    stored = _ingest_one(other, _instance(other, study_uid=study_uid, series_uid=generate_uid(), number=1))
    assert isinstance(stored, IngestResult)

    refused = _ingest_one(order, _instance(order, study_uid=study_uid, series_uid=generate_uid(), number=1))

    assert isinstance(refused, StudyConflict)
    assert row_counts() == (1, 1, 1)
    assert not RadiologyStudy.objects.filter(radiology_order=order).exists()
