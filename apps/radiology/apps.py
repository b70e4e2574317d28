from django.apps import AppConfig


class RadiologyConfig(AppConfig):
    """PACS-lite: stores DICOM and JPEG images by Study / Series / Image and hands out signed URLs."""

    name = "apps.radiology"
    label = "radiology"
    verbose_name = "Radiology (PACS-lite)"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from apps.radiology.access import checks  # noqa: F401 (registers the system checks)
        from apps.radiology.db_triggers import ensure_immutability_triggers
        from apps.radiology.dicomweb.metadata_warming import note_series
        from apps.radiology.ingest.signals import images_committed

        post_migrate.connect(ensure_immutability_triggers, sender=self)
        # A big series' metadata is built ahead once it stops growing (ingest cannot call up to dicomweb).
        images_committed.connect(note_series, dispatch_uid="radiology-metadata-prebuild")
