"""Top-level routes. MEDIA_URL is deliberately not routed: radiology files are served
only through signed, expiring URLs."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/radiology/", include("apps.radiology.urls")),
]
