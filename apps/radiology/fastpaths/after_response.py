"""Work done once the server has sent a response: when it closes it.

The audit INSERT and the render-cache write need not hold up the client: a WSGI server calls
the response's close() after the last byte has gone (and also when the client dropped the
connection mid-body), in the same worker, before that worker takes its next request. Django
runs the callables in `HttpResponse._resource_closers` from close(); this module is the one
place that relies on that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpResponseBase


def when_closed(response: HttpResponseBase, function: Callable[..., Any], /, **arguments: Any) -> None:
    """Call `function(**arguments)` when `response` is closed, once.

    Once: a response can be closed twice, the second time from inside the first close (a body
    iterator dropped half-read is finalised whenever the garbage collector runs, and its
    finaliser closes the response again; Django's test client wraps bodies so).
    """
    pending = [arguments]

    def call() -> None:
        if pending:
            function(**pending.pop())

    response._resource_closers.append(call)
