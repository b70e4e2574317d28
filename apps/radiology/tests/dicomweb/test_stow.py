"""STOW-RS: POST studies and studies/{study} with multipart/related; type="application/dicom".

Every part goes through the one ingest path. The answer (application/dicom+json) lists
what was stored (ReferencedSOPSequence) and what was not (FailedSOPSequence with its
FailureReason); 200 all stored, 202 some failed, 409 none stored. After every request the
test checks the rows and the objects in the store, not only the answer.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from django.conf import settings
from django.test import Client

from apps.radiology import storage
from apps.radiology.access import signing
from apps.radiology.dicomweb import stow as stow_module
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import RadiologyImage, RadiologyOrder, RadiologyStudy
from apps.radiology.operations.demo import jpeg_with_exif
from apps.radiology.tests.api_fixtures import token_client
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.factories import read_stored, relabelled, row_counts, sample_bytes, stored_keys

from .conftest import API, Put
from .helpers import QUIET_UID_WARNINGS, error, json_of

pytestmark = [pytest.mark.django_db, QUIET_UID_WARNINGS]

STUDIES = f"{API}/studies"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
CANNOT_UNDERSTAND = 0xC000
STUDY_UID_MISMATCH = 0xC122
BOUNDARY = "stow-test-boundary-5f0e"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def staging_files() -> list[Path]:
    staging = Path(settings.RADIOLOGY_STAGING_DIR)
    return sorted(staging.iterdir()) if staging.exists() else []


def multipart(*parts: bytes | tuple[str, bytes]) -> bytes:
    """A multipart/related body; a part is bytes (application/dicom) or (its Content-Type, bytes)."""
    body = b""
    for part in parts:
        content_type, content = part if isinstance(part, tuple) else ("application/dicom", part)
        body += f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def stow(client: Client, *parts: bytes | tuple[str, bytes], path: str = STUDIES, **query: Any) -> Any:
    url = path + ("?" + "&".join(f"{key}={value}" for key, value in query.items()) if query else "")
    return client.post(
        url, data=multipart(*parts), content_type=CONTENT_TYPE, headers={"Accept": "application/dicom+json"}
    )


def referenced(image: RadiologyImage) -> dict[str, Any]:
    series = image.series
    url = f"http://testserver{API}/studies/{series.study.study_uid}/series/{series.series_uid}/instances/{image.image_uid}"
    return {
        "00081150": {"vr": "UI", "Value": [image.sop_class_uid]},
        "00081155": {"vr": "UI", "Value": [image.image_uid]},
        "00081190": {"vr": "UR", "Value": [url]},
    }


def failed(sop_class: str | None, sop_instance: str | None, reason: int) -> dict[str, Any]:
    return {
        "00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
        "00081155": {"vr": "UI", "Value": [sop_instance]} if sop_instance else {"vr": "UI"},
        "00081197": {"vr": "US", "Value": [reason]},
    }


def sop_uid(content: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True).SOPInstanceUID)


def ct(study_uid: str | None = None, **changes: Any) -> bytes:
    return relabelled(
        "CT_small.dcm",
        study_uid=study_uid or generate_uid(),
        series_uid=changes.pop("series_uid", generate_uid()),
        **changes,
    )


def assert_only_stored(*contents: bytes) -> None:
    """The store holds exactly these files, one row each."""
    images = list(RadiologyImage.objects.all())
    assert sorted(image.image_uid for image in images) == sorted(sop_uid(content) for content in contents)
    assert sorted(stored_keys()) == sorted(image.file_key for image in images)
    for content in contents:
        image = RadiologyImage.objects.get(image_uid=sop_uid(content))
        assert read_stored(image.file_key) == content


# --- who may store -----------------------------------------------------------------------


@pytest.fixture
def target(make_order: MakeOrder) -> RadiologyOrder:
    return make_order()


def test_a_radiology_tech_stores_into_the_order_named_in_the_query(
    radiology_store: str, radtech_client: Client, target: RadiologyOrder, radtech: Any
) -> None:
    study_uid = generate_uid()
    series_uid = generate_uid()
    first = ct(study_uid, series_uid=series_uid, instance_number=1)
    second = ct(study_uid, series_uid=series_uid, instance_number=2)
    response = stow(radtech_client, first, second, radiology_order_id=target.pk)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/dicom+json"
    images = list(RadiologyImage.objects.order_by("instance_number"))
    assert json_of(response) == {"00081199": {"vr": "SQ", "Value": [referenced(image) for image in images]}}
    assert_only_stored(first, second)
    study = RadiologyStudy.objects.get()
    assert (study.study_uid, study.radiology_order_id) == (study_uid, target.pk)
    assert [image.uploaded_by_id for image in images] == [radtech.pk, radtech.pk]
    # Each part's staging file was taken over as its spool and is gone with the request; on
    # the filesystem the stored file was linked from it and is now its only name.
    assert staging_files() == []
    if radiology_store == "filesystem":
        for image in images:
            with storage.local_path(image.file_key) as path:
                assert path.stat().st_nlink == 1


def test_a_superuser_may_store(superuser: Any, target: RadiologyOrder) -> None:
    content = ct()
    response = stow(token_client(superuser), content, radiology_order_id=target.pk)
    assert response.status_code == 200
    assert_only_stored(content)


@pytest.mark.parametrize("role", ["doctor", "nurse"])
def test_doctors_and_nurses_may_not_store(request: pytest.FixtureRequest, target: RadiologyOrder, role: str) -> None:
    client = token_client(request.getfixturevalue(role))
    response = stow(client, ct(), radiology_order_id=target.pk)
    assert response.status_code == 403
    assert json_of(response) == error(
        "Only doctors and radiology technicians may use DICOMweb; only technicians may store.", "permission_denied"
    )
    assert row_counts() == (0, 0, 0)
    assert stored_keys() == []
    assert staging_files() == []


def test_anonymous_may_not_store(client: Client, target: RadiologyOrder) -> None:
    response = stow(client, ct(), radiology_order_id=target.pk)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="pacs-lite dicomweb"'
    assert json_of(response) == error("Authentication credentials were not provided.", "not_authenticated")
    assert row_counts() == (0, 0, 0)


def test_a_viewer_token_may_not_store(put: Put, target: RadiologyOrder) -> None:
    existing = put("MR_small.dcm", order=target)
    token = signing.issue_viewer_token(study=existing.study, user=None)
    client = Client(headers={"Authorization": f"Bearer {token}"})
    content = relabelled("CT_small.dcm", study_uid=existing.study_uid, series_uid=generate_uid())
    for path in (STUDIES, existing.study_url()):
        response = stow(client, content, path=path, radiology_order_id=target.pk)
        assert response.status_code == 403
        assert json_of(response)["code"] == "permission_denied"
    assert_only_stored(existing.content)


# --- which order -------------------------------------------------------------------------


def test_the_order_is_found_by_accession_number(radtech_client: Client, make_order: MakeOrder) -> None:
    wanted, other = make_order(), make_order()
    content = ct(AccessionNumber=wanted.accession_number)
    response = stow(radtech_client, content)
    assert response.status_code == 200
    assert RadiologyStudy.objects.get().radiology_order_id == wanted.pk
    assert not RadiologyStudy.objects.filter(radiology_order=other).exists()


def test_the_order_in_the_query_wins_over_the_accession_number(radtech_client: Client, make_order: MakeOrder) -> None:
    by_accession, by_query = make_order(), make_order()
    content = ct(AccessionNumber=by_accession.accession_number)
    response = stow(radtech_client, content, radiology_order_id=by_query.pk)
    assert response.status_code == 200
    assert RadiologyStudy.objects.get().radiology_order_id == by_query.pk


def test_without_an_order_nothing_is_stored(radtech_client: Client, target: RadiologyOrder) -> None:
    content = ct(AccessionNumber="NO-SUCH-ORDER")
    response = stow(radtech_client, content)
    assert response.status_code == 409
    assert json_of(response) == {
        "00081198": {"vr": "SQ", "Value": [failed(CT_IMAGE, sop_uid(content), PROCESSING_FAILURE)]},
        "00081199": {"vr": "SQ"},
    }
    assert row_counts() == (0, 0, 0)
    assert stored_keys() == []


@pytest.mark.parametrize("order_id", ["abc", "-1", "999999"])
def test_an_unknown_order_in_the_query_is_404(radtech_client: Client, target: RadiologyOrder, order_id: str) -> None:
    response = stow(radtech_client, ct(AccessionNumber=target.accession_number), radiology_order_id=order_id)
    assert response.status_code == 404
    assert json_of(response) == error("No radiology order with this id.", "order_not_found")
    assert row_counts() == (0, 0, 0)
    assert stored_keys() == []


# --- partial success and failure reasons ------------------------------------------------


def test_a_partly_bad_request_stores_the_good_instances_only(
    radiology_store: str, radtech_client: Client, target: RadiologyOrder
) -> None:
    study_uid = generate_uid()
    good = ct(study_uid)
    good_mr = relabelled("MR_small.dcm", study_uid=study_uid, series_uid=generate_uid())
    whole = ct(study_uid)
    truncated = whole[: len(whole) - 5000]
    response = stow(
        radtech_client,
        good,
        truncated,
        ("image/jpeg", jpeg_with_exif()),
        b"this is not DICOM",
        good_mr,
        radiology_order_id=target.pk,
    )
    assert response.status_code == 202
    stored = {image.image_uid: image for image in RadiologyImage.objects.all()}
    assert json_of(response) == {
        "00081198": {
            "vr": "SQ",
            "Value": [
                failed(CT_IMAGE, sop_uid(whole), CANNOT_UNDERSTAND),
                failed(None, None, CANNOT_UNDERSTAND),
                failed(None, None, CANNOT_UNDERSTAND),
            ],
        },
        "00081199": {"vr": "SQ", "Value": [referenced(stored[sop_uid(good)]), referenced(stored[sop_uid(good_mr)])]},
    }
    assert_only_stored(good, good_mr)


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm"])
def test_a_truncated_file_fails_and_leaves_nothing_in_the_store(
    radiology_store: str, radtech_client: Client, target: RadiologyOrder, name: str
) -> None:
    content = sample_bytes(name)
    header = pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True)
    response = stow(radtech_client, content, radiology_order_id=target.pk)
    assert response.status_code == 409
    assert json_of(response) == {
        "00081198": {"vr": "SQ", "Value": [failed(header.SOPClassUID, header.SOPInstanceUID, CANNOT_UNDERSTAND)]},
        "00081199": {"vr": "SQ"},
    }
    assert row_counts() == (0, 0, 0)
    assert stored_keys() == []


def test_a_part_of_another_study_fails_on_a_study_route(
    radiology_store: str, radtech_client: Client, target: RadiologyOrder
) -> None:
    study_uid = generate_uid()
    mine = ct(study_uid)
    theirs = ct(generate_uid())
    response = stow(radtech_client, mine, theirs, path=f"{STUDIES}/{study_uid}", radiology_order_id=target.pk)
    assert response.status_code == 202
    image = RadiologyImage.objects.get()
    assert json_of(response) == {
        "00081190": {"vr": "UR", "Value": [f"http://testserver{STUDIES}/{study_uid}"]},
        "00081198": {"vr": "SQ", "Value": [failed(CT_IMAGE, sop_uid(theirs), STUDY_UID_MISMATCH)]},
        "00081199": {"vr": "SQ", "Value": [referenced(image)]},
    }
    assert_only_stored(mine)
    # Only parts of another study: none stored.
    response = stow(radtech_client, theirs, path=f"{STUDIES}/{study_uid}", radiology_order_id=target.pk)
    assert response.status_code == 409
    assert json_of(response)["00081198"]["Value"] == [failed(CT_IMAGE, sop_uid(theirs), STUDY_UID_MISMATCH)]
    assert_only_stored(mine)


def test_the_same_bytes_twice_are_stored_once(radtech_client: Client, target: RadiologyOrder) -> None:
    content = ct()
    first = stow(radtech_client, content, content, radiology_order_id=target.pk)
    assert first.status_code == 200
    image = RadiologyImage.objects.get()
    assert json_of(first) == {"00081199": {"vr": "SQ", "Value": [referenced(image), referenced(image)]}}
    again = stow(radtech_client, content, radiology_order_id=target.pk)
    assert again.status_code == 200
    assert json_of(again) == {"00081199": {"vr": "SQ", "Value": [referenced(image)]}}
    assert_only_stored(content)


def test_other_bytes_under_a_stored_sop_instance_uid_fail(radtech_client: Client, target: RadiologyOrder) -> None:
    content = ct()
    assert stow(radtech_client, content, radiology_order_id=target.pk).status_code == 200
    dataset = pydicom.dcmread(io.BytesIO(content))
    dataset.SeriesDescription = "changed"
    changed = io.BytesIO()
    dataset.save_as(changed, enforce_file_format=True)
    response = stow(radtech_client, changed.getvalue(), radiology_order_id=target.pk)
    assert response.status_code == 409
    assert json_of(response)["00081198"] == {
        "vr": "SQ",
        "Value": [failed(CT_IMAGE, dataset.SOPInstanceUID, DUPLICATE_SOP_INSTANCE)],
    }
    assert_only_stored(content)


# --- the request itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "status", "body"),
    [
        (
            "application/dicom",
            415,
            error('STOW-RS takes multipart/related; type="application/dicom".', "unsupported_media_type"),
        ),
        (
            "multipart/form-data; boundary=x",
            415,
            error('STOW-RS takes multipart/related; type="application/dicom".', "unsupported_media_type"),
        ),
        (
            'multipart/related; type="application/dicom"',
            400,
            error("The body is not a valid multipart/related message with a boundary.", "invalid_multipart"),
        ),
    ],
)
def test_a_body_that_is_not_multipart_related_is_refused(
    radtech_client: Client, target: RadiologyOrder, content_type: str, status: int, body: dict[str, str]
) -> None:
    response = radtech_client.post(f"{STUDIES}?radiology_order_id={target.pk}", data=ct(), content_type=content_type)
    assert response.status_code == status
    assert json_of(response) == body
    assert row_counts() == (0, 0, 0)


def test_a_multipart_without_parts_is_400(radtech_client: Client, target: RadiologyOrder) -> None:
    response = radtech_client.post(
        f"{STUDIES}?radiology_order_id={target.pk}", data=f"--{BOUNDARY}--\r\n".encode(), content_type=CONTENT_TYPE
    )
    assert response.status_code == 400
    assert json_of(response) == error("The request has no parts to store.", "invalid_multipart")
    assert row_counts() == (0, 0, 0)


@pytest.mark.parametrize("cut", ["before the closing boundary", "inside the second part"])
def test_a_body_cut_short_stores_nothing(radtech_client: Client, target: RadiologyOrder, cut: str) -> None:
    study_uid = generate_uid()
    body = multipart(ct(study_uid), ct(study_uid))
    end = len(body) - len(f"--{BOUNDARY}--\r\n") if cut == "before the closing boundary" else len(body) - 3000
    response = radtech_client.post(
        f"{STUDIES}?radiology_order_id={target.pk}", data=body[:end], content_type=CONTENT_TYPE
    )
    assert response.status_code == 400
    assert json_of(response) == error("The body ends before its closing boundary.", "invalid_multipart")
    assert row_counts() == (0, 0, 0)
    assert stored_keys() == []


@pytest.mark.parametrize("accept", ["application/dicom+xml", "text/html", "application/dicom+json;q=0"])
def test_an_answer_that_cannot_be_produced_is_406_before_anything_is_stored(
    radtech_client: Client, target: RadiologyOrder, accept: str
) -> None:
    response = radtech_client.post(
        f"{STUDIES}?radiology_order_id={target.pk}",
        data=multipart(ct()),
        content_type=CONTENT_TYPE,
        headers={"Accept": accept},
    )
    assert response.status_code == 406
    assert json_of(response) == error(
        "None of the media types in Accept can be produced for this resource.", "not_acceptable"
    )
    assert row_counts() == (0, 0, 0)
    assert stored_keys() == []


def test_a_body_encoded_by_dicomweb_client(radtech_client: Client, target: RadiologyOrder) -> None:
    """dicomweb-client starts the body with CRLF and quotes the boundary."""
    study_uid = generate_uid()
    first, second = ct(study_uid), relabelled("MR_small.dcm", study_uid=study_uid, series_uid=generate_uid())
    content_type = 'multipart/related; type="application/dicom"; boundary="0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"'
    body = DICOMwebClient._encode_multipart_message([first, second, first], content_type)
    response = radtech_client.post(f"{STUDIES}?radiology_order_id={target.pk}", data=body, content_type=content_type)
    assert response.status_code == 200
    assert len(json_of(response)["00081199"]["Value"]) == 3
    assert_only_stored(first, second)


def test_stored_instances_are_found_and_retrieved(
    radtech_client: Client, doctor_client: Client, target: RadiologyOrder
) -> None:
    study_uid = generate_uid()
    content = ct(study_uid)
    assert stow(radtech_client, content, path=f"{STUDIES}/{study_uid}", radiology_order_id=target.pk).status_code == 200
    found = json_of(doctor_client.get(f"{API}/studies", {"StudyInstanceUID": study_uid}))
    assert [item["0020000D"]["Value"] for item in found] == [[study_uid]]
    image = RadiologyImage.objects.select_related("series").get()
    url = f"{API}/studies/{study_uid}/series/{image.series.series_uid}/instances/{image.image_uid}"
    response = doctor_client.get(
        url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    )
    assert response.status_code == 200
    assert content in b"".join(response.streaming_content)


def test_a_float_that_is_not_a_number_is_stored_and_served_as_null(
    radtech_client: Client, doctor_client: Client, target: RadiologyOrder
) -> None:
    """Devices write NaN into FD values; JSON cannot hold it, and the whole ingest once failed on it."""
    study_uid = generate_uid()
    content = ct(study_uid, TablePosition=float("nan"), ReconstructionTargetCenterPatient=[0.0, float("inf"), -1.5])

    response = stow(radtech_client, content, radiology_order_id=target.pk)

    assert response.status_code == 200
    assert_only_stored(content)
    image = RadiologyImage.objects.select_related("series").get()
    stored = {tag: image.image_metadata[tag] for tag in ("00189318", "00189327")}
    assert stored == {"00189318": {"vr": "FD", "Value": [0.0, None, -1.5]}, "00189327": {"vr": "FD", "Value": [None]}}
    url = f"{API}/studies/{study_uid}/series/{image.series.series_uid}/instances/{image.image_uid}/metadata"
    (served,) = json_of(doctor_client.get(url))
    assert {tag: served[tag] for tag in stored} == stored


# --- one batch per request ---------------------------------------------------------------


def test_with_an_order_and_no_study_in_the_url_a_header_is_read_only_for_a_part_ingest_refuses(
    radiology_store: str, radtech_client: Client, target: RadiologyOrder, put: Put, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JPEG in an application/dicom part is refused unread; the stored parts are named after their
    SOP Instance UID; a part ingest refuses (here stored under another order) still has its UIDs reported."""
    elsewhere = put("CT_small.dcm")
    study_uid, series_uid = generate_uid(), generate_uid()
    first = ct(study_uid, series_uid=series_uid, instance_number=1)
    second = ct(study_uid, series_uid=series_uid, instance_number=2)
    real_header = stow_module._header
    headers_read: list[str] = []

    def header_counted(part: Any) -> Any:
        header = real_header(part)
        headers_read.append(str(header.SOPInstanceUID))
        return header

    monkeypatch.setattr(stow_module, "_header", header_counted)

    response = stow(
        radtech_client,
        first,
        ("application/dicom", jpeg_with_exif()),
        elsewhere.content,
        second,
        radiology_order_id=target.pk,
    )

    assert response.status_code == 202
    images = list(
        RadiologyImage.objects.select_related("series__study")
        .filter(series__study__radiology_order=target)
        .order_by("instance_number")
    )
    assert json_of(response) == {
        "00081198": {
            "vr": "SQ",
            "Value": [
                {"00081150": {"vr": "UI"}, "00081155": {"vr": "UI"}, "00081197": {"vr": "US", "Value": [49152]}},
                {
                    "00081150": {"vr": "UI", "Value": [CT_IMAGE]},
                    "00081155": {"vr": "UI", "Value": [elsewhere.image_uid]},
                    "00081197": {"vr": "US", "Value": [DUPLICATE_SOP_INSTANCE]},
                },
            ],
        },
        "00081199": {"vr": "SQ", "Value": [referenced(image) for image in images]},
    }
    assert headers_read == [elsewhere.image_uid]
    assert [(image.image_uid, image.filename, image.file_key) for image in images] == [
        (uid, f"{uid}.dcm", f"radiology/{study_uid}/{series_uid}/{uid}/{uid}.dcm")
        for uid in (sop_uid(first), sop_uid(second))
    ]
    assert_only_stored(elsewhere.content, first, second)
