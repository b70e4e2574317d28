"""What reading a DICOM header costs ingest, against the CPU the ingest target leaves per instance.

Run from the repository root, after `make bench` (it reads that run's Orthanc figures):
    .venv/bin/python bench/parse_cost.py

Issue 19 asks STOW-RS ingest to be 1.5x the better Orthanc, with 1 and with 4 clients. With 4
clients the server is busy on every core, so the target is a CPU budget: cores / (1.5 x
Orthanc's instances per second) of CPU for each instance, for everything (HTTP, parsing,
hashing, writing, fsync, the database). This prints that budget beside the CPU one core spends
on the parse alone, on the same file the benchmark sends (pydicom's CT_small.dcm, ~39 KB):
- `parse_dicom`: what ingest runs on every file (apps/radiology/imagefiles/dicom.py: pydicom's
  dcmread up to the pixel data, the pixel data located, the DICOM JSON made);
- pydicom's dcmread up to the pixel data with nothing else: the floor under any parse that uses
  pydicom, before a single value is decoded.
CPU time of this thread (time.thread_time), median of --reps runs of --count files, after a
warm-up. The parse does not read settings, so the test settings load Django here.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.test_settings")

import django  # noqa: E402

django.setup()

import pydicom  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from apps.radiology.imagefiles.dicom import parse_dicom  # noqa: E402
from config.env import usable_cores  # noqa: E402

RESULTS = BENCH_DIR / "results" / "compare_orthanc.md"
ROWS = {1: "STOW-RS ingest, 1 client", 4: "STOW-RS ingest, 4 clients"}


def cpu_ms_per_call(call: Callable[[], object], *, count: int, reps: int) -> float:
    for _ in range(count):
        call()
    runs = []
    for _ in range(reps):
        started = time.thread_time()
        for _ in range(count):
            call()
        runs.append((time.thread_time() - started) * 1000 / count)
    return statistics.median(runs)


def better_orthanc(clients: int) -> float | None:
    """The better Orthanc's instances/s in the last `make bench` table, if there is one."""
    if not RESULTS.exists():
        return None
    for line in RESULTS.read_text().splitlines():
        if line.startswith(f"| {ROWS[clients]}"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rates = [float(re.sub(r"[^\d.]", "", cell)) for cell in cells[2:4] if cell.endswith("inst/s")]
            return max(rates) if rates else None
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="files parsed per run (default 200)")
    parser.add_argument("--reps", type=int, default=5, help="runs; the median is printed (default 5)")
    arguments = parser.parse_args()
    template = Path(get_testdata_file("CT_small.dcm"))
    data = template.read_bytes()
    with tempfile.TemporaryDirectory(prefix="parse-cost-") as directory:
        path = Path(directory) / "ct.dcm"
        path.write_bytes(data)  # a file, as ingest parses its staged files
        ingest_parse = cpu_ms_per_call(lambda: parse_dicom(path), count=arguments.count, reps=arguments.reps)
    floor = cpu_ms_per_call(
        lambda: pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True),
        count=arguments.count,
        reps=arguments.reps,
    )
    cores = usable_cores()
    runs = f"median of {arguments.reps} x {arguments.count}"
    print(f"CT_small.dcm ({len(data):,} bytes), CPU per file on one core, {runs}:")
    print(f"- parse_dicom (what ingest runs): {ingest_parse:.2f} ms")
    print(f"- pydicom dcmread up to the pixel data, values not decoded: {floor:.2f} ms")
    for clients in (4, 1):
        orthanc = better_orthanc(clients)
        if orthanc is None:
            print(f"({RESULTS.relative_to(ROOT)} has no {clients}-client ingest row: run `make bench` first)")
            continue
        target = 1.5 * orthanc
        budget = cores * 1000 / target
        # One client waits for each answer: the budget holds only if every core works on each batch.
        how = "at most, every core busy on each batch" if clients == 1 else "every core busy"
        print(
            f"{clients} client{'s' if clients > 1 else ''}: better Orthanc {orthanc:.0f} inst/s, target 1.5x = "
            f"{target:.0f} inst/s; on {cores} cores ({how}) that is {budget:.2f} ms of CPU per instance in all; "
            f"parse_dicom alone is {ingest_parse / budget:.0%} of it, dcmread alone {floor / budget:.0%}."
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
