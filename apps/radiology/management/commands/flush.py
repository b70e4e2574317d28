"""Django's `flush`, able to empty the audit trail on SQLite as it can on PostgreSQL.

Audit rows refuse DELETE at the database level (db_triggers.py). PostgreSQL's flush is a
TRUNCATE, which row triggers do not see; SQLite's is a DELETE per table, which the trigger
refuses, and test databases (TransactionTestCase, live-server tests) are flushed after every
test. Flushing empties the whole database on purpose, so it gets the same one-off permit the
archive command uses, on SQLite only, and the permit is gone when it ends.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands.flush import Command as DjangoFlush
from django.db import connections

from apps.radiology.db_triggers import AUDIT_PERMIT_TABLE, allow_audit_deletes_in_transaction, end_audit_deletes


class Command(DjangoFlush):
    def handle(self, **options: Any) -> None:
        using = options["database"]
        connection = connections[using]
        permitted = connection.vendor == "sqlite" and AUDIT_PERMIT_TABLE in connection.introspection.table_names()
        if permitted:
            allow_audit_deletes_in_transaction(before=None, using=using)
        try:
            super().handle(**options)
        finally:
            if permitted:
                end_audit_deletes(using=using)
