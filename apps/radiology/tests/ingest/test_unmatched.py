"""The unmatched inbox: files that came with no order are held byte-exact, seen by no doctor,
and a tech assigns them (a whole study in one action) through the same ingest, or discards them
with a reason; every step audited (ingest/holding.py, ingest/unmatched.py, the admin actions)."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.test import Client
from django.urls import reverse

from apps.radiology import storage
from apps.radiology.access.principals import principal_of_user
from apps.radiology.access.visible import visible_images
from apps.radiology.errors import ImageConflict, MismatchReasonRequired
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.ingest import cleanup, unmatched
from apps.radiology.ingest.holding import Arrival
from apps.radiology.ingest.outcomes import HeldResult, IngestResult
from apps.radiology.ingest.pipeline import IngestItem, ingest_images
from apps.radiology.models import AuditEvent, RadiologyImage, RadiologyOrder, UnmatchedImage
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.factories import read_stored, relabelled, sha256, stored_keys

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:radiology_unmatchedimage_changelist"
ACCESSION = "CDIMPORT01"


def study_files(count: int, *, patient_id: str, patient_name: str = "Okafor^Ada") -> list[bytes]:
    """`count` CT instances of one new study, as a modality with no order would send them."""
    study_uid, series_uid = generate_uid(), generate_uid()
    return [
        relabelled(
            "CT_small.dcm",
            study_uid=study_uid,
            series_uid=series_uid,
            instance_number=number,
            PatientID=patient_id,
            PatientName=patient_name,
            AccessionNumber=ACCESSION,
        )
        for number in range(1, count + 1)
    ]


def hold(files: list[bytes]) -> list[IngestResult | HeldResult | Any]:
    items = [IngestItem(order=None, stream=io.BytesIO(content), filename=f"{n}.dcm") for n, content in enumerate(files)]
    return ingest_images(items, uploaded_by=None, arrival=Arrival("import"))


def events(action: str) -> list[dict[str, Any]]:
    return list(
        AuditEvent.objects.filter(action=action)
        .order_by("id")
        .values("user__username", "role", "channel", "unmatched_id", "order_id", "image_uid", "reason")
    )


@pytest.fixture
def tech(radtech: AbstractBaseUser) -> AbstractBaseUser:
    radtech.is_staff = True
    radtech.save()
    return radtech


@pytest.fixture
def tech_client(tech: AbstractBaseUser) -> Client:
    client = Client()
    client.force_login(tech)
    return client


@pytest.fixture
def act(tech_client: Client, django_capture_on_commit_callbacks: Any) -> Any:
    """Run an admin action on `rows` as the tech; with form fields, as the confirmation page posts
    them. The test's own transaction never commits: the decisions' on-commit work is run here."""

    def _act(action: str, rows: list[UnmatchedImage], **form: str) -> Any:
        data: dict[str, Any] = {"action": action, "_selected_action": [row.pk for row in rows], **form}
        if form:
            data["apply"] = "1"
        with django_capture_on_commit_callbacks(execute=True):
            return tech_client.post(reverse(CHANGELIST), data)

    return _act


def test_a_file_with_no_order_is_held_byte_exact_and_no_doctor_sees_it(
    radiology_store: str, doctor: AbstractBaseUser, tech_client: Client
) -> None:
    [content] = study_files(1, patient_id="EXT-778", patient_name="Okafor^Ada")

    [outcome] = hold([content])

    assert isinstance(outcome, HeldResult)
    assert outcome.created is True
    row = UnmatchedImage.objects.get()
    assert (row.status, row.source, row.patient_id, row.patient_name, row.accession_number, row.checksum) == (
        "pending",
        "import",
        "EXT-778",
        "Okafor^Ada",
        ACCESSION,
        sha256(content),
    )
    assert stored_keys() == [row.file_key]
    assert row.file_key == f"unmatched/{row.image_uid}/0.dcm"
    assert read_stored(row.file_key) == content
    assert events("hold") == [
        {
            "user__username": None,
            "role": "system",
            "channel": "import",
            "unmatched_id": row.pk,
            "order_id": None,
            "image_uid": row.image_uid,
            "reason": "",
        }
    ]
    assert RadiologyImage.objects.count() == 0
    assert not visible_images(principal_of_user(doctor)).exists()
    doctor.is_staff = True
    doctor.save()
    doctor_client = Client()
    doctor_client.force_login(doctor)
    assert doctor_client.get(reverse(CHANGELIST)).status_code == 403
    listing = tech_client.get(reverse(CHANGELIST))
    assert listing.status_code == 200
    assert "EXT-778" in listing.content.decode()


def test_the_same_file_again_is_the_row_waiting_and_other_bytes_under_its_uid_are_a_conflict() -> None:
    [content] = study_files(1, patient_id="EXT-1")
    hold([content])

    [again] = hold([content])
    [other] = hold([content[:-2] + b"\x01\x02"])  # same header, other pixel bytes

    assert isinstance(again, HeldResult)
    assert (again.created, again.unmatched.pk) == (False, UnmatchedImage.objects.get().pk)
    assert isinstance(other, ImageConflict)
    assert UnmatchedImage.objects.count() == 1
    assert len(stored_keys()) == 1


def test_a_whole_500_instance_study_is_assigned_in_one_action(
    make_order: MakeOrder, doctor: AbstractBaseUser, tech: AbstractBaseUser, tech_client: Client, act: Any
) -> None:
    order = make_order()
    files = study_files(500, patient_id=order.visit.patient.hospital_number)
    hold(files)
    one = UnmatchedImage.objects.order_by("instance_number").first()
    assert one is not None

    page = act("assign_whole_studies", [one])
    assert page.status_code == 200
    assert "500 unmatched files will be affected" in page.content.decode()
    response = act("assign_whole_studies", [one], accession_number=order.accession_number)

    assert response.status_code == 302
    assert UnmatchedImage.objects.filter(status="assigned", radiology_order=order).count() == 500
    images = RadiologyImage.objects.filter(series__study__radiology_order=order)
    assert sorted(images.values_list("checksum", flat=True)) == sorted(sha256(content) for content in files)
    assert set(images.values_list("patient_identity", flat=True)) == {"matched"}
    assert not [key for key in stored_keys() if key.startswith("unmatched/")]
    assigned = events("assign")
    assert len(assigned) == 500
    assert {(event["user__username"], event["channel"], event["order_id"]) for event in assigned} == {
        (tech.get_username(), "admin", order.pk)
    }
    assert visible_images(principal_of_user(doctor)).count() == 500


def test_a_file_naming_another_patient_is_assigned_only_with_the_techs_reason(
    radiology_store: str, make_order: MakeOrder, tech: AbstractBaseUser, tech_client: Client, act: Any
) -> None:
    order, other = make_order(), make_order(first_name="Emeka", last_name="Obi")
    [content] = study_files(1, patient_id=other.visit.patient.hospital_number)
    hold([content])
    row = UnmatchedImage.objects.get()

    refused = act("assign_selected", [row], accession_number=order.accession_number)

    assert refused.status_code == 302
    row.refresh_from_db()
    assert row.status == "pending"
    assert read_stored(row.file_key) == content
    assert RadiologyImage.objects.count() == 0
    messages = [str(message) for message in tech_client.get(reverse(CHANGELIST)).context["messages"]]
    assert messages == ["Assigned 0 file(s) to the order.", f"0.dcm: not assigned (patient_mismatch: {_detail()})"]

    reason = "Registered twice; the EMR record of this order is the right one"
    act(
        "assign_selected",
        [row],
        accession_number=order.accession_number,
        patient_mismatch_reason=reason,
    )

    row.refresh_from_db()
    image = RadiologyImage.objects.get()
    assert (row.status, row.image_id, row.handled_by_id) == ("assigned", image.pk, tech.pk)
    assert (image.patient_identity, image.patient_identity_reason) == ("confirmed_other_patient", reason)
    assert read_stored(image.file_key) == content
    assert [(event["channel"], event["reason"]) for event in events("confirm_mismatch")] == [("admin", reason)]
    assert [event["image_uid"] for event in events("assign")] == [image.image_uid]


def _detail() -> str:
    from apps.radiology.errors import PatientMismatch

    return PatientMismatch.default_detail


def test_discarding_needs_a_reason_and_keeps_the_record(
    radiology_store: str, tech: AbstractBaseUser, tech_client: Client, act: Any
) -> None:
    hold(study_files(2, patient_id="EXT-9"))
    rows = list(UnmatchedImage.objects.order_by("instance_number"))

    without_reason = act("discard_selected", rows[:1], reason=" ")
    assert without_reason.status_code == 200  # the form again, with its error
    assert UnmatchedImage.objects.filter(status="pending").count() == 2

    act("discard_selected", rows[:1], reason="Test shot of the phantom")

    discarded = UnmatchedImage.objects.get(pk=rows[0].pk)
    assert (discarded.status, discarded.reason, discarded.handled_by_id) == (
        "discarded",
        "Test shot of the phantom",
        tech.pk,
    )
    assert stored_keys() == [rows[1].file_key]
    assert [(event["unmatched_id"], event["reason"]) for event in events("discard")] == [
        (rows[0].pk, "Test shot of the phantom")
    ]


def test_a_decided_file_is_not_decided_twice(
    tech: AbstractBaseUser, make_order: MakeOrder, django_capture_on_commit_callbacks: Any
) -> None:
    hold(study_files(1, patient_id="EXT-2"))
    ids = list(UnmatchedImage.objects.values_list("pk", flat=True))

    with django_capture_on_commit_callbacks(execute=True):
        assert len(unmatched.discard(ids, user=tech, channel="admin", reason="duplicate")) == 1
    assert unmatched.discard(ids, user=tech, channel="admin", reason="again") == []
    report = unmatched.assign(ids, order=make_order(), user=tech, channel="admin")
    assert (report.assigned, report.refused) == ([], [])
    assert RadiologyImage.objects.count() == 0
    assert len(events("discard")) == 1
    with pytest.raises(MismatchReasonRequired):
        unmatched.discard(ids, user=tech, channel="admin", reason="")


def test_cleanup_removes_an_unmatched_file_whose_removal_failed_and_keeps_waiting_ones(
    tech: AbstractBaseUser, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    hold(study_files(2, patient_id="EXT-3"))
    first, second = UnmatchedImage.objects.order_by("instance_number")

    def failing_delete(_key: str) -> None:
        raise OSError("disk went away")

    with monkeypatch.context() as patch, django_capture_on_commit_callbacks(execute=True):
        patch.setattr(storage, "delete_object", failing_delete)
        unmatched.discard([first.pk], user=tech, channel="admin", reason="blank frame")
    assert sorted(stored_keys()) == sorted([first.file_key, second.file_key])

    removed = cleanup.purge_interrupted_ingests(older_than=dt.timedelta(0))

    assert removed == [first.file_key]
    assert stored_keys() == [second.file_key]


def test_an_order_is_looked_up_by_its_accession_number_on_the_form(
    tech_client: Client, order: RadiologyOrder, act: Any
) -> None:
    hold(study_files(1, patient_id=order.visit.patient.hospital_number))
    row = UnmatchedImage.objects.get()
    page = act("assign_selected", [row], accession_number="NO-SUCH")
    assert page.status_code == 200
    assert "No radiology order has this accession number." in page.content.decode()
    assert UnmatchedImage.objects.get().status == "pending"
