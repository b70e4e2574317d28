"""Work done once the server has sent a response: when it closes it.

The audit INSERT and the render-cache write need not hold up the client: a WSGI server calls
the response's close() after the last byte has gone (and also when the client dropped the
connection mid-body), in the same worker, before that worker takes its next request.

No private API: `HttpResponseBase.close()` is public, documented as "called at the end of the
request directly by the WSGI server", and every caller looks it up on the response object
when it calls it: the WSGI server (Django's WSGIHandler returns the response itself as the
WSGI iterable, or hands `response.close` to the `wsgi.file_wrapper` of a FileResponse), the
ASGI handler, and the test client's emulation of both. So when_closed gives the response an
instance attribute `close` that runs the work and then the class's own close().

The work runs *before* Django's close(), not after: that close sends `request_finished`,
whose `close_old_connections` receiver closes the database connection (CONN_MAX_AGE=0), and
the audit INSERT must use the request's connection rather than open a new one nobody closes.
Django's `request_finished` signal itself cannot carry the work: its only argument is the
handler class (no response to find the work by), and `close_old_connections` is connected
to it first, so a receiver would always run after the connection is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.http import HttpResponseBase

logger = logging.getLogger(__name__)


def _nothing_left() -> None:
    """The close() of a response whose work and own close() have run."""


class _CloseThenWork:
    """A response's close(): the work registered with when_closed, each once, then Django's close()."""

    def __init__(self, close: Callable[[], None]) -> None:
        self.close = close
        self.pending: list[tuple[Callable[..., Any], dict[str, Any]]] = []

    def run(self) -> None:
        # Let go of the response's own close() (a bound method, so it holds the response) before
        # anything else: response.close -> this closer -> the response would otherwise be a
        # reference cycle that keeps every response, its body included, alive until the cyclic
        # collector runs, which config/gc_tuning.py makes rare in a worker. A second close() of
        # the same response finds nothing left to do.
        close, self.close = self.close, _nothing_left
        try:
            # Taken off the list before it runs: a response can be closed again from inside
            # its own close (a body iterator dropped half-read is finalised whenever the
            # garbage collector runs, and its finaliser closes the response again; Django's
            # test client wraps bodies so), and the work must not run twice.
            while self.pending:
                function, arguments = self.pending.pop(0)
                try:
                    function(**arguments)
                except Exception:
                    logger.exception("Work after the response (%s) failed", getattr(function, "__qualname__", function))
        finally:
            close()


def when_closed(response: HttpResponseBase, function: Callable[..., Any], /, **arguments: Any) -> None:
    """Call `function(**arguments)` when `response` is closed, once.

    Several calls on one response run in the order they were made. An exception raised by
    `function` is logged, never raised to the server (which has sent the answer already).
    """
    closer = getattr(response.close, "__self__", None)
    if not isinstance(closer, _CloseThenWork):
        closer = _CloseThenWork(response.close)
        # A bound method of one function, like Django's own close, not a callable object:
        # CPython 3.11 cannot specialise a call to an object with __call__, and the test
        # client's closing_iterator_wrapper calls close() from inside the generator that
        # Django's close() then closes; once that call site's adaptive counter happened to
        # read as a `yield from` there, the interpreter crashed (segfault) in gen_close.
        response.close = closer.run  # type: ignore[method-assign]
    closer.pending.append((function, arguments))
