"""Database triggers that refuse changes to a stored image's file, checksum and UIDs.

The model refuses too, but a trigger also stops a raw SQL update or a shell session that
bypasses the ORM. The SQL lives in apps/radiology/db_triggers.py, which also re-creates the
triggers after every migrate (SQLite drops them when it rebuilds a table).
"""

from django.db import migrations

from apps.radiology.db_triggers import drop_immutability_triggers, ensure_immutability_triggers


def forward(apps, schema_editor):
    ensure_immutability_triggers(using=schema_editor.connection.alias)


def reverse(apps, schema_editor):
    drop_immutability_triggers(using=schema_editor.connection.alias)


class Migration(migrations.Migration):
    dependencies = [("radiology", "0001_initial")]

    operations = [migrations.RunPython(forward, reverse)]
