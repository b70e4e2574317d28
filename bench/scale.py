"""PACS-lite at a year of a clinic's studies: 100,000 instances in 2,000 studies, made through ingest.

Run from the repository root (as root it runs PostgreSQL as the postgres user):
    make bench-scale            (= .venv/bin/python bench/scale.py; ~1 h at full size on 2 cores)
    .venv/bin/python bench/scale.py --studies 40 --instances 2000 --small 1000   (a quick run, ~3 min)

Durable configuration only: a throwaway PostgreSQL 15 cluster with its own defaults (fsync on,
synchronous_commit on) and PACS-lite exactly as `make run` serves it (scripts/serve.sh: migrate,
collectstatic, check --deploy, supervisord with the app server, nginx on both ports, the DICOM
listener and the forwarder), all on 127.0.0.1 and in a temporary directory (never var/).

How the data is made (through ingest, never rows written by hand):
- every study is its own patient (Nigerian given and family names combined; the family name Okafor
  only for three patients of the first days, so `PatientName=Okafor*` matches the same three studies
  at every size), its own order (patient, visit, radiology order with a unique accession number,
  made in one transaction by a `manage.py shell -c` script, as the EMR makes them one by one);
- study dates run through one year in the order the studies arrive (a clinic's database grows in
  time), so the first ~20 studies are its first days;
- each file is pydicom's CT_small.dcm (~39 KB) relabelled: the order's PatientID, PatientName and
  AccessionNumber, distinct UIDs, InstanceNumber and ImagePositionPatient/SliceLocation; written to
  folders of a few thousand files under the temporary directory while earlier folders are imported
  (never all in memory), then removed once imported;
- the files go in through `manage.py import_radiology FOLDER --by-accession --no-progress` (the one
  ingest path; each file's AccessionNumber picks its order), --import-jobs folders at once; the
  script checks that every file was stored and nothing was held in the unmatched inbox.

Plan at full size: one study of one 2,000-instance series, one study of 1,000 images (4 series of
250), three STOW-RS studies of 50 instances in the empty database, the rest (~48-49 instances in
2 series each) spread evenly: 2,000 studies, 100,000 instances; three more STOW-RS studies on top.

Phases:
1. empty database: 3 STOW-RS batches of 50 instances of a new study each (dicomweb-client, each
   to the order with its AccessionNumber);
2. grow to ~1,000 instances (~20 studies): QIDO by patient name wildcard, by a date range of
   three days, by accession (median of --reps, the three interleaved round by round);
3. grow to 100,000: the same QIDO queries (the same result sets); the series metadata of the
   2,000-instance series (the first request ever for it, its answer built ahead when its import
   ended: one measurement; then the median of --big-reps; then once more with the render cache
   emptied, built on request); the study images endpoint of the 1,000-image study (first: one measurement; then
   the median of --big-reps); 3 more STOW-RS batches of the same shape; EXPLAIN ANALYZE of every
   statement the three QIDO searches run (built as the QIDO view builds them, in manage.py shell).
Before each set of reads the script runs VACUUM (ANALYZE) and CHECKPOINT and waits until no
autovacuum worker runs: what a clinic's database is between imports, after autovacuum's work over
the year; right after a bulk import it is still writing and vacuuming (in two runs without this, the
QIDO figures at 100,000 moved from 4.5-6.6 ms to 6.4-8.7 ms with the same code).

Each figure is one HTTP exchange as the client sees it (request sent to whole body received); the
client's own decoding is excluded. The series metadata (~23 MB) is timed by curl to its last byte,
a native client as a browser is, so the figure is the server's rather than Python's reading of the
body; dicomweb-client's figure for it (through requests) is in the notes. Prints a markdown table
and notes, and writes them with the plans to bench/results/scale.md. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import io
import json
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]  # the parent for config.env

import _services as services  # noqa: E402
from _table import fmt  # noqa: E402

from config.env import usable_cores  # noqa: E402

RESULTS = BENCH_DIR / "results" / "scale.md"
STOW_BATCH = 50
STOW_STUDIES = 3
SLICE_SPACING = 5.0
YEAR_START = dt.date(2026, 1, 5)  # a Monday
QUERY_FAMILY = "Okafor"
GIVEN_NAMES = [
    "Adaeze",
    "Chinedu",
    "Ngozi",
    "Emeka",
    "Oluwaseun",
    "Funmilayo",
    "Ibrahim",
    "Aisha",
    "Tunde",
    "Yetunde",
    "Chiamaka",
    "Obinna",
    "Kelechi",
    "Folake",
    "Musa",
    "Zainab",
    "Babatunde",
    "Halima",
    "Ifeoma",
    "Uchenna",
    "Bukola",
    "Segun",
    "Amina",
    "Nnamdi",
    "Temitope",
    "Kunle",
    "Hadiza",
    "Chukwuma",
    "Omolara",
    "Abubakar",
    "Nkechi",
    "Gbenga",
    "Fatima",
    "Ikenna",
    "Titilayo",
    "Sani",
    "Ebere",
    "Rotimi",
    "Hauwa",
    "Chidi",
]
FAMILY_NAMES = [
    "Adeyemi",
    "Okonkwo",
    "Balogun",
    "Nwosu",
    "Abdullahi",
    "Eze",
    "Ogunleye",
    "Bello",
    "Chukwu",
    "Adebayo",
    "Okeke",
    "Danjuma",
    "Olawale",
    "Nwachukwu",
    "Suleiman",
    "Afolabi",
    "Obi",
    "Garba",
    "Oyelaran",
    "Ibe",
    "Mohammed",
    "Ogundipe",
    "Onyeka",
    "Lawal",
    "Ekwueme",
    "Adesanya",
    "Yusuf",
    "Nnaji",
    "Akinola",
    "Umar",
    "Uzor",
    "Fashola",
    "Aliyu",
    "Okoro",
    "Ajayi",
    "Nweke",
    "Bakare",
    "Idris",
    "Onuoha",
    "Oladipo",
    "Ezeh",
]


# --- The plan -----------------------------------------------------------------------------


@dataclass
class StudyPlan:
    """One study as the clinic makes it: its patient, order and the series of its images."""

    index: int
    series_sizes: list[int]
    family: str = ""
    given: str = ""
    date: dt.date = YEAR_START
    uid: str = field(default_factory=lambda: generate_uid(prefix=None))
    series_uids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.series_uids = [generate_uid(prefix=None) for _ in self.series_sizes]

    @property
    def accession(self) -> str:
        return f"SCALE{self.index:06d}"

    @property
    def patient_id(self) -> str:
        return f"SC-{self.index:06d}"

    @property
    def dicom_name(self) -> str:
        return f"{self.family}^{self.given}"

    @property
    def instances(self) -> int:
        return sum(self.series_sizes)

    def order_spec(self) -> dict[str, str]:
        return {
            "patient_id": self.patient_id,
            "first_name": self.given,
            "last_name": self.family,
            "accession": self.accession,
            "date": self.date.isoformat(),
        }


@dataclass
class Plan:
    stow_empty: list[StudyPlan]  # phase 1: STOW-RS into the empty database
    small: list[StudyPlan]  # phase 2: imported up to ~1,000 instances
    large: list[StudyPlan]  # phase 3: imported up to 100,000 instances
    stow_large: list[StudyPlan]  # phase 3: STOW-RS into the big database
    big_series: StudyPlan  # one series of 2% of the instances (2,000)
    image_study: StudyPlan  # 1% of the instances (1,000) in 4 series
    name_matches: int  # studies the name wildcard finds
    date_range: tuple[dt.date, dt.date]
    date_matches: int
    accession: str


def split(total: int, parts: int) -> list[int]:
    """`total` in `parts` nearly equal whole numbers, the larger first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def make_plan(studies: int, instances: int, small: int, big_n: int | None = None, image_n: int | None = None) -> Plan:
    """Every study's size, names and date; the query values that find the same studies at both sizes.

    The big series is 2% of the instances and the images study 1% unless given.
    """
    stow_total = STOW_STUDIES * STOW_BATCH
    big_n = big_n or max(2, instances * 2 // 100)
    image_n = image_n or max(4, instances // 100)
    regular_count = studies - STOW_STUDIES - 2
    regular_instances = instances - stow_total - big_n - image_n
    if regular_count < 4 or regular_instances < 2 * regular_count:
        raise SystemExit("too few studies or instances for the plan")
    sizes = split(regular_instances, regular_count)
    regular = [[size - size // 2, size // 2] for size in sizes]
    # Phase 2: the first regular studies, until the database holds about `small` instances.
    small_count, held = 0, stow_total
    while small_count < regular_count and held + sum(regular[small_count]) <= small:
        held += sum(regular[small_count])
        small_count += 1
    large_regular = regular[small_count:]
    third = len(large_regular) // 3
    large_shapes = [*large_regular[:third], [big_n], *large_regular[third : 2 * third], split(image_n, 4)]
    large_shapes += large_regular[2 * third :]

    ordered: list[StudyPlan] = []
    for shapes in ([[STOW_BATCH]] * STOW_STUDIES, regular[:small_count], large_shapes, [[STOW_BATCH]] * STOW_STUDIES):
        ordered += [StudyPlan(index=len(ordered) + i, series_sizes=list(shape)) for i, shape in enumerate(shapes)]
    per_day = studies / 365
    for study in ordered:
        study.date = YEAR_START + dt.timedelta(days=min(364, int(study.index / per_day)))
        study.given = GIVEN_NAMES[study.index % len(GIVEN_NAMES)]
        study.family = FAMILY_NAMES[(study.index * 7 + study.index // len(FAMILY_NAMES)) % len(FAMILY_NAMES)]
    stow_empty = ordered[:STOW_STUDIES]
    small_studies = ordered[STOW_STUDIES : STOW_STUDIES + small_count]
    large = ordered[STOW_STUDIES + small_count : -STOW_STUDIES]
    stow_large = ordered[-STOW_STUDIES:]
    # Okafor: three patients of the first days (phase 2), nobody after them.
    named = small_studies[1::5][:3]
    for study in named:
        study.family = QUERY_FAMILY
    # Three days the phase-2 studies fill and no later study reaches.
    first_day = stow_empty[0].date
    last_day = min(first_day + dt.timedelta(days=2), small_studies[-1].date - dt.timedelta(days=1))
    last_day = max(first_day, last_day)
    in_range = [s for s in [*stow_empty, *small_studies] if first_day <= s.date <= last_day]
    return Plan(
        stow_empty=stow_empty,
        small=small_studies,
        large=large,
        stow_large=stow_large,
        big_series=next(s for s in large if s.series_sizes == [big_n]),
        image_study=next(s for s in large if len(s.series_sizes) == 4),
        name_matches=len(named),
        date_range=(first_day, last_day),
        date_matches=len(in_range),
        accession=small_studies[len(small_studies) // 2].accession,
    )


# --- Files --------------------------------------------------------------------------------


class Relabeller:
    """CT_small.dcm with a study's identity, UIDs and slice position, as Part 10 bytes."""

    def __init__(self) -> None:
        self.template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        x, y, z0 = (float(value) for value in self.template.ImagePositionPatient)
        self.x, self.y, self.z0 = x, y, z0

    def instance(self, study: StudyPlan, series_index: int, number: int) -> bytes:
        dataset: Dataset = copy.copy(self.template)  # shallow: every changed element is set anew below
        dataset.file_meta = copy.deepcopy(self.template.file_meta)
        sop_uid = generate_uid(prefix=None)
        dataset.SOPInstanceUID = sop_uid
        dataset.file_meta.MediaStorageSOPInstanceUID = sop_uid
        dataset.StudyInstanceUID = study.uid
        dataset.SeriesInstanceUID = study.series_uids[series_index]
        dataset.SeriesNumber = series_index + 1
        dataset.InstanceNumber = number
        dataset.PatientID = study.patient_id
        dataset.PatientName = study.dicom_name
        dataset.AccessionNumber = study.accession
        dataset.StudyDate = dataset.SeriesDate = dataset.AcquisitionDate = study.date.strftime("%Y%m%d")
        dataset.StudyDescription = "CT Chest"
        z = self.z0 - (number - 1) * SLICE_SPACING
        dataset.ImagePositionPatient = [self.x, self.y, z]
        dataset.SliceLocation = z
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    def study_files(self, study: StudyPlan) -> Iterator[tuple[int, int, bytes]]:
        for series_index, size in enumerate(study.series_sizes):
            for number in range(1, size + 1):
                yield series_index, number, self.instance(study, series_index, number)

    def write_study(self, study: StudyPlan, folder: Path) -> int:
        written = 0
        for series_index, number, data in self.study_files(study):
            path = folder / study.accession / f"s{series_index + 1}" / f"{number:05d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written += 1
        return written


# --- The server ---------------------------------------------------------------------------

SEED_ORDERS = """
import datetime, json
from django.db import transaction
from apps.emr.models import Patient, Visit
from apps.radiology.models import RadiologyOrder
with open(%r) as handle:
    specs = json.load(handle)
with transaction.atomic():
    for spec in specs:
        patient = Patient.objects.create(
            hospital_number=spec["patient_id"], first_name=spec["first_name"], last_name=spec["last_name"]
        )
        visit = Visit.objects.create(
            patient=patient, visit_date=datetime.date.fromisoformat(spec["date"]), reason="Scale benchmark"
        )
        RadiologyOrder.objects.create(
            visit=visit, modality="CT", exam_requested="CT Chest", accession_number=spec["accession"]
        )
print(len(specs))
"""

COUNTS = """
import json, time
from django.db import connection
from apps.radiology.models import RadiologyImage, RadiologySeries, RadiologyStudy, UnmatchedImage
with connection.cursor() as cursor:
    # What a clinic's database is between imports: vacuumed and analysed (autovacuum's work over the
    # year), the import's dirty pages written (CHECKPOINT), and no autovacuum worker still busy with
    # the import (it started some during it): else the reads measure the import's aftermath.
    cursor.execute("VACUUM (ANALYZE)")
    cursor.execute("CHECKPOINT")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")
        if cursor.fetchone()[0] == 0:
            break
        time.sleep(1)
    cursor.execute("SELECT pg_database_size(current_database())")
    size = cursor.fetchone()[0]
print(json.dumps({
    "studies": RadiologyStudy.objects.count(),
    "series": RadiologySeries.objects.count(),
    "images": RadiologyImage.objects.count(),
    "unmatched": UnmatchedImage.objects.count(),
    "database_bytes": size,
}))
"""

STUDY_IDS = """
import json
from apps.radiology.models import RadiologyStudy
print(json.dumps(dict(RadiologyStudy.objects.filter(study_uid__in=%r).values_list("study_uid", "pk"))))
"""

EXPLAIN_QIDO = """
import json
from django.db import connection
from django.http import QueryDict
from django.test.utils import CaptureQueriesContext
from apps.radiology.access.principals import EVERYTHING, ScopePrincipal
from apps.radiology.dicomweb.qido import parse_search, search_studies

plans = {}
for label, params in json.loads(%r).items():
    with CaptureQueriesContext(connection) as captured:
        found = search_studies(parse_search(QueryDict(params)), principal=ScopePrincipal(EVERYTHING), url=lambda *p: "")
    lines = [f"({len(found)} studies found)"]
    with connection.cursor() as cursor:
        for statement in captured.captured_queries:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement["sql"])
            lines += ["-- " + statement["sql"], *[row[0] for row in cursor.fetchall()], ""]
    plans[label] = lines
print(json.dumps(plans))
"""


def shell(served: services.ServedPacs, script: str, *, timeout: float = 3600) -> Any:
    """Run a `manage.py shell -c` script in the server's environment; its last line, as JSON."""
    output = services.manage(served.env, "shell", "-c", script, wrapper=("sh", "scripts/serve_env.sh"), timeout=timeout)
    return json.loads(output.strip().splitlines()[-1])


def make_orders(served: services.ServedPacs, studies: list[StudyPlan], workdir: Path) -> None:
    path = workdir / "orders.json"
    path.write_text(json.dumps([study.order_spec() for study in studies]))
    made = shell(served, SEED_ORDERS % str(path))
    if made != len(studies):
        raise RuntimeError(f"made {made} orders of {len(studies)}")


STORED = re.compile(r"Stored (\d+), held (\d+) unmatched, skipped (\d+) already stored, ignored (\d+) non-DICOM")


@dataclass
class ImportFigures:
    instances: int = 0
    seconds: float = 0.0
    folders: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0


def import_studies(
    served: services.ServedPacs,
    studies: list[StudyPlan],
    workdir: Path,
    relabeller: Relabeller,
    *,
    jobs: int,
    folder_instances: int,
    step: Callable[[str], None],
) -> ImportFigures:
    """Write the studies' files a folder at a time while `jobs` imports take the folders already written.

    Each folder holds whole studies (two imports never touch one study). A folder is removed
    once imported: the store has its own copy. The clock runs from the first file written to the
    last import's end, so the rate includes writing the files (a fraction of the import's cost).
    """
    figures = ImportFigures()
    folders: queue.Queue[tuple[Path, int] | None] = queue.Queue(maxsize=jobs + 1)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def write() -> None:
        try:
            batch: list[StudyPlan] = []
            pending = 0
            for position, study in enumerate(studies):
                batch.append(study)
                pending += study.instances
                if pending >= folder_instances or position == len(studies) - 1:
                    folder = workdir / "incoming" / f"folder-{study.index:06d}"
                    count = sum(relabeller.write_study(one, folder) for one in batch)
                    folders.put((folder, count))
                    batch, pending = [], 0
                if errors:
                    return
        except BaseException as error:  # surfaced in the main thread
            errors.append(error)
        finally:
            for _ in range(jobs):
                folders.put(None)

    def take() -> None:
        while (item := folders.get()) is not None:
            folder, count = item
            if errors:  # keep taking what the writer made, so it never waits on a full queue
                shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                output = services.manage(
                    served.env,
                    "import_radiology",
                    str(folder),
                    "--by-accession",
                    "--no-progress",
                    wrapper=("sh", "scripts/serve_env.sh"),
                    timeout=7200,
                )
                summary = STORED.search(output)
                if summary is None:
                    raise RuntimeError(f"import_radiology said:\n{output[-2000:]}")
                stored, held, skipped, ignored = (int(value) for value in summary.groups())
                if (stored, held, skipped, ignored) != (count, 0, 0, 0):
                    raise RuntimeError(f"{folder.name}: {count} files written, import said: {summary.group(0)}")
                shutil.rmtree(folder)
                with lock:
                    figures.instances += count
                    figures.folders += 1
                    figures.lines.append(output.strip().splitlines()[-1])
                    done = figures.instances
                step(f"  imported {folder.name}: {count} files ({done:,} in this phase)")
            except BaseException as error:  # surfaced in the main thread
                errors.append(error)

    started = time.monotonic()
    threads = [threading.Thread(target=write, daemon=True)]
    threads += [threading.Thread(target=take, daemon=True) for _ in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    figures.seconds = time.monotonic() - started
    if errors:
        raise errors[0]
    return figures


# --- Timing -------------------------------------------------------------------------------


class TimedSession(requests.Session):
    """The session dicomweb-client talks through; it clocks each HTTP exchange to the whole body."""

    def __init__(self) -> None:
        super().__init__()
        self.exchange_ms = 0.0

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        started = time.perf_counter()
        response = super().send(request, **kwargs)
        _ = response.content
        self.exchange_ms += (time.perf_counter() - started) * 1000
        return response


@dataclass
class Client:
    base: str
    session: TimedSession
    dicomweb: DICOMwebClient

    def timed(self, call: Callable[[], Any]) -> tuple[float, Any]:
        self.session.exchange_ms = 0.0
        result = call()
        return self.session.exchange_ms, result


def connect(served: services.ServedPacs) -> tuple[Client, str]:
    """Seed the demo users (no orders) and log in as the radiology tech (may store and read)."""
    seeded = json.loads(served.manage("seed_demo", "--json", "--orders", "0").strip().splitlines()[-1])
    answer = requests.post(
        f"{served.base}/api/v1/auth/token/",
        json={"username": seeded["users"]["radtech"], "password": seeded["password"]},
        timeout=30,
    )
    answer.raise_for_status()
    session = TimedSession()
    session.headers["Authorization"] = f"Token {answer.json()['token']}"
    dicomweb = DICOMwebClient(f"{served.base}/api/v1/radiology/dicomweb", session=session, timeout=600)
    return Client(served.base, session, dicomweb), seeded["users"]["radtech"]


def curl_time(client: Client, url: str) -> tuple[float, int]:
    """(ms to the last byte, bytes) of one GET by curl (a new connection): a native client reading
    as a browser does, so the figure is the server's, not Python's reading of a 23 MB body."""
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--output",
            "/dev/null",
            "--write-out",
            "%{time_total} %{size_download}",
            "--header",
            "Accept: application/dicom+json",
            "--header",
            f"Authorization: {client.session.headers['Authorization']}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    seconds, size = result.stdout.split()
    return float(seconds) * 1000, int(size)


def stow(client: Client, relabeller: Relabeller, studies: list[StudyPlan]) -> list[float]:
    """Each study's 50 instances as one STOW-RS request (to the order of their AccessionNumber); ms each.

    The parts are encoded before the clock starts: the figure is the server's, not pydicom's.
    """
    timings = []
    url = f"{client.base}/api/v1/radiology/dicomweb/studies"
    for study in studies:
        parts = [data for _series, _number, data in relabeller.study_files(study)]
        elapsed, answer = client.timed(
            lambda parts=parts: client.dicomweb._http_post_multipart_application_dicom(url, parts)
        )
        stored = len(answer.get("ReferencedSOPSequence", []))
        failed = len(answer.get("FailedSOPSequence", []))
        if stored != len(parts) or failed:
            raise RuntimeError(f"STOW-RS stored {stored} of {len(parts)}, {failed} failed")
        timings.append(elapsed)
    return timings


def qido_filters(plan: Plan) -> dict[str, dict[str, str]]:
    start, end = plan.date_range
    return {
        f"PatientName={QUERY_FAMILY}*": {"PatientName": f"{QUERY_FAMILY}*"},
        f"StudyDate={start:%Y%m%d}-{end:%Y%m%d}": {"StudyDate": f"{start:%Y%m%d}-{end:%Y%m%d}"},
        "AccessionNumber=<one>": {"AccessionNumber": plan.accession},
    }


def measure_qido(client: Client, plan: Plan, reps: int) -> dict[str, tuple[float, int]]:
    """Each query once to warm up, then `reps` rounds of the three in turn; (median ms, results)."""
    searches = qido_filters(plan)
    found: dict[str, int] = {}
    for label, filters in searches.items():
        found[label] = len(client.dicomweb.search_for_studies(search_filters=filters))
    timings: dict[str, list[float]] = {label: [] for label in searches}
    for _round in range(reps):
        for label, filters in searches.items():
            elapsed, answer = client.timed(
                lambda filters=filters: client.dicomweb.search_for_studies(search_filters=filters)
            )
            if len(answer) != found[label]:
                raise RuntimeError(f"QIDO {label}: {len(answer)} results, then {found[label]}")
            timings[label].append(elapsed)
    return {label: (statistics.median(timings[label]), found[label]) for label in searches}


def explain_qido(served: services.ServedPacs, plan: Plan) -> dict[str, list[str]]:
    params = {
        label: "&".join(f"{key}={value}" for key, value in filters.items())
        for label, filters in qido_filters(plan).items()
    }
    return shell(served, EXPLAIN_QIDO % json.dumps(params))


@contextlib.contextmanager
def profiled(py_spy: Path | None, pids: list[int], workdir: Path) -> Iterator[list[str]]:
    """py-spy record of each process (when a py-spy binary is given) for the duration of the block.

    Yields a list filled afterwards with the heaviest stacks' leaf frames (self samples, all pids).
    """
    summary: list[str] = []
    if py_spy is None:
        yield summary
        return
    recorders = []
    for pid in pids:
        output = workdir / f"py-spy-{pid}.txt"
        command = [str(py_spy), "record", "--pid", str(pid), "--rate", "1000", "--format", "raw", "-o", str(output)]
        with (workdir / f"py-spy-{pid}.log").open("wb") as log:
            recorders.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), output))
    time.sleep(1.0)  # py-spy attaches
    try:
        yield summary
    finally:
        time.sleep(0.2)
        for process, _output in recorders:
            process.send_signal(signal.SIGINT)
        self_samples: dict[str, int] = {}
        inclusive: dict[str, int] = {}
        total = 0
        for process, output in recorders:
            process.wait(timeout=60)
            if not output.exists():
                continue
            for line in output.read_text().splitlines():
                stack, _, count_text = line.rpartition(" ")
                frames = stack.split(";")
                if not count_text.isdigit() or ("process_request" not in stack and "handle_request" not in stack):
                    continue  # idle threads: only samples inside a request count
                count = int(count_text)
                total += count
                self_samples[frames[-1]] = self_samples.get(frames[-1], 0) + count
                for frame in set(frames):
                    inclusive[frame] = inclusive.get(frame, 0) + count
        if not total:
            logs = [(workdir / f"py-spy-{pid}.log").read_text(errors="replace")[-300:] for pid in pids]
            summary.append(f"no samples inside a request; py-spy said: {' | '.join(logs)}")
        else:
            summary.append(f"{total} samples at 1 kHz inside requests; heaviest frames by self time:")
            for frame, count in sorted(self_samples.items(), key=lambda item: -item[1])[:12]:
                summary.append(f"{count / total:5.1%} self  {frame}")
            summary.append("heaviest app frames including callees:")
            app = {frame: count for frame, count in inclusive.items() if "apps/radiology" in frame}
            for frame, count in sorted(app.items(), key=lambda item: -item[1])[:12]:
                summary.append(f"{count / total:5.1%} total {frame}")


# --- Report -------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    small: float | None
    large: float
    unit: str = "ms"
    target: str = ""
    max_ratio: float | None = None  # met when large / small stays within it
    max_large: float | None = None  # met when the large figure stays under it

    @property
    def ratio(self) -> float | None:
        return None if not self.small else self.large / self.small

    @property
    def met(self) -> str:
        if self.max_ratio is not None and self.ratio is not None:
            return "yes" if self.ratio <= self.max_ratio else "**no**"
        if self.max_large is not None:
            return "yes" if self.large < self.max_large else "**no**"
        return ""


def table(rows: list[Row], small_label: str, large_label: str) -> str:
    lines = [
        f"| Measurement | {small_label} | {large_label} | ratio | Target | Met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        ratio = "—" if row.ratio is None else f"{row.ratio:.2f}x"
        cells = [row.label, fmt(row.small, row.unit), fmt(row.large, row.unit), ratio, row.target, row.met]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- Main ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=2000, help="studies in the big database (default 2,000)")
    parser.add_argument("--instances", type=int, default=100_000, help="instances in it (default 100,000)")
    parser.add_argument("--small", type=int, default=1000, help="instances in the small database (default 1,000)")
    parser.add_argument("--reps", type=int, default=30, help="timed rounds of the QIDO queries (default 30)")
    parser.add_argument("--big-reps", type=int, default=10, help="repeats of metadata and images (default 10)")
    parser.add_argument("--import-jobs", type=int, default=2, help="imports at once, each its own folder (default 2)")
    parser.add_argument("--big-series", type=int, default=None, help="the big series' instances (2%% of them)")
    parser.add_argument("--image-study", type=int, default=None, help="the images study's images (1%% of them)")
    parser.add_argument(
        "--py-spy", type=Path, default=None, help="a py-spy binary: profile the API workers during the first metadata"
    )
    parser.add_argument("--folder-instances", type=int, default=4000, help="files per imported folder (default 4,000)")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temporary directory (default TMPDIR)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    arguments = parser.parse_args()
    began = time.monotonic()

    def step(message: str) -> None:
        print(f"[{time.monotonic() - began:7.1f} s] {message}", flush=True)

    load_before = os.getloadavg()[0]
    plan = make_plan(
        arguments.studies, arguments.instances, arguments.small, arguments.big_series, arguments.image_study
    )
    relabeller = Relabeller()
    step(
        f"plan: {arguments.studies:,} studies, {arguments.instances:,} instances; small database "
        f"{len(plan.stow_empty) + len(plan.small)} studies; a {plan.big_series.instances}-instance series, "
        f"a {plan.image_study.instances}-image study"
    )
    notes: list[str] = []
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pacs-scale-", dir=arguments.workdir)))
        database = stack.enter_context(services.postgres(durable=True))
        served = stack.enter_context(services.serve_pacs(workdir, database.url))
        step(f"PostgreSQL 15 (defaults, fsync on) and PACS-lite (scripts/serve.sh) up at {served.base}")
        client, _user = connect(served)
        make_orders(served, [*plan.stow_empty, *plan.small], workdir)

        # Phase 1: STOW-RS into the empty database.
        stow_empty = stow(client, relabeller, plan.stow_empty)
        step(f"STOW-RS into the empty database: {', '.join(f'{ms:.0f} ms' for ms in stow_empty)}")

        # Phase 2: the small database.
        small_import = import_studies(
            served,
            plan.small,
            workdir,
            relabeller,
            jobs=arguments.import_jobs,
            folder_instances=max(1, sum(s.instances for s in plan.small) // arguments.import_jobs),
            step=step,
        )
        small_counts = shell(served, COUNTS)
        if small_counts["unmatched"]:
            raise RuntimeError(f"{small_counts['unmatched']} files held unmatched")
        step(f"small database: {small_counts}; import {small_import.rate:.1f} inst/s")
        qido_small = measure_qido(client, plan, arguments.reps)
        step("QIDO at the small size: " + ", ".join(f"{k} {v[0]:.1f} ms ({v[1]})" for k, v in qido_small.items()))

        # Phase 3: the year.
        make_orders(served, [*plan.large, *plan.stow_large], workdir)
        step(f"{len(plan.large) + len(plan.stow_large):,} more orders made")
        large_import = import_studies(
            served,
            plan.large,
            workdir,
            relabeller,
            jobs=arguments.import_jobs,
            folder_instances=arguments.folder_instances,
            step=step,
        )
        large_counts = shell(served, COUNTS)
        if large_counts["unmatched"]:
            raise RuntimeError(f"{large_counts['unmatched']} files held unmatched")
        expected = sum(s.instances for s in [*plan.stow_empty, *plan.small, *plan.large])
        if large_counts["images"] != expected:
            raise RuntimeError(f"{large_counts['images']} images in the database, {expected} expected")
        step(f"big database: {large_counts}; import {large_import.rate:.1f} inst/s")
        qido_large = measure_qido(client, plan, arguments.reps)
        step("QIDO at the big size: " + ", ".join(f"{k} {v[0]:.1f} ms ({v[1]})" for k, v in qido_large.items()))

        big = plan.big_series
        metadata_url = f"{client.base}/api/v1/radiology/dicomweb/studies/{big.uid}/series/{big.series_uids[0]}/metadata"
        with profiled(arguments.py_spy, served.api_worker_pids(), workdir) as profile:
            metadata_first, metadata_bytes = curl_time(client, metadata_url)
        metadata_again = [curl_time(client, metadata_url)[0] for _ in range(arguments.big_reps)]
        # The same request with the answer built ahead taken away (the render cache emptied, as after
        # deleting var/render-cache): the series built on request, as it was before metadata_warming.py.
        for entry in (workdir / "var" / "render-cache").glob("*.render"):
            entry.unlink()
        metadata_on_request = curl_time(client, metadata_url)[0]
        answer = client.dicomweb.retrieve_series_metadata(big.uid, big.series_uids[0])
        if len(answer) != big.instances:
            raise RuntimeError(f"series metadata has {len(answer)} of {big.instances} instances")
        metadata_python = [
            client.timed(lambda: client.dicomweb.retrieve_series_metadata(big.uid, big.series_uids[0]))[0]
            for _ in range(arguments.big_reps)
        ]
        step(
            f"series metadata ({big.instances}): first {metadata_first:.0f} ms, "
            f"again {statistics.median(metadata_again):.0f} ms, built on request {metadata_on_request:.0f} ms (curl); "
            f"dicomweb-client again {statistics.median(metadata_python):.0f} ms"
        )
        notes.append(
            f"Series metadata through dicomweb-client (requests, on a kept-alive connection; its JSON parse "
            f"not counted), from the server's cache: median {statistics.median(metadata_python):.0f} ms "
            f"of {arguments.big_reps}, against {statistics.median(metadata_again):.0f} ms by curl."
        )

        image_study_id = shell(served, STUDY_IDS % [plan.image_study.uid])[plan.image_study.uid]
        images_url = f"{client.base}/api/v1/radiology/studies/{image_study_id}/images/"

        def images() -> None:
            response = client.session.get(images_url, timeout=600)
            response.raise_for_status()
            count = sum(len(series["images"]) for series in response.json()["series"])
            if count != plan.image_study.instances:
                raise RuntimeError(f"images endpoint listed {count} of {plan.image_study.instances}")

        images_first = client.timed(images)[0]
        images_again = [client.timed(images)[0] for _ in range(arguments.big_reps)]
        step(
            f"images endpoint ({plan.image_study.instances}): first {images_first:.0f} ms, "
            f"again {statistics.median(images_again):.0f} ms"
        )

        stow_large = stow(client, relabeller, plan.stow_large)
        step(f"STOW-RS into the big database: {', '.join(f'{ms:.0f} ms' for ms in stow_large)}")
        plans = explain_qido(served, plan)
        step("EXPLAIN ANALYZE done")
        if profile:
            notes.append("py-spy of the API workers during the first series metadata request, top frames:")
            notes.append("\n".join(f"  - {line}" for line in profile))
        media = sum(path.stat().st_size for path in (workdir / "var").rglob("*") if path.is_file())

    small_n, large_n = small_counts["images"], large_counts["images"]
    for label, (small_ms, found) in qido_small.items():
        large_ms, large_found = qido_large[label]
        rows.append(
            Row(
                f"QIDO-RS studies?{label} ({found} / {large_found} studies found; median of {arguments.reps})",
                small_ms,
                large_ms,
                target="<= 1.2x",
                max_ratio=1.2,
            )
        )
    rows += [
        Row(
            f"Series metadata, {big.instances:,}-instance series, first request (curl, to the last byte; "
            "single measurement)",
            None,
            metadata_first,
            target="< 150 ms",
            max_large=150,
        ),
        Row(
            f"Series metadata, {big.instances:,}-instance series, again (curl; median of {arguments.big_reps})",
            None,
            statistics.median(metadata_again),
        ),
        Row(
            f"Series metadata, {big.instances:,}-instance series, built on request: the render cache emptied "
            "first (curl; single measurement)",
            None,
            metadata_on_request,
        ),
        Row(
            f"Study images endpoint, {plan.image_study.instances:,}-image study, first request (single measurement)",
            None,
            images_first,
        ),
        Row(
            f"Study images endpoint, {plan.image_study.instances:,}-image study, again "
            f"(median of {arguments.big_reps})",
            None,
            statistics.median(images_again),
        ),
        Row(
            f"STOW-RS, {STOW_BATCH} instances of a new study (median of {STOW_STUDIES} batches; small column: "
            "into the empty database)",
            statistics.median(stow_empty),
            statistics.median(stow_large),
        ),
        Row(
            "Import, manage.py import_radiology --by-accession "
            f"({arguments.import_jobs} at once; small column: the small database's files)",
            small_import.rate,
            large_import.rate,
            unit="inst/s",
        ),
    ]
    date = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    wall = time.monotonic() - began
    start, end = plan.date_range
    configuration = (
        f"Run {date} on {os.cpu_count()} cores ({platform.machine()}, shared with other work: figures may be "
        f"disturbed), Python {platform.python_version()}. PostgreSQL 15 with its defaults (fsync on); PACS-lite "
        f"as `make run` serves it (scripts/serve.sh: supervisord, granian {usable_cores()} workers "
        "x 4 threads, production settings, filesystem store); data made through ingest (`manage.py import_radiology "
        f"--by-accession`, {arguments.import_jobs} imports at once, and STOW-RS), orders by the ORM. "
        f"Command: `.venv/bin/python bench/scale.py --studies {arguments.studies} --instances {arguments.instances} "
        f"--small {arguments.small}`. Wall time {wall / 60:.1f} min; 1-minute load average {load_before:.1f} at "
        f"the start, {os.getloadavg()[0]:.1f} at the end."
    )
    notes += [
        f"Small database: {small_counts['studies']} studies, {small_n:,} instances "
        f"({small_counts['database_bytes'] / 1e6:.0f} MB of PostgreSQL); big database: "
        f"{large_counts['studies']:,} studies, {large_n:,} instances ({large_counts['series']:,} series, "
        f"{large_counts['database_bytes'] / 1e6:.0f} MB of PostgreSQL, {media / 1e9:.1f} GB of store and var/ "
        "after the last STOW-RS). No file was held unmatched; every file written was stored.",
        "Ratio = figure at the big size / figure at the small size (>1 = slower at the big size).",
        f"QIDO: PatientName={QUERY_FAMILY}* finds the three patients so named (all in the first days); "
        f"StudyDate={start:%Y%m%d}-{end:%Y%m%d} the studies of those days; AccessionNumber one study. The same "
        f"studies at both sizes. {arguments.reps} rounds of the three queries in turn after one warm-up each; "
        "VACUUM (ANALYZE) and CHECKPOINT ran before each set of reads, which waited for autovacuum to be idle.",
        f"Series metadata answer: {metadata_bytes / 1e6:.1f} MB of DICOM JSON for {big.instances:,} instances "
        "(figures exclude dicomweb-client's json.loads). 'First request' is the first ever for that series: "
        "its answer was built ahead into the render cache when the import that stored it ended "
        "(apps/radiology/dicomweb/metadata_warming.py, every series of 1,000 instances or more, as Orthanc's "
        "DICOMweb plugin 1.15+ stores a stable series' metadata); 'built on request' is the same request with "
        "the render cache emptied first, what a series not built ahead costs.",
        "Images endpoint: `GET /api/v1/radiology/studies/{id}/images/` (a signed URL per image); its first "
        "request also issues the caller's viewer token for the study.",
        f"STOW-RS: {', '.join(f'{ms:.0f}' for ms in stow_empty)} ms into the empty database (0, 50, 100 instances "
        f"before), {', '.join(f'{ms:.0f}' for ms in stow_large)} ms into the big one; each batch to the order of "
        "its AccessionNumber (POST studies), parts encoded before the clock starts.",
        f"Import: small {small_import.instances:,} files in {small_import.seconds:.0f} s, big "
        f"{large_import.instances:,} in {large_import.seconds:.0f} s ({large_import.folders} folders); the clock "
        "includes writing the files (relabelling CT_small.dcm with pydicom, in this process, overlapping the "
        "imports) and each import's start-up.",
    ]
    small_label = f"at {small_n:,}"
    large_label = f"at {large_n:,}"
    report = "\n\n".join(
        [configuration, table(rows, small_label, large_label), "\n".join(f"- {note}" for note in notes)]
    )
    plan_text = "\n\n".join(
        f"#### {label} ({large_n:,} instances)\n\n```\n" + "\n".join(lines) + "\n```" for label, lines in plans.items()
    )
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(
        f"# PACS-lite at scale\n\n{report}\n\n### EXPLAIN ANALYZE of the QIDO queries\n\n{plan_text}\n"
    )
    print()
    print(report)
    print(f"\nwritten to {arguments.output} (with the EXPLAIN plans); total {wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
