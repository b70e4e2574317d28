"""DICOM wildcard matching (`*` and `?`, PS3.4 C.2.2.2.4) as SQL LIKE, in linear time on every database.

A regular expression (`__iregex`) was the first way: `*?*?*?*?*?*?*?*?*?*?*?#` backtracked
exponentially in SQLite's Python REGEXP function and held a worker for 51 s. LIKE is matched by
the database itself, without backtracking blow-up (SQLite and PostgreSQL both give up a `%` as
soon as the rest of the pattern cannot match anywhere after it).

Case: names match without regard to case, beyond ASCII too ("ñúñez*" finds "Ñúñez"), as the
regular expression did. PostgreSQL's ILIKE folds with the database's locale; SQLite's LIKE folds
ASCII only, so on SQLite both sides are lower-cased first, the column by a small Python function
registered on the connection (Django registers its own REGEXP the same way; the registration,
on the driver's connection, is in fastpaths/sqlite_functions.py).

Django's `__contains`/`__startswith` escape `%` and `_` but cannot put a `*` in the middle of a
pattern, hence this lookup.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.db.models import Lookup
from django.db.models.expressions import Expression
from django.db.models.sql.compiler import SQLCompiler

from apps.radiology.fastpaths.sqlite_functions import register_sqlite_function

ESCAPE = "\\"
_SQLITE_LOWER = "pacs_wildcard_lower"


def like_pattern(wildcards: str) -> str:
    """The LIKE pattern of a DICOM wildcard value: `*` -> `%`, `?` -> `_`, LIKE's own characters escaped.

    Runs of `*` collapse to one `%` (the same set of matches, less work for the matcher):
    'Smi*th_%\\' -> 'Smi%th\\_\\%\\\\'.
    """
    out: list[str] = []
    for char in wildcards:
        if char == "*":
            if not out or out[-1] != "%":
                out.append("%")
        elif char == "?":
            out.append("_")
        elif char in (ESCAPE, "%", "_"):
            out.append(ESCAPE + char)
        else:
            out.append(char)
    return "".join(out)


def _lower(value: str | None) -> str | None:
    return None if value is None else value.lower()


def _register_sqlite_lower(connection: BaseDatabaseWrapper, **_kwargs: Any) -> None:
    register_sqlite_function(connection, _SQLITE_LOWER, 1, _lower)


# On every new SQLite connection; as_sqlite also makes sure for connections opened before
# this module was imported (the test database, a worker's first connection).
connection_created.connect(_register_sqlite_lower, dispatch_uid="pacs_wildcard_lower")


class WildcardMatch(Lookup):
    """`column` matches the DICOM wildcard value `rhs`, case-insensitively (see the module docstring)."""

    lookup_name = "pacs_wildcard"
    prepare_rhs = False

    def __init__(self, lhs: Expression, rhs: str) -> None:
        super().__init__(lhs, rhs)

    def process_rhs(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper) -> tuple[str, list[Any]]:
        return "%s", [like_pattern(self.rhs)]

    def as_sql(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper) -> tuple[str, list[Any]]:
        lhs_sql, lhs_params = self.process_lhs(compiler, connection)
        rhs_sql, rhs_params = self.process_rhs(compiler, connection)
        return f"UPPER({lhs_sql}) LIKE UPPER({rhs_sql}) ESCAPE '{ESCAPE}'", [*lhs_params, *rhs_params]

    def as_postgresql(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper) -> tuple[str, list[Any]]:
        lhs_sql, lhs_params = self.process_lhs(compiler, connection)
        rhs_sql, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs_sql}::text ILIKE {rhs_sql} ESCAPE '{ESCAPE}'", [*lhs_params, *rhs_params]

    def as_sqlite(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper) -> tuple[str, list[Any]]:
        connection.ensure_connection()
        _register_sqlite_lower(connection)
        lhs_sql, lhs_params = self.process_lhs(compiler, connection)
        return (
            f"{_SQLITE_LOWER}({lhs_sql}) LIKE %s ESCAPE '{ESCAPE}'",
            [*lhs_params, like_pattern(self.rhs).lower()],
        )
