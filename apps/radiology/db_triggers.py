"""The database triggers that keep images immutable and the audit trail append-only (no UPDATE, no DELETE).

Migration 0002 creates them, but SQLite applies many schema changes by rebuilding the
table, which silently drops its triggers. A post_migrate hook re-creates them
(idempotently) so the guard survives any future migration on either database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connections

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
# The one way an audit row may be deleted: while a row here names a time after the event's. The
# archive command (archive_radiology_audit) adds one inside its own transaction, deletes the
# events it has just exported, and removes it before committing, so no other connection ever
# sees it. Deliberately not a Django model: `flush` must not empty it and nothing in the app
# may write it. (Anyone who can write raw SQL can also drop a trigger; the guard stops the
# app, a bug or a slip in a shell, and the archive leaves its own event behind.)
AUDIT_PERMIT_TABLE = "radiology_audit_delete_permit"
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
"""  # noqa: S608 (constant table names)
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


def allow_audit_deletes_in_transaction(*, before: datetime | None, using: str = "default") -> None:
    """Let this transaction delete audit events older than `before` (None: all of them).

    Only for the archive command and the test database flush, inside transaction.atomic();
    pair it with `end_audit_deletes` before the transaction commits.
    """
    connection = connections[using]
    with connection.cursor() as cursor:
        if before is None:
            value = "infinity" if connection.vendor == "postgresql" else "9999-12-31 23:59:59"
        else:
            value = connection.ops.adapt_datetimefield_value(before)
        cursor.execute(f"INSERT INTO {AUDIT_PERMIT_TABLE} (before) VALUES (%s)", [value])  # noqa: S608


def end_audit_deletes(using: str = "default") -> None:
    """Remove every delete permit (see allow_audit_deletes_in_transaction)."""
    with connections[using].cursor() as cursor:
        cursor.execute(f"DELETE FROM {AUDIT_PERMIT_TABLE}")  # noqa: S608 (a constant)


def restore_update_only_audit_trigger(using: str = "default") -> None:
    """The audit guard as before migration 0010: UPDATE refused, DELETE not (0010's reverse)."""
    connection = connections[using]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(AUDIT_POSTGRES_UPDATE_ONLY_SQL)
        elif connection.vendor == "sqlite":
            for statement in AUDIT_SQLITE_UPDATE_ONLY_STATEMENTS:
                cursor.execute(statement)
