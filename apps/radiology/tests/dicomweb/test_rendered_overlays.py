"""Overlay planes (60xx) burned into renders, as dcmtk's dcmj2pnm draws them, and hidden on request.

Ingest records each plane of 1-bit Overlay Data with where its bits lie in the file
(pixel_data["overlays"]); a render reads only those bits (one range read per plane) and draws
them white. Checked against dcmj2pnm (overlays shown by default, --no-overlays) on pydicom's
examples_overlay.dcm and on files made here from pydicom's samples: two planes, one at an
origin inside the image and partly outside it; a multi-frame overlay on some frames of a
multi-frame image; a plane in a big endian file (its OW words swapped).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from django.test import Client
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import pack_bits

from apps.radiology import storage
from apps.radiology.dicomweb import pixels
from apps.radiology.imagefiles.dicom import OVERLAY_GROUPS
from apps.radiology.models import RadiologyImage, RadiologyOrder
from apps.radiology.pacs_lite_service import PACSLiteService

from .conftest import Put, Stored
from .test_rendered_corpus import TOLERANCE, dcmtk_picture, mean_difference, our_render

pytestmark = [pytest.mark.django_db, pytest.mark.filterwarnings("ignore::UserWarning")]


def with_overlay(
    dataset: pydicom.Dataset,
    group: int,
    bits: np.ndarray,
    *,
    origin: tuple[int, int] = (1, 1),
    first_frame: int | None = None,
) -> pydicom.Dataset:
    """`dataset` with an overlay plane in `group`: `bits` (rows x columns, or frames x rows x
    columns for a multi-frame overlay, which then starts on image frame `first_frame`)."""
    frames = bits.shape[0] if bits.ndim == 3 else None
    rows, columns = bits.shape[-2:]
    dataset.add_new((group, 0x0010), "US", rows)
    dataset.add_new((group, 0x0011), "US", columns)
    dataset.add_new((group, 0x0040), "CS", "G")
    dataset.add_new((group, 0x0050), "SS", list(origin))
    dataset.add_new((group, 0x0100), "US", 1)
    dataset.add_new((group, 0x0102), "US", 0)
    if frames is not None:
        dataset.add_new((group, 0x0015), "IS", frames)
        dataset.add_new((group, 0x0051), "US", first_frame or 1)
    packed = pack_bits(bits.reshape(-1).astype(np.uint8), pad=True)
    if not dataset.original_encoding[1]:  # big endian: OW is written as 16-bit words, swapped
        packed = np.frombuffer(packed, dtype="<u2").astype(">u2").tobytes()
    dataset.add_new((group, 0x3000), "OW", packed)
    return dataset


def put_file(order: RadiologyOrder, path: Path) -> Stored:
    """Store a file made here, as it is (its own UIDs: each test has its own database)."""
    content = path.read_bytes()
    result = PACSLiteService.ingest_image(order=order, stream=io.BytesIO(content), filename=path.name, uploaded_by=None)
    image = RadiologyImage.objects.select_related("series__study").get(pk=result.image.pk)
    return Stored(image=image, content=content, path=path)


def saved(dataset: pydicom.Dataset, folder: Path, name: str) -> Path:
    path = folder / name
    dataset.save_as(path)
    return path


def ring(rows: int, columns: int, *, center: tuple[int, int], radius: int) -> np.ndarray:
    y, x = np.ogrid[:rows, :columns]
    distance = np.hypot(y - center[0], x - center[1])
    return (np.abs(distance - radius) < 1.5).astype(np.uint8)


@pytest.fixture
def overlay_files(tmp_path: Path) -> Iterator[dict[str, Path]]:
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # 64 x 64
    two_planes = with_overlay(mr, 0x6000, ring(64, 64, center=(32, 32), radius=20))
    # 40 x 40 from row 40, column 30: its lower right part falls outside the image.
    with_overlay(two_planes, 0x6002, ring(40, 40, center=(20, 20), radius=15), origin=(40, 30))
    dose = pydicom.dcmread(get_testdata_file("rtdose.dcm"))  # 15 frames of 10 x 10
    squares = np.zeros((2, 10, 10), dtype=np.uint8)
    squares[0, 1:4, 1:4] = 1
    squares[1, 5:9, 2:8] = 1
    multi = with_overlay(dose, 0x6000, squares, first_frame=3)  # on image frames 3 and 4
    big = pydicom.dcmread(get_testdata_file("MR_small_bigendian.dcm"))
    big_endian = with_overlay(big, 0x6000, ring(64, 64, center=(20, 40), radius=12))
    yield {
        "two_planes": saved(two_planes, tmp_path, "two_planes.dcm"),
        "multi_frame": saved(multi, tmp_path, "multi_frame.dcm"),
        "big_endian": saved(big_endian, tmp_path, "big_endian.dcm"),
    }


def assert_overlays_drawn_as_dcmtk_draws_them(
    ours: Image.Image, theirs: Image.Image, hidden: Image.Image, plain: Image.Image
) -> None:
    """ours / hidden: our render with and without overlays; theirs / plain: dcmtk's."""
    assert mean_difference(ours, theirs) < TOLERANCE
    assert mean_difference(hidden, plain) < TOLERANCE
    drawn = np.asarray(theirs) != np.asarray(plain)
    assert drawn.any()
    assert (np.asarray(ours)[drawn] == 255).all()  # burned in white where dcmtk draws the overlay
    assert (np.asarray(hidden)[drawn] != 255).any()


def assert_instance_drawn_as_dcmtk_draws_it(
    client: Client, url: str, path: Path, tmp_path: Path, window: tuple[str, ...]
) -> None:
    """Our render of `url` with and without overlays against dcmj2pnm's, with the same window."""
    assert_overlays_drawn_as_dcmtk_draws_them(
        our_render(client, url),
        dcmtk_picture(path, tmp_path, window),
        our_render(client, url, overlays="false"),
        dcmtk_picture(path, tmp_path, (*window, "--no-overlays")),
    )


def test_examples_overlay_is_drawn_as_dcmtk_draws_it_and_hidden_with_overlays_false(
    put: Put, doctor_client: Client, tmp_path: Path
) -> None:
    stored = put("examples_overlay.dcm")
    (plane,) = stored.image.pixel_data["overlays"]
    assert plane == {
        "group": "6000",
        "offset": plane["offset"],
        "length": 18150,
        "rows": 300,
        "columns": 484,
        "origin": [1, 1],
        "frames": 1,
        "first_frame": 1,
        "swapped": False,
    }
    dataset = stored.dataset()
    assert stored.content[plane["offset"] : plane["offset"] + 18150] == dataset[0x6000, 0x3000].value

    window = ("+Wi", "1")
    ours = our_render(doctor_client, stored.url("/rendered"))
    hidden = our_render(doctor_client, stored.url("/rendered"), overlays="false")
    theirs = dcmtk_picture(stored.path, tmp_path, window)
    plain = dcmtk_picture(stored.path, tmp_path, (*window, "--no-overlays"))
    assert_overlays_drawn_as_dcmtk_draws_them(ours, theirs, hidden, plain)
    # Exactly pydicom's overlay_array, in white.
    assert np.array_equal(np.asarray(ours) == 255, (np.asarray(hidden) == 255) | (dataset.overlay_array(0x6000) == 1))


def test_overlays_true_is_the_default_and_anything_else_is_refused(put: Put, doctor_client: Client) -> None:
    stored = put("examples_overlay.dcm")
    default = doctor_client.get(stored.url("/rendered"))
    shown = doctor_client.get(stored.url("/rendered"), {"overlays": "true"})
    hidden = doctor_client.get(stored.url("/rendered"), {"overlays": "false"})
    assert default["ETag"] == shown["ETag"] != hidden["ETag"]
    assert default.content == shown.content != hidden.content
    refused = doctor_client.get(stored.url("/rendered"), {"overlays": "no"})
    assert (refused.status_code, refused.json()) == (
        400,
        {"detail": "overlays must be true or false.", "code": "radiology_error"},
    )
    thumbnail = doctor_client.get(stored.url("/thumbnail"), {"overlays": "false"})
    assert thumbnail.status_code == 200


def test_an_image_without_overlays_has_one_render_whichever_is_asked(put: Put, doctor_client: Client) -> None:
    stored = put("CT_small.dcm")
    assert "overlays" not in stored.image.pixel_data
    shown = doctor_client.get(stored.url("/rendered"))
    hidden = doctor_client.get(stored.url("/rendered"), {"overlays": "false"})
    assert shown["ETag"] == hidden["ETag"]
    assert shown.content == hidden.content


def test_two_planes_one_partly_outside_the_image_are_drawn_as_dcmtk_draws_them(
    order: RadiologyOrder, doctor_client: Client, tmp_path: Path, overlay_files: dict[str, Path]
) -> None:
    path = overlay_files["two_planes"]
    stored = put_file(order, path)
    planes = stored.image.pixel_data["overlays"]
    assert [(plane["group"], plane["origin"], plane["rows"]) for plane in planes] == [
        ("6000", [1, 1], 64),
        ("6002", [40, 30], 40),
    ]
    window = ("+Wi", "1")
    assert_instance_drawn_as_dcmtk_draws_it(doctor_client, stored.url("/rendered"), path, tmp_path, window)


def test_a_multi_frame_overlay_is_drawn_on_its_own_frames_only(
    order: RadiologyOrder, doctor_client: Client, tmp_path: Path, overlay_files: dict[str, Path]
) -> None:
    path = overlay_files["multi_frame"]
    stored = put_file(order, path)
    (plane,) = stored.image.pixel_data["overlays"]
    assert (plane["frames"], plane["first_frame"]) == (2, 3)
    for frame in (1, 3, 4, 5):
        url = stored.url(f"/frames/{frame}/rendered")
        ours, hidden = our_render(doctor_client, url), our_render(doctor_client, url, overlays="false")
        options = ("+Wm", "+F", str(frame))
        theirs = dcmtk_picture(path, tmp_path, options)
        plain = dcmtk_picture(path, tmp_path, (*options, "--no-overlays"))
        if frame in (3, 4):
            assert_overlays_drawn_as_dcmtk_draws_them(ours, theirs, hidden, plain)
        else:
            assert np.array_equal(np.asarray(ours), np.asarray(hidden))
            assert np.array_equal(np.asarray(theirs), np.asarray(plain))
            assert mean_difference(ours, theirs) < TOLERANCE


def test_an_overlay_of_a_big_endian_file_is_unswapped(
    order: RadiologyOrder, doctor_client: Client, tmp_path: Path, overlay_files: dict[str, Path]
) -> None:
    path = overlay_files["big_endian"]
    stored = put_file(order, path)
    assert stored.image.pixel_data["overlays"][0]["swapped"] is True
    window = ("+Wi", "1")
    assert_instance_drawn_as_dcmtk_draws_it(doctor_client, stored.url("/rendered"), path, tmp_path, window)


def test_a_render_reads_only_the_overlay_bits_of_its_frame(
    order: RadiologyOrder, overlay_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One range read per plane, of the bytes holding the frame's rows (never the whole file)."""
    stored = put_file(order, overlay_files["multi_frame"])
    (plane,) = stored.image.pixel_data["overlays"]
    reads: list[tuple[int, int]] = []
    real = storage.read_object_range

    def recording(key: str, offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return real(key, offset, length)

    monkeypatch.setattr(storage, "read_object_range", recording)
    mask = pixels.overlay_mask(stored.image, 4)  # the overlay's second frame: bits 100-199
    assert reads == [(plane["offset"] + 12, 13)]  # bytes 12-24 hold bits 96-207
    assert mask is not None
    assert np.array_equal(mask[5:9, 2:8], np.ones((4, 6), dtype=bool))
    assert mask.sum() == 24
    assert pixels.overlay_mask(stored.image, 1) is None


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"columns": 65535}, id="far-wider-than-the-image"),
        pytest.param({"origin": [100, 100]}, id="outside-the-image"),
        pytest.param({"origin": [-40, 1]}, id="above-the-image"),
    ],
)
def test_a_plane_that_cannot_fall_on_the_image_costs_no_read(put: Put, change: dict[str, Any]) -> None:
    stored = put("examples_overlay.dcm")
    image = stored.image
    image.pixel_data["overlays"] = [{**image.pixel_data["overlays"][0], **change, "offset": 10**12}]
    assert pixels.overlay_mask(image, 1) is None  # an offset past the file's end was never read


def test_ingest_keeps_only_planes_it_can_draw(order: RadiologyOrder, tmp_path: Path) -> None:
    """Overlay Data shorter than its size declares, or of more than 1 bit, is not recorded."""
    dataset = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    with_overlay(dataset, 0x6000, ring(64, 64, center=(32, 32), radius=20))
    with_overlay(dataset, 0x6002, ring(64, 64, center=(32, 32), radius=10))
    dataset[0x6002, 0x3000].value = dataset[0x6002, 0x3000].value[:100]
    with_overlay(dataset, 0x6004, ring(64, 64, center=(32, 32), radius=5))
    dataset[0x6004, 0x0100].value = 16
    stored = put_file(order, saved(dataset, tmp_path, "planes.dcm"))
    assert [plane["group"] for plane in stored.image.pixel_data["overlays"]] == ["6000"]
    assert list(OVERLAY_GROUPS) == list(range(0x6000, 0x6020, 2))
