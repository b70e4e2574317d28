"""Django's `flush`, able to empty the audit trail although the database guards it.

Audit rows refuse DELETE (both databases) and TRUNCATE (PostgreSQL) at the database level
(db_triggers.py), and Django's flush is exactly that: one TRUNCATE of every table on
PostgreSQL, a DELETE per table on SQLite. Test databases are flushed after every
TransactionTestCase and live-server test, and an operator's `manage.py flush` empties the
whole database on purpose, so the flush gets the permit the archive command uses.

The permit is written and removed by the first and last statements of the list Django runs
in one transaction, so it exists only inside the flush's own transaction: no other connection
ever sees it, a flush that fails or is killed rolls it back with everything else, and nothing
is left to clean up. Django has no public hook for that: fastpaths/flush_guard.py puts the
two statements around the list (and says which Django API it relies on). Django's own
handle() does everything else (the confirmation prompt runs before that transaction opens).
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands.flush import Command as DjangoFlush
from django.db import connections

from apps.radiology.db_triggers import flush_permit_statements
from apps.radiology.fastpaths.flush_guard import statements_around_flush


class Command(DjangoFlush):
    def handle(self, **options: Any) -> None:
        using = options["database"]
        permit = flush_permit_statements(using)
        if permit is None:
            super().handle(**options)
            return
        opens, closes = permit
        with statements_around_flush(connections[using], first=opens, last=closes):
            super().handle(**options)
