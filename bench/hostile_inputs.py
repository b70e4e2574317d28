"""Hostile and odd input against PACS-lite as production runs it (issue 14, "How we will know").

Run from the repository root (as root, or as a user who may run PostgreSQL's initdb):
    make bench-hostile      (= .venv/bin/python bench/hostile_inputs.py)

What it does, all on 127.0.0.1 and in a temporary directory (never var/):
1. builds the hostile files, streaming, with the tests' builders (apps/radiology/tests/ingest_bombs.py):
   an RLE bomb (~7 KB declaring 65535 x 65535 pixels), a valid 16384 x 16384 16-bit RLE image
   (~8 MiB, 512 MiB decoded), a deflate bomb (~1 MB inflating to 1 GiB);
2. starts a throwaway PostgreSQL 15 cluster with fsync ON (durable, as production), migrates,
   seeds the demo users and orders, and starts the app server exactly as docker-compose.yml runs
   it (config/app_server.py: granian, one worker per core, x 4 threads) with production settings (DJANGO_DEBUG=0, a
   real secret, plain HTTP on loopback, RADIOLOGY_MAX_UPLOAD_SIZE=16 MiB: small, yet above the
   8 MiB 16k image, which must still be stored);
3. stores pydicom's CT_small.dcm, mints a signed image URL and a viewer token;
4. sends each case and, while it runs, samples the VmRSS of every app server worker (and its
   children) every 10 ms and probes /healthz every 50 ms from another thread;
5. runs the QIDO ReDoS case again against a second, identical server on SQLite (the default
   install, where the wildcard regex backtracked; PostgreSQL's regex engine does not).
Each row: the answer (status + code), seconds, peak RSS above idle of the worker that grew most,
the worst /healthz latency, files left in the staging directory, and whether each target is met:
the right answer (mostly a 4xx with a code), < 2 s, < 150 MiB, /healthz < 100 ms.

Every request is bounded (10 s, then the row says "timeout"); a worker that passes 3 GiB above
idle is killed by the benchmark (the row says so) so the machine survives; after a timeout or a
kill, busy workers are killed and running SQL cancelled, so one case cannot spill into the next.
A 500 or a timeout is a row marked FAIL, never a crash. Exit status 0 regardless: it is a
benchmark. The table is printed and written to bench/results/hostile_inputs.md.
`--source DIR` serves another tree (e.g. `git worktree add` of an older commit) to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import http.client
import io
import json
import os
import platform
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, quote, urlsplit

import psycopg2
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(ROOT)]  # ROOT for the hostile file builders the tests use

import _services as services  # noqa: E402

from apps.radiology.tests import ingest_bombs  # noqa: E402
from config.env import usable_cores  # noqa: E402

RESULTS = BENCH_DIR / "results" / "hostile_inputs.md"
MIB = 1024 * 1024
API = "/api/v1/radiology"
DICOMWEB = f"{API}/dicomweb"
# The app server as docker-compose.yml's app service runs it (config/app_server.py; loopback only).
WORKERS, THREADS = usable_cores(), 4
MAX_UPLOAD = 16 * MIB
REQUEST_TIMEOUT = 10.0  # a row that takes longer is a timeout: the target is 2 s
RSS_GUARD_KIB = 3 * 1024 * 1024  # kill a worker that grows 3 GiB above idle (24 GiB machine, shared)
TARGET_SECONDS, TARGET_RSS_MIB, TARGET_HEALTHZ_MS = 2.0, 150.0, 100.0
STOW_JSON = {"Accept": "application/dicom+json"}
# The closing line of a Python traceback: "ValueError: ...", "django.core.exceptions.X: ...".
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exceeded|Interrupt)\b(: .*)?$")


# --- HTTP, by hand -------------------------------------------------------------------------


@dataclasses.dataclass
class Answer:
    status: int | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    head: bytes = b""  # the first 1 MiB of the body
    length: int = 0  # bytes of body received
    sent: int = 0  # bytes of request body sent before the answer came (or the connection ended)
    early: bool = False  # the server answered (or closed) before the whole body was sent
    body_length: int | None = None  # Content-Length of the request body, when known
    error: str = ""  # "timeout", "connection reset", ...

    def json(self) -> Any:
        try:
            return json.loads(self.head)
        except ValueError:
            return None

    @property
    def code(self) -> str:
        """The error code, or for STOW-RS the failure reasons / stored count, or ''."""
        body = self.json()
        if isinstance(body, dict):
            if isinstance(body.get("code"), str):
                return body["code"]
            failed = body.get("00081198", {}).get("Value") or []
            stored = body.get("00081199", {}).get("Value") or []
            if failed or stored:
                reasons = sorted({f"0x{item.get('00081197', {}).get('Value', [0])[0]:04X}" for item in failed})
                return ", ".join(
                    ([f"{len(stored)} stored"] if stored else []) + ([f"failed {'/'.join(reasons)}"] if failed else [])
                )
        return ""

    @property
    def shown(self) -> str:
        if self.status is None:
            return self.error or "no answer"
        text = f"{self.status} {self.code}".strip()
        if self.status >= 400 and not self.code:
            text += " (no JSON code)"
        return f"{text} ({self.error})" if self.error else text


def _chunks(body: bytes | Iterable[bytes] | None) -> Iterator[bytes]:
    if body is None:
        return
    if isinstance(body, bytes):
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]
    else:
        yield from body


def request(
    port: int,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | Iterable[bytes] | None = None,
    length: int | None = None,
    timeout: float = REQUEST_TIMEOUT,
) -> Answer:
    """One HTTP/1.1 exchange on a fresh connection, sending the body only while the server listens.

    requests would send the whole body before reading, so a server that refuses early (413
    after 16 MiB of a 300 MiB part) looks like a broken pipe; here the socket is watched while
    sending and the answer read as soon as it comes. Never raises: failures are in Answer.error.
    """
    answer = Answer()
    deadline = time.monotonic() + timeout
    if isinstance(body, bytes):
        length = len(body)
    answer.body_length = length
    head = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None:
        head.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    chunked = body is not None and length is None
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as exc:
        answer.error = f"connect: {exc}"
        return answer
    with sock:
        opening = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        written = 0
        try:
            sock.setblocking(False)
            pending = [memoryview(opening)]
            chunks = _chunks(body)
            answered = False
            while not answered:
                if not pending:
                    chunk = next(chunks, None)
                    if chunk is None:
                        if chunked:
                            pending.append(memoryview(b"0\r\n\r\n"))
                            chunked = False
                            continue
                        break
                    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk
                    pending.append(memoryview(framed))  # slices of a view do not copy
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    answer.error = "timeout while sending"
                    answer.sent = max(0, written - len(opening))
                    return answer
                readable, writable, _ = select.select([sock], [sock], [], min(left, 0.5))
                if readable:
                    answered = True  # the server answers (or closes) before taking it all
                    answer.early = bool(pending) or next(chunks, None) is not None
                elif writable:
                    view = pending[0]
                    sent = sock.send(view)
                    written += sent
                    pending[0] = view[sent:]
                    if not pending[0]:
                        pending.pop(0)
        except (ConnectionResetError, BrokenPipeError) as exc:
            answer.error = f"{type(exc).__name__} while sending"
            answer.early = True
        answer.sent = max(0, written - len(opening))  # chunk framing aside, the body bytes the server took
        sock.setblocking(True)
        try:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            response = http.client.HTTPResponse(sock, method=method)
            response.begin()
            answer.status = response.status
            answer.headers = {name.lower(): value for name, value in response.getheaders()}
            answer.error = ""
            while True:
                if time.monotonic() > deadline:
                    answer.error = "timeout in body"
                    break
                block = response.read1(256 * 1024)
                if not block:
                    break
                if len(answer.head) < MIB:
                    answer.head += block[: MIB - len(answer.head)]
                answer.length += len(block)
        except TimeoutError:
            answer.error = "timeout" if answer.status is None else "timeout in body"
        except (OSError, http.client.HTTPException) as exc:
            if answer.status is None:
                answer.error = answer.error or f"{type(exc).__name__}"
            else:
                answer.error = f"body cut: {type(exc).__name__}"
    return answer


def multipart(parts: Iterable[bytes], boundary: str, content_type: str = "application/dicom") -> Iterator[bytes]:
    for part in parts:
        yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + part + b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def stow_type(boundary: str) -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


# --- Watching the server -------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Direct children of a process (every thread's children file)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def tree_rss_kib(pid: int) -> int:
    """VmRSS of a process and all its descendants (a worker's parse helper counts as the worker's)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        with contextlib.suppress(OSError, RuntimeError):
            total += services.status_kib(current, "VmRSS")
        stack += children(current)
    return total


class Watch:
    """While a row runs: worker RSS every 10 ms (with the 3 GiB guard) and /healthz every 50 ms."""

    def __init__(self, port: int, workers: list[int]) -> None:
        self.port = port
        self.idle = {pid: tree_rss_kib(pid) for pid in workers}
        self.peak = dict(self.idle)
        self.killed: list[int] = []
        self.healthz_ms: list[float] = []
        self.healthz_failures = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._memory, daemon=True), threading.Thread(target=self._probe)]

    def _memory(self) -> None:
        while not self._stop.is_set():
            for pid in self.idle:
                if pid in self.killed:
                    continue
                rss = tree_rss_kib(pid)
                self.peak[pid] = max(self.peak[pid], rss)
                if rss - self.idle[pid] > RSS_GUARD_KIB:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
            time.sleep(0.01)

    def _probe(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                connection.request("GET", "/healthz")
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    self.healthz_failures += 1
            except (OSError, http.client.HTTPException):
                self.healthz_failures += 1
            finally:
                connection.close()
            self.healthz_ms.append((time.perf_counter() - started) * 1000)
            self._stop.wait(0.05)

    def __enter__(self) -> Watch:
        for thread in self._threads:
            thread.start()
        time.sleep(0.06)  # a first probe before the case starts
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    @property
    def rss_mib(self) -> float:
        """Peak RSS above idle of the worker (with its children) that grew most."""
        return max((self.peak[pid] - self.idle[pid]) / 1024 for pid in self.idle)

    @property
    def worst_healthz_ms(self) -> float:
        return max(self.healthz_ms, default=0.0)


# --- Server --------------------------------------------------------------------------------


@dataclasses.dataclass
class Server:
    port: int
    master: subprocess.Popen[bytes]
    staging: list[Path]  # RADIOLOGY_STAGING_DIR and the store's staging/ (upload sync chunks)
    database_url: str
    log: Path

    def workers(self) -> list[int]:
        return children(self.master.pid)

    def wait_workers(self, seconds: float = 60) -> None:
        services.wait_until(
            lambda: len(self.workers()) == WORKERS and request(self.port, "GET", "/healthz", timeout=5).status == 200,
            "app server workers",
            seconds=seconds,
            log=self.log,
        )

    def staged_files(self) -> int:
        return sum(len(files) for folder in self.staging for _root, _dirs, files in os.walk(folder))

    def exceptions_since(self, offset: int) -> str:
        """The last line of each traceback the server logged after `offset` (e.g. "ValueError: ...")."""
        with self.log.open("rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
        found = [
            line.strip()[:100]
            for index, line in enumerate(lines)
            if EXCEPTION_LINE.match(line) and any(earlier.startswith("Traceback") for earlier in lines[:index])
        ]
        return " / ".join(dict.fromkeys(found))

    def quiet(self, seconds: float = 5) -> None:
        """Wait until the workers stop spending CPU (after-response work of the last row)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            before = sum(services.tree_cpu_ticks(pid) for pid in self.workers())
            time.sleep(0.3)
            if sum(services.tree_cpu_ticks(pid) for pid in self.workers()) - before <= 3:
                return

    def recover(self) -> str:
        """After a timeout or a kill: cancel running SQL, kill workers still busy, wait for fresh ones."""
        notes = []
        with contextlib.suppress(psycopg2.Error):
            if not self.database_url.startswith("postgres"):
                raise psycopg2.Error  # SQLite runs inside the worker: killing it is enough
            cancelled = sql_value(
                self.database_url,
                "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity "
                "WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )
            if cancelled:
                notes.append(f"{cancelled} SQL cancelled")
        before = {pid: services.tree_cpu_ticks(pid) for pid in self.workers()}
        time.sleep(0.5)
        busy = [pid for pid, ticks in before.items() if services.tree_cpu_ticks(pid) - ticks > 15]
        for pid in busy:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if busy:
            notes.append(f"{len(busy)} busy worker(s) killed")
        time.sleep(0.2)
        self.wait_workers()
        return ", ".join(notes)


def sql_value(url: str, statement: str) -> Any:
    """First column of the first row of one statement, in autocommit, on a connection of its own."""
    connection = psycopg2.connect(url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
            row = cursor.fetchone() if cursor.description else None
            return row[0] if row else None
    finally:
        connection.close()


@contextlib.contextmanager
def durable_postgres() -> Iterator[str]:
    """A throwaway PostgreSQL 15 cluster on 127.0.0.1 with fsync on (production durability); its URL.

    scripts/pg_throwaway.sh (and _services.postgres) start with `-c fsync=off`, which a command
    line makes unchangeable by ALTER SYSTEM, so this starts its own cluster the same way minus
    that option. Stopped and removed afterwards.
    """
    pgbin = services.PGBIN
    directory = Path(tempfile.mkdtemp(prefix="pacs-hostile-pg-"))
    as_postgres = services._as_postgres  # the shared helper: runuser when root
    if os.geteuid() == 0:
        subprocess.run(["chown", "postgres:postgres", str(directory)], check=True)
    port = services.free_port()
    data = directory / "data"
    try:
        subprocess.run(
            as_postgres(str(pgbin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"),
            check=True,
            capture_output=True,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {directory}"
        subprocess.run(
            as_postgres(
                str(pgbin / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(directory / "log"),
                "-w",
                "-t",
                "30",
                "-o",
                options,
                "start",
            ),
            check=True,
            capture_output=True,
        )
        subprocess.run(
            as_postgres(str(pgbin / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "pacs"),
            check=True,
            capture_output=True,
        )
        url = f"postgres://postgres@127.0.0.1:{port}/pacs"
        if sql_value(url, "SHOW fsync") != "on":
            raise RuntimeError("PostgreSQL runs without fsync")
        yield url
    finally:
        subprocess.run(
            as_postgres(str(pgbin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(directory, ignore_errors=True)


def manage(source: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [str(services.VENV_BIN / "python"), "manage.py", *args],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


@contextlib.contextmanager
def app_server(env: dict[str, str], workdir: Path, database_url: str, source: Path) -> Iterator[Server]:
    port = services.free_port()
    command = [str(services.VENV_BIN / "python"), "-m", "config.app_server", "--bind", f"127.0.0.1:{port}"]
    env = {**env, "PACS_WEB_WORKERS": str(WORKERS), "PACS_WEB_THREADS": str(THREADS)}
    log_path = workdir / "app_server.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, cwd=source, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    staging = [Path(env["PACS_VAR_DIR"]) / "staging", Path(env["MEDIA_ROOT"]) / "staging"]
    server = Server(port, process, staging, database_url, log_path)
    try:
        server.wait_workers()
        yield server
    finally:
        services.stop_process_group(process)


# --- Cases ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    case: str
    expected: str
    answer: Answer
    seconds: float
    rss_mib: float
    healthz_ms: float
    healthz_failures: int
    staged: int
    note: str = ""
    answer_ok: bool = False

    @property
    def marks(self) -> dict[str, bool]:
        return {
            "answer": self.answer_ok,
            "time": self.seconds < TARGET_SECONDS,
            "rss": self.rss_mib < TARGET_RSS_MIB,
            "healthz": self.healthz_ms < TARGET_HEALTHZ_MS and not self.healthz_failures,
            "staging": self.staged == 0,
        }

    @property
    def met(self) -> bool:
        return all(self.marks.values())


Check = Callable[[Answer], bool]


def error_4xx(status: int | tuple[int, ...] | None = None, code: str | None = None) -> Check:
    """A 4xx (or exactly `status`) with a JSON code (or exactly `code`); STOW-RS failures count as coded."""

    def check(answer: Answer) -> bool:
        if answer.status is None or answer.error:
            return False
        wanted = (status,) if isinstance(status, int) else status
        if wanted is not None and answer.status not in wanted:
            return False
        if not 400 <= answer.status < 500 or not answer.code:
            return False
        return code is None or answer.code == code

    return check


def stored(answer: Answer) -> bool:
    return answer.status == 200 and not answer.error and answer.code.endswith("stored")


def no_5xx(answer: Answer) -> bool:
    """QIDO: any complete answer that is not a server error (matches, none, or a coded 4xx)."""
    if answer.status is None or answer.error or answer.status >= 500:
        return False
    return answer.status < 400 or bool(answer.code)


def jpeg_at_most(side: int) -> Check:
    def check(answer: Answer) -> bool:
        if answer.status != 200 or answer.error:
            return error_4xx()(answer)
        with contextlib.suppress(OSError, ValueError):
            width, height = Image.open(io.BytesIO(answer.head)).size
            return max(width, height) <= side
        return False

    return check


def small_body(limit: int) -> Check:
    def check(answer: Answer) -> bool:
        if answer.status == 200 and not answer.error:
            return answer.length <= limit
        return error_4xx()(answer)

    return check


class Bench:
    def __init__(self, server: Server, tokens: dict[str, str], deadline: float) -> None:
        self.server = server
        self.tokens = tokens
        self.deadline = deadline
        self.rows: list[Row] = []
        self.skipped: list[str] = []

    def auth(self, role: str) -> dict[str, str]:
        if role == "viewer":
            return {"Authorization": f"Bearer {self.tokens['viewer']}"}
        return {"Authorization": f"Token {self.tokens[role]}"}

    def run(self, case: str, expected: str, check: Check, method: str, target: str, **kwargs: Any) -> Answer | None:
        """Send one request under watch; record the row. None when the time budget is spent."""
        if time.monotonic() > self.deadline:
            self.skipped.append(case)
            print(f"  {case}: not run (time budget spent)", flush=True)
            return None
        self.server.quiet()
        log_offset = self.server.log.stat().st_size
        staged_before = self.server.staged_files()
        workers = self.server.workers()
        with Watch(self.server.port, workers) as watch:
            started = time.monotonic()
            answer = request(self.server.port, method, target, **kwargs)
            seconds = time.monotonic() - started
        note = ""
        if answer.early and (answer.body_length is None or answer.body_length >= 64 * 1024):
            of = f" of {size_text(answer.body_length)}" if answer.body_length else ""
            note = f"answered after {size_text(answer.sent)}{of} were sent"
        elif answer.body_length and answer.body_length >= MIB:
            note = f"server took the whole {answer.body_length / MIB:.1f} MiB body"
        if answer.status == 200:
            note = "; ".join(filter(None, [note, f"body {size_text(answer.length)}"]))
        raised = self.server.exceptions_since(log_offset)
        if raised:
            note = "; ".join(filter(None, [note, f"server log: {raised}"]))
        if watch.killed:
            note = "; ".join(
                filter(None, [note, f"worker killed by the bench at {RSS_GUARD_KIB // 1024} MiB above idle"])
            )
        if watch.killed or answer.status is None or answer.error.startswith("timeout"):
            recovered = self.server.recover()
            note = "; ".join(filter(None, [note, recovered]))
        row = Row(
            case,
            expected,
            answer,
            seconds,
            watch.rss_mib,
            watch.worst_healthz_ms,
            watch.healthz_failures,
            max(0, self.server.staged_files() - staged_before),
            note,
        )
        row.answer_ok = check(answer)
        self.rows.append(row)
        flag = "ok  " if row.met else "FAIL"
        print(
            f"  {flag} {case}: {answer.shown} in {seconds:.2f} s, +{row.rss_mib:.0f} MiB, "
            f"/healthz {row.healthz_ms:.0f} ms{' — ' + note if note else ''}",
            flush=True,
        )
        return answer


def size_text(size: int) -> str:
    if size >= MIB:
        return f"{size / MIB:.1f} MiB"
    return f"{size / 1024:.1f} KiB" if size >= 1024 else f"{size} B"


def instance_path(study: str, series: str, sop: str) -> str:
    return f"{DICOMWEB}/studies/{study}/series/{series}/instances/{sop}"


def uids_of(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def stow(
    bench: Bench, case: str, expected: str, check: Check, order: int | str, data: bytes, boundary: str = ""
) -> Answer | None:
    """POST `data` as the one part of a STOW-RS request into `order` (a fresh boundary unless given)."""
    boundary = boundary or uuid.uuid4().hex
    return bench.run(
        case,
        expected,
        check,
        "POST",
        f"{DICOMWEB}/studies?radiology_order_id={order}",
        headers={**bench.auth("radtech"), **STOW_JSON, "Content-Type": stow_type(boundary)},
        body=b"".join(multipart([data], boundary)),
    )


def upload_put(
    bench: Bench,
    case: str,
    expected: str,
    order: int,
    *,
    filename: str,
    file_size: int,
    checksum: str,
    content_range: str,
    body: bytes,
) -> None:
    """Create a resumable upload into `order` as radtech, then PUT `body` with this Content-Range (the case)."""
    created = request(
        bench.server.port,
        "POST",
        f"{API}/uploads/",
        headers={**bench.auth("radtech"), "Content-Type": "application/json"},
        body=json.dumps(
            {
                "client_upload_id": str(uuid.uuid4()),
                "radiology_order": order,
                "filename": filename,
                "file_size": file_size,
                "mime_type": "application/dicom",
                "checksum": checksum,
            }
        ).encode(),
    )
    upload_id = (created.json() or {}).get("id") if created.status == 201 else None
    if upload_id is None:
        print(f"  {case.split()[0]} not run: creating the upload answered {created.shown}", flush=True)
        return
    bench.run(
        case,
        expected,
        error_4xx(),
        "PUT",
        f"{API}/uploads/{upload_id}/binary/",
        headers={
            **bench.auth("radtech"),
            "Content-Type": "application/octet-stream",
            "Content-Range": content_range,
        },
        body=body,
    )


def renders_refused(bench: Bench, number: str, path: Path, *, frames: bool) -> None:
    """/thumbnail and /rendered twice each (the second must come from what the first learned)."""
    base = instance_path(*uids_of(path))
    refused = error_4xx(422, "image_too_large_to_render")
    expected = "422 image_too_large_to_render"
    viewer = bench.auth("doctor")
    letters = iter("bcdefgh")
    for what, accept in (("thumbnail", "image/jpeg"), ("rendered", "image/jpeg")):
        for attempt in (1, 2):
            bench.run(
                f"{number}{next(letters)} {what} #{attempt}",
                expected,
                refused,
                "GET",
                f"{base}/{what}",
                headers={**viewer, "Accept": accept},
            )
    if frames:
        native = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
        bench.run(
            f"{number}{next(letters)} frames/1 native octet-stream",
            expected,
            refused,
            "GET",
            f"{base}/frames/1",
            headers={**viewer, "Accept": native},
        )


def qido_redos(bench: Bench, letters: str, database: str) -> None:
    """The 23-character wildcard pattern that took 51 s on SQLite, as a doctor and as a viewer-token holder."""
    print(f"case 4: QIDO ReDoS ({database})", flush=True)
    pattern = quote("*?*?*?*?*?*?*?*?*?*?*?#")
    for letter, role in zip(letters, ("doctor", "viewer"), strict=True):
        bench.run(
            f"4{letter} QIDO PatientName=*?*?…# as {role}, {database}",
            "answer, no 5xx",
            no_5xx,
            "GET",
            f"{DICOMWEB}/studies?PatientName={pattern}",
            headers={**bench.auth(role), "Accept": "application/dicom+json"},
        )


JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def codestream_bomb(transfer_syntax: str) -> bytes:
    """A ~1 KB file whose header says 64 x 64 and whose one fragment is a blank codestream
    declaring 8192 x 8192 (its decoder would allocate that size, hundreds of MiB)."""
    if transfer_syntax == JPEG_BASELINE:
        codestream = ingest_bombs.jpeg_resized(ingest_bombs.jpeg_blank(rows=64, columns=64), rows=8192, columns=8192)
        bits = 8
    else:
        blank = ingest_bombs.j2k_blank(rows=64, columns=64)
        codestream, bits = ingest_bombs.j2k_resized(blank, rows=8192, columns=8192), 16
    data, _offset = ingest_bombs.codestream_file(codestream, transfer_syntax, rows=64, columns=64, bits=bits)
    return data


def cases(bench: Bench, files: dict[str, Path], orders: list[int], setup: dict[str, Any]) -> None:
    print("case 1: RLE bomb", flush=True)
    answer = stow(
        bench,
        f"1a STOW-RS RLE bomb ({files['rle_bomb'].stat().st_size:,} B, 65535x65535)",
        "4xx refused at ingest",
        error_4xx(),
        orders[1],
        files["rle_bomb"].read_bytes(),
    )
    if answer is not None and stored(answer):
        renders_refused(bench, "1", files["rle_bomb"], frames=False)
    # The header says 64 x 64; the codestream its decoder would read declares 8192 x 8192.
    for letter, name, label in (("b", "j2k_bomb", "JPEG 2000"), ("c", "jpeg_bomb", "baseline JPEG")):
        answer = stow(
            bench,
            f"1{letter} STOW-RS {label} 8192x8192 behind a 64x64 header ({files[name].stat().st_size:,} B)",
            "4xx refused at ingest",
            error_4xx(),
            orders[1],
            files[name].read_bytes(),
        )
        if answer is not None and stored(answer):
            renders_refused(bench, f"1{letter}", files[name], frames=False)

    print("case 2: valid 16384x16384 16-bit", flush=True)
    answer = stow(
        bench,
        f"2a STOW-RS 16k 16-bit RLE ({files['big16'].stat().st_size / MIB:.1f} MiB)",
        "200 stored",
        stored,
        orders[2],
        files["big16"].read_bytes(),
    )
    if answer is not None and stored(answer):
        renders_refused(bench, "2", files["big16"], frames=True)

    print("case 3: deflate bomb", flush=True)
    bomb = files["deflate"].read_bytes()
    stow(
        bench, f"3a STOW-RS deflate bomb ({len(bomb) / MIB:.1f} MiB -> 1 GiB)", "fast 4xx", error_4xx(), orders[3], bomb
    )
    upload_put(
        bench,
        "3b upload sync PUT deflate bomb",
        "fast 4xx",
        orders[4],
        filename="bomb.dcm",
        file_size=len(bomb),
        checksum=hashlib.sha256(bomb).hexdigest(),
        content_range=f"bytes 0-{len(bomb) - 1}/{len(bomb)}",
        body=bomb,
    )

    qido_redos(bench, "ab", "PostgreSQL")

    print("case 5: STOW-RS limits", flush=True)
    boundary = uuid.uuid4().hex
    tiny = b"".join(multipart((f"tiny part {n:05d}".encode() for n in range(10_000)), boundary))
    bench.run(
        f"5a STOW-RS 10,000 tiny parts ({len(tiny) / MIB:.1f} MiB)",
        "413 too many parts",
        error_4xx(413),
        "POST",
        f"{DICOMWEB}/studies?radiology_order_id={orders[5]}",
        headers={**bench.auth("radtech"), **STOW_JSON, "Content-Type": stow_type(boundary)},
        body=tiny,
    )
    big_part = 300 * MIB
    opening = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    closing = f"\r\n--{boundary}--\r\n".encode()

    def huge() -> Iterator[bytes]:
        yield opening + b"\x00" * 128 + b"DICM"
        block = bytes(MIB)
        for _ in range(big_part // MIB):
            yield block
        yield closing

    bench.run(
        f"5b STOW-RS one 300 MiB part (limit {MAX_UPLOAD // MIB} MiB)",
        "413 early",
        error_4xx(413),
        "POST",
        f"{DICOMWEB}/studies?radiology_order_id={orders[5]}",
        headers={**bench.auth("radtech"), **STOW_JSON, "Content-Type": stow_type(boundary)},
        body=huge(),
        length=len(opening) + 132 + big_part + len(closing),
    )

    print("case 6: amplification", flush=True)
    ct = instance_path(*setup["ct_uids"])
    doctor = bench.auth("doctor")
    bench.run(
        "6a rendered viewport=8192,8192 of a 128x128 CT",
        "4xx or JPEG <= 2048 px",
        jpeg_at_most(2048),
        "GET",
        f"{ct}/rendered?viewport=8192,8192",
        headers={**doctor, "Accept": "image/jpeg"},
    )
    bench.run(
        "6b frames/1,1,1,… (1,000 repeats)",
        "4xx or <= 1 MiB",
        small_body(MIB),
        "GET",
        f"{ct}/frames/{','.join(['1'] * 1000)}",
        headers={**doctor, "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
    )
    bench.run(
        "6c rendered window=nan,nan",
        "400 with code",
        error_4xx(400),
        "GET",
        f"{ct}/rendered?window=nan,nan",
        headers={**doctor, "Accept": "image/jpeg"},
    )

    print("case 7: malformed numbers", flush=True)
    digits = "9" * 5000
    # An offset of 4,000 digits: gunicorn, which served until issue 19, refused a request line over
    # 4,094 bytes itself (414, before Django); kept so the rows stay comparable.
    long_offset = "9" * 4000
    bench.run(
        "7a signed image URL, Range of 5,000 digits",
        "4xx with code",
        error_4xx(),
        "GET",
        setup["signed_path"],
        headers={"Range": f"bytes={digits}-"},
    )
    for letter, value in (("b", str(2**63)), ("c", long_offset)):
        bench.run(
            f"7{letter} QIDO offset={'2**63' if letter == 'b' else '<4,000 digits>'}",
            "400 with code",
            error_4xx(400),
            "GET",
            f"{DICOMWEB}/studies?offset={value}",
            headers={**doctor, "Accept": "application/dicom+json"},
        )
    stow(bench, "7d STOW-RS boundary of 300 chars", "4xx with code", error_4xx(), orders[6], b"not dicom", "b" * 300)
    stow(bench, "7e STOW-RS ?radiology_order_id=²", "4xx with code", error_4xx(), quote("²"), b"not dicom")
    upload_put(
        bench,
        "7f upload PUT, Content-Range of 5,000 digits",
        "4xx with code",
        orders[7],
        filename="range.dcm",
        file_size=1000,
        checksum="0" * 64,
        content_range=f"bytes 0-{digits}/1000",
        body=b"\x00" * 1000,
    )


# --- Setup and report ----------------------------------------------------------------------


def login(port: int, username: str, password: str) -> str:
    answer = request(
        port,
        "POST",
        "/api/v1/auth/token/",
        headers={"Content-Type": "application/json"},
        body=json.dumps({"username": username, "password": password}).encode(),
    )
    if answer.status != 200:
        raise RuntimeError(f"login as {username}: {answer.shown} {answer.head[:300]!r}")
    return str(answer.json()["token"])


# A long (real-world) name on the patient of the CT study: the ReDoS's cost grows with the length of
# the name it is matched against (~C(n, 11) ways to place 11 stars), and demo names are short.
LONG_NAME = """
from apps.radiology.models import RadiologyOrder
patient = RadiologyOrder.objects.select_related("visit__patient").get(pk={order}).visit.patient
patient.first_name, patient.last_name = "Maximiliana Josephine", "Featherstonehaugh-Cholmondeley"
patient.save()
"""


def prepare(
    server: Server, summary: dict[str, Any], tokens: dict[str, str], run_manage: Callable[..., str]
) -> dict[str, Any]:
    """Store CT_small.dcm (case 6 and the signed URL of case 7) and mint a viewer token for its study."""
    run_manage("shell", "-c", LONG_NAME.format(order=summary["radiology_orders"][0]))
    ct_path = Path(get_testdata_file("CT_small.dcm"))
    boundary = uuid.uuid4().hex
    order = summary["radiology_orders"][0]
    answer = request(
        server.port,
        "POST",
        f"{DICOMWEB}/studies?radiology_order_id={order}",
        headers={"Authorization": f"Token {tokens['radtech']}", **STOW_JSON, "Content-Type": stow_type(boundary)},
        body=b"".join(multipart([ct_path.read_bytes()], boundary)),
    )
    if not stored(answer):
        raise RuntimeError(f"storing CT_small.dcm: {answer.shown}")
    doctor = {"Authorization": f"Token {tokens['doctor']}"}
    ct_uids = uids_of(ct_path)
    studies = request(server.port, "GET", f"{API}/studies/", headers=doctor).json()
    study_pk = next(study["id"] for study in studies if study["study_uid"] == ct_uids[0])
    images = request(server.port, "GET", f"{API}/studies/{study_pk}/images/", headers=doctor).json()
    signed = urlsplit(images["series"][0]["images"][0]["image_url"])
    viewer = request(server.port, "GET", f"{API}/studies/{study_pk}/viewer-url/", headers=doctor).json()
    tokens["viewer"] = parse_qs(urlsplit(viewer["viewer_url"]).query)["token"][0]
    return {"ct_uids": ct_uids, "signed_path": f"{signed.path}?{signed.query}"}


def table(rows: list[Row]) -> str:
    def mark(ok: bool) -> str:
        return "ok" if ok else "**FAIL**"

    lines = [
        "| Case | Answer | Expected | s (< 2) | RSS MiB (< 150) | /healthz ms (< 100) | staged | Met | Note |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        marks = row.marks
        healthz = f"{row.healthz_ms:.0f}" + (f" ({row.healthz_failures} failed)" if row.healthz_failures else "")
        cells = [
            row.case,
            f"{row.answer.shown} {mark(marks['answer'])}",
            row.expected,
            f"{row.seconds:.2f} {mark(marks['time'])}",
            f"{row.rss_mib:.0f} {mark(marks['rss'])}",
            f"{healthz} {mark(marks['healthz'])}",
            f"{row.staged} {mark(marks['staging'])}",
            "yes" if row.met else "**FAIL**",
            row.note,
        ]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--source",
        type=Path,
        default=ROOT,
        help="the PACS-lite tree to serve (default this one; e.g. a `git worktree` of an older commit, to compare)",
    )
    parser.add_argument("--budget", type=float, default=240, help="seconds for the cases; later rows are skipped")
    arguments = parser.parse_args()
    began = time.monotonic()

    def step(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {message}", flush=True)

    load_before = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pacs-hostile-")))
        ingest_bombs.check_builders(workdir)
        files = {
            "rle_bomb": workdir / "rle-bomb.dcm",
            "big16": workdir / "big16.dcm",
            "deflate": workdir / "deflate.dcm",
            "j2k_bomb": workdir / "j2k-bomb.dcm",
            "jpeg_bomb": workdir / "jpeg-bomb.dcm",
        }
        builders: dict[str, Callable[[BinaryIO], object]] = {
            "rle_bomb": lambda out: ingest_bombs.write_rle_bomb(out, side=65535, run_pairs=2900),
            "big16": lambda out: ingest_bombs.write_rle_constant(out, side=16384, value=1000, bits=16),
            "deflate": lambda out: ingest_bombs.write_deflate_bomb(out, inflated_bytes=1024 * MIB),
            "j2k_bomb": lambda out: out.write(codestream_bomb(JPEG2000_LOSSLESS)),
            "jpeg_bomb": lambda out: out.write(codestream_bomb(JPEG_BASELINE)),
        }
        for name, build in builders.items():
            with files[name].open("wb") as out:
                build(out)
        step("hostile files built: " + ", ".join(f"{name} {path.stat().st_size:,} B" for name, path in files.items()))
        database_url = stack.enter_context(durable_postgres())
        env = services.pacs_env(workdir, database_url, secrets.token_urlsafe(50))
        env["RADIOLOGY_MAX_UPLOAD_SIZE"] = str(MAX_UPLOAD)
        manage(arguments.source, env, "migrate", "--noinput")
        seeded = manage(arguments.source, env, "seed_demo", "--json", "--orders", "8")
        summary = json.loads(seeded.strip().splitlines()[-1])
        step("PostgreSQL 15 up (fsync=on), migrated, seeded")
        server = stack.enter_context(app_server(env, workdir, database_url, arguments.source))
        tokens = {
            role: login(server.port, summary["users"][role], summary["password"]) for role in ("radtech", "doctor")
        }
        setup = prepare(server, summary, tokens, lambda *args: manage(arguments.source, env, *args))
        step(f"app server up ({WORKERS} granian workers x {THREADS} threads), CT_small.dcm stored, tokens minted")
        bench = Bench(server, tokens, time.monotonic() + arguments.budget)
        cases(bench, files, summary["radiology_orders"], setup)
        step("cases on PostgreSQL done")
        # The wildcard ReDoS was SQLite's (PostgreSQL's regex engine does not backtrack that way), so
        # case 4 runs again on a second server, the same but on SQLite (the default install).
        lite = workdir / "sqlite"
        lite.mkdir()
        lite_url = f"sqlite:///{lite / 'pacs-lite.sqlite3'}"
        lite_env = {
            **services.pacs_env(lite, lite_url, env["DJANGO_SECRET_KEY"]),
            "RADIOLOGY_MAX_UPLOAD_SIZE": env["RADIOLOGY_MAX_UPLOAD_SIZE"],
        }
        manage(arguments.source, lite_env, "migrate", "--noinput")
        lite_summary = json.loads(
            manage(arguments.source, lite_env, "seed_demo", "--json", "--orders", "1").strip().splitlines()[-1]
        )
        lite_server = stack.enter_context(app_server(lite_env, lite, lite_url, arguments.source))
        bench.server = lite_server
        bench.tokens = {
            role: login(lite_server.port, lite_summary["users"][role], lite_summary["password"])
            for role in ("radtech", "doctor")
        }
        prepare(lite_server, lite_summary, bench.tokens, lambda *args: manage(arguments.source, lite_env, *args))
        step("second app server up on SQLite")
        qido_redos(bench, "cd", "SQLite")
        step("cases done")
        server_log = server.log.read_text(errors="replace") + lite_server.log.read_text(errors="replace")

    rows = sorted(bench.rows, key=lambda row: row.case.split()[0])
    met = sum(row.met for row in rows)
    date = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    header = (
        f"Run {date} on {os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, "
        f"PostgreSQL 15 (fsync=on), granian (config/app_server.py) {WORKERS} workers x {THREADS} threads "
        f"(as docker-compose.yml), DJANGO_DEBUG=0, RADIOLOGY_MAX_UPLOAD_SIZE={MAX_UPLOAD // MIB} MiB; "
        "all on 127.0.0.1. "
        f"1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
        f"total {time.monotonic() - began:.0f} s. Command: `make bench-hostile`. Rows 4c and 4d run against a "
        "second, identical server on SQLite (the ReDoS was SQLite's)."
    )
    explain = (
        "RSS: peak VmRSS above idle (sampled every 10 ms) of the app server worker, with its child processes, that "
        "grew most during the row. /healthz: worst latency of a probe every 50 ms (new connection each) while the "
        f"row ran. staged: files the row left in the staging directory. Requests time out after "
        f"{REQUEST_TIMEOUT:.0f} s; a worker above {RSS_GUARD_KIB // 1024} MiB over idle is killed by the bench."
    )
    summary_line = f"{met} of {len(rows)} cases met all targets" + (
        f"; not run (time budget): {', '.join(bench.skipped)}" if bench.skipped else ""
    )
    errors = sum(line.count("Traceback") for line in server_log.splitlines())
    report = "\n\n".join(
        [header, table(rows), explain, f"Tracebacks in the app server log: {errors}.", f"**{summary_line}**"]
    )
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(f"# Hostile inputs against PACS-lite\n\n{report}\n")
    print()
    print(report)
    print(f"\nwritten to {arguments.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
