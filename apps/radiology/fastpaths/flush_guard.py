"""Statements run first and last inside Django's flush transaction (the flush command's audit permit).

Audit rows refuse DELETE and TRUNCATE at the database level (db_triggers.py), and Django's
`flush` is exactly those statements. apps/radiology/management/commands/flush.py lets them
through with a permit that must live only inside the flush's own transaction, so no other
connection ever sees it and a flush that fails rolls it back with everything else. Django
has no public hook there: its flush command hands its statement list to
`connection.ops.execute_sql_flush(sql_list)`, which runs the list in one transaction. For the
duration of the command, this wraps that method of the one connection's operations object so
the list runs with one statement put before it and one after.

Undocumented Django API, checked against Django 5.2.19: `BaseDatabaseOperations.execute_sql_flush`
(signature `(self, sql_list)`, the list run in one transaction.atomic) and its call by
django.core.management.commands.flush. tests/fastpaths/test_private_api_versions.py checks both;
tests/access/test_audit.py checks the permit on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db.backends.base.base import BaseDatabaseWrapper

_WRAPPED = "execute_sql_flush"


@contextmanager
def statements_around_flush(connection: BaseDatabaseWrapper, *, first: str, last: str) -> Iterator[None]:
    """Within the block, every flush on `connection` runs `first`, its own statements, then `last`.

    Only this connection's operations object is changed (an instance attribute, removed on the
    way out); one already set there (a test's spy) is wrapped, then put back. An empty list
    (nothing to flush) stays empty: the permit has nothing to let through.
    """
    operations = connection.ops
    own = vars(operations).get(_WRAPPED)
    run = getattr(operations, _WRAPPED)

    def with_statements_around(sql_list: list[str]) -> None:
        run([first, *sql_list, last] if sql_list else sql_list)

    setattr(operations, _WRAPPED, with_statements_around)
    try:
        yield
    finally:
        if own is None:
            delattr(operations, _WRAPPED)
        else:
            setattr(operations, _WRAPPED, own)
