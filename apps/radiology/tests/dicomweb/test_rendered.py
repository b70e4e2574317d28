"""WADO-RS rendered and thumbnail resources of instances, frames and series.

Every rendered image is decoded with Pillow. PNG answers are lossless, so their pixels are
compared exactly with what PS3.3 C.11.2.1.2 says a display must show: modality rescale
(slope, intercept), then the linear VOI window (from ?window= or the header), then
MONOCHROME1 inverted.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom.pixels
import pytest
from django.core.cache import caches
from django.test import Client
from PIL import Image

from apps.radiology import storage
from apps.radiology.dicomweb import pixels
from apps.radiology.imagefiles import stored_header
from apps.radiology.models import RadiologyImage

from .conftest import PHOTO, Put, Stored
from .helpers import error, json_of

pytestmark = pytest.mark.django_db

NOT_ACCEPTABLE = error("None of the media types in Accept can be produced for this resource.", "not_acceptable")


def rendered(client: Client, url: str, accept: str = "image/jpeg", **params: str) -> Image.Image:
    response = client.get(url, params, headers={"Accept": accept})
    assert response.status_code == 200, response.content
    expected_type = "image/png" if accept.startswith("image/png") else "image/jpeg"
    assert response["Content-Type"] == expected_type
    assert response["Cache-Control"] == "private, max-age=86400"
    assert response["ETag"].startswith('"r-')
    picture = Image.open(io.BytesIO(response.content))
    picture.load()
    assert picture.format == ("PNG" if expected_type == "image/png" else "JPEG")
    return picture


def png_pixels(client: Client, url: str, **params: str) -> np.ndarray:
    return np.asarray(rendered(client, url, "image/png", **params))


def displayed(stored: Stored, center: float, width: float, *, index: int = 0) -> np.ndarray:
    """The 8-bit display of a greyscale frame: rescale, linear window, MONOCHROME1 inverted."""
    dataset = stored.dataset()
    values = pydicom.pixels.pixel_array(str(stored.path), index=index).astype(np.float32)
    values = values * float(dataset.get("RescaleSlope", 1)) + float(dataset.get("RescaleIntercept", 0))
    scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    display = np.clip(scaled, 0, 255).astype(np.uint8)
    return 255 - display if dataset.PhotometricInterpretation == "MONOCHROME1" else display


def fits(size: tuple[int, int], viewport: tuple[int, int], original: tuple[int, int]) -> None:
    """Inside the viewport, touching it on one side, with the original's aspect ratio (to a pixel)."""
    width, height = size
    assert width <= viewport[0] and height <= viewport[1]
    assert width == viewport[0] or height == viewport[1]
    assert abs(width / height - original[0] / original[1]) <= 1 / min(width, height)


def test_an_instance_renders_at_full_size_as_jpeg_by_default(put: Put, doctor_client: Client) -> None:
    stored = put("CT_small.dcm")
    response = doctor_client.get(stored.url("/rendered"))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    picture = Image.open(io.BytesIO(response.content))
    assert (picture.format, picture.size, picture.mode) == ("JPEG", (128, 128), "L")


@pytest.mark.parametrize(
    ("viewport", "size"),
    [("100,100", (25, 100)), ("512,512", (128, 512)), ("64,", (64, 256)), (",512", (128, 512)), ("10,1000", (10, 40))],
)
def test_rendered_fits_the_viewport_and_keeps_the_aspect_ratio(
    put: Put, doctor_client: Client, viewport: str, size: tuple[int, int]
) -> None:
    stored = put("JPEG2000.dcm")  # 256 wide, 1024 high
    picture = rendered(doctor_client, stored.url("/rendered"), viewport=viewport)
    assert picture.size == size
    wanted = tuple(int(part) if part else 2048 for part in viewport.split(","))
    fits(picture.size, (wanted[0], wanted[1]), (256, 1024))


@pytest.mark.parametrize(
    ("name", "size"), [("JPEG2000.dcm", (32, 128)), ("CT_small.dcm", (128, 128)), (PHOTO, (128, 96))]
)
def test_a_thumbnail_fits_128_by_128_by_default(
    put: Put, doctor_client: Client, name: str, size: tuple[int, int]
) -> None:
    stored = put(name)
    assert rendered(doctor_client, stored.url("/thumbnail")).size == size
    assert rendered(doctor_client, stored.series_url("/thumbnail")).size == size


def test_ohifs_thumbnail_request(put: Put, doctor_client: Client) -> None:
    stored = put("JPEG2000.dcm")
    picture = rendered(doctor_client, stored.url("/thumbnail"), "image/jpeg", viewport="256,256")
    assert picture.size == (64, 256)


def test_the_header_window_is_applied_and_a_window_parameter_replaces_it(put: Put, doctor_client: Client) -> None:
    stored = put("MR_small.dcm")  # WindowCenter 600, WindowWidth 1600
    by_header = png_pixels(doctor_client, stored.url("/rendered"))
    assert np.array_equal(by_header, displayed(stored, 600, 1600))
    narrow = png_pixels(doctor_client, stored.url("/rendered"), window="300,200")
    assert np.array_equal(narrow, displayed(stored, 300, 200))
    assert not np.array_equal(narrow, by_header)
    # A window of the header's own values gives exactly the header's rendering.
    assert np.array_equal(png_pixels(doctor_client, stored.url("/rendered"), window="600,1600,linear"), by_header)


def test_the_rescale_is_applied_before_the_window(put: Put, doctor_client: Client) -> None:
    ct = put("CT_small.dcm")  # RescaleIntercept -1024: stored values are HU + 1024
    soft_tissue = png_pixels(doctor_client, ct.url("/rendered"), window="40,400")
    assert np.array_equal(soft_tissue, displayed(ct, 40, 400))
    hounsfield = pydicom.pixels.pixel_array(str(ct.path)).astype(np.int32) - 1024
    assert (soft_tissue[hounsfield <= -160] == 0).all()
    assert (soft_tissue[hounsfield >= 240] == 255).all()
    unscaled = put("CT_small.dcm", RescaleIntercept=0)
    assert not np.array_equal(png_pixels(doctor_client, unscaled.url("/rendered"), window="40,400"), soft_tissue)


def test_monochrome1_is_rendered_inverted(put: Put, doctor_client: Client) -> None:
    mono2 = put("MR_small.dcm")
    mono1 = put("MR_small.dcm", PhotometricInterpretation="MONOCHROME1")
    for params in ({}, {"window": "500,700"}):
        normal = png_pixels(doctor_client, mono2.url("/rendered"), **params)
        inverted = png_pixels(doctor_client, mono1.url("/rendered"), **params)
        assert normal.std() > 0
        assert np.array_equal(inverted, 255 - normal)


@pytest.mark.parametrize("name", ["SC_rgb_rle_2frame.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_colour_images_render_as_their_rgb_pixels(put: Put, doctor_client: Client, name: str) -> None:
    stored = put(name)
    picture = rendered(doctor_client, stored.url("/rendered"), "image/png")
    assert picture.mode == "RGB"
    assert np.array_equal(np.asarray(picture), pydicom.pixels.pixel_array(str(stored.path), index=0))


def test_a_jpeg_photo_renders_as_its_own_pixels(put: Put, doctor_client: Client) -> None:
    stored = put(PHOTO)
    with Image.open(stored.path) as photo:
        expected = np.asarray(photo.convert("RGB"))
    assert np.array_equal(png_pixels(doctor_client, stored.url("/rendered")), expected)


def test_each_frame_renders_its_own_pixels(put: Put, doctor_client: Client) -> None:
    stored = put("rtdose.dcm")  # 15 frames of 32-bit doses (795000..1254000), no window in the header
    for number in (1, 8, 15):
        expected = displayed(stored, 1000000, 400000, index=number - 1)
        got = png_pixels(doctor_client, stored.url(f"/frames/{number}/rendered"), window="1000000,400000")
        assert np.array_equal(got, expected), number
    first = png_pixels(doctor_client, stored.url("/frames/1/rendered"), window="1000000,400000")
    last = png_pixels(doctor_client, stored.url("/frames/15/rendered"), window="1000000,400000")
    assert not np.array_equal(first, last)
    assert np.array_equal(png_pixels(doctor_client, stored.url("/rendered"), window="1000000,400000"), first)
    response = doctor_client.get(stored.url("/frames/16/rendered"))
    assert response.status_code == 404
    assert json_of(response) == error("The instance has no such frame.", "frame_not_found")


def test_a_series_renders_its_middle_instance(put: Put, doctor_client: Client) -> None:
    first = put("MR_small.dcm", instance_number=1)
    middle = put(
        "MR_small.dcm", series_uid=first.series_uid, instance_number=2, PhotometricInterpretation="MONOCHROME1"
    )
    put("MR_small.dcm", series_uid=first.series_uid, instance_number=3)
    series = png_pixels(doctor_client, first.series_url("/rendered"))
    assert np.array_equal(series, png_pixels(doctor_client, middle.url("/rendered")))
    assert not np.array_equal(series, png_pixels(doctor_client, first.url("/rendered")))
    thumbnail = rendered(doctor_client, first.series_url("/thumbnail"), "image/png")
    assert thumbnail.size == (128, 128)


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("image/png", "image/png"),
        ("image/jpeg", "image/jpeg"),
        ("image/*", "image/jpeg"),
        ("*/*", "image/jpeg"),
        ("", "image/jpeg"),
        ("image/jpeg;q=0.5, image/png", "image/png"),
        ("image/png;q=0.9, image/jpeg;q=0.8", "image/png"),
        ("text/html, image/png;q=0.1", "image/png"),
        ("image/jpeg;q=0, image/png", "image/png"),
    ],
)
def test_the_rendered_media_type_follows_accept(put: Put, doctor_client: Client, accept: str, media_type: str) -> None:
    stored = put("MR_small.dcm")
    for url in (stored.url("/rendered"), stored.url("/thumbnail"), stored.series_url("/rendered")):
        response = doctor_client.get(url, headers={"Accept": accept} if accept else {})
        assert response.status_code == 200
        assert response["Content-Type"] == media_type
        assert Image.open(io.BytesIO(response.content)).format == media_type.split("/")[1].upper()


@pytest.mark.parametrize("accept", ["text/html", "image/jp2", "application/dicom", "image/gif, text/plain"])
def test_a_rendered_type_that_cannot_be_produced_is_406(put: Put, doctor_client: Client, accept: str) -> None:
    stored = put("MR_small.dcm")
    for url in (stored.url("/rendered"), stored.url("/thumbnail"), stored.series_url("/thumbnail")):
        response = doctor_client.get(url, headers={"Accept": accept})
        assert response.status_code == 406
        assert response["Content-Type"] == "application/json"
        assert json_of(response) == NOT_ACCEPTABLE


def test_jpeg_quality_is_honoured(put: Put, doctor_client: Client) -> None:
    stored = put("CT_small.dcm")
    small = doctor_client.get(stored.url("/rendered"), {"quality": "5"}).content
    large = doctor_client.get(stored.url("/rendered"), {"quality": "100"}).content
    assert len(small) < len(large)


@pytest.mark.parametrize(
    ("params", "body"),
    [
        ({"viewport": "abc"}, error("viewport must be width,height in pixels.", "radiology_error")),
        ({"viewport": "0,0"}, error("viewport must be width,height between 1 and 2048.", "radiology_error")),
        ({"viewport": "9000,10"}, error("viewport must be width,height between 1 and 2048.", "viewport_too_large")),
        ({"window": "40"}, error("window must be center,width[,linear].", "radiology_error")),
        ({"window": "40,0"}, error("window width must be at least 1.", "radiology_error")),
    ],
)
def test_invalid_rendering_parameters_are_400(
    put: Put, doctor_client: Client, params: dict[str, str], body: dict[str, str]
) -> None:
    stored = put("CT_small.dcm")
    response = doctor_client.get(stored.url("/rendered"), params)
    assert response.status_code == 400
    assert json_of(response) == body


def test_pixel_data_that_cannot_be_decoded_renders_as_422(put: Put, doctor_client: Client) -> None:
    stored = put("JPEG-lossy.dcm")
    response = doctor_client.get(stored.url("/rendered"))
    assert response.status_code == 422
    assert json_of(response) == error("Could not decode the pixel data: RuntimeError.", "rendering_failed")


def test_a_render_the_browser_holds_is_304(put: Put, doctor_client: Client) -> None:
    stored = put("MR_small.dcm")
    first = doctor_client.get(stored.url("/thumbnail"), {"viewport": "64,64"})
    etag = first["ETag"]
    again = doctor_client.get(stored.url("/thumbnail"), {"viewport": "64,64"}, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again["ETag"] == etag
    other = doctor_client.get(stored.url("/thumbnail"), {"viewport": "32,32"}, headers={"If-None-Match": etag})
    assert other.status_code == 200
    assert other["ETag"] != etag
    assert Image.open(io.BytesIO(other.content)).size == (32, 32)


def test_a_jpeg_render_is_the_displayed_pixels_at_quality_85_with_standard_huffman_tables(
    put: Put, doctor_client: Client
) -> None:
    ct = put("CT_small.dcm")
    response = doctor_client.get(ct.url("/rendered"), {"window": "40,400"})
    expected = io.BytesIO()
    Image.fromarray(displayed(ct, 40, 400), "L").save(expected, format="JPEG", quality=85)
    assert response.status_code == 200
    assert response.content == expected.getvalue()
    # Render form 4 (render_cache.RENDER_FORM) | image | checksum | frame | type | viewport | window | quality
    # | overlays burned in (False: CT_small has none)
    raw = f"4|{ct.image.pk}|{ct.image.checksum}|1|image/jpeg|None|(40.0, 400.0)|85|False"
    digest = hashlib.sha256(raw.encode()).hexdigest()[:40]
    assert response["ETag"] == f'"r-{digest}"'
    assert caches["renders"].get(f"render:{digest}") == response.content


def test_a_thumbnail_is_the_displayed_pixels_reduced_then_lanczos_resampled(put: Put, doctor_client: Client) -> None:
    stored = put("JPEG2000.dcm")  # 256 wide, 1024 high: reduced 2x2 first at a gap of 3 (scale 8)
    got = png_pixels(doctor_client, stored.url("/thumbnail"), window="1000,2000")
    full = Image.fromarray(displayed(stored, 1000, 2000), "L")
    expected = full.resize((32, 128), Image.Resampling.LANCZOS, reducing_gap=3.0)
    assert np.array_equal(got, np.asarray(expected))
    assert not np.array_equal(got, np.asarray(full.resize((32, 128), Image.Resampling.LANCZOS)))


def test_a_repeated_render_is_answered_from_the_render_cache(
    put: Put, doctor_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    ct = put("CT_small.dcm")
    first = doctor_client.get(ct.url("/rendered"), {"viewport": "64,64"})

    def no_render(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("rendered again")

    monkeypatch.setattr(pixels, "render", no_render)
    again = doctor_client.get(ct.url("/rendered"), {"viewport": "64,64"})
    assert (again.status_code, again["Content-Type"], again["ETag"]) == (200, "image/jpeg", first["ETag"])
    assert again["Cache-Control"] == "private, max-age=86400"
    assert again.content == first.content


def test_a_first_render_reads_its_pixel_header_with_the_image_in_one_query(
    put: Put, doctor_client: Client, django_assert_num_queries: Any
) -> None:
    ct = put("CT_small.dcm")
    reference = doctor_client.get(ct.url("/rendered"), {"viewport": "32,32"})
    caches["renders"].clear()  # each request below renders again
    assert stored_header.pixel_header(deferred(ct)) == {  # what the separate query gives (used outside the views)
        tag: ct.image.image_metadata[tag] for tag in stored_header.PIXEL_HEADER_TAGS if tag in ct.image.image_metadata
    }

    # the token and its roles, the image with its pixel header, the audit event
    with django_assert_num_queries(3):
        first = doctor_client.get(ct.url("/rendered"), {"viewport": "32,32"})
    with django_assert_num_queries(3):
        frame = doctor_client.get(ct.url("/frames/1/rendered"), {"viewport": "32,32"})

    assert (first.status_code, first["ETag"], first.content) == (200, reference["ETag"], reference.content)
    assert (frame.status_code, frame.content) == (200, reference.content)


# --- decoding one frame from its byte ranges ----------------------------------------------------


@contextlib.contextmanager
def whole_file_forbidden(key: str) -> Iterator[Path]:
    raise AssertionError(f"the whole of {key} was read")
    yield Path()  # pragma: no cover


def deferred(stored: Stored) -> RadiologyImage:
    """The image as the DICOMweb views load it: its header JSON deferred."""
    return RadiologyImage.objects.defer("image_metadata").get(pk=stored.image.pk)


@pytest.mark.parametrize(
    ("name", "changes", "number"),
    [
        ("CT_small.dcm", {}, 1),  # native explicit little endian, signed 16-bit
        ("CT_small.dcm", {"BitsStored": 11}, 1),  # bit 11 up is not the sample's: sign-extended from bit 10
        ("MR_small.dcm", {"BitsStored": 9, "PixelRepresentation": 0}, 1),  # unsigned: high bits masked
        ("MR_small_implicit.dcm", {}, 1),  # native implicit little endian
        ("rtdose.dcm", {}, 8),  # native, 15 frames of 32-bit
        ("SC_rgb_small_odd.dcm", {}, 1),  # native RGB, 3x3: an odd number of bytes
        ("liver_1frame.dcm", {}, 1),  # 1-bit samples, one frame of whole bytes
        ("JPEG2000.dcm", {}, 1),
        ("MR_small_RLE.dcm", {}, 1),
        ("SC_rgb_rle_2frame.dcm", {}, 2),  # the second frame's fragments
        ("SC_rgb_jpeg_dcmtk.dcm", {}, 1),  # YBR_FULL JPEG: converted to RGB as pydicom does
        ("MR_small_jpeg_ls_lossless.dcm", {}, 1),
    ],
)
def test_a_frame_is_decoded_from_its_own_bytes_exactly_as_pydicom_decodes_the_file(
    put: Put, monkeypatch: pytest.MonkeyPatch, name: str, changes: dict[str, Any], number: int
) -> None:
    stored = put(name, **changes)
    image = deferred(stored)
    monkeypatch.setattr(storage, "local_path", whole_file_forbidden)
    decoded = pixels.decode_frame(image, number)
    expected = pydicom.pixels.pixel_array(str(stored.path), index=number - 1)
    assert (decoded.dtype, decoded.shape, decoded.flags.writeable) == (expected.dtype, expected.shape, True)
    assert np.array_equal(decoded, expected)


# Three 3x3 frames of 1-bit samples: 9 bits each, so frames 2 and 3 start inside a byte.
UNALIGNED = {"Rows": 3, "Columns": 3, "NumberOfFrames": 3, "PixelData": bytes([0b10110101, 0b01101011, 0b110, 0])}


@pytest.mark.parametrize(
    ("name", "changes", "number"),
    [
        ("MR_small_bigendian.dcm", {}, 1),  # big endian: left to pydicom's reading of the file
        ("liver_1frame.dcm", UNALIGNED, 2),
    ],
)
def test_frames_the_byte_ranges_cannot_give_are_decoded_from_the_whole_file(
    put: Put, monkeypatch: pytest.MonkeyPatch, name: str, changes: dict[str, Any], number: int
) -> None:
    stored = put(name, **changes)
    image = deferred(stored)
    opened: list[str] = []
    real_local_path = storage.local_path

    @contextlib.contextmanager
    def recording(key: str) -> Iterator[Path]:
        opened.append(key)
        with real_local_path(key) as path:
            yield path

    monkeypatch.setattr(storage, "local_path", recording)
    decoded = pixels.decode_frame(image, number)
    assert np.array_equal(decoded, pydicom.pixels.pixel_array(str(stored.path), index=number - 1))
    assert opened == [image.file_key]


def test_a_render_reads_the_pixel_header_kept_with_the_frames_and_the_rest_of_the_header_not_at_all(
    put: Put, django_assert_num_queries: Any
) -> None:
    stored = put("MR_small.dcm")
    full = stored.image.image_metadata
    expected = {tag: full[tag] for tag in stored_header.PIXEL_HEADER_TAGS if tag in full}
    image = deferred(stored)
    with django_assert_num_queries(0):  # ingest kept them in pixel_data["header"]
        header = stored_header.pixel_header(image)
        body = pixels.render(image, media_type="image/png")
    assert header == image.pixel_data["header"] == expected
    assert header["00281050"] == {"vr": "DS", "Value": [600.0]}  # the header window is among them
    assert "image_metadata" not in image.__dict__
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), displayed(stored, 600, 1600))
    # A row without them (none after migration 0008): one query picks them from the header.
    older = deferred(stored)
    del older.pixel_data["header"]
    with django_assert_num_queries(1):
        assert stored_header.pixel_header(older) == expected
    assert "image_metadata" not in older.__dict__
