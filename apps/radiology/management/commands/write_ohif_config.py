"""Write the OHIF viewer's app-config.js from the settings into the installed dist."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.radiology.viewers.ohif import write_app_config


class Command(BaseCommand):
    help = "Write OHIF_DIST_DIR/app-config.js (one DICOMweb data source: this PACS-lite)."

    def handle(self, *args: Any, **options: Any) -> None:
        if not (settings.OHIF_DIST_DIR / "index.html").is_file():
            raise CommandError(f"No OHIF dist in {settings.OHIF_DIST_DIR}: run `make viewer` first.")
        path = write_app_config()
        self.stdout.write(f"Wrote {path}")
