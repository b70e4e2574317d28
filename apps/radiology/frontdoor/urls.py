"""The front door's routes at the root of the API port (config/urls.py includes them).

`/`, `/sign-in/` and `/sign-out/` show no clinical data. Everything that does is under
`/radiology/`, the prefix the audit trail records.
"""

from django.contrib.auth.views import LogoutView
from django.urls import path

from apps.radiology.frontdoor import views

app_name = "frontdoor"

urlpatterns = [
    path("", views.home, name="home"),
    path("sign-in/", views.SignInView.as_view(), name="sign-in"),
    path("sign-out/", LogoutView.as_view(next_page="frontdoor:home"), name="sign-out"),
    path("radiology/studies/", views.studies, name="studies"),
    path("radiology/studies/search/", views.search_studies, name="search"),
    path("radiology/studies/<int:study_id>/ohif/", views.open_in_ohif, name="open-ohif"),
    path("radiology/studies/<int:study_id>/lite/", views.open_in_lite_viewer, name="open-lite"),
    path("radiology/studies/<int:study_id>/forward/", views.forward_study, name="forward"),
    path("radiology/uploads/failed/", views.failed_uploads_page, name="failed-uploads"),
]
