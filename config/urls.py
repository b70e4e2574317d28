"""Top-level routes. MEDIA_URL is deliberately not routed: radiology files are served
only through signed, expiring URLs."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.radiology.api.views import ObtainTokenView
from apps.radiology.operations.health import healthz

# Django's own 400/403/404/500 as {"detail", "code"} JSON under /api/ (config/http_errors.py).
handler400 = "config.http_errors.bad_request"
handler403 = "config.http_errors.permission_denied"
handler404 = "config.http_errors.page_not_found"
handler500 = "config.http_errors.server_error"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/v1/auth/token/", ObtainTokenView.as_view(), name="api-token"),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # No OPTIONS metadata: rendered through the Swagger UI template it is a 500, not an answer.
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="api-schema", metadata_class=None), name="api-docs"),
    path("api/v1/radiology/", include("apps.radiology.urls")),
    # The front door for people: `/`, sign in/out, the study list (apps/radiology/frontdoor/).
    path("", include("apps.radiology.frontdoor.urls")),
]
