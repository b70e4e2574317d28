"""A bounded load test on loopback: 50 OHIF-like viewers and 5 uploading devices against the app server + PostgreSQL.

Run from the repository root:
    .venv/bin/python bench/load_test.py [--duration 120] [--viewers 50] [--uploaders 5] [--images 500]

What it does, all on 127.0.0.1 and in a temporary directory, and stops by itself:
1. starts a throwaway PostgreSQL with scripts/pg_throwaway.sh (sourced in a child bash that
   prints DATABASE_URL), migrates it, and seeds, in this process through the one ingest
   path (PACSLiteService.ingest_image), a study of --images relabelled copies of pydicom's
   CT_small in --series series, plus the demo users;
2. starts the app server (config/app_server.py: --workers granian workers of --threads threads) with production
   settings (DJANGO_DEBUG=0, plain HTTP allowed on loopback);
3. for --duration seconds runs the viewers (threads, each with a requests.Session and a
   study-scoped viewer token as `Authorization: Bearer`, requesting what OHIF v3 does: QIDO
   for the study, its series, the metadata of a series, then frames and thumbnails of
   random instances) and the uploaders (radiology-tech token; each declares a new
   relabelled CT in its own series of the study and sends it in --chunk-size chunks with
   Content-Range);
4. reports requests, errors (any non-2xx answer or failed request; there must be none),
   p50/p95/p99 latency and throughput per kind of request, and checks in the database that
   no upload was lost or duplicated: images == --images + uploads completed, each upload's
   image a distinct row holding that upload's checksum. The table is printed and written
   to bench/results/load_test.txt. Exit status 0 only when there were no errors and the
   check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import hashlib
import io
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _services as services  # bench/ is on sys.path when this file runs as a script
import psycopg2
import pydicom
import requests
from pydicom.dataset import Dataset

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))
RESULTS = ROOT / "bench" / "results" / "load_test.txt"
TIMEOUT = 60  # seconds for any one request; the run never waits longer than duration + this
DICOMWEB = "/api/v1/radiology/dicomweb"
DICOM_JSON = "application/dicom+json"
# What OHIF v3 sends for frames (FIELD-NOTES) and for thumbnails.
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
SECRET_KEY = "load-test-only-" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of `values` (p95 of 20 values is the 19th smallest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(round(fraction * len(ordered), 9)))
    return ordered[rank - 1]


# --- PostgreSQL -------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A throwaway cluster by scripts/pg_throwaway.sh (127.0.0.1, fsync=off); stopped and removed after."""
    started = subprocess.run(
        ["bash", "-c", 'source scripts/pg_throwaway.sh >&2; echo "$DATABASE_URL"; echo "$PG_THROWAWAY_DIR"'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if started.returncode != 0:
        raise RuntimeError(f"PostgreSQL did not start:\n{started.stderr[-3000:]}")
    url, directory = started.stdout.strip().splitlines()[-2:]
    try:
        yield url
    finally:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*as_postgres, str(PGBIN / "pg_ctl"), "-D", f"{directory}/data", "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(directory, ignore_errors=True)


# --- The server --------------------------------------------------------------------------------


def server_env(workdir: Path, database_url: str) -> dict[str, str]:
    """Production settings over plain HTTP on loopback, every path in `workdir` (as compare_orthanc's)."""
    return {
        **services.pacs_env(workdir, database_url, SECRET_KEY),
        "RADIOLOGY_STAGING_DIR": str(workdir / "staging"),
        "PYTHONUNBUFFERED": "1",
    }


def manage(env: dict[str, str], *args: str) -> None:
    result = subprocess.run(
        [str(VENV_BIN / "python"), "manage.py", *args], cwd=ROOT, env=env, capture_output=True, timeout=300, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr.decode()[-3000:]}")


@contextlib.contextmanager
def app_server(env: dict[str, str], workdir: Path, *, workers: int, threads: int) -> Iterator[str]:
    """The app server (config/app_server.py) in its own process group on a free loopback port.

    Yields its base URL; stops the group after."""
    port = free_port()
    log_path = workdir / "app_server.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(VENV_BIN / "python"), "-m", "config.app_server", "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env={**env, "PACS_WEB_WORKERS": str(workers), "PACS_WEB_THREADS": str(threads)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the app server did not come up:\n{log_path.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


# --- Seeding (in this process, through the one ingest path) --------------------------------------


@dataclass(frozen=True)
class Seeded:
    study_uid: str
    order_id: int
    viewer_token: str
    radtech_token: str
    series_uids: list[str]


class Relabeller:
    """Distinct copies of CT_small: one parse, then new UIDs per copy (fast enough for hundreds)."""

    def __init__(self, study_uid: str, patient_name: str, patient_id: str) -> None:
        from apps.radiology.operations.demo import sample_path

        self.template = pydicom.dcmread(sample_path("CT_small.dcm"))
        self.template.StudyInstanceUID = study_uid
        self.template.PatientName = patient_name
        self.template.PatientID = patient_id
        self.lock = threading.Lock()

    def copy(self, *, series_uid: str, series_number: int, instance_number: int) -> bytes:
        from apps.radiology.imagefiles.uids import generate_uid

        with self.lock:
            dataset: Dataset = copy.deepcopy(self.template)
        image_uid = generate_uid()
        dataset.SeriesInstanceUID = series_uid
        dataset.SeriesNumber = series_number
        dataset.SOPInstanceUID = image_uid
        dataset.file_meta.MediaStorageSOPInstanceUID = image_uid
        dataset.InstanceNumber = instance_number
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()


def seed(env: dict[str, str], *, images: int, series: int, token_lifetime: int) -> tuple[Seeded, Relabeller]:
    """Demo users, one order whose study holds `images` CT images in `series` series; tokens for the clients."""
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connections
    from rest_framework.authtoken.models import Token

    from apps.radiology.access import signing
    from apps.radiology.imagefiles.uids import generate_uid
    from apps.radiology.management.commands.seed_demo import create_demo_order, ensure_demo_users
    from apps.radiology.models import Modality
    from apps.radiology.pacs_lite_service import PACSLiteService

    users = ensure_demo_users("load-test-password")
    order = create_demo_order(0, doctor=users["doctor"], modality=Modality.CT)
    patient = order.visit.patient
    study_uid = generate_uid()
    relabeller = Relabeller(study_uid, patient.dicom_name, patient.hospital_number)
    series_uids = [generate_uid() for _ in range(series)]
    started = time.monotonic()
    for index in range(images):
        number = index // series + 1
        content = relabeller.copy(
            series_uid=series_uids[index % series], series_number=index % series + 1, instance_number=number
        )
        PACSLiteService.ingest_image(
            order=order, stream=io.BytesIO(content), filename=f"ct_{index:04d}.dcm", uploaded_by=users["radtech"]
        )
        if (index + 1) % 100 == 0:
            print(f"  seeded {index + 1}/{images} images ({time.monotonic() - started:.0f} s)", flush=True)
    order.refresh_from_db()
    seeded = Seeded(
        study_uid=study_uid,
        order_id=order.pk,
        viewer_token=signing.issue_viewer_token(study=order.study, user=users["doctor"], expires_in=token_lifetime),
        radtech_token=Token.objects.get_or_create(user=users["radtech"])[0].key,
        series_uids=series_uids,
    )
    connections.close_all()
    return seeded, relabeller


# --- The clients ---------------------------------------------------------------------------------


@dataclass
class Stats:
    """Latencies per kind of request and the errors, shared by every client thread."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    bytes_received: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def timed(
        self,
        session: requests.Session,
        kind: str,
        method: str,
        url: str,
        *,
        expect: tuple[int, ...] = (200,),
        **kwargs: Any,
    ) -> requests.Response | None:
        started = time.perf_counter()
        try:
            response = session.request(method, url, timeout=TIMEOUT, **kwargs)
            content = response.content
        except requests.RequestException as error:
            with self.lock:
                self.errors.append(f"{kind}: {type(error).__name__}: {error}"[:300])
            return None
        elapsed = time.perf_counter() - started
        with self.lock:
            self.latencies[kind].append(elapsed)
            self.bytes_received += len(content)
            if response.status_code not in expect:
                self.errors.append(f"{kind}: {response.status_code} {method} {url[-90:]} {content[:200]!r}")
                return None
        return response


def viewer(base: str, seeded: Seeded, stats: Stats, stop: threading.Event, seed_value: int) -> None:
    """One OHIF-like viewer, over and over: find the study, its series, one series' metadata, then images."""
    rng = random.Random(seed_value)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {seeded.viewer_token}"
    study = f"{base}{DICOMWEB}/studies/{seeded.study_uid}"
    json_accept = {"Accept": DICOM_JSON}
    while not stop.is_set():
        found = stats.timed(
            session,
            "qido studies",
            "GET",
            f"{base}{DICOMWEB}/studies?StudyInstanceUID={seeded.study_uid}",
            headers=json_accept,
        )
        if found is None or stop.is_set():
            continue
        series = stats.timed(session, "qido series", "GET", f"{study}/series", headers=json_accept)
        if series is None or stop.is_set():
            continue
        series_uids = [item["0020000E"]["Value"][0] for item in series.json()]
        series_uid = rng.choice(series_uids)
        metadata = stats.timed(
            session, "series metadata", "GET", f"{study}/series/{series_uid}/metadata", headers=json_accept
        )
        if metadata is None:
            continue
        instances = [item["00080018"]["Value"][0] for item in metadata.json()]
        for _view in range(8):
            if stop.is_set():
                break
            instance = f"{study}/series/{series_uid}/instances/{rng.choice(instances)}"
            stats.timed(session, "frame", "GET", f"{instance}/frames/1", headers={"Accept": FRAME_ACCEPT})
            if rng.random() < 0.5:
                stats.timed(
                    session,
                    "thumbnail",
                    "GET",
                    f"{instance}/thumbnail?viewport=256,256",
                    headers={"Accept": "image/jpeg"},
                )


@dataclass
class Completed:
    """An upload the server said was completed, with the image it says it made."""

    checksum: str
    image_id: int
    image_checksum: str


def uploader(
    base: str,
    seeded: Seeded,
    relabeller: Relabeller,
    stats: Stats,
    stop: threading.Event,
    completed: list[Completed],
    number: int,
    chunk_size: int,
) -> None:
    """A radiology tech's device: new CT images in its own series, each declared then sent in chunks."""
    from apps.radiology.imagefiles.uids import generate_uid

    session = requests.Session()
    session.headers["Authorization"] = f"Token {seeded.radtech_token}"
    series_uid = generate_uid()
    instance = 0
    while not stop.is_set():
        instance += 1
        content = relabeller.copy(series_uid=series_uid, series_number=100 + number, instance_number=instance)
        checksum = hashlib.sha256(content).hexdigest()
        declared = stats.timed(
            session,
            "upload declare",
            "POST",
            f"{base}/api/v1/radiology/uploads/",
            expect=(201,),
            json={
                "client_upload_id": str(uuid.uuid4()),
                "radiology_order": seeded.order_id,
                "filename": f"device{number}_{instance:05d}.dcm",
                "file_size": len(content),
                "mime_type": "application/dicom",
                "checksum": checksum,
            },
        )
        if declared is None:
            continue
        binary = f"{base}/api/v1/radiology/uploads/{declared.json()['id']}/binary/"
        for start in range(0, len(content), chunk_size):
            if stop.is_set():
                return  # left pending: it is neither completed nor counted
            end = min(start + chunk_size, len(content)) - 1
            last = end == len(content) - 1
            response = stats.timed(
                session,
                "upload last chunk + ingest" if last else "upload chunk",
                "PUT",
                binary,
                expect=(201,) if last else (202,),
                data=content[start : end + 1],
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"bytes {start}-{end}/{len(content)}",
                },
            )
            if response is None:
                break
            if last:
                image = response.json()["image"]
                with stats.lock:
                    completed.append(
                        Completed(checksum=checksum, image_id=image["id"], image_checksum=image["checksum"])
                    )


def run_clients(
    base: str, seeded: Seeded, relabeller: Relabeller, arguments: argparse.Namespace
) -> tuple[Stats, list[Completed], float]:
    stats = Stats()
    completed: list[Completed] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=viewer, args=(base, seeded, stats, stop, index), daemon=True)
        for index in range(arguments.viewers)
    ] + [
        threading.Thread(
            target=uploader,
            args=(base, seeded, relabeller, stats, stop, completed, index, arguments.chunk_size),
            daemon=True,
        )
        for index in range(arguments.uploaders)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    stop.wait(arguments.duration)
    stop.set()
    # Requests in flight finish (each has a timeout); nothing new starts after the stop.
    deadline = time.monotonic() + TIMEOUT + 5
    for thread in threads:
        thread.join(timeout=max(deadline - time.monotonic(), 0.1))
    elapsed = time.monotonic() - started
    hung = sum(thread.is_alive() for thread in threads)
    if hung:
        stats.errors.append(f"{hung} client thread(s) still busy {TIMEOUT + 5} s after the stop")
    return stats, completed, elapsed


# --- Checks and report -------------------------------------------------------------------------


def check_images(database_url: str, seeded: Seeded, images: int, completed: list[Completed]) -> list[str]:
    """No upload lost or duplicated: the study holds the seed plus exactly one image per completed upload."""
    problems = []
    with contextlib.closing(psycopg2.connect(database_url)) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.id, i.checksum FROM radiology_radiologyimage i "
            "JOIN radiology_radiologyseries s ON s.id = i.series_id "
            "JOIN radiology_radiologystudy st ON st.id = s.study_id WHERE st.study_uid = %s",
            [seeded.study_uid],
        )
        rows = dict(cursor.fetchall())
        cursor.execute("SELECT COUNT(*) FROM radiology_radiologyimage")
        total = cursor.fetchone()[0]
    if len(rows) != images + len(completed) or total != len(rows):
        problems.append(f"{len(rows)} images in the study ({total} in all), expected {images} + {len(completed)}")
    image_ids = [upload.image_id for upload in completed]
    if len(set(image_ids)) != len(image_ids):
        problems.append("two completed uploads share an image")
    for upload in completed:
        if rows.get(upload.image_id) != upload.checksum or upload.image_checksum != upload.checksum:
            problems.append(f"image {upload.image_id} does not hold its upload's bytes")
    return problems


def report(
    stats: Stats, completed: list[Completed], elapsed: float, problems: list[str], arguments: argparse.Namespace
) -> str:
    total = sum(len(values) for values in stats.latencies.values())
    lines = [
        f"PACS-lite load test, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}",
        f"{os.cpu_count()} CPUs (shared by PostgreSQL, the app server and these clients), "
        f"Python {platform.python_version()}",
        f"granian: {arguments.workers} workers x {arguments.threads} threads; PostgreSQL (fsync=off);"
        " filesystem store; all on 127.0.0.1",
        f"study of {arguments.images} CT images (39 KB each) in {arguments.series} series; "
        f"{arguments.viewers} viewers (viewer token), {arguments.uploaders} uploaders "
        f"({arguments.chunk_size // 1024} KB chunks); ran {elapsed:.1f} s (--duration {arguments.duration:g})",
        "",
        f"{'request':<28}{'count':>8}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}",
    ]
    for kind in sorted(stats.latencies):
        values = stats.latencies[kind]
        lines.append(
            f"{kind:<28}{len(values):>8}{len(values) / elapsed:>9.1f}{percentile(values, 0.50) * 1000:>9.0f}"
            f"{percentile(values, 0.95) * 1000:>9.0f}{percentile(values, 0.99) * 1000:>9.0f}"
            f"{max(values) * 1000:>9.0f}"
        )
    every = [value for values in stats.latencies.values() for value in values]
    if every:
        lines.append(
            f"{'all':<28}{total:>8}{total / elapsed:>9.1f}{percentile(every, 0.50) * 1000:>9.0f}"
            f"{percentile(every, 0.95) * 1000:>9.0f}{percentile(every, 0.99) * 1000:>9.0f}{max(every) * 1000:>9.0f}"
        )
    lines += [
        "",
        f"total requests: {total} ({total / elapsed:.1f}/s), received {stats.bytes_received / 1e6:.1f} MB",
        f"uploads completed: {len(completed)} ({len(completed) / elapsed:.2f}/s)",
        f"ERRORS: {len(stats.errors)}" + ("" if not stats.errors else " <-- must be 0"),
        *[f"  {error}" for error in stats.errors[:20]],
        "images check: "
        + ("OK (images == seeded + uploads completed, each upload's image distinct)" if not problems else "FAILED"),
        *[f"  {problem}" for problem in problems[:20]],
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load (default 120)")
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--uploaders", type=int, default=5)
    parser.add_argument("--images", type=int, default=500, help="images seeded in the study (default 500)")
    parser.add_argument("--series", type=int, default=5, help="series the seeded images are spread over (default 5)")
    parser.add_argument("--workers", type=int, default=4, help="app server workers (default 4)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
    parser.add_argument("--chunk-size", type=int, default=16 * 1024, help="upload chunk bytes (default 16 KiB)")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pacs-load-") as temporary, postgres() as database_url:
        workdir = Path(temporary)
        env = server_env(workdir, database_url)
        print(f"PostgreSQL up; migrating ({database_url})", flush=True)
        manage(env, "migrate", "--noinput")
        print(f"seeding {arguments.images} images through ingest...", flush=True)
        seeded, relabeller = seed(
            env, images=arguments.images, series=arguments.series, token_lifetime=int(arguments.duration) + 3600
        )
        with app_server(env, workdir, workers=arguments.workers, threads=arguments.threads) as base:
            print(f"app server up at {base}; {arguments.duration:.0f} s of load...", flush=True)
            stats, completed, elapsed = run_clients(base, seeded, relabeller, arguments)
        problems = check_images(database_url, seeded, arguments.images, completed)
    text = report(stats, completed, elapsed, problems, arguments)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0 if not stats.errors and not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
