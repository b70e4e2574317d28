"""Whose images these are: each way in compares the file's PatientID with its order's patient, and
every reader is shown the EMR's identity with the file's own kept as Original Attributes.

The rules (ingest/identity.py): a PatientID that is another EMR patient's hospital number is
refused (409 patient_mismatch) unless a tech confirms with a reason (stored on the image and
audited); an empty or unknown one is stored with the discrepancy recorded on the image. CI runs
this file on SQLite and on PostgreSQL (.ci/run runs the whole suite on both).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.radiology.errors import MismatchReasonRequired, PatientMismatch
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import AuditEvent, RadiologyImage, RadiologyOrder, RadiologyStudy, RadiologyUpload
from apps.radiology.tests.api_fixtures import token_client
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.factories import read_stored, relabelled, row_counts, stored_keys
from apps.radiology.tests.upload_helpers import DeviceFile, client_for, metadata, post_upload, put_whole

pytestmark = pytest.mark.django_db

DICOMWEB = "/api/v1/radiology/dicomweb"
BOUNDARY = "identity-test-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
DATA_SET_DOES_NOT_MATCH = 0xA900
REASON = "Console had the previous patient's ID; confirmed with the ward"


def ct_for(**changes: Any) -> bytes:
    """A CT instance of a new study, with its patient elements set as a modality would."""
    return relabelled("CT_small.dcm", study_uid=generate_uid(), series_uid=generate_uid(), **changes)


def stow(user: AbstractBaseUser, content: bytes, **query: Any) -> Any:
    body = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + content
    body += f"\r\n--{BOUNDARY}--\r\n".encode()
    url = f"{DICOMWEB}/studies?" + "&".join(f"{key}={value}" for key, value in query.items())
    return token_client(user).post(url, data=body, content_type=STOW_TYPE, headers={"Accept": "application/dicom+json"})


def hospital_number(order: RadiologyOrder) -> str:
    return order.visit.patient.hospital_number


def identity_columns(image: RadiologyImage) -> tuple[str, str, str, str]:
    return image.patient_identity, image.file_patient_id, image.file_patient_name, image.patient_identity_reason


def confirmations() -> list[dict[str, Any]]:
    return list(
        AuditEvent.objects.filter(action=AuditEvent.IdentityAction.CONFIRM_MISMATCH).values(
            "user__username", "role", "channel", "order_id", "study_uid", "image_uid", "reason", "outcome"
        )
    )


def person(name: str) -> dict[str, Any]:
    return {"vr": "PN", "Value": [{"Alphabetic": name}]}


@pytest.fixture
def other_order(make_order: MakeOrder) -> RadiologyOrder:
    """An order of another patient, whose hospital number a wrong file carries."""
    return make_order(first_name="Emeka", last_name="Obi")


# --- STOW-RS ----------------------------------------------------------------------------------


def test_stow_of_a_file_naming_another_emr_patient_is_refused_and_leaves_nothing(
    radtech: AbstractBaseUser, order: RadiologyOrder, other_order: RadiologyOrder
) -> None:
    content = ct_for(PatientID=hospital_number(other_order), PatientName="Obi^Emeka")
    dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(content))

    response = stow(radtech, content, radiology_order_id=order.pk)

    assert response.status_code == 409
    assert response.json() == {
        "00081198": {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": [dataset.SOPClassUID]},
                    "00081155": {"vr": "UI", "Value": [dataset.SOPInstanceUID]},
                    "00081197": {"vr": "US", "Value": [DATA_SET_DOES_NOT_MATCH]},
                }
            ],
        },
        "00081199": {"vr": "SQ"},
    }
    assert row_counts() == (0, 0, 0)
    assert stored_keys() == []
    assert confirmations() == []


def test_stow_confirmed_with_a_reason_stores_it_under_the_order_records_and_audits_it(
    radtech: AbstractBaseUser, doctor: AbstractBaseUser, order: RadiologyOrder, other_order: RadiologyOrder
) -> None:
    content = ct_for(PatientID=hospital_number(other_order), PatientName="Obi^Emeka", PatientBirthDate="19700101")

    response = stow(
        radtech, content, radiology_order_id=order.pk, confirm_patient_mismatch="true", patient_mismatch_reason=REASON
    )

    assert response.status_code == 200
    image = RadiologyImage.objects.select_related("series__study").get()
    study = image.series.study
    assert study.radiology_order == order
    assert identity_columns(image) == ("confirmed_other_patient", hospital_number(other_order), "Obi^Emeka", REASON)
    assert confirmations() == [
        {
            "user__username": radtech.get_username(),
            "role": "radiology_tech",
            "channel": "dicomweb",
            "order_id": order.pk,
            "study_uid": study.study_uid,
            "image_uid": image.image_uid,
            "reason": REASON,
            "outcome": "allowed",
        }
    ]
    assert read_stored(image.file_key) == content  # the stored file is the original, byte for byte
    assert_every_reader_sees_the_order_patient(doctor, image, file_id=hospital_number(other_order))


def assert_every_reader_sees_the_order_patient(
    doctor: AbstractBaseUser, image: RadiologyImage, *, file_id: str
) -> None:
    """QIDO-RS, WADO-RS metadata and the images endpoint show the study's (the EMR's) patient;
    the file's own values are in the Original Attributes Sequence."""
    study = image.series.study
    client = token_client(doctor)
    found = client.get(f"{DICOMWEB}/studies", {"PatientID": study.patient_id}, headers={"Accept": "application/json"})
    assert [item["0020000D"]["Value"][0] for item in found.json()] == [study.study_uid]
    nothing = client.get(f"{DICOMWEB}/studies", {"PatientID": file_id}, headers={"Accept": "application/json"})
    assert (nothing.status_code, nothing.json()) == (200, [])  # the file's own id finds nothing
    [attributes] = found.json()
    assert attributes["00100010"] == person(study.patient_dicom_name)
    assert attributes["00100020"] == {"vr": "LO", "Value": [study.patient_id]}

    [metadata] = client.get(
        f"{DICOMWEB}/studies/{study.study_uid}/series/{image.series.series_uid}/instances/{image.image_uid}/metadata"
    ).json()
    assert metadata["00100010"] == person(study.patient_dicom_name)
    assert metadata["00100020"] == {"vr": "LO", "Value": [study.patient_id]}
    assert metadata["00100040"] == {"vr": "CS", "Value": [study.patient_sex]}
    [original] = metadata["04000561"]["Value"]
    file_identity = pydicom.dcmread(pydicom.filebase.DicomBytesIO(read_stored(image.file_key)))
    modified = original["04000550"]["Value"][0]
    assert modified["00100020"] == {"vr": "LO", "Value": [file_identity.PatientID]}
    assert modified["00100010"] == person(str(file_identity.PatientName))
    assert (original["04000563"], original["04000565"]) == (
        {"vr": "LO", "Value": ["PACS-lite"]},
        {"vr": "CS", "Value": ["COERCE"]},
    )

    images = client.get(f"/api/v1/radiology/studies/{study.pk}/images/").json()
    assert (images["patient_name"], images["patient_id"], images["patient_sex"]) == (
        study.patient_name,
        study.patient_id,
        study.patient_sex,
    )
    [item] = images["series"][0]["images"]
    assert item["patient_identity"] == {
        "check": image.patient_identity,
        "file_patient_id": image.file_patient_id,
        "file_patient_name": image.file_patient_name,
        "reason": image.patient_identity_reason,
    }


def test_a_confirmation_without_a_reason_is_refused_before_anything_is_stored(
    radtech: AbstractBaseUser, order: RadiologyOrder, other_order: RadiologyOrder
) -> None:
    content = ct_for(PatientID=hospital_number(other_order))
    response = stow(radtech, content, radiology_order_id=order.pk, confirm_patient_mismatch="true")
    assert response.status_code == 400
    assert response.json() == {"detail": MismatchReasonRequired.default_detail, "code": "mismatch_reason_required"}
    assert row_counts() == (0, 0, 0)
    assert stored_keys() == []


@pytest.mark.parametrize(
    ("patient_id", "check"),
    [("UNKNOWN-4471", "unknown_to_emr"), ("", "missing_in_file"), (None, "missing_in_file")],
)
def test_an_unknown_or_missing_patient_id_is_stored_with_the_discrepancy_recorded(
    radtech: AbstractBaseUser, doctor: AbstractBaseUser, order: RadiologyOrder, patient_id: str | None, check: str
) -> None:
    content = ct_for(PatientID=patient_id, PatientName="Doe^J")

    assert stow(radtech, content, radiology_order_id=order.pk).status_code == 200

    image = RadiologyImage.objects.select_related("series__study").get()
    assert identity_columns(image) == (check, patient_id or "", "Doe^J", "")
    assert confirmations() == []
    study = image.series.study
    [metadata] = (
        token_client(doctor)
        .get(
            f"{DICOMWEB}/studies/{study.study_uid}/series/{image.series.series_uid}/instances/{image.image_uid}/metadata"
        )
        .json()
    )
    assert metadata["00100020"] == {"vr": "LO", "Value": [hospital_number(order)]}
    modified = metadata["04000561"]["Value"][0]["04000550"]["Value"][0]
    expected_modified = {"00100010": person("Doe^J")}
    if patient_id is not None:  # an element the file did not have is not "modified"
        expected_modified["00100020"] = {"vr": "LO", "Value": [patient_id]} if patient_id else {"vr": "LO"}
    expected_modified["00100040"] = {"vr": "CS", "Value": ["O"]}  # CT_small.dcm's own PatientSex
    assert {tag: modified[tag] for tag in modified if tag != "00100030"} == expected_modified


def test_the_orders_own_patient_id_matches_and_only_the_name_spelling_is_kept_as_original(
    radtech: AbstractBaseUser, order: RadiologyOrder
) -> None:
    content = ct_for(PatientID=hospital_number(order), PatientName="BALOGUN^NGOZI", PatientSex="F")

    assert stow(radtech, content, radiology_order_id=order.pk).status_code == 200

    image = RadiologyImage.objects.get()
    assert identity_columns(image) == ("matched", hospital_number(order), "BALOGUN^NGOZI", "")
    [original] = image.image_metadata["04000561"]["Value"]
    assert set(original["04000550"]["Value"][0]) == {"00100010"}  # not the id, not the sex
    assert image.image_metadata["00100010"] == person("Balogun^Ngozi")


def test_a_photo_carries_no_identity_to_compare(radtech: AbstractBaseUser, order: RadiologyOrder) -> None:
    from apps.radiology.operations.demo import jpeg_with_exif

    photo = jpeg_with_exif()
    device_file = DeviceFile("film.jpg", photo, mime_type="image/jpeg")
    client = client_for(radtech)
    upload = post_upload(client, metadata(order, device_file)).json()
    assert put_whole(client, upload["id"], photo).status_code == 201
    assert identity_columns(RadiologyImage.objects.get()) == ("not_applicable", "", "", "")


# --- Offline upload sync ----------------------------------------------------------------------


def test_an_upload_naming_another_patient_fails_with_patient_mismatch_and_stores_nothing(
    radtech: AbstractBaseUser, order: RadiologyOrder, other_order: RadiologyOrder
) -> None:
    content = ct_for(PatientID=hospital_number(other_order))
    client = client_for(radtech)
    upload = post_upload(client, metadata(order, DeviceFile("ct.dcm", content))).json()

    response = put_whole(client, upload["id"], content)

    assert response.status_code == 409
    assert response.json() == {"detail": PatientMismatch.default_detail, "code": "patient_mismatch"}
    row = RadiologyUpload.objects.get()
    assert (row.status, row.error_code, row.image_id) == ("failed", "patient_mismatch", None)
    assert row_counts() == (0, 0, 0)
    assert [key for key in stored_keys() if not key.startswith("staging/")] == []


def test_an_upload_confirmed_by_the_tech_is_stored_recorded_and_audited(
    radtech: AbstractBaseUser, doctor: AbstractBaseUser, order: RadiologyOrder, other_order: RadiologyOrder
) -> None:
    content = ct_for(PatientID=hospital_number(other_order), PatientName="Obi^Emeka")
    client = client_for(radtech)
    payload = metadata(
        order, DeviceFile("ct.dcm", content), confirm_patient_mismatch=True, patient_mismatch_reason=REASON
    )
    upload = post_upload(client, payload).json()

    assert put_whole(client, upload["id"], content).status_code == 201

    image = RadiologyImage.objects.select_related("series__study").get()
    assert identity_columns(image) == ("confirmed_other_patient", hospital_number(other_order), "Obi^Emeka", REASON)
    assert RadiologyUpload.objects.get().patient_mismatch_reason == REASON
    [event] = confirmations()
    assert (event["channel"], event["reason"], event["image_uid"]) == ("api", REASON, image.image_uid)
    assert_every_reader_sees_the_order_patient(doctor, image, file_id=hospital_number(other_order))


def test_an_upload_confirming_without_a_reason_is_a_validation_error(
    radtech: AbstractBaseUser, order: RadiologyOrder
) -> None:
    content = ct_for()
    response = post_upload(
        client_for(radtech), metadata(order, DeviceFile("ct.dcm", content), confirm_patient_mismatch=True)
    )
    assert response.status_code == 400
    body = response.json()
    assert (body["code"], body["errors"]) == (
        "invalid",
        {
            "patient_mismatch_reason": [
                {"message": "A reason is required to confirm a patient mismatch.", "code": "invalid"}
            ]
        },
    )
    assert RadiologyUpload.objects.count() == 0


# --- Bulk import ------------------------------------------------------------------------------


def test_an_import_into_an_order_refuses_a_file_naming_another_patient_unless_a_tech_confirms(
    radtech: AbstractBaseUser, order: RadiologyOrder, other_order: RadiologyOrder, tmp_path: Path
) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    content = ct_for(PatientID=hospital_number(other_order))
    (folder / "wrong.dcm").write_bytes(content)

    with pytest.raises(CommandError, match="1 file"):
        call_command("import_radiology", str(folder), "--order", str(order.pk), "--no-progress", stdout=_Sink())
    assert row_counts() == (0, 0, 0)
    with pytest.raises(CommandError, match="needs --user"):
        call_command("import_radiology", str(folder), "--order", str(order.pk), "--confirm-patient-mismatch", REASON)

    call_command(
        "import_radiology",
        str(folder),
        "--order",
        str(order.pk),
        "--user",
        radtech.get_username(),
        "--confirm-patient-mismatch",
        REASON,
        "--no-progress",
        stdout=_Sink(),
    )

    image = RadiologyImage.objects.get()
    assert identity_columns(image) == (
        "confirmed_other_patient",
        hospital_number(other_order),
        "CompressedSamples^CT1",
        REASON,
    )
    [event] = confirmations()
    assert (event["channel"], event["user__username"], event["reason"]) == ("import", radtech.get_username(), REASON)
    assert RadiologyStudy.objects.get().patient_id == hospital_number(order)


class _Sink:
    """A stdout that keeps nothing (the command's report is tested in test_bulk_import.py)."""

    def write(self, _text: str) -> None:
        return None

    def flush(self) -> None:
        return None
