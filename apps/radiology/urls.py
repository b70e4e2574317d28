"""Routes under /api/v1/radiology/."""

from django.urls import path

from apps.radiology import file_views

app_name = "radiology"

urlpatterns = [
    path("files/<int:image_id>/<str:filename>", file_views.signed_image, name="signed-image"),
]
