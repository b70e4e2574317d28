"""Streaming a stored object over HTTP, with single byte ranges (206) and no shared caching.

Django's FileResponse streams but ignores Range; a viewer on a dropped 3G link resumes a
download with Range, so this module answers `bytes=a-b`, `bytes=a-` and `bytes=-n`.
Several ranges at once are answered with the whole file (RFC 9110 allows it), and so is a
Range header that is not `bytes=` with ASCII digits (RFC 9110 14.2: a server MAY ignore it).
Positions are compared as numbers of any length: `bytes=99999...9-` (thousands of digits) is
416 range_not_satisfiable (JSON) like any position past the end, not an int() that Python
refuses past 4,300 digits.

The stored object is checked before the status line: a file shorter than its row says (lost
data) is a 500 stored_object_missing, not a 200 whose body stops early.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import IO

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from apps.radiology.errors import RangeNotSatisfiable, StoredObjectMissing, error_json_response
from apps.radiology.storage import STREAM_CHUNK_SIZE

# [0-9], not \d: \d also matches other scripts' digits, which int() would then read.
_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
PRIVATE_NO_STORE = "private, no-store, max-age=0"
# Any position with more digits than this is past the end of any stored file.
_MAX_DIGITS = 18


def _position(digits: str) -> int:
    """A byte position as written, however long: one past any real file if it has over 18 digits."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


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
        length = _position(last)
        if length == 0:
            return "unsatisfiable"
        return (max(size - length, 0), size - 1)
    start = _position(first)
    end = _position(last) if last else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return (start, min(end, size - 1))


def _stored_size(handle: IO[bytes]) -> int:
    """Bytes the opened object holds: Django's File knows (one stat); a raw file is asked."""
    size = getattr(handle, "size", None)
    if isinstance(size, int):
        return size
    return os.fstat(handle.fileno()).st_size


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
    if wanted != "unsatisfiable" and _stored_size(handle) < (size if wanted is None else wanted[1] + 1):
        handle.close()
        response = error_json_response(StoredObjectMissing("The stored file is shorter than recorded."))
        response["Cache-Control"] = PRIVATE_NO_STORE
        return response
    if wanted == "unsatisfiable":
        handle.close()
        # The shape of every other refusal, with the size a client needs to ask again.
        response = error_json_response(RangeNotSatisfiable())
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
