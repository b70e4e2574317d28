"""when_closed: work that runs when the server closes a response, exactly once.

The WSGI tests call Django's WSGIHandler as a WSGI server does (iterate the body, then
close() what the handler returned), without the test client's emulation in between.
"""

from __future__ import annotations

import gc
import inspect
import io
import logging
import weakref
import wsgiref.util
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.urls import path

from apps.radiology.fastpaths.after_response import when_closed

events: list[Any] = []


def record(*, into: list[Any], what: Any) -> None:
    into.append(what)


def close(response: HttpResponseBase) -> None:
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


def test_several_calls_run_in_order_then_django_closes_the_response() -> None:
    calls: list[str] = []
    body = io.BytesIO(b"file body")
    response = FileResponse(body)  # Django's close() closes the file

    when_closed(response, record, into=calls, what="audit")
    when_closed(response, lambda: calls.append("cache"))
    close(response)

    assert calls == ["audit", "cache"]
    assert response.closed
    assert body.closed


def test_a_failing_call_is_logged_not_raised_and_the_rest_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    response = HttpResponse(b"body")

    def broken() -> None:
        raise RuntimeError("cache disk full")

    when_closed(response, broken)
    when_closed(response, lambda: calls.append("audit"))
    with caplog.at_level(logging.ERROR, logger="apps.radiology.fastpaths.after_response"):
        close(response)

    assert calls == ["audit"]
    assert response.closed
    (logged,) = caplog.records
    assert logged.levelno == logging.ERROR
    assert "broken" in logged.getMessage()
    assert logged.exc_info is not None and str(logged.exc_info[1]) == "cache disk full"


def test_the_work_runs_before_request_finished_closes_the_database_connection() -> None:
    """request_finished's close_old_connections would close the connection the work writes with."""
    order: list[str] = []

    def finished(**_kwargs: Any) -> None:
        order.append("request_finished")

    response = HttpResponse(b"body")
    when_closed(response, lambda: order.append("work"))
    request_finished.connect(finished)
    try:
        close(response)
    finally:
        request_finished.disconnect(finished)

    assert order == ["work", "request_finished"]


def test_closing_from_inside_the_body_generator_survives_many_responses() -> None:
    """The test client's pattern, many times over: a body generator whose `finally` calls close().

    Django's close() then closes that same, still running, generator. With close() a callable
    object instead of a bound method, CPython 3.11 crashed (segfault) after ~100 such responses.
    """
    calls: list[int] = []
    for number in range(400):
        response = StreamingHttpResponse(iter([b"part"]))

        def closing(body: Iterator[bytes], close: Callable[[], None]) -> Iterator[bytes]:
            try:
                yield from body
            finally:
                close()

        when_closed(response, record, into=calls, what=number)
        assert inspect.ismethod(response.close)
        response.streaming_content = closing(response.streaming_content, response.close)
        request_finished.disconnect(close_old_connections)
        try:
            assert b"".join(response.streaming_content) == b"part"
        finally:
            request_finished.connect(close_old_connections)

    assert calls == list(range(400))


# --- through Django's WSGI handler, as a WSGI server runs it ----------------------------------


def _plain(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(b"whole")
    when_closed(response, record, into=events, what="plain")
    return response


def _streamed(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        for chunk in (b"one", b"two", b"three"):
            events.append(chunk)
            yield chunk

    response = StreamingHttpResponse(chunks())
    when_closed(response, record, into=events, what="streamed")
    return response


def _file(request: HttpRequest) -> FileResponse:
    response = FileResponse(io.BytesIO(b"file body"))
    when_closed(response, record, into=events, what="file")
    return response


urlpatterns = [path("plain/", _plain), path("streamed/", _streamed), path("file/", _file)]


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[Any, list[bytes]]]]:
    """serve(path, **environ) -> (what the handler returned, the body read from it) as a WSGI server."""
    handler = WSGIHandler()
    events.clear()
    # As the test client does: no database connection of the test is closed by these requests.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)

    def _serve(url_path: str, **extra: Any) -> tuple[Any, list[bytes]]:
        environ: dict[str, Any] = {"PATH_INFO": url_path, **extra}
        wsgiref.util.setup_testing_defaults(environ)
        statuses: list[str] = []
        result = handler(environ, lambda status, headers, exc_info=None: statuses.append(status))
        body = []
        for chunk in result:
            body.append(chunk)
            events.append("sent")
        assert statuses == ["200 OK"]
        return result, body

    try:
        yield _serve
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.mark.urls(__name__)
def test_wsgi_the_work_runs_when_the_server_closes_the_response(serve: Callable[..., Any]) -> None:
    result, body = serve("/plain/")
    assert body == [b"whole"]
    assert events == ["sent"]

    result.close()  # the server, once the last byte has gone

    assert events == ["sent", "plain"]


@pytest.mark.urls(__name__)
def test_wsgi_a_streamed_body_is_sent_whole_before_the_work_runs(serve: Callable[..., Any]) -> None:
    result, body = serve("/streamed/")
    assert body == [b"one", b"two", b"three"]
    assert "streamed" not in events

    result.close()

    assert events == [b"one", "sent", b"two", "sent", b"three", "sent", "streamed"]


@pytest.mark.urls(__name__)
def test_wsgi_a_file_sent_by_the_servers_file_wrapper_runs_the_work_when_the_wrapper_closes(
    serve: Callable[..., Any],
) -> None:
    """A FileResponse goes to `wsgi.file_wrapper`; the server then closes the wrapper, not the response."""
    result, body = serve("/file/", **{"wsgi.file_wrapper": wsgiref.util.FileWrapper})
    assert isinstance(result, wsgiref.util.FileWrapper)
    assert b"".join(body) == b"file body"
    assert events == ["sent"]

    result.close()

    assert events == ["sent", "file"]


@pytest.mark.django_db  # Django's close() sends request_finished (close_old_connections)
def test_a_closed_response_is_freed_without_the_cyclic_collector() -> None:
    """Workers run with the cyclic collector made rare (config/gc_tuning.py): a response with work
    must not sit in a reference cycle, or every body would stay in memory until it runs."""
    ran: list[str] = []

    def audit(*, what: str) -> None:
        ran.append(what)

    response = HttpResponse(b"x" * 1000)
    when_closed(response, audit, what="audit")
    alive = weakref.ref(response)
    gc.disable()
    try:
        response.close()
        del response
        assert alive() is None
    finally:
        gc.enable()
    assert ran == ["audit"]
