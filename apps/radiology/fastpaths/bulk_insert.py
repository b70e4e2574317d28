"""Inserting many new rows at once: PostgreSQL's COPY where it runs, bulk_create elsewhere.

A STOW-RS batch inserts 50 image rows of ~25 KB each (the header as jsonb and as text).
As one INSERT, psycopg2 quotes every value into ~1.2 MB of SQL that PostgreSQL then lexes:
~7 ms of this process and ~5 ms of the server per batch, on top of parsing the jsonb. COPY
sends the same values as tab-separated text, which both sides handle several times faster
(measured with bench/compare_orthanc.py: ~10 ms less per 50-instance batch).

The values are the ones bulk_create would send: each field's pre_save (auto_now_add, ...)
and get_db_prep_save, JSON through the field's own encoder. The primary keys are taken from
the table's sequence first (one query), so the objects come back with their pk set, as
bulk_create sets them on PostgreSQL. Errors (a unique violation, a failed check) are
Django's database errors, as from bulk_create, and like it, this runs in the caller's
transaction.

Making the lines is pure Python that holds the GIL: ~30 us per audit event, a few ms for a
group of them or for a STOW-RS batch. A thread waiting for the GIL (another request of the same
app server worker) gets it only when the holder lets go, which Python forces only after its
5 ms switch interval; so every ROWS_PER_GIL_RELEASE rows the GIL is let go (time.sleep(0)).
Without that, the audit writer's group every 100 ms held up the request that wanted the GIL
meanwhile by ~5 ms: p99 of frames at one connection 6.0 ms against 1.7 ms with no audit
writes (PACS-lite in-process on PostgreSQL, bench/compare_orthanc.py's frames).

Django API beyond the documented (checked against Django 5.2.19; the names have been stable
since Django 1.6, so there is no version pin, but test_private_api_versions.py checks them):
`connection.ops.quote_name` and `connection.wrap_database_errors` (the context manager
Django's own cursors use to turn driver errors into django.db errors). `Model._state`
(`adding`, `db`) is underscored but documented in the Model instance reference. COPY itself is
psycopg2's `copy_expert`, reached through Django's cursor wrapper.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from django.db import connections, router
from django.db.models import JSONField, Model
from psycopg2.extras import Inet

# COPY text format: these characters are escaped (str.replace: ~2x faster than translate here).
ROWS_PER_GIL_RELEASE = 4
_COPY_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))


def insert_new(objs: Sequence[Model]) -> None:
    """INSERT `objs` (new rows of one model, pk unset) as bulk_create does, by COPY on PostgreSQL."""
    if not objs:
        return
    model = type(objs[0])
    connection = connections[router.db_for_write(model)]
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create(objs)  # type: ignore[attr-defined]
        return
    opts = model._meta
    pk = opts.pk
    fields = [field for field in opts.concrete_fields if field is not pk]
    columns = ", ".join(connection.ops.quote_name(field.column) for field in (pk, *fields))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
            [opts.db_table, pk.column, len(objs)],
        )
        keys = [row[0] for row in cursor.fetchall()]
        lines = []
        for index, (obj, key) in enumerate(zip(objs, keys, strict=True)):
            if index and not index % ROWS_PER_GIL_RELEASE:
                time.sleep(0)  # lets a thread waiting for the GIL run (see the module docstring)
            values = [str(key)]
            for field in fields:
                value = field.pre_save(obj, True)
                if isinstance(field, JSONField):
                    values.append(_copy_text(None if value is None else json.dumps(value, cls=field.encoder)))
                else:
                    values.append(_copy_text(field.get_db_prep_save(value, connection)))
            lines.append("\t".join(values))
        table = connection.ops.quote_name(opts.db_table)
        with connection.wrap_database_errors:
            cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN", io.StringIO("\n".join(lines) + "\n"))
    for obj, key in zip(objs, keys, strict=True):
        obj.pk = key
        obj._state.adding = False
        obj._state.db = connection.alias


def _copy_text(value: Any) -> str:
    """One value in COPY's text format (NULL is \\N; backslash, tab and line ends escaped)."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, (int, float, decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, Inet):  # GenericIPAddressField's value on PostgreSQL
        return _copy_text(value.addr)
    if isinstance(value, str):
        for character, escaped in _COPY_ESCAPES:
            if character in value:
                value = value.replace(character, escaped)
        return value
    raise TypeError(f"No COPY text for a {type(value).__name__} value.")
