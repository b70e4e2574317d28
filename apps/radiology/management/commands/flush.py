"""Django's `flush`, able to empty the audit trail although the database guards it.

Audit rows refuse DELETE (both databases) and TRUNCATE (PostgreSQL) at the database level
(db_triggers.py), and Django's flush is exactly that: one TRUNCATE of every table on
PostgreSQL, a DELETE per table on SQLite. Test databases are flushed after every
TransactionTestCase and live-server test, and an operator's `manage.py flush` empties the
whole database on purpose, so the flush gets the permit the archive command uses.

The permit is written and removed by the first and last statements of the list Django runs
in one transaction (`DatabaseOperations.execute_sql_flush`, the public call Django's flush
makes), so it exists only inside the flush's own transaction: no other connection ever sees
it, a flush that fails or is killed rolls it back with everything else, and nothing is left
to clean up. Django's own handle() does everything else (the confirmation prompt runs before
that transaction opens); only this connection's execute_sql_flush is wrapped, for the call.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands.flush import Command as DjangoFlush
from django.db import connections

from apps.radiology.db_triggers import flush_permit_statements

_HOOK = "execute_sql_flush"


class Command(DjangoFlush):
    def handle(self, **options: Any) -> None:
        using = options["database"]
        operations = connections[using].ops
        permit = flush_permit_statements(using)
        if permit is None:
            super().handle(**options)
            return
        own = vars(operations).get(_HOOK)  # an instance attribute already there (a test's spy)
        run = getattr(operations, _HOOK)

        def with_permit(sql_list: list[str]) -> None:
            run([permit[0], *sql_list, permit[1]] if sql_list else sql_list)

        setattr(operations, _HOOK, with_permit)
        try:
            super().handle(**options)
        finally:
            if own is None:
                delattr(operations, _HOOK)
            else:
                setattr(operations, _HOOK, own)
