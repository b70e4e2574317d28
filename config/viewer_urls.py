"""URLs of the viewer's own origin (VIEWER_PORT): the OHIF dist at "/", DICOMweb beside it.

Selected by config/viewer_origin.py for a request that nginx on the viewer's origin marks as its own
(`make run`'s config/front_proxy.py, docker compose's deploy/nginx.conf).

Only what the viewers use is routed here (issue 14): OHIF's files and app-config.js, DICOMweb,
the lite viewer page and what that page calls (its image-url endpoint and the signed file
URLs it hands out). The REST API, the token endpoint, the admin, the schema and the docs are
not: they answer 404 on this port, so a page or a script on the viewer's origin cannot reach
them, and the OHIF fallback to index.html does not answer for them either.
"""

from django.urls import include, path, re_path

from apps.radiology.api import file_views
from apps.radiology.viewers import lite_viewer, ohif

# The same names as apps/radiology/urls.py, in the same "radiology" namespace, so reverse()
# in DICOMweb, the lite viewer and signing gives the same paths on this port.
viewer_radiology_patterns = (
    [
        path("files/<int:image_id>/<str:filename>", file_views.signed_image, name="signed-image"),
        path("dicomweb/", include("apps.radiology.dicomweb.urls")),
        path("viewer/", lite_viewer.lite_viewer, name="lite-viewer"),
        path("viewer/image-url/", lite_viewer.ImageDownloadUrlView.as_view(), name="lite-viewer-image-url"),
    ],
    "radiology",
)

# Django's own 400/403/404/500 as {"detail", "code"} JSON under /api/ (config/http_errors.py).
handler400 = "config.http_errors.bad_request"
handler403 = "config.http_errors.permission_denied"
handler404 = "config.http_errors.page_not_found"
handler500 = "config.http_errors.server_error"

urlpatterns = [
    path("app-config.js", ohif.app_config, name="ohif-app-config"),
    path("api/v1/radiology/", include(viewer_radiology_patterns)),
    # Client routes of OHIF (/viewer?...) fall back to index.html; never for the app's own
    # prefixes, which answer 404 here instead of an HTML page with status 200.
    re_path(r"^(?!api/|admin/|static/|healthz(?:/|$))(?P<path>.*)$", ohif.dist_file, name="ohif-dist"),
]
