"""Django's PostgreSQL engine, with the health check skipped for a connection that was fine a moment ago.

Why: persistent connections (DATABASE_CONN_MAX_AGE, default 60 s) are checked with `SELECT 1`
at the start of every request that reuses one (DATABASE_CONN_HEALTH_CHECKS, default on), so a
connection PostgreSQL dropped (a restart, a dropped link) is replaced instead of failing the
request. Under 32 connections asking for frames that round trip was a fifth of a worker's time
(py-spy on the app server workers; bench/compare_orthanc.py's load rows): each blocking call gives
up the GIL, and getting it back among a worker's busy threads is the cost, not PostgreSQL's
answer. A connection that ended its last request without error less than RECENT_SECONDS ago is
taken as fine; one that sat idle longer, where a restart or a dropped link is found, is checked as
before. The cost: a restart inside that second fails the first query of at most one request per
connection; Django then finds the error, closes the connection, and the next request connects anew.

Private Django API (checked against Django 5.2, guarded in tests/fastpaths/test_private_api_versions.py):
`health_check_done`, which BaseDatabaseWrapper sets when a request first uses the connection
(close_if_health_check_failed) and clears in close_if_unusable_or_obsolete (request start and end).
On any other Django release this engine is Django's own, unchanged.
"""

from __future__ import annotations

import time

import django
from django.db.backends.postgresql import base

CHECKED_WITH = (5, 2)
RECENT_SECONDS = 1.0


class DatabaseWrapper(base.DatabaseWrapper):
    """PostgreSQL, the health check of a connection skipped within RECENT_SECONDS of a request it served well."""

    _fine_at: float | None = None

    def close_if_unusable_or_obsolete(self) -> None:
        # health_check_done is only true here when a request used the connection (see module doc).
        served_a_request = self.health_check_done
        super().close_if_unusable_or_obsolete()
        if self.connection is not None and served_a_request and not self.errors_occurred:
            self._fine_at = time.monotonic()

    def close_if_health_check_failed(self) -> None:
        if (
            django.VERSION[:2] == CHECKED_WITH
            and self.connection is not None
            and not self.health_check_done
            and self._fine_at is not None
            and time.monotonic() - self._fine_at < RECENT_SECONDS
        ):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()
