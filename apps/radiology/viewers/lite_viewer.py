"""The built-in lightweight viewer: one server-rendered page for slow links and cheap phones.

Opened from a viewer_url when OHIF_VIEWER_URL is empty (the seed's "lightweight DICOM
viewer"), and from admin for a quick look. The page carries the study's series and
instance UIDs; its small inline script fetches server-rendered JPEGs sized to the screen
from the DICOMweb rendered/thumbnail endpoints with the viewer token as Bearer, one image
at a time, prefetching the next. No build step, no CDN, nothing but this page and JPEGs.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.db.models import BooleanField, ExpressionWrapper, F, Min, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.gzip import gzip_page
from django.views.decorators.http import require_safe
from rest_framework.request import Request
from rest_framework.response import Response

from apps.radiology.access.principals import Principal, ViewerTokenPrincipal
from apps.radiology.access.signing import SignatureRejected, verify_viewer_token
from apps.radiology.access.visible import visible_images, visible_series, visible_studies
from apps.radiology.dicomweb.views import INSTANCE_ORDER, DicomWebView
from apps.radiology.errors import InstanceNotFound
from apps.radiology.imagefiles.stored_header import pixel_value
from apps.radiology.models import RadiologyImage, RadiologyStudy
from apps.radiology.pacs_lite_service import PACSLiteService

CT_PRESETS = [
    {"name": "Lung", "center": -600, "width": 1500},
    {"name": "Bone", "center": 300, "width": 1500},
    {"name": "Soft tissue", "center": 40, "width": 400},
    {"name": "Brain", "center": 40, "width": 80},
]


def _default_window(image: RadiologyImage) -> list[float] | None:
    """The header's first window (centre, width), as the page starts a series with it."""
    center, width = pixel_value(image, "00281050"), pixel_value(image, "00281051")
    try:
        return [float(center), float(width)] if center is not None and width is not None else None
    except (TypeError, ValueError):
        return None


def viewer_context(study: RadiologyStudy, principal: Principal) -> dict[str, Any]:
    """What the page needs: the study header and, per series, its instances in order, its
    default window and whether it has overlays to show or hide (3 queries).

    Series and instances are read through the door as `principal` (the page's viewer token).
    """
    images = visible_images(principal)
    # Unnumbered series and instances last on every database, as DICOMweb lists them.
    series_list = list(
        visible_series(principal).filter(study=study).order_by(F("series_number").asc(nulls_last=True), "id")
    )
    rows = (
        images.filter(series__study=study)
        .order_by(*INSTANCE_ORDER)
        # Whether ingest found overlay planes to draw (pixels.has_overlays), asked of the
        # database: the page offers its overlay toggle only for a series that has some.
        .annotate(overlays=ExpressionWrapper(Q(pixel_data__has_key="overlays"), output_field=BooleanField()))
        .values_list("series_id", "image_uid", "number_of_frames", "mime_type", "overlays")
    )
    instances: dict[int, list[list[Any]]] = {series.pk: [] for series in series_list}
    kinds: dict[int, str] = {}
    with_overlays: set[int] = set()
    for series_id, image_uid, frames, mime_type, overlays in rows:
        instances[series_id].append([image_uid, frames])
        kinds.setdefault(series_id, mime_type)
        if overlays:
            with_overlays.add(series_id)
    firsts = (
        images.filter(series__study=study).values("series_id").annotate(first=Min("id")).values_list("first", flat=True)
    )
    windows = {
        # Only a DICOM image with pixel data has a window; its pixel header is kept beside the frame
        # offsets (stored_header.pixel_value reads it from the loaded column, no query).
        image.series_id: _default_window(image) if image.is_dicom and image.pixel_data else None
        for image in images.filter(pk__in=firsts).only("series_id", "mime_type", "pixel_data")
    }
    return {
        "study": {
            "uid": study.study_uid,
            "description": study.study_description,
            "date": study.study_date.isoformat() if study.study_date else "",
            "modality": study.modality,
            "patient_name": study.patient_name,
            "patient_id": study.patient_id,
        },
        "series": [
            {
                "uid": series.series_uid,
                "number": series.series_number,
                "description": series.series_description,
                "modality": series.modality,
                "dicom": kinds.get(series.pk) == "application/dicom",
                "window": windows.get(series.pk),
                "overlays": series.pk in with_overlays,
                "presets": CT_PRESETS if series.modality == "CT" else [],
                "instances": instances[series.pk],
            }
            for series in series_list
            if instances[series.pk]
        ],
    }


def _refused(request: HttpRequest, status: int) -> HttpResponse:
    response = render(request, "radiology/lite_viewer_refused.html", status=status)
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "no-referrer"
    return response


@require_safe
@gzip_page
def lite_viewer(request: HttpRequest) -> HttpResponse:
    """The page itself; the token in its URL must be valid for the study it names."""
    try:
        grant = verify_viewer_token(request.GET.get("token", ""))
    except SignatureRejected:
        return _refused(request, 403)
    asked = request.GET.get("StudyInstanceUIDs")
    if asked and asked != grant.study_uid:
        return _refused(request, 403)
    principal = ViewerTokenPrincipal(grant)
    request.user = principal  # type: ignore[assignment]  # for the audit trail
    study = visible_studies(principal).get(pk=grant.study_id)
    nonce = secrets.token_urlsafe(16)
    context = {
        "config": {
            **viewer_context(study, principal),
            "dicomweb": request.build_absolute_uri(reverse("radiology:dicomweb-root")).rstrip("/"),
            "download": request.build_absolute_uri(reverse("radiology:lite-viewer-image-url")),
            "maxRenderSide": settings.RADIOLOGY_MAX_RENDER_SIDE,
        },
        "study": study,
        "nonce": nonce,
    }
    response = render(request, "radiology/lite_viewer.html", context)
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "no-referrer"
    response["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
        "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return response


class ImageDownloadUrlView(DicomWebView):
    """GET ?image=<SOPInstanceUID> with the viewer token -> {"image_url": signed URL of the original}."""

    def get(self, request: Request) -> Response:
        image_uid = request.query_params.get("image", "")
        # A NUL names no instance, and PostgreSQL refuses it in a query (the driver raised: a 500).
        image = (
            None
            if "\x00" in image_uid
            else self.images().select_related("series__study").filter(image_uid=image_uid).first()
        )
        if image is None:
            raise InstanceNotFound()
        url = PACSLiteService.generate_image_url(
            image=image, user=request.user, expires_in=300, base_url=request.build_absolute_uri("/")
        )
        return Response({"image_url": url})
