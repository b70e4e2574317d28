"""RadiologyImage.metadata_text: each DICOM instance's WADO-RS metadata, written once as text.

Rows stored before this migration get theirs here, from the same stored header and file
locations ingest now uses, so every DICOM row has it and no request falls back.
"""

import json
from typing import Any

from django.db import migrations, models

DICOM_MIME_TYPE = "application/dicom"
PIXEL_DATA = "7FE00010"


def relative_metadata(image: Any) -> str:
    # The historical model has no methods: the same text as dicom_json.metadata_text, written
    # out here so this migration keeps meaning what it meant if that code changes later.
    metadata = dict(image.image_metadata)
    for tag, location in (image.bulk_data or {}).items():
        metadata[tag] = {"vr": location["vr"], "BulkDataURI": f"/bulk/{tag}"}
    if image.pixel_data:
        metadata[PIXEL_DATA] = {"vr": image.pixel_data.get("vr", "OB"), "BulkDataURI": f"/bulk/{PIXEL_DATA}"}
    return json.dumps(dict(sorted(metadata.items())), separators=(",", ":"))


def fill_metadata_text(apps: Any, schema_editor: Any) -> None:
    images = apps.get_model("radiology", "RadiologyImage")
    pending = images.objects.filter(mime_type=DICOM_MIME_TYPE, metadata_text="").order_by("pk")
    while batch := list(pending.only("pk", "image_metadata", "bulk_data", "pixel_data")[:500]):
        for image in batch:
            image.metadata_text = relative_metadata(image)
        images.objects.bulk_update(batch, ["metadata_text"])


class Migration(migrations.Migration):
    dependencies = [
        ("radiology", "0005_audit_events"),
    ]

    operations = [
        migrations.AddField(
            model_name="radiologyimage",
            name="metadata_text",
            field=models.TextField(blank=True, default="", editable=False),
        ),
        migrations.RunPython(fill_metadata_text, migrations.RunPython.noop),
    ]
