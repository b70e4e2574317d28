"""Data migrations: rows stored before a migration end up as ingest writes them now."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command

from apps.radiology.dicomweb.dicom_json import metadata_text
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
