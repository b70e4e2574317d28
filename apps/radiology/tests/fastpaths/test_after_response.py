"""when_closed: work that runs when the server closes a response, exactly once."""

from __future__ import annotations

from django.core.signals import request_finished
from django.db import close_old_connections
from django.http import HttpResponse

from apps.radiology.fastpaths.after_response import when_closed


def close(response: HttpResponse) -> None:
    # As the test client closes responses: request_finished would close database connections.
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


def test_the_call_waits_for_close_and_runs_once_even_if_closed_again() -> None:
    calls: list[dict[str, object]] = []
    response = HttpResponse(b"body")

    when_closed(response, lambda **arguments: calls.append(arguments), image=7, outcome="allowed")
    assert calls == []
    close(response)
    close(response)

    assert calls == [{"image": 7, "outcome": "allowed"}]


def test_a_close_from_inside_the_first_close_does_not_run_it_twice() -> None:
    calls: list[str] = []
    response = HttpResponse(b"body")

    def first() -> None:
        calls.append("first")
        response.close()  # what a body iterator's finaliser does when the GC runs mid-close

    when_closed(response, first)
    close(response)

    assert calls == ["first"]
