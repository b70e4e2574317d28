"""PACS-lite's DICOM listener against Orthanc's DICOM server: the same files, the same dcmtk clients, one run.

Run from the repository root (as root: it may apt-get install orthanc and runs PostgreSQL as
the postgres user):  make bench-dimse   (= .venv/bin/python bench/compare_dimse.py)

Both servers as a clinic runs them, on 127.0.0.1, in a temporary directory (never var/):
- PACS-lite as `make run` configures it (bench/_services.pacs_env: production settings, the
  filesystem store, DATABASE_CONN_MAX_AGE left at the settings default), on a throwaway
  PostgreSQL 15 with PostgreSQL's own defaults (fsync on: an acknowledged C-STORE is a committed
  row), its listener started as supervisord's `dicom` program starts it (`python manage.py
  run_dicom_listener --host 127.0.0.1 --port P`). Two known nodes (RADIOLOGY_DICOM_NODES): the
  modality BENCHMOD stores, the workstation BENCHWS (with a C-MOVE port) queries and retrieves.
- Orthanc (Debian's package, no plugin) with its durability defaults: SyncStorageArea true, its
  SQLite index; DicomServerEnabled on a free port, BENCHMOD and BENCHWS in DicomModalities.
- Nagle's algorithm off for the clients and Orthanc (TCP_NODELAY=1, read by Debian's dcmtk, which
  Orthanc links; the pynetdicom client sets it on its socket): with it on, every dcmtk exchange on
  loopback waits ~40 ms for a delayed ACK and both servers measure the same client-bound figure.
  --nagle leaves dcmtk's default. PACS-lite's listener sets TCP_NODELAY on its own sockets, as shipped.

Data: copies of pydicom's CT_small.dcm (128x128, 16-bit, explicit VR little endian, ~39 KB), every
UID distinct, each study with the accession number, patient ID and name of one seeded order
(`seed_demo --orders N`), so PACS-lite files every instance into its order (the normal path;
the script checks that nothing went to the unmatched inbox). A set of --instances instances is
4 quarters of 3 studies each (series of up to 50); every timed store gets a fresh set, and each
set goes to both servers.

Rows (medians; the servers alternate which goes first, round by round):
1. storescu, one association per set: instances/s;
2. 4 storescu processes at once, a quarter each: instances/s (first start to last exit);
3. study-level C-FIND by StudyInstanceUID and by PatientName wildcard: findscu (a process per
   query, whose startup both pay) and a pynetdicom SCU sending N C-FINDs over one association;
4. getscu of a 500-instance series (C-GET), written to disk by getscu;
5. the serving process's peak RSS (VmRSS every 20 ms) above its idle RSS while it takes one ~1 GiB
   multi-frame instance by storescu;
6. rows 1-4 again against pynetdicom alone (bench/_pynetdicom_floor.py: handlers that do no work),
   in a second table: the fastest any pynetdicom-based server can be here, so how much of each
   gap to Orthanc is the library's and how much PACS-lite's own work.
Prints a table and writes it to bench/results/dimse-<date>.md. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import requests
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import _services as services  # noqa: E402
from _table import PeersRow, Row, comparison_table, fmt  # noqa: E402
from bench_upload_memory import FRAME_BYTES, MIB, write_big_dicom  # noqa: E402

ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
MODALITY_AE = "BENCHMOD"
WORKSTATION_AE = "BENCHWS"
PACS_AE = "PACSLITE"
ORTHANC_AE = "ORTHANC"
SLICE_SPACING = 5.0
SERIES_SIZE = 50
STUDY_SIZE = 100
QUARTERS = 4
RETRIEVE_SERIES_SIZE = 500
PENDING = (0xFF00, 0xFF01)
# The study-level keys a workstation's study list asks for; all are in Orthanc's index (no file read).
STUDY_RETURN_KEYS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)


# --- The data -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderIdentity:
    """What a modality's worklist would have given it for one order."""

    accession: str
    patient_id: str
    patient_name: str
    sex: str
    birth_date: str

    def dicom_attributes(self) -> dict[str, str]:
        """The identity as DICOM keywords and values, as the modality writes it into each instance."""
        return {
            "AccessionNumber": self.accession,
            "PatientID": self.patient_id,
            "PatientName": self.patient_name,
            "PatientSex": self.sex,
            "PatientBirthDate": self.birth_date,
        }


@dataclass
class StudyFiles:
    uid: str
    identity: OrderIdentity
    series_uids: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)


class Orders:
    """The seeded orders, handed out one per study."""

    def __init__(self, identities: list[OrderIdentity]) -> None:
        self._left = list(identities)

    def take(self) -> OrderIdentity:
        return self._left.pop(0)


class Maker:
    """Writes relabelled copies of CT_small.dcm, one file per instance, each its own slice."""

    def __init__(self, directory: Path, orders: Orders) -> None:
        self.directory = directory
        self.orders = orders
        self.template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        self.x, self.y, self.z0 = (float(value) for value in self.template.ImagePositionPatient)
        self.written = 0

    def study(self, name: str, series_sizes: list[int]) -> StudyFiles:
        identity = self.orders.take()
        study = StudyFiles(uid=generate_uid(prefix=None), identity=identity)
        folder = self.directory / name
        folder.mkdir(parents=True)
        for series_number, count in enumerate(series_sizes, start=1):
            series_uid = generate_uid(prefix=None)
            study.series_uids.append(series_uid)
            for instance_number in range(1, count + 1):
                dataset = copy.copy(self.template)  # shallow: every changed element is set anew below
                dataset.file_meta = copy.deepcopy(self.template.file_meta)
                sop_uid = generate_uid(prefix=None)
                dataset.StudyInstanceUID = study.uid
                dataset.SeriesInstanceUID = series_uid
                dataset.SOPInstanceUID = sop_uid
                dataset.file_meta.MediaStorageSOPInstanceUID = sop_uid
                for keyword, value in identity.dicom_attributes().items():
                    setattr(dataset, keyword, value)
                dataset.SeriesNumber = series_number
                dataset.InstanceNumber = instance_number
                z = self.z0 - (instance_number - 1) * SLICE_SPACING
                dataset.ImagePositionPatient = [self.x, self.y, z]
                dataset.SliceLocation = z
                path = folder / f"{series_number:02d}-{instance_number:04d}.dcm"
                dataset.save_as(path, enforce_file_format=True)
                study.paths.append(path)
                self.written += 1
        return study

    def instance_set(self, name: str, instances: int) -> list[list[Path]]:
        """`instances` instances in QUARTERS quarters of whole studies (up to STUDY_SIZE each)."""
        quarters: list[list[Path]] = []
        for quarter in range(QUARTERS):
            left = instances // QUARTERS + (1 if quarter < instances % QUARTERS else 0)
            paths: list[Path] = []
            number = 0
            while left > 0:
                size = min(left, STUDY_SIZE)
                sizes = [min(size, SERIES_SIZE), size - min(size, SERIES_SIZE)]
                paths += self.study(f"{name}/q{quarter}-s{number}", [s for s in sizes if s]).paths
                left -= size
                number += 1
            quarters.append(paths)
        return quarters


def write_big_instance(path: Path, *, frames: int, identity: OrderIdentity) -> int:
    """A multi-frame 16-bit instance written header first, then pixel data frame by frame (never
    whole in memory), as bench_upload_memory.write_big_dicom does, but with an order's identity,
    in a study of its own. Returns its size."""
    big = write_big_dicom(
        path,
        frames=frames,
        study_uid=generate_uid(prefix=None),
        series_uid=generate_uid(prefix=None),
        **identity.dicom_attributes(),
    )
    return big.size


# --- The servers --------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    ae_title: str
    port: int
    pid: int
    count_instances: Callable[[], int] | None  # None: keeps nothing (the pynetdicom floor)


def pacs_counts() -> tuple[int, int]:
    """(instances filed into orders, instances held unmatched) in PACS-lite's database."""
    from apps.radiology.models import RadiologyImage, UnmatchedImage

    return RadiologyImage.objects.count(), UnmatchedImage.objects.count()


def order_identities(order_ids: list[int]) -> list[OrderIdentity]:
    from apps.radiology.models import RadiologyOrder

    orders = RadiologyOrder.objects.filter(pk__in=order_ids).select_related("visit__patient").order_by("pk")
    return [
        OrderIdentity(
            accession=order.accession_number,
            patient_id=order.visit.patient.hospital_number,
            patient_name=order.visit.patient.dicom_name,
            sex=order.visit.patient.sex,
            birth_date=order.visit.patient.date_of_birth.strftime("%Y%m%d")
            if order.visit.patient.date_of_birth
            else "",
        )
        for order in orders
    ]


def wait_for_port(port: int, what: str) -> None:
    def accepts() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    services.wait_until(accepts, what)


def run(command: list[str], *, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({result.returncode}):\n{(result.stdout + result.stderr)[-2000:]}")
    return result


def storescu(server: Server, paths: list[Path]) -> list[str]:
    return [
        "storescu",
        "-aet",
        MODALITY_AE,
        "-aec",
        server.ae_title,
        "127.0.0.1",
        str(server.port),
        *map(str, paths),
    ]


def store(server: Server, quarters: list[list[Path]], *, concurrent: bool) -> float:
    """Send a set (one association, or one per quarter at once); seconds, checked by the server's count."""
    before = server.count_instances() if server.count_instances is not None else 0
    count = sum(len(paths) for paths in quarters)
    started = time.perf_counter()
    if concurrent:
        processes = [
            subprocess.Popen(storescu(server, paths), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for paths in quarters
        ]
        outputs = [process.communicate(timeout=900)[0] for process in processes]
        failed = [out for process, out in zip(processes, outputs, strict=True) if process.returncode != 0]
        if failed:
            raise RuntimeError(f"storescu to {server.name} failed:\n{failed[0][-2000:]}")
    else:
        run(storescu(server, [path for paths in quarters for path in paths]))
    seconds = time.perf_counter() - started
    stored = server.count_instances() - before if server.count_instances is not None else count
    if stored != count:
        raise RuntimeError(f"{server.name} stored {stored} of {count} instances")
    return seconds


def findscu_command(server: Server, keys: dict[str, str]) -> list[str]:
    command = ["findscu", "-S", "-q", "-aet", WORKSTATION_AE, "-aec", server.ae_title, "127.0.0.1", str(server.port)]
    for keyword, value in {"QueryRetrieveLevel": "STUDY", **keys}.items():
        command += ["-k", f"{keyword}={value}" if value else keyword]
    return command


def study_identifier(keys: dict[str, str]) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return identifier


@contextlib.contextmanager
def find_association(server: Server) -> Iterator[Callable[[Dataset], int]]:
    """One pynetdicom association as the workstation; yields find(identifier) -> number of matches."""
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    ae = AE(ae_title=WORKSTATION_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    if not assoc.is_established:
        raise RuntimeError(f"{server.name} refused the C-FIND association")
    # The client's own Nagle delay (its request is two PDUs, written one after the other) would
    # add ~40 ms to every C-FIND whatever the server does: off, as TCP_NODELAY=1 does for dcmtk.
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]

    def find(identifier: Dataset) -> int:
        matches = 0
        for status, _answer in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            code = status.get("Status") if status is not None else None
            if code in PENDING:
                matches += 1
            elif code != 0:
                raise RuntimeError(f"{server.name} C-FIND status {code}")
        return matches

    try:
        yield find
    finally:
        assoc.release()
        ae.shutdown()


def getscu(server: Server, study_uid: str, series_uid: str, directory: Path) -> subprocess.CompletedProcess[str]:
    command = ["getscu", "-S", "-aet", WORKSTATION_AE, "-aec", server.ae_title, "127.0.0.1", str(server.port)]
    command += ["-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid}"]
    command += ["-k", f"SeriesInstanceUID={series_uid}", "-od", str(directory)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


# --- Measuring ----------------------------------------------------------------------------


def alternating(servers: list[Server], round_number: int) -> list[Server]:
    return servers if round_number % 2 == 0 else list(reversed(servers))


def median(values: list[float]) -> float:
    return statistics.median(values)


@dataclass
class Results:
    rows: list[PeersRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # measurement -> server name -> median, for every server measured (the floor's table)
    medians: dict[str, dict[str, float]] = field(default_factory=dict)

    def record(self, measurement: str, server: str, value: float) -> None:
        self.medians.setdefault(measurement, {})[server] = value


def measure_stores(
    servers: list[Server], sets: list[tuple[list[list[Path]], list[list[Path]]]], results: Results
) -> None:
    rates: dict[tuple[str, bool], list[float]] = {}
    cpu_ms: dict[tuple[str, bool], list[float]] = {}  # the server process's CPU time per instance
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    for round_number, (single_set, quarter_set) in enumerate(sets):
        for concurrent, instance_set in ((False, single_set), (True, quarter_set)):
            count = sum(len(paths) for paths in instance_set)
            for server in alternating(servers, round_number):
                ticks = services.cpu_ticks(server.pid)
                seconds = store(server, instance_set, concurrent=concurrent)
                cpu = (services.cpu_ticks(server.pid) - ticks) * tick_ms / count
                rates.setdefault((server.name, concurrent), []).append(count / seconds)
                cpu_ms.setdefault((server.name, concurrent), []).append(cpu)
                print(
                    f"  round {round_number + 1}, {server.name}, {'4 assoc' if concurrent else '1 assoc'}: "
                    f"{count / seconds:.0f} inst/s, {cpu:.1f} ms CPU per instance",
                    flush=True,
                )
    pacs, orthanc = servers[0].name, servers[1].name
    for (name, concurrent), figures in rates.items():
        results.record(f"store-{'four' if concurrent else 'one'}", name, median(figures))
    count = sum(len(paths) for paths in sets[0][0])
    for concurrent, label in (
        (False, f"C-STORE, storescu, {count:,} CT instances in one association"),
        (True, f"C-STORE, 4 storescu at once ({count // QUARTERS:,} each, 4 associations)"),
    ):
        results.rows.append(
            Row(
                f"{label} (median of {len(sets)})",
                "inst/s",
                median(rates[(pacs, concurrent)]),
                median(rates[(orthanc, concurrent)]),
                higher_is_better=True,
                target=">= 1.0x",
                target_ratio=1.0,
            )
        )
        spread = {name: ", ".join(f"{rate:.0f}" for rate in rates[(name, concurrent)]) for name in (pacs, orthanc)}
        results.notes.append(
            f"{label}, every round (inst/s): PACS-lite {spread[pacs]}; Orthanc {spread[orthanc]}. CPU time of the "
            f"serving process per instance (median; PostgreSQL's not counted): PACS-lite "
            f"{median(cpu_ms[(pacs, concurrent)]):.1f} ms, Orthanc {median(cpu_ms[(orthanc, concurrent)]):.1f} ms."
        )


def measure_finds(servers: list[Server], queries: dict[str, dict[str, str]], reps: int, results: Results) -> None:
    for label, keys in queries.items():
        process_ms: dict[str, list[float]] = {server.name: [] for server in servers}
        matches: dict[str, set[int]] = {server.name: set() for server in servers}
        for server in servers:  # warm-up
            run(findscu_command(server, keys))
        for round_number in range(reps):
            for server in alternating(servers, round_number):
                started = time.perf_counter()
                run(findscu_command(server, keys))
                process_ms[server.name].append((time.perf_counter() - started) * 1000)
        association_ms: dict[str, list[float]] = {server.name: [] for server in servers}
        identifier = study_identifier(keys)
        with contextlib.ExitStack() as stack:
            finders = {server.name: stack.enter_context(find_association(server)) for server in servers}
            for server in servers:  # warm-up on the association
                matches[server.name].add(finders[server.name](identifier))
            for round_number in range(reps):
                for server in alternating(servers, round_number):
                    started = time.perf_counter()
                    matches[server.name].add(finders[server.name](identifier))
                    association_ms[server.name].append((time.perf_counter() - started) * 1000)
        pacs, orthanc = servers[0].name, servers[1].name
        for server in servers:
            results.record(f"find-association {label}", server.name, median(association_ms[server.name]))
            results.record(f"find-process {label}", server.name, median(process_ms[server.name]))
        if len(matches[pacs] | matches[orthanc]) != 1:
            results.notes.append(f"**{label}: the servers found different numbers of studies: {matches}.**")
        found = next(iter(matches[pacs]))
        for how, timings in (("findscu process", process_ms), ("pynetdicom, one association", association_ms)):
            results.rows.append(
                Row(
                    f"C-FIND study level, {label} ({found} {'study' if found == 1 else 'studies'} found), "
                    f"{how} (median of {reps})",
                    "ms",
                    median(timings[pacs]),
                    median(timings[orthanc]),
                    target=">= 1.0x",
                    target_ratio=1.0,
                )
            )


def measure_get(
    servers: list[Server], study_uid: str, series_uid: str, reps: int, workdir: Path, results: Results
) -> None:
    seconds: dict[str, list[float]] = {server.name: [] for server in servers}
    failures: dict[str, str] = {}
    for round_number in range(reps):
        for server in alternating(servers, round_number):
            if server.name in failures:
                continue
            directory = workdir / f"get-{server.name}-{round_number}"
            directory.mkdir()
            started = time.perf_counter()
            result = getscu(server, study_uid, series_uid, directory)
            elapsed = time.perf_counter() - started
            received = len(list(directory.iterdir()))
            shutil.rmtree(directory)
            if result.returncode != 0 or received != RETRIEVE_SERIES_SIZE:
                output = (result.stdout + result.stderr).strip().splitlines()
                failures[server.name] = f"exit {result.returncode}, {received} files; " + " / ".join(output[-3:])
                log = workdir / "dicom-listener.log"
                if server.name == "PACS-lite" and log.exists():
                    errors = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
                    failures[server.name] += "; listener log: " + " / ".join(errors[-4:])
                continue
            seconds[server.name].append(elapsed)
    pacs, orthanc = servers[0].name, servers[1].name

    def rate(name: str) -> float | None:
        return RETRIEVE_SERIES_SIZE / median(seconds[name]) if seconds[name] else None

    for server in servers:
        figure = rate(server.name)
        if figure is not None:
            results.record("get", server.name, figure)

    pacs_rate = rate(pacs)
    missing = "" if pacs_rate is not None else " (PACS-lite: did not complete, see below)"
    results.rows.append(
        Row(
            f"C-GET, getscu of a {RETRIEVE_SERIES_SIZE}-instance series (median of {reps}){missing}",
            "inst/s",
            pacs_rate if pacs_rate is not None else 0.0,
            rate(orthanc),
            higher_is_better=True,
            target=">= 1.0x",
            target_ratio=1.0,
        )
    )
    for name in (pacs, orthanc):
        if seconds[name]:
            results.notes.append(
                f"C-GET of {RETRIEVE_SERIES_SIZE} instances, {name}: median {median(seconds[name]):.2f} s "
                f"(every round: {', '.join(f'{value:.2f}' for value in seconds[name])} s)."
            )
        if name in failures:
            results.notes.append(f"**C-GET from {name} did not complete: {failures[name]}**")


FLOOR = "pynetdicom alone"


@contextlib.contextmanager
def pynetdicom_floor(workdir: Path, retrieve_paths: list[Path], wildcard_matches: int) -> Iterator[Server]:
    """bench/_pynetdicom_floor.py in its own process: pynetdicom with handlers that do no work."""
    get_dir = workdir / "floor-get"
    get_dir.mkdir()
    for path in retrieve_paths:
        (get_dir / path.name).symlink_to(path)
    port = services.free_port()
    command = [sys.executable, str(BENCH_DIR / "_pynetdicom_floor.py"), "--port", str(port), "--ae-title", PACS_AE]
    command += ["--get-dir", str(get_dir), "--wildcard-matches", str(wildcard_matches)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        if process.stdout is None or process.stdout.readline().strip() != "ready":
            raise RuntimeError("the pynetdicom floor did not start")
        yield Server(FLOOR, PACS_AE, port, process.pid, None)
    finally:
        services.stop_process_group(process, grace=10)


def measure_floor(
    floor: Server,
    sets: list[tuple[list[list[Path]], list[list[Path]]]],
    queries: dict[str, dict[str, str]],
    reps: int,
    get_reps: int,
    retrieve: StudyFiles,
    workdir: Path,
    results: Results,
) -> None:
    """The rows of the main table, measured the same way on the pynetdicom floor."""
    for concurrent, key in ((False, "store-one"), (True, "store-four")):
        rates = []
        for single_set, quarter_set in sets:
            instance_set = quarter_set if concurrent else single_set
            rates.append(sum(len(paths) for paths in instance_set) / store(floor, instance_set, concurrent=concurrent))
        results.record(key, floor.name, median(rates))
    for label, keys in queries.items():
        run(findscu_command(floor, keys))
        process_ms = []
        for _ in range(reps):
            started = time.perf_counter()
            run(findscu_command(floor, keys))
            process_ms.append((time.perf_counter() - started) * 1000)
        results.record(f"find-process {label}", floor.name, median(process_ms))
        with find_association(floor) as find:
            identifier = study_identifier(keys)
            find(identifier)
            association_ms = []
            for _ in range(reps):
                started = time.perf_counter()
                find(identifier)
                association_ms.append((time.perf_counter() - started) * 1000)
        results.record(f"find-association {label}", floor.name, median(association_ms))
    seconds = []
    for round_number in range(get_reps):
        directory = workdir / f"get-floor-{round_number}"
        directory.mkdir()
        started = time.perf_counter()
        result = getscu(floor, retrieve.uid, retrieve.series_uids[0], directory)
        seconds.append(time.perf_counter() - started)
        received = len(list(directory.iterdir()))
        shutil.rmtree(directory)
        if result.returncode != 0 or received != RETRIEVE_SERIES_SIZE:
            raise RuntimeError(f"C-GET from the pynetdicom floor: exit {result.returncode}, {received} files")
    results.record("get", floor.name, RETRIEVE_SERIES_SIZE / median(seconds))


def floor_table(results: Results, queries: dict[str, dict[str, str]], instances: int) -> str:
    """pynetdicom alone beside PACS-lite and Orthanc: how much of each gap is the library's."""
    rows = [
        ("store-one", f"C-STORE, storescu, {instances:,} instances in one association", "inst/s", True),
        ("store-four", "C-STORE, 4 storescu at once", "inst/s", True),
        *(
            (f"find-{how} {label}", f"C-FIND study level, {label}, {what}", "ms", False)
            for label in queries
            for how, what in (("process", "findscu process"), ("association", "pynetdicom, one association"))
        ),
        ("get", f"C-GET, getscu of a {RETRIEVE_SERIES_SIZE}-instance series", "inst/s", True),
    ]
    lines = [
        "| Measurement | pynetdicom alone (handlers doing nothing) | PACS-lite | Orthanc "
        "| pynetdicom alone / Orthanc (>1 = faster than Orthanc) | PACS-lite / pynetdicom alone |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label, unit, higher_is_better in rows:
        figures = results.medians.get(key, {})
        floor, pacs, orthanc = (figures.get(name) for name in (FLOOR, "PACS-lite", "Orthanc"))

        def ratio(mine: float | None, theirs: float | None, better_high: bool = higher_is_better) -> str:
            if not mine or not theirs:
                return "—"
            return f"{(mine / theirs if better_high else theirs / mine):.2f}x"

        cells = [label, fmt(floor, unit), fmt(pacs, unit), fmt(orthanc, unit)]
        cells += [ratio(floor, orthanc), ratio(pacs, floor)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class BigStore:
    idle_mib: float
    peak_mib: float
    seconds: float

    @property
    def above_idle(self) -> float:
        return self.peak_mib - self.idle_mib


def measure_big(server: Server, path: Path) -> BigStore:
    time.sleep(0.5)
    idle = services.status_kib(server.pid, "VmRSS")
    before = server.count_instances()
    with services.RssSampler([server.pid]) as sampler:
        started = time.perf_counter()
        run(storescu(server, [path]), timeout=1800)
        seconds = time.perf_counter() - started
        time.sleep(0.2)
    if server.count_instances() - before != 1:
        raise RuntimeError(f"{server.name} did not store the big instance")
    return BigStore(idle / 1024, sampler.peaks[server.pid] / 1024, seconds)


# --- Main ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000, help="instances per timed store (default 1000)")
    parser.add_argument("--store-reps", type=int, default=3, help="timed stores per row and server (default 3)")
    parser.add_argument("--reps", type=int, default=20, help="timed C-FINDs per query, way and server (default 20)")
    parser.add_argument("--get-reps", type=int, default=3, help="timed C-GETs per server (default 3)")
    parser.add_argument("--big-mb", type=int, default=1024, help="size of the big instance in MiB (default 1024)")
    parser.add_argument("--skip-big", action="store_true", help="skip the ~1 GiB C-STORE memory measurement")
    parser.add_argument("--output", type=Path, default=None, help="default: bench/results/dimse-<date>.md")
    parser.add_argument(
        "--nagle",
        action="store_true",
        help="leave dcmtk's Nagle algorithm on (clients and Orthanc): ~40 ms per exchange on loopback",
    )
    arguments = parser.parse_args()
    began = time.monotonic()
    if not arguments.nagle:
        # Debian's dcmtk leaves Nagle's algorithm on unless TCP_NODELAY=1: storescu to storescp on
        # loopback then takes ~45 ms per instance (the delayed ACK), not ~1.3 ms. The clients and
        # Orthanc (linked to the same dcmtk) inherit it; pynetdicom ignores it.
        os.environ["TCP_NODELAY"] = "1"

    def step(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {message}", flush=True)

    load_before = os.getloadavg()[0]
    orthanc_version = services.ensure_orthanc()
    results = Results()
    big_figures: dict[str, BigStore] = {}
    store_sets = arguments.store_reps
    studies_per_set = sum(
        -(-(arguments.instances // QUARTERS + (1 if q < arguments.instances % QUARTERS else 0)) // STUDY_SIZE)
        for q in range(QUARTERS)
    )
    order_count = 2 * store_sets * studies_per_set + 3  # + warm-up, the retrieve study, the big one

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pacs-dimse-")))
        database = stack.enter_context(services.postgres(durable=True))
        env = services.pacs_env(workdir, database.url, secrets.token_urlsafe(50))
        move_port = services.free_port()
        env["RADIOLOGY_DICOM_AE_TITLE"] = PACS_AE
        env["RADIOLOGY_DICOM_NODES"] = (
            f"{MODALITY_AE}@127.0.0.1:modality,{WORKSTATION_AE}@127.0.0.1:workstation:{move_port}"
        )
        services.manage(env, "migrate", "--noinput")
        seeded = json.loads(services.manage(env, "seed_demo", "--json", "--orders", str(order_count)).splitlines()[-1])
        os.environ.update(env)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.db import connection, connections

        with connection.cursor() as cursor:
            cursor.execute("SHOW fsync")
            fsync = cursor.fetchone()[0]
            cursor.execute("SHOW synchronous_commit")
            synchronous_commit = cursor.fetchone()[0]
        orders = Orders(order_identities(seeded["radiology_orders"]))
        step(f"PostgreSQL up (fsync {fsync}, synchronous_commit {synchronous_commit}), seeded {order_count} orders")

        maker = Maker(workdir / "data", orders)
        warm_up = maker.study("warm-up", [10]).paths
        retrieve = maker.study("retrieve", [RETRIEVE_SERIES_SIZE])
        big_identity = orders.take()
        sets = [
            (
                maker.instance_set(f"single-{n}", arguments.instances),
                maker.instance_set(f"four-{n}", arguments.instances),
            )
            for n in range(store_sets)
        ]
        step(f"{maker.written} CT instances written from CT_small.dcm")

        listener = stack.enter_context(services.dicom_listener(env, workdir))
        orthanc_dicom_port = services.free_port()
        orthanc_options: dict[str, object] = {
            "DicomServerEnabled": True,
            "DicomPort": orthanc_dicom_port,
            "DicomAet": ORTHANC_AE,
            "DicomModalities": {
                "modality": [MODALITY_AE, "127.0.0.1", services.free_port()],
                "workstation": [WORKSTATION_AE, "127.0.0.1", move_port],
            },
            "SyncStorageArea": True,  # Orthanc's default: each file fsync'd before the C-STORE is answered
            "Plugins": [],
        }
        orthanc_base, orthanc_pid = stack.enter_context(services.orthanc(workdir, orthanc_options))
        wait_for_port(orthanc_dicom_port, "Orthanc's DICOM server")

        def orthanc_count() -> int:
            return int(requests.get(f"{orthanc_base}/statistics", timeout=30).json()["CountInstances"])

        pacs = Server("PACS-lite", PACS_AE, listener.port, listener.pid, lambda: pacs_counts()[0])
        orthanc = Server("Orthanc", ORTHANC_AE, orthanc_dicom_port, orthanc_pid, orthanc_count)
        servers = [pacs, orthanc]
        step(f"listener and {orthanc_version} up")

        for server in servers:
            store(server, [warm_up], concurrent=False)
        retrieve_seconds = {server.name: store(server, [retrieve.paths], concurrent=False) for server in servers}
        results.notes.append(
            f"The {RETRIEVE_SERIES_SIZE}-instance series the C-GET row reads was stored first, in one association "
            "(not in the table): "
            + ", ".join(f"{name} {RETRIEVE_SERIES_SIZE / s:.0f} inst/s" for name, s in retrieve_seconds.items())
            + "."
        )
        step("warm-up and the retrieve series stored")

        measure_stores(servers, sets, results)
        step("C-STORE rows done")
        stored, held = pacs_counts()
        results.notes.append(
            f"PACS-lite holds {stored:,} instances, all filed into their orders ({held} in the unmatched inbox); "
            f"Orthanc {orthanc_count():,}."
        )
        if held:
            raise RuntimeError(f"{held} instances went to PACS-lite's unmatched inbox")

        returned = dict.fromkeys(STUDY_RETURN_KEYS, "")
        family_name = retrieve.identity.patient_name.split("^")[0]
        queries = {
            "by StudyInstanceUID": {**returned, "StudyInstanceUID": retrieve.uid},
            f"by PatientName {family_name}*": {**returned, "PatientName": f"{family_name}*", "StudyInstanceUID": ""},
        }
        measure_finds(servers, queries, arguments.reps, results)
        step("C-FIND rows done")

        measure_get(servers, retrieve.uid, retrieve.series_uids[0], arguments.get_reps, workdir, results)
        step("C-GET row done")

        wildcard_label = next(label for label in queries if label.startswith("by PatientName"))
        with find_association(pacs) as find:
            wildcard_matches = find(study_identifier(queries[wildcard_label]))
        with pynetdicom_floor(workdir, retrieve.paths, wildcard_matches) as floor:
            measure_floor(floor, sets, queries, arguments.reps, arguments.get_reps, retrieve, workdir, results)
        step("pynetdicom floor done")

        if not arguments.skip_big:
            frames = max(1, arguments.big_mb * MIB // FRAME_BYTES)
            big_path = workdir / "big.dcm"
            size = write_big_instance(big_path, frames=frames, identity=big_identity)
            step(f"big instance written ({size / MIB:.0f} MiB)")
            for server in servers:
                big_figures[server.name] = measure_big(server, big_path)
                step(f"big C-STORE to {server.name} done")
            big_path.unlink()
            mine, theirs = big_figures[pacs.name], big_figures[orthanc.name]
            results.rows.append(
                Row(
                    f"Peak RSS above idle during a {size / MIB:,.0f} MiB C-STORE (storescu, one instance)",
                    "MiB",
                    mine.above_idle,
                    theirs.above_idle,
                    target="< 100 MiB",
                    target_pacs_max=100,
                    show_ratio=False,  # a ratio of two differences, one near 0, says nothing
                )
            )
            results.rows.append(
                Row("Peak RSS of the serving process during that C-STORE", "MiB", mine.peak_mib, theirs.peak_mib)
            )
            for name, figure in big_figures.items():
                results.notes.append(
                    f"{size / MIB:,.0f} MiB C-STORE, {name}: idle {figure.idle_mib:.0f} MiB, "
                    f"peak {figure.peak_mib:.0f} MiB (VmRSS every 20 ms), {figure.seconds:.1f} s "
                    f"({size / MIB / figure.seconds:.0f} MiB/s)."
                )
        connections.close_all()
        listener_command = listener.command

    date = dt.datetime.now().astimezone()
    load = f"1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    header = (
        f"Run {date:%Y-%m-%d %H:%M %Z} on {os.cpu_count()} cores ({platform.machine()}), "
        f"Python {platform.python_version()}. "
        f"PACS-lite: `{listener_command}` with production settings as `make run` sets them (filesystem store, "
        f"DATABASE_CONN_MAX_AGE at the settings default), PostgreSQL 15 with its defaults (fsync {fsync}, "
        f"synchronous_commit {synchronous_commit}). "
        f"{orthanc_version}: DICOM server on, SyncStorageArea true and the SQLite index (its defaults), no plugin, "
        f"other options default. Both on 127.0.0.1, the same files; dcmtk {dcmtk_version()} clients "
        f"(storescu, findscu, getscu) and pynetdicom for C-FIND over one association; "
        + (
            "dcmtk's defaults (Nagle's algorithm on). "
            if arguments.nagle
            else "TCP_NODELAY=1 for the dcmtk clients and Orthanc (Nagle's algorithm off, as for the pynetdicom "
            "client; PACS-lite's listener sets it on its own sockets, as it ships). "
        )
        + f"Command: `make bench-dimse` (`.venv/bin/python bench/compare_dimse.py --instances {arguments.instances} "
        f"--store-reps {arguments.store_reps} --reps {arguments.reps} --get-reps {arguments.get_reps}"
        f"{' --skip-big' if arguments.skip_big else f' --big-mb {arguments.big_mb}'}"
        f"{' --nagle' if arguments.nagle else ''}`). Each store sends a fresh set of {arguments.instances:,} "
        f"instances of CT_small.dcm (~39 KB) to both servers; the servers alternate which goes first. "
        f"{load}; total {time.monotonic() - began:.0f} s."
    )
    ratios = "Ratios are oriented so that **>1 means PACS-lite is better** (more instances/s, fewer ms, less memory)."
    floor_intro = (
        "### What pynetdicom alone reaches\n\n"
        "The same measurements against bench/_pynetdicom_floor.py: pynetdicom (the library the listener is built "
        "on) with handlers that do no work, in its own process: C-STORE answers success once pynetdicom has "
        "written the dataset to a temporary file, C-FIND answers a fixed match, C-GET sends 500 datasets held in "
        "memory. Nothing is parsed, checked, stored or committed: no pynetdicom-based server can be faster here."
    )
    report = "\n\n".join(
        [
            header,
            ratios,
            comparison_table(results.rows),
            "\n".join(f"- {note}" for note in results.notes),
            floor_intro,
            floor_table(results, queries, arguments.instances),
        ]
    )
    output = arguments.output or RESULTS_DIR / f"dimse-{date:%Y-%m-%d}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(f"# PACS-lite's DICOM listener vs Orthanc\n\n{report}\n")
    print()
    print(report)
    print(f"\nwritten to {output}; total {time.monotonic() - began:.0f} s")
    return 0


def dcmtk_version() -> str:
    result = subprocess.run(["storescu", "--version"], capture_output=True, text=True, check=False)
    first = (result.stdout or "").splitlines()[0] if result.stdout else ""
    return first.split()[2] if len(first.split()) > 2 else "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
