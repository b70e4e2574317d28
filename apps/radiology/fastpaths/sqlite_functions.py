"""Python functions callable from SQL on SQLite connections (Django's own recipe for its REGEXP).

SQLite has no Unicode-aware lower() (dicomweb/wildcards.py needs one for case-insensitive
wildcard matching), but its Python driver lets a Python function be registered per connection.
Django does the same for REGEXP and friends when it opens a connection; an app does it from the
public `connection_created` signal, on the driver's connection.

Undocumented Django API, checked against Django 5.2.19: `connection.connection`, the DB-API
connection inside Django's wrapper (a `sqlite3.Connection` on SQLite, None until connected), on
which sqlite3's public `create_function(name, narg, func, *, deterministic)` registers the
function. tests/fastpaths/test_private_api_versions.py checks both. Other databases: nothing
is registered (the caller writes SQL of their own there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper


def register_sqlite_function(
    connection: BaseDatabaseWrapper, name: str, arguments: int, function: Callable[..., Any]
) -> None:
    """Make `function` callable as `name(...)` in SQL on `connection`, if it is an open SQLite one.

    Registered as deterministic (same arguments, same answer), so SQLite may use it in indexes
    and fold repeated calls. Registering again replaces the function: safe on every query.
    """
    if connection.vendor == "sqlite" and connection.connection is not None:
        connection.connection.create_function(name, arguments, function, deterministic=True)
