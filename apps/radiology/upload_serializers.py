"""Serializers of the offline upload sync API: the metadata a device posts, and the upload state."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.radiology.models import DICOM_MIME_TYPE, JPEG_MIME_TYPE, RadiologyImage, RadiologyUpload
from apps.radiology.upload_sync import UploadMetadata

# Series and instance numbers go to 32-bit integer columns (DICOM IS is 32-bit too): a larger
# value must be a 400 here, not an out-of-range error from the database (a 500).
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class UploadCreateSerializer(serializers.Serializer):
    client_upload_id = serializers.UUIDField()
    radiology_order = serializers.IntegerField(min_value=1)
    filename = serializers.CharField(max_length=255)
    file_size = serializers.IntegerField(min_value=1)
    mime_type = serializers.ChoiceField(choices=[DICOM_MIME_TYPE, JPEG_MIME_TYPE])
    checksum = serializers.RegexField(r"^[0-9a-fA-F]{64}$", help_text="SHA-256 of the whole file, hex")
    study_uid = serializers.CharField(max_length=64, required=False, default="", allow_blank=True)
    series_uid = serializers.CharField(max_length=64, required=False, default="", allow_blank=True)
    image_uid = serializers.CharField(max_length=64, required=False, default="", allow_blank=True)
    study_description = serializers.CharField(max_length=255, required=False, default="", allow_blank=True)
    series_description = serializers.CharField(max_length=255, required=False, default="", allow_blank=True)
    series_number = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=INT32_MIN, max_value=INT32_MAX
    )
    instance_number = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=INT32_MIN, max_value=INT32_MAX
    )
    modality = serializers.CharField(max_length=16, required=False, default="", allow_blank=True)

    def to_metadata(self) -> UploadMetadata:
        data: dict[str, Any] = dict(self.validated_data)
        data["radiology_order_id"] = data.pop("radiology_order")
        return UploadMetadata(**data)


class UploadedImageSerializer(serializers.ModelSerializer):
    series_uid = serializers.CharField(source="series.series_uid", read_only=True)
    study_uid = serializers.CharField(source="series.study.study_uid", read_only=True)
    study = serializers.IntegerField(source="series.study_id", read_only=True)

    class Meta:
        model = RadiologyImage
        fields = [
            "id",
            "image_uid",
            "series_uid",
            "study_uid",
            "study",
            "file_key",
            "file_size",
            "mime_type",
            "checksum",
        ]
        read_only_fields = fields


class UploadErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    detail = serializers.CharField()


class UploadSerializer(serializers.ModelSerializer):
    """An upload's state: what a device needs to resume or to know it is done."""

    image = UploadedImageSerializer(read_only=True, allow_null=True)
    error = serializers.SerializerMethodField()

    class Meta:
        model = RadiologyUpload
        fields = ["id", "client_upload_id", "status", "received_bytes", "file_size", "image", "error"]
        read_only_fields = fields

    @extend_schema_field(UploadErrorSerializer(allow_null=True))
    def get_error(self, upload: RadiologyUpload) -> dict[str, str] | None:
        if upload.status != RadiologyUpload.Status.FAILED:
            return None
        return {"code": upload.error_code, "detail": upload.error_detail}
