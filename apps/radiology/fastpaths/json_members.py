"""Picking a few top-level members of a row's JSON column in the database, without loading the rest.

Used by the stored header (imagefiles/stored_header.py) for a row kept from before migration
0008, whose dozen pixel-description elements are not beside its frames: the views load images
with the header JSON deferred (~12 kB for a CT, decoded on every read), and loading it all to
read a dozen elements cost a first render ~0.6 ms, picking them in the database ~0.1 ms.

Plain SQL because Django's JSON key lookups take digit-only keys such as "00280100" for array
indexes (on SQLite at every level, on PostgreSQL at the top), and the ORM would add ~0.3 ms.
Undocumented but long-stable: `connection.ops.quote_name`; documented-underscored:
`Model._state` (the row's database), `Model._meta`. Checked against Django 5.2.19 with SQLite's
json_each / json_group_object and PostgreSQL's jsonb_each / jsonb_object_agg: the members
equal those picked from the loaded column (tests/dicomweb/test_rendered.py, a render of a row
without its kept pixel header). Other databases: None, and the caller loads the column.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django.db import connections, router
from django.db.models import Model


def select_json_members(instance: Model, field_name: str, keys: Iterable[str]) -> dict[str, Any] | None:
    """The members `keys` of the saved row's JSON column `field_name` (one query; JSON null
    members left out); None on a database this has no SQL for (the caller loads the column).

    Walks the object once with *_each, not one `->` per key: PostgreSQL would decompress a
    TOASTed value for each of them, twice the time. `keys` must be constants of the caller's
    (they are written into the SQL), never values from a request.
    """
    keys = tuple(keys)
    if not all(key.isascii() and key.isalnum() for key in keys):
        raise ValueError("JSON member names written into SQL must be letters and digits.")
    model = type(instance)
    connection = connections[instance._state.db or router.db_for_read(model, instance=instance)]
    if connection.vendor == "postgresql":
        each, aggregate = "jsonb_each", "jsonb_object_agg(key, value)::text"
    elif connection.vendor == "sqlite":
        each, aggregate = "json_each", "json_group_object(key, json(value))"
    else:
        return None
    meta = model._meta
    quote = connection.ops.quote_name
    table, column = quote(meta.db_table), quote(meta.get_field(field_name).column)
    wanted = ", ".join(f"'{key}'" for key in keys)
    sql = (
        f"SELECT {aggregate} FROM {table}, {each}({table}.{column})"  # noqa: S608 (constants only)
        f" WHERE {table}.{quote(meta.pk.column)} = %s AND key IN ({wanted})"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [instance.pk])
        row = cursor.fetchone()
    value = row[0] if row else None  # NULL: none of the keys (or no such row)
    members = json.loads(value) if isinstance(value, str) else value or {}
    return {key: member for key, member in members.items() if member is not None}
