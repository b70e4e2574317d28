"""Serializers of the offline upload sync API: the metadata a device posts, and the upload state."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.radiology.imagefiles.declared import DECLARED_FIELDS, INT32_MAX, INT32_MIN, Declared, DeclaredImage
from apps.radiology.ingest.upload_sync import UploadMetadata
from apps.radiology.models import DICOM_MIME_TYPE, JPEG_MIME_TYPE, RadiologyImage, RadiologyUpload


def _declared_field(spec: Declared) -> serializers.Field:
    """The serializer field of one declared field: optional, with the column's empty value as default."""
    help_text = spec.help_text or None
    if spec.kind == "int32":
        return serializers.IntegerField(
            required=False, allow_null=True, default=None, min_value=INT32_MIN, max_value=INT32_MAX, help_text=help_text
        )
    if spec.kind == "flag":
        return serializers.BooleanField(required=False, default=False, help_text=help_text)
    return serializers.CharField(
        max_length=spec.max_length, required=False, default="", allow_blank=True, help_text=help_text
    )


class UploadCreateSerializer(serializers.Serializer):
    """The metadata a device posts: the file, then what it declares about the image (declared.py)."""

    client_upload_id = serializers.UUIDField()
    radiology_order = serializers.IntegerField(
        min_value=1, required=False, help_text="The order the file belongs to (or accession_number, not both)."
    )
    accession_number = serializers.CharField(
        max_length=16,
        required=False,
        help_text="Instead of radiology_order (a forwarding clinic's server): the accession number of the order "
        "the file belongs to. The file then goes to that order, or is held in the unmatched inbox (held).",
    )
    filename = serializers.CharField(max_length=255)
    file_size = serializers.IntegerField(min_value=1)
    mime_type = serializers.ChoiceField(choices=[DICOM_MIME_TYPE, JPEG_MIME_TYPE])
    checksum = serializers.RegexField(r"^[0-9a-fA-F]{64}$", help_text="SHA-256 of the whole file, hex")
    confirm_patient_mismatch = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Store the file under this order even though its PatientID is another patient's hospital "
        "number (a radiology tech's decision, audited); needs patient_mismatch_reason.",
    )
    patient_mismatch_reason = serializers.CharField(
        max_length=255, required=False, default="", allow_blank=True, help_text="Why the file belongs to this order."
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        # The declared fields follow the file's, one per DeclaredImage field.
        fields = super().get_fields()
        fields.update((name, _declared_field(spec)) for name, spec in DECLARED_FIELDS.items())
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "radiology_order" not in attrs and "accession_number" not in attrs:
            # Neither: radiology_order is missing, as it was before accession numbers were taken.
            try:
                self.fields["radiology_order"].fail("required")
            except serializers.ValidationError as missing:
                raise serializers.ValidationError({"radiology_order": missing.detail}) from None
        if "radiology_order" in attrs and "accession_number" in attrs:
            raise serializers.ValidationError(
                {"accession_number": "Give radiology_order or accession_number, not both."}
            )
        if attrs.get("confirm_patient_mismatch") and not attrs.get("patient_mismatch_reason", "").strip():
            raise serializers.ValidationError(
                {"patient_mismatch_reason": "A reason is required to confirm a patient mismatch."}
            )
        return attrs

    def to_metadata(self) -> UploadMetadata:
        data: dict[str, Any] = dict(self.validated_data)
        return UploadMetadata(
            client_upload_id=data["client_upload_id"],
            radiology_order_id=data.get("radiology_order"),
            accession_number=data.get("accession_number", ""),
            filename=data["filename"],
            file_size=data["file_size"],
            mime_type=data["mime_type"],
            checksum=data["checksum"],
            declared=DeclaredImage.from_columns(data),
            patient_mismatch_reason=data["patient_mismatch_reason"].strip() if data["confirm_patient_mismatch"] else "",
        )


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
    held = serializers.SerializerMethodField(
        help_text="True when the upload completed into the unmatched inbox (no order with its accession number, "
        "or the file does not fit it) instead of an order: image is then null."
    )

    class Meta:
        model = RadiologyUpload
        fields = ["id", "client_upload_id", "status", "received_bytes", "file_size", "image", "error", "held"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_held(self, upload: RadiologyUpload) -> bool:
        return upload.unmatched_id is not None

    @extend_schema_field(UploadErrorSerializer(allow_null=True))
    def get_error(self, upload: RadiologyUpload) -> dict[str, str] | None:
        if upload.status != RadiologyUpload.Status.FAILED:
            return None
        return {"code": upload.error_code, "detail": upload.error_detail}


class DeliveredImageSerializer(serializers.Serializer):
    """One image a forwarding clinic's uploads delivered (upload_sync.DeliveredImage)."""

    image_uid = serializers.CharField()
    checksum = serializers.CharField(help_text="SHA-256 of the stored (or held) file, hex")
    file_size = serializers.IntegerField()
    state = serializers.ChoiceField(
        choices=["stored", "held", "discarded"],
        help_text="stored: in a study (also once assigned from the unmatched inbox); held: waiting in the "
        "unmatched inbox; discarded: a tech threw it away.",
    )


class ForwardedStudySerializer(serializers.Serializer):
    """What a forwarding clinic delivered of one study: its images, by image UID."""

    study_uid = serializers.CharField()
    images = DeliveredImageSerializer(many=True)
