"""Open a viewer_url in real headless Chromium (Debian's, driven by Playwright) and record what it shows.

`visit_viewer()` does all its browser work inside one `sync_playwright()` block and returns
plain data: Playwright's sync API runs an asyncio loop, and Django refuses ORM calls while
one runs, so the tests seed and query the database only before or after a visit.

What is recorded: a screenshot of the whole page and of OHIF's viewport canvas (written to
test-artifacts/browser/), pixel statistics of the viewport (a WebGL canvas cannot be read
reliably, so the screenshot is analysed), the study browser's series entries, every
DICOMweb request with its status and Authorization header, and the address bar.
Every wait is bounded; a wait that runs out is recorded (with the screenshots still taken)
so the test's assertion shows what the page looked like.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image, ImageStat
from playwright.sync_api import Page, Response, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

CHROMIUM = Path("/usr/bin/chromium")
# Headless Chromium without a GPU: WebGL through SwiftShader (OHIF's cornerstone needs WebGL).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]
WINDOW = {"width": 1280, "height": 800}
DICOMWEB_PREFIX = "/api/v1/radiology/dicomweb/"

# OHIF 3.13 DOM (data-cy attributes are its own test hooks).
VIEWPORT_CANVAS = '[data-cy="viewport-pane"] [data-viewportid] canvas.cornerstone-canvas'
SERIES_ENTRY = '[data-cy="study-browser-thumbnail"]'
SERIES_MODALITY = '[data-cy="series-modality-label"]'
SERIES_DESCRIPTION = '[data-cy="series-description-label"]'
STUDY_NOT_AVAILABLE = "not available at this time"  # "One or more of the requested studies are ..."
# A fresh profile would open OHIF's 11-step onboarding tour over the viewport; mark it seen,
# as it is for any doctor after the first visit.
SKIP_ONBOARDING_TOUR = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"
THUMBNAILS_LOADED = """([selector, count]) => {
  const entries = [...document.querySelectorAll(selector)];
  return entries.length >= count && entries.every((entry) => {
    const img = entry.querySelector('img');
    return img !== null && img.complete && img.naturalWidth > 0;
  });
}"""

LAUNCH_TIMEOUT_MS = 30_000
STEP_TIMEOUT_MS = 30_000
VIEWPORT_TIMEOUT_MS = 45_000
DRAW_TIMEOUT_S = 30.0

# A drawn viewport: a fair share of pixels above near-black, and real contrast. OHIF's own
# overlay text (dates, W/L, orientation letters) on an empty black viewport stays far below both
# (measured: about 1 % of pixels and a standard deviation of 13; the seeded CT gives 64 % and 57).
BLACK_LEVEL = 24
MIN_DRAWN_FRACTION = 0.15
MIN_STDDEV = 20.0


@dataclass(frozen=True)
class PixelStats:
    """Greyscale statistics of a screenshot."""

    width: int
    height: int
    drawn_fraction: float  # pixels brighter than BLACK_LEVEL
    stddev: float

    @property
    def drawn(self) -> bool:
        return self.drawn_fraction >= MIN_DRAWN_FRACTION and self.stddev >= MIN_STDDEV


def pixel_stats(png: bytes) -> PixelStats:
    image = Image.open(io.BytesIO(png)).convert("L")
    histogram = image.histogram()
    total = image.width * image.height
    return PixelStats(
        width=image.width,
        height=image.height,
        drawn_fraction=sum(histogram[BLACK_LEVEL + 1 :]) / total if total else 0.0,
        stddev=float(ImageStat.Stat(image).stddev[0]),
    )


@dataclass(frozen=True)
class Exchange:
    """One DICOMweb request the viewer made, and the status it got."""

    method: str
    path: str
    query: str
    status: int
    authorization: str

    @property
    def is_frame(self) -> bool:
        return "/frames/" in self.path


@dataclass(frozen=True)
class SeriesEntry:
    """One series in OHIF's study browser."""

    modality: str
    description: str
    text: str
    thumbnail_loaded: bool


@dataclass
class ViewerVisit:
    name: str
    address: str = ""
    page_png: Path | None = None
    viewport_png: Path | None = None
    viewport: PixelStats | None = None
    viewport_count: int = 0
    series: list[SeriesEntry] = field(default_factory=list)
    dicomweb: list[Exchange] = field(default_factory=list)
    body_text: str = ""
    console_errors: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def artifacts(self) -> list[Path]:
        return [path for path in (self.page_png, self.viewport_png) if path is not None]

    def describe(self) -> str:
        """Everything a failing assertion should show."""
        requests = "\n".join(f"  {e.status} {e.method} {e.path}?{e.query}"[:220] for e in self.dicomweb)
        errors = "\n".join(f"  {text[:200]}" for text in self.console_errors[:10])
        return (
            f"visit {self.name!r} ({self.seconds:.1f} s), address {self.address}\n"
            f"screenshots: {', '.join(str(path) for path in self.artifacts)}\n"
            f"waits that ran out: {self.timed_out}\n"
            f"viewport canvases: {self.viewport_count}, pixels: {self.viewport}\n"
            f"series: {self.series}\n"
            f"DICOMweb requests:\n{requests}\nconsole errors:\n{errors}\n"
            f"page text: {self.body_text[:300]!r}"
        )


def _record(response: Response, exchanges: list[Exchange]) -> None:
    parts = urlsplit(response.url)
    if not parts.path.startswith(DICOMWEB_PREFIX):
        return
    request = response.request
    exchanges.append(
        Exchange(
            method=request.method,
            path=parts.path,
            query=parts.query,
            status=response.status,
            authorization=request.headers.get("authorization", ""),
        )
    )


def _bounded(visit: ViewerVisit, what: str, wait: Callable[[], object]) -> bool:
    """Run a Playwright wait; a timeout is recorded instead of raised."""
    try:
        wait()
    except PlaywrightTimeoutError:
        visit.timed_out.append(what)
        return False
    return True


def _wait_for_drawn_viewport(page: Page, visit: ViewerVisit) -> None:
    """Wait for the viewport canvas, then for its screenshot to show a drawn image."""
    canvas = page.locator(VIEWPORT_CANVAS).first
    if not _bounded(visit, "viewport canvas", lambda: canvas.wait_for(state="visible", timeout=VIEWPORT_TIMEOUT_MS)):
        return
    deadline = time.monotonic() + DRAW_TIMEOUT_S
    while True:
        stats = pixel_stats(canvas.screenshot(timeout=STEP_TIMEOUT_MS))
        if stats.drawn:
            return
        if time.monotonic() > deadline:
            visit.timed_out.append("drawn viewport")
            return
        page.wait_for_timeout(500)


def _series_entries(page: Page) -> list[SeriesEntry]:
    entries = []
    for entry in page.locator(SERIES_ENTRY).all():
        modality = entry.locator(SERIES_MODALITY)
        description = entry.locator(SERIES_DESCRIPTION)
        entries.append(
            SeriesEntry(
                modality=modality.first.inner_text().strip() if modality.count() else "",
                description=description.first.inner_text().strip() if description.count() else "",
                text=" ".join(entry.inner_text().split()),
                thumbnail_loaded=bool(
                    entry.evaluate(
                        "(e) => { const i = e.querySelector('img'); return !!i && i.complete && i.naturalWidth > 0; }"
                    )
                ),
            )
        )
    return entries


def visit_viewer(url: str, *, name: str, artifacts_dir: Path, expect_image: bool, series_count: int = 0) -> ViewerVisit:
    """Open `url` in a fresh headless Chromium and record what the viewer shows.

    expect_image: wait for a drawn viewport and `series_count` loaded thumbnails; otherwise
    wait for OHIF's "study not available" page. Either way the screenshots are taken.
    """
    visit = ViewerVisit(name=name)
    started = time.monotonic()
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=LAUNCH_TIMEOUT_MS
        )
        try:
            page = browser.new_page(viewport=WINDOW)
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.set_default_navigation_timeout(STEP_TIMEOUT_MS)
            page.add_init_script(SKIP_ONBOARDING_TOUR)
            page.on("response", lambda response: _record(response, visit.dicomweb))
            page.on(
                "console",
                lambda message: visit.console_errors.append(message.text) if message.type == "error" else None,
            )
            page.goto(url, wait_until="domcontentloaded")
            if expect_image:
                _wait_for_drawn_viewport(page, visit)
                _bounded(
                    visit,
                    "series thumbnails",
                    lambda: page.wait_for_function(
                        THUMBNAILS_LOADED, arg=[SERIES_ENTRY, series_count], timeout=STEP_TIMEOUT_MS
                    ),
                )
            else:
                _bounded(
                    visit,
                    "study-not-available page",
                    lambda: page.get_by_text(STUDY_NOT_AVAILABLE).wait_for(state="visible", timeout=STEP_TIMEOUT_MS),
                )
                # Give the viewer time to try (and be refused) anything it still wanted.
                _bounded(visit, "network idle", lambda: page.wait_for_load_state("networkidle", timeout=10_000))
            visit.address = page.url
            visit.series = _series_entries(page)
            visit.body_text = " ".join(page.locator("body").inner_text().split())
            visit.page_png = artifacts_dir / f"{name}-page.png"
            page.screenshot(path=str(visit.page_png))
            canvases = page.locator(VIEWPORT_CANVAS)
            visit.viewport_count = canvases.count()
            if visit.viewport_count:
                visit.viewport_png = artifacts_dir / f"{name}-viewport.png"
                visit.viewport = pixel_stats(canvases.first.screenshot(path=str(visit.viewport_png)))
        finally:
            browser.close()
    visit.seconds = time.monotonic() - started
    return visit
