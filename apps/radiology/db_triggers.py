"""The database triggers that keep images immutable and the audit trail append-only (no UPDATE, DELETE, TRUNCATE).

Migration 0002 creates them, but SQLite applies many schema changes by rebuilding the
table, which silently drops its triggers. A post_migrate hook re-creates them
(idempotently) so the guard survives any future migration on either database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.db import connections, transaction
from django.db.models import DateTimeField

GUARDED_COLUMNS = ("series_id", "image_uid", "file_key", "file_size", "checksum")
TABLE = "radiology_radiologyimage"

POSTGRES_SQL = f"""
CREATE OR REPLACE FUNCTION radiology_image_immutable() RETURNS trigger AS $$
BEGIN
    IF {" OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in GUARDED_COLUMNS)} THEN
        RAISE EXCEPTION 'radiology images are immutable' USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS radiology_image_immutable ON {TABLE};
CREATE TRIGGER radiology_image_immutable BEFORE UPDATE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION radiology_image_immutable();
"""
SQLITE_STATEMENTS = (
    "DROP TRIGGER IF EXISTS radiology_image_immutable",
    f"""
CREATE TRIGGER radiology_image_immutable BEFORE UPDATE OF {", ".join(GUARDED_COLUMNS)} ON {TABLE}
FOR EACH ROW WHEN {" OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in GUARDED_COLUMNS)}
BEGIN
    SELECT RAISE(ABORT, 'radiology images are immutable');
END
""",
)


AUDIT_TABLE = "radiology_auditevent"
# The one way audit rows may be removed: while a row here names a time after the event's
# (DELETE), or names no end at all (TRUNCATE on PostgreSQL, which row triggers never see).
# Deliberately not a Django model: `flush` must not empty it and nothing in the app may write it.
#
# A permit is only ever written inside a transaction that also removes it before committing
# (`audit_delete_permit` below; the flush command puts both statements around its own in the one
# transaction Django runs them in). Neither database lets another connection read uncommitted
# rows, so no other connection ever sees a permit, and a process killed half-way (even SIGKILL)
# leaves nothing behind: its transaction, permit included, is rolled back. (A permit written in
# autocommit would be committed at once, seen by every connection and outlive a crash: no code
# here writes one that way.)
#
# Why a table and not PostgreSQL's `SET LOCAL` of a custom setting: SQLite has no such settings,
# and one mechanism on both databases is one thing to reason about and test; the table, used
# only as above, is just as private to its transaction. (Anyone who can write raw SQL can also
# drop a trigger; the guard stops the app, a bug or a slip in a shell, and the archive command
# leaves its own event behind.)
AUDIT_PERMIT_TABLE = "radiology_audit_delete_permit"
# The `before` of a permit for every row: the flush's. Literal SQL, for the statements flush runs.
_PERMIT_ALL = {"postgresql": "'infinity'", "sqlite": "'9999-12-31 23:59:59'"}
AUDIT_POSTGRES_SQL = f"""
CREATE TABLE IF NOT EXISTS {AUDIT_PERMIT_TABLE} (before timestamp with time zone NOT NULL);
CREATE OR REPLACE FUNCTION radiology_audit_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (SELECT 1 FROM {AUDIT_PERMIT_TABLE} WHERE OLD.at < before) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit events are append-only' USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS radiology_audit_append_only ON {AUDIT_TABLE};
CREATE TRIGGER radiology_audit_append_only BEFORE UPDATE OR DELETE ON {AUDIT_TABLE}
    FOR EACH ROW EXECUTE FUNCTION radiology_audit_append_only();
CREATE OR REPLACE FUNCTION radiology_audit_no_truncate() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM {AUDIT_PERMIT_TABLE} WHERE before = 'infinity') THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'audit events are append-only' USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS radiology_audit_no_truncate ON {AUDIT_TABLE};
CREATE TRIGGER radiology_audit_no_truncate BEFORE TRUNCATE ON {AUDIT_TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION radiology_audit_no_truncate();
"""  # noqa: S608 (constant table names)
AUDIT_POSTGRES_DROP_TRUNCATE_GUARD_SQL = f"""
DROP TRIGGER IF EXISTS radiology_audit_no_truncate ON {AUDIT_TABLE};
DROP FUNCTION IF EXISTS radiology_audit_no_truncate();
"""
AUDIT_SQLITE_STATEMENTS = (
    f"CREATE TABLE IF NOT EXISTS {AUDIT_PERMIT_TABLE} (before datetime NOT NULL)",
    "DROP TRIGGER IF EXISTS radiology_audit_append_only",
    f"""
CREATE TRIGGER radiology_audit_append_only BEFORE UPDATE ON {AUDIT_TABLE}
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END
""",
    "DROP TRIGGER IF EXISTS radiology_audit_no_delete",
    # Django stores SQLite datetimes as ISO text in UTC, which compares in time order.
    f"""
CREATE TRIGGER radiology_audit_no_delete BEFORE DELETE ON {AUDIT_TABLE}
FOR EACH ROW WHEN NOT EXISTS (SELECT 1 FROM {AUDIT_PERMIT_TABLE} WHERE OLD.at < before)
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END
""",  # noqa: S608 (constant table names)
)
# The triggers as migration 0005 left them (UPDATE refused, DELETE not): the reverse of 0010.
AUDIT_POSTGRES_UPDATE_ONLY_SQL = f"""
{AUDIT_POSTGRES_DROP_TRUNCATE_GUARD_SQL}
CREATE OR REPLACE FUNCTION radiology_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only' USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS radiology_audit_append_only ON {AUDIT_TABLE};
CREATE TRIGGER radiology_audit_append_only BEFORE UPDATE ON {AUDIT_TABLE}
    FOR EACH ROW EXECUTE FUNCTION radiology_audit_append_only();
DROP TABLE IF EXISTS {AUDIT_PERMIT_TABLE};
"""
AUDIT_SQLITE_UPDATE_ONLY_STATEMENTS = (
    "DROP TRIGGER IF EXISTS radiology_audit_no_delete",
    f"DROP TABLE IF EXISTS {AUDIT_PERMIT_TABLE}",
)


def ensure_immutability_triggers(using: str = "default", **_kwargs: Any) -> None:
    """(Re)create the triggers on the database `using` for the tables that exist."""
    connection = connections[using]
    tables = set(connection.introspection.table_names())
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            if TABLE in tables:
                cursor.execute(POSTGRES_SQL)
            if AUDIT_TABLE in tables:
                cursor.execute(AUDIT_POSTGRES_SQL)
        elif connection.vendor == "sqlite":
            statements = (SQLITE_STATEMENTS if TABLE in tables else ()) + (
                AUDIT_SQLITE_STATEMENTS if AUDIT_TABLE in tables else ()
            )
            for statement in statements:
                cursor.execute(statement)


def drop_immutability_triggers(using: str = "default") -> None:
    """Remove the triggers (reverse of migration 0002)."""
    connection = connections[using]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"DROP TRIGGER IF EXISTS radiology_image_immutable ON {TABLE}")
            cursor.execute("DROP FUNCTION IF EXISTS radiology_image_immutable()")
        elif connection.vendor == "sqlite":
            cursor.execute("DROP TRIGGER IF EXISTS radiology_image_immutable")


def datetime_parameter(value: datetime, *, using: str = "default") -> Any:
    """An aware datetime as a raw SQL parameter, exactly as the ORM sends a DateTimeField's value.

    Passed as it is, an aware datetime would not do on SQLite, which stores datetimes as UTC
    text without an offset and compares them as text: "2026-02-01 00:00:00-05:00" does not sort
    with the stored "2026-02-01 03:00:00". The field's public get_db_prep_value gives the
    stored form on every database (UTC text on SQLite, the aware datetime on PostgreSQL).
    """
    return DateTimeField().get_db_prep_value(value, connections[using])


@contextmanager
def audit_delete_permit(*, before: datetime, using: str = "default") -> Iterator[None]:
    """A transaction in which audit events older than `before` may be DELETEd (the archive's).

    The permit is written and removed inside one transaction.atomic() (a savepoint if one is
    already open): an exception rolls it back, success removes it before the block ends.
    """
    connection = connections[using]
    with transaction.atomic(using=using), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {AUDIT_PERMIT_TABLE} (before) VALUES (%s)",  # noqa: S608 (a constant)
            [datetime_parameter(before, using=using)],
        )
        yield
        _end_permits(cursor)


def flush_permit_statements(using: str = "default") -> tuple[str, str] | None:
    """The SQL that opens and closes a permit for every row, to run around a flush's own statements.

    Django's flush runs its statement list in one transaction (execute_sql_flush), so placed
    first and last in that list the permit lives and dies inside it. None when the database has
    no permit table (no audit guard yet) or is neither PostgreSQL nor SQLite.
    """
    connection = connections[using]
    value = _PERMIT_ALL.get(connection.vendor)
    if value is None or AUDIT_PERMIT_TABLE not in connection.introspection.table_names():
        return None
    return (
        f"INSERT INTO {AUDIT_PERMIT_TABLE} (before) VALUES ({value})",  # noqa: S608 (constants)
        f"DELETE FROM {AUDIT_PERMIT_TABLE}",  # noqa: S608 (a constant)
    )


def _end_permits(cursor: Any) -> None:
    # Rows of other transactions are invisible here, so this removes this transaction's permit only.
    cursor.execute(f"DELETE FROM {AUDIT_PERMIT_TABLE}")  # noqa: S608 (a constant)


def drop_audit_truncate_guard(using: str = "default") -> None:
    """Remove PostgreSQL's TRUNCATE guard (reverse of migration 0012); SQLite has no TRUNCATE."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(AUDIT_POSTGRES_DROP_TRUNCATE_GUARD_SQL)


def restore_update_only_audit_trigger(using: str = "default") -> None:
    """The audit guard as before migration 0010: UPDATE refused, DELETE not (0010's reverse)."""
    connection = connections[using]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(AUDIT_POSTGRES_UPDATE_ONLY_SQL)
        elif connection.vendor == "sqlite":
            for statement in AUDIT_SQLITE_UPDATE_ONLY_STATEMENTS:
                cursor.execute(statement)
