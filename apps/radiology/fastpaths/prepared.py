"""One-row lookups compiled once per process: each call only binds its parameters.

Django compiles a queryset's SQL every time it is evaluated. For the lookups every DICOMweb
read makes (the caller's token, the instance) that compiling was most of the request:
measured with timeit on PostgreSQL, the instance lookup took ~1.5 ms through the ORM and
~0.3 ms as the same SQL executed directly. Django has no prepared-queryset API, so this
keeps the compiler of a first evaluation and reuses its SQL, its column map and Django's
own row conversion and model building (from_db, select_related populators), so a row
comes back exactly as the queryset would have given it.

Private Django API, checked against Django 5.2.19 (requirements.txt), all of it in
_Compiled and PreparedLookup:
- `QuerySet.query.get_compiler(using=...)` and the SQLCompiler it gives: `as_sql()`, and what
  that sets on the compiler (`select`, `klass_info`, `annotation_col_map`, `col_count`),
  `get_converters()`, `apply_converters()`, `connection`;
- `django.db.models.query.get_related_populators()` and its populators' `populate(row, obj)`
  (how QuerySet builds select_related objects);
- `connection.connection`, the driver's connection under Django's (not underscored, but not
  documented): the PREPARE goes through the driver's own cursor, so it is no query of the
  request (query counts, debug logs).
On any other Django release (CHECKED_DJANGO_VERSIONS) every lookup simply evaluates its
queryset: the same rows, compiled each time. tests/fastpaths/test_private_api_versions.py
fails until someone re-checks this module against the new release.

Public: `Model.from_db`, `connection.vendor`, `connection.cursor()` and the
`connection_created` signal, which tells this module a connection opened a new database
session (its prepared statements are gone).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar
from weakref import WeakKeyDictionary

import django
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators  # private: see the module docstring

# The Django releases (major, minor) whose compiler internals this module was checked
# against, line by line: 5.2 (5.2.19). A patch release of 5.2 fixes bugs without
# reshaping the compiler; test_private_api_versions.py checks each name used here anyway.
CHECKED_DJANGO_VERSIONS: Final = frozenset({(5, 2)})


def fast_path_supported() -> bool:
    """Whether the installed Django is one whose compiler internals this module was checked against."""
    return django.VERSION[:2] in CHECKED_DJANGO_VERSIONS


ModelT = TypeVar("ModelT", bound=Model)

_statement_sql: dict[str, str] = {}

# The statement names PREPAREd in each connection's current database session. A Django
# connection object (one per thread and alias) outlives its sessions: Django opens a new one
# after close() (CONN_MAX_AGE, a broken connection), announced by connection_created, and the
# new session has none of the old one's statements. Weak keys: a thread's connection object
# goes with its thread, and its entry with it.
_prepared_in_session: WeakKeyDictionary[BaseDatabaseWrapper, set[str]] = WeakKeyDictionary()


def _new_session(*, connection: BaseDatabaseWrapper, **_kwargs: Any) -> None:
    _prepared_in_session[connection] = set()


connection_created.connect(_new_session, dispatch_uid="pacs_lite_prepared_new_session")


def executed_sql(sql: str) -> str:
    """The SQL behind a logged query: a lookup's `EXECUTE pacs_lite_lookup_N(...)` as its SELECT."""
    if sql.startswith("EXECUTE pacs_lite_lookup_"):
        return _statement_sql.get(sql.removeprefix("EXECUTE ").split("(", 1)[0], sql)
    return sql


class _Compiled:
    def __init__(self, queryset: QuerySet[Any], markers: tuple[str, ...]) -> None:
        self.db = queryset.db
        self.compiler = queryset.query.get_compiler(using=self.db)
        self.sql, params = self.compiler.as_sql()
        self.params = list(params)
        self.slots = []
        for marker in markers:
            found = [index for index, value in enumerate(self.params) if value == marker]
            if len(found) != 1:
                raise ValueError("Each parameter must appear exactly once in the compiled query.")
            self.slots.append(found[0])
        klass_info = self.compiler.klass_info
        select = self.compiler.select
        start, end = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
        self.model = klass_info["model"]
        self.model_columns = (start, end)
        self.init_list = [column[0].target.attname for column in select[start:end]]
        self.populators = get_related_populators(klass_info, select, self.db)
        self.annotations = dict(self.compiler.annotation_col_map or {})
        self.converters = self.compiler.get_converters([column[0] for column in select[: self.compiler.col_count]])
        # On PostgreSQL, the server-side prepared statement of this SQL (see _server_statement),
        # named after the SQL: every connection's copy of a lookup shares one name, so the
        # registry holds one entry per distinct lookup however many threads come and go.
        self.statement_name = f"pacs_lite_lookup_{hashlib.sha256(self.sql.encode()).hexdigest()[:16]}"
        _statement_sql[self.statement_name] = self.sql
        # The session registry (a set of _prepared_in_session) it was last PREPAREd in or
        # found there: while that is still the connection's, nothing needs looking up.
        self.prepared_in: set[str] | None = None

    def _server_statement(self, connection: Any, params: list[Any]) -> tuple[str, list[Any]]:
        """`EXECUTE` of this SQL PREPAREd once per database session, on PostgreSQL.

        PostgreSQL plans every statement it is sent, and for these joins planning took ~0.2 ms
        against ~0.04 ms of execution (EXPLAIN ANALYZE); a DICOMweb read makes two of them.
        A prepared statement is planned once per session (PostgreSQL keeps a generic plan
        once it costs no more, and re-plans by itself when a table's schema changes). It
        survives a rolled-back transaction, and a new session (Django reconnects) gets its own.
        """
        if connection.vendor != "postgresql":
            return self.sql, params
        session = _prepared_in_session.get(connection)
        if session is None:  # a session opened before this module was imported: none of ours in it
            session = _prepared_in_session.setdefault(connection, set())
        if self.prepared_in is not session:
            # Another copy of the lookup (another lookup of the same SQL) may have done it already.
            if self.statement_name not in session:
                # Django's placeholders become PostgreSQL's $1..$n ("%%" becomes "%"). Sent
                # through the driver's own cursor: not a query of the request (query counts,
                # debug logs), and no parameters, so nothing in it is interpolated again.
                numbered = self.sql % tuple(f"${index}" for index in range(1, len(params) + 1))
                with connection.connection.cursor() as cursor:
                    cursor.execute(f"PREPARE {self.statement_name} AS {numbered}")
                session.add(self.statement_name)
            self.prepared_in = session
        placeholders = ", ".join(["%s"] * len(params))
        return f"EXECUTE {self.statement_name}({placeholders})" if params else f"EXECUTE {self.statement_name}", params


class PreparedLookup(Generic[ModelT]):
    """`build(*parameters)` gives a queryset whose parameters are all plain string lookups.

    `first(*values)` is the first row of `build(*values)` (order and limit it as wanted, e.g.
    `.order_by()[:1]`), `all(*values)` all its rows; neither compiles again.
    """

    def __init__(self, build: Callable[..., QuerySet[ModelT]], parameters: int) -> None:
        self.build = build
        self.markers = tuple(f"\x00prepared-parameter-{index}\x00" for index in range(parameters))
        # Compiled per thread, as Django's connections are: converters are given the
        # connection, and a compiler is never shared between two of them.
        self._local = threading.local()

    def _for_connection(self) -> _Compiled:
        connection = connections[DEFAULT_DB_ALIAS]
        compiled: _Compiled | None = getattr(self._local, "compiled", None)
        if compiled is None or compiled.compiler.connection is not connection:
            compiled = self._local.compiled = _Compiled(self.build(*self.markers), self.markers)
        return compiled

    def first(self, *values: str) -> ModelT | None:
        found = self._run(values, one=True)
        return found[0] if found else None

    def all(self, *values: str) -> list[ModelT]:
        """`list(build(*values))` without compiling again."""
        return self._run(values, one=False)

    def _run(self, values: tuple[str, ...], *, one: bool) -> list[ModelT]:
        if not fast_path_supported():
            queryset = self.build(*values)
            return list(queryset[:1] if one else queryset)
        compiled = self._for_connection()
        params = list(compiled.params)
        for slot, value in zip(compiled.slots, values, strict=True):
            params[slot] = value
        connection = connections[compiled.db]
        with connection.cursor() as cursor:
            cursor.execute(*compiled._server_statement(connection, params))
            rows = cursor.fetchmany(1) if one else cursor.fetchall()
        if compiled.converters:
            rows = list(compiled.compiler.apply_converters(rows, compiled.converters))
        start, end = compiled.model_columns
        found = []
        for row in rows:
            obj = compiled.model.from_db(compiled.db, compiled.init_list, row[start:end])
            for populator in compiled.populators:
                populator.populate(row, obj)
            for name, position in compiled.annotations.items():
                setattr(obj, name, row[position])
            found.append(obj)
        return found
