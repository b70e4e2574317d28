"""WADO-RS metadata of instances, series and studies (DICOM JSON, PS3.18 F).

An instance's metadata must be pydicom's own DICOM JSON of the stored file, tag by tag,
except that bulk data (pixel data, large binary values) is a BulkDataURI, never
InlineBinary. It is answered from what ingest stored: a series' metadata opens no file.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pydicom
import pydicom.encaps
import pytest
from django.core.cache import caches
from django.test import Client
from django.utils import timezone

from apps.radiology import storage
from apps.radiology.dicomweb.render_cache import CACHE_ALIAS
from apps.radiology.imagefiles.declared import DeclaredImage
from apps.radiology.models import RadiologyStudy
from apps.radiology.tests.factories import pydicom_json_without_bulk, served_json

from .conftest import PHOTO, Put, Stored
from .helpers import QUIET_UID_WARNINGS, count_queries, error, json_of, multipart_of, walk

pytestmark = [pytest.mark.django_db, QUIET_UID_WARNINGS]

SAMPLES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "JPEG-lossy.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "JPEG2000.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_rle_2frame.dcm",
    "rtdose.dcm",
    "MR_small_bigendian.dcm",
    "rtplan.dcm",  # no pixel data at all
]


def get_metadata(client: Client, url: str) -> list[dict[str, Any]]:
    response = client.get(url, headers={"Accept": "application/dicom+json"})
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/dicom+json"
    assert response["Cache-Control"] == "private, max-age=0, must-revalidate"
    body = json_of(response)
    # Bulk data (over 1 KiB, and pixel data whatever its size) is never inline; small binary
    # values stay inline, as in pydicom's own JSON with the same threshold.
    inline = [base64.b64decode(node["InlineBinary"]) for node in walk(body) if "InlineBinary" in node]
    assert all(len(value) <= 1024 for value in inline)
    assert all("InlineBinary" not in item.get("7FE00010", {}) for item in body)
    return body  # type: ignore[no-any-return]


def expected_bulk(stored: Stored) -> dict[str, dict[str, str]]:
    """BulkDataURI entries the instance must have: its pixel data and top-level binary values over 1 KiB."""
    dataset = stored.dataset()
    bulk = {}
    for element in dataset:
        is_large_binary = element.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") and len(element.value) > 1024
        if element.tag == 0x7FE00010 or (is_large_binary and element.tag < 0x7FE00010):
            tag = f"{int(element.tag):08X}"
            bulk[tag] = {"vr": str(element.VR), "BulkDataURI": stored.absolute(f"/bulk/{tag}")}
    return bulk


def split_bulk(metadata: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    bulk = {tag: value for tag, value in metadata.items() if "BulkDataURI" in value}
    return {tag: value for tag, value in metadata.items() if tag not in bulk}, bulk


@pytest.mark.parametrize("name", SAMPLES)
def test_instance_metadata_is_pydicoms_json_with_bulk_data_as_uris(put: Put, doctor_client: Client, name: str) -> None:
    stored = put(name)
    [metadata] = get_metadata(doctor_client, stored.url("/metadata"))
    plain, bulk = split_bulk(metadata)
    study = RadiologyStudy.objects.get(study_uid=stored.study_uid)
    expected = served_json(pydicom_json_without_bulk(stored.path), study, plain)
    assert sorted(plain) == sorted(expected)
    for tag, value in expected.items():
        assert plain[tag] == value, tag
    assert list(metadata) == sorted(metadata)  # tags in ascending order
    assert bulk == expected_bulk(stored)
    assert plain["00080018"] == {"vr": "UI", "Value": [stored.image_uid]}
    assert plain["0020000E"] == {"vr": "UI", "Value": [stored.series_uid]}
    assert plain["0020000D"] == {"vr": "UI", "Value": [stored.study_uid]}


def test_ct_metadata_has_both_of_its_bulk_elements(put: Put, doctor_client: Client) -> None:
    stored = put("CT_small.dcm")
    [metadata] = get_metadata(doctor_client, stored.url("/metadata"))
    assert split_bulk(metadata)[1] == {
        "00431029": {"vr": "OB", "BulkDataURI": stored.absolute("/bulk/00431029")},
        "7FE00010": {"vr": "OW", "BulkDataURI": stored.absolute("/bulk/7FE00010")},
    }


def test_bulk_data_uris_serve_the_values(put: Put, doctor_client: Client) -> None:
    ct = put("CT_small.dcm")
    dataset = ct.dataset()
    for tag, value in (("00431029", dataset[0x00431029].value), ("7FE00010", dataset.PixelData)):
        response = doctor_client.get(ct.url(f"/bulk/{tag}"))
        assert response.status_code == 200
        part_type, parts = multipart_of(response)
        assert part_type == "application/octet-stream"
        assert [(part.content_type, part.content) for part in parts] == [
            ("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1", value)
        ]
    # Lower case tags are the same resource.
    assert multipart_of(doctor_client.get(ct.url("/bulk/7fe00010")))[1][0].content == dataset.PixelData


def test_the_bulk_pixel_data_of_a_compressed_instance_is_its_frames_as_stored(put: Put, doctor_client: Client) -> None:
    stored = put("SC_rgb_rle_2frame.dcm")
    frames = list(pydicom.encaps.generate_frames(stored.dataset().PixelData, number_of_frames=2))
    part_type, parts = multipart_of(doctor_client.get(stored.url("/bulk/7FE00010")))
    assert part_type == "image/dicom-rle"
    assert [(part.content_type, part.content) for part in parts] == [
        ("image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5", frames[0] + frames[1])
    ]


@pytest.mark.parametrize("tag", ["00100010", "00431029", "FFFFFFFF", "nonsense"])
def test_bulk_data_that_is_not_there_is_404(put: Put, doctor_client: Client, tag: str) -> None:
    stored = put("MR_small.dcm")
    response = doctor_client.get(stored.url(f"/bulk/{tag}"))
    assert response.status_code == 404
    assert json_of(response) == error("No such bulk data.", "bulkdata_not_found")


def test_series_metadata_lists_its_instances_in_order_and_opens_no_file(
    put: Put, doctor_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = put("CT_small.dcm", instance_number=3)
    others = [put("CT_small.dcm", series_uid=first.series_uid, instance_number=n) for n in (1, 2)]
    photo = put(PHOTO)
    by_number = {1: others[0], 2: others[1], 3: first}
    expected = [get_metadata(doctor_client, by_number[n].url("/metadata"))[0] for n in (1, 2, 3)]
    photo_expected = get_metadata(doctor_client, photo.url("/metadata"))

    def no_file(*args: object, **kwargs: object) -> None:
        raise AssertionError("metadata must not open a stored file")

    for name in ("radiology_storage", "open_object", "iter_object_chunks", "iter_object_range", "local_path"):
        monkeypatch.setattr(storage, name, no_file)
    assert get_metadata(doctor_client, first.series_url("/metadata")) == expected
    assert get_metadata(doctor_client, photo.series_url("/metadata")) == photo_expected
    study = get_metadata(doctor_client, first.study_url("/metadata"))
    assert sorted(item["00080018"]["Value"][0] for item in study) == sorted(
        [*(stored.image_uid for stored in by_number.values()), photo.image_uid]
    )


def test_study_metadata_lists_every_instance_by_series_then_instance_number(put: Put, doctor_client: Client) -> None:
    mr2 = put("MR_small.dcm", SeriesNumber=2, instance_number=2)
    ct1 = put("CT_small.dcm", SeriesNumber=1, instance_number=1)
    mr1 = put("MR_small.dcm", series_uid=mr2.series_uid, SeriesNumber=2, instance_number=1)
    study = get_metadata(doctor_client, ct1.study_url("/metadata"))
    assert [item["00080018"]["Value"][0] for item in study] == [ct1.image_uid, mr1.image_uid, mr2.image_uid]
    for item, stored in zip(study, (ct1, mr1, mr2), strict=True):
        assert item == get_metadata(doctor_client, stored.url("/metadata"))[0]


def test_series_and_study_metadata_take_a_fixed_number_of_queries(
    put: Put, doctor_client: Client, django_assert_num_queries: Any
) -> None:
    first = put("MR_small.dcm")
    urls = (first.series_url("/metadata"), first.study_url("/metadata"))
    # One instance: the series (with its study) or the study, then its images.
    baseline = []
    for url in urls:
        total, reads, response = count_queries(doctor_client, url)
        assert (response.status_code, len(json_of(response)), reads) == (200, 1, 2)
        baseline.append(total)
    for number in range(2, 8):
        put("MR_small.dcm", series_uid=first.series_uid, instance_number=number)
    for url, total in zip(urls, baseline, strict=True):
        with django_assert_num_queries(total):
            _total, reads, response = count_queries(doctor_client, url)
        assert (response.status_code, len(json_of(response)), reads) == (200, 7, 2)


def test_a_series_metadata_answer_is_kept_after_it_is_sent_and_renewed_when_an_image_joins(
    put: Put, doctor_client: Client
) -> None:
    """The first answer is written to the render cache once sent (as bytes); the next request reads
    it there (the series row alone, no image query); an image added to the series is in the next answer."""
    first = put("CT_small.dcm", instance_number=1)
    url = first.series_url("/metadata")
    renders = caches[CACHE_ALIAS]
    renders.clear()
    _total, reads, answer = count_queries(doctor_client, url)
    kept = [key for key in renders._cache if "metadata:" in key]  # type: ignore[attr-defined]
    assert (answer.status_code, reads, len(kept)) == (200, 2, 1)
    assert renders.get(kept[0].split(":", 2)[2]) == answer.content
    _total, reads_again, again = count_queries(doctor_client, url)
    assert (again.status_code, reads_again, again.content) == (200, 1, answer.content)
    second = put("CT_small.dcm", series_uid=first.series_uid, instance_number=2)
    renewed = get_metadata(doctor_client, url)
    assert [item["00080018"]["Value"][0] for item in renewed] == [first.image_uid, second.image_uid]
    assert renewed[0] == json_of(answer)[0]


def photo_metadata(stored: Stored, conversion: str) -> dict[str, Any]:
    study = stored.study
    patient = study.radiology_order.visit.patient
    today = timezone.localdate().strftime("%Y%m%d")
    return {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.7"]},
        "00080018": {"vr": "UI", "Value": [stored.image_uid]},
        "00080020": {"vr": "DA", "Value": [today]},
        "00080030": {"vr": "TM"},
        "00080050": {"vr": "SH", "Value": [study.radiology_order.accession_number]},
        "00080060": {"vr": "CS", "Value": ["OT"]},
        "00080064": {"vr": "CS", "Value": [conversion]},
        "00080090": {"vr": "PN"},
        "00081030": {"vr": "LO", "Value": ["CT Head without contrast"]},
        "0008103E": {"vr": "LO", "Value": ["Photo of film"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Balogun^Ngozi"}]},
        "00100020": {"vr": "LO", "Value": [patient.hospital_number]},
        "00100030": {"vr": "DA", "Value": ["19800517"]},
        "00100040": {"vr": "CS", "Value": ["F"]},
        "0020000D": {"vr": "UI", "Value": [stored.study_uid]},
        "0020000E": {"vr": "UI", "Value": [stored.series_uid]},
        "00200010": {"vr": "SH", "Value": [study.radiology_order.accession_number]},
        "00200011": {"vr": "IS", "Value": [3]},
        "00200013": {"vr": "IS", "Value": [1]},
        "00200020": {"vr": "CS"},
        "00200060": {"vr": "CS"},
        "00280002": {"vr": "US", "Value": [3]},
        "00280004": {"vr": "CS", "Value": ["YBR_FULL_422"]},
        "00280006": {"vr": "US", "Value": [0]},
        "00280010": {"vr": "US", "Value": [240]},
        "00280011": {"vr": "US", "Value": [320]},
        "00280100": {"vr": "US", "Value": [8]},
        "00280101": {"vr": "US", "Value": [8]},
        "00280102": {"vr": "US", "Value": [7]},
        "00280103": {"vr": "US", "Value": [0]},
        "00282110": {"vr": "CS", "Value": ["01"]},
        "00282114": {"vr": "CS", "Value": ["ISO_10918_1"]},
        "7FE00010": {"vr": "OB", "BulkDataURI": stored.absolute("/bulk/7FE00010")},
    }


@pytest.mark.parametrize(("photographed_film", "conversion"), [(False, "SI"), (True, "DF")])
def test_a_jpeg_photo_is_a_secondary_capture_instance(
    put: Put, make_order: Any, doctor_client: Client, photographed_film: bool, conversion: str
) -> None:
    order = make_order()
    patient = order.visit.patient
    patient.date_of_birth = dt.date(1980, 5, 17)
    patient.save()
    declared = DeclaredImage(
        series_description="Photo of film",
        series_number=3,
        instance_number=1,
        modality="OT",
        photographed_film=photographed_film,
    )
    stored = put(PHOTO, order=order, declared=declared)
    expected = photo_metadata(stored, conversion)
    assert get_metadata(doctor_client, stored.url("/metadata")) == [expected]
    assert get_metadata(doctor_client, stored.series_url("/metadata")) == [expected]
    # Its QIDO entry names the same SOP class and the JPEG Baseline transfer syntax.
    [entry] = json_of(doctor_client.get(stored.series_url("/instances")))
    assert entry["00080016"] == {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.7"]}
    assert entry["00083002"] == {"vr": "UI", "Value": ["1.2.840.10008.1.2.4.50"]}


def test_metadata_of_what_is_not_there_is_404(put: Put, doctor_client: Client) -> None:
    stored = put("MR_small.dcm")
    unknown = "1.2.3.4.5"
    for url, body in (
        (f"/api/v1/radiology/dicomweb/studies/{unknown}/metadata", error("No such study.", "study_not_found")),
        (
            f"/api/v1/radiology/dicomweb/studies/{stored.study_uid}/series/{unknown}/metadata",
            error("No such series.", "series_not_found"),
        ),
        (
            f"/api/v1/radiology/dicomweb/studies/{stored.study_uid}/series/{stored.series_uid}/instances/{unknown}/metadata",
            error("No such instance.", "instance_not_found"),
        ),
        (
            f"/api/v1/radiology/dicomweb/studies/{unknown}/series/{stored.series_uid}/instances/{stored.image_uid}/metadata",
            error("No such instance.", "instance_not_found"),
        ),
    ):
        response = doctor_client.get(url)
        assert response.status_code == 404, url
        assert json_of(response) == body, url
