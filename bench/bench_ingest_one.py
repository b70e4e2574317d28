"""Ingest's cost per single-instance call, as the DICOM listener makes it: wall ms, CPU ms and SQL per instance.

Run from the repository root:
    .venv/bin/python bench/bench_ingest_one.py                 # durable throwaway PostgreSQL (fsync on)
    .venv/bin/python bench/bench_ingest_one.py --sqlite        # quick iteration, SQLite in a temp dir
    .venv/bin/py-spy record -o profile.txt -f raw -- .venv/bin/python bench/bench_ingest_one.py --sqlite

The listener (apps/radiology/dimse/store.py) cannot batch: a sender waits for each answer, so
every received instance is one `ingest_images` call with a staged file. This measures exactly
that call, N times, in this process with production settings (bench/_services.pacs_env): copies
of pydicom's CT_small.dcm (~39 KB), every UID distinct, studies of --study-size instances (series
of up to --series-size) each carrying one seeded order's accession number and patient, as
bench/compare_dimse.py sends them. Outside the timed call, as the listener does before it: the
file is put into RADIOLOGY_STAGING_DIR and hashed, and its order is looked up by accession.

Per call: wall time (perf_counter), CPU time of this thread (thread_time: PostgreSQL's own not
counted) and SQL statements (Django's execute wrappers: savepoints count, COPY does not, nor
BEGIN/COMMIT, which psycopg2 sends by itself). The first --warm-up calls are left out. Printed,
never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import _services as services  # noqa: E402


@dataclass(frozen=True)
class Instance:
    path: Path
    accession: str
    first_of_study: bool


class QueryCounter:
    """Counts the SQL statements Django runs (a connection execute wrapper: cheap, no debug cursor)."""

    def __init__(self) -> None:
        self.count = 0
        self.kinds: Counter[str] = Counter()

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        self.count += 1
        self.kinds[" ".join(str(sql).split()[:1]).upper()] += 1
        return execute(sql, params, many, context)


def write_instances(directory: Path, identities: list[dict[str, str]], count: int, study_size: int, series_size: int):
    """`count` relabelled copies of CT_small.dcm, `study_size` per study (one order each)."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    directory.mkdir(parents=True)
    instances: list[Instance] = []
    for number in range(count):
        within = number % study_size
        if within == 0:
            identity = identities.pop(0)
            study_uid = generate_uid(prefix=None)
        if within % series_size == 0:
            series_uid = generate_uid(prefix=None)
        dataset = copy.copy(template)
        dataset.file_meta = copy.deepcopy(template.file_meta)
        sop_uid = generate_uid(prefix=None)
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = sop_uid
        dataset.file_meta.MediaStorageSOPInstanceUID = sop_uid
        dataset.AccessionNumber = identity["accession"]
        dataset.PatientID = identity["patient_id"]
        dataset.PatientName = identity["patient_name"]
        dataset.SeriesNumber = within // series_size + 1
        dataset.InstanceNumber = within % series_size + 1
        path = directory / f"{number:06d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        instances.append(Instance(path, identity["accession"], within == 0))
    return instances


@contextlib.contextmanager
def database(sqlite: bool, workdir: Path) -> Iterator[str]:
    if sqlite:
        yield f"sqlite:///{workdir / 'bench.sqlite3'}"
        return
    with services.postgres(durable=True) as cluster:
        yield cluster.url


def summary(name: str, values: list[float], unit: str) -> str:
    if not values:
        return f"{name}: -"
    return (
        f"{name}: median {statistics.median(values):.2f} {unit}, mean {statistics.fmean(values):.2f}, "
        f"min {min(values):.2f}, p90 {sorted(values)[int(len(values) * 0.9)]:.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--instances", type=int, default=600, help="timed single-instance calls (default 600)")
    parser.add_argument("--warm-up", type=int, default=30, help="calls made first and not counted (default 30)")
    parser.add_argument("--study-size", type=int, default=100, help="instances per study/order (default 100)")
    parser.add_argument("--series-size", type=int, default=50, help="instances per series (default 50)")
    parser.add_argument("--sqlite", action="store_true", help="SQLite in the temporary directory, not PostgreSQL")
    parser.add_argument("--show-sql", action="store_true", help="print the SQL of one steady-state call")
    arguments = parser.parse_args()
    total = arguments.instances + arguments.warm_up
    orders_needed = -(-total // arguments.study_size)

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pacs-ingest-one-")))
        url = stack.enter_context(database(arguments.sqlite, workdir))
        env = services.pacs_env(workdir, url, secrets.token_urlsafe(50))
        services.manage(env, "migrate", "--noinput")
        seeded_json = services.manage(env, "seed_demo", "--json", "--orders", str(orders_needed))
        seeded = json.loads(seeded_json.splitlines()[-1])
        os.environ.update(env)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.conf import settings
        from django.db import connection, reset_queries

        from apps.radiology.ingest.pipeline import Arrival, IngestItem, IngestResult, ingest_images
        from apps.radiology.ingest.spool import SPOOL_PREFIX, StagedFile
        from apps.radiology.models import RadiologyOrder

        orders = RadiologyOrder.objects.filter(pk__in=seeded["radiology_orders"]).select_related("visit__patient")
        identities = [
            {
                "accession": order.accession_number,
                "patient_id": order.visit.patient.hospital_number,
                "patient_name": order.visit.patient.dicom_name,
            }
            for order in orders.order_by("pk")
        ]
        instances = write_instances(workdir / "data", identities, total, arguments.study_size, arguments.series_size)
        staging = settings.RADIOLOGY_STAGING_DIR
        staging.mkdir(parents=True, exist_ok=True)
        arrival = Arrival("dicom")
        counter = QueryCounter()
        walls: list[float] = []
        cpus: list[float] = []
        queries: list[int] = []
        first_queries: list[int] = []
        kinds: Counter[str] = Counter()
        shown = False
        print(
            f"{'SQLite' if arguments.sqlite else 'PostgreSQL (durable: fsync on)'}; {arguments.warm_up} warm-up + "
            f"{arguments.instances} timed single-instance ingest_images calls, studies of {arguments.study_size}",
            flush=True,
        )
        with connection.execute_wrapper(counter):
            for number, instance in enumerate(instances):
                target = staging / f"{SPOOL_PREFIX}bench-{number:06d}"
                shutil.copyfile(instance.path, target)
                with target.open("rb") as handle:
                    checksum = hashlib.file_digest(handle, "sha256").hexdigest()
                staged = StagedFile(path=target, size=target.stat().st_size, checksum=checksum)
                order = RadiologyOrder.objects.filter(accession_number=instance.accession).first()
                item = IngestItem(order=order, stream=None, filename=None, staged=staged)
                show = arguments.show_sql and not shown and not instance.first_of_study and number > arguments.warm_up
                if show:
                    connection.force_debug_cursor = True
                    reset_queries()
                counter.count, counter.kinds = 0, Counter()
                wall, cpu = time.perf_counter(), time.thread_time()
                (outcome,) = ingest_images([item], uploaded_by=None, arrival=arrival)
                cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
                if show:
                    connection.force_debug_cursor = False
                    for query in connection.queries:
                        print("   ", query["sql"][:300])
                    shown = True
                target.unlink(missing_ok=True)
                if not isinstance(outcome, IngestResult) or not outcome.created:
                    raise RuntimeError(f"instance {number} was not stored: {outcome!r}")
                if number < arguments.warm_up:
                    continue
                if instance.first_of_study:
                    first_queries.append(counter.count)
                    continue  # the study's first instance creates its study and series: not the steady state
                walls.append(wall * 1000)
                cpus.append(cpu * 1000)
                queries.append(counter.count)
                kinds.update(counter.kinds)
        calls = len(queries)
        print(summary("wall", walls, "ms"))
        print(summary("CPU ", cpus, "ms"))
        print(summary("SQL ", [float(q) for q in queries], "statements"))
        print("SQL per call by kind:", ", ".join(f"{k} {v / calls:.2f}" for k, v in kinds.most_common()))
        if first_queries:
            print(f"first instance of a study (not in the figures above): {statistics.median(first_queries):.0f} SQL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
