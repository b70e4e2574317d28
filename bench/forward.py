"""Store and forward over a bad link: PACS-lite's forwarder against Orthanc's peers, same data, same link.

`make bench-forward` (not in CI). The data: 1,000 CT instances (pydicom's real CT_small.dcm,
39 KB each, with fresh UIDs: ~40 MB) and one ~200 MB multi-frame instance (large_dicom.py's
writer with CT-like frames: a body phantom with 12-unit Gaussian noise, which zstd level 3 takes
to ~50% as it takes CT_small to ~65%; neither random noise nor zeros). `--scale` takes a
fraction of both (the CT count and the big one's frames) for a quick run.

The link: the suite's FaultProxy (apps/radiology/tests/forwarding/fault_proxy.py) limited to
--bandwidth bytes/s each way (default 1 Mbit/s), --latency seconds each way (300 ms), and every
connection reset every --drop-every seconds (30).

1. PACS-lite: a clinic and a regional server (apps/radiology/tests/forwarding/two_servers.py:
   the app server, own SQLite databases, the suite's test settings) with the clinic's forwarder behind
   the proxy; the data is stored on the clinic first (STOW-RS, the upload sync for the big one)
   with the forwarder stopped, then the forwarder is started and timed until every study is
   delivered (the regional side confirmed every checksum). Backoff and timeout are the
   defaults a clinic would run with (RADIOLOGY_FORWARD_BACKOFF_SECONDS 2, ..._MAX 900,
   ..._TIMEOUT 60).
2. Orthanc (Debian's package, two instances, bench/_services.py): the same files are stored on
   the sending one, which has the receiving one as its OrthancPeer behind a proxy with the
   same limits; POST /peers/regional/store {"Compress": true} (gzip, Orthanc's best) of every
   instance as one job; when the job fails (a dropped connection fails the instance in flight,
   and a job stops at its first failure) a new job is submitted with the instances the receiver
   does not have yet, as an operator's script would, until all are there or --orthanc-deadline.

Printed for each: payload bytes, bytes on the wire (the proxy's counters, both directions),
re-sent bytes, time to deliver, and the targets: wire <= 1.05x payload (or below, compressed);
delivery <= 1.2x payload/bandwidth. Re-sent bytes, two ways. For PACS-lite: the request body
bytes the forwarder handed to its socket (its tasks' wire_bytes), and the bytes that crossed the
proxy toward the far side, each minus what the far side needed (each file once, zstd level 3 in
8 MiB pieces, as its chunks are). The first counts what sat in socket buffers when a drop came
and never crossed; the second counts HTTP headers. For Orthanc: the bytes that crossed the proxy
minus each delivered instance's gzipped size once.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
import zstandard

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

import _services as services  # noqa: E402

from apps.radiology.tests.forwarding.fault_proxy import FaultProxy  # noqa: E402
from apps.radiology.tests.forwarding.two_servers import (  # noqa: E402
    OrderSpec,
    StudyFiles,
    TwoServers,
    file_sha256,
    two_servers,
)

CT_COUNT = 1000
BIG_FRAMES = 381  # x 512 x 512 x 2 bytes: ~200 MB
STOW_BATCH = 50
PIECE = 8 * 1024 * 1024  # the forwarder's largest chunk (RADIOLOGY_FORWARD_MAX_CHUNK_BYTES)
ORDERS = [
    OrderSpec(accession="BENCHCT0001", patient_id="BENCH-0001"),
    OrderSpec(accession="BENCHCT0002", patient_id="BENCH-0002", first_name="Tunde", last_name="Bello"),
]


@dataclass
class Dataset:
    ct_paths: list[Path]
    big_path: Path
    big_checksum: str
    studies: list[StudyFiles]

    @property
    def paths(self) -> list[Path]:
        return [*self.ct_paths, self.big_path]

    @property
    def payload(self) -> int:
        return sum(path.stat().st_size for path in self.paths)


@dataclass
class Result:
    name: str
    payload: int
    upstream: int
    downstream: int
    resent: int  # request body bytes the sender handed to its socket beyond what the far side needed
    resent_link: int  # bytes that crossed the link toward the far side beyond that need (HTTP headers included)
    seconds: float
    delivered: int  # instances
    total: int
    delivered_bytes: int
    note: str = ""

    @property
    def wire(self) -> int:
        return self.upstream + self.downstream


def make_data(workdir: Path, scale: float) -> Dataset:
    ct_study, big_study = StudyFiles(ORDERS[0]), StudyFiles(ORDERS[1])
    count = max(1, round(CT_COUNT * scale))
    ct_dir = workdir / "ct"
    ct_dir.mkdir(parents=True)
    ct_paths = []
    for series in range(0, count, 250):
        for index, data in enumerate(
            ct_study.ct_instances(min(250, count - series), series_number=series // 250 + 1), start=series
        ):
            path = ct_dir / f"ct_{index:04d}.dcm"
            path.write_bytes(data)
            ct_paths.append(path)
    big_path = workdir / "big.dcm"
    checksum = big_study.large_instance(big_path, frames=max(1, round(BIG_FRAMES * scale)))
    return Dataset(ct_paths, big_path, checksum, [ct_study, big_study])


def zstd_needed(paths: list[Path]) -> int:
    """Each file once, zstd level 3 in 8 MiB pieces (what the far side needed at best)."""
    compressor = zstandard.ZstdCompressor(level=3)
    total = 0
    for path in paths:
        with path.open("rb") as handle:
            while piece := handle.read(PIECE):
                total += min(len(piece), len(compressor.compress(piece)))
    return total


def shape_link(proxy: FaultProxy, args: argparse.Namespace) -> None:
    proxy.set_bandwidth(args.bandwidth)
    proxy.set_latency(args.latency)
    proxy.set_drop_every(args.drop_every or None)


def progress_printer(what: str, done: Callable[[], int], total: int, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        started = time.monotonic()
        while not stop.wait(30):
            print(f"  {what}: {done()} of {total} after {time.monotonic() - started:.0f} s", flush=True)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --- PACS-lite ------------------------------------------------------------------------------


def run_pacs_lite(data: Dataset, workdir: Path, args: argparse.Namespace) -> Result:
    settings = {
        "RADIOLOGY_FORWARD_BACKOFF_SECONDS": "2",
        "RADIOLOGY_FORWARD_BACKOFF_MAX_SECONDS": "900",
        "RADIOLOGY_FORWARD_TIMEOUT_SECONDS": "60",
        "RADIOLOGY_FORWARD_LEASE_SECONDS": "300",
    }
    with two_servers(workdir, start_forwarder=False, **settings) as two:
        two.seed_orders(ORDERS)
        print("PACS-lite: storing the data on the clinic (STOW-RS, upload sync)...", flush=True)
        ct = [path.read_bytes() for path in data.ct_paths]
        for start in range(0, len(ct), STOW_BATCH):
            two.clinic.stow(ct[start : start + STOW_BATCH])
        two.clinic.upload(data.big_path, accession=ORDERS[1].accession, checksum=data.big_checksum)
        shape_link(two.proxy, args)
        total = len(data.paths)
        print(f"PACS-lite: forwarding {total} instances, {data.payload:,} bytes...", flush=True)
        stop = threading.Event()
        progress_printer("PACS-lite sent", lambda: sent_tasks(two), total, stop)
        started = time.monotonic()
        two.forwarder.start()
        two.wait_for(
            lambda: delivered_studies(two) == len(data.studies), "every study delivered", seconds=args.deadline
        )
        seconds = time.monotonic() - started
        stop.set()
        counters = two.proxy.counters()
        needed = zstd_needed(data.paths)
        ((task_wire, resends),) = two.clinic.query("SELECT SUM(wire_bytes), SUM(resends) FROM radiology_forwardtask")
        stored = two.regional.query("SELECT checksum, file_size FROM radiology_radiologyimage")
        expected = {file_sha256(path) for path in data.paths}
        assert {checksum for checksum, _size in stored} == expected, "the regional side's files differ"
        return Result(
            "PACS-lite forwarder (zstd, resumable)",
            data.payload,
            counters.upstream,
            counters.downstream,
            int(task_wire) - needed,
            counters.upstream - needed,
            seconds,
            len(stored),
            total,
            sum(size for _checksum, size in stored),
            note=f"{counters.resets} connections reset, {counters.connections} opened; {int(resends)} re-sends",
        )


def sent_tasks(two: TwoServers) -> int:
    return len(two.clinic.query("SELECT id FROM radiology_forwardtask WHERE state = 'sent'"))


def delivered_studies(two: TwoServers) -> int:
    return len(two.clinic.query("SELECT id FROM radiology_studydelivery WHERE state = 'delivered'"))


# --- Orthanc --------------------------------------------------------------------------------


def run_orthanc(data: Dataset, workdir: Path, args: argparse.Namespace, deadline: float) -> Result:
    services.ensure_orthanc()
    (workdir / "receiver").mkdir(parents=True)
    (workdir / "sender").mkdir(parents=True)
    with services.orthanc(workdir / "receiver") as (receiver, _pid):
        receiver_port = int(receiver.rsplit(":", 1)[1])
        with FaultProxy("127.0.0.1", receiver_port) as proxy:
            peers = {"OrthancPeers": {"regional": {"Url": f"{proxy.url}/", "Timeout": 60}}, "HttpTimeout": 60}
            with services.orthanc(workdir / "sender", peers) as (sender, _pid2):
                print("Orthanc: storing the data on the sender...", flush=True)
                ids: dict[str, Path] = {}
                for path in data.paths:
                    with path.open("rb") as handle:
                        answer = requests.post(f"{sender}/instances", data=handle, timeout=600)
                    answer.raise_for_status()
                    ids[answer.json()["ID"]] = path
                shape_link(proxy, args)
                total = len(ids)
                print(f"Orthanc: sending {total} instances to its peer, deadline {deadline:.0f} s...", flush=True)
                stop = threading.Event()
                progress_printer("Orthanc delivered", lambda: len(receiver_ids(receiver)), total, stop)
                started = time.monotonic()
                jobs = 0
                while time.monotonic() - started < deadline:
                    # The big instance last: a job stops at its first failure, and the big one fails at
                    # every drop; sent first, it would keep the small ones from ever going.
                    missing = sorted(
                        set(ids) - receiver_ids(receiver), key=lambda uid: (ids[uid] == data.big_path, uid)
                    )
                    if not missing:
                        break
                    jobs += 1
                    job = requests.post(
                        f"{sender}/peers/regional/store",
                        json={"Resources": missing, "Asynchronous": True, "Compress": True},
                        timeout=60,
                    ).json()["ID"]
                    while time.monotonic() - started < deadline:
                        state = requests.get(f"{sender}/jobs/{job}", timeout=60).json()["State"]
                        if state in ("Success", "Failure"):
                            break
                        time.sleep(1)
                    else:
                        requests.post(f"{sender}/jobs/{job}/cancel", timeout=60)
                seconds = time.monotonic() - started
                stop.set()
                counters = proxy.counters()
                delivered = receiver_ids(receiver) & set(ids)
                needed = sum(len(gzip.compress(ids[uid].read_bytes(), compresslevel=6)) for uid in delivered)
                done = not (set(ids) - delivered)
                return Result(
                    "Orthanc peers (gzip, whole instances)",
                    data.payload,
                    counters.upstream,
                    counters.downstream,
                    counters.upstream - needed,
                    counters.upstream - needed,
                    seconds,
                    len(delivered),
                    total,
                    sum(ids[uid].stat().st_size for uid in delivered),
                    note=(
                        f"{counters.resets} connections reset; {jobs} jobs"
                        + ("" if done else f"; NOT DONE at the {deadline:.0f} s deadline")
                    ),
                )


def receiver_ids(receiver: str) -> set[str]:
    with contextlib.suppress(requests.RequestException):
        return set(requests.get(f"{receiver}/instances", timeout=60).json())
    return set()


# --- Report ---------------------------------------------------------------------------------


def report(result: Result, args: argparse.Namespace) -> None:
    ideal = result.payload / args.bandwidth
    wire_ratio, time_ratio = result.wire / result.payload, result.seconds / ideal
    wire_met = "met" if wire_ratio <= 1.05 else "NOT met"
    time_met = "met" if result.delivered == result.total and time_ratio <= 1.2 else "NOT met"
    print(f"\n{result.name}: {result.delivered} of {result.total} instances delivered ({result.note})")
    print(f"  payload            {result.payload:>15,} bytes")
    print(f"  delivered          {result.delivered_bytes:>15,} bytes")
    print(f"  on the wire        {result.wire:>15,} bytes ({result.upstream:,} up, {result.downstream:,} down)")
    print(f"                     {wire_ratio:.3f}x payload; target <= 1.05x: {wire_met}")
    print(f"  re-sent            {result.resent:>15,} bytes handed to the socket beyond each file once")
    print(f"                     {result.resent_link:>15,} bytes across the link beyond it (HTTP headers included)")
    print(f"  time to deliver    {result.seconds:>15.1f} s")
    print(f"                     {time_ratio:.3f}x payload/bandwidth ({ideal:.0f} s); target <= 1.2x: {time_met}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the data (default 1: ~240 MB)")
    parser.add_argument("--bandwidth", type=float, default=125_000, help="bytes/s each way (default 1 Mbit/s)")
    parser.add_argument("--latency", type=float, default=0.3, help="seconds each way (default 0.3)")
    parser.add_argument("--drop-every", type=float, default=30, help="reset every connection this often (s; 0: never)")
    parser.add_argument(
        "--deadline", type=float, default=0, help="PACS-lite's deadline (s; default 3x payload/bandwidth)"
    )
    parser.add_argument(
        "--orthanc-deadline", type=float, default=0, help="Orthanc's deadline (s; default 2x PACS-lite's time)"
    )
    parser.add_argument("--skip-orthanc", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp:
        workdir = Path(tmp)
        data = make_data(workdir / "data", args.scale)
        args.deadline = args.deadline or max(300, 3 * data.payload / args.bandwidth)
        big = data.big_path.stat().st_size
        print(f"Data: {len(data.ct_paths)} CT instances + one of {big:,} bytes = {data.payload:,} bytes", flush=True)
        print(
            f"Link: {args.bandwidth * 8 / 1e6:g} Mbit/s and {args.latency * 1000:g} ms each way,"
            f" every connection reset every {args.drop_every:g} s",
            flush=True,
        )
        pacs = run_pacs_lite(data, workdir / "pacs", args)
        report(pacs, args)
        if not args.skip_orthanc:
            orthanc = run_orthanc(data, workdir / "orthanc", args, args.orthanc_deadline or 2 * pacs.seconds)
            report(orthanc, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
