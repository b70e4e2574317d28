"""Streaming a stored object over HTTP, with single byte ranges (206) and no shared caching.

Django's FileResponse streams but ignores Range; a viewer on a dropped 3G link resumes a
download with Range, so this module answers `bytes=a-b`, `bytes=a-` and `bytes=-n`.
Several ranges at once are answered with the whole file (RFC 9110 allows it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from apps.radiology.storage import STREAM_CHUNK_SIZE

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
PRIVATE_NO_STORE = "private, no-store, max-age=0"


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """Return (start, end) inclusive, None for 'whole file', or 'unsatisfiable'."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None  # unknown unit or several ranges: serve the whole file
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        length = int(last)
        if length == 0:
            return "unsatisfiable"
        return (max(size - length, 0), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return (start, min(end, size - 1))


def _read_span(handle: IO[bytes], start: int, length: int) -> Iterator[bytes]:
    with handle:
        handle.seek(start)
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(STREAM_CHUNK_SIZE, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk


def stream_object(
    request: HttpRequest, handle: IO[bytes], *, size: int, content_type: str, filename: str
) -> HttpResponse:
    """Answer GET/HEAD for a stored object with its bytes, honouring one Range."""
    wanted = parse_range(request.headers.get("Range"), size)
    if wanted == "unsatisfiable":
        handle.close()
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
    elif wanted is None:
        response = StreamingHttpResponse(_read_span(handle, 0, size), content_type=content_type)
        response["Content-Length"] = str(size)
    else:
        start, end = wanted
        response = StreamingHttpResponse(_read_span(handle, start, end - start + 1), status=206)
        response["Content-Type"] = content_type
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
        response["Content-Length"] = str(end - start + 1)
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = PRIVATE_NO_STORE
    response["Content-Disposition"] = f'inline; filename="{filename}"'
    response["Referrer-Policy"] = "no-referrer"
    return response
