"""The host EMR's Patient and Visit: names as shown and in DICOM form, and protected history."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError

from apps.emr.models import Patient, Visit


def _patient(**overrides: object) -> Patient:
    fields: dict[str, object] = {"hospital_number": "H-00001", "first_name": "Ngozi", "last_name": "Balogun"}
    fields.update(overrides)
    return Patient.objects.create(**fields)


@pytest.mark.django_db
def test_patient_names() -> None:
    patient = _patient()
    assert patient.full_name == "Ngozi Balogun"
    assert patient.dicom_name == "Balogun^Ngozi"
    assert str(patient) == "H-00001"


@pytest.mark.django_db
def test_full_name_without_a_first_name_has_no_stray_space() -> None:
    assert _patient(first_name="").full_name == "Balogun"


@pytest.mark.django_db
def test_hospital_number_is_unique() -> None:
    _patient()
    with pytest.raises(IntegrityError), transaction.atomic():
        _patient(first_name="Other")
    assert Patient.objects.count() == 1


@pytest.mark.django_db
def test_a_patient_with_visits_cannot_be_deleted() -> None:
    patient = _patient()
    visit = Visit.objects.create(patient=patient, visit_date=dt.date(2026, 1, 15), reason="Cough")
    with pytest.raises(ProtectedError):
        patient.delete()
    assert str(visit) == f"Visit {visit.pk} of {patient.pk}"


@pytest.mark.django_db
def test_visits_list_newest_first() -> None:
    patient = _patient()
    older = Visit.objects.create(patient=patient, visit_date=dt.date(2026, 1, 1))
    newer = Visit.objects.create(patient=patient, visit_date=dt.date(2026, 2, 1))
    assert list(patient.visits.all()) == [newer, older]
