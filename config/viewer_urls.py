"""URLs of the viewer's own origin (VIEWER_PORT): the OHIF dist at "/", DICOMweb beside it.

Selected with PACS_ROOT_URLCONF=config.viewer_urls (see the Makefile's `run`).
"""

from django.urls import include, path, re_path

from apps.radiology import ohif

urlpatterns = [
    path("app-config.js", ohif.app_config, name="ohif-app-config"),
    path("api/v1/radiology/", include("apps.radiology.urls")),
    re_path(r"^(?P<path>.*)$", ohif.dist_file, name="ohif-dist"),
]
