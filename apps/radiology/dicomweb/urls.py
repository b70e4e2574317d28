"""DICOMweb routes (included under /api/v1/radiology/dicomweb/). UIDs are digits and dots."""

from django.urls import path, register_converter

from . import views


class UIDConverter:
    regex = r"[0-9][0-9.]{0,63}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(UIDConverter, "uid")

STUDY = "studies/<uid:study_uid>"
SERIES = f"{STUDY}/series/<uid:series_uid>"
INSTANCE = f"{SERIES}/instances/<uid:image_uid>"

urlpatterns = [
    # What OHIF asks for hundreds of times per study first: Django tries the patterns in order, and
    # a frame's path was the 18th (~46 us to resolve, in-process). None of them overlap (each
    # matches a whole path), so the order changes nothing else.
    path(f"{INSTANCE}/frames/<str:frames>", views.FramesView.as_view(), name="dicomweb-frames"),
    path(f"{INSTANCE}/rendered", views.InstanceRenderedView.as_view(), name="dicomweb-instance-rendered"),
    path(f"{INSTANCE}/thumbnail", views.InstanceThumbnailView.as_view(), name="dicomweb-instance-thumbnail"),
    path(f"{INSTANCE}/frames/<str:frames>/rendered", views.FrameRenderedView.as_view(), name="dicomweb-frame-rendered"),
    path(f"{SERIES}/metadata", views.SeriesMetadataView.as_view(), name="dicomweb-series-metadata"),
    path(f"{INSTANCE}/metadata", views.InstanceMetadataView.as_view(), name="dicomweb-instance-metadata"),
    path("", views.DicomWebRoot.as_view(), name="dicomweb-root"),
    path("studies", views.StudiesView.as_view(), name="dicomweb-studies"),
    path("series", views.SeriesSearchView.as_view(), name="dicomweb-series-search"),
    path("instances", views.InstancesSearchView.as_view(), name="dicomweb-instances-search"),
    path(STUDY, views.StudyView.as_view(), name="dicomweb-study"),
    path(f"{STUDY}/metadata", views.StudyMetadataView.as_view(), name="dicomweb-study-metadata"),
    path(f"{STUDY}/series", views.StudySeriesSearchView.as_view(), name="dicomweb-study-series"),
    path(f"{STUDY}/instances", views.StudyInstancesSearchView.as_view(), name="dicomweb-study-instances"),
    path(SERIES, views.SeriesView.as_view(), name="dicomweb-series"),
    path(f"{SERIES}/instances", views.SeriesInstancesSearchView.as_view(), name="dicomweb-series-instances"),
    path(f"{SERIES}/rendered", views.SeriesRenderedView.as_view(), name="dicomweb-series-rendered"),
    path(f"{SERIES}/thumbnail", views.SeriesThumbnailView.as_view(), name="dicomweb-series-thumbnail"),
    path(INSTANCE, views.InstanceView.as_view(), name="dicomweb-instance"),
    path(f"{INSTANCE}/bulk/<str:tag>", views.BulkDataView.as_view(), name="dicomweb-bulk"),
]
