"""bulk_insert.insert_new: the rows bulk_create would write (COPY on PostgreSQL, bulk_create elsewhere)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from apps.radiology.fastpaths import bulk_insert
from apps.radiology.fastpaths.bulk_insert import insert_new
from apps.radiology.fastpaths.encoded_json import EncodedJSON
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import AuditEvent, RadiologyImage, RadiologySeries
from apps.radiology.tests.trust_helpers import ingest_study

pytestmark = pytest.mark.django_db

# Values COPY's text format must escape or mark: tab, line ends, backslashes, quotes, non-ASCII.
AWKWARD = 'tab\there\nline\r\nback\\slash \\N "quoted" \u00e9\u4e2d'


def new_image(series: RadiologySeries, number: int, **values: Any) -> RadiologyImage:
    uid = generate_uid()
    fields: dict[str, Any] = {
        "series": series,
        "image_uid": uid,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "instance_number": number,
        "rows": 128,
        "columns": 128,
        "file_key": f"radiology/test/{uid}/x.dcm",
        "filename": f"{number}.dcm",
        "file_size": 1000 + number,
        "mime_type": "application/dicom",
        "checksum": "ab" * 32,
        "image_metadata": {"00100010": {"vr": "PN", "Value": [{"Alphabetic": AWKWARD}]}},
        "pixel_data": {"offset": 100, "frames": [[1, 2]]},
        "bulk_data": {},
        "metadata_text": AWKWARD,
        **values,
    }
    return RadiologyImage(**fields)


def stored_values(pks: list[int]) -> list[dict[str, Any]]:
    rows = RadiologyImage.objects.filter(pk__in=pks).order_by("pk").values()
    return [{name: value for name, value in row.items() if name not in ("id", "created_at")} for row in rows]


def test_copy_writes_exactly_what_bulk_create_writes(make_order: Any) -> None:
    series = ingest_study(make_order(), images=1).series
    odd = {"instance_number": None, "rows": None, "uploaded_by": None, "bulk_data": {"x": [None, True, 1.5]}}
    by_copy = [
        new_image(series, 1),
        new_image(series, 2, **odd),
        new_image(series, 3, image_metadata=EncodedJSON({"a": AWKWARD})),
    ]
    by_orm = [
        new_image(series, 1),
        new_image(series, 2, **odd),
        new_image(series, 3, image_metadata=EncodedJSON({"a": AWKWARD})),
    ]

    with CaptureQueriesContext(connection) as queries:
        insert_new(by_copy)
    RadiologyImage.objects.bulk_create(by_orm)

    assert all(image.pk is not None and not image._state.adding for image in by_copy)
    assert len({image.pk for image in by_copy + by_orm}) == 6
    copied, created = stored_values([image.pk for image in by_copy]), stored_values([image.pk for image in by_orm])
    for row in copied + created:
        row.pop("image_uid"), row.pop("file_key")
    assert copied == created
    assert copied[0]["metadata_text"] == AWKWARD
    assert copied[2]["image_metadata"] == {"a": AWKWARD}
    created_at = RadiologyImage.objects.filter(pk__in=[i.pk for i in by_copy]).values_list("created_at", flat=True)
    assert all(value is not None for value in created_at)
    if connection.vendor == "postgresql":  # one query for the ids, then the COPY
        assert [query["sql"].split(" ")[0] for query in queries.captured_queries] == ["SELECT", "COPY"]
    else:
        assert [query["sql"].split(" ")[0] for query in queries.captured_queries] == ["INSERT"]


def test_a_row_the_database_refuses_fails_the_whole_insert_with_djangos_error(make_order: Any) -> None:
    stored = ingest_study(make_order(), images=1)
    taken = new_image(stored.series, 2, image_uid=stored.image.image_uid)

    with pytest.raises(IntegrityError), transaction.atomic():
        insert_new([new_image(stored.series, 3), taken])

    assert RadiologyImage.objects.count() == 1


def test_nothing_to_insert_makes_no_query() -> None:
    with CaptureQueriesContext(connection) as queries:
        insert_new([])
    assert queries.captured_queries == []


def audit_event(number: int) -> AuditEvent:
    return AuditEvent(
        at=dt.datetime(2026, 12, 7, 13, 0, number, tzinfo=dt.UTC),
        username=AWKWARD,
        role="doctor",
        channel="dicomweb",
        action="read",
        route="dicomweb-frames",
        method="GET",
        study_uid="1.2.3",
        client_address="2001:db8::1" if number % 2 else "192.0.2.7",
        status_code=200,
        outcome="allowed",
    )


def test_audit_events_copy_as_bulk_create_writes_them_addresses_and_times_included() -> None:
    by_copy, by_orm = [audit_event(n) for n in range(3)], [audit_event(n) for n in range(3)]

    insert_new(by_copy)
    AuditEvent.objects.bulk_create(by_orm)

    def rows(events: list[AuditEvent]) -> list[dict[str, Any]]:
        stored = AuditEvent.objects.filter(pk__in=[event.pk for event in events]).order_by("pk").values()
        return [{name: value for name, value in row.items() if name != "id"} for row in stored]

    assert rows(by_copy) == rows(by_orm)
    assert [(row["at"].second, row["client_address"]) for row in rows(by_copy)] == [
        (0, "192.0.2.7"),
        (1, "2001:db8::1"),
        (2, "192.0.2.7"),
    ]


def test_making_the_rows_lets_go_of_the_gil_every_few_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread of the same worker waiting for the GIL gets it between rows, not after them all."""
    pauses: list[float] = []
    monkeypatch.setattr(bulk_insert.time, "sleep", pauses.append)
    count = 2 * bulk_insert.ROWS_PER_GIL_RELEASE + 1

    insert_new([audit_event(n) for n in range(count)])

    assert AuditEvent.objects.count() == count
    assert pauses == ([0, 0] if connection.vendor == "postgresql" else [])  # elsewhere: bulk_create
