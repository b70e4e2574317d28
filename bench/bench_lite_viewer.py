"""Bytes and time to the first image of the built-in lightweight viewer, for a CR chest study.

Run from the repository root:  .venv/bin/python bench/bench_lite_viewer.py [--runs N]

A throwaway SQLite database and file store in a temporary directory (never var/), one CR
chest study of two 2048x2500 16-bit instances (~10 MB each, synthesized like the browser
tests' one), served by Django's threaded WSGI server on a loopback port; Debian's Chromium
(headless, driven by Playwright) opens the study's viewer URL in a fresh browser context
(empty cache) per run, as a 1280x800 desktop and as a 360x640 touch phone (devicePixelRatio
2). Per profile it prints the figures of one run with the server's render cache empty
(the radiograph is decoded and resized) and the median of N runs with it warm:
- bytes to first image: what the page had received (Resource Timing transferSize: headers
  and encoded bodies) when <img id="view"> first finished loading;
- time to first image: from navigation start to that load event;
- bytes at rest: everything on the wire once the network is idle (the prefetch of the
  next image and the series thumbnail included).
No assertions: the browser tests hold the 200 KB budget.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Run:
    bytes_to_first_image: int
    ms_to_first_image: float
    bytes_at_rest: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(browser: object, url: str, *, phone: bool) -> Run:
    """One visit in a fresh context (empty HTTP cache)."""
    from apps.radiology.tests.browser.lite_driver import LiteView, Traffic, first_image_bytes, new_context

    context = new_context(browser, phone=phone)  # type: ignore[arg-type]
    try:
        page = context.new_page()
        traffic = Traffic()
        traffic.attach(page)
        page.goto(url)
        LiteView(page, artifacts_dir=Path(tempfile.gettempdir()), prefix="bench").wait_shown(timeout_ms=60_000)
        drawn_at = float(page.evaluate("() => window.__lite.firstDrawAt"))
        to_first = first_image_bytes(page).total
        page.wait_for_load_state("networkidle", timeout=30_000)
        at_rest = int(sum(wire.encoded_bytes for wire in traffic.wire.values()))
        return Run(bytes_to_first_image=to_first, ms_to_first_image=drawn_at, bytes_at_rest=at_rest)
    finally:
        context.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pacs-bench-lite-") as workdir:
        os.environ["DJANGO_SETTINGS_MODULE"] = "config.test_settings"
        os.environ["DATABASE_URL"] = f"sqlite:///{Path(workdir) / 'bench.sqlite3'}"
        os.environ["PACS_VAR_DIR"] = str(Path(workdir) / "var")
        (Path(workdir) / "var" / "static").mkdir(parents=True)  # STATIC_ROOT, or whitenoise warns
        os.environ["MEDIA_ROOT"] = str(Path(workdir) / "media")
        os.environ["RADIOLOGY_STORAGE"] = "filesystem"
        os.environ["PACS_PUBLIC_URL"] = ""
        os.environ.setdefault("DJANGO_LOG_LEVEL", "WARNING")
        sys.path.insert(0, str(ROOT))

        import django

        django.setup()

        from django.conf import settings
        from django.core.cache import caches
        from django.core.management import call_command
        from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
        from django.core.wsgi import get_wsgi_application
        from django.db import connection

        call_command("migrate", verbosity=0, interactive=False)

        from apps.emr.models import Patient, Visit
        from apps.radiology.access.permissions import DOCTOR_GROUP, RADIOLOGY_TECH_GROUP
        from apps.radiology.models import RadiologyOrder
        from apps.radiology.pacs_lite_service import PACSLiteService
        from apps.radiology.tests.browser.lite_driver import chromium_browser, ingest_cr_study
        from apps.radiology.tests.conftest import make_user

        settings.OHIF_VIEWER_URL = ""  # the built-in viewer
        doctor = make_user("bench-doctor", groups=(DOCTOR_GROUP,))
        radtech = make_user("bench-radtech", groups=(RADIOLOGY_TECH_GROUP,))
        patient = Patient.objects.create(hospital_number="BENCH-CR", first_name="Bench", last_name="Patient")
        visit = Visit.objects.create(patient=patient, visit_date="2026-01-15")
        order = RadiologyOrder.objects.create(
            visit=visit, modality="CR", exam_requested="Chest X-Ray PA", ordering_doctor=doctor
        )
        study = ingest_cr_study(order, uploaded_by=radtech)

        class QuietHandler(WSGIRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

        port = free_port()
        server = ThreadedWSGIServer(("127.0.0.1", port), QuietHandler, allow_reuse_address=True)
        server.set_app(get_wsgi_application())
        serving = threading.Thread(target=server.serve_forever, daemon=True)
        serving.start()
        base = f"http://127.0.0.1:{port}"
        # The token outlives the runs; it is issued before the browser starts (no ORM inside it).
        url = PACSLiteService.generate_viewer_url(
            study_uid=study.study_uid, user=doctor, expires_in=3600, base_url=base
        )
        connection.close()

        profiles = [("1280x800 desktop", False), ("360x640 phone (DPR 2)", True)]
        print(f"CR chest study: 2 instances of 2048x2500x16 bit; {arguments.runs} fresh contexts per profile")
        try:
            with chromium_browser() as browser:
                for name, phone in profiles:
                    caches["renders"].clear()
                    cold = measure(browser, url, phone=phone)
                    runs = [measure(browser, url, phone=phone) for _ in range(arguments.runs)]
                    print(f"\n{name}")
                    print(
                        f"  cold server cache: {cold.bytes_to_first_image:,} B to first image in "
                        f"{cold.ms_to_first_image:.0f} ms; {cold.bytes_at_rest:,} B at rest"
                    )
                    print(
                        f"  warm, median of {len(runs)}: "
                        f"{statistics.median(run.bytes_to_first_image for run in runs):,.0f} B to first image in "
                        f"{statistics.median(run.ms_to_first_image for run in runs):.0f} ms "
                        f"(min {min(run.ms_to_first_image for run in runs):.0f}, "
                        f"max {max(run.ms_to_first_image for run in runs):.0f}); "
                        f"{statistics.median(run.bytes_at_rest for run in runs):,.0f} B at rest"
                    )
        finally:
            server.shutdown()
            server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
