"""A tiny far side for the forwarder's tests: the forwarding contract's upload sync, with faults on cue.

The real far side (this app in pytest-django's live_server) is used wherever the test needs
nothing but the protocol; this stub is for what a test must script exactly and the real one
cannot be made to do on cue: a connection cut after exactly N bytes of a chunk's body, a 503,
429 or 409 image_conflict on a given request, an upload failed there, a study's check that
leaves an image out once. It speaks the contract (docs of issue 20, tools/forwarding_contract.md):
POST/GET uploads, PUT binary with Content-Range in uncompressed offsets and optional
`Content-Encoding: zstd`, the bytes of a cut body kept, and GET forwarded/{study_uid}/.
Every body byte it decoded is recorded with its range, so a test can say no byte came twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import zstandard

UPLOADS = "/api/v1/radiology/uploads/"
FORWARDED = "/api/v1/radiology/forwarded/"
_UPLOAD_PATH = re.compile(r"^/api/v1/radiology/uploads/([0-9]+)/$")
_BINARY_PATH = re.compile(r"^/api/v1/radiology/uploads/([0-9]+)/binary/$")
_FORWARDED_PATH = re.compile(r"^/api/v1/radiology/forwarded/([0-9.]+)/$")
_RANGE = re.compile(r"^bytes ([0-9]+)-([0-9]+)/([0-9]+)$")
INVALID_TOKEN = {"detail": "Invalid token.", "code": "authentication_failed"}


@dataclass
class StubUpload:
    id: int
    metadata: dict[str, Any]
    received: bytearray = field(default_factory=bytearray)
    status: str = "pending"
    error: dict[str, str] | None = None

    def state(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "client_upload_id": self.metadata["client_upload_id"],
            "status": self.status,
            "received_bytes": len(self.received),
            "file_size": self.metadata["file_size"],
            "image": {"id": self.id, "image_uid": self.metadata["image_uid"]} if self.status == "completed" else None,
            "error": self.error,
            "held": False,
        }


@dataclass(frozen=True)
class Received:
    """The decoded bytes one PUT brought: where they start, how many, how they came."""

    upload_id: int
    start: int
    size: int
    encoding: str | None
    wire_size: int
    cut: bool


@dataclass
class FarSideStub:
    token: str
    uploads: dict[int, StubUpload] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) in order
    # (method, n) -> (status, body, headers): the n-th request of that method (from 1) gets this answer.
    scripted: dict[tuple[str, int], tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=dict)
    cuts: dict[int, int] = field(default_factory=dict)  # n -> the n-th PUT is cut after this many body bytes
    omit_once: set[str] = field(default_factory=set)  # image UIDs the next study check leaves out
    on_put: Callable[[], None] | None = None  # called as each PUT comes in
    active: int = 0  # requests being answered now
    most_active: int = 0  # the most answered at once
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def answer(
        self, method: str, n: int, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        """The n-th request of `method` (counted from 1) gets this answer, its body read and ignored."""
        self.scripted[(method, n)] = (status, body, headers or {})

    def cut_put(self, n: int, *, after: int) -> None:
        """The n-th PUT's connection is reset after `after` bytes of its body (kept, as the contract says)."""
        self.cuts[n] = after

    def posts(self) -> list[str]:
        return [path for method, path in self.requests if method == "POST"]

    def upload_for(self, image_uid: str) -> StubUpload:
        (upload,) = [upload for upload in self.uploads.values() if upload.metadata["image_uid"] == image_uid]
        return upload


def _handler(stub: FarSideStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _serve(self, method: str) -> None:
            with stub.lock:
                stub.requests.append((method, self.path))
                nth = sum(1 for seen, _path in stub.requests if seen == method)
                scripted = stub.scripted.pop((method, nth), None)
                cut = stub.cuts.pop(nth, None) if method == "PUT" else None
            if self.headers.get("Authorization") != f"Token {stub.token}":
                self._body()
                return self._send(401, INVALID_TOKEN)
            if scripted is not None:
                self._body()
                return self._send(*scripted)
            if method == "POST" and self.path == UPLOADS:
                return self._post()
            if method == "GET" and (match := _UPLOAD_PATH.match(self.path)):
                upload = stub.uploads.get(int(match.group(1)))
                if upload is None:
                    return self._send(
                        404, {"detail": "No RadiologyUpload matches the given query.", "code": "not_found"}
                    )
                return self._send(200, upload.state())
            if method == "PUT" and (match := _BINARY_PATH.match(self.path)):
                return self._put(stub.uploads[int(match.group(1))], cut)
            if method == "GET" and (match := _FORWARDED_PATH.match(self.path)):
                return self._forwarded(match.group(1))
            return self._send(404, {"detail": "Not found.", "code": "not_found"})

        def _counted(self, method: str) -> None:
            with stub.lock:
                stub.active += 1
                stub.most_active = max(stub.most_active, stub.active)
            try:
                self._serve(method)
            finally:
                with stub.lock:
                    stub.active -= 1

        def do_GET(self) -> None:
            self._counted("GET")

        def do_POST(self) -> None:
            self._counted("POST")

        def do_PUT(self) -> None:
            self._counted("PUT")

        def _post(self) -> None:
            metadata = json.loads(self._body())
            with stub.lock:
                for upload in stub.uploads.values():
                    if upload.metadata["client_upload_id"] == metadata["client_upload_id"]:
                        return self._send(200, upload.state())
                upload = StubUpload(id=len(stub.uploads) + 1, metadata=metadata)
                stub.uploads[upload.id] = upload
            return self._send(201, upload.state())

        def _put(self, upload: StubUpload, cut: int | None) -> None:
            if stub.on_put is not None:
                stub.on_put()
            start, end, _total = (int(group) for group in _RANGE.match(self.headers["Content-Range"]).groups())
            wire_size = int(self.headers["Content-Length"])
            encoding = self.headers.get("Content-Encoding")
            if upload.status == "completed":
                self._body()
                return self._send(200, upload.state())
            if start != len(upload.received):
                self._body()
                return self._send(
                    409,
                    {
                        "detail": "This chunk does not start where the received bytes end; resume from received_bytes.",
                        "code": "range_mismatch",
                        "received_bytes": len(upload.received),
                    },
                )
            wire = self.rfile.read(wire_size if cut is None else cut)
            decoded = wire
            if encoding == "zstd":
                decoded = zstandard.ZstdDecompressor().decompressobj().decompress(wire)
            decoded = decoded[: end - start + 1]
            upload.received += decoded
            stub.received.append(Received(upload.id, start, len(decoded), encoding, len(wire), cut is not None))
            if cut is not None:
                # The link dies: an RST, no answer; what arrived is kept, as the contract says.
                with contextlib.suppress(OSError):
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return None
            if len(upload.received) == upload.metadata["file_size"]:
                if hashlib.sha256(upload.received).hexdigest() != upload.metadata["checksum"]:
                    return self._send(400, {"detail": "checksum", "code": "checksum_mismatch"})
                upload.status = "completed"
                return self._send(201, upload.state())
            return self._send(202, upload.state())

        def _forwarded(self, study_uid: str) -> None:
            with stub.lock:
                omitted, stub.omit_once = stub.omit_once, set()
            images = sorted(
                (
                    {
                        "image_uid": upload.metadata["image_uid"],
                        "checksum": hashlib.sha256(upload.received).hexdigest(),
                        "file_size": len(upload.received),
                        "state": "stored",
                    }
                    for upload in stub.uploads.values()
                    if upload.status == "completed"
                    and upload.metadata["study_uid"] == study_uid
                    and upload.metadata["image_uid"] not in omitted
                ),
                key=lambda image: image["image_uid"],
            )
            return self._send(200, {"study_uid": study_uid, "images": images})

    return Handler


@contextlib.contextmanager
def far_side_stub(token: str) -> Iterator[FarSideStub]:
    """A FarSideStub serving on 127.0.0.1 (its `url`) for the block."""
    stub = FarSideStub(token=token)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    server.daemon_threads = True
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="far-side-stub", daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
