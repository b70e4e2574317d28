"""Admin for radiology: orders; studies with their series and images inline, read-only images.

Nothing here deletes or edits a stored image: image rows are read-only and have no delete
permission (the model refuses too); studies and series are protected by their foreign keys.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from apps.radiology.models import RadiologyImage, RadiologyOrder, RadiologySeries, RadiologyStudy, ViewerToken

IMAGE_FIELDS = (
    "image_uid",
    "series",
    "instance_number",
    "sop_class_uid",
    "transfer_syntax_uid",
    "number_of_frames",
    "rows",
    "columns",
    "file_key",
    "filename",
    "file_size",
    "mime_type",
    "checksum",
    "image_metadata",
    "uploaded_by",
    "created_at",
)


class ReadOnlyMixin:
    """No add, change or delete from admin: these rows are written only by ingest."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RadiologyOrder)
class RadiologyOrderAdmin(admin.ModelAdmin):
    list_display = ["id", "accession_number", "modality", "exam_requested", "status", "visit", "created_at"]
    list_filter = ["status", "modality", "created_at"]
    search_fields = ["accession_number", "visit__patient__hospital_number", "exam_requested"]
    list_select_related = ["visit"]
    raw_id_fields = ["visit", "ordering_doctor"]
    readonly_fields = ["created_at", "updated_at"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SeriesInline(ReadOnlyMixin, admin.TabularInline):
    model = RadiologySeries
    fields = ["series_number", "series_uid", "series_description", "modality", "image_count"]
    readonly_fields = fields
    extra = 0
    show_change_link = True

    @admin.display(description="images")
    def image_count(self, obj: RadiologySeries) -> int:
        return obj.images.count()


class ImageInline(ReadOnlyMixin, admin.TabularInline):
    model = RadiologyImage
    fields = ["instance_number", "image_uid", "filename", "mime_type", "file_size", "checksum"]
    readonly_fields = fields
    extra = 0
    show_change_link = True


@admin.register(RadiologyStudy)
class RadiologyStudyAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["study_uid", "patient_id", "modality", "study_date", "study_description", "created_at"]
    list_filter = ["modality", "study_date", "created_at"]
    search_fields = ["study_uid", "patient_id", "accession_number", "radiology_order__accession_number"]
    date_hierarchy = "study_date"
    inlines = [SeriesInline]


@admin.register(RadiologySeries)
class RadiologySeriesAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["series_uid", "study", "series_number", "modality", "series_description"]
    list_filter = ["modality"]
    search_fields = ["series_uid", "study__study_uid", "study__patient_id"]
    list_select_related = ["study"]
    inlines = [ImageInline]


@admin.register(RadiologyImage)
class RadiologyImageAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["image_uid", "series", "instance_number", "mime_type", "file_size", "created_at"]
    list_filter = ["mime_type", "series__modality", "created_at"]
    search_fields = ["image_uid", "series__series_uid", "series__study__study_uid", "series__study__patient_id"]
    list_select_related = ["series"]
    fields = IMAGE_FIELDS
    readonly_fields = IMAGE_FIELDS

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    # The change view is still reachable (read-only) so admins can inspect an image.
    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ViewerToken)
class ViewerTokenAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "study", "issued_to", "issued_at", "expires_at", "revoked_at"]
    list_filter = ["revoked_at", "issued_at"]
    search_fields = ["id", "study__study_uid"]
    list_select_related = ["study", "issued_to"]
