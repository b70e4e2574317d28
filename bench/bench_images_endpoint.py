"""Time GET /api/v1/radiology/studies/{id}/images/ on a study of 1,000 images.

Run from the repository root:  .venv/bin/python bench/bench_images_endpoint.py [--images N] [--runs N]

A throwaway SQLite database in a temporary directory (never var/), migrated from scratch;
one order, one study, one series of N image rows (rows only: the endpoint signs URLs and
never reads bytes). The requests go through django.test.Client as a logged-in doctor, so
the figures include middleware, session and authentication, but no network. Prints the
median and p95 in milliseconds, the number of SQL queries of one request and the size of
the response body.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p95 of 20 runs is the 19th fastest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(round(fraction * len(ordered), 9)))
    return ordered[rank - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=20)
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pacs-bench-") as workdir:
        os.environ["DJANGO_SETTINGS_MODULE"] = "config.test_settings"
        os.environ["DATABASE_URL"] = f"sqlite:///{Path(workdir) / 'bench.sqlite3'}"
        os.environ["PACS_VAR_DIR"] = str(Path(workdir) / "var")
        os.environ["RADIOLOGY_STORAGE"] = "filesystem"
        os.environ["PACS_PUBLIC_URL"] = ""
        os.environ.setdefault("DJANGO_LOG_LEVEL", "WARNING")
        sys.path.insert(0, str(ROOT))

        import django

        django.setup()

        from django.core.management import call_command
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext, setup_test_environment

        setup_test_environment()  # lets the test client accept "testserver"
        call_command("migrate", verbosity=0, interactive=False)

        from apps.emr.models import Patient, Visit
        from apps.radiology.access.permissions import DOCTOR_GROUP
        from apps.radiology.models import RadiologyOrder
        from apps.radiology.tests.api_fixtures import make_image_row, make_series, make_study
        from apps.radiology.tests.conftest import make_user

        doctor = make_user("bench-doctor", groups=(DOCTOR_GROUP,))
        patient = Patient.objects.create(hospital_number="BENCH-1", first_name="Bench", last_name="Patient")
        visit = Visit.objects.create(patient=patient, visit_date="2026-01-15")
        order = RadiologyOrder.objects.create(
            visit=visit, modality="CT", exam_requested="CT Chest", ordering_doctor=doctor
        )
        study = make_study(order)
        series = make_series(study, series_number=1)
        for number in range(1, arguments.images + 1):
            make_image_row(series, instance_number=number)

        client = Client()
        client.force_login(doctor)
        url = f"/api/v1/radiology/studies/{study.pk}/images/"

        warm = client.get(url)  # first request: URL resolution, imports, caches
        assert warm.status_code == 200, warm.content[:500]
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        query_count = len(queries.captured_queries)  # read now: request_started resets the log
        image_count = sum(len(item["images"]) for item in response.json()["series"])
        assert image_count == arguments.images

        timings: list[float] = []
        for _ in range(arguments.runs):
            started = time.perf_counter()
            timed = client.get(url)
            timings.append((time.perf_counter() - started) * 1000)
            assert timed.status_code == 200

        print(f"GET {url}  ({image_count} images, {arguments.runs} runs, SQLite, django.test.Client)")
        print(f"median: {statistics.median(timings):.1f} ms")
        print(f"p95:    {percentile(timings, 0.95):.1f} ms")
        print(f"min/max: {min(timings):.1f} / {max(timings):.1f} ms")
        print(f"queries per request: {query_count}")
        print(f"response size: {len(response.content):,} bytes ({len(response.content) / image_count:.0f} per image)")
        connection.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
