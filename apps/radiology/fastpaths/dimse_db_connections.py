"""Database connections handed from one DICOM association to the next, not opened and closed per association.

pynetdicom runs each association in a thread of its own, and Django's connections belong to
the thread that opened them: the listener opened a PostgreSQL connection for every association
(3.4 ms here: connect, authentication, the time zone set) and closed it on release (another
millisecond before the A-RELEASE-RP left), on the critical path of every findscu and echoscu,
whose whole exchange is a few milliseconds of work.

So an association that ends hands its thread's connections, when they are open and clean (no
transaction under way, no error seen, not past CONN_MAX_AGE), to a small process-wide pool
(`park`), and the next association's thread takes them over (`adopt`) before its first query.
Everything else is what Django does around a request: each handler still starts and ends with
close_old_connections (so a parked connection past its age, or one that broke while parked, is
closed or checked and replaced as for any persistent connection), and a connection the pool has
no room for, or that is not clean, is closed as before. `close_parked` closes the pool (the
listener's stop).

Private: a DatabaseWrapper remembers the thread that made it (`_thread_ident`, checked by
`validate_thread_sharing` on every use); taking one over sets it to the adopting thread, as if
that thread had made it. `connections[alias] = wrapper` and `del connections[alias]`
(ConnectionHandler's item methods) install and remove it for the current thread only.
Checked against Django 5.2 (CHECKED_DJANGO_VERSIONS): on another release `adopt` and `park`
fall back to what the listener did before (a connection per association, closed after), and
tests/fastpaths/test_private_api_versions.py fails, naming this module.
"""

from __future__ import annotations

import _thread
import threading
import time

import django
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

CHECKED_DJANGO_VERSIONS = frozenset({(5, 2)})
# Connections kept per alias: the listener's default limit of associations at once.
MAX_PARKED = 10

_lock = threading.Lock()
_parked: dict[str, list[BaseDatabaseWrapper]] = {}


def supported() -> bool:
    return django.VERSION[:2] in CHECKED_DJANGO_VERSIONS


def adopt() -> None:
    """Give this thread a parked connection for each alias it has none for yet (none parked: nothing)."""
    if not supported():
        return
    initialized = {conn.alias for conn in connections.all(initialized_only=True)}
    for alias in connections:
        if alias in initialized:
            continue
        with _lock:
            waiting = _parked.get(alias)
            wrapper = waiting.pop() if waiting else None
        if wrapper is not None:
            wrapper._thread_ident = _thread.get_ident()
            connections[alias] = wrapper


def park() -> None:
    """Hand this thread's open, clean connections to the pool; close the others (the thread is ending)."""
    for conn in connections.all(initialized_only=True):
        if supported() and _reusable(conn):
            with _lock:
                waiting = _parked.setdefault(conn.alias, [])
                if len(waiting) < MAX_PARKED:
                    del connections[conn.alias]
                    waiting.append(conn)
                    continue
        conn.close()


def close_parked() -> None:
    """Close every parked connection (the listener stops)."""
    with _lock:
        waiting = [conn for parked in _parked.values() for conn in parked]
        _parked.clear()
    for conn in waiting:
        conn._thread_ident = _thread.get_ident()
        conn.close()


def parked_count() -> int:
    with _lock:
        return sum(len(parked) for parked in _parked.values())


def _reusable(conn: BaseDatabaseWrapper) -> bool:
    return (
        conn.connection is not None
        and conn.autocommit
        and not conn.in_atomic_block
        and not conn.errors_occurred
        and not conn.needs_rollback
        and (conn.close_at is None or time.monotonic() < conn.close_at)
    )
