"""The seed_demo management command: demo users and groups, empty orders, one study of real images."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from apps.emr.models import Patient
from apps.radiology.access.permissions import (
    DOCTOR_GROUP,
    RADIOLOGY_TECH_GROUP,
    can_upload_radiology,
    can_view_radiology,
)
from apps.radiology.models import DICOM_MIME_TYPE, JPEG_MIME_TYPE, RadiologyImage, RadiologyOrder, RadiologyStudy
from apps.radiology.tests.factories import read_stored, sha256, stored_keys

SUMMARY_KEYS = {"users", "password", "radiology_orders", "studies"}


def seed(*args: str) -> dict[str, Any]:
    buffer = io.StringIO()
    call_command("seed_demo", "--json", *args, stdout=buffer)
    summary: dict[str, Any] = json.loads(buffer.getvalue())
    return summary


def _groups(username: str) -> list[str]:
    user = get_user_model().objects.get(username=username)
    return sorted(user.groups.values_list("name", flat=True))


@pytest.mark.django_db
def test_seed_creates_users_and_empty_orders(settings: Any) -> None:
    summary = seed("--orders", "2")

    assert set(summary) == SUMMARY_KEYS
    assert summary["users"] == {"doctor": "doctor", "radtech": "radtech", "nurse": "nurse", "admin": "admin"}
    assert summary["password"] == settings.DEMO_PASSWORD
    assert summary["studies"] == []
    assert len(summary["radiology_orders"]) == 2
    users = get_user_model().objects
    assert users.count() == 4
    assert _groups("doctor") == [DOCTOR_GROUP]
    assert _groups("radtech") == [RADIOLOGY_TECH_GROUP]
    assert _groups("nurse") == []
    assert _groups("admin") == []
    admin = users.get(username="admin")
    assert (admin.is_superuser, admin.is_staff) == (True, True)
    for username, staff in (("doctor", False), ("radtech", True), ("nurse", False)):
        user = users.get(username=username)
        assert (user.is_superuser, user.is_staff) == (False, staff)  # the tech works the unmatched inbox
    for username in summary["users"].values():
        assert users.get(username=username).check_password(settings.DEMO_PASSWORD)
    assert can_view_radiology(users.get(username="doctor")) is True
    assert can_upload_radiology(users.get(username="doctor")) is False
    assert can_upload_radiology(users.get(username="radtech")) is True
    assert can_view_radiology(users.get(username="nurse")) is False

    orders = RadiologyOrder.objects.filter(pk__in=summary["radiology_orders"])
    assert orders.count() == 2
    for order in orders:
        assert order.status == RadiologyOrder.Status.ORDERED
        assert order.ordering_doctor == users.get(username="doctor")
        assert order.visit.patient.hospital_number.startswith("DEMO-")
        assert not RadiologyStudy.objects.filter(radiology_order=order).exists()
    assert RadiologyStudy.objects.count() == 0
    assert Patient.objects.count() == 2


@pytest.mark.django_db
def test_seed_with_images_makes_a_study_of_ct_mr_and_jpeg(radiology_store: str) -> None:
    summary = seed("--with-images", "--orders", "2")

    assert set(summary) == SUMMARY_KEYS
    assert len(summary["radiology_orders"]) == 2
    assert len(summary["studies"]) == 1
    study = RadiologyStudy.objects.get(pk=summary["studies"][0])
    order = study.radiology_order
    assert order.pk not in summary["radiology_orders"]
    assert order.status == RadiologyOrder.Status.COMPLETED
    assert order.modality == "CT"
    patient = order.visit.patient
    assert study.patient_name == patient.full_name
    assert study.patient_id == patient.hospital_number
    assert study.accession_number == order.accession_number

    by_modality = {series.modality: series for series in study.series.all()}
    assert set(by_modality) == {"CT", "MR", "OT"}
    assert by_modality["CT"].images.count() == 3
    assert by_modality["MR"].images.count() == 2
    photo = by_modality["OT"].images.get()
    assert photo.mime_type == JPEG_MIME_TYPE
    assert photo.image_metadata["exif"]["Make"] == "PACS-lite demo camera"
    assert set(by_modality["CT"].images.values_list("mime_type", flat=True)) == {DICOM_MIME_TYPE}
    assert list(by_modality["CT"].images.values_list("instance_number", flat=True)) == [1, 2, 3]

    radtech = get_user_model().objects.get(username="radtech")
    images = RadiologyImage.objects.filter(series__study=study)
    assert images.count() == 6
    assert {image.uploaded_by for image in images} == {radtech}
    assert stored_keys() == sorted(image.file_key for image in images)
    for image in images:
        assert sha256(read_stored(image.file_key)) == image.checksum
    # The other orders stay empty.
    assert not RadiologyStudy.objects.filter(radiology_order__in=summary["radiology_orders"]).exists()


@pytest.mark.django_db
def test_seed_again_adds_orders_but_no_users() -> None:
    first = seed("--orders", "2")

    second = seed("--orders", "2")

    assert get_user_model().objects.count() == 4
    assert second["users"] == first["users"]
    assert len(second["radiology_orders"]) == 2
    assert set(second["radiology_orders"]).isdisjoint(first["radiology_orders"])
    assert RadiologyOrder.objects.count() == 4
    assert Patient.objects.values("hospital_number").distinct().count() == 4
    assert _groups("doctor") == [DOCTOR_GROUP]


@pytest.mark.django_db
def test_seed_does_not_reset_a_changed_password(settings: Any) -> None:
    seed("--orders", "0")
    doctor = get_user_model().objects.get(username="doctor")
    doctor.set_password("changed-by-the-doctor")
    doctor.save()

    seed("--orders", "0")

    doctor.refresh_from_db()
    assert doctor.check_password("changed-by-the-doctor")
    assert not doctor.check_password(settings.DEMO_PASSWORD)


@pytest.mark.django_db
def test_seed_if_empty_makes_no_orders_when_any_exist() -> None:
    seed("--orders", "1")

    summary = seed("--if-empty", "--with-images", "--orders", "3")

    assert summary["radiology_orders"] == []
    assert summary["studies"] == []
    assert RadiologyOrder.objects.count() == 1
    assert RadiologyStudy.objects.count() == 0
    assert get_user_model().objects.count() == 4


@pytest.mark.django_db
def test_seed_if_empty_on_an_empty_database_seeds() -> None:
    summary = seed("--if-empty", "--orders", "1")
    assert len(summary["radiology_orders"]) == 1
    assert RadiologyOrder.objects.count() == 1


@pytest.mark.django_db
def test_seed_without_json_prints_a_summary_line() -> None:
    buffer = io.StringIO()
    call_command("seed_demo", "--orders", "1", stdout=buffer)
    assert buffer.getvalue().strip() == (
        "Demo users doctor, radtech, nurse, admin; 1 new empty orders; 0 new studies with images."
    )
