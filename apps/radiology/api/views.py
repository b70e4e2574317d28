"""REST API v1 views: thin; parse input, call the service or a selector, shape the output.

Every read starts from the read door as the request's principal (access/visible.py).
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.authtoken.models import Token
from rest_framework.decorators import action
from rest_framework.generics import get_object_or_404
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.radiology.access import selectors, signing
from apps.radiology.access.login_protection import (
    ClientAddressRateThrottle,
    UsernameAndClientRateThrottle,
    note_successful_login,
)
from apps.radiology.access.permissions import CanViewRadiologyRequest
from apps.radiology.access.principals import principal_of
from apps.radiology.access.visible import visible_images
from apps.radiology.api.filters import StudyFilter
from apps.radiology.api.serializers import (
    ErrorSerializer,
    ForwardRequestSerializer,
    ImageUrlSerializer,
    StudyDeliverySerializer,
    StudyImagesSerializer,
    StudySerializer,
    TokenRequestSerializer,
    TokenResponseSerializer,
    ViewerUrlSerializer,
)
from apps.radiology.errors import InvalidCredentials, InvalidExpiresIn, InvalidQuery
from apps.radiology.models import RadiologyImage, RadiologyStudy
from apps.radiology.outbox.record import send_study
from apps.radiology.pacs_lite_service import PACSLiteService

_DIGITS = re.compile(r"[0-9]{1,9}")

EXPIRES_IN_PARAMETER = OpenApiParameter(
    "expires_in",
    OpenApiTypes.INT,
    description="Lifetime of the signed URL in seconds (1..RADIOLOGY_MAX_URL_EXPIRES; default RADIOLOGY_URL_EXPIRES).",
)
ERRORS = {400: ErrorSerializer, 401: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer}


def requested_expires_in(request: Request) -> int:
    """The ?expires_in= of the request, or the default; 400 invalid_expires_in if out of range."""
    raw = request.query_params.get("expires_in")
    if raw is None:
        return int(settings.RADIOLOGY_URL_EXPIRES)
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= settings.RADIOLOGY_MAX_URL_EXPIRES:
        raise InvalidExpiresIn(f"expires_in must be an integer from 1 to {settings.RADIOLOGY_MAX_URL_EXPIRES} seconds.")
    return int(raw)


def request_base_url(request: Request) -> str:
    """Scheme and host the client used, so signed URLs are absolute."""
    return request.build_absolute_uri("/").rstrip("/")


# ASCII digits only (str.isdigit() also accepts "²"), at most 18 so offset + limit fits SQL's
# 64-bit LIMIT/OFFSET and int() never sees thousands of digits.
_PAGE_NUMBER = re.compile(r"[0-9]{1,18}")


def _checked_page_number(request: Request, name: str) -> None:
    """400 invalid_query for a ?limit=/?offset= that is given but not 1 to 18 ASCII digits.

    An absent or empty parameter keeps DRF's behaviour (ignored).
    """
    raw = request.query_params.get(name)
    if raw and not _PAGE_NUMBER.fullmatch(raw):
        raise InvalidQuery(f"{name} must be a non-negative integer of at most 18 digits.")


class OptInLimitOffsetPagination(LimitOffsetPagination):
    """Pagination only when the client sends ?limit= (the seed's list is a plain array)."""

    default_limit = None
    max_limit = 1000

    def get_limit(self, request: Request) -> int | None:
        """DRF's limit, after refusing what DRF would hand to int() or the database unchecked."""
        _checked_page_number(request, self.limit_query_param)
        return super().get_limit(request)

    def get_offset(self, request: Request) -> int:
        """DRF's offset; beyond 18 digits it overflowed SQL OFFSET (a 500), so it is refused."""
        _checked_page_number(request, self.offset_query_param)
        return super().get_offset(request)

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        """Either answer: the plain array (no ?limit=) or the page; links nullable the OAS 3.1 way.

        DRF describes only the page, with OAS 3.0's `nullable`, which 3.1 (plain JSON Schema)
        ignores, so a documented `"next": null` would not validate.
        """
        page = super().get_paginated_response_schema(schema)
        for link in ("next", "previous"):
            page["properties"][link].pop("nullable", None)
            page["properties"][link]["type"] = ["string", "null"]
        return {"oneOf": [schema, page]}


@extend_schema_view(
    list=extend_schema(summary="List studies, newest first", responses={200: StudySerializer(many=True), **ERRORS}),
    retrieve=extend_schema(summary="One study", responses={200: StudySerializer, **ERRORS}),
)
class StudyViewSet(viewsets.ReadOnlyModelViewSet):
    """Studies: read-only to doctors, radiology techs and superusers."""

    permission_classes = [IsAuthenticated, CanViewRadiologyRequest]
    serializer_class = StudySerializer
    filterset_class = StudyFilter
    pagination_class = OptInLimitOffsetPagination

    def get_queryset(self) -> QuerySet[RadiologyStudy]:
        return selectors.study_list(principal_of(self.request))

    @extend_schema(
        summary="A study's images grouped by series, with signed image URLs",
        parameters=[EXPIRES_IN_PARAMETER],
        responses={200: StudyImagesSerializer, **ERRORS},
    )
    @action(detail=True, methods=["get"], url_path="images", filterset_class=None, pagination_class=None)
    def images(self, request: Request, pk: str | None = None) -> Response:
        expires_in = requested_expires_in(request)
        # The caller's quick-look token for this study, if one can be handed out again, read in
        # the study's own query: repeated calls write no new ViewerToken row.
        studies = selectors.studies_with_series_and_images(principal_of(request)).annotate(
            **signing.reusable_viewer_token(user=request.user, expires_in=expires_in)
        )
        study = get_object_or_404(studies, pk=pk)
        base_url = request_base_url(request)
        image_urls = {
            image.pk: PACSLiteService.generate_image_url(
                image=image, user=request.user, expires_in=expires_in, base_url=base_url
            )
            for series in study.series.all()
            for image in series.images.all()
        }
        quick_look_url = signing.lite_viewer_url(
            study=study, user=request.user, expires_in=expires_in, base_url=base_url, reuse=True
        )
        context = {"image_urls": image_urls, "quick_look_url": quick_look_url}
        return Response(StudyImagesSerializer(study, context=context).data)

    @extend_schema(
        summary="A signed, expiring viewer URL for the study",
        parameters=[EXPIRES_IN_PARAMETER],
        responses={200: ViewerUrlSerializer, **ERRORS},
    )
    @action(detail=True, methods=["get"], url_path="viewer-url", filterset_class=None, pagination_class=None)
    def viewer_url(self, request: Request, pk: str | None = None) -> Response:
        expires_in = requested_expires_in(request)
        study = self.get_object()
        url = PACSLiteService.generate_viewer_url(
            study_uid=study.study_uid, user=request.user, expires_in=expires_in, base_url=request_base_url(request)
        )
        return Response({"viewer_url": url, "study_uid": study.study_uid, "expires_in": expires_in})

    @extend_schema(
        summary="Send the study to a forwarding destination (store and forward), or retry it",
        request=ForwardRequestSerializer,
        responses={202: StudyDeliverySerializer, **ERRORS},
    )
    @action(detail=True, methods=["post"], url_path="forward", filterset_class=None, pagination_class=None)
    def forward(self, request: Request, pk: str | None = None) -> Response:
        body = ForwardRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        study = self.get_object()
        delivery = send_study(
            study=study, destination=body.validated_data.get("destination"), requested_by=request.user
        )
        return Response(StudyDeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)


class ImageViewSet(viewsets.GenericViewSet):
    """Images: only the signed-URL action is exposed."""

    permission_classes = [IsAuthenticated, CanViewRadiologyRequest]
    queryset = RadiologyImage.objects.none()  # for the schema only: requests read through get_queryset
    serializer_class = ImageUrlSerializer

    def get_queryset(self) -> QuerySet[RadiologyImage]:
        return visible_images(principal_of(self.request))

    @extend_schema(
        summary="A signed, expiring URL for one image's bytes",
        parameters=[EXPIRES_IN_PARAMETER],
        responses={200: ImageUrlSerializer, **ERRORS},
    )
    @action(detail=True, methods=["get"], url_path="url")
    def url(self, request: Request, pk: str | None = None) -> Response:
        expires_in = requested_expires_in(request)
        image = self.get_object()
        image_url = PACSLiteService.generate_image_url(
            image=image, user=request.user, expires_in=expires_in, base_url=request_base_url(request)
        )
        return Response(
            {"image_url": image_url, "image_uid": image.image_uid, "filename": image.filename, "expires_in": expires_in}
        )


class ObtainTokenView(APIView):
    """POST {"username", "password"} -> {"token"}; send it as `Authorization: Token <key>`."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    # Per username and client address together, and (higher) per client address alone against
    # password spraying (login_protection.py); django-axes locks out failures.
    throttle_classes = [UsernameAndClientRateThrottle, ClientAddressRateThrottle]
    throttle_scope = "auth-token"

    @extend_schema(
        summary="Obtain an API token",
        request=TokenRequestSerializer,
        responses={200: TokenResponseSerializer, 400: ErrorSerializer},
    )
    def post(self, request: Request) -> Response:
        serializer = TokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = authenticate(
            request=request._request,
            username=serializer.validated_data["username"],
            password=serializer.validated_data["password"],
        )
        if user is None or not user.is_active:
            raise InvalidCredentials()
        note_successful_login(request._request, serializer.validated_data["username"])
        token, _created = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})
