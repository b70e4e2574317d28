"""What a forwarding clinic delivered of a study: the regional side of store and forward's check.

A clinic's forwarder (apps/radiology/forwarding/) counts a study delivered only when this
server confirms every image's checksum. It asks once per study, not once per image: over a
3G link a thousand-image CT is one request, and the answer costs one query here.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.radiology.access.permissions import IsForwardingClinic
from apps.radiology.api.serializers import ErrorSerializer
from apps.radiology.api.upload_serializers import ForwardedStudySerializer
from apps.radiology.ingest.upload_sync import delivered_images


class ForwardedStudyView(APIView):
    """GET: the images of a study UID this clinic's completed uploads delivered (forwarding clinics only)."""

    permission_classes = [IsAuthenticated, IsForwardingClinic]

    @extend_schema(
        summary="What this forwarding clinic delivered of a study (by image UID)",
        # 404: the path is not a study UID (no route matches it).
        responses={200: ForwardedStudySerializer, 401: ErrorSerializer, 403: ErrorSerializer, 404: ErrorSerializer},
    )
    def get(self, request: Request, study_uid: str) -> Response:
        images = delivered_images(user=request.user, study_uid=study_uid)
        return Response(ForwardedStudySerializer({"study_uid": study_uid, "images": images}).data)
