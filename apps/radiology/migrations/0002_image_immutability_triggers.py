"""Database triggers that refuse changes to a stored image's file, checksum and UIDs.

The model refuses too, but a trigger also stops a raw SQL update or a shell session that
bypasses the ORM: what identifies a patient's image must never change once stored.
"""

from django.db import migrations

GUARDED_COLUMNS = ("series_id", "image_uid", "file_key", "file_size", "checksum")
TABLE = "radiology_radiologyimage"

POSTGRES_FORWARD = f"""
CREATE OR REPLACE FUNCTION radiology_image_immutable() RETURNS trigger AS $$
BEGIN
    IF {" OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in GUARDED_COLUMNS)} THEN
        RAISE EXCEPTION 'radiology images are immutable' USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER radiology_image_immutable BEFORE UPDATE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION radiology_image_immutable();
"""
POSTGRES_REVERSE = f"""
DROP TRIGGER IF EXISTS radiology_image_immutable ON {TABLE};
DROP FUNCTION IF EXISTS radiology_image_immutable();
"""
SQLITE_FORWARD = f"""
CREATE TRIGGER radiology_image_immutable BEFORE UPDATE OF {", ".join(GUARDED_COLUMNS)} ON {TABLE}
FOR EACH ROW WHEN {" OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in GUARDED_COLUMNS)}
BEGIN
    SELECT RAISE(ABORT, 'radiology images are immutable');
END;
"""
SQLITE_REVERSE = "DROP TRIGGER IF EXISTS radiology_image_immutable;"


def forward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRES_FORWARD)
    elif vendor == "sqlite":
        schema_editor.execute(SQLITE_FORWARD)


def reverse(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRES_REVERSE)
    elif vendor == "sqlite":
        schema_editor.execute(SQLITE_REVERSE)


class Migration(migrations.Migration):
    dependencies = [("radiology", "0001_initial")]

    operations = [migrations.RunPython(forward, reverse)]
