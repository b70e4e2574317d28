from django.apps import AppConfig


class RadiologyConfig(AppConfig):
    """PACS-lite: stores DICOM and JPEG images by Study / Series / Image and hands out signed URLs."""

    name = "apps.radiology"
    label = "radiology"
    verbose_name = "Radiology (PACS-lite)"
