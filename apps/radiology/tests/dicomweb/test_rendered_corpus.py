"""Every file pydicom bundles, through ingest, and each image drawn as dcmtk draws it.

The table-driven test takes every path `pydicom.data.get_testdata_files()` returns (directories
too) and checks it against corpus_expected.json, kept beside this file: refused with its exact
code (nothing stored), or stored byte for byte; and for a stored image with pixel data, its
`/rendered` (and, multi-frame, its last frame's) asked for as PNG (lossless) and compared with
dcmtk's dcmj2pnm PNG of the same original file at the same size: within 2 grey levels on average
(per channel for colour). "render" in the table says how dcmtk is asked: `options` give the
window both must use where dcmtk's default differs from a viewer's (dcmtk draws no VOI window
unless told: +Wi 1 is the header's first, +Wm the frame's range, which is what a render uses
without one); `tool` another dcmtk renderer (dcml2pnm for JPEG-LS); `source` another file to
draw when dcmtk cannot read this one as it is, with `why`; `refused` the code a render gets
when PACS-lite cannot decode it, with `why`.

The lite viewer's render is checked the same way: the page is opened with a viewer token, the
image URL its script builds is read from its config as the script builds it (a JPEG at
quality 80, sized to the stage: here the image's own size, at least 64 a side as the page asks),
and compared, within the same 2 levels, with dcmtk's picture fitted to that size and put
through the same JPEG encoder at the same quality (the comparison is of the drawing, not of JPEG).

dcmtk is a system package (scripts/system_packages.sh, run by `make test`): nothing is skipped.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from django.test import Client
from PIL import Image
from pydicom.data import get_testdata_file, get_testdata_files

from apps.radiology.access.signing import issue_viewer_token
from apps.radiology.dicomweb import pixels
from apps.radiology.errors import RadiologyError
from apps.radiology.models import RadiologyImage, RadiologyOrder
from apps.radiology.pacs_lite_service import PACSLiteService
from apps.radiology.tests.api_fixtures import token_client
from apps.radiology.tests.factories import assert_nothing_stored, read_stored

from .conftest import Put

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.filterwarnings("ignore::UserWarning"),  # pydicom warns on many of its own odd samples
]

# Mean absolute difference allowed between our render and dcmtk's, in 8-bit levels.
TOLERANCE = 2.0
CORPUS_DIR = Path(get_testdata_file("CT_small.dcm")).parent
CORPUS = sorted(str(Path(path).relative_to(CORPUS_DIR)) for path in get_testdata_files())
EXPECTED: dict[str, dict[str, Any]] = json.loads((Path(__file__).parent / "corpus_expected.json").read_text())
VIEWER = "/api/v1/radiology/viewer/"
CONFIG = re.compile(r'<script id="viewer-config" type="application/json">(.*?)</script>', re.S)


def dcmtk_render(name: str, out: Path, *options: str) -> Image.Image:
    """dcmj2pnm's PNG of pydicom's sample `name` (options: dcmtk's window choice)."""
    return dcmtk_picture(Path(get_testdata_file(name)), out, options)


def dcmtk_picture(source: Path, out: Path, options: tuple[str, ...] | list[str], tool: str = "dcmj2pnm") -> Image.Image:
    """`tool`'s PNG of the DICOM file `source`."""
    target = out / f"{source.name}.{'-'.join(options) or 'default'}.{tool}.png"
    command = [tool, "--write-png", *options, str(source), str(target)]
    subprocess.run(command, capture_output=True, check=True, timeout=60)  # noqa: S603
    picture = Image.open(target)
    picture.load()
    return picture


def our_render(client: Client, url: str, **params: str) -> Image.Image:
    response = client.get(url, params, headers={"Accept": "image/png"})
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "image/png"
    picture = Image.open(io.BytesIO(response.content))
    picture.load()
    return picture


def as_jpeg(picture: Image.Image, *, quality: int) -> Image.Image:
    """`picture` after a round trip through Pillow's JPEG encoder, as a render's JPEG is made."""
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    decoded = Image.open(buffer)
    decoded.load()
    return decoded


def mean_difference(ours: Image.Image, theirs: Image.Image) -> float:
    return float(np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs, dtype=np.int16)).mean())


def assert_drawn_alike(ours: Image.Image, theirs: Image.Image, mode: str, tolerance: float = TOLERANCE) -> None:
    assert (ours.mode, ours.size) == (mode, theirs.size)
    assert theirs.mode == mode
    assert mean_difference(ours, theirs) < tolerance


# --- the whole corpus -------------------------------------------------------------------------


def test_the_expected_outcomes_name_every_file_of_the_corpus() -> None:
    assert list(EXPECTED) == sorted(EXPECTED)
    assert list(EXPECTED) == CORPUS
    for name, expected in EXPECTED.items():
        assert expected["outcome"] in ("directory", "refused", "stored"), name
        assert (expected["outcome"] == "refused") == ("code" in expected), name


def _reference_source(name: str, render: dict[str, Any], out: Path) -> Path:
    """The file dcmtk draws for `name`: itself, or what `render["source"]` says."""
    source = render.get("source")
    path = CORPUS_DIR / name
    if source is None:
        return path
    if source in ("decompressed", "rewritten"):
        dataset = pydicom.dcmread(path)
        for _element in dataset.iterall():
            pass  # each element read as found (VR looked up), so it can be written as the meta says
        if source == "decompressed":
            dataset.decompress()
        target = out / f"{path.name}.{source}.dcm"
        dataset.save_as(target)
        return target
    return CORPUS_DIR / str(source)


def _ingest(order: RadiologyOrder, content: bytes, name: str) -> RadiologyImage:
    result = PACSLiteService.ingest_image(
        order=order, stream=io.BytesIO(content), filename=Path(name).name, uploaded_by=None
    )
    return RadiologyImage.objects.select_related("series__study").get(pk=result.image.pk)


def _instance_url(image: RadiologyImage, suffix: str = "") -> str:
    study, series = image.series.study.study_uid, image.series.series_uid
    return f"/api/v1/radiology/dicomweb/studies/{study}/series/{series}/instances/{image.image_uid}{suffix}"


def lite_viewer_image_url(client: Client, image: RadiologyImage, token: str, stage: tuple[int, int]) -> str:
    """The URL the lite viewer's script loads for this instance on a stage of `stage` pixels:
    renderUrl() of lite_viewer.html, from the page's own config."""
    page = client.get(VIEWER, {"StudyInstanceUIDs": image.series.study.study_uid, "token": token})
    assert page.status_code == 200
    match = CONFIG.search(page.content.decode())
    assert match is not None
    config = json.loads(match.group(1))
    series = next(series for series in config["series"] if series["uid"] == image.series.series_uid)
    assert [instance[0] for instance in series["instances"]] == [image.image_uid]
    width, height = (min(config["maxRenderSide"], max(64, side)) for side in stage)
    instance = (
        f"{config['dicomweb']}/studies/{config['study']['uid']}/series/{series['uid']}/instances/{image.image_uid}"
    )
    return f"{instance}/rendered?viewport={width},{height}&quality=80"


@pytest.mark.parametrize("name", CORPUS)
def test_every_pydicom_test_file_has_its_expected_outcome_and_renders_as_dcmtk_draws_it(
    name: str, order: RadiologyOrder, doctor: Any, tmp_path: Path
) -> None:
    expected = EXPECTED[name]
    path = CORPUS_DIR / name
    if expected["outcome"] == "directory":
        assert path.is_dir()
        return
    content = path.read_bytes()
    try:
        image = _ingest(order, content, name)
    except RadiologyError as refused:
        assert {"outcome": "refused", "code": refused.code} == {
            "outcome": expected["outcome"],
            "code": expected.get("code"),
        }
        assert_nothing_stored()
        return
    assert expected["outcome"] == "stored", f"stored, expected refused with {expected.get('code')}"
    assert read_stored(image.file_key) == content
    render = expected.get("render")
    assert bool(image.pixel_data) == (render is not None)
    if render is None:
        return
    client = token_client(doctor)
    if "refused" in render:
        response = client.get(_instance_url(image, "/rendered"), headers={"Accept": "image/png"})
        assert (response.status_code, response.json()["code"]) == (422, render["refused"])
        return
    source = _reference_source(name, render, tmp_path)
    options = list(render.get("options", []))
    tool = render.get("tool", "dcmj2pnm")
    frames = sorted({1, image.number_of_frames})
    for frame in frames:
        theirs = dcmtk_picture(source, tmp_path, [*options, "+F", str(frame)], tool)
        ours = our_render(client, _instance_url(image, "/rendered" if frame == 1 else f"/frames/{frame}/rendered"))
        assert_drawn_alike(ours, theirs, theirs.mode)

    # The lite viewer: the JPEG its page loads, for a stage the image's size.
    theirs = dcmtk_picture(source, tmp_path, [*options, "+F", "1"], tool)
    url = lite_viewer_image_url(client, image, issue_viewer_token(study=image.series.study, user=doctor), theirs.size)
    token = issue_viewer_token(study=image.series.study, user=doctor)
    response = Client().get(url, headers={"Authorization": f"Bearer {token}"})
    assert (response.status_code, response["Content-Type"]) == (200, "image/jpeg")
    viewed = Image.open(io.BytesIO(response.content))
    viewed.load()
    viewport = tuple(int(side) for side in url.split("viewport=")[1].split("&")[0].split(","))
    # dcmtk's picture fitted to the same viewport (the page asks at least 64 a side), and through
    # the same JPEG encoder at the same quality, so the comparison is of the drawing, not of JPEG.
    assert_drawn_alike(viewed, as_jpeg(pixels.fit(theirs, viewport), quality=80), theirs.mode)


# --- files of their own ---------------------------------------------------------------------


def test_a_palette_colour_image_renders_in_its_palettes_colours(
    put: Put, doctor_client: Client, tmp_path: Path
) -> None:
    stored = put("examples_palette.dcm")  # 800 x 350 ultrasound, 8-bit indices, 16-bit palette entries
    ours = our_render(doctor_client, stored.url("/rendered"))
    theirs = dcmtk_render("examples_palette.dcm", tmp_path)
    assert_drawn_alike(ours, theirs, "RGB")
    # Colour indeed, not grey indices: the palette gives pixels whose channels differ.
    rgb = np.asarray(ours)
    assert np.count_nonzero((rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])) > 0


def test_a_palette_colour_frame_is_still_sent_as_its_indices(put: Put, doctor_client: Client) -> None:
    """Only a render draws the palette: the frame's pixel data are the stored indices."""
    stored = put("examples_palette.dcm")
    response = doctor_client.get(
        stored.url("/frames/1"), headers={"Accept": 'multipart/related; type="application/octet-stream"'}
    )
    assert response.status_code == 200
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert stored.dataset().PixelData in body


@pytest.mark.parametrize("name", ["liver_1frame.dcm", "liver_expb_1frame.dcm"])
def test_a_one_bit_segmentation_renders_black_and_white(
    put: Put, doctor_client: Client, tmp_path: Path, name: str
) -> None:
    stored = put(name)  # 512 x 512, 1 bit per pixel (little / big endian), no window in the header
    ours = our_render(doctor_client, stored.url("/rendered"))
    # Its own range (dcmtk's min-max window): 0 black, 1 white, nothing between.
    assert_drawn_alike(ours, dcmtk_render(name, tmp_path, "+Wm"), "L")
    assert set(np.unique(np.asarray(ours)).tolist()) == {0, 255}
    # The same explicit windows: c 1, w 2 (0 -> 0, 1 -> 255) and c 0.5, w 1 (a threshold).
    for center, width in (("1", "2"), ("0.5", "1")):
        windowed = our_render(doctor_client, stored.url("/rendered"), window=f"{center},{width}")
        assert_drawn_alike(windowed, dcmtk_render(name, tmp_path, "--set-window", center, width), "L")
