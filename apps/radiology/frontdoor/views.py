"""The front door's pages: thin views over search.py, tech.py and access/signing.py."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.views import LoginView
from django.core.paginator import Page, Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect
from django.urls import reverse, reverse_lazy
from django.views.decorators.http import require_POST, require_safe

from apps.radiology.access import signing
from apps.radiology.access.permissions import can_upload_radiology
from apps.radiology.access.principals import principal_of
from apps.radiology.access.visible import visible_studies
from apps.radiology.errors import UnknownForwardDestination
from apps.radiology.frontdoor.pages import page_context, people_page, refused, render_page, with_page_headers
from apps.radiology.frontdoor.search import SESSION_KEY, StudySearch, StudySearchForm, matching_studies
from apps.radiology.frontdoor.tech import failed_uploads, tech_attention
from apps.radiology.models import RadiologyStudy
from apps.radiology.outbox.destinations import configured_destinations
from apps.radiology.outbox.record import send_study

STUDIES_PER_PAGE = 25
FAILED_UPLOADS_PER_PAGE = 25
STUDIES_TEMPLATE = "radiology/frontdoor/studies.html"
NO_SUCH_STUDY = "There is no such study, or it is not one you may see."


def _dicom_address(request: HttpRequest) -> str | None:
    """host:port of the DICOM listener, once a setting names its port (issue 18); None until then."""
    port = getattr(settings, "RADIOLOGY_DICOM_PORT", None)
    if not port:
        return None
    host = urlsplit(f"//{request.get_host()}").hostname or "localhost"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    """What this server is and where to go; shows no clinical data (public)."""
    return render_page(request, "radiology/frontdoor/home.html", {"dicom_address": _dicom_address(request)})


class SignInView(LoginView):
    """Django's login for people, not only staff (admin's refuses non-staff); django-axes counts failures.

    AuthenticationForm calls authenticate() with the request, so the lockout backend
    (access/login_protection.py) counts and refuses here as on the admin login and the token endpoint.
    """

    template_name = "radiology/frontdoor/sign_in.html"
    # Not PUT: Django's form views take it as a POST, which a sign-in form never sends.
    http_method_names = ["get", "head", "post", "options"]
    redirect_authenticated_user = True
    next_page = reverse_lazy("frontdoor:studies")

    def render_to_response(self, context: dict[str, Any], **response_kwargs: Any) -> HttpResponse:
        full, nonce = page_context(self.request, context)
        return with_page_headers(super().render_to_response(full, **response_kwargs), nonce)


def _page_of(items: Any, per_page: int, request: HttpRequest) -> Page:
    """The ?page= asked for; a page number that is not one, or past the end, gives the first or last page."""
    return Paginator(items, per_page).get_page(request.GET.get("page"))


def _unmatched_inbox_url(request: HttpRequest) -> str | None:
    """The inbox's admin page (waiting files), for a tech who may open admin; None for one who may not."""
    if not request.user.is_staff:
        return None
    return reverse("admin:radiology_unmatchedimage_changelist") + "?status__exact=pending"


def _studies_page(request: HttpRequest, *, form: StudySearchForm, search: StudySearch | None) -> HttpResponse:
    page = _page_of(matching_studies(principal_of(request), search), STUDIES_PER_PAGE, request) if search else None
    for study in page or ():
        # Destinations with a delivery show its state (and Retry when failed); the others a Send button.
        study.delivered_to = {delivery.destination for delivery in study.deliveries.all()}
    is_tech = can_upload_radiology(request.user)
    context = {
        "form": form,
        "search": search,
        "page": page,
        "offers_ohif": bool(settings.OHIF_VIEWER_URL),
        "attention": tech_attention(request.user) if is_tech else None,
        "unmatched_inbox_url": _unmatched_inbox_url(request) if is_tech else None,
        # Store and forward: the destinations a study can be sent to from here (none: no column).
        "forward_destinations": [destination.name for destination in configured_destinations()],
    }
    return render_page(request, STUDIES_TEMPLATE, context, status=200 if search else 400)


@require_safe
@people_page()
def studies(request: HttpRequest) -> HttpResponse:
    """The list, narrowed by the search kept in the session (search.py says why not in the URL)."""
    search = StudySearch.from_session(request.session.get(SESSION_KEY))
    return _studies_page(request, form=StudySearchForm(initial=search.to_session()), search=search)


@require_POST
@people_page()
def search_studies(request: HttpRequest) -> HttpResponse:
    """Keep a valid search and show its first page; a bad one is the list page saying what is wrong (400)."""
    form = StudySearchForm(request.POST)
    if not form.is_valid():
        return _studies_page(request, form=form, search=None)
    request.session[SESSION_KEY] = form.search().to_session()
    return redirect("frontdoor:studies")


def _to_viewer(url: str) -> HttpResponse:
    response = HttpResponseRedirect(url)
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "no-referrer"
    return response


@require_POST
@people_page()
def open_in_ohif(request: HttpRequest, study_id: int) -> HttpResponse:
    """Issue this user a viewer token for the study and go to OHIF with it (the lite viewer if no OHIF is set)."""
    study = visible_studies(principal_of(request)).filter(pk=study_id).first()
    if study is None:
        return refused(request, status=404, message=NO_SUCH_STUDY)
    url = signing.viewer_url(study=study, user=request.user, base_url=request.build_absolute_uri("/"))
    return _to_viewer(url)


@require_POST
@people_page()
def open_in_lite_viewer(request: HttpRequest, study_id: int) -> HttpResponse:
    """The lite viewer ("quick look"), reusing this user's recent token for the study as the API does."""
    studies = visible_studies(principal_of(request)).annotate(**signing.reusable_viewer_token(user=request.user))
    study: RadiologyStudy | None = studies.filter(pk=study_id).first()
    if study is None:
        return refused(request, status=404, message=NO_SUCH_STUDY)
    url = signing.lite_viewer_url(study=study, user=request.user, base_url=request.build_absolute_uri("/"), reuse=True)
    return _to_viewer(url)


@require_POST
@people_page()
def forward_study(request: HttpRequest, study_id: int) -> HttpResponse:
    """Send to the radiologist, or retry a failed delivery: queue the study for the destination, back to the list."""
    study = visible_studies(principal_of(request)).filter(pk=study_id).first()
    if study is None:
        return refused(request, status=404, message=NO_SUCH_STUDY)
    try:
        send_study(study=study, destination=request.POST.get("destination") or None, requested_by=request.user)
    except UnknownForwardDestination as error:
        return refused(request, status=400, message=str(error.detail))
    page = request.POST.get("page", "")
    return redirect(f"{reverse('frontdoor:studies')}?page={page}" if page.isdigit() else reverse("frontdoor:studies"))


@require_safe
@people_page(techs_only=True)
def failed_uploads_page(request: HttpRequest) -> HttpResponse:
    """The tech's own failed uploads with their error, to send again or report."""
    page = _page_of(failed_uploads(request.user), FAILED_UPLOADS_PER_PAGE, request)
    return render_page(request, "radiology/frontdoor/failed_uploads.html", {"page": page})
