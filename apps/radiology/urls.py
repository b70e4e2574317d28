"""Routes under /api/v1/radiology/."""

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from apps.radiology.api import file_views, forwarded_views, upload_views, views
from apps.radiology.viewers import lite_viewer

app_name = "radiology"

router = SimpleRouter()
router.register("studies", views.StudyViewSet, basename="study")
router.register("images", views.ImageViewSet, basename="image")
router.register("uploads", upload_views.UploadViewSet, basename="upload")

urlpatterns = [
    path("files/<int:image_id>/<str:filename>", file_views.signed_image, name="signed-image"),
    path("dicomweb/", include("apps.radiology.dicomweb.urls")),
    path("viewer/", lite_viewer.lite_viewer, name="lite-viewer"),
    path("viewer/image-url/", lite_viewer.ImageDownloadUrlView.as_view(), name="lite-viewer-image-url"),
    path("forwarded/<uid:study_uid>/", forwarded_views.ForwardedStudyView.as_view(), name="forwarded-study"),
    *router.urls,
]
