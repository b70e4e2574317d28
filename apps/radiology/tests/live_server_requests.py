"""Let pytest-django's live server finish its requests before the test database is flushed.

The live server answers each connection in a thread of its own. On in-memory SQLite those
threads share the test's database connection, so a request still running when the test ends
meets the flush that follows ("cannot commit transaction - SQL statements in progress",
"database table is locked") and the rows the flush could not delete break the next test.
A client has its whole answer before the server is done: the audit event is written when the
response is closed, and a connection a closing browser opened may only now be accepted.

So the live server's WSGI application is wrapped once to count the requests in progress, from
the call to the response's close(), and the wait lasts until none has run for QUIET_SECONDS.
Counting requests rather than server threads matters: a thread that waits for the next request
on a kept-alive connection holds no statement, and may wait for as long as its client lives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

QUIET_SECONDS = 0.3

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class RequestsInProgress:
    """A WSGI application that counts the requests of the one it wraps until their close()."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._running = 0
        self._last_finished = time.monotonic()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with self._lock:
            self._running += 1
        try:
            result = self.app(environ, start_response)
        except BaseException:
            self._finished()
            raise
        return _ClosedThen(result, self._finished)

    def _finished(self) -> None:
        with self._lock:
            self._running -= 1
            self._last_finished = time.monotonic()

    def quiet_for(self) -> float:
        """Seconds since the last request finished; 0 while one runs."""
        with self._lock:
            return 0.0 if self._running else time.monotonic() - self._last_finished


class _ClosedThen:
    """The response iterable, whose close() also tells the counter (once)."""

    def __init__(self, result: Iterable[bytes], finished: Callable[[], None]) -> None:
        self._result = result
        self._finished: Callable[[], None] | None = finished

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            finished, self._finished = self._finished, None
            if finished is not None:
                finished()


_watched: RequestsInProgress | None = None


def watch_live_server(live_server: Any) -> None:
    """Count the requests of pytest-django's (session-wide) live server, wrapping its app once."""
    global _watched
    httpd = live_server.thread.httpd
    app = httpd.get_app()
    if not isinstance(app, RequestsInProgress):
        app = RequestsInProgress(app)
        httpd.set_app(app)
    _watched = app


def wait_for_live_server_requests(timeout: float = 15.0) -> None:
    """Return once no live-server request has run for QUIET_SECONDS (or after `timeout`)."""
    if _watched is None:
        return
    deadline = time.monotonic() + timeout
    while _watched.quiet_for() < QUIET_SECONDS and time.monotonic() < deadline:
        time.sleep(0.02)
