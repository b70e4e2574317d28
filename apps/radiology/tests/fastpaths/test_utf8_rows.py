"""fastpaths/utf8_rows.py: a queryset's rows with text as UTF-8 bytes, equal to the ORM's rows encoded.

Runs on the suite's database: SQLite in the first half of `make test` (the ORM's rows, encoded),
PostgreSQL in the second (psycopg2's BYTES typecaster on the query's cursor).
"""

from __future__ import annotations

from typing import Any

import psycopg2.extensions
import pytest
from django.db import connection

from apps.radiology.fastpaths.utf8_rows import utf8_values
from apps.radiology.models import RadiologyImage, RadiologySeries
from apps.radiology.tests.factories import relabelled

pytestmark = pytest.mark.django_db


def encoded(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(value.encode() if isinstance(value, str) else value for value in row)


def test_the_rows_are_the_orms_with_their_text_as_utf8(
    order: Any, ingest_file: Any, django_assert_num_queries: Any
) -> None:
    first = ingest_file(order, "CT_small.dcm").image
    same_series = {"study_uid": first.series.study.study_uid, "series_uid": first.series.series_uid}
    second = ingest_file(order, relabelled("CT_small.dcm", instance_number=2, **same_series)).image
    RadiologySeries.objects.filter(pk=first.series_id).update(series_description="Tête — 頭部 ✓")
    images = RadiologyImage.objects.filter(pk__in=[first.pk, second.pk]).order_by("-pk")
    fields = ("pk", "image_uid", "series__series_uid", "series__series_description", "metadata_text")
    with django_assert_num_queries(1):
        rows = list(utf8_values(images, *fields))
    assert rows == [encoded(row) for row in images.values_list(*fields)]
    assert [row[3] for row in rows] == ["Tête — 頭部 ✓".encode()] * 2
    assert [type(value) for value in rows[0]] == [int, bytes, bytes, bytes, bytes]


def test_a_field_with_a_converter_takes_the_orms_rows(order: Any, ingest_file: Any) -> None:
    image = ingest_file(order, "CT_small.dcm").image
    images = RadiologyImage.objects.filter(pk=image.pk)
    (row,) = utf8_values(images, "pk", "image_uid", "created_at")
    assert row == (image.pk, image.image_uid.encode(), RadiologyImage.objects.get(pk=image.pk).created_at)


def test_the_typecaster_stays_on_the_querys_cursor(order: Any, ingest_file: Any) -> None:
    """Later queries on the same connection get str, as everywhere else in the app."""
    image = ingest_file(order, "CT_small.dcm").image
    list(utf8_values(RadiologyImage.objects.filter(pk=image.pk), "pk", "image_uid"))
    assert RadiologyImage.objects.values_list("image_uid", flat=True).get(pk=image.pk) == image.image_uid
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT 'x'::text")
            assert cursor.fetchone() == ("x",)
        assert psycopg2.extensions.string_types.get(25) is not psycopg2.extensions.BYTES
