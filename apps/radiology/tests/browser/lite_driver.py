"""Drive the built-in lightweight viewer in real headless Chromium, and build the studies it opens.

Playwright's sync API runs an asyncio loop while a `chromium_browser()` block is open, and
Django refuses ORM calls while one runs: seed and query the database before or after the
block, never inside it (the live server's threads are unaffected).

What the helpers record: every request the page makes (with its Authorization header),
what Chromium's DevTools protocol says about each (bytes on the wire, served from cache),
and the page's own Resource Timing at the moment the first image finished loading, which
is the byte count of "until the first image is drawn". An init script marks each load of
`#view` after the page's own load handler has sized it, so a screenshot taken after
`LiteView.wait_shown()` shows the new image at its final size.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pydicom
from django.contrib.auth.models import AbstractBaseUser
from PIL import Image, ImageChops, ImageStat
from playwright.sync_api import Browser, BrowserContext, CDPSession, Page, Request, sync_playwright
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import RadiologyOrder, RadiologyStudy
from apps.radiology.operations.demo import jpeg_with_exif, relabelled_dicom
from apps.radiology.pacs_lite_service import DeclaredImage, PACSLiteService
from apps.radiology.tests.browser.ohif_driver import CHROMIUM, CHROMIUM_ARGS

DESKTOP: dict[str, int] = {"width": 1280, "height": 800}
PHONE: dict[str, int] = {"width": 360, "height": 640}
PHONE_SCALE = 2  # a typical phone's devicePixelRatio (the viewer caps its renders at 1.5)
LAUNCH_TIMEOUT_MS = 30_000
STEP_TIMEOUT_MS = 30_000  # generous for a loaded CI machine; a passing wait takes well under a second
DICOMWEB_PREFIX = "/api/v1/radiology/dicomweb/"

# Runs before the page's own script. A capture listener on document sees the load of #view
# before its target-phase listener (the page's fitImage); the setTimeout marks it after.
INIT_SCRIPT = """
(() => {
  window.__lite = { firstDrawAt: null, loads: 0 };
  document.addEventListener("load", (event) => {
    const target = event.target;
    if (!(target instanceof HTMLImageElement) || target.id !== "view") { return; }
    if (window.__lite.firstDrawAt === null) { window.__lite.firstDrawAt = performance.now(); }
    const src = target.src;
    setTimeout(() => { target.dataset.loadedSrc = src; window.__lite.loads += 1; }, 0);
  }, true);
})();
"""
SHOWN = """(previous) => {
  const view = document.getElementById("view");
  return !!view && view.src !== "" && view.src !== previous && view.dataset.loadedSrc === view.src
    && view.complete && view.naturalWidth > 0;
}"""
# What the page had received when #view first finished loading: the document and every
# resource that had completed by then (transferSize: headers plus the encoded body).
BYTES_TO_FIRST_IMAGE = """() => {
  const drawnAt = window.__lite.firstDrawAt;
  const navigation = performance.getEntriesByType("navigation")[0];
  const resources = performance.getEntriesByType("resource")
    .filter((entry) => drawnAt !== null && entry.responseEnd <= drawnAt)
    .map((entry) => ({ url: entry.name, bytes: entry.transferSize }));
  return { drawnAt, navigationStart: navigation.startTime, document: navigation.transferSize, resources };
}"""
THUMBNAILS_LOADED = """(count) => {
  const images = [...document.querySelectorAll("#strip .thumb img")];
  return images.length === count && images.every((img) => img.complete && img.naturalWidth > 0);
}"""


# --- the browser ------------------------------------------------------------------------


@contextmanager
def chromium_browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, launched as the OHIF tests launch it; closed on exit."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=LAUNCH_TIMEOUT_MS
        )
        try:
            yield browser
        finally:
            browser.close()


def new_context(browser: Browser, *, phone: bool = False) -> BrowserContext:
    """A fresh profile (empty cache): a desktop window, or a touch phone of 360x640 CSS pixels."""
    if phone:
        context = browser.new_context(
            viewport=PHONE, device_scale_factor=PHONE_SCALE, is_mobile=True, has_touch=True, accept_downloads=True
        )
    else:
        context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    context.set_default_timeout(STEP_TIMEOUT_MS)
    context.set_default_navigation_timeout(STEP_TIMEOUT_MS)
    context.add_init_script(INIT_SCRIPT)
    return context


# --- what the page asked for --------------------------------------------------------------


@dataclass
class Sent:
    """One request the page made."""

    url: str
    method: str
    authorization: str
    at: float  # time.monotonic() when Playwright saw it
    status: int | None = None
    finished: bool = False

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> str:
        return urlsplit(self.url).query

    @property
    def is_dicomweb(self) -> bool:
        return self.path.startswith(DICOMWEB_PREFIX)

    def renders(self, image_uid: str) -> bool:
        return self.path.endswith(f"/instances/{image_uid}/rendered")


@dataclass
class Wire:
    """One request as Chromium's network stack reported it (DevTools protocol)."""

    url: str
    status: int | None = None
    encoded_bytes: float = 0.0
    from_cache: bool = False


@dataclass
class Traffic:
    """Every request a page makes, from Playwright's events and from the DevTools protocol."""

    sent: list[Sent] = field(default_factory=list)
    wire: dict[str, Wire] = field(default_factory=dict)

    def attach(self, page: Page) -> CDPSession:
        """Record `page`'s requests; returns its DevTools session (also usable for touch input)."""
        by_request: dict[Request, Sent] = {}

        def on_request(request: Request) -> None:
            sent = Sent(
                url=request.url,
                method=request.method,
                authorization=request.headers.get("authorization", ""),
                at=time.monotonic(),
            )
            by_request[request] = sent
            self.sent.append(sent)

        def on_finished(request: Request) -> None:
            sent = by_request.get(request)
            if sent is not None:
                response = request.response()
                sent.status = response.status if response is not None else None
                sent.finished = True

        page.on("request", on_request)
        page.on("requestfinished", on_finished)
        page.on("requestfailed", on_finished)
        cdp = page.context.new_cdp_session(page)
        cdp.on("Network.requestWillBeSent", self._will_be_sent)
        cdp.on("Network.responseReceived", self._response_received)
        cdp.on("Network.requestServedFromCache", self._served_from_cache)
        cdp.on("Network.loadingFinished", self._loading_finished)
        cdp.send("Network.enable")
        return cdp

    def _will_be_sent(self, event: dict[str, Any]) -> None:
        self.wire[event["requestId"]] = Wire(url=event["request"]["url"])

    def _response_received(self, event: dict[str, Any]) -> None:
        wire = self.wire.setdefault(event["requestId"], Wire(url=event["response"]["url"]))
        wire.status = int(event["response"]["status"])
        if event["response"].get("fromDiskCache") or event["response"].get("fromPrefetchCache"):
            wire.from_cache = True

    def _served_from_cache(self, event: dict[str, Any]) -> None:
        if event["requestId"] in self.wire:
            self.wire[event["requestId"]].from_cache = True

    def _loading_finished(self, event: dict[str, Any]) -> None:
        if event["requestId"] in self.wire:
            self.wire[event["requestId"]].encoded_bytes = float(event["encodedDataLength"])

    def renders_of(self, image_uid: str) -> list[Sent]:
        return [sent for sent in self.sent if sent.renders(image_uid)]

    def wire_for(self, url: str) -> list[Wire]:
        return [wire for wire in self.wire.values() if wire.url == url]

    def describe(self) -> str:
        lines = [
            f"  {sent.status} {sent.method} {sent.path}?{sent.query}"[:200] + f" auth={sent.authorization[:16]!r}"
            for sent in self.sent
        ]
        return "requests:\n" + "\n".join(lines)


@dataclass(frozen=True)
class FirstImageBytes:
    """Bytes the page had received when its first image finished loading."""

    document: int
    resources: list[tuple[str, int]]

    @property
    def total(self) -> int:
        return self.document + sum(size for _url, size in self.resources)

    def describe(self) -> str:
        parts = [f"document {self.document} B"] + [f"{url} {size} B" for url, size in self.resources]
        return f"{self.total} B to the first image: " + "; ".join(parts)


def first_image_bytes(page: Page) -> FirstImageBytes:
    measured = page.evaluate(BYTES_TO_FIRST_IMAGE)
    return FirstImageBytes(
        document=int(measured["document"]),
        resources=[(str(entry["url"]), int(entry["bytes"])) for entry in measured["resources"]],
    )


# --- the page -----------------------------------------------------------------------------


class LiteView:
    """The viewer page: waits for shown images, reads its state, screenshots its stage."""

    def __init__(self, page: Page, *, artifacts_dir: Path, prefix: str) -> None:
        self.page = page
        self.artifacts_dir = artifacts_dir
        self.prefix = prefix
        self.written: list[Path] = []
        artifacts_dir.mkdir(parents=True, exist_ok=True)

    @property
    def src(self) -> str:
        return str(self.page.eval_on_selector("#view", "(view) => view.src"))

    @property
    def instance(self) -> str:
        return str(self.page.eval_on_selector("#view", "(view) => view.dataset.instance || ''"))

    @property
    def transform(self) -> str:
        return str(self.page.eval_on_selector("#view", "(view) => view.style.transform"))

    @property
    def css_filter(self) -> str:
        return str(self.page.eval_on_selector("#view", "(view) => view.style.filter"))

    def wait_shown(self, previous_src: str = "", *, timeout_ms: int = STEP_TIMEOUT_MS) -> str:
        """Wait until #view has loaded (and been sized) an image other than `previous_src`; return its src."""
        self.page.wait_for_function(SHOWN, arg=previous_src, timeout=timeout_ms)
        return self.src

    def wait_instance(self, image_uid: str, *, timeout_ms: int = STEP_TIMEOUT_MS) -> None:
        self.page.wait_for_function(
            """(uid) => {
              const view = document.getElementById("view");
              return view.dataset.instance === uid && view.dataset.loadedSrc === view.src && view.naturalWidth > 0;
            }""",
            arg=image_uid,
            timeout=timeout_ms,
        )

    def stage_center(self) -> tuple[float, float]:
        box = self.page.locator("#stage").bounding_box()
        assert box is not None, "#stage is not laid out"
        return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def stage_png(self, name: str) -> bytes:
        """Screenshot #stage into the artifacts directory; returns the PNG."""
        path = self.artifacts_dir / f"{self.prefix}-{name}.png"
        png = self.page.locator("#stage").screenshot(path=str(path))
        self.written.append(path)
        return png

    def page_png(self, name: str) -> bytes:
        path = self.artifacts_dir / f"{self.prefix}-{name}.png"
        png = self.page.screenshot(path=str(path))
        self.written.append(path)
        return png


def swipe(cdp: CDPSession, *, start: tuple[float, float], end: tuple[float, float], steps: int = 6) -> None:
    """One finger across the screen with real touch input (Chromium turns it into touch pointer events)."""
    (x0, y0), (x1, y1) = start, end
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x0, "y": y0}]})
    for step in range(1, steps + 1):
        x, y = x0 + (x1 - x0) * step / steps, y0 + (y1 - y0) * step / steps
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def mean_abs_difference(first: bytes, second: bytes) -> float:
    """Mean absolute grey-level difference (0-255) of two screenshots of the same size."""
    a = Image.open(io.BytesIO(first)).convert("L")
    b = Image.open(io.BytesIO(second)).convert("L")
    assert a.size == b.size, f"screenshots differ in size: {a.size} != {b.size}"
    return float(ImageStat.Stat(ImageChops.difference(a, b)).mean[0])


# --- studies the viewer opens -----------------------------------------------------------

CT_WINDOW = (40, 400)  # soft tissue, as a scanner writes it into the header
CR_ROWS, CR_COLUMNS = 2500, 2048
CR_WINDOW = (2000, 3600)


def ct_slice(*, number: int, study_uid: str, series_uid: str, patient_name: str, patient_id: str) -> bytes:
    """pydicom's CT_small relabelled, turned by 90 degrees per instance so that each slice looks different."""
    content = relabelled_dicom(
        "CT_small.dcm",
        study_uid=study_uid,
        series_uid=series_uid,
        instance_number=number,
        series_number=1,
        patient_name=patient_name,
        patient_id=patient_id,
    )
    dataset = pydicom.dcmread(io.BytesIO(content))
    dataset.PixelData = np.ascontiguousarray(np.rot90(dataset.pixel_array, k=number - 1)).tobytes()
    dataset.WindowCenter, dataset.WindowWidth = CT_WINDOW
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ingest_viewer_study(
    order: RadiologyOrder, *, uploaded_by: AbstractBaseUser | None, ct_slices: int = 4
) -> RadiologyStudy:
    """CT (`ct_slices` distinct slices, header window 40/400), MR x2 and a JPEG photo of film."""
    patient = order.visit.patient
    study_uid = generate_uid()
    ct_series = generate_uid()
    for number in range(1, ct_slices + 1):
        PACSLiteService.ingest_image(
            order=order,
            stream=io.BytesIO(
                ct_slice(
                    number=number,
                    study_uid=study_uid,
                    series_uid=ct_series,
                    patient_name=patient.dicom_name,
                    patient_id=patient.hospital_number,
                )
            ),
            filename=f"ct_{number}.dcm",
            uploaded_by=uploaded_by,
        )
    mr_series = generate_uid()
    for number in (1, 2):
        content = relabelled_dicom(
            "MR_small.dcm",
            study_uid=study_uid,
            series_uid=mr_series,
            instance_number=number,
            series_number=2,
            patient_name=patient.dicom_name,
            patient_id=patient.hospital_number,
        )
        PACSLiteService.ingest_image(
            order=order, stream=io.BytesIO(content), filename=f"mr_{number}.dcm", uploaded_by=uploaded_by
        )
    PACSLiteService.ingest_image(
        order=order,
        stream=io.BytesIO(jpeg_with_exif(width=640, height=480)),
        filename="film_photo.jpg",
        uploaded_by=uploaded_by,
        declared=DeclaredImage(study_uid=study_uid, series_description="Photo of film", series_number=3, modality="OT"),
    )
    return RadiologyStudy.objects.get(study_uid=study_uid)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(z / 2))


@functools.cache
def _chest_pixels(seed: int) -> bytes:
    """A 2048x2500 12-bit chest-like radiograph: body, lung fields with vessel-like texture, ribs, spine, noise."""
    rows, columns = CR_ROWS, CR_COLUMNS
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    y = y / rows * 2 - 1  # -1 (top) .. 1 (bottom)
    x = x / columns * 2 - 1
    shift = 0.02 * seed  # each instance is a slightly different exposure
    body = _sigmoid((0.82 - np.abs(x)) * 40)  # soft-edged body outline
    lungs = np.zeros_like(x)
    for side in (-1, 1):
        distance = ((x - side * (0.38 + shift)) / 0.3) ** 2 + ((y + 0.05) / 0.62) ** 2
        lungs += _sigmoid((1 - distance) * 8)
    ribs = 0.5 + 0.5 * np.sin(y * 26 + np.abs(x) * 5)
    spine = np.exp(-((x / 0.07) ** 2))
    rng = np.random.default_rng(seed)
    # Lung markings: band-limited noise (random at 1/16 resolution, smoothly enlarged).
    coarse = rng.normal(0, 1, size=(rows // 16, columns // 16)).astype(np.float32)
    markings = np.asarray(Image.fromarray(coarse, "F").resize((columns, rows), Image.Resampling.BICUBIC))
    values = (
        500
        + 2600 * body
        - 1500 * lungs * (1 - 0.25 * ribs)
        + 160 * markings * lungs
        + 700 * spine * body
        + 300 * (y + 1) * body
    )
    values += rng.normal(0, 60, size=values.shape).astype(np.float32)  # quantum noise
    return np.clip(values, 0, 4095).astype(np.uint16).tobytes()


def cr_chest_dicom(
    *, study_uid: str, series_uid: str, number: int, patient_name: str, patient_id: str, accession: str = ""
) -> bytes:
    """A realistic uncompressed CR chest PA: 2048x2500, 16 bits allocated, 12 stored, MONOCHROME2, ~10 MB."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("cr.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = series_uid
    dataset.Modality = "CR"
    dataset.BodyPartExamined = "CHEST"
    dataset.ViewPosition = "PA"
    dataset.StudyDescription = "Chest X-Ray PA"
    dataset.SeriesDescription = "Chest PA"
    dataset.StudyDate = dataset.SeriesDate = "20260115"
    dataset.PatientName = patient_name
    dataset.PatientID = patient_id
    dataset.AccessionNumber = accession
    dataset.SeriesNumber = 1
    dataset.InstanceNumber = number
    dataset.ImagerPixelSpacing = [0.15, 0.15]
    dataset.Rows, dataset.Columns = CR_ROWS, CR_COLUMNS
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    dataset.WindowCenter, dataset.WindowWidth = CR_WINDOW
    dataset.PixelData = _chest_pixels(number)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ingest_cr_study(order: RadiologyOrder, *, uploaded_by: AbstractBaseUser | None, images: int = 2) -> RadiologyStudy:
    """A CR chest study of `images` instances in one series."""
    patient = order.visit.patient
    study_uid, series_uid = generate_uid(), generate_uid()
    for number in range(1, images + 1):
        content = cr_chest_dicom(
            study_uid=study_uid,
            series_uid=series_uid,
            number=number,
            patient_name=patient.dicom_name,
            patient_id=patient.hospital_number,
            accession=order.accession_number,
        )
        PACSLiteService.ingest_image(
            order=order, stream=io.BytesIO(content), filename=f"chest_{number}.dcm", uploaded_by=uploaded_by
        )
    return RadiologyStudy.objects.get(study_uid=study_uid)
