"""The database triggers that keep images immutable and the audit trail append-only.

Migration 0002 creates them, but SQLite applies many schema changes by rebuilding the
table, which silently drops its triggers. A post_migrate hook re-creates them
(idempotently) so the guard survives any future migration on either database.
"""

from __future__ import annotations

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
AUDIT_POSTGRES_SQL = f"""
CREATE OR REPLACE FUNCTION radiology_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only' USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS radiology_audit_append_only ON {AUDIT_TABLE};
CREATE TRIGGER radiology_audit_append_only BEFORE UPDATE ON {AUDIT_TABLE}
    FOR EACH ROW EXECUTE FUNCTION radiology_audit_append_only();
"""
AUDIT_SQLITE_STATEMENTS = (
    "DROP TRIGGER IF EXISTS radiology_audit_append_only",
    f"""
CREATE TRIGGER radiology_audit_append_only BEFORE UPDATE ON {AUDIT_TABLE}
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END
""",
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
