from django.db import migrations

from apps.radiology.db_triggers import drop_audit_truncate_guard, ensure_immutability_triggers


def guard_audit_truncate(apps, schema_editor):
    """PostgreSQL: TRUNCATE of the audit trail refused too, unless the flush's permit is held (db_triggers.py)."""
    ensure_immutability_triggers(using=schema_editor.connection.alias)


def allow_audit_truncate(apps, schema_editor):
    drop_audit_truncate_guard(using=schema_editor.connection.alias)


class Migration(migrations.Migration):
    dependencies = [
        ("radiology", "0011_upload_photographed_film"),
    ]

    operations = [
        migrations.RunPython(guard_audit_truncate, allow_audit_truncate),
    ]
