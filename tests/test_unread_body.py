"""config/unread_body.py: an answer given before the request's body was read says Connection: close.

The WSGI wrapper is driven directly with bodies read wholly, partly and not at all; the real app
server (granian) is driven by apps/radiology/tests/operations/test_app_server.py.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from config.unread_body import close_when_body_unread


def _answer(read: Callable[[Any], Any], environ: dict[str, Any]) -> list[tuple[str, str]]:
    def application(env: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        read(env["wsgi.input"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    seen: list[tuple[str, str]] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen.extend(headers)

    assert list(close_when_body_unread(application)(environ, start_response)) == [b"ok"]
    return seen


def _environ(body: bytes, *, chunked: bool = False) -> dict[str, Any]:
    environ: dict[str, Any] = {"wsgi.input": io.BytesIO(body)}
    if chunked:
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    else:
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ


CLOSE = ("Connection", "close")


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_read_to_its_end_keeps_the_connection(chunked: bool) -> None:
    def read_all(stream: Any) -> None:
        while stream.read(3):
            pass

    assert _answer(read_all, _environ(b"0123456789", chunked=chunked)) == [("Content-Type", "text/plain")]
    assert _answer(lambda stream: list(stream), _environ(b"a\nb\n", chunked=chunked)) == [
        ("Content-Type", "text/plain")
    ]


def test_a_declared_length_read_exactly_keeps_the_connection_without_reading_past_it() -> None:
    assert _answer(lambda stream: stream.read(10), _environ(b"0123456789")) == [("Content-Type", "text/plain")]


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("read", [lambda stream: None, lambda stream: stream.read(4), lambda stream: stream.readline()])
def test_a_body_not_read_to_its_end_closes_the_connection(chunked: bool, read: Callable[[Any], Any]) -> None:
    assert _answer(read, _environ(b"01234\n56789", chunked=chunked)) == [("Content-Type", "text/plain"), CLOSE]


def test_a_request_without_a_body_is_passed_through_untouched() -> None:
    stream = io.BytesIO(b"")
    environ = {"wsgi.input": stream, "CONTENT_LENGTH": ""}
    assert _answer(lambda s: None, environ) == [("Content-Type", "text/plain")]
    assert environ["wsgi.input"] is stream
