"""GET /api/v1/radiology/forwarded/{study_uid}/: what a forwarding clinic delivered of a study.

The clinic's forwarder asks once per study and counts it delivered when every image it sent is
confirmed with its checksum. The answer lists only this account's completed uploads (stored,
held in the unmatched inbox, or discarded by a tech), sorted by image UID, in a constant number
of queries. Only forwarding clinic accounts may ask; a clinic account reads nothing else.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from apps.radiology.access.permissions import FORWARDING_CLINIC_GROUP
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.ingest import unmatched as inbox
from apps.radiology.models import RadiologyImage, RadiologyOrder, UnmatchedImage
from apps.radiology.operations.demo import relabelled_dicom
from apps.radiology.tests.api_fixtures import token_client
from apps.radiology.tests.conftest import MakeOrder, make_user
from apps.radiology.tests.upload_helpers import (
    NOT_AUTHENTICATED,
    DeviceFile,
    client_for,
    metadata,
    post_upload,
    put_whole,
)

FORWARDED = "/api/v1/radiology/forwarded/{}/"
NOT_A_CLINIC = {"detail": "Only forwarding clinic accounts may ask what they delivered.", "code": "permission_denied"}
CANNOT_VIEW = {
    "detail": "Only doctors and radiology technicians may view radiology images.",
    "code": "permission_denied",
}


def clinic_user(username: str, name: str) -> Any:
    user = make_user(username, groups=(FORWARDING_CLINIC_GROUP,))
    user.first_name = name
    user.save(update_fields=["first_name"])
    return user


@pytest.fixture
def clinic(db: None) -> Any:
    return clinic_user("ikeja", "Ikeja Clinic")


def dicom(study_uid: str, patient_id: str, instance: int) -> DeviceFile:
    content = relabelled_dicom(
        "CT_small.dcm",
        study_uid=study_uid,
        series_uid=generate_uid(),
        instance_number=instance,
        patient_id=patient_id,
    )
    # Declaring the study UID as a forwarder does: the answer finds uploads by it.
    return DeviceFile(f"ct{instance}.dcm", content, declared={"study_uid": study_uid})


def forward(client: APIClient, accession: str, device_file: DeviceFile) -> dict[str, Any]:
    """One image through the upload sync by accession number, as a clinic's forwarder sends it."""
    declared = post_upload(client, metadata(0, device_file, radiology_order=..., accession_number=accession))
    assert declared.status_code == 201, declared.json()
    done = put_whole(client, declared.json()["id"], device_file.content)
    assert done.status_code == 201, done.json()
    return done.json()


def image_uid_of(device_file: DeviceFile) -> str:
    return str(RadiologyImage.objects.filter(checksum=device_file.checksum).values_list("image_uid", flat=True).get())


def held_uid_of(device_file: DeviceFile) -> str:
    return str(UnmatchedImage.objects.filter(checksum=device_file.checksum).values_list("image_uid", flat=True).get())


def entry(image_uid: str, device_file: DeviceFile, state: str) -> dict[str, Any]:
    return {"image_uid": image_uid, "checksum": device_file.checksum, "file_size": device_file.size, "state": state}


def test_a_clinic_learns_each_image_it_delivered_stored_held_or_discarded(
    clinic: Any, radtech: Any, make_order: MakeOrder, radiology_store: str
) -> None:
    order = make_order()
    patient_id = order.visit.patient.hospital_number
    study_uid = generate_uid()
    sender = client_for(clinic)
    stored, held, discarded, assigned = (dicom(study_uid, patient_id, number) for number in range(1, 5))
    forward(sender, order.accession_number, stored)
    for waiting in (held, discarded, assigned):
        assert forward(sender, "NOT-AN-ORDER", waiting)["held"] is True
    inbox.discard(
        UnmatchedImage.objects.filter(checksum=discarded.checksum).values_list("pk", flat=True),
        user=radtech,
        channel="admin",
        reason="a test shot",
    )
    assign = inbox.assign(
        UnmatchedImage.objects.filter(checksum=assigned.checksum).values_list("pk", flat=True),
        order=order,
        user=radtech,
        channel="admin",
    )
    assert assign.refused == []
    # Another clinic's image of the same study, an upload still pending, an image of another study.
    other_clinic = client_for(clinic_user("epe", "Epe Clinic"))
    forward(other_clinic, order.accession_number, dicom(study_uid, patient_id, 5))
    pending = dicom(study_uid, patient_id, 6)
    assert post_upload(sender, metadata(0, pending, radiology_order=..., accession_number="X")).status_code == 201
    forward(sender, "NOT-AN-ORDER", dicom(generate_uid(), "WALK-IN", 7))

    response = token_client(clinic).get(FORWARDED.format(study_uid))

    expected = sorted(
        [
            entry(image_uid_of(stored), stored, "stored"),
            entry(held_uid_of(held), held, "held"),
            entry(held_uid_of(discarded), discarded, "discarded"),
            entry(image_uid_of(assigned), assigned, "stored"),
        ],
        key=lambda image: image["image_uid"],
    )
    assert (response.status_code, response.json()) == (200, {"study_uid": study_uid, "images": expected})


def test_a_study_the_clinic_sent_nothing_of_is_an_empty_list(clinic: Any) -> None:
    response = token_client(clinic).get(FORWARDED.format("1.2.3.4"))

    assert (response.status_code, response.json()) == (200, {"study_uid": "1.2.3.4", "images": []})


def test_an_image_resent_after_it_was_discarded_counts_once_with_its_best_state(
    clinic: Any, radtech: Any, radiology_store: str
) -> None:
    study_uid = generate_uid()
    device_file = dicom(study_uid, "WALK-IN", 1)
    sender = client_for(clinic)
    forward(sender, "NOT-AN-ORDER", device_file)
    inbox.discard(UnmatchedImage.objects.values_list("pk", flat=True), user=radtech, channel="admin", reason="oops")
    forward(sender, "NOT-AN-ORDER", device_file)  # the clinic's resend: a new upload, held again

    response = token_client(clinic).get(FORWARDED.format(study_uid))

    image_uid = UnmatchedImage.objects.values_list("image_uid", flat=True).first()
    assert response.json() == {"study_uid": study_uid, "images": [entry(str(image_uid), device_file, "held")]}


@pytest.mark.parametrize("images", [1, 4])
def test_the_answer_costs_the_same_queries_whatever_the_study_size(
    clinic: Any, order: RadiologyOrder, radiology_store: str, images: int, django_assert_num_queries: Any
) -> None:
    study_uid = generate_uid()
    sender = client_for(clinic)
    for number in range(1, images + 1):
        forward(sender, order.accession_number, dicom(study_uid, order.visit.patient.hospital_number, number))
        forward(sender, "NOT-AN-ORDER", dicom(study_uid, order.visit.patient.hospital_number, 100 + number))
    client = token_client(clinic)

    # The token with the caller's groups, the images, the audit event.
    with django_assert_num_queries(3):
        response = client.get(FORWARDED.format(study_uid))

    assert len(response.json()["images"]) == 2 * images


@pytest.mark.parametrize("role", ["radtech", "doctor", "nurse", "superuser"])
def test_anyone_but_a_forwarding_clinic_is_403(request: pytest.FixtureRequest, role: str) -> None:
    user = request.getfixturevalue(role)

    for client in (token_client(user), client_for(user)):
        response = client.get(FORWARDED.format("1.2.3.4"))
        assert (response.status_code, response.json()) == (403, NOT_A_CLINIC)


def test_anonymous_is_401(db: None) -> None:
    response = Client().get(FORWARDED.format("1.2.3.4"))

    assert (response.status_code, response.json()) == (401, NOT_AUTHENTICATED)


def test_a_malformed_study_uid_is_404(clinic: Any) -> None:
    response = token_client(clinic).get(FORWARDED.format("not-a-uid"))

    assert (response.status_code, response.json()) == (404, {"detail": "Not found.", "code": "not_found"})


def test_a_clinic_reads_nothing(clinic: Any, order: RadiologyOrder, radiology_store: str) -> None:
    """It may upload, and nothing more: no study, image, DICOMweb search, nor the upload's image."""
    sender = token_client(clinic)
    device_file = dicom(generate_uid(), order.visit.patient.hospital_number, 1)
    forward(client_for(clinic), order.accession_number, device_file)
    image = RadiologyImage.objects.select_related("series__study").get()

    for path in (
        "/api/v1/radiology/studies/",
        f"/api/v1/radiology/studies/{image.series.study_id}/",
        f"/api/v1/radiology/studies/{image.series.study_id}/images/",
        f"/api/v1/radiology/images/{image.pk}/url/",
    ):
        response = sender.get(path)
        assert (response.status_code, response.json()) == (403, CANNOT_VIEW), path
    refused_dicomweb = {
        "detail": "Only doctors and radiology technicians may use DICOMweb; only technicians may store.",
        "code": "permission_denied",
    }
    qido = sender.get("/api/v1/radiology/dicomweb/studies")
    assert (qido.status_code, qido.json()) == (403, refused_dicomweb)
    # Nor store by another way than upload sync (which records where its studies came from).
    stow = sender.post(
        "/api/v1/radiology/dicomweb/studies",
        data=b"--b\r\nContent-Type: application/dicom\r\n\r\n" + device_file.content + b"\r\n--b--\r\n",
        content_type='multipart/related; type="application/dicom"; boundary=b',
    )
    assert (stow.status_code, stow.json()) == (403, refused_dicomweb)
    assert RadiologyImage.objects.count() == 1


# The token with the user and its groups, the answer's one query, the audit event.
QUERIES_OF_AN_EMPTY_ANSWER = 3


def test_a_clinics_token_learns_its_group_in_the_token_query(clinic: Any) -> None:
    client = token_client(clinic)

    with CaptureQueriesContext(connection) as queries:
        assert client.get(FORWARDED.format("1.2.3.4")).status_code == 200

    # On PostgreSQL the token query is a prepared statement (its SQL reads EXECUTE ...): what is
    # asserted on both is that no query reads the groups on its own, and how many there are.
    sqls = [query["sql"] for query in queries.captured_queries]
    assert [sql for sql in sqls if "auth_user_groups" in sql and "authtoken_token" not in sql] == []
    assert len(sqls) == QUERIES_OF_AN_EMPTY_ANSWER, sqls
