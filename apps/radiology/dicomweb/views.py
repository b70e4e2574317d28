"""DICOMweb endpoints: thin views over qido, dicom_json, pixels, multipart and stow.

DRF supplies authentication (session, token, viewer bearer token), permissions and the
JSON error shape; the bodies themselves (DICOM JSON, multipart/related, images) are
written here because DRF's renderers don't speak them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db.models import F, QuerySet
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import APIException, NotFound
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.views import APIView

from apps.radiology import storage
from apps.radiology.access.principals import Principal, ViewerTokenPrincipal, principal_of
from apps.radiology.access.signing import SignatureRejected
from apps.radiology.access.token_auth import RadiologyTokenAuthentication
from apps.radiology.access.visible import VisibleLookup, visible_images, visible_series, visible_studies
from apps.radiology.dicomweb.render_cache import cached_response, render_key
from apps.radiology.errors import (
    BulkDataNotFound,
    FrameNotFound,
    InstanceNotFound,
    InvalidToken,
    OrderNotFound,
    RadiologyError,
    SeriesNotFound,
    StoredObjectMissing,
    StudyNotFound,
    TooManyFrames,
)
from apps.radiology.imagefiles import stored_header
from apps.radiology.ingest.identity import confirmation_of
from apps.radiology.models import RadiologyImage, RadiologySeries, RadiologyStudy

from . import pixels, transcode
from .accept import MediaRange, parse_accept
from .auth import CanUseDicomWeb, ViewerTokenAuthentication
from .dicom_json import (
    INSTANCE_ORDER,
    MetadataAnswer,
    cached_metadata_array,
    image_summary,
    instance_metadata,
    photo_is_decoded,
    series_metadata,
    summary_of,
)
from .metadata_warming import remember_root
from .multipart import (
    InvalidMultipart,
    Part,
    check_declared_length,
    check_room_for_body,
    content_type_header,
    discard_parts,
    new_boundary,
    read_parts,
    request_body,
    stream_parts,
)
from .pixels import NotAcceptable
from .qido import parse_search, search_instances, search_series, search_studies
from .stow import store_instances

DICOM_JSON = "application/dicom+json"
PRIVATE_CACHE = "private, max-age=0, must-revalidate"


class FirstRendererNegotiation(BaseContentNegotiation):
    """DICOMweb negotiates its own bodies; DRF only renders errors, always as JSON."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Request, renderers: list[Any], format_suffix: str | None = None) -> Any:
        return renderers[0], renderers[0].media_type


def _image_by_uid(images: QuerySet[RadiologyImage], image_uid: str, *, with_metadata: bool) -> QuerySet[RadiologyImage]:
    images = images.select_related("series__study")
    if not with_metadata:
        # Frames, renders and bulk data read the image's own columns, and of its series and study
        # only the UIDs the URL is checked against: the other 23 columns of the two were half
        # the row, sent, decoded and made into fields for every frame a viewer asks for.
        images = images.defer(stored_header.HEADER_COLUMN, *_SERIES_AND_STUDY_DETAILS)
    return images.filter(image_uid=image_uid).order_by()[:1]


_SERIES_AND_STUDY_DETAILS = tuple(
    f"{path}__{field.name}"
    for path, model, kept in (
        ("series", RadiologySeries, {"id", "study", "series_uid"}),
        ("series__study", RadiologyStudy, {"id", "study_uid"}),
    )
    for field in model._meta.concrete_fields
    if field.name not in kept
)


# Every frame, render and instance request starts here: through the read door, compiled once
# per scope kind (see access/visible.py and fastpaths/prepared.py).
_IMAGE = VisibleLookup(
    visible_images, lambda images, image_uid: _image_by_uid(images, image_uid, with_metadata=False), parameters=1
)
_STUDY = VisibleLookup(
    visible_studies, lambda studies, study_uid: studies.filter(study_uid=study_uid).order_by()[:1], parameters=1
)
_IMAGE_WITH_METADATA = VisibleLookup(
    visible_images, lambda images, image_uid: _image_by_uid(images, image_uid, with_metadata=True), parameters=1
)


# What a view raises to refuse a request (as opposed to failing itself).
_REFUSALS = (RadiologyError, APIException, Http404, DjangoPermissionDenied)


@extend_schema(exclude=True)
class DicomWebView(APIView):
    authentication_classes = [ViewerTokenAuthentication, RadiologyTokenAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated, CanUseDicomWeb]
    content_negotiation_class = FirstRendererNegotiation
    parser_classes: list[Any] = []
    _root: str | None = None  # base_url(), worked out once per request (a view instance is one request)
    # True for views whose first read is one instance looked up through the door (find_image):
    # a viewer token's row is then checked in that lookup's statement, not by a query of its
    # own (OHIF asks for hundreds of frames per study, each with the token). Every other view,
    # and every other method (OPTIONS answers without a lookup), reads the row before its
    # handler runs, as authentication did before.
    token_checked_by_lookup = False

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        principal = principal_of(request)
        looked_up = self.token_checked_by_lookup and request.method in ("GET", "HEAD")
        if isinstance(principal, ViewerTokenPrincipal) and not looked_up:
            principal.grant  # noqa: B018 (reads the token's row: SignatureRejected if it no longer stands)

    def handle_exception(self, exc: Exception) -> HttpResponse:
        """A viewer token that no longer stands is a 401 whatever else went wrong with the request.

        Its row may not have been read yet when a view of token_checked_by_lookup fails before
        its lookup (an Accept it cannot serve, a malformed frame list): it is read now, so a
        revoked token hears nothing but that it is refused.
        """
        principal = principal_of(self.request)
        # Only for a refusal: on the server's own failure (a database gone) no query now.
        if isinstance(exc, _REFUSALS) and isinstance(principal, ViewerTokenPrincipal):
            try:
                principal.grant  # noqa: B018 (no query if it was read already)
            except SignatureRejected as refused:
                exc = refused
        if isinstance(exc, SignatureRejected):
            exc = InvalidToken()
        return super().handle_exception(exc)

    # --- helpers ------------------------------------------------------------------------

    def base_url(self) -> str:
        """This DICOMweb root as the client reached it; QIDO asks once per result row."""
        if self._root is None:
            self._root = self.request.build_absolute_uri(reverse("radiology:dicomweb-root")).rstrip("/")
            remember_root(self._root)  # what a big series' metadata is built ahead for (metadata_warming.py)
        return self._root

    def retrieve_url(self, study_uid: str, series_uid: str | None = None, image_uid: str | None = None) -> str:
        url = f"{self.base_url()}/studies/{study_uid}"
        if series_uid:
            url += f"/series/{series_uid}"
        if image_uid:
            url += f"/instances/{image_uid}"
        return url

    def accepted(self) -> list[MediaRange]:
        return parse_accept(self.request.headers.get("Accept"))

    def principal(self) -> Principal:
        """Who asks: an EMR user or a viewer token's grant (what either may read is the door's answer)."""
        return principal_of(self.request)

    def studies(self) -> QuerySet[RadiologyStudy]:
        return visible_studies(self.principal())

    def find_study(self, study_uid: str, **annotations: Any) -> RadiologyStudy:
        if annotations:
            study = self.studies().filter(study_uid=study_uid).annotate(**annotations).first()
        else:
            study = _STUDY.first(self.principal(), study_uid)
        if study is None:
            raise StudyNotFound()
        return study

    # Series and instances are found by their own UID (unique) among what the door lets the
    # principal see, and the study in the URL compared here: one indexed row and its parents,
    # no subquery, so a lookup costs little to plan.

    def find_series(self, study_uid: str, series_uid: str, **annotations: Any) -> RadiologySeries:
        found = list(
            visible_series(self.principal())
            .select_related("study")
            .filter(series_uid=series_uid)
            .annotate(**annotations)
            .order_by()[:1]
        )
        if not found or found[0].study.study_uid != study_uid:
            raise SeriesNotFound()
        return found[0]

    def find_image(
        self, study_uid: str, series_uid: str, image_uid: str, *, with_metadata: bool = False
    ) -> RadiologyImage:
        """The instance, among what the request may see. Its header JSON (kilobytes, decoded
        on every read) is only loaded when asked for, or later on first use."""
        image = (_IMAGE_WITH_METADATA if with_metadata else _IMAGE).first(self.principal(), image_uid)
        if image is None or image.series.series_uid != series_uid or image.series.study.study_uid != study_uid:
            raise InstanceNotFound()
        return image

    def images(self) -> QuerySet[RadiologyImage]:
        return visible_images(self.principal())

    def require_json(self) -> None:
        """406 unless the client accepts DICOM JSON."""
        if not any(wanted.matches(DICOM_JSON) or wanted.matches("application/json") for wanted in self.accepted()):
            raise NotAcceptable()

    def json_response(self, body: Any) -> HttpResponse:
        self.require_json()
        return self.json_text_response(json.dumps(body, separators=(",", ":")))

    def json_text_response(self, text: str | bytes) -> HttpResponse:
        """A body that already is DICOM JSON text (or that text in UTF-8)."""
        self.require_json()
        response = HttpResponse(text, content_type=DICOM_JSON)
        response["Cache-Control"] = PRIVATE_CACHE
        return response

    def metadata_response(self, answer: MetadataAnswer) -> HttpResponse:
        """A series' or study's metadata array, kept in the render cache once it has gone."""
        response = self.json_text_response(answer.body)
        answer.keep_after(response)
        return response

    def dicom_parts(self, images: list[RadiologyImage]) -> StreamingHttpResponse:
        """Whole instances as multipart/related; type="application/dicom", each in the transfer
        syntax negotiated for it (transcode.py): by default Explicit VR Little Endian with the
        served patient identity, with transfer-syntax=* the stored file byte for byte."""
        plans = transcode.plan_instances(images, self.accepted())  # 406 before anything is read
        _require_whole_files(images)
        # The first part is prepared before the status line: a single instance that cannot be
        # produced is an error response, not a 200 whose body breaks off.
        first = transcode.prepare(plans[0]) if plans else None
        boundary = new_boundary()

        def parts() -> Iterator[Part]:
            for index, plan in enumerate(plans):
                ready = first if index == 0 and first is not None else transcode.prepare(plan)
                yield Part(ready.content_type, ready.chunks)

        response = StreamingHttpResponse(
            stream_parts(parts(), boundary), content_type=content_type_header("application/dicom", boundary)
        )
        response["Cache-Control"] = PRIVATE_CACHE
        return response

    def image_response(self, content: bytes, media_type: str) -> HttpResponse:
        response = HttpResponse(content, content_type=media_type)
        response["Cache-Control"] = PRIVATE_CACHE
        return response


def _require_whole_files(images: list[RadiologyImage]) -> None:
    """500 stored_object_missing before the status line unless every stored file is there, whole.

    A multipart body cannot take back its 200 once streaming has begun: a missing file would
    otherwise end the body early, and the client would keep the instances before it as if the
    study were complete. One stat per file on disk; on S3 one listing per thousand files of a
    series or study (storage.object_sizes), not a HEAD each.
    """
    sizes = storage.object_sizes([image.file_key for image in images])
    for image in images:
        size = sizes.get(image.file_key)
        if size is None:
            raise StoredObjectMissing(f"The stored file of instance {image.image_uid} is missing.")
        if size < image.file_size:
            raise StoredObjectMissing(f"The stored file of instance {image.image_uid} is shorter than recorded.")


def _study_image_rows(images: QuerySet[RadiologyImage], study: RadiologyStudy) -> Any:
    """The study's images (of the door's `images`), series by series (by number), instances by number."""
    return images.filter(series__study=study).order_by(
        F("series__series_number").asc(nulls_last=True), "series_id", *INSTANCE_ORDER
    )


def _study_images(images: QuerySet[RadiologyImage], study: RadiologyStudy) -> list[RadiologyImage]:
    return list(_study_image_rows(images, study).select_related("series__study"))


class DicomWebRoot(DicomWebView):
    def get(self, request: Request) -> HttpResponse:
        raise NotFound("Use /studies, /series or /instances.")


class StudiesView(DicomWebView):
    """GET: QIDO studies. POST: STOW-RS."""

    def get(self, request: Request) -> HttpResponse:
        query = parse_search(request.query_params)
        return self.json_response(search_studies(query, principal=self.principal(), url=self.retrieve_url))

    def post(self, request: Request, study_uid: str | None = None) -> HttpResponse:
        self.require_json()  # before anything is stored: a 406 must not come after the store
        order_param = request.query_params.get("radiology_order_id")
        # ASCII digits only, and no more than a database id has: str.isdigit() also takes "²",
        # which int() then refuses (a 500).
        if order_param is not None and not (order_param.isascii() and order_param.isdigit() and len(order_param) <= 18):
            raise OrderNotFound()
        confirmation = confirmation_of(
            request.query_params.get("confirm_patient_mismatch"),
            request.query_params.get("patient_mismatch_reason"),
            channel="dicomweb",
        )
        check_declared_length(request.headers.get("Content-Length"))
        check_room_for_body(request.headers.get("Content-Length"))
        parts = read_parts(request_body(request._request), request.headers.get("Content-Type", ""))
        try:
            if not parts:
                raise InvalidMultipart("The request has no parts to store.")
            outcome = store_instances(
                parts=parts,
                user=request.user,
                order_id=int(order_param) if order_param is not None else None,
                study_uid=study_uid,
                instance_url=self.retrieve_url,
                confirmation=confirmation,
            )
        finally:
            discard_parts(parts)
        response = self.json_response(outcome.as_json(self.retrieve_url(study_uid) if study_uid else None))
        response.status_code = outcome.status
        return response


class StudyView(StudiesView):
    """GET: retrieve a whole study. POST: STOW-RS into this study."""

    def get(self, request: Request, study_uid: str) -> HttpResponse:  # type: ignore[override]
        return self.dicom_parts(_study_images(self.images(), self.find_study(study_uid)))


class StudyMetadataView(DicomWebView):
    def get(self, request: Request, study_uid: str) -> HttpResponse:
        study = self.find_study(study_uid, **image_summary("series__images"))
        self.require_json()
        base = self.retrieve_url(study.study_uid)
        return self.metadata_response(
            cached_metadata_array(
                _study_image_rows(self.images(), study),
                summary=summary_of(study),
                scope=f"study:{study.pk}:{base}",
                instance_url=lambda series_uid, image_uid: f"{base}/series/{series_uid}/instances/{image_uid}",
            )
        )


class StudySeriesSearchView(DicomWebView):
    def get(self, request: Request, study_uid: str) -> HttpResponse:
        self.find_study(study_uid)
        query = parse_search(request.query_params)
        return self.json_response(
            search_series(query, principal=self.principal(), url=self.retrieve_url, study_uid=study_uid)
        )


class StudyInstancesSearchView(DicomWebView):
    def get(self, request: Request, study_uid: str) -> HttpResponse:
        self.find_study(study_uid)
        query = parse_search(request.query_params)
        return self.json_response(
            search_instances(query, principal=self.principal(), url=self.retrieve_url, study_uid=study_uid)
        )


class SeriesSearchView(DicomWebView):
    def get(self, request: Request) -> HttpResponse:
        query = parse_search(request.query_params)
        return self.json_response(search_series(query, principal=self.principal(), url=self.retrieve_url))


class InstancesSearchView(DicomWebView):
    def get(self, request: Request) -> HttpResponse:
        query = parse_search(request.query_params)
        return self.json_response(search_instances(query, principal=self.principal(), url=self.retrieve_url))


class SeriesView(DicomWebView):
    def get(self, request: Request, study_uid: str, series_uid: str) -> HttpResponse:
        series = self.find_series(study_uid, series_uid)
        images = list(self.images().filter(series=series).select_related("series__study").order_by(*INSTANCE_ORDER))
        return self.dicom_parts(images)


class SeriesMetadataView(DicomWebView):
    def get(self, request: Request, study_uid: str, series_uid: str) -> HttpResponse:
        series = self.find_series(study_uid, series_uid, **image_summary("images"))
        self.require_json()
        return self.metadata_response(
            series_metadata(self.images(), series, base=self.retrieve_url(study_uid, series_uid))
        )


class SeriesInstancesSearchView(DicomWebView):
    def get(self, request: Request, study_uid: str, series_uid: str) -> HttpResponse:
        self.find_series(study_uid, series_uid)
        query = parse_search(request.query_params)
        return self.json_response(
            search_instances(
                query, principal=self.principal(), url=self.retrieve_url, study_uid=study_uid, series_uid=series_uid
            )
        )


class SeriesRenderedView(DicomWebView):
    """rendered / thumbnail of a series: its middle instance, first frame."""

    thumbnail = False

    def get(self, request: Request, study_uid: str, series_uid: str) -> HttpResponse:
        series = self.find_series(study_uid, series_uid)
        images = list(self.images().filter(series=series).order_by(*INSTANCE_ORDER))
        if not images:
            raise InstanceNotFound("The series has no instances.")
        image = images[len(images) // 2]
        return render_response(self, image, frame=1)


class SeriesThumbnailView(SeriesRenderedView):
    thumbnail = True


class InstanceView(DicomWebView):
    token_checked_by_lookup = True

    def get(self, request: Request, study_uid: str, series_uid: str, image_uid: str) -> HttpResponse:
        # With its header: the served patient identity of a rewritten instance is read from it.
        return self.dicom_parts([self.find_image(study_uid, series_uid, image_uid, with_metadata=True)])


class InstanceMetadataView(DicomWebView):
    token_checked_by_lookup = True

    def get(self, request: Request, study_uid: str, series_uid: str, image_uid: str) -> HttpResponse:
        image = self.find_image(study_uid, series_uid, image_uid, with_metadata=True)
        url = self.retrieve_url(study_uid, series_uid, image_uid)
        return self.json_response(
            [instance_metadata(image, study=image.series.study, series=image.series, instance_url=url)]
        )


class InstanceRenderedView(DicomWebView):
    token_checked_by_lookup = True
    thumbnail = False

    def get(self, request: Request, study_uid: str, series_uid: str, image_uid: str) -> HttpResponse:
        return render_response(self, self.find_image(study_uid, series_uid, image_uid), frame=1)


class InstanceThumbnailView(InstanceRenderedView):
    thumbnail = True


class FramesView(DicomWebView):
    token_checked_by_lookup = True

    def get(self, request: Request, study_uid: str, series_uid: str, image_uid: str, frames: str) -> HttpResponse:
        image = self.find_image(study_uid, series_uid, image_uid)
        numbers = _frame_numbers(frames)
        plan = pixels.plan_frames(image, self.accepted())
        if plan.passthrough and photo_is_decoded(image):
            # A photo presented as native pixels is stored as its JPEG: what leaves is decoded.
            plan = pixels.FramePlan(False, plan.media_type, plan.transfer_syntax)
        extent = pixels.frames_extent(image, numbers)  # 404 before streaming starts
        if not plan.passthrough:
            pixels.check_decode_budget(image, len(numbers))
        # One stat or HEAD: the frames' bytes are all there, or a 500 now rather than a 200 cut short.
        pixels.require_stored(image, extent)
        first: list[memoryview] = []
        if not plan.passthrough:
            # Decode the first frame before answering: pixel data this server cannot decode is
            # a 422, not a 200 whose body breaks off once streaming has begun.
            first.extend(pixels.decoded_chunks(pixels.decode_frame(image, numbers[0])))
        boundary = new_boundary()
        parts = (
            Part(plan.part_content_type, first if index == 0 and first else pixels.frame_chunks(image, number, plan))
            for index, number in enumerate(numbers)
        )
        response = StreamingHttpResponse(
            stream_parts(parts, boundary), content_type=content_type_header(plan.media_type, boundary)
        )
        response["Cache-Control"] = PRIVATE_CACHE
        return response


class FrameRenderedView(DicomWebView):
    token_checked_by_lookup = True

    def get(self, request: Request, study_uid: str, series_uid: str, image_uid: str, frames: str) -> HttpResponse:
        image = self.find_image(study_uid, series_uid, image_uid)
        return render_response(self, image, frame=_frame_numbers(frames)[0])


class BulkDataView(DicomWebView):
    """Bulk data of an instance: pixel data (its frames) or another large element, as octet-stream."""

    token_checked_by_lookup = True

    def get(self, request: Request, study_uid: str, series_uid: str, image_uid: str, tag: str) -> HttpResponse:
        image = self.find_image(study_uid, series_uid, image_uid)
        tag = tag.upper()
        if tag == "7FE00010" and image.pixel_data:
            plan = pixels.FramePlan(
                True, *(pixels.stored_media(image) or (pixels.OCTET_STREAM, image.transfer_syntax_uid))
            )
            numbers = list(range(1, image.number_of_frames + 1))
            # 404 for a frame that cannot be located, then one stat or HEAD, before streaming starts.
            pixels.require_stored(image, pixels.frames_extent(image, numbers))
            chunks: Iterator[bytes] = (
                chunk for number in numbers for chunk in pixels.frame_chunks(image, number, plan)
            )
            if photo_is_decoded(image):  # stored as its JPEG: decoded (before answering), as its frame is
                plan = pixels.FramePlan(False, pixels.OCTET_STREAM, pixels.EXPLICIT_LITTLE)
                chunks = pixels.decoded_chunks(pixels.decode_frame(image, 1))
        elif tag in (image.bulk_data or {}):
            location = image.bulk_data[tag]
            offset, length = int(location["offset"]), int(location["length"])
            plan = pixels.FramePlan(True, pixels.OCTET_STREAM, pixels.EXPLICIT_LITTLE)
            pixels.require_stored(image, offset + length)
            chunks = storage.iter_object_range(image.file_key, offset, length)
        else:
            raise BulkDataNotFound()
        boundary = new_boundary()
        return StreamingHttpResponse(
            stream_parts([Part(plan.part_content_type, chunks)], boundary),
            content_type=content_type_header(plan.media_type, boundary),
        )


def _frame_numbers(raw: str) -> list[int]:
    """The distinct frame numbers of a frame list, in the order first asked.

    A frame asked twice is sent once: `frames/1,1,1,...` would otherwise be a small request
    for a response a thousand frames long. At most RADIOLOGY_MAX_FRAMES_PER_REQUEST of them.
    """
    try:
        numbers = list(dict.fromkeys(int(part) for part in raw.split(",") if part.strip()))
    except ValueError:
        raise FrameNotFound("Frame numbers must be positive integers.") from None
    if not numbers or any(number < 1 for number in numbers):
        raise FrameNotFound("Frame numbers must be positive integers.")
    limit = settings.RADIOLOGY_MAX_FRAMES_PER_REQUEST
    if len(numbers) > limit:
        raise TooManyFrames(f"At most {limit} distinct frames may be asked for in one request.")
    return numbers


_QUALITY = re.compile(r"[0-9]{1,3}")


def render_response(view: DicomWebView, image: RadiologyImage, *, frame: int) -> HttpResponse:
    """rendered (full size unless ?viewport=) or thumbnail (default 128x128); overlay planes
    burned in unless ?overlays=false."""
    request = view.request
    media_type = pixels.rendered_media_type(view.accepted())
    thumbnail = getattr(view, "thumbnail", False)
    viewport = pixels.render_viewport(
        image, pixels.parse_viewport(request.query_params.get("viewport"), (128, 128) if thumbnail else None)
    )
    window = pixels.parse_window(request.query_params.get("window"))
    quality_raw = request.query_params.get("quality", "")
    # Anything but 1-100 in ASCII digits is the default, as before: not int() of thousands of
    # digits (a ValueError past 4,300) nor of another script's digits.
    quality = int(quality_raw) if _QUALITY.fullmatch(quality_raw) and 1 <= int(quality_raw) <= 100 else 85
    overlays = pixels.parse_overlays(request.query_params.get("overlays"))
    key = render_key(
        image,
        frame=frame,
        media_type=media_type,
        viewport=viewport,
        window=(window.center, window.width) if window else None,
        quality=quality,
        overlays=overlays and pixels.has_overlays(image),
    )
    return cached_response(
        request._request,
        key,
        lambda: pixels.render(
            image,
            frame=frame,
            media_type=media_type,
            viewport=viewport,
            window=window,
            quality=quality,
            overlays=overlays,
        ),
    )
