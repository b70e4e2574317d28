from django.apps import AppConfig


class EmrConfig(AppConfig):
    """The host EMR's own records. PACS-lite links to them but does not own them."""

    name = "apps.emr"
    label = "emr"
    verbose_name = "EMR"
