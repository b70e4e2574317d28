"""pixel_data["header"]: the dozen header elements decoding and display read, beside the frames.

A render then reads them with the image row it loads anyway. Rows stored before this
migration get them here from their stored header (the same elements ingest now keeps).
"""

from typing import Any

from django.db import migrations

PIXEL_HEADER_TAGS = (  # as apps.radiology.imagefiles.dicom.PIXEL_HEADER_TAGS when this was written
    "00280002",
    "00280004",
    "00280006",
    "00280010",
    "00280011",
    "00280100",
    "00280101",
    "00280103",
    "00281050",
    "00281051",
    "00281052",
    "00281053",
)
DICOM_MIME_TYPE = "application/dicom"


def keep_pixel_header(apps: Any, schema_editor: Any) -> None:
    images = apps.get_model("radiology", "RadiologyImage")
    pending = images.objects.filter(mime_type=DICOM_MIME_TYPE).order_by("pk").only("pk", "image_metadata", "pixel_data")
    last = 0
    while batch := list(pending.filter(pk__gt=last)[:500]):
        changed = []
        for image in batch:
            if image.pixel_data and "header" not in image.pixel_data:
                metadata = image.image_metadata or {}
                image.pixel_data = {
                    **image.pixel_data,
                    "header": {tag: metadata[tag] for tag in PIXEL_HEADER_TAGS if tag in metadata},
                }
                changed.append(image)
        images.objects.bulk_update(changed, ["pixel_data"])
        last = batch[-1].pk


class Migration(migrations.Migration):
    dependencies = [
        ("radiology", "0007_image_metadata_storage"),
    ]

    operations = [migrations.RunPython(keep_pixel_header, migrations.RunPython.noop)]
