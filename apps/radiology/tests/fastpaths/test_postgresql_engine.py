"""The PostgreSQL engine's cheaper health check (fastpaths/postgresql/base.py).

A wrapper of that engine is made from settings without connecting; its psycopg connection is a
stand-in that counts what is asked of it (no PostgreSQL server is needed for the decision being
tested, so it runs in the SQLite half of CI too). Requests are played as Django plays them: the
request_started and request_finished signals call close_if_unusable_or_obsolete, the first query
of a request calls close_if_health_check_failed.
"""

from __future__ import annotations

import inspect

import dj_database_url
import django
import pytest
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.utils import ConnectionHandler

from apps.radiology.fastpaths.postgresql import base as engine


class StandIn:
    """What the wrapper touches of a psycopg2 connection here: close()."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(engine.time, "monotonic", clock)
    return clock


@pytest.fixture
def wrapper(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> engine.DatabaseWrapper:
    settings = dj_database_url.parse("postgres://probe@127.0.0.1:9/probe", conn_max_age=60, conn_health_checks=True)
    settings["ENGINE"] = "apps.radiology.fastpaths.postgresql"
    made = ConnectionHandler({"default": settings})["default"]
    assert type(made) is engine.DatabaseWrapper
    made.connection = StandIn()
    made.health_check_enabled = True  # as connect() sets it from CONN_HEALTH_CHECKS
    made.autocommit = True
    made.close_at = clock.now + 60
    made.checks: list[float] = []  # type: ignore[attr-defined]

    def is_usable() -> bool:
        made.checks.append(clock.now)  # type: ignore[attr-defined]
        return made.usable  # type: ignore[attr-defined]

    made.usable = True  # type: ignore[attr-defined]
    monkeypatch.setattr(made, "is_usable", is_usable)
    monkeypatch.setattr(made, "ensure_connection", lambda: None)  # the stand-in is the connection
    return made


def request(wrapper: engine.DatabaseWrapper, *, query: bool = True) -> None:
    """One request: started, its first query (if any), finished."""
    wrapper.close_if_unusable_or_obsolete()
    if query:
        wrapper.close_if_health_check_failed()
    wrapper.close_if_unusable_or_obsolete()


def test_a_connection_that_served_a_request_a_moment_ago_is_not_checked_again(
    wrapper: engine.DatabaseWrapper, clock: Clock
) -> None:
    request(wrapper)  # never used before: checked, as Django does
    clock.now += 0.5
    request(wrapper)
    clock.now += 0.9
    request(wrapper)

    assert wrapper.checks == [1000.0]  # type: ignore[attr-defined]


def test_one_idle_longer_than_a_second_is_checked_as_django_does(wrapper: engine.DatabaseWrapper, clock: Clock) -> None:
    request(wrapper)
    clock.now += engine.RECENT_SECONDS
    request(wrapper)

    assert wrapper.checks == [1000.0, 1001.0]  # type: ignore[attr-defined]


def test_a_request_that_did_not_use_the_connection_does_not_vouch_for_it(
    wrapper: engine.DatabaseWrapper, clock: Clock
) -> None:
    request(wrapper)
    clock.now += 30
    request(wrapper, query=False)  # a static file, a cached answer: no query
    clock.now += 0.1
    request(wrapper)

    assert wrapper.checks == [1000.0, 1030.1]  # type: ignore[attr-defined]


def test_a_connection_found_broken_after_an_error_is_closed_and_vouches_for_nothing(
    wrapper: engine.DatabaseWrapper, clock: Clock
) -> None:
    request(wrapper)
    standin = wrapper.connection
    wrapper.close_if_unusable_or_obsolete()
    wrapper.close_if_health_check_failed()  # skipped: it served a request a moment ago
    wrapper.errors_occurred = True  # PostgreSQL went away under the query
    wrapper.usable = False  # type: ignore[attr-defined]
    wrapper.close_if_unusable_or_obsolete()

    assert (wrapper.connection, standin.closed) == (None, True)
    assert wrapper.checks == [1000.0, 1000.0]  # type: ignore[attr-defined]  # the second: Django's, after the error


def test_on_another_django_release_the_engine_is_djangos_own(
    wrapper: engine.DatabaseWrapper, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine.django, "VERSION", (6, 0, 0, "final", 0))
    request(wrapper)
    clock.now += 0.1
    request(wrapper)

    assert wrapper.checks == [1000.0, 1000.1]  # type: ignore[attr-defined]


def test_the_private_names_it_relies_on_are_still_there() -> None:
    """Re-read fastpaths/postgresql/base.py against a new Django before changing CHECKED_WITH."""
    assert django.VERSION[:2] == engine.CHECKED_WITH
    check = inspect.getsource(BaseDatabaseWrapper.close_if_health_check_failed)
    obsolete = inspect.getsource(BaseDatabaseWrapper.close_if_unusable_or_obsolete)
    assert "self.health_check_done = True" in check
    assert "self.health_check_done = False" in obsolete
