"""Let pytest-django's live server finish its requests before the test database is flushed.

The live server answers each connection in a thread of its own (socketserver's
process_request_thread). On in-memory SQLite those threads share the test's database
connection, so a request still running when the test ends meets the flush that follows
("cannot commit transaction - SQL statements in progress", "database table is locked") and
the rows the flush could not delete break the next test. A client gets its whole answer before
the server has finished: the audit event is written when the response is closed, and a
connection a closing browser opened may only now be accepted. So the wait lasts until no
request thread of this server has been seen for QUIET_SECONDS.
"""

from __future__ import annotations

import gc
import threading
import time

from django.core.servers.basehttp import ThreadedWSGIServer

QUIET_SECONDS = 0.3


def wait_for_live_server_requests(timeout: float = 15.0) -> None:
    """Return once no thread has served a live-server request for QUIET_SECONDS (or after `timeout`)."""
    # A refused request's response lives on in a reference cycle (exception <-> traceback)
    # with its connection open: collect it, so that connection closes and its thread ends.
    gc.collect()
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        serving = [thread for thread in threading.enumerate() if _serves_live_server(thread)]
        for thread in serving:
            thread.join(max(0.0, deadline - time.monotonic()))
        if serving:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_SECONDS:
            return
        time.sleep(0.02)


def _serves_live_server(thread: threading.Thread) -> bool:
    """Whether the thread handles a request of Django's live server (not of moto's in-process S3 server)."""
    target = getattr(thread, "_target", None)
    return (
        thread.is_alive()
        and thread is not threading.current_thread()
        and isinstance(getattr(target, "__self__", None), ThreadedWSGIServer)
    )
