"""The front door in real headless Chromium: sign in, search, open a study in the lite viewer and in OHIF.

A doctor on a 1280x800 desktop and a radiology tech on a 360x740 phone each start at `/`,
sign in, see the list, search it, and open a study in the lite viewer (the study's first image
drawn) and in OHIF (its viewport drawn, checked from the pixels of a screenshot). At 360 px no
page scrolls sideways (document.documentElement.scrollWidth <= 360). No page breaks its own
Content-Security-Policy (Chromium reports any violation on the console).

OHIF runs on its own origin, as under `make run`: the live server is the API at
http://localhost:PORT and the viewer's origin at http://127.0.0.1:PORT, where the browser
marks every request with `X-PACS-Viewer-Origin: 1` (as nginx does under docker compose), so
config.viewer_urls answers it (config/viewer_origin.py). The form that opens OHIF posts to the
API's origin and is redirected to the other one, which the page's form-action must allow
(Playwright does not route the request a redirect leads to, so the test opens that address
once more with the header).

Screenshots of the list go to test-artifacts/browser/ and, small, to docs/img/front-door-360.png
and docs/img/front-door-1280.png (docs/viewers.md shows them).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from PIL import Image
from playwright.sync_api import Browser, Page, Route

from apps.radiology.models import RadiologyStudy
from apps.radiology.operations.demo import ingest_demo_study, jpeg_with_exif
from apps.radiology.pacs_lite_service import DeclaredImage, PACSLiteService
from apps.radiology.tests.browser import conftest as browser_conftest
from apps.radiology.tests.browser.conftest import ARTIFACTS, ROOT
from apps.radiology.tests.browser.lite_driver import chromium_browser
from apps.radiology.tests.browser.ohif_driver import SKIP_ONBOARDING_TOUR, VIEWPORT_CANVAS, pixel_stats
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.frontdoor.helpers import failed_upload, make_listed_study, unmatched_file
from apps.radiology.tests.live_server_requests import wait_for_live_server_requests

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

DOCS_IMG = ROOT / "docs" / "img"
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 800}
STEP_TIMEOUT_MS = 30_000
DRAW_TIMEOUT_S = 45.0
DOC_COLOURS = 96  # a palette PNG: text and flat colours stay crisp, the file stays small
LITE_IMAGE_SHOWN = """() => {
  const view = document.getElementById("view");
  return !!view && view.src !== "" && view.complete && view.naturalWidth > 0;
}"""
SCROLL_WIDTH = "() => document.documentElement.scrollWidth"


@dataclass(frozen=True)
class Seeded:
    okafor: RadiologyStudy
    bello: RadiologyStudy


@pytest.fixture
def seeded(make_order: MakeOrder, demo_users: dict[str, Any]) -> Seeded:
    """Two studies with real images (demo CT+MR+photo; a photo of a film), two only listed, a tech's to-dos."""
    doctor, radtech = demo_users["doctor"], demo_users["radtech"]
    okafor = make_order(
        first_name="Amara", last_name="Okafor", modality="CT", exam_requested="CT Head", ordering_doctor=doctor
    )
    ingest_demo_study(okafor, uploaded_by=radtech)
    bello = make_order(
        first_name="Tunde", last_name="Bello", modality="CR", exam_requested="Chest X-Ray PA", ordering_doctor=doctor
    )
    PACSLiteService.ingest_image(
        order=bello,
        stream=io.BytesIO(jpeg_with_exif(width=640, height=480)),
        filename="chest_film_photo.jpg",
        uploaded_by=radtech,
        declared=DeclaredImage(series_description="Photo of film", modality="OT", photographed_film=True),
    )
    # Older studies only listed (their rows have no files: never opened here).
    make_listed_study(
        make_order, first_name="Chiamaka", last_name="Eze", modality="MR", description="MRI Lumbar spine", images=24
    )
    make_listed_study(
        make_order, first_name="Ibrahim", last_name="Musa", modality="US", description="Abdominal ultrasound", images=12
    )
    failed_upload(
        bello, radtech, filename="chest_lateral.dcm", code="invalid_dicom", detail="The file is not valid DICOM."
    )
    unmatched_file(1)
    return Seeded(
        okafor=RadiologyStudy.objects.get(radiology_order=okafor),
        bello=RadiologyStudy.objects.get(radiology_order=bello),
    )


@dataclass
class Walk:
    """What one person saw, recorded inside the browser block and asserted after it."""

    name: str
    widths: dict[str, int] = field(default_factory=dict)
    home_links: list[str] = field(default_factory=list)
    after_sign_in: str = ""
    listed: list[str] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)
    attention: str = ""
    failed_uploads: str = ""
    lite_address: str = ""
    lite_patient: str = ""
    ohif_address: str = ""
    ohif_drawn: bool = False
    ohif_pixels: Any = None
    csp_violations: list[str] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)


def _as_viewer_origin(route: Route) -> None:
    route.continue_(headers={**route.request.headers, "x-pacs-viewer-origin": "1"})


def _patients(page: Page) -> list[str]:
    return [text.strip() for text in page.locator("#studies tbody tr td[data-label=Patient] strong").all_inner_texts()]


def _screenshot(page: Page, walk: Walk, label: str, *, doc: Path | None = None) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"front-door-{walk.name}-{label}.png"
    png = page.screenshot(path=str(path), full_page=True)
    walk.screenshots.append(path)
    if doc is not None:
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=DOC_COLOURS).save(doc, optimize=True)
        walk.screenshots.append(doc)


def _wait_for_drawn_ohif(page: Page) -> tuple[bool, Any]:
    canvas = page.locator(VIEWPORT_CANVAS).first
    canvas.wait_for(state="visible", timeout=DRAW_TIMEOUT_S * 1000)
    deadline = time.monotonic() + DRAW_TIMEOUT_S
    while True:
        stats = pixel_stats(canvas.screenshot(timeout=STEP_TIMEOUT_MS))
        if stats.drawn or time.monotonic() > deadline:
            return stats.drawn, stats
        page.wait_for_timeout(500)


def _walk(browser: Browser, *, base_url: str, viewer_origin: str, username: str, phone: bool) -> Walk:
    """Start at `/`, sign in, search, open the study in the lite viewer and in OHIF."""
    walk = Walk(name="360" if phone else "1280")
    context = browser.new_context(
        viewport=PHONE if phone else DESKTOP, device_scale_factor=1, is_mobile=phone, has_touch=phone
    )
    context.set_default_timeout(STEP_TIMEOUT_MS)
    context.set_default_navigation_timeout(STEP_TIMEOUT_MS)
    context.add_init_script(SKIP_ONBOARDING_TOUR)
    context.route(f"{viewer_origin}/**", _as_viewer_origin)
    page = context.new_page()
    page.on(
        "console",
        lambda message: walk.csp_violations.append(message.text) if "Content Security Policy" in message.text else None,
    )

    def measure(label: str) -> None:
        walk.widths[label] = int(page.evaluate(SCROLL_WIDTH))

    page.goto(f"{base_url}/")
    measure("home")
    walk.home_links = [
        str(urlsplit(href).path) for href in page.locator("main a").evaluate_all("(links) => links.map((a) => a.href)")
    ]
    page.locator("main").get_by_role("link", name="Sign in").click()
    measure("sign-in")
    page.fill("#id_username", username)
    page.fill("#id_password", django_settings.DEMO_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base_url}/radiology/studies/")
    walk.after_sign_in = urlsplit(page.url).path
    measure("list")
    walk.listed = _patients(page)
    if page.locator("#attention").count():
        walk.attention = " ".join(page.locator("#attention").inner_text().split())
    _screenshot(page, walk, "list", doc=DOCS_IMG / f"front-door-{walk.name}.png")

    page.fill("#id_patient", "okafor")
    page.get_by_role("button", name="Search").click()
    page.wait_for_load_state()
    measure("searched")
    walk.searched = _patients(page)
    _screenshot(page, walk, "searched")

    page.get_by_role("button", name="Quick look").click()
    page.wait_for_url("**/api/v1/radiology/viewer/?*")
    page.wait_for_function(LITE_IMAGE_SHOWN)
    walk.lite_address = page.url
    walk.lite_patient = " ".join(page.locator("body").inner_text().split())
    measure("lite viewer")
    _screenshot(page, walk, "lite")

    page.goto(f"{base_url}/radiology/studies/")  # the search is kept: one row
    page.get_by_role("button", name="OHIF").click()
    page.wait_for_url(f"{viewer_origin}/viewer**")
    # Playwright routes a redirect's first request only, not the one it leads to: the address
    # the front door sent the browser to is opened once more, now marked as the viewer's origin.
    page.goto(page.url)
    walk.ohif_drawn, walk.ohif_pixels = _wait_for_drawn_ohif(page)
    walk.ohif_address = page.url
    _screenshot(page, walk, "ohif")

    if phone:  # the tech's failed uploads, on the phone
        page.goto(f"{base_url}/radiology/uploads/failed/")
        measure("failed uploads")
        walk.failed_uploads = " ".join(page.locator("#failed-uploads").inner_text().split())
    context.close()
    return walk


@pytest.mark.parametrize(("role", "phone"), [("doctor", False), ("radtech", True)], ids=["doctor-1280", "radtech-360"])
def test_sign_in_search_and_open_in_both_viewers(
    role: str,
    phone: bool,
    seeded: Seeded,
    demo_users: dict[str, Any],
    live_server: Any,
    settings: Any,
    ohif_dist: Path,
    chromium: Path,
) -> None:
    base_url = live_server.url
    viewer_origin = base_url.replace("//localhost:", "//127.0.0.1:")
    assert viewer_origin != base_url  # two origins, as the two ports of `make run`
    settings.ROOT_URLCONF = "config.urls"
    settings.OHIF_DIST_DIR = ohif_dist
    settings.OHIF_VIEWER_URL = f"{viewer_origin}/viewer"
    settings.PACS_PUBLIC_URL = ""
    okafor_uid, okafor_id = seeded.okafor.study_uid, seeded.okafor.patient_id

    try:
        with chromium_browser() as browser:
            walk = _walk(
                browser,
                base_url=base_url,
                viewer_origin=viewer_origin,
                username=demo_users[role].get_username(),
                phone=phone,
            )
    finally:
        wait_for_live_server_requests()
    browser_conftest._written.extend(walk.screenshots)

    details = f"{walk}"
    assert walk.home_links[:1] == ["/sign-in/"], details
    assert {"/radiology/studies/", "/api/v1/docs/", "/admin/", "/healthz"} <= set(walk.home_links), details
    assert walk.after_sign_in == "/radiology/studies/", details
    assert walk.listed == ["Ibrahim Musa", "Chiamaka Eze", "Tunde Bello", "Amara Okafor"], details
    assert walk.searched == ["Amara Okafor"], details
    assert walk.lite_address.startswith(f"{base_url}/api/v1/radiology/viewer/?StudyInstanceUIDs={okafor_uid}&token="), (
        details
    )
    assert "Amara Okafor" in walk.lite_patient or okafor_id in walk.lite_patient, details
    assert walk.ohif_drawn, details
    assert walk.ohif_address.startswith(f"{viewer_origin}/viewer"), details
    assert f"StudyInstanceUIDs={okafor_uid}" in walk.ohif_address, details
    assert walk.csp_violations == [], details
    if phone:
        assert all(width <= PHONE["width"] for width in walk.widths.values()), details
        assert walk.attention == ("1 failed upload of yours. Unmatched inbox: 1 file waiting for an order."), details
        assert "chest_lateral.dcm" in walk.failed_uploads and "invalid_dicom" in walk.failed_uploads, details
    else:
        assert walk.attention == "", details
