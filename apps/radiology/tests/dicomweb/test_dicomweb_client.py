"""A real DICOMweb client (dicomweb-client) against a live server over HTTP.

pytest-django's live_server runs the app in a thread of this process; the client
authenticates with `Authorization: Token ...` (or a viewer token as Bearer). The reading
test runs on the filesystem store and on S3 (moto over HTTP).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pydicom
import pydicom.encaps
import pydicom.pixels
import pytest
import requests
from dicomweb_client import DICOMwebClient
from PIL import Image
from rest_framework.authtoken.models import Token

from apps.radiology.access import signing
from apps.radiology.imagefiles.patient_identity import EmrIdentity
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import RadiologyImage
from apps.radiology.tests.factories import pydicom_json_without_bulk, relabelled, row_counts

from .conftest import API, PHOTO, Put, Stored
from .helpers import QUIET_UID_WARNINGS

pytestmark = [pytest.mark.django_db(transaction=True), QUIET_UID_WARNINGS]

EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
IDENTITY_TAGS = ("00100010", "00100020", "00100030", "00100040")


Connect = Callable[[str], DICOMwebClient]


@pytest.fixture
def connect(live_server: Any) -> Iterator[Connect]:
    """connect(authorization) -> a DICOMwebClient of the live server sending that Authorization.

    Sessions keep their connections alive (a new connection per request would cost a server
    thread, a database connection and an S3 client each). At the end they are closed; the
    radiology conftest then lets the server finish its requests (tests/live_server_requests.py)
    while the test database connection they share on SQLite is still there.
    """
    sessions: list[requests.Session] = []

    def _connect(authorization: str) -> DICOMwebClient:
        session = requests.Session()
        session.headers["Authorization"] = authorization
        sessions.append(session)
        return DICOMwebClient(url=f"{live_server.url}{API}", session=session)

    yield _connect
    for session in sessions:
        session.close()


def as_user(connect: Connect, user: Any) -> DICOMwebClient:
    token, _created = Token.objects.get_or_create(user=user)
    return connect(f"Token {token.key}")


@dataclass(frozen=True)
class Study:
    ct1: Stored
    ct2: Stored
    rle: Stored
    dose: Stored
    photo: Stored


@pytest.fixture
def study(put: Put) -> Study:
    ct1 = put("CT_small.dcm", SeriesNumber=1, instance_number=1)
    ct2 = put("CT_small.dcm", series_uid=ct1.series_uid, SeriesNumber=1, instance_number=2)
    rle = put("SC_rgb_rle_2frame.dcm", SeriesNumber=2)
    dose = put("rtdose.dcm", SeriesNumber=3)
    photo = put(PHOTO)
    return Study(ct1, ct2, rle, dose, photo)


def uid(item: dict[str, Any], tag: str) -> str:
    return str(item[tag]["Value"][0])


def test_searches_metadata_instances_frames_and_renders(
    radiology_store: str, live_server: Any, connect: Connect, doctor: Any, study: Study
) -> None:
    client = as_user(connect, doctor)
    ct1, ct2, rle, dose, photo = study.ct1, study.ct2, study.rle, study.dose, study.photo

    # QIDO
    [found] = client.search_for_studies(search_filters={"StudyInstanceUID": ct1.study_uid})
    assert uid(found, "0020000D") == ct1.study_uid
    assert found["00201208"] == {"vr": "IS", "Value": [5]}
    assert client.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []
    assert [
        uid(item, "0020000D") for item in client.search_for_studies(search_filters={"PatientName": "balogun*"})
    ] == [ct1.study_uid]
    series = client.search_for_series(ct1.study_uid)
    # The photo's series has no number: last.
    assert [uid(item, "0020000E") for item in series] == [
        ct1.series_uid,
        rle.series_uid,
        dose.series_uid,
        photo.series_uid,
    ]
    instances = client.search_for_instances(ct1.study_uid, ct1.series_uid)
    assert [uid(item, "00080018") for item in instances] == [ct1.image_uid, ct2.image_uid]
    [one] = client.search_for_instances(search_filters={"SOPInstanceUID": dose.image_uid})
    assert uid(one, "0020000D") == dose.study_uid

    # WADO-RS metadata: pydicom's JSON of each file, bulk data as URIs.
    metadata = client.retrieve_study_metadata(ct1.study_uid)
    assert len(metadata) == 5
    dose_metadata = client.retrieve_instance_metadata(dose.study_uid, dose.series_uid, dose.image_uid)
    bulk_uri = dose_metadata.pop("7FE00010")["BulkDataURI"]
    # The file's own JSON, but for the patient identity: the EMR's, the file's in Original Attributes.
    in_file = pydicom_json_without_bulk(dose.path)
    file_identity = {tag: in_file.pop(tag) for tag in IDENTITY_TAGS if tag in in_file}
    served = {tag: dose_metadata.pop(tag) for tag in (*IDENTITY_TAGS, "04000561")}
    assert dose_metadata == in_file
    assert {tag: served[tag] for tag in IDENTITY_TAGS} == EmrIdentity.of_study(dose.study).elements()
    [item] = served["04000561"]["Value"]
    [modified] = item["04000550"]["Value"]
    assert modified == {tag: file_identity[tag] for tag in IDENTITY_TAGS if tag in modified}
    assert modified["00100020"] == file_identity["00100020"]
    # dicomweb-client sends `Host: <hostname>` without the port, and the server builds its URLs
    # from the Host header: only the path can be checked (and has to be put on the real origin).
    assert urlsplit(bulk_uri).path == dose.url("/bulk/7FE00010")
    assert client.retrieve_bulkdata(f"{live_server.url}{urlsplit(bulk_uri).path}") == [dose.dataset().PixelData]
    series_metadata = client.retrieve_series_metadata(ct1.study_uid, ct1.series_uid)
    assert [uid(item, "00080018") for item in series_metadata] == [ct1.image_uid, ct2.image_uid]

    # WADO-RS instances: exactly the stored files (dicomweb-client asks transfer-syntax=* by default).
    for stored in (ct1, rle, dose):
        dataset = client.retrieve_instance(stored.study_uid, stored.series_uid, stored.image_uid)
        assert dataset == stored.dataset()
        assert dataset.PixelData == stored.dataset().PixelData
    # Explicit VR Little Endian named: the RLE file decoded, with the served identity.
    explicit = client.retrieve_instance(
        rle.study_uid, rle.series_uid, rle.image_uid, media_types=(("application/dicom", EXPLICIT_LITTLE),)
    )
    assert explicit.file_meta.TransferSyntaxUID == EXPLICIT_LITTLE
    assert np.array_equal(explicit.pixel_array, rle.dataset().pixel_array)
    assert explicit.PatientID == rle.study.patient_id != rle.dataset().PatientID
    assert explicit.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientID == rle.dataset().PatientID
    photo_file = client.retrieve_instance(photo.study_uid, photo.series_uid, photo.image_uid)
    assert photo_file.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert list(pydicom.encaps.generate_frames(photo_file.PixelData, number_of_frames=1)) == [photo.content]
    assert [item.SOPInstanceUID for item in client.retrieve_series(ct1.study_uid, ct1.series_uid)] == [
        ct1.image_uid,
        ct2.image_uid,
    ]
    assert len(client.retrieve_study(ct1.study_uid)) == 5

    # Frames: as stored (the client's default, */*), as OHIF asks, and decoded.
    pixels = dose.dataset().PixelData
    assert client.retrieve_instance_frames(dose.study_uid, dose.series_uid, dose.image_uid, frame_numbers=[2, 15]) == [
        pixels[400:800],
        pixels[5600:6000],
    ]
    stored_rle = list(pydicom.encaps.generate_frames(rle.dataset().PixelData, number_of_frames=2))
    ohif = (("application/octet-stream", "*"),)
    assert (
        client.retrieve_instance_frames(rle.study_uid, rle.series_uid, rle.image_uid, [1, 2], media_types=ohif)
        == stored_rle
    )
    assert (
        client.retrieve_instance_frames(
            rle.study_uid, rle.series_uid, rle.image_uid, [2], media_types=(("image/dicom-rle", "1.2.840.10008.1.2.5"),)
        )
        == stored_rle[1:]
    )
    decoded = client.retrieve_instance_frames(
        rle.study_uid, rle.series_uid, rle.image_uid, [2], media_types=(("application/octet-stream", EXPLICIT_LITTLE),)
    )
    assert decoded == [pydicom.pixels.pixel_array(str(rle.path), index=1).tobytes()]
    jpeg_frames = client.retrieve_instance_frames(
        photo.study_uid, photo.series_uid, photo.image_uid, [1], media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),)
    )
    assert jpeg_frames == [photo.content]

    # Rendered.
    jpeg = client.retrieve_instance_rendered(ct1.study_uid, ct1.series_uid, ct1.image_uid, media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    png = client.retrieve_instance_rendered(
        rle.study_uid, rle.series_uid, rle.image_uid, media_types=("image/png",), params={"viewport": "50,50"}
    )
    picture = Image.open(io.BytesIO(png))
    assert (picture.format, picture.size) == ("PNG", (50, 50))
    assert np.array_equal(
        np.asarray(picture.resize((100, 100))).shape, pydicom.pixels.pixel_array(str(rle.path), index=0).shape
    )
    series_jpeg = client.retrieve_series_rendered(ct1.study_uid, ct1.series_uid, media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(series_jpeg)).size == (128, 128)


def test_store_instances(connect: Connect, radtech: Any, make_order: Any) -> None:
    client = as_user(connect, radtech)
    order = make_order()
    study_uid = generate_uid()
    series_uid = generate_uid()
    datasets = [
        pydicom.dcmread(
            io.BytesIO(relabelled("CT_small.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=n))
        )
        for n in (1, 2)
    ]
    answer = client.store_instances(datasets, additional_params={"radiology_order_id": str(order.pk)})
    assert [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence] == [
        item.SOPInstanceUID for item in datasets
    ]
    assert "FailedSOPSequence" not in answer
    assert row_counts() == (1, 1, 2)
    # Into the study by its route: a part of another study fails (0xC122), the rest is stored (202).
    # No order in the query: the order is the one with the instance's AccessionNumber.
    more = pydicom.dcmread(
        io.BytesIO(
            relabelled(
                "MR_small.dcm", study_uid=study_uid, series_uid=generate_uid(), AccessionNumber=order.accession_number
            )
        )
    )
    stray = pydicom.dcmread(io.BytesIO(relabelled("MR_small.dcm", study_uid=generate_uid(), series_uid=generate_uid())))
    answer = client.store_instances([more, stray], study_instance_uid=study_uid)
    assert [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence] == [more.SOPInstanceUID]
    assert [(item.ReferencedSOPInstanceUID, item.FailureReason) for item in answer.FailedSOPSequence] == [
        (stray.SOPInstanceUID, 0xC122)
    ]
    # (Host without the port again: only the path is ours.)
    assert urlsplit(answer.RetrieveURL).path == f"{API}/studies/{study_uid}"
    assert row_counts() == (1, 2, 3)
    stored = client.retrieve_instance(study_uid, more.SeriesInstanceUID, more.SOPInstanceUID)
    assert stored == more
    assert RadiologyImage.objects.get(image_uid=more.SOPInstanceUID).uploaded_by_id == radtech.pk


def test_a_viewer_token_through_dicomweb_client(connect: Connect, put: Put, make_order: Any) -> None:
    mine = put("MR_small.dcm", order=make_order())
    other = put("CT_small.dcm", order=make_order())
    client = connect(f"Bearer {signing.issue_viewer_token(study=mine.study, user=None)}")
    assert [uid(item, "0020000D") for item in client.search_for_studies()] == [mine.study_uid]
    assert client.search_for_studies(search_filters={"PatientID": other.study.patient_id}) == []
    assert [uid(item, "0020000D") for item in client.search_for_instances()] == [mine.study_uid]
    assert client.retrieve_instance(mine.study_uid, mine.series_uid, mine.image_uid) == mine.dataset()
    with pytest.raises(requests.HTTPError) as refused:
        client.retrieve_instance_metadata(other.study_uid, other.series_uid, other.image_uid)
    assert refused.value.response.status_code == 404
    with pytest.raises(requests.HTTPError) as refused:
        client.store_instances([other.dataset()])
    assert refused.value.response.status_code == 403
    forged = connect("Bearer forged")
    with pytest.raises(requests.HTTPError) as refused:
        forged.search_for_studies()
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"] == 'Bearer realm="pacs-lite dicomweb"'
