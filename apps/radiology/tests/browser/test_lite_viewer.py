"""The built-in lightweight viewer in real headless Chromium, opened from a study's viewer_url.

With OHIF_VIEWER_URL empty, the doctor's viewer_url is this server's own page. A valid
link draws the study's first image (checked from a screenshot of the stage), names the
patient, lists the series with thumbnails, pages with keys, the button, the wheel and a
swipe, re-renders for presets and a W/L drag, zooms and pans without a request. A CR chest
study's first image costs under 200 KB on the wire, the next image is prefetched, and a
second visit is served from the browser's cache. An expired, altered or other study's link
is the refusal page and asks for no image. Screenshots go to test-artifacts/browser/lite-*.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests
from django.conf import settings as django_settings
from playwright.sync_api import Browser, Page

from apps.radiology import storage
from apps.radiology.models import RadiologyImage, RadiologyStudy
from apps.radiology.tests.api_fixtures import freeze_signing_time
from apps.radiology.tests.browser import conftest as browser_conftest
from apps.radiology.tests.browser.conftest import ARTIFACTS, HTTP_TIMEOUT, ViewerSite, token_of
from apps.radiology.tests.browser.lite_driver import (
    PHONE,
    STEP_TIMEOUT_MS,
    THUMBNAILS_LOADED,
    LiteView,
    Traffic,
    chromium_browser,
    first_image_bytes,
    ingest_cr_study,
    ingest_viewer_study,
    mean_abs_difference,
    new_context,
    swipe,
)
from apps.radiology.tests.browser.ohif_driver import pixel_stats
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.live_server_requests import wait_for_live_server_requests

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

BYTE_BUDGET = 200_000  # bytes on the wire until the CR's first image is drawn
# A slow mobile link (DevTools' "Slow 3G" order of magnitude): 500 kbit/s down, 150 ms latency.
SLOW_LINK = {"offline": False, "latency": 150, "downloadThroughput": 62_500, "uploadThroughput": 31_250}
# Mean absolute grey-level difference (0-255) of two stage screenshots that show different
# pictures; re-encoding the same picture differs by well under 1.
MIN_CHANGE = 4.0


@dataclass(frozen=True)
class Series:
    modality: str
    description: str
    images: list[str]


@dataclass(frozen=True)
class StudyFacts:
    """What a test checks a page against, read from the database before the browser opens."""

    study_uid: str
    patient_name: str
    patient_id: str
    series: list[Series]

    @classmethod
    def of(cls, study: RadiologyStudy) -> StudyFacts:
        series = [
            Series(
                modality=row.modality,
                description=row.series_description,
                images=list(
                    RadiologyImage.objects.filter(series=row)
                    .order_by("instance_number", "id")
                    .values_list("image_uid", flat=True)
                ),
            )
            for row in study.series.order_by("series_number", "id")
        ]
        return cls(study.study_uid, study.patient_name, study.patient_id, series)


def stored_bytes(image_uid: str) -> bytes:
    image = RadiologyImage.objects.get(image_uid=image_uid)
    handle = storage.open_object(image.file_key)
    assert handle is not None
    with handle:
        return handle.read()


@contextmanager
def open_browser() -> Iterator[Browser]:
    """Chromium for one test; afterwards the live server finishes what the browser left in flight."""
    try:
        with chromium_browser() as browser:
            yield browser
    finally:
        wait_for_live_server_requests()


def keep(view: LiteView) -> None:
    """List the screenshots in the terminal summary (the browser conftest's) and print them."""
    browser_conftest._written.extend(view.written)
    print(f"\n{view.prefix}: {', '.join(map(str, view.written))}")


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def altered(token: str) -> str:
    """The token with one character of its signed payload changed."""
    index = len(token.split(":", 1)[0]) // 2
    return token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]


@pytest.fixture
def lite_site(live_server: Any, settings: Any, chromium: Path, demo_users: dict[str, Any]) -> Iterator[ViewerSite]:
    """The live server as API and viewer, with OHIF switched off; the demo doctor logged in."""
    settings.OHIF_VIEWER_URL = ""
    settings.PACS_PUBLIC_URL = ""
    site = ViewerSite(base_url=live_server.url, settings=settings)
    site.login(demo_users["doctor"].get_username(), django_settings.DEMO_PASSWORD)
    yield site
    site.as_api()


@pytest.fixture
def viewer_study(make_order: MakeOrder, demo_users: dict[str, Any]) -> RadiologyStudy:
    """CT x4 (each slice different), MR x2 and a photo of film, through the real ingest path."""
    order = make_order(modality="CT", exam_requested="CT Head without contrast", ordering_doctor=demo_users["doctor"])
    return ingest_viewer_study(order, uploaded_by=demo_users["radtech"])


@pytest.fixture
def cr_study(make_order: MakeOrder, demo_users: dict[str, Any]) -> RadiologyStudy:
    """A CR chest PA of two 2048x2500 16-bit instances (~10 MB each)."""
    order = make_order(modality="CR", exam_requested="Chest X-Ray PA", ordering_doctor=demo_users["doctor"])
    return ingest_cr_study(order, uploaded_by=demo_users["radtech"])


def open_viewer(
    browser: Browser, url: str, prefix: str, *, phone: bool = False, slow_link: bool = False
) -> tuple[Page, LiteView, Traffic]:
    context = new_context(browser, phone=phone)
    page = context.new_page()
    traffic = Traffic()
    cdp = traffic.attach(page)
    if slow_link:
        cdp.send("Network.emulateNetworkConditions", SLOW_LINK)
    view = LiteView(page, artifacts_dir=ARTIFACTS, prefix=prefix)
    response = page.goto(url)
    assert response is not None and response.status == 200, traffic.describe()
    view.wait_shown()
    return page, view, traffic


def test_viewer_url_opens_the_built_in_viewer_with_image_patient_and_series(
    lite_site: ViewerSite, viewer_study: RadiologyStudy
) -> None:
    facts = StudyFacts.of(viewer_study)
    first = facts.series[0].images[0]
    original = stored_bytes(first)
    url = lite_site.viewer_url(viewer_study)
    assert url.startswith(f"{lite_site.base_url}/api/v1/radiology/viewer/?StudyInstanceUIDs={facts.study_uid}&token=")
    token = token_of(url)

    with open_browser() as browser:
        page, view, traffic = open_viewer(browser, url, "lite-first-image")
        stats = pixel_stats(view.stage_png("stage"))
        shown = view.instance
        patient = page.locator("#patient").text_content()
        page.wait_for_function(THUMBNAILS_LOADED, arg=3)
        page.wait_for_load_state("networkidle")  # the prefetch too: every request answered before the checks
        labels = page.locator("#strip .thumb span").all_text_contents()
        active = page.locator("#strip .thumb.active").get_attribute("data-series")
        overlay = page.locator("#overlay").text_content()
        view.page_png("page")
        with page.expect_download() as download:
            page.click("#download")
        downloaded = Path(download.value.path()).read_bytes()
    keep(view)

    details = traffic.describe()
    assert stats.drawn, f"{stats}\n{details}"
    assert shown == first
    assert patient == f"{facts.patient_name}  {facts.patient_id}"
    assert labels == [f"{s.modality} {s.description} ({len(s.images)})" for s in facts.series]
    assert [s.modality for s in facts.series] == ["CT", "MR", "OT"]
    assert active is not None
    assert overlay == "Im 1/4  W 400 L 40"  # the CT header's window
    assert downloaded == original
    # Every DICOMweb request (the render, its prefetch, three thumbnails) carried the token and succeeded.
    dicomweb = [sent for sent in traffic.sent if sent.is_dicomweb]
    assert {sent.authorization for sent in dicomweb} == {f"Bearer {token}"}, details
    assert all(sent.status == 200 for sent in dicomweb), details
    assert sum(sent.path.endswith("/thumbnail") for sent in dicomweb) == 3, details
    render = traffic.renders_of(first)
    assert len(render) == 1, details
    assert parse_qs(render[0].query)["quality"] == ["80"] and "window" not in parse_qs(render[0].query), details


def test_next_by_key_button_and_wheel_changes_the_image(lite_site: ViewerSite, viewer_study: RadiologyStudy) -> None:
    ct = StudyFacts.of(viewer_study).series[0].images
    url = lite_site.viewer_url(viewer_study)

    with open_browser() as browser:
        page, view, traffic = open_viewer(browser, url, "lite-next")
        shots, shown, overlays = [view.stage_png("1")], [view.instance], [page.locator("#overlay").text_content()]

        def after(action: str, expected: str) -> None:
            if action == "key":
                page.keyboard.press("ArrowRight")
            elif action == "button":
                page.click("#next")
            else:
                page.mouse.move(*view.stage_center())
                page.mouse.wheel(0, 120)
            view.wait_instance(expected)
            shots.append(view.stage_png(str(len(shots) + 1)))
            shown.append(view.instance)
            overlays.append(page.locator("#overlay").text_content())

        after("key", ct[1])
        after("button", ct[2])
        after("wheel", ct[3])
        page.keyboard.press("ArrowLeft")  # back to an image already seen: from memory, no request
        view.wait_instance(ct[2])
        back = view.stage_png("back")
    keep(view)

    assert shown == ct
    assert overlays == [f"Im {n}/4  W 400 L 40" for n in (1, 2, 3, 4)]
    changes = [mean_abs_difference(a, b) for a, b in itertools.pairwise(shots)]
    assert min(changes) > MIN_CHANGE, changes
    assert mean_abs_difference(back, shots[2]) < 1.0
    # One render per slice; slices 2-4 were each prefetched while the one before was shown.
    assert [len(traffic.renders_of(uid)) for uid in ct] == [1, 1, 1, 1], traffic.describe()


def test_window_presets_change_the_pixels_and_exist_only_for_ct(
    lite_site: ViewerSite, viewer_study: RadiologyStudy
) -> None:
    first = StudyFacts.of(viewer_study).series[0].images[0]
    url = lite_site.viewer_url(viewer_study)

    with open_browser() as browser:
        page, view, traffic = open_viewer(browser, url, "lite-presets")
        ct_options = page.locator("#preset option").all_text_contents()
        default = view.stage_png("default")
        shown = view.src
        page.select_option("#preset", label="Lung")
        shown = view.wait_shown(shown)
        lung = view.stage_png("lung")
        page.select_option("#preset", label="Bone")
        view.wait_shown(shown)
        bone = view.stage_png("bone")
        overlay = page.locator("#overlay").text_content()
        page.locator("#strip .thumb").nth(1).click()  # MR: its header window, no CT presets
        mr_options = page.locator("#preset option").all_text_contents()
        page.locator("#strip .thumb").nth(2).click()  # the photo: no window at all
        photo_preset_disabled = page.locator("#preset").is_disabled()
    keep(view)

    assert ct_options == ["Default", "Lung", "Bone", "Soft tissue", "Brain"]
    assert mr_options == ["Default"]
    assert photo_preset_disabled
    assert overlay == "Im 1/4  W 1500 L 300"
    windows = [parse_qs(sent.query).get("window") for sent in traffic.renders_of(first)]
    assert windows == [None, ["-600,1500"], ["300,1500"]], traffic.describe()
    assert mean_abs_difference(default, lung) > MIN_CHANGE
    assert mean_abs_difference(lung, bone) > MIN_CHANGE


def test_drag_previews_with_a_filter_then_renders_the_new_window_on_release(
    lite_site: ViewerSite, viewer_study: RadiologyStudy
) -> None:
    first = StudyFacts.of(viewer_study).series[0].images[0]
    url = lite_site.viewer_url(viewer_study)

    with open_browser() as browser:
        page, view, traffic = open_viewer(browser, url, "lite-drag")
        before = view.stage_png("before")
        shown = view.src
        x, y = (round(value) for value in view.stage_center())
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 100, y + 60, steps=5)
        preview_filter = view.css_filter
        renders_while_dragging = len(traffic.renders_of(first))
        preview = view.stage_png("preview")
        page.mouse.up()
        view.wait_shown(shown)
        after = view.stage_png("after")
        filter_after = view.css_filter
        overlay = page.locator("#overlay").text_content()
    keep(view)

    # From the header's 40/400: 60 px down lowers the level by 60 * 400/300, 100 px right widens by 100 * 2 * 400/300.
    assert preview_filter.startswith("contrast(0.6") and "brightness(1.2" in preview_filter, preview_filter
    assert renders_while_dragging == 1, traffic.describe()
    assert filter_after == ""
    assert overlay == "Im 1/4  W 667 L -40"
    windows = [parse_qs(sent.query).get("window") for sent in traffic.renders_of(first)]
    assert windows == [None, ["-40,667"]], traffic.describe()
    assert mean_abs_difference(before, preview) > MIN_CHANGE
    assert mean_abs_difference(before, after) > MIN_CHANGE


def test_zoom_and_pan_change_the_transform_without_a_request(
    lite_site: ViewerSite, viewer_study: RadiologyStudy
) -> None:
    url = lite_site.viewer_url(viewer_study)

    with open_browser() as browser:
        page, view, traffic = open_viewer(browser, url, "lite-zoom")
        before = view.stage_png("before")
        fitted = view.transform
        requests_before = len(traffic.sent)
        page.click("#zoom-in")
        zoomed = view.transform
        zoomed_png = view.stage_png("zoomed")
        page.click("#mode-pan")
        x, y = (round(value) for value in view.stage_center())
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 50, y + 30, steps=4)
        page.mouse.up()
        panned = view.transform
        view.stage_png("panned")
        requests_after = len(traffic.sent)
        page.click("#reset")
        reset = view.transform
    keep(view)

    assert fitted == "translate(-50%, -50%) translate(0px, 0px) scale(1)"
    assert zoomed == "translate(-50%, -50%) translate(0px, 0px) scale(1.25)"
    assert panned == "translate(-50%, -50%) translate(50px, 30px) scale(1.25)"
    assert reset == fitted
    assert mean_abs_difference(before, zoomed_png) > MIN_CHANGE
    assert requests_after == requests_before, traffic.describe()  # zoom and pan are the browser's work


def test_phone_fits_the_screen_and_a_swipe_goes_to_the_next_image(
    lite_site: ViewerSite, viewer_study: RadiologyStudy
) -> None:
    ct = StudyFacts.of(viewer_study).series[0].images
    url = lite_site.viewer_url(viewer_study)

    with open_browser() as browser:
        page, view, traffic = open_viewer(browser, url, "lite-phone", phone=True)
        cdp = page.context.new_cdp_session(page)
        widths = page.evaluate(
            """() => ({ document: document.documentElement.scrollWidth, body: document.body.scrollWidth,
                        stage: document.getElementById("stage").clientWidth,
                        stageHeight: document.getElementById("stage").clientHeight,
                        strip: document.getElementById("strip").getBoundingClientRect().width })"""
        )
        first_png = view.stage_png("1")
        x, y = view.stage_center()
        swipe(cdp, start=(x + 100, y), end=(x - 100, y + 10))
        view.wait_instance(ct[1])
        second_png = view.stage_png("2")
        swipe(cdp, start=(x - 100, y), end=(x + 100, y))
        view.wait_instance(ct[0])
        view.page_png("page")
    keep(view)

    assert widths["document"] <= PHONE["width"] and widths["body"] <= PHONE["width"], widths
    assert widths["strip"] <= PHONE["width"], widths
    assert pixel_stats(first_png).drawn
    assert mean_abs_difference(first_png, second_png) > MIN_CHANGE
    # Rendered for the phone's stage at devicePixelRatio 2, capped at 1.5 by the viewer.
    viewport = parse_qs(traffic.renders_of(ct[0])[0].query)["viewport"][0]
    assert viewport == f"{round(widths['stage'] * 1.5)},{round(widths['stageHeight'] * 1.5)}", traffic.describe()
    # Measured after the header took its final height: the prefetched size is the shown size, so
    # going back and forth asks for nothing twice.
    assert [len(traffic.renders_of(uid)) for uid in ct[:2]] == [1, 1], traffic.describe()


def test_cr_first_image_within_the_byte_budget_next_prefetched_second_visit_cached(
    lite_site: ViewerSite, cr_study: RadiologyStudy
) -> None:
    images = StudyFacts.of(cr_study).series[0].images
    url = lite_site.viewer_url(cr_study)
    token = token_of(url)

    with open_browser() as browser:
        page, view, traffic = open_viewer(browser, url, "lite-cr", slow_link=True)
        budget = first_image_bytes(page)
        drawn = pixel_stats(view.stage_png("first"))
        # The next image is asked for while the first is shown, before anyone presses next.
        deadline = time.monotonic() + STEP_TIMEOUT_MS / 1000
        while not any(sent.finished for sent in traffic.renders_of(images[1])) and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        prefetched = [sent.finished for sent in traffic.renders_of(images[1])]
        next_pressed_at = time.monotonic()
        page.keyboard.press("ArrowRight")
        view.wait_instance(images[1])
        view.stage_png("second")
        second_requests = traffic.renders_of(images[1])
        first_render_url = traffic.renders_of(images[0])[0].url
        thumbnails = [sent for sent in traffic.sent if sent.path.endswith("/thumbnail")]
        thumbnail_timing = page.evaluate(
            """(renderUrl) => {
              const entries = performance.getEntriesByType("resource");
              const render = entries.find((entry) => entry.name === renderUrl);
              const thumbnail = entries.find((entry) => entry.name.includes("/thumbnail"));
              return {
                renderEnd: render ? render.responseEnd : null,
                thumbnailStart: thumbnail ? thumbnail.startTime : null,
              };
            }""",
            first_render_url,
        )

        # A second visit in the same browser: the page again (no-store), the image from the cache.
        again = page.context.new_page()
        again_traffic = Traffic()
        again_traffic.attach(again)
        again_view = LiteView(again, artifacts_dir=ARTIFACTS, prefix="lite-cr-again")
        again.goto(url)
        again_view.wait_shown()
        again_view.stage_png("first")
        again_wire = again_traffic.wire_for(first_render_url)
    keep(view)
    keep(again_view)

    # The page and the screen-sized render of a 10 MB radiograph, nothing else on the critical path.
    print(f"\nCR byte budget: {budget.describe()}")
    (ARTIFACTS / "lite-cr-byte-budget.txt").write_text(budget.describe() + "\n")
    assert budget.total < BYTE_BUDGET, budget.describe()
    assert budget.document > 0 and any(images[0] in url for url, _size in budget.resources), budget.describe()
    # The series thumbnail (a render of the same 10 MB radiograph) waits for the first image.
    assert not any("/thumbnail" in url for url, _size in budget.resources), budget.describe()
    assert len(thumbnails) == 1, traffic.describe()
    assert None not in thumbnail_timing.values(), thumbnail_timing
    assert thumbnail_timing["thumbnailStart"] >= thumbnail_timing["renderEnd"], thumbnail_timing
    assert drawn.drawn
    assert prefetched == [True], traffic.describe()
    assert len(second_requests) == 1 and second_requests[0].at < next_pressed_at, traffic.describe()
    assert again_wire and all(wire.from_cache or wire.status == 304 for wire in again_wire), again_wire
    # At HTTP level: the render has an ETag, and the server answers If-None-Match with 304 and no body.
    headers = {"Authorization": f"Bearer {token}"}
    fresh = requests.get(first_render_url, headers=headers, timeout=HTTP_TIMEOUT)
    assert fresh.status_code == 200 and fresh.headers["Content-Type"] == "image/jpeg"
    assert fresh.headers["Cache-Control"] == "private, max-age=86400"
    revalidated = requests.get(
        first_render_url, headers={**headers, "If-None-Match": fresh.headers["ETag"]}, timeout=HTTP_TIMEOUT
    )
    assert revalidated.status_code == 304 and revalidated.content == b""
    assert revalidated.headers["ETag"] == fresh.headers["ETag"]


def assert_refused(url: str, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """The refusal page (403, #refused) and not a single request besides the page itself.

    The page's own requests are seen by the browser; the browser's own (a favicon) only by
    the server, whose refusals and 404s Django logs.
    """
    caplog.set_level(logging.WARNING, logger="django.request")
    with open_browser() as browser:
        context = new_context(browser)
        page = context.new_page()
        traffic = Traffic()
        traffic.attach(page)
        view = LiteView(page, artifacts_dir=ARTIFACTS, prefix=prefix)
        response = page.goto(url)
        status = response.status if response is not None else None
        page.wait_for_load_state("networkidle", timeout=5_000)
        refused = page.locator("#refused").is_visible()
        heading = page.locator("h1").text_content()
        has_view = page.locator("#view").count()
        view.page_png("page")
    keep(view)

    assert status == 403
    assert refused and heading == "This viewer link is not valid"
    assert has_view == 0
    assert [urlsplit(sent.url).path for sent in traffic.sent] == ["/api/v1/radiology/viewer/"], traffic.describe()
    server_log = [record.getMessage() for record in caplog.records if record.name == "django.request"]
    assert server_log == ["Forbidden: /api/v1/radiology/viewer/"]


def test_expired_link_is_refused_and_asks_for_no_image(
    lite_site: ViewerSite,
    viewer_study: RadiologyStudy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = lite_site.viewer_url(viewer_study, expires_in=60)
    # Two minutes later for the token check (the live server runs in this process).
    freeze_signing_time(monkeypatch, now=time.time() + 120)

    assert_refused(url, "lite-expired", caplog)


def test_altered_link_is_refused_and_asks_for_no_image(
    lite_site: ViewerSite, viewer_study: RadiologyStudy, caplog: pytest.LogCaptureFixture
) -> None:
    url = lite_site.viewer_url(viewer_study)
    token = altered(token_of(url))
    assert token != token_of(url)

    assert_refused(with_query(url, token=token), "lite-altered", caplog)


def test_link_for_another_study_is_refused(
    lite_site: ViewerSite, viewer_study: RadiologyStudy, cr_study: RadiologyStudy, caplog: pytest.LogCaptureFixture
) -> None:
    url = lite_site.viewer_url(viewer_study)

    assert_refused(with_query(url, StudyInstanceUIDs=cr_study.study_uid), "lite-other-study", caplog)
