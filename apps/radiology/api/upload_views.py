"""Offline upload sync endpoints (radiology techs, superusers and forwarding clinics only)."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from apps.radiology.access.permissions import CanUseUploadSync, forwarding_clinic_name
from apps.radiology.api.serializers import ErrorSerializer
from apps.radiology.api.upload_serializers import UploadCreateSerializer, UploadSerializer
from apps.radiology.ingest.request_streams import request_body
from apps.radiology.ingest.upload_sync import upload_receive, upload_start
from apps.radiology.models import RadiologyUpload

UPLOAD_ERRORS = {
    400: ErrorSerializer,
    401: ErrorSerializer,
    403: ErrorSerializer,
    404: ErrorSerializer,
    409: ErrorSerializer,
    413: ErrorSerializer,
    415: ErrorSerializer,  # unsupported_content_encoding: a Content-Encoding other than zstd
    507: ErrorSerializer,  # insufficient_storage: send the same request again once space is freed
}


class RawBodyParser(BaseParser):
    """Accept any body for the binary PUT; the view streams it itself and never parses it."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):  # type: ignore[no-untyped-def]
        return {}


class UploadViewSet(viewsets.GenericViewSet):
    """POST metadata, PUT the binary (whole or chunks with Content-Range), GET the state."""

    permission_classes = [IsAuthenticated, CanUseUploadSync]
    serializer_class = UploadSerializer
    # For the schema only; requests always go through get_queryset (own uploads).
    queryset = RadiologyUpload.objects.none()
    lookup_value_regex = "[0-9]+"
    parser_classes = [JSONParser]

    def get_queryset(self) -> QuerySet[RadiologyUpload]:
        # A user sees only their own uploads: another's id is 404, not 403.
        return RadiologyUpload.objects.filter(uploaded_by=self.request.user).select_related("image__series__study")

    @extend_schema(
        summary="Declare an upload (idempotent by client_upload_id)",
        request=UploadCreateSerializer,
        responses={200: UploadSerializer, 201: UploadSerializer, **UPLOAD_ERRORS},
    )
    def create(self, request: Request) -> Response:
        serializer = UploadCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload, created = upload_start(user=request.user, metadata=serializer.to_metadata())
        return Response(
            UploadSerializer(upload).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )

    @extend_schema(summary="An upload's state", responses={200: UploadSerializer, **UPLOAD_ERRORS})
    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        return Response(UploadSerializer(self.get_object()).data)

    @extend_schema(
        summary="Send the file's bytes: whole, or one chunk with Content-Range",
        request={"application/octet-stream": OpenApiTypes.BINARY},
        parameters=[
            OpenApiParameter(
                "Content-Range",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="bytes START-END/TOTAL; START must equal received_bytes",
            ),
            OpenApiParameter(
                "Content-Encoding",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="zstd: the body is one zstd frame of the range's bytes (Content-Range counts them "
                "uncompressed); any other value is 415",
            ),
        ],
        responses={200: UploadSerializer, 201: UploadSerializer, 202: UploadSerializer, **UPLOAD_ERRORS},
    )
    @action(detail=True, methods=["put"], url_path="binary", parser_classes=[RawBodyParser])
    def binary(self, request: Request, pk: str | None = None) -> Response:
        upload = self.get_object()
        was_completed = upload.status == RadiologyUpload.Status.COMPLETED
        upload, finished_now = upload_receive(
            upload=upload,
            body=request_body(request._request),
            content_range=request.headers.get("Content-Range"),
            content_encoding=request.headers.get("Content-Encoding"),
            source_clinic=forwarding_clinic_name(request.user),
        )
        upload = self.get_queryset().get(pk=upload.pk)
        if finished_now and not was_completed:
            code = status.HTTP_201_CREATED
        elif upload.status == RadiologyUpload.Status.COMPLETED:
            code = status.HTTP_200_OK
        else:
            code = status.HTTP_202_ACCEPTED
        return Response(UploadSerializer(upload).data, status=code)
