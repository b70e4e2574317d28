"""The stored header: what ingest writes of a parsed file's header, and how it is read back."""

from __future__ import annotations

import ast
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from apps.radiology.fastpaths.encoded_json import EncodedJSON, encode
from apps.radiology.imagefiles import stored_header
from apps.radiology.imagefiles.declared import DeclaredImage
from apps.radiology.imagefiles.dicom import parse_image_file
from apps.radiology.imagefiles.patient_identity import HELD_TAGS, EmrIdentity, served_members
from apps.radiology.models import DICOM_MIME_TYPE, JPEG_MIME_TYPE, RadiologyImage
from apps.radiology.operations.demo import jpeg_with_exif
from apps.radiology.tests.factories import sample_bytes

RADIOLOGY = Path(__file__).resolve().parents[2]


def _parsed(tmp_path: Path, name: str, content: bytes, mime_type: str) -> Any:
    path = tmp_path / name
    path.write_bytes(content)
    return parse_image_file(path, mime_type)


EMR = EmrIdentity(name="Okafor^Ada", patient_id="H-1", birth_date="19800102", sex="F")
AT = dt.datetime(2026, 12, 6, 10, 0, tzinfo=dt.UTC)


def test_a_dicom_header_is_stored_encoded_with_its_pixel_description_beside_the_frames(tmp_path: Path) -> None:
    parsed = _parsed(tmp_path, "ct.dcm", sample_bytes("CT_small.dcm"), DICOM_MIME_TYPE)
    identity = served_members(stored_header.file_identity(parsed), EMR, at=AT)
    columns = stored_header.columns(parsed, DeclaredImage(), identity=identity)

    header = columns["image_metadata"]
    assert type(header) is EncodedJSON
    assert header.cuts == ("00431029", stored_header.PIXEL_DATA)  # where metadata_text puts its BulkDataURIs
    # The EMR's identity in the file's place, the file's own kept as Original Attributes.
    assert {tag: header[tag] for tag in HELD_TAGS} == identity
    assert header["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Okafor^Ada"}]}
    assert header["04000561"]["Value"][0]["04000550"]["Value"][0]["00100010"] == {
        "vr": "PN",
        "Value": [{"Alphabetic": "CompressedSamples^CT1"}],
    }
    assert columns["pixel_data"] is parsed.pixel_data
    assert columns["pixel_data"]["header"] == stored_header.pixel_header_of(header)
    assert set(columns["pixel_data"]["header"]) == set(stored_header.PIXEL_HEADER_TAGS) & set(header)
    assert columns["bulk_data"] is parsed.bulk_data
    # metadata_text: the header's own text with the references spliced in, equal to encoding it whole.
    image = RadiologyImage(mime_type=DICOM_MIME_TYPE, **columns)
    whole = stored_header.instance_header(image, instance_url="")
    assert columns["metadata_text"] == encode(whole) == stored_header.metadata_text(image)
    assert whole[stored_header.PIXEL_DATA] == {"vr": "OW", "BulkDataURI": "/bulk/7FE00010"}
    assert list(whole) == sorted(whole)


@pytest.mark.parametrize(("photographed_film", "conversion_type"), [(False, "SI"), (True, "DF")])
def test_a_photo_is_stored_with_how_it_was_made_and_no_metadata_text(
    tmp_path: Path, photographed_film: bool, conversion_type: str
) -> None:
    parsed = _parsed(tmp_path, "photo.jpg", jpeg_with_exif(), JPEG_MIME_TYPE)
    columns = stored_header.columns(parsed, DeclaredImage(photographed_film=photographed_film))

    assert columns["image_metadata"] == {**parsed.metadata, "conversion_type": conversion_type}
    assert columns["metadata_text"] == ""
    image = RadiologyImage(mime_type=JPEG_MIME_TYPE, **columns)
    assert stored_header.photo_conversion_type(image) == conversion_type
    assert stored_header.photo_is_colour(image) is True


@pytest.mark.django_db
def test_stored_texts_are_the_rows_text_with_absolute_bulk_data_uris(
    order: Any, ingest_file: Any, django_assert_num_queries: Any
) -> None:
    dicom = ingest_file(order, "CT_small.dcm").image
    photo = ingest_file(order, jpeg_with_exif()).image

    def instance_url(series_uid: str, image_uid: str) -> str:
        return f"https://pacs.example.org/series/{series_uid}/instances/{image_uid}"

    images = RadiologyImage.objects.filter(pk__in=[dicom.pk, photo.pk]).order_by("pk")
    with django_assert_num_queries(1):
        texts = list(stored_header.stored_texts(images, instance_url=instance_url))

    assert [pk for pk, _text in texts] == [dicom.pk, photo.pk]
    assert texts[1][1] is None  # a photo's metadata is built from its study and series rows
    url = instance_url(dicom.series.series_uid, dicom.image_uid)
    reloaded = RadiologyImage.objects.get(pk=dicom.pk)
    assert json.loads(texts[0][1] or "") == stored_header.instance_header(reloaded, instance_url=url)


@pytest.mark.django_db
def test_a_pixel_value_is_read_from_the_description_kept_with_the_row(
    order: Any, ingest_file: Any, django_assert_num_queries: Any
) -> None:
    stored = ingest_file(order, "CT_small.dcm").image
    image = RadiologyImage.objects.defer("image_metadata").get(pk=stored.pk)
    with django_assert_num_queries(0):
        assert stored_header.pixel_value(image, "00280100") == 16
        assert stored_header.pixel_value(image, "00280006", "none") == "none"  # absent: the default
    assert "image_metadata" not in image.__dict__


@pytest.mark.parametrize("package", ["imagefiles", "ingest"])
def test_the_header_and_ingest_modules_import_nothing_above_them(package: str) -> None:
    """imagefiles may use models, errors and fastpaths; ingest never dicomweb, api or viewers."""
    above = {"dicomweb", "api", "viewers", "operations"} | ({"ingest", "access"} if package == "imagefiles" else set())
    for module in sorted((RADIOLOGY / package).glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                parts = name.split(".")
                assert not (parts[:2] == ["apps", "radiology"] and len(parts) > 2 and parts[2] in above), (
                    f"{module.name} imports {name}"
                )
                assert parts[-1] != "pacs_lite_service", f"{module.name} imports {name}"
