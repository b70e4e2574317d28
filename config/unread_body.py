"""Say `Connection: close` on an answer given before the request's body was read to its end.

The app answers some requests without reading their bodies: an upload refused for its token, a
chunk sent again to a finished upload (200 with the finished upload, its bytes not needed), a
STOW-RS body over the size limit. gunicorn, which served PACS-lite until issue 19, read and
dropped the rest of such a body before it took the connection's next request. granian (hyper)
does not: when the rest has not arrived by the time the answer is sent, it closes the connection
after the answer, without saying so, and a client that sends its next request on that kept-alive
connection at once gets it dropped (`RemoteDisconnected`; seen in
apps/radiology/tests/ingest/test_upload_chaos.py, one run in a few).

So the answer says it (RFC 9112 section 9.6): a client then opens a new connection for its next
request instead of losing it. Reading the rest instead, as gunicorn did, would hold a worker's
thread for as long as a slow link takes to send up to 2 GB nobody wants.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _CountingInput:
    """wsgi.input that counts what was read and sees its end (a read that returns nothing)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.bytes_read = 0
        self.ended = False

    def _seen(self, data: bytes, asked: int | None = None) -> bytes:
        self.bytes_read += len(data)
        if not data and asked != 0:
            self.ended = True
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:  # all of it: the end is reached whatever came
            data = self._stream.read()
            self.bytes_read += len(data)
            self.ended = True
            return data
        return self._seen(self._stream.read(size), size)

    def readline(self, size: int | None = -1) -> bytes:
        asked = None if size is None or size < 0 else size
        return self._seen(self._stream.readline() if asked is None else self._stream.readline(asked), asked)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines = list(iter(self.readline, b""))
        self.ended = True
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


def _declared_length(environ: dict[str, Any]) -> int:
    try:
        return int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def close_when_body_unread(application: WSGIApp) -> WSGIApp:
    """`application`, with `Connection: close` added to an answer whose request body was not read to its end."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        declared = _declared_length(environ)
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if declared <= 0 and not chunked:
            return application(environ, start_response)
        counted = _CountingInput(environ["wsgi.input"])
        environ["wsgi.input"] = counted

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            unread = not counted.ended if chunked else counted.bytes_read < declared
            if unread and not any(name.lower() == "connection" for name, _ in headers):
                headers = [*headers, ("Connection", "close")]
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        return application(environ, start)

    return wrapped
