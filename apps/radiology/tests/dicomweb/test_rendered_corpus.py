"""Rendered images of pydicom's bundled files, drawn as dcmtk draws them.

dcmtk's dcmj2pnm is an independent reference renderer: each file is ingested, its `/rendered`
asked for as PNG (lossless), and compared with dcmj2pnm's PNG of the same original file, in
the same mode, at the same size, to within 2 grey levels on average. Where dcmtk's own default
would window a file differently from a viewer (a 1-bit segmentation, which dcmtk draws 0 / 128
unless windowed), both are given the same window.

dcmtk is a system package (scripts/system_packages.sh, run by `make test`): nothing is skipped.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from django.test import Client
from PIL import Image
from pydicom.data import get_testdata_file

from .conftest import Put

pytestmark = pytest.mark.django_db

# Mean absolute difference allowed between our render and dcmtk's, in 8-bit levels.
TOLERANCE = 2.0


def dcmtk_render(name: str, out: Path, *options: str) -> Image.Image:
    """dcmj2pnm's PNG of pydicom's sample `name` (options: dcmtk's window choice)."""
    target = out / f"{name}.{'-'.join(options) or 'default'}.png"
    command = ["dcmj2pnm", "--write-png", *options, get_testdata_file(name), str(target)]
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


def assert_drawn_alike(ours: Image.Image, theirs: Image.Image, mode: str) -> None:
    assert (ours.mode, ours.size) == (mode, theirs.size)
    assert theirs.mode == mode
    difference = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs, dtype=np.int16))
    assert float(difference.mean()) < TOLERANCE


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
