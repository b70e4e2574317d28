"""Data migrations: rows stored before a migration end up as ingest writes them now."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.management import call_command

from apps.radiology.imagefiles.stored_header import metadata_text
from apps.radiology.models import RadiologyImage
from apps.radiology.tests.trust_helpers import ingest_study


@pytest.mark.django_db(transaction=True)
def test_0006_writes_the_metadata_text_of_images_stored_before_it(make_order: Any) -> None:
    stored = ingest_study(make_order(), images=3)
    written_by_ingest = {image.pk: metadata_text(image) for image in stored.images}
    try:
        call_command("migrate", "radiology", "0005", verbosity=0)  # the column goes, the rows stay
        call_command("migrate", "radiology", verbosity=0)
    finally:
        call_command("migrate", verbosity=0)  # whatever happened, the schema (and triggers) as before

    after = dict(RadiologyImage.objects.values_list("pk", "metadata_text"))
    assert after == written_by_ingest
    assert all(text.startswith('{"00020001"') or text.startswith('{"0008') for text in after.values())


@pytest.mark.django_db
def test_0008_keeps_the_pixel_header_beside_the_frames_of_rows_stored_without_it(make_order: Any) -> None:
    import importlib

    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    from apps.radiology.imagefiles.stored_header import pixel_header_of

    migration = importlib.import_module("apps.radiology.migrations.0008_pixel_header_with_frames")
    stored = ingest_study(make_order(), images=2)
    as_ingested = {image.pk: image.pixel_data for image in stored.images}
    table = RadiologyImage._meta.db_table
    with connection.cursor() as cursor:  # as rows stored before 0008 were (the model refuses updates)
        for image in stored.images:
            without = {key: value for key, value in image.pixel_data.items() if key != "header"}
            cursor.execute(f"UPDATE {table} SET pixel_data = %s WHERE id = %s", [json.dumps(without), image.pk])  # noqa: S608

    # Run as the migration runs: on the historical model (a plain manager, no write-once checks).
    historical = MigrationExecutor(connection).loader.project_state(("radiology", "0007_image_metadata_storage")).apps
    migration.keep_pixel_header(historical, None)

    after = {image.pk: image.pixel_data for image in RadiologyImage.objects.all()}
    assert after == as_ingested
    assert all(
        data["header"] == pixel_header_of(image.image_metadata) for image in stored.images for data in [after[image.pk]]
    )
    assert after[stored.image.pk]["header"]["00280100"] == {"vr": "US", "Value": [16]}


@pytest.mark.django_db
def test_0013_gives_rows_stored_before_it_the_emr_identity_and_keeps_the_files_own(
    make_order: Any, tmp_path: Any
) -> None:
    import importlib

    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    from apps.radiology.tests.factories import pydicom_json_without_bulk, read_stored, served_json

    migration = importlib.import_module("apps.radiology.migrations.0013_patient_identity_and_unmatched")
    stored = ingest_study(make_order(), images=2)
    table = RadiologyImage._meta.db_table
    file_headers = {}
    with connection.cursor() as cursor:  # as rows stored before 0013 were: the file's own identity
        for image in stored.images:
            path = tmp_path / f"{image.pk}.dcm"
            path.write_bytes(read_stored(image.file_key))
            file_headers[image.pk] = own = pydicom_json_without_bulk(path)
            old_text = metadata_text(
                RadiologyImage(
                    mime_type=image.mime_type,
                    image_metadata=own,
                    pixel_data=image.pixel_data,
                    bulk_data=image.bulk_data,
                )
            )
            cursor.execute(
                f"UPDATE {table} SET image_metadata = %s, metadata_text = %s, patient_identity = 'not_checked', "  # noqa: S608
                "file_patient_id = '', file_patient_name = '' WHERE id = %s",
                [json.dumps(own), old_text, image.pk],
            )

    historical = (
        MigrationExecutor(connection).loader.project_state(("radiology", "0013_patient_identity_and_unmatched")).apps
    )
    migration.serve_emr_identity(historical, None)

    for image in RadiologyImage.objects.select_related("series__study"):
        own = file_headers[image.pk]
        assert image.image_metadata == served_json(own, image.series.study, image.image_metadata)
        assert image.image_metadata["00100020"] == {"vr": "LO", "Value": [image.series.study.patient_id]}
        assert image.metadata_text == metadata_text(image)
        assert (image.patient_identity, image.file_patient_id, image.file_patient_name) == (
            "not_checked",
            own["00100020"]["Value"][0],
            own["00100010"]["Value"][0]["Alphabetic"],
        )
