"""apps.radiology.models: immutability (model, queryset and database trigger), PROTECT, uniqueness.

The raw-SQL tests run on whichever database DATABASE_URL names: SQLite by default and
PostgreSQL in CI's second run; both have the trigger of migration 0002.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import ProtectedError

from apps.radiology.errors import ImmutableImage
from apps.radiology.models import (
    DICOM_MIME_TYPE,
    RadiologyImage,
    RadiologyOrder,
    RadiologySeries,
    RadiologyStudy,
    generate_accession_number,
)
from apps.radiology.operations.demo import jpeg_with_exif
from apps.radiology.pacs_lite_service import DeclaredImage, PACSLiteService
from apps.radiology.tests.conftest import IngestFile, MakeOrder
from apps.radiology.tests.factories import read_stored, row_counts, sample_bytes, stored_keys

TABLE = RadiologyImage._meta.db_table


@pytest.fixture
def image(order: RadiologyOrder, ingest_file: IngestFile) -> RadiologyImage:
    return ingest_file(order, "CT_small.dcm").image


def _assert_unchanged(image: RadiologyImage) -> None:
    stored = RadiologyImage.objects.get(pk=image.pk)
    assert stored.checksum == image.checksum
    assert stored.file_key == image.file_key
    assert stored.file_size == image.file_size
    assert stored.image_uid == image.image_uid
    assert stored.series_id == image.series_id


# --- immutability in the ORM ----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("checksum", "0" * 64),
        ("file_key", "radiology/elsewhere.dcm"),
        ("file_size", 1),
        ("image_uid", "1.2.3"),
        ("filename", "renamed.dcm"),
        ("image_metadata", {}),
    ],
)
def test_saving_a_changed_image_is_refused(image: RadiologyImage, field: str, value: Any) -> None:
    setattr(image, field, value)

    with pytest.raises(ImmutableImage) as excinfo:
        image.save()

    assert excinfo.value.code == "image_immutable"
    assert excinfo.value.status_code == 409
    _assert_unchanged(RadiologyImage.objects.get(pk=image.pk))
    assert RadiologyImage.objects.get(pk=image.pk).filename == "CT_small.dcm"


@pytest.mark.django_db
def test_queryset_update_and_delete_are_refused(image: RadiologyImage) -> None:
    with pytest.raises(ImmutableImage):
        RadiologyImage.objects.filter(pk=image.pk).update(checksum="0" * 64)
    with pytest.raises(ImmutableImage):
        RadiologyImage.objects.all().update(filename="x.dcm")
    with pytest.raises(ImmutableImage):
        RadiologyImage.objects.filter(pk=image.pk).delete()
    with pytest.raises(ImmutableImage):
        RadiologyImage.objects.all().delete()
    image.checksum = "0" * 64
    with pytest.raises(ImmutableImage), transaction.atomic():
        RadiologyImage.objects.bulk_update([image], ["checksum"])
    with pytest.raises(ImmutableImage):
        image.series.images.all().delete()

    image.refresh_from_db()
    _assert_unchanged(image)
    assert row_counts() == (1, 1, 1)


@pytest.mark.django_db
def test_instance_delete_is_refused_and_the_file_stays(radiology_store: str, image: RadiologyImage) -> None:
    with pytest.raises(ImmutableImage) as excinfo:
        image.delete()

    assert excinfo.value.code == "image_immutable"
    assert RadiologyImage.objects.filter(pk=image.pk).exists()
    assert stored_keys() == [image.file_key]
    assert read_stored(image.file_key) == sample_bytes("CT_small.dcm")


# --- immutability in the database -----------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("checksum", "0" * 64),
        ("file_key", "radiology/elsewhere.dcm"),
        ("file_size", 1),
        ("image_uid", "1.2.3"),
    ],
)
def test_raw_sql_update_of_an_identifying_column_is_refused_by_the_trigger(
    image: RadiologyImage, column: str, value: Any
) -> None:
    with pytest.raises(IntegrityError, match="radiology images are immutable"):  # noqa: SIM117
        # The savepoint lets PostgreSQL go on after the error inside the test's transaction.
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"UPDATE {TABLE} SET {column} = %s WHERE id = %s", [value, image.pk])  # noqa: S608

    _assert_unchanged(image)


@pytest.mark.django_db
def test_raw_sql_update_moving_an_image_to_another_series_is_refused(
    image: RadiologyImage, ingest_file: IngestFile
) -> None:
    study_uid = image.series.study.study_uid
    other = ingest_file(
        image.series.study.radiology_order,
        jpeg_with_exif(),
        declared=DeclaredImage(study_uid=study_uid, series_uid=f"{study_uid}.99"),
    ).image

    with pytest.raises(IntegrityError):  # noqa: SIM117
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"UPDATE {TABLE} SET series_id = %s WHERE id = %s", [other.series_id, image.pk])  # noqa: S608

    _assert_unchanged(image)


@pytest.mark.django_db
def test_raw_sql_update_of_descriptive_columns_is_allowed(image: RadiologyImage) -> None:
    """The trigger guards what identifies the file, not every column."""
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET filename = %s WHERE id = %s", ["renamed.dcm", image.pk])  # noqa: S608

    assert RadiologyImage.objects.get(pk=image.pk).filename == "renamed.dcm"
    _assert_unchanged(image)


# --- PROTECT: nothing cascades into images ----------------------------------------------------------


@pytest.mark.django_db
def test_deleting_a_series_with_images_is_refused(image: RadiologyImage) -> None:
    with pytest.raises(ProtectedError):
        image.series.delete()
    with pytest.raises(ProtectedError):
        RadiologySeries.objects.all().delete()
    assert row_counts() == (1, 1, 1)


@pytest.mark.django_db
def test_deleting_a_study_or_its_order_or_patient_is_refused(image: RadiologyImage) -> None:
    study = image.series.study
    order = study.radiology_order
    with pytest.raises(ProtectedError):
        study.delete()
    with pytest.raises(ProtectedError):
        order.delete()
    with pytest.raises(ProtectedError):
        order.visit.patient.delete()
    with pytest.raises(ProtectedError):
        order.visit.delete()
    assert row_counts() == (1, 1, 1)
    assert RadiologyOrder.objects.filter(pk=order.pk).exists()


@pytest.mark.django_db
def test_deleting_the_uploader_is_refused(order: RadiologyOrder, ingest_file: IngestFile, radtech: Any) -> None:
    ingest_file(order, "CT_small.dcm", user=radtech)
    with pytest.raises(ProtectedError):
        radtech.delete()
    assert RadiologyImage.objects.get().uploaded_by == radtech


# --- uniqueness -------------------------------------------------------------------------------------


def _image_row(series: RadiologySeries, **overrides: Any) -> RadiologyImage:
    fields: dict[str, Any] = {
        "series": series,
        "image_uid": "1.2.3.4.5",
        "file_key": "radiology/a.dcm",
        "filename": "a.dcm",
        "file_size": 10,
        "mime_type": DICOM_MIME_TYPE,
        "checksum": "a" * 64,
    }
    fields.update(overrides)
    return RadiologyImage.objects.create(**fields)


@pytest.mark.django_db
def test_study_uid_is_unique(make_order: MakeOrder) -> None:
    RadiologyStudy.objects.create(radiology_order=make_order(), study_uid="1.2.3")
    with pytest.raises(IntegrityError), transaction.atomic():
        RadiologyStudy.objects.create(radiology_order=make_order(), study_uid="1.2.3")
    assert RadiologyStudy.objects.count() == 1


@pytest.mark.django_db
def test_one_study_per_order(order: RadiologyOrder) -> None:
    RadiologyStudy.objects.create(radiology_order=order, study_uid="1.2.3")
    with pytest.raises(IntegrityError), transaction.atomic():
        RadiologyStudy.objects.create(radiology_order=order, study_uid="1.2.4")
    assert RadiologyStudy.objects.count() == 1
    assert RadiologyStudy.objects.get(radiology_order=order).study_uid == "1.2.3"


@pytest.mark.django_db
def test_series_uid_is_unique(make_order: MakeOrder) -> None:
    first = RadiologyStudy.objects.create(radiology_order=make_order(), study_uid="1.2.3")
    second = RadiologyStudy.objects.create(radiology_order=make_order(), study_uid="1.2.4")
    RadiologySeries.objects.create(study=first, series_uid="1.2.3.1")
    with pytest.raises(IntegrityError), transaction.atomic():
        RadiologySeries.objects.create(study=second, series_uid="1.2.3.1")
    assert RadiologySeries.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"file_key": "radiology/b.dcm"}, id="same-image-uid"),
        pytest.param({"image_uid": "1.2.3.4.6"}, id="same-file-key"),
    ],
)
def test_image_uid_and_file_key_are_unique(order: RadiologyOrder, overrides: dict[str, Any]) -> None:
    study = RadiologyStudy.objects.create(radiology_order=order, study_uid="1.2.3")
    series = RadiologySeries.objects.create(study=study, series_uid="1.2.3.1")
    _image_row(series)
    with pytest.raises(IntegrityError), transaction.atomic():
        _image_row(series, **overrides)
    assert RadiologyImage.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"file_size": 0}, id="empty-file"),
        pytest.param({"mime_type": "image/png"}, id="unknown-mime-type"),
    ],
)
def test_image_check_constraints(order: RadiologyOrder, overrides: dict[str, Any]) -> None:
    study = RadiologyStudy.objects.create(radiology_order=order, study_uid="1.2.3")
    series = RadiologySeries.objects.create(study=study, series_uid="1.2.3.1")
    with pytest.raises(IntegrityError), transaction.atomic():
        _image_row(series, **overrides)
    assert RadiologyImage.objects.count() == 0


@pytest.mark.django_db
def test_accession_numbers_fit_dicom_sh_and_are_unique(make_order: MakeOrder) -> None:
    numbers = {generate_accession_number() for _ in range(500)}
    assert len(numbers) == 500
    assert all(re.fullmatch(r"R[0-9A-F]{12}", number) for number in numbers)
    first, second = make_order(), make_order()
    assert first.accession_number != second.accession_number
    second.accession_number = first.accession_number
    with pytest.raises(IntegrityError), transaction.atomic():
        second.save()


# --- small things ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_str_and_properties(image: RadiologyImage) -> None:
    series = image.series
    study = series.study
    order = study.radiology_order
    assert str(image) == image.image_uid
    assert str(series) == series.series_uid
    assert str(study) == study.study_uid
    assert str(order) == f"Order {order.pk} (CT CT Head without contrast)"
    assert image.is_dicom is True
    assert order.status == RadiologyOrder.Status.ORDERED


@pytest.mark.django_db
def test_orders_and_studies_list_newest_first(make_order: MakeOrder) -> None:
    first, second = make_order(), make_order()
    PACSLiteService.create_study_for_order(radiology_order=first)
    PACSLiteService.create_study_for_order(radiology_order=second)
    assert list(RadiologyOrder.objects.all()) == [second, first]  # newest first
    assert [s.radiology_order for s in RadiologyStudy.objects.all()] == [second, first]
