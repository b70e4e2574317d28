"""PACS-lite against Orthanc as a clinic runs them: durable, shipped settings, one client and many.

Run from the repository root (as root: it may apt-get install orthanc, orthanc-dicomweb,
orthanc-postgresql and wrk, and runs PostgreSQL as the postgres user):  make bench
(= .venv/bin/python bench/compare_orthanc.py; --quick for a short trial run).

What it does, all on 127.0.0.1 and in a temporary directory (never var/):
1. makes a synthetic dataset from pydicom's CT_small.dcm (39 KB, 128x128 16-bit): 5 studies x 2
   series x 50 instances and one study of one 500-instance series (1,000 instances, the
   one-client rows), and 4 studies of 200 instances (the 4-client STOW-RS), every UID distinct;
2. starts one throwaway PostgreSQL 15 cluster with its defaults (fsync on, synchronous_commit
   on): PACS-lite's database and Orthanc's PostgreSQL index live in it, each its own database;
3. starts PACS-lite exactly as `make run` serves it: scripts/serve.sh (migrate, check --deploy,
   supervisord running one granian app server per core with config/app_server.py behind nginx on
   both ports, the DICOM listener and the forwarder), with only DATABASE_URL, the ports and a var directory
   set: no benchmark-only setting;
4. starts Orthanc twice, each with its durability defaults (SyncStorageArea true) and the
   DicomWeb plugin: with its default SQLite index, and with its PostgreSQL index plugin
   (Debian's orthanc-postgresql, Orthanc's advice for production). Every ratio is taken
   against the better of the two, row by row;
5. one client (dicomweb-client; the three servers take turns request by request): STOW-RS in
   batches of 50, QIDO, series metadata (50 and 500 instances, first and again), a frame, a
   rendered JPEG, an instance. With each STOW-RS request, the CPU time (user and system) the
   server's processes and its database server spent on it: CPU per instance stored, the cost
   that decides ingest once every core is busy, and steadier than a rate on a shared machine;
6. many clients: STOW-RS by 4 clients at once (a study each, batches of 50; CPU per instance as
   above, over the whole run), then frames and
   rendered JPEGs with 1, 8 and 32 concurrent keep-alive connections driven by wrk (C, so
   the client costs little of the 2 cores): throughput, p50 and p99 latency. These stand for
   a reading room of OHIF viewers, so PACS-lite is asked as OHIF asks it: with the viewer token
   of the study (`Authorization: Bearer`), which the demo doctor gets from the study's
   viewer-url endpoint, as the EMR does;
7. memory: the total RSS of every PACS-lite process (supervisord and all it runs) idle and at
   its peak during the 32-connection runs, beside Orthanc's; then each server's RSS while it
   takes a ~1 GB DICOM file.
Prints the tables and writes them to bench/results/compare_orthanc.md. Figures are printed,
never asserted. How PACS-lite's cost grows with a year of studies: bench/scale.py (make bench-scale).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime as dt
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import _services as services  # noqa: E402
from _table import PeersRow, peers_table  # noqa: E402
from bench_upload_memory import FRAME_BYTES, MIB, write_big_dicom  # noqa: E402
from bench_upload_memory import upload as resumable_upload  # noqa: E402

ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "compare_orthanc.md"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
SLICE_SPACING = 5.0
STOW_BATCH = 50
STOW_CLIENTS = 4
QUIET_SECONDS = 35
LOAD_CLIENTS = (1, 8, 32)
PACS = "PACS-lite"
ORTHANC_SQLITE = "Orthanc (SQLite index)"
ORTHANC_POSTGRESQL = "Orthanc (PostgreSQL index)"
PEERS = [ORTHANC_SQLITE, ORTHANC_POSTGRESQL]


# --- The dataset --------------------------------------------------------------------------


@dataclass
class Series:
    uid: str
    number: int
    instances: list[tuple[str, bytes]] = field(default_factory=list)  # (SOP Instance UID, Part 10 bytes)


@dataclass
class Study:
    uid: str
    patient_id: str
    series: list[Series] = field(default_factory=list)


def make_dataset(plan: list[list[int]], *, first_number: int = 1) -> list[Study]:
    """Copies of CT_small.dcm relabelled into studies and series, each instance its own slice."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    x, y, z0 = (float(value) for value in template.ImagePositionPatient)
    studies = []
    for study_index, sizes in enumerate(plan, start=first_number):
        study = Study(uid=generate_uid(prefix=None), patient_id=f"BENCH-{study_index:03d}")
        for series_number, count in enumerate(sizes, start=1):
            series = Series(uid=generate_uid(prefix=None), number=series_number)
            for instance_number in range(1, count + 1):
                dataset = copy.copy(template)  # shallow: every changed element is set anew below
                dataset.file_meta = copy.deepcopy(template.file_meta)
                sop_uid = generate_uid(prefix=None)
                dataset.StudyInstanceUID = study.uid
                dataset.SeriesInstanceUID = series.uid
                dataset.SOPInstanceUID = sop_uid
                dataset.file_meta.MediaStorageSOPInstanceUID = sop_uid
                dataset.PatientID = study.patient_id
                dataset.PatientName = f"Bench^Patient{study_index}"
                dataset.SeriesNumber = series_number
                dataset.InstanceNumber = instance_number
                z = z0 - (instance_number - 1) * SLICE_SPACING
                dataset.ImagePositionPatient = [x, y, z]
                dataset.SliceLocation = z
                buffer = io.BytesIO()
                dataset.save_as(buffer, enforce_file_format=True)
                series.instances.append((sop_uid, buffer.getvalue()))
            study.series.append(series)
        studies.append(study)
    return studies


# --- Timing -------------------------------------------------------------------------------


class TimedSession(requests.Session):
    """The session dicomweb-client talks through; it clocks each HTTP exchange.

    An exchange runs from sending the request to having the whole response body; what the
    client then does with the body (json.loads of megabytes of DICOM JSON, splitting a
    multipart, pydicom reading an instance) is the client's cost, not the server's, and on
    this machine it can dwarf the server's (see the note printed under the table).
    """

    def __init__(self) -> None:
        super().__init__()
        self.exchange_ms = 0.0

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        started = time.perf_counter()
        response = super().send(request, **kwargs)
        _ = response.content  # the whole body, inside the clock
        self.exchange_ms += (time.perf_counter() - started) * 1000
        return response


Call = Callable[[int], Any]


def interleaved(reps: int, calls: dict[str, Call], sessions: dict[str, TimedSession]) -> dict[str, list[float]]:
    """Each call once to warm up, then `reps` timed rounds, alternating which server goes first.

    A round's figure is the time of the HTTP exchange(s) the call made (TimedSession).
    """
    for call in calls.values():
        call(0)
    timings: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_number in range(reps):
        for name in names if round_number % 2 == 0 else reversed(names):
            sessions[name].exchange_ms = 0.0
            calls[name](round_number)
            timings[name].append(sessions[name].exchange_ms)
    return timings


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- Servers ------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    base: str  # origin
    dicomweb: str  # DICOMweb root URL
    headers: dict[str, str]  # what every request carries (PACS-lite: the token)
    frame_syntax: str  # the transfer-syntax asked for frames (see frame_accept)
    stow_url: Callable[[int], str]  # study index -> STOW-RS URL
    pids: Callable[[], list[int]]  # every process of the server
    # The processes of the database server it keeps its index in, if that is another process.
    database_pids: Callable[[], list[int]] = list
    session: TimedSession = field(default_factory=lambda: TimedSession())
    client: DICOMwebClient = field(init=False)

    def __post_init__(self) -> None:
        self.session.headers.update(self.headers)
        self.client = self.new_client(self.session)

    def cpu_times(self) -> tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]]:
        """(the server's processes', its database's) CPU times now (services.cpu_times)."""
        return services.cpu_times(self.pids()), services.cpu_times(self.database_pids())

    def new_client(self, session: requests.Session) -> DICOMwebClient:
        return DICOMwebClient(self.dicomweb, session=session, timeout=300)

    @property
    def dicomweb_path(self) -> str:
        return urlsplit(self.dicomweb).path.rstrip("/")

    @property
    def frame_accept(self) -> str:
        return f'multipart/related; type="application/octet-stream"; transfer-syntax={self.frame_syntax}'


@dataclass
class CpuSpent:
    """CPU time the server's processes (user, system) and its database server spent storing `instances`."""

    instances: int = 0
    user_ms: float = 0.0
    system_ms: float = 0.0
    database_ms: float = 0.0

    def add(self, server: Server, before: tuple[dict[int, Any], dict[int, Any]], instances: int) -> None:
        """Count what was spent since `before` (Server.cpu_times) on `instances` more instances."""
        processes, database = server.cpu_times()
        user, system = services.cpu_spent_ms(before[0], processes)
        self.user_ms += user
        self.system_ms += system
        self.database_ms += sum(services.cpu_spent_ms(before[1], database))
        self.instances += instances

    def per_instance(self) -> float:
        """Milliseconds of CPU per stored instance, everything counted."""
        return (self.user_ms + self.system_ms + self.database_ms) / max(self.instances, 1)

    def split(self) -> str:
        count = max(self.instances, 1)
        return (
            f"{self.per_instance():.2f} ms (user {self.user_ms / count:.2f}, system {self.system_ms / count:.2f}, "
            f"database server {self.database_ms / count:.2f})"
        )


def cpu_row(label: str, spent: dict[str, CpuSpent]) -> PeersRow:
    """A row of CPU per stored instance: lower is better, no target of its own (see the notes)."""
    return PeersRow(
        label, "ms", spent[PACS].per_instance(), {name: spent[name].per_instance() for name in PEERS if name in spent}
    )


def store_batch(server: Server, study_index: int, parts: list[bytes], client: DICOMwebClient | None = None) -> None:
    """POST one multipart/related batch through dicomweb-client's own STOW-RS code path.

    The parts are encoded before the clock starts (store_instances would dcmwrite each
    dataset first), so the figure is the server's, not pydicom's on the client.
    """
    answer = (client or server.client)._http_post_multipart_application_dicom(server.stow_url(study_index), parts)
    stored = len(answer.get("ReferencedSOPSequence", []))
    failed = len(answer.get("FailedSOPSequence", []))
    if stored != len(parts) or failed:
        raise RuntimeError(f"{server.name} STOW-RS stored {stored} of {len(parts)}, {failed} failed")


def batches_of(studies: list[Study], first_index: int = 0) -> list[tuple[int, list[bytes]]]:
    """(study index, up to STOW_BATCH Part 10 files of one series) for every series of `studies`."""
    return [
        (study_index, [data for _uid, data in series.instances[start : start + STOW_BATCH]])
        for study_index, study in enumerate(studies, start=first_index)
        for series in study.series
        for start in range(0, len(series.instances), STOW_BATCH)
    ]


# --- One client ---------------------------------------------------------------------------


def one_client(
    arguments: argparse.Namespace, studies: list[Study], servers: list[Server]
) -> tuple[list[PeersRow], list[str]]:
    """The one-client rows: the servers take turns, request by request, the first one rotating."""
    notes: list[str] = []
    rows: list[PeersRow] = []
    reps, big_reps = arguments.reps, max(3, arguments.reps // 3)
    sessions = {s.name: s.session for s in servers}

    def row(label: str, unit: str, figures: dict[str, float], **options: Any) -> None:
        rows.append(PeersRow(label, unit, figures[PACS], {name: figures.get(name) for name in PEERS}, **options))

    def medians(timed: dict[str, list[float]]) -> dict[str, float]:
        return {name: median(values) for name, values in timed.items()}

    batches = batches_of(studies)
    rates: dict[str, list[float]] = {s.name: [] for s in servers}
    totals = dict.fromkeys(rates, 0.0)
    spent = {s.name: CpuSpent() for s in servers}
    for number, (study_index, parts) in enumerate(batches):
        for server in rotated(servers, number):
            server.session.exchange_ms = 0.0
            before = server.cpu_times()
            store_batch(server, study_index, parts)
            spent[server.name].add(server, before, len(parts))
            seconds = server.session.exchange_ms / 1000
            rates[server.name].append(len(parts) / seconds)
            totals[server.name] += seconds
    count = sum(len(parts) for _study, parts in batches)
    row(
        f"STOW-RS ingest, 1 client, batches of {STOW_BATCH} (median of {len(batches)} batches)",
        "inst/s",
        medians(rates),
        higher_is_better=True,
        target=">= 1.5x",
        target_ratio=1.5,
    )
    rows.append(cpu_row("CPU per instance stored, 1 client (server + its database server, user + system)", spent))
    notes.append(
        f"Ingest of {count} instances by one client: "
        + ", ".join(f"{name} {seconds:.1f} s ({count / seconds:.0f} inst/s)" for name, seconds in totals.items())
        + "."
    )
    notes.append(cpu_note(1, spent))

    first, big = studies[0], studies[-1]
    small_series, big_series = first.series[0], big.series[0]

    def timed(count: int, call: Callable[[int, Server], Any]) -> dict[str, float]:
        return medians(interleaved(count, {s.name: (lambda i, s=s: call(i, s)) for s in servers}, sessions))

    row(
        f"QIDO-RS studies (all {len(studies)}) (median of {reps})",
        "ms",
        timed(reps, lambda _i, s: s.client.search_for_studies()),
        target=">= 1.0x",
        target_ratio=1.0,
    )
    row(
        f"QIDO-RS series of a study (median of {reps})",
        "ms",
        timed(reps, lambda _i, s: s.client.search_for_series(study_instance_uid=first.uid)),
        target=">= 1.0x",
        target_ratio=1.0,
    )
    # First request for a series (nothing cached yet): each 50-instance series once, then the 500-instance one.
    cold: dict[str, list[float]] = {s.name: [] for s in servers}
    small_all = [(study, series) for study in studies[:-1] for series in study.series]
    for number, (study, series) in enumerate([*small_all, (big, big_series)]):
        for s in rotated(servers, number):
            s.session.exchange_ms = 0.0
            s.client.retrieve_series_metadata(study.uid, series.uid)
            cold[s.name].append(s.session.exchange_ms)
    n_small = len(small_all)
    row(
        f"Series metadata, 50 instances, first request (median of {n_small} series)",
        "ms",
        {name: median(values[:n_small]) for name, values in cold.items()},
        target=">= 3x",
        target_ratio=3.0,
    )
    row(
        "Series metadata, 500 instances, first request (1 series)",
        "ms",
        {name: values[-1] for name, values in cold.items()},
        target=">= 3x",
        target_ratio=3.0,
    )
    for series, count_reps, study_uid in ((small_series, reps, first.uid), (big_series, big_reps, big.uid)):

        def metadata(_i: int, s: Server, study_uid: str = study_uid, series: Series = series) -> None:
            answer = s.client.retrieve_series_metadata(study_uid, series.uid)
            if len(answer) != len(series.instances):
                raise RuntimeError(f"{s.name} metadata has {len(answer)} of {len(series.instances)} instances")

        row(
            f"Series metadata, {len(series.instances)} instances, again (median of {count_reps})",
            "ms",
            timed(count_reps, metadata),
            target=">= 3x",
            target_ratio=3.0,
        )

    def frame(i: int, s: Server) -> None:
        sop = small_series.instances[i % len(small_series.instances)][0]
        parts = s.client.retrieve_instance_frames(
            first.uid,
            small_series.uid,
            sop,
            frame_numbers=[1],
            media_types=(("application/octet-stream", s.frame_syntax),),
        )
        if len(parts) != 1 or len(parts[0]) != 128 * 128 * 2:
            raise RuntimeError(f"{s.name} frame has {len(parts[0]) if parts else 0} bytes")

    row(
        f"Frame, multipart octet-stream (median of {reps})",
        "ms",
        timed(reps, frame),
        target=">= 1.0x",
        target_ratio=1.0,
    )

    def rendered(i: int, s: Server, *, fixed: bool) -> None:
        sop = big_series.instances[0 if fixed else 1 + i][0]
        jpeg = s.client.retrieve_instance_rendered(big.uid, big_series.uid, sop, media_types=("image/jpeg",))
        if not jpeg.startswith(b"\xff\xd8"):
            raise RuntimeError(f"{s.name} rendered is not a JPEG")

    row(
        f"Rendered JPEG, first request for an instance (median of {reps})",
        "ms",
        timed(reps, lambda i, s: rendered(i, s, fixed=False)),
        target=">= 1.0x",
        target_ratio=1.0,
    )
    row(
        f"Rendered JPEG, same instance again (median of {reps})",
        "ms",
        timed(reps, lambda i, s: rendered(i, s, fixed=True)),
        target=">= 1.0x",
        target_ratio=1.0,
    )
    second = studies[1].series[1]

    def instance(i: int, s: Server) -> None:
        sop = second.instances[i % len(second.instances)][0]
        dataset = s.client.retrieve_instance(studies[1].uid, second.uid, sop)
        if dataset.SOPInstanceUID != sop:
            raise RuntimeError(f"{s.name} returned another instance")

    row(f"Instance retrieval, application/dicom (median of {reps})", "ms", timed(reps, instance))
    notes.append(
        "Frames: PACS-lite is asked as OHIF asks (transfer-syntax=*), Orthanc with the explicit little endian "
        "syntax its plugin needs; all answer the same native bytes."
    )
    notes.append(
        "Rendered JPEG 'first request' rotates through instances nobody asked for yet (PACS-lite decodes, then "
        "caches the render); 'same instance again' repeats one (PACS-lite answers from its render cache)."
    )
    return rows, notes


def rotated(servers: list[Server], number: int) -> list[Server]:
    """The servers in turn order for round `number`: who goes first rotates."""
    shift = number % len(servers)
    return servers[shift:] + servers[:shift]


# --- Many clients -------------------------------------------------------------------------


def concurrent_stow(server: Server, studies: list[Study], first_index: int) -> tuple[float, CpuSpent]:
    """Each of `studies` stored by its own client thread (own connection), at once: (instances/s
    overall, the CPU the server and its database spent)."""
    failures: list[BaseException] = []

    def client_run(study_index: int, study: Study) -> None:
        session = requests.Session()
        session.headers.update(server.headers)
        client = server.new_client(session)
        try:
            for index, parts in batches_of([study], study_index):
                store_batch(server, index, parts, client)
        except BaseException as error:
            failures.append(error)

    threads = [
        threading.Thread(target=client_run, args=(first_index + offset, study)) for offset, study in enumerate(studies)
    ]
    before = server.cpu_times()
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{server.name}: concurrent STOW-RS failed: {failures[0]!r}")
    count = sum(len(s.instances) for study in studies for s in study.series)
    spent = CpuSpent()
    spent.add(server, before, count)
    return count / seconds, spent


def cpu_note(clients: int, spent: dict[str, CpuSpent]) -> str:
    """What each server spent per instance stored, split, and what the 1.5x ingest target asks of it."""
    pacs, best = spent[PACS].per_instance(), min(spent[name].per_instance() for name in PEERS if name in spent)
    return (
        f"CPU per instance stored by {clients} client{'s' if clients > 1 else ''}: "
        + "; ".join(f"{name} {figures.split()}" for name, figures in spent.items())
        + f". Ingest at 1.5x the better Orthanc's rate on the same cores needs about {best / 1.5:.2f} ms "
        f"(the better Orthanc's {best:.2f} / 1.5) where PACS-lite spends {pacs:.2f}."
    )


# wrk runs this script in each of its threads: the paths to ask, in turn, from a file.
WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("BENCH_WRK_PATHS")) do paths[#paths + 1] = line end
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter % #paths) + 1])
end
"""


@dataclass
class LoadFigures:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx answers and socket errors


def _duration_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(
    server: Server, paths: list[str], accept: str, *, connections: int, seconds: int, workdir: Path
) -> LoadFigures:
    """wrk with `connections` keep-alive connections for `seconds`, cycling through `paths`."""
    script, path_file = workdir / "rotate.lua", workdir / f"paths-{uuid.uuid4().hex[:8]}.txt"
    script.write_text(WRK_SCRIPT)
    path_file.write_text("\n".join(paths) + "\n")
    headers = [
        item for name, value in {**server.headers, "Accept": accept}.items() for item in ("-H", f"{name}: {value}")
    ]
    command = [
        "wrk",
        f"-t{min(2, connections)}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "30s",
        "-s",
        str(script),
        *headers,
        server.base,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, check=True, env={**os.environ, "BENCH_WRK_PATHS": str(path_file)}
    )
    out = result.stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    if set(latency) != {"50", "99"}:
        raise RuntimeError(f"wrk against {server.name} printed no latency distribution:\n{out}{result.stderr}")
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    )
    return LoadFigures(
        float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        _duration_ms(latency["50"]),
        _duration_ms(latency["99"]),
        total,
        errors,
    )


def ensure_wrk() -> str:
    """Debian's wrk (installed when missing, as root); its version line."""
    if not shutil.which("wrk"):
        if os.geteuid() != 0:
            raise RuntimeError("wrk is not installed; run as root (apt-get install wrk)")
        services._apt_install("wrk")
    version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (version.stdout or version.stderr).splitlines()[0].strip()


@dataclass
class LoadResults:
    rows: list[PeersRow] = field(default_factory=list)
    table: list[str] = field(default_factory=list)
    rss_peak: dict[str, float] = field(default_factory=dict)
    rss_idle: dict[str, float] = field(default_factory=dict)
    rss_by_role: dict[str, dict[str, float]] = field(default_factory=dict)  # after each 32-connection run


def rss_by_role(pids: list[int]) -> dict[str, float]:
    """PACS-lite's RSS summed by what each process is (from its command line), in MiB."""
    roles: dict[str, float] = {}
    for pid in pids:
        command = services._cmdline(pid)
        role = next(
            (
                label
                for needle, label in (
                    ("serve_descriptor", "ingest parse helper"),
                    ("pacs-api", "app servers (granian)"),
                    ("nginx", "nginx (both ports)"),
                    ("run_dicom_listener", "DICOM listener"),
                    ("run_forwarder", "forwarder"),
                    ("signal.pause", "forwarder (idle, no destination)"),
                    ("supervisor_fatal", "fatal-event listener"),
                    ("supervisord", "supervisord"),
                )
                if needle in command
            ),
            "other",
        )
        roles[role] = roles.get(role, 0.0) + services.total_rss_mib([pid])
    return roles


def viewer_of(pacs: Server, summary: dict[str, Any], study: Study) -> Server:
    """PACS-lite as an OHIF viewer of `study` asks it: the study's viewer token as `Authorization: Bearer`.

    The demo doctor signs in, finds the study and asks for its viewer URL (the EMR's calls);
    OHIF takes `token` from that URL and sends it with every request (FIELD-NOTES).
    """
    doctor = requests.Session()
    signed_in = doctor.post(
        f"{pacs.base}/api/v1/auth/token/",
        json={"username": summary["users"]["doctor"], "password": summary["password"]},
        timeout=30,
    )
    signed_in.raise_for_status()
    doctor.headers["Authorization"] = f"Token {signed_in.json()['token']}"
    listed = doctor.get(f"{pacs.base}/api/v1/radiology/studies/", timeout=30)
    listed.raise_for_status()
    found = [row["id"] for row in listed.json() if row["study_uid"] == study.uid]
    if len(found) != 1:
        raise RuntimeError(f"the demo doctor sees {len(found)} studies with the benchmark's study UID")
    answer = doctor.get(f"{pacs.base}/api/v1/radiology/studies/{found[0]}/viewer-url/", timeout=30)
    answer.raise_for_status()
    token = parse_qs(urlsplit(answer.json()["viewer_url"]).query)["token"][0]
    return dataclasses.replace(pacs, headers={"Authorization": f"Bearer {token}"}, session=TimedSession())


def many_clients(arguments: argparse.Namespace, servers: list[Server], big: Study, workdir: Path) -> LoadResults:
    """Frames and rendered JPEGs of the 500-instance series under 1, 8 and 32 connections, server after server."""
    results = LoadResults()
    series = big.series[0]
    kinds = {
        "Frame": lambda s: (
            [
                f"{s.dicomweb_path}/studies/{big.uid}/series/{series.uid}/instances/{sop}/frames/1"
                for sop, _ in series.instances
            ],
            s.frame_accept,
        ),
        "Rendered JPEG": lambda s: (
            [
                f"{s.dicomweb_path}/studies/{big.uid}/series/{series.uid}/instances/{sop}/rendered"
                for sop, _ in series.instances
            ],
            "image/jpeg",
        ),
    }
    # Idle: after the last ingest, as long as a parse helper lives unused (ingest/parse_helper.py's
    # IDLE_SECONDS, 30) and a little more: a quiet server, as between a modality's studies.
    time.sleep(QUIET_SECONDS)
    for s in servers:
        results.rss_idle[s.name] = services.total_rss_mib(s.pids())
    results.table += [
        "| Request | connections | server | requests/s | p50 | p99 | requests | errors |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, paths_of in kinds.items():
        for connections in LOAD_CLIENTS:
            figures: dict[str, LoadFigures] = {}
            for s in rotated(servers, connections):
                paths, accept = paths_of(s)
                run_wrk(s, paths, accept, connections=connections, seconds=2, workdir=workdir)  # warm-up
                sampler = services.TotalRssSampler(s.pids()) if connections == max(LOAD_CLIENTS) else None
                with sampler or contextlib.nullcontext():
                    figures[s.name] = run_wrk(
                        s, paths, accept, connections=connections, seconds=arguments.load_seconds, workdir=workdir
                    )
                if sampler is not None:
                    results.rss_peak[s.name] = max(results.rss_peak.get(s.name, 0.0), sampler.peak)
                    if s.name == PACS:
                        results.rss_by_role[kind] = rss_by_role(s.pids())
            for name, figure in figures.items():
                results.table.append(
                    f"| {kind} | {connections} | {name} | {figure.requests_per_second:,.0f} | "
                    f"{figure.p50_ms:.1f} ms | {figure.p99_ms:.1f} ms | {figure.requests:,} | {figure.errors} |"
                )
            peers = {name: figures[name] for name in PEERS if name in figures}
            target = connections > 1
            results.rows.append(
                PeersRow(
                    f"{kind}, {connections} connection{'s' if connections > 1 else ''}: throughput",
                    "req/s",
                    figures[PACS].requests_per_second,
                    {name: figure.requests_per_second for name, figure in peers.items()},
                    higher_is_better=True,
                    target=">= 1.5x" if target else "",
                    target_ratio=1.5 if target else None,
                )
            )
            results.rows.append(
                PeersRow(
                    f"{kind}, {connections} connection{'s' if connections > 1 else ''}: p99 latency",
                    "ms",
                    figures[PACS].p99_ms,
                    {name: figure.p99_ms for name, figure in peers.items()},
                    target=">= 1.0x (no worse)" if target else "",
                    target_ratio=1.0 if target else None,
                )
            )
    return results


@dataclass
class MemoryFigures:
    label: str
    idle_mib: float
    peak_mib: float
    hwm_mib: float
    seconds: float
    size: int

    @property
    def delta(self) -> float:
        return self.peak_mib - self.idle_mib


def pacs_upload_memory(
    pacs_base: str, token: str, workers: list[int], order_ids: list[int], size_mb: int, workdir: Path
) -> list[MemoryFigures]:
    """RSS of the app server workers while a ~1 GB DICOM goes in, whole and in 64 MiB chunks."""
    frames = max(1, size_mb * MIB // FRAME_BYTES)
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    figures = []
    for (label, chunk), order_id in zip((("whole PUT", None), ("64 MiB chunks", 64 * MIB)), order_ids, strict=True):
        path = workdir / f"big-{uuid.uuid4().hex[:8]}.dcm"
        big = write_big_dicom(
            path, frames=frames, study_uid=generate_uid(prefix=None), series_uid=generate_uid(prefix=None)
        )
        time.sleep(0.5)
        idle = {pid: services.status_kib(pid, "VmRSS") for pid in workers}
        ticks = {pid: services.cpu_ticks(pid) for pid in workers}
        with services.RssSampler(workers) as sampler:
            started = time.monotonic()
            response = resumable_upload(session, pacs_base, order_id, big, chunk_bytes=chunk)
            seconds = time.monotonic() - started
            time.sleep(0.1)
        if response.status_code != 201 or response.json()["image"]["checksum"] != big.checksum:
            raise RuntimeError(f"upload ({label}) did not complete: {response.status_code} {response.text[:300]}")
        # The worker that served the upload is the one that spent the most CPU time meanwhile.
        pid = max(workers, key=lambda p: services.cpu_ticks(p) - ticks[p])
        figures.append(
            MemoryFigures(
                f"PACS-lite, {label}",
                idle[pid] / 1024,
                sampler.peaks[pid] / 1024,
                services.status_kib(pid, "VmHWM") / 1024,
                seconds,
                big.size,
            )
        )
        path.unlink()
    return figures


def orthanc_upload_memory(base: str, pid: int, size_mb: int, workdir: Path) -> MemoryFigures | None:
    """RSS of Orthanc while it takes the same kind of file through POST /instances."""
    frames = max(1, size_mb * MIB // FRAME_BYTES)
    path = workdir / "big-orthanc.dcm"
    big = write_big_dicom(
        path, frames=frames, study_uid=generate_uid(prefix=None), series_uid=generate_uid(prefix=None)
    )
    time.sleep(0.5)
    idle = services.status_kib(pid, "VmRSS")
    try:
        with services.RssSampler([pid]) as sampler, path.open("rb") as handle:
            started = time.monotonic()
            response = requests.post(
                f"{base}/instances", data=handle, headers={"Content-Type": "application/dicom"}, timeout=900
            )
            seconds = time.monotonic() - started
            time.sleep(0.1)
    finally:
        path.unlink()
    if not response.ok:
        print(f"Orthanc refused the {size_mb} MB file: {response.status_code} {response.text[:200]}", flush=True)
        return None
    return MemoryFigures(
        "Orthanc, POST /instances",
        idle / 1024,
        sampler.peaks[pid] / 1024,
        services.status_kib(pid, "VmHWM") / 1024,
        seconds,
        big.size,
    )


def memory_table(figures: list[MemoryFigures]) -> str:
    lines = [
        "| ~1 GB upload | idle RSS | peak RSS (20 ms samples) | peak - idle | VmHWM after | seconds | MiB/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for figure in figures:
        lines.append(
            f"| {figure.label} | {figure.idle_mib:.0f} MiB | {figure.peak_mib:.0f} MiB | {figure.delta:.0f} MiB | "
            f"{figure.hwm_mib:.0f} MiB | {figure.seconds:.1f} | {figure.size / MIB / figure.seconds:.0f} |"
        )
    return "\n".join(lines)


# --- Main ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30, help="timed repetitions per one-client read (a third for big)")
    parser.add_argument("--load-seconds", type=int, default=10, help="seconds of each wrk run (default 10)")
    parser.add_argument("--upload-mb", type=int, default=1024, help="size of the big upload in MiB (default 1024)")
    parser.add_argument("--skip-upload", action="store_true", help="skip the ~1 GB upload memory measurement")
    parser.add_argument("--quick", action="store_true", help="a trial run: 5 reps, 3 s load runs, no big upload")
    parser.add_argument("--output", type=Path, default=RESULTS)
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.reps, arguments.load_seconds, arguments.skip_upload = 5, 3, True
    began = time.monotonic()

    def step(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {message}", flush=True)

    load_before = os.getloadavg()[0]
    orthanc_version = services.ensure_orthanc()
    postgresql_plugin = services.ensure_orthanc_postgresql()
    wrk_version = ensure_wrk()
    step(f"{orthanc_version}, DicomWeb plugin {services.plugin_version()}, PostgreSQL plugin {postgresql_plugin}")
    studies = make_dataset([[50, 50]] * 5 + [[500]])
    stow_studies = make_dataset([[200]] * STOW_CLIENTS, first_number=len(studies) + 1)
    instance_count = sum(len(s.instances) for study in studies for s in study.series)
    step(f"dataset: {len(studies)} + {len(stow_studies)} studies from CT_small.dcm")

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pacs-vs-orthanc-")))
        database = stack.enter_context(services.postgres(durable=True))
        orthanc_pg_options = services.orthanc_postgresql_options(database, "orthanc")
        pacs_server = stack.enter_context(services.serve_pacs(workdir, database.url))
        seeded = pacs_server.manage("seed_demo", "--json", "--orders", str(len(studies) + len(stow_studies) + 2))
        summary = json.loads(seeded.strip().splitlines()[-1])
        order_ids = summary["radiology_orders"]
        step(f"PostgreSQL (defaults) and PACS-lite (scripts/serve.sh) up; seeded {len(order_ids)} orders")
        token = requests.post(
            f"{pacs_server.base}/api/v1/auth/token/",
            json={"username": summary["users"]["radtech"], "password": summary["password"]},
            timeout=30,
        ).json()["token"]
        orthanc_sqlite_base, orthanc_sqlite_pid = stack.enter_context(services.orthanc(workdir / "orthanc-sqlite"))
        orthanc_pg_base, orthanc_pg_pid = stack.enter_context(
            services.orthanc(workdir / "orthanc-postgresql", orthanc_pg_options)
        )
        step("both Orthancs up")
        pacs_dicomweb = f"{pacs_server.base}/api/v1/radiology/dicomweb"
        pacs = Server(
            PACS,
            pacs_server.base,
            pacs_dicomweb,
            {"Authorization": f"Token {token}"},
            "*",  # as OHIF asks
            lambda index: f"{pacs_dicomweb}/studies?radiology_order_id={order_ids[index]}",
            pacs_server.pids,
            database.pids,
        )

        def orthanc_server(name: str, base: str, pid: int, database_pids: Callable[[], list[int]]) -> Server:
            return Server(
                name,
                base,
                f"{base}/dicom-web",
                {},
                EXPLICIT_LITTLE,  # its plugin needs the syntax named (FIELD-NOTES)
                lambda _index: f"{base}/dicom-web/studies",
                lambda: [pid],
                database_pids,
            )

        servers = [
            pacs,
            orthanc_server(ORTHANC_SQLITE, orthanc_sqlite_base, orthanc_sqlite_pid, list),
            orthanc_server(ORTHANC_POSTGRESQL, orthanc_pg_base, orthanc_pg_pid, database.pids),
        ]
        rows, notes = one_client(arguments, studies, servers)
        step("one-client rows done")

        stow_runs = {s.name: concurrent_stow(s, stow_studies, len(studies)) for s in servers}
        stow_rates = {name: rate for name, (rate, _spent) in stow_runs.items()}
        stow_spent = {name: spent for name, (_rate, spent) in stow_runs.items()}
        after_ingest = {s.name: services.total_rss_mib(s.pids()) for s in servers}
        rows.append(
            PeersRow(
                f"STOW-RS ingest, {STOW_CLIENTS} clients at once (a study of 200 each, batches of {STOW_BATCH})",
                "inst/s",
                stow_rates[PACS],
                {name: stow_rates[name] for name in PEERS},
                higher_is_better=True,
                target=">= 1.5x",
                target_ratio=1.5,
            )
        )
        rows.append(
            cpu_row(
                f"CPU per instance stored, {STOW_CLIENTS} clients (server + its database server, user + system)",
                stow_spent,
            )
        )
        notes.append(cpu_note(STOW_CLIENTS, stow_spent))
        step("4-client STOW-RS done")
        reading_room = [viewer_of(pacs, summary, studies[-1]), *servers[1:]]
        load = many_clients(arguments, reading_room, studies[-1], workdir)
        rows += load.rows
        step("wrk load runs done")
        rows.append(
            PeersRow(
                f"Total RSS of the server's processes, right after the {STOW_CLIENTS}-client ingest",
                "MiB",
                after_ingest[PACS],
                {name: after_ingest[name] for name in PEERS},
                show_ratio=False,
            )
        )
        rows.append(
            PeersRow(
                f"Total RSS of the server's processes, idle ({QUIET_SECONDS} s later)",
                "MiB",
                load.rss_idle[PACS],
                {name: load.rss_idle[name] for name in PEERS},
                show_ratio=False,
            )
        )
        rows.append(
            PeersRow(
                f"Total RSS of the server's processes, peak during the {max(LOAD_CLIENTS)}-connection runs",
                "MiB",
                load.rss_peak[PACS],
                {name: load.rss_peak[name] for name in PEERS},
                target="< 600 MiB",
                target_pacs_max=600,
                show_ratio=False,
            )
        )
        processes = len(pacs_server.pids())
        for kind, roles in load.rss_by_role.items():
            notes.append(
                f"PACS-lite's RSS by process after the {max(LOAD_CLIENTS)}-connection {kind} run: "
                + ", ".join(f"{role} {mib:.0f} MiB" for role, mib in sorted(roles.items(), key=lambda r: -r[1]))
                + "."
            )
        notes.append(
            f"PACS-lite's total RSS is the sum over its {processes} processes (supervisord, the app servers' "
            "main processes and workers, nginx on both ports, the DICOM listener, the forwarder, the fatal "
            "listener, and a parse helper per worker that ingested in the last 30 s), "
            "shared pages counted in each as `ps` shows them; Orthanc is one process."
        )

        memory: list[MemoryFigures] = []
        if not arguments.skip_upload:
            workers = pacs_server.api_worker_pids()
            memory = pacs_upload_memory(pacs_server.base, token, workers, order_ids[-2:], arguments.upload_mb, workdir)
            step("PACS-lite upload memory done")
            orthanc_memory = orthanc_upload_memory(
                orthanc_sqlite_base, orthanc_sqlite_pid, arguments.upload_mb, workdir
            )
            if orthanc_memory is not None:
                memory.append(orthanc_memory)
            step("Orthanc upload memory done")
            worst = max((f for f in memory if f.label.startswith(PACS)), key=lambda f: f.delta)
            rows.append(
                PeersRow(
                    f"Peak RSS above idle during a {arguments.upload_mb} MiB upload (worst PACS-lite mode)",
                    "MiB",
                    worst.delta,
                    {ORTHANC_SQLITE: orthanc_memory.delta if orthanc_memory else None},
                    target="< 100 MiB",
                    target_pacs_max=100,
                    show_ratio=False,  # a ratio of two differences, one near 0, says nothing
                )
            )

    date = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_avg = f"1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    configuration = "\n".join(
        [
            "- **PACS-lite**: as `make run` serves it (`scripts/serve.sh`: supervisord, one granian app server "
            "per core with `config/app_server.py`, nginx on both ports handing each request to the least busy, "
            "every setting at its default), "
            "PostgreSQL 15 with its defaults (fsync on, synchronous_commit on), filesystem store (each new file "
            "fsync'd before its row commits).",
            f"- **{ORTHANC_SQLITE}**: {orthanc_version}, DicomWeb plugin {services.plugin_version()}, every option "
            "at its default (SyncStorageArea true).",
            f"- **{ORTHANC_POSTGRESQL}**: the same, with Debian's orthanc-postgresql {postgresql_plugin} index plugin "
            "(EnableIndex true, files on disk, its other options default) on the same PostgreSQL cluster.",
            f"- Command: `make bench` (`.venv/bin/python bench/compare_orthanc.py --reps {arguments.reps} "
            f"--load-seconds {arguments.load_seconds}`). Run {date} on {os.cpu_count()} cores "
            f"({platform.machine()}), Python {platform.python_version()}, {wrk_version.split(' [')[0]}; {load_avg}; "
            f"total {time.monotonic() - began:.0f} s.",
        ]
    )
    method = (
        f"Dataset: {instance_count} instances of CT_small.dcm (128x128, 16-bit, explicit VR LE, ~39 KB) in "
        f"{len(studies)} studies, and {STOW_CLIENTS} more studies of 200 for the {STOW_CLIENTS}-client ingest. "
        "One-client rows: dicomweb-client over requests, the servers taking turns request by request; each figure "
        "is the HTTP exchange (request sent to whole body received), the client's decoding excluded. Many-client "
        f"rows: wrk, {arguments.load_seconds} s per run after a 2 s warm-up, keep-alive connections cycling "
        "through the 500 instances of one series; one server at a time; PACS-lite asked as OHIF asks it, with "
        "the study's viewer token (`Authorization: Bearer`, from the viewer-url endpoint), Orthanc with no "
        "authentication."
    )
    ratios = "Ratios are against the better Orthanc of each row, oriented so that **>1 means PACS-lite is better**."
    report = "\n\n".join(
        [
            configuration,
            method,
            ratios,
            "### PACS-lite and Orthanc, same data, same run",
            peers_table(rows, PEERS),
            "### Many connections (wrk)",
            "\n".join(load.table),
            *(["Memory while a ~1 GB file goes in (the serving process):", memory_table(memory)] if memory else []),
            "\n".join(f"- {note}" for note in notes),
        ]
    )
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(f"# PACS-lite vs Orthanc, durable\n\n{report}\n")
    print()
    print(report)
    print(f"\nwritten to {arguments.output}; total {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
