"""Helpers of the DICOMweb tests: a strict multipart/related reader, bodies, dcmdump.

The reader is deliberately strict about the framing OHIF relies on: the boundary comes
from the response's Content-Type header, the body starts with `--boundary`, every part
header is spelled exactly "Content-Type:", and the body ends with the close delimiter.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.http import HttpResponse, StreamingHttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apps.radiology.fastpaths.prepared import executed_sql

CRLF = b"\r\n"
# Some pydicom samples carry UIDs with a zero-led component; pydicom warns on every read.
QUIET_UID_WARNINGS = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")


def body_of(response: HttpResponse | StreamingHttpResponse) -> bytes:
    """The whole body of a response, streamed or not."""
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content)  # type: ignore[union-attr,arg-type]
    return bytes(response.content)


def json_of(response: HttpResponse) -> Any:
    return json.loads(response.content)


def media_params(value: str) -> tuple[str, dict[str, str]]:
    """('multipart/related', {'type': ..., 'boundary': ...}) of a Content-Type value."""
    pieces = [piece.strip() for piece in value.split(";")]
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, _, raw = piece.partition("=")
        params[name.strip().lower()] = raw.strip().strip('"')
    return pieces[0].lower(), params


@dataclass(frozen=True)
class ReceivedPart:
    header_lines: list[bytes]
    content: bytes

    @property
    def content_type(self) -> str:
        for line in self.header_lines:
            name, _, value = line.partition(b":")
            if name == b"Content-Type":
                return value.strip().decode("ascii")
        raise AssertionError(f"no Content-Type: header in {self.header_lines!r}")


def parse_multipart(content_type: str, body: bytes) -> tuple[str, list[ReceivedPart]]:
    """(type= of the multipart, parts) of a multipart/related body; asserts the exact framing."""
    media_type, params = media_params(content_type)
    assert media_type == "multipart/related", content_type
    boundary = params["boundary"].encode("ascii")
    delimiter = b"--" + boundary
    assert body.startswith(delimiter + CRLF), body[:80]
    assert body.endswith(CRLF + delimiter + b"--" + CRLF), body[-80:]
    inner = body[len(delimiter) + 2 : -(len(delimiter) + 6)]
    parts: list[ReceivedPart] = []
    for raw in inner.split(CRLF + delimiter + CRLF):
        head, separator, content = raw.partition(CRLF + CRLF)
        assert separator, raw[:200]
        lines = head.split(CRLF)
        for line in lines:
            name = line.partition(b":")[0]
            assert name in (b"Content-Type", b"Content-Location"), line
        parts.append(ReceivedPart(header_lines=lines, content=content))
    return params.get("type", ""), parts


def multipart_of(response: HttpResponse | StreamingHttpResponse) -> tuple[str, list[ReceivedPart]]:
    return parse_multipart(response["Content-Type"], body_of(response))


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def dcmdump(path: Path) -> subprocess.CompletedProcess[str]:
    """Run dcmtk's dcmdump on a file (exit code and output, never raises)."""
    return subprocess.run(["dcmdump", str(path)], capture_output=True, text=True, check=False, timeout=60)  # noqa: S603, S607


def walk(node: Any) -> list[dict[str, Any]]:
    """Every JSON object inside a DICOM JSON document (to look for InlineBinary anywhere)."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found.extend(walk(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(walk(item))
    return found


def error(detail: str, code: str) -> dict[str, str]:
    return {"detail": detail, "code": code}


def radiology_reads(context: CaptureQueriesContext) -> int:
    """How many of the captured queries read PACS-lite's radiology tables (not auth, not audit)."""
    return sum(
        1
        for sql in (executed_sql(query["sql"]) for query in context.captured_queries)
        if sql.lstrip().upper().startswith("SELECT") and 'FROM "radiology_radiology' in sql
    )


def count_queries(client: Client, url: str, **headers: str) -> tuple[int, int, HttpResponse]:
    """(all queries, radiology reads, response) of one GET, its body read to the end."""
    with CaptureQueriesContext(connection) as context:
        response = client.get(url, headers=headers)
        body_of(response)
    return len(context), radiology_reads(context), response
