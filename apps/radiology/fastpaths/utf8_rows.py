"""A queryset's rows with its text columns as the UTF-8 bytes the database sent.

Used by the metadata of a series or study (imagefiles/stored_header.stored_texts): ~23 MB of
stored DICOM JSON text for a 2,000-instance series, sent as bytes. psycopg2 decodes every text
value into a str, which the answer then encodes back into the same bytes; with psycopg2's BYTES
typecaster on the query's cursor it hands over the server's bytes (UTF-8: the connection's
client encoding, settings.py) and both passes go, ~20 ms of a first request's ~100 ms in the
view on the 2-core server.

Undocumented but long-stable: `QuerySet.query.sql_with_params()` (the SQL the ORM would run)
and Django's `CursorWrapper.cursor` (the driver's cursor, to register the typecaster on that
cursor alone); documented-underscored: `Model._meta` (which fields are plain); documented:
psycopg2's `extensions.register_type(BYTES, cursor)`. Checked against Django 5.2.19 and psycopg2
2.9.13: the rows equal the ORM's with their text encoded (tests/fastpaths/test_utf8_rows.py).
Other databases, or a field that needs the ORM's converters (anything but integers and text):
the ORM's rows, their str values encoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db import connections
from django.db.models import QuerySet

# The fields whose values the driver gives as they are (no ORM converter on PostgreSQL).
PLAIN_FIELDS = frozenset({"AutoField", "BigAutoField", "IntegerField", "BigIntegerField", "CharField", "TextField"})
FETCH_ROWS = 100  # as the ORM's chunks (GET_ITERATOR_CHUNK_SIZE): the driver already holds the result


def utf8_values(queryset: QuerySet[Any], *fields: str) -> Iterator[tuple[Any, ...]]:
    """The rows of `queryset.values_list(*fields)`, each str value as UTF-8 bytes."""
    rows = queryset.values_list(*fields)
    connection = connections[rows.db]
    if connection.vendor == "postgresql" and _plain(rows, fields):
        import psycopg2.extensions  # only on PostgreSQL, whose engine loads it anyway

        sql, params = rows.query.sql_with_params()
        with connection.cursor() as cursor:
            psycopg2.extensions.register_type(psycopg2.extensions.BYTES, cursor.cursor)
            cursor.execute(sql, params)
            while batch := cursor.fetchmany(FETCH_ROWS):
                yield from batch
        return
    for row in rows:
        yield tuple(value.encode() if isinstance(value, str) else value for value in row)


def _plain(rows: QuerySet[Any], fields: tuple[str, ...]) -> bool:
    """Whether every field named is an integer or text field (no converter between driver and row)."""
    for path in fields:
        model, field = rows.model, None
        for name in path.split("__"):
            if model is None:
                return False
            field = model._meta.pk if name == "pk" else model._meta.get_field(name)
            model = field.related_model if field.is_relation else None
        if field is None or model is not None or field.get_internal_type() not in PLAIN_FIELDS:
            return False
    return True
