"""Fixtures of the browser tests: the viewer's origin as a live server, seeded studies, the demo doctor.

The live server (pytest-django's `live_server`, a thread of this process) plays both ports
of `make run`: with ROOT_URLCONF=config.urls it is the API (the doctor logs in and asks for
a study's viewer_url), with config.viewer_urls it is the viewer's origin (the OHIF dist at
"/" and DICOMweb beside it). Settings are process-wide, so the server thread follows the switch.

These tests never skip: a missing OHIF dist or Chromium is a failure that says how to
install it (`make test` installs both first).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.conf import settings as django_settings

from apps.radiology.management.commands.seed_demo import ensure_demo_users
from apps.radiology.models import RadiologyStudy
from apps.radiology.operations.demo import ingest_demo_study, jpeg_with_exif
from apps.radiology.pacs_lite_service import DeclaredImage, PACSLiteService
from apps.radiology.tests.browser.ohif_driver import CHROMIUM, ViewerVisit, visit_viewer
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.live_server_requests import wait_for_live_server_requests

ROOT = Path(__file__).resolve().parents[4]
OHIF_DIST = ROOT / "var" / "ohif" / "dist"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
API_URLCONF = "config.urls"
VIEWER_URLCONF = "config.viewer_urls"
HTTP_TIMEOUT = 15

_written: list[Path] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """List the screenshots the browser tests wrote, whatever the outcome."""
    if _written:
        terminalreporter.section("browser test screenshots")
        for path in _written:
            terminalreporter.write_line(str(path))


@pytest.fixture
def ohif_dist() -> Path:
    if not (OHIF_DIST / "index.html").is_file():
        pytest.fail(f"OHIF is not installed in {OHIF_DIST}: run `make viewer` (`make test` does it first).")
    return OHIF_DIST


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/browser_packages.sh` (`make test` does it first).")
    return CHROMIUM


@dataclass
class ViewerSite:
    """The live server as API and viewer origin, logged in as the demo doctor."""

    base_url: str
    settings: Any
    api_token: str = ""

    def as_api(self) -> None:
        self.settings.ROOT_URLCONF = API_URLCONF

    def as_viewer(self) -> None:
        self.settings.ROOT_URLCONF = VIEWER_URLCONF

    def login(self, username: str, password: str) -> None:
        """POST /api/v1/auth/token/ over HTTP, as the web client does."""
        self.as_api()
        response = requests.post(
            f"{self.base_url}/api/v1/auth/token/",
            json={"username": username, "password": password},
            timeout=HTTP_TIMEOUT,
        )
        assert response.status_code == 200, response.text
        self.api_token = str(response.json()["token"])

    def viewer_url(self, study: RadiologyStudy, *, expires_in: int | None = None) -> str:
        """GET the study's /viewer-url/ over HTTP with the doctor's API token."""
        self.as_api()
        response = requests.get(
            f"{self.base_url}/api/v1/radiology/studies/{study.pk}/viewer-url/",
            params={} if expires_in is None else {"expires_in": expires_in},
            headers={"Authorization": f"Token {self.api_token}"},
            timeout=HTTP_TIMEOUT,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["study_uid"] == study.study_uid
        return str(body["viewer_url"])

    def open(self, url: str, *, name: str, expect_image: bool, series_count: int = 0) -> ViewerVisit:
        """Open `url` in headless Chromium with the live server serving the viewer's origin."""
        self.as_viewer()
        try:
            visit = visit_viewer(
                url, name=name, artifacts_dir=ARTIFACTS, expect_image=expect_image, series_count=series_count
            )
        finally:
            wait_for_live_server_requests()
        _written.extend(visit.artifacts)
        print(f"\n{name}: {visit.seconds:.1f} s; screenshots: {', '.join(map(str, visit.artifacts))}")
        return visit


@pytest.fixture
def viewer_site(
    live_server: Any, settings: Any, ohif_dist: Path, chromium: Path, demo_users: dict[str, Any]
) -> Iterator[ViewerSite]:
    settings.OHIF_DIST_DIR = ohif_dist
    settings.OHIF_VIEWER_URL = f"{live_server.url}/viewer"
    settings.PACS_PUBLIC_URL = ""  # DICOMweb on the viewer's own origin
    site = ViewerSite(base_url=live_server.url, settings=settings)
    site.login(demo_users["doctor"].get_username(), django_settings.DEMO_PASSWORD)
    yield site
    site.as_api()


@pytest.fixture
def demo_users(transactional_db: None) -> dict[str, Any]:
    """seed_demo's users: doctor, radtech, nurse, admin, with DEMO_PASSWORD."""
    return ensure_demo_users(django_settings.DEMO_PASSWORD)


@pytest.fixture
def demo_study(make_order: MakeOrder, demo_users: dict[str, Any]) -> RadiologyStudy:
    """The demo study through the real ingest path: CT x3, MR x2 and a JPEG photo of film."""
    order = make_order(modality="CT", exam_requested="CT Head without contrast", ordering_doctor=demo_users["doctor"])
    ingest_demo_study(order, uploaded_by=demo_users["radtech"])
    return RadiologyStudy.objects.get(radiology_order=order)


@pytest.fixture
def jpeg_study(make_order: MakeOrder, demo_users: dict[str, Any]) -> RadiologyStudy:
    """A study that is one JPEG only (a phone photo of a film), ingested like an upload."""
    order = make_order(modality="CR", exam_requested="Chest X-Ray PA", ordering_doctor=demo_users["doctor"])
    PACSLiteService.ingest_image(
        order=order,
        stream=io.BytesIO(jpeg_with_exif(width=640, height=480)),
        filename="chest_film_photo.jpg",
        uploaded_by=demo_users["radtech"],
        declared=DeclaredImage(series_description="Photo of film", modality="OT", photographed_film=True),
    )
    return RadiologyStudy.objects.get(radiology_order=order)


def token_of(viewer_url: str) -> str:
    """The viewer token in a viewer_url's query."""
    return parse_qs(urlsplit(viewer_url).query)["token"][0]
