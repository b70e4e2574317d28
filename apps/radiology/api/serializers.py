"""Serializers that carry data in the seed's JSON shapes; no logic beyond formatting."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.radiology.models import RadiologyImage, RadiologySeries, RadiologyStudy, StudyDelivery


class DeliveryErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    detail = serializers.CharField()


class StudyDeliverySerializer(serializers.ModelSerializer):
    """A study's delivery to a forwarding destination (store and forward): sending n of m, delivered, failed."""

    summary = serializers.CharField(
        read_only=True, help_text='"sending 3 of 10", "confirming 10 of 10", "delivered", "failed: why"'
    )
    error = serializers.SerializerMethodField()

    class Meta:
        model = StudyDelivery
        fields = ["destination", "state", "images_sent", "images_total", "summary", "delivered_at", "error"]
        read_only_fields = fields

    @extend_schema_field(DeliveryErrorSerializer(allow_null=True))
    def get_error(self, delivery: StudyDelivery) -> dict[str, str] | None:
        if delivery.state != StudyDelivery.State.FAILED:
            return None
        return {"code": delivery.error_code, "detail": delivery.error_detail}


class ForwardRequestSerializer(serializers.Serializer):
    """Send the study to a forwarding destination; may be left out when the server has exactly one."""

    destination = serializers.CharField(max_length=64, required=False)


class StudySerializer(serializers.ModelSerializer):
    """The seed's study list item, with where it came from and where it was sent (store and forward).

    `source_clinic`: on a regional server, the clinic that forwarded it ("" otherwise);
    `deliveries`: on a clinic's server, its delivery to each forwarding destination.
    """

    deliveries = StudyDeliverySerializer(many=True, read_only=True)

    class Meta:
        model = RadiologyStudy
        fields = [
            "id",
            "study_uid",
            "radiology_order",
            "study_description",
            "modality",
            "study_date",
            "patient_name",
            "patient_id",
            "patient_birth_date",
            "patient_sex",
            "source_clinic",
            "deliveries",
            "created_at",
        ]
        read_only_fields = fields


class ImagePatientIdentitySerializer(serializers.ModelSerializer):
    """What the file itself says of its patient, and how it compared with the order's at ingest.

    The study's patient (the EMR's) is the one every reader is shown; this is the record of a
    discrepancy: `check` is matched, missing_in_file, unknown_to_emr, confirmed_other_patient
    (with the tech's `reason`), not_applicable (a photo) or not_checked (stored before checks).
    """

    check = serializers.CharField(source="patient_identity")
    reason = serializers.CharField(source="patient_identity_reason")

    class Meta:
        model = RadiologyImage
        fields = ["check", "file_patient_id", "file_patient_name", "reason"]
        read_only_fields = fields


class StudyImageSerializer(serializers.ModelSerializer):
    """An image in the study's images endpoint, with its signed URL (made by the view)."""

    image_url = serializers.SerializerMethodField()
    patient_identity = ImagePatientIdentitySerializer(source="*", read_only=True)

    class Meta:
        model = RadiologyImage
        fields = [
            "id",
            "image_uid",
            "filename",
            "file_size",
            "mime_type",
            "instance_number",
            "image_url",
            "patient_identity",
        ]
        read_only_fields = fields

    def get_image_url(self, image: RadiologyImage) -> str:
        return str(self.context["image_urls"][image.pk])


class StudySeriesSerializer(serializers.ModelSerializer):
    images = StudyImageSerializer(many=True, read_only=True)

    class Meta:
        model = RadiologySeries
        fields = ["series_uid", "series_description", "series_number", "modality", "images"]
        read_only_fields = fields


class StudyImagesSerializer(serializers.ModelSerializer):
    """The seed's "study images grouped by series" answer."""

    series = StudySeriesSerializer(many=True, read_only=True)
    quick_look_url = serializers.SerializerMethodField(
        help_text=(
            "The built-in lightweight viewer for this study (signed, expires with the image URLs). "
            "Repeated calls hand out the caller's same link while it has at least nine tenths of the "
            "asked lifetime left (never more than asked)."
        )
    )

    class Meta:
        model = RadiologyStudy
        fields = [
            "study_uid",
            "study_description",
            "patient_name",
            "patient_id",
            "patient_birth_date",
            "patient_sex",
            "series",
            "quick_look_url",
        ]
        read_only_fields = fields

    def get_quick_look_url(self, study: RadiologyStudy) -> str:
        return str(self.context["quick_look_url"])


class ImageUrlSerializer(serializers.Serializer):
    image_url = serializers.URLField()
    image_uid = serializers.CharField()
    filename = serializers.CharField()
    expires_in = serializers.IntegerField()


class ViewerUrlSerializer(serializers.Serializer):
    viewer_url = serializers.CharField()
    study_uid = serializers.CharField()
    expires_in = serializers.IntegerField()


class ExpiresInQuerySerializer(serializers.Serializer):
    """?expires_in=SECONDS, 1..RADIOLOGY_MAX_URL_EXPIRES (checked by the view)."""

    expires_in = serializers.IntegerField(required=False)


class ErrorSerializer(serializers.Serializer):
    """Every error body: {"detail": ..., "code": ...} (+ "errors" per field on 400)."""

    detail = serializers.CharField()
    code = serializers.CharField()
    errors = serializers.DictField(required=False)


class TokenRequestSerializer(serializers.Serializer):
    # Django's own username limit: a longer one names no user, and would reach the failed-login
    # records (varchar(255)), a 500 on PostgreSQL, before being refused.
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(style={"input_type": "password"}, trim_whitespace=False)


class TokenResponseSerializer(serializers.Serializer):
    token = serializers.CharField()
