"""Reading a request body as a stream, whatever framing it came with."""

from __future__ import annotations

from typing import IO

from django.http import HttpRequest


def request_body(request: HttpRequest) -> IO[bytes]:
    """The request body as a stream, also when it arrives with Transfer-Encoding: chunked.

    Django reads CONTENT_LENGTH bytes of wsgi.input, so a chunked body (no Content-Length)
    reads as empty; dicomweb-client sends every STOW-RS body over 1 MB chunked, and a phone
    may stream an upload the same way. A server that de-chunks the input and marks it
    terminated (the app server, granian, sets wsgi.input_terminated) can be read to its end directly.
    """
    meta = request.META
    chunked = "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower()
    if chunked and not meta.get("CONTENT_LENGTH") and meta.get("wsgi.input_terminated"):
        return meta["wsgi.input"]  # type: ignore[no-any-return]
    return request  # type: ignore[return-value]
