"""Admin for radiology: orders; studies with their series and images inline, read-only images.

Nothing here deletes or edits a stored image: image rows are read-only and have no delete
permission (the model refuses too); studies and series are protected by their foreign keys.

Every radiology page (changelists, change views, inlines, the viewer redirect, the app's
index entry) is for users who may see radiology data: doctors, radiology techs and
superusers, on top of Django's own model permissions. A staff user of another part of the
EMR (a clerk) sees none of it, not even an image's header or file key. Studies, series and
images are also read through the read door (access/visible.py) as request.user, so the
rows themselves are only those the user may see. The user admin gains one action: revoke
every radiology link the selected users issued.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied
from django.db.models import F
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from apps.radiology.access import signing
from apps.radiology.access.permissions import can_upload_radiology, can_view_radiology
from apps.radiology.access.principals import principal_of_user
from apps.radiology.access.visible import visible_images, visible_series, visible_studies
from apps.radiology.models import (
    AuditEvent,
    DicomListenerHeartbeat,
    ForwardTask,
    LinkRevocation,
    RadiologyImage,
    RadiologyOrder,
    RadiologySeries,
    RadiologyStudy,
    StudyDelivery,
    UnmatchedImage,
    ViewerToken,
)
from apps.radiology.outbox.record import request_forwarding

# ingest/unmatched.py and pacs_lite_service.py are imported where an action uses them: they load
# pydicom and numpy (~24 MiB), and every Django process (the forwarder too) loads this module.

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
    "patient_identity",
    "file_patient_id",
    "file_patient_name",
    "patient_identity_reason",
    "image_metadata",
    "uploaded_by",
    "created_at",
)


class RadiologyAccessMixin:
    """Radiology pages only for who may see radiology data, whatever Django permissions say.

    First in each admin's bases, so every check (and admin's own use of them: app index,
    changelist, change view, history, inlines, actions) asks can_view_radiology first.
    """

    def has_module_permission(self, request: HttpRequest) -> bool:
        return can_view_radiology(request.user) and super().has_module_permission(request)  # type: ignore[misc]

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return can_view_radiology(request.user) and super().has_view_permission(request, obj)  # type: ignore[misc]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return can_view_radiology(request.user) and super().has_change_permission(request, obj)  # type: ignore[misc]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # ModelAdmin's takes (request), an inline's (request, obj).
        parent = super().has_add_permission  # type: ignore[misc]
        return can_view_radiology(request.user) and (parent(request, obj) if obj is not None else parent(request))

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return can_view_radiology(request.user) and super().has_delete_permission(request, obj)  # type: ignore[misc]


class ThroughTheDoorMixin:
    """Rows through the read door as request.user: admin's queryset, ordering and all, narrowed to them.

    Every admin page (changelist, change view, history, inlines, actions) reads rows with
    get_queryset. A user who may read nothing is refused (403), as RadiologyAccessMixin
    refuses them, rather than shown an empty page: admin's history view looks for its row
    before asking for permission, and a missing row would be a redirect, not a refusal.
    """

    door: Any  # visible_studies, visible_series or visible_images

    def get_queryset(self, request: HttpRequest) -> Any:
        principal = principal_of_user(request.user)
        if principal.read_scope.is_nothing:
            raise PermissionDenied
        return super().get_queryset(request) & type(self).door(principal)  # type: ignore[misc]


class ReadOnlyMixin:
    """No add, change or delete from admin: these rows are written only by ingest."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RadiologyOrder)
class RadiologyOrderAdmin(RadiologyAccessMixin, admin.ModelAdmin):
    list_display = ["id", "accession_number", "modality", "exam_requested", "status", "visit", "created_at"]
    list_filter = ["status", "modality", "created_at"]
    search_fields = ["accession_number", "visit__patient__hospital_number", "exam_requested"]
    list_select_related = ["visit"]
    raw_id_fields = ["visit", "ordering_doctor"]
    readonly_fields = ["created_at", "updated_at"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SeriesInline(RadiologyAccessMixin, ThroughTheDoorMixin, ReadOnlyMixin, admin.TabularInline):
    model = RadiologySeries
    door = visible_series
    fields = ["series_number", "series_uid", "series_description", "modality", "image_count"]
    readonly_fields = fields
    extra = 0
    show_change_link = True

    @admin.display(description="images")
    def image_count(self, obj: RadiologySeries) -> int:
        return obj.images.count()


class ImageInline(RadiologyAccessMixin, ThroughTheDoorMixin, ReadOnlyMixin, admin.TabularInline):
    model = RadiologyImage
    door = visible_images
    fields = ["instance_number", "image_uid", "filename", "mime_type", "file_size", "checksum"]
    readonly_fields = fields
    extra = 0
    show_change_link = True


@admin.register(RadiologyStudy)
class RadiologyStudyAdmin(RadiologyAccessMixin, ThroughTheDoorMixin, ReadOnlyMixin, admin.ModelAdmin):
    door = visible_studies
    list_display = [
        "study_uid",
        "patient_id",
        "modality",
        "study_date",
        "study_description",
        "source_clinic",
        "created_at",
    ]
    list_filter = ["modality", "study_date", "created_at", "source_clinic"]
    search_fields = ["study_uid", "patient_id", "accession_number", "radiology_order__accession_number"]
    date_hierarchy = "study_date"
    inlines = [SeriesInline]
    readonly_fields = ["preview"]

    @admin.display(description="Series")
    def preview(self, obj: RadiologyStudy) -> str:
        """Each series' thumbnail (DICOMweb, with the admin's session) and a link to the viewer."""
        thumbnails = format_html_join(
            "",
            '<figure style="display:inline-block;margin:0 8px 8px 0;text-align:center">'
            '<img src="{}" width="96" height="96" alt="" style="background:#000;object-fit:contain">'
            "<figcaption>{} {}</figcaption></figure>",
            (
                (
                    reverse(
                        "radiology:dicomweb-series-thumbnail",
                        kwargs={"study_uid": obj.study_uid, "series_uid": series.series_uid},
                    )
                    + "?viewport=96,96",
                    series.modality,
                    series.series_description,
                )
                for series in obj.series.order_by(F("series_number").asc(nulls_last=True), "id")
            ),
        )
        link = reverse("admin:radiology_radiologystudy_viewer", args=[obj.pk])
        return format_html('<div>{}</div><p><a class="button" href="{}">Open in viewer</a></p>', thumbnails, link)

    def get_urls(self) -> list[Any]:
        urls = super().get_urls()
        viewer = path(
            "<int:study_id>/viewer/",
            self.admin_site.admin_view(self.open_viewer),
            name="radiology_radiologystudy_viewer",
        )
        return [viewer, *urls]

    def open_viewer(self, request: HttpRequest, study_id: int) -> HttpResponse:
        """Issue a viewer token for this admin and go to the study's viewer URL."""
        if not can_view_radiology(request.user):
            raise PermissionDenied
        study = visible_studies(principal_of_user(request.user)).filter(pk=study_id).first()
        if study is None:
            raise Http404
        from apps.radiology.pacs_lite_service import PACSLiteService

        url = PACSLiteService.generate_viewer_url(
            study_uid=study.study_uid, user=request.user, base_url=request.build_absolute_uri("/")
        )
        return HttpResponseRedirect(url)


@admin.register(RadiologySeries)
class RadiologySeriesAdmin(RadiologyAccessMixin, ThroughTheDoorMixin, ReadOnlyMixin, admin.ModelAdmin):
    door = visible_series
    list_display = ["series_uid", "study", "series_number", "modality", "series_description"]
    list_filter = ["modality"]
    search_fields = ["series_uid", "study__study_uid", "study__patient_id"]
    list_select_related = ["study"]
    inlines = [ImageInline]


@admin.register(RadiologyImage)
class RadiologyImageAdmin(RadiologyAccessMixin, ThroughTheDoorMixin, ReadOnlyMixin, admin.ModelAdmin):
    door = visible_images
    list_display = ["image_uid", "series", "instance_number", "mime_type", "patient_identity", "created_at"]
    list_filter = ["mime_type", "patient_identity", "series__modality", "created_at"]
    search_fields = ["image_uid", "series__series_uid", "series__study__study_uid", "series__study__patient_id"]
    list_select_related = ["series"]
    fields = IMAGE_FIELDS
    readonly_fields = IMAGE_FIELDS

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Staff who may see radiology data, without a Django view permission of their own.
        return bool(request.user.is_active and request.user.is_staff and can_view_radiology(request.user))

    # The change view is still reachable (read-only) so admins can inspect an image.
    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class AssignForm(forms.Form):
    """Which order receives the files, and the tech's reason if some name another patient."""

    accession_number = forms.CharField(max_length=16, help_text="The accession number of the order they belong to.")
    patient_mismatch_reason = forms.CharField(
        max_length=255,
        required=False,
        help_text="Only if files name another patient than the order's and you confirm they belong to it: why.",
    )

    def clean_accession_number(self) -> RadiologyOrder:
        accession = self.cleaned_data["accession_number"].strip()
        order = RadiologyOrder.objects.select_related("visit__patient").filter(accession_number=accession).first()
        if order is None:
            raise forms.ValidationError("No radiology order has this accession number.")
        return order


class DiscardForm(forms.Form):
    reason = forms.CharField(max_length=255, help_text="Why these files are discarded (kept in the audit trail).")


@admin.register(UnmatchedImage)
class UnmatchedImageAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """The unmatched inbox: files that came with no order, by what their own header says.

    Radiology techs (and superusers) only: doctors see nothing of a file until it is assigned
    to an order. Each action (assign the selected files, assign their whole studies, discard
    with a reason) goes through ingest/unmatched.py and is audited there.
    """

    list_display = [
        "received_at",
        "status",
        "source",
        "patient_id",
        "patient_name",
        "patient_birth_date",
        "accession_number",
        "modality",
        "study_date",
        "study_description",
        "series_description",
        "instance_number",
    ]
    list_filter = ["status", "source", "modality", "received_at"]
    search_fields = ["patient_id", "patient_name", "accession_number", "study_uid", "image_uid"]
    date_hierarchy = "received_at"
    list_select_related = ["received_by", "handled_by"]
    actions = ["assign_selected", "assign_whole_studies", "discard_selected"]
    readonly_fields = [field.name for field in UnmatchedImage._meta.fields]

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._is_tech(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._is_tech(request)

    def has_decide_permission(self, request: HttpRequest) -> bool:
        return self._is_tech(request)

    @staticmethod
    def _is_tech(request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_staff and can_upload_radiology(request.user))

    @admin.action(description="Assign the selected files to an order", permissions=["decide"])
    def assign_selected(self, request: HttpRequest, queryset: Any) -> HttpResponse | None:
        return self._assign(request, queryset, list(queryset.values_list("pk", flat=True)), whole_studies=False)

    @admin.action(description="Assign the whole studies of the selected files to an order", permissions=["decide"])
    def assign_whole_studies(self, request: HttpRequest, queryset: Any) -> HttpResponse | None:
        from apps.radiology.ingest import unmatched

        ids = unmatched.pending_of_studies(queryset.values_list("pk", flat=True))
        return self._assign(request, queryset, ids, whole_studies=True)

    @admin.action(description="Discard the selected files (with a reason)", permissions=["decide"])
    def discard_selected(self, request: HttpRequest, queryset: Any) -> HttpResponse | None:
        form = DiscardForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return self._decision_page(request, queryset, form, "Discard unmatched files", len(queryset))
        from apps.radiology.ingest import unmatched

        discarded = unmatched.discard(
            queryset.values_list("pk", flat=True),
            user=request.user,
            channel="admin",
            reason=form.cleaned_data["reason"],
        )
        self.message_user(request, f"Discarded {len(discarded)} unmatched file(s).")
        return None

    def _assign(
        self, request: HttpRequest, queryset: Any, ids: list[int], *, whole_studies: bool
    ) -> HttpResponse | None:
        form = AssignForm(request.POST if "apply" in request.POST else None)
        title = "Assign the whole studies to an order" if whole_studies else "Assign files to an order"
        if not form.is_valid():
            return self._decision_page(request, queryset, form, title, len(ids))
        from apps.radiology.ingest import unmatched

        report = unmatched.assign(
            ids,
            order=form.cleaned_data["accession_number"],
            user=request.user,
            channel="admin",
            mismatch_reason=form.cleaned_data["patient_mismatch_reason"],
        )
        self.message_user(request, f"Assigned {len(report.assigned)} file(s) to the order.")
        for row, error in report.refused:
            self.message_user(request, f"{row.filename}: not assigned ({error.code}: {error.detail})", messages.ERROR)
        return None

    def _decision_page(
        self, request: HttpRequest, queryset: Any, form: forms.Form, title: str, count: int
    ) -> TemplateResponse:
        return TemplateResponse(
            request,
            "admin/radiology/unmatched_decision.html",
            {
                **self.admin_site.each_context(request),
                "title": title,
                "form": form,
                "count": count,
                "selected": queryset.values_list("pk", flat=True),
                "action": request.POST.get("action", ""),
                "opts": self.model._meta,
            },
        )


@admin.register(StudyDelivery)
class StudyDeliveryAdmin(RadiologyAccessMixin, ReadOnlyMixin, admin.ModelAdmin):
    """Store and forward: each study's delivery to a forwarding destination; a tech retries failed ones here."""

    list_display = ["study", "destination", "state", "summary", "requested_by", "delivered_at", "updated_at"]
    list_filter = ["state", "destination"]
    search_fields = ["study__study_uid", "study__accession_number", "study__radiology_order__accession_number"]
    list_select_related = ["study", "requested_by"]
    actions = ["send_again"]

    def get_queryset(self, request: HttpRequest) -> Any:
        # Deliveries of the studies this user may read (the read door), as every radiology admin page.
        return super().get_queryset(request).filter(study__in=visible_studies(principal_of_user(request.user)))

    @admin.display(description="Progress")
    def summary(self, obj: StudyDelivery) -> str:
        return obj.summary

    @admin.action(description="Send again: queue what is not delivered, retry what failed", permissions=["change"])
    def send_again(self, request: HttpRequest, queryset: Any) -> None:
        for delivery in queryset.select_related("study"):
            request_forwarding(study=delivery.study, destination=delivery.destination, requested_by=request.user)
        self.message_user(request, f"Queued {queryset.count()} deliver{'y' if queryset.count() == 1 else 'ies'} again.")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The action needs it (radiology techs and superusers); the fields stay read-only.
        return can_upload_radiology(request.user) if obj is None else False


@admin.register(ForwardTask)
class ForwardTaskAdmin(RadiologyAccessMixin, ReadOnlyMixin, admin.ModelAdmin):
    """The outbox, image by image: why one is waiting (its last error) and how many bytes it took."""

    list_display = ["image", "destination", "state", "attempts", "next_attempt_at", "error_code", "wire_bytes"]
    list_filter = ["state", "destination", "error_code"]
    search_fields = ["image__image_uid", "study__study_uid"]
    list_select_related = ["image"]

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).filter(study__in=visible_studies(principal_of_user(request.user)))


@admin.register(ViewerToken)
class ViewerTokenAdmin(RadiologyAccessMixin, ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "study", "issued_to", "issued_at", "expires_at", "revoked_at"]
    list_filter = ["revoked_at", "issued_at"]
    search_fields = ["id", "study__study_uid"]
    list_select_related = ["study", "issued_to"]
    actions = ["revoke"]

    # permissions: without it, any staff user who may only *view* tokens could revoke them.
    @admin.action(description="Revoke the selected viewer tokens (they stop working at once)", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: Any) -> None:
        from apps.radiology.pacs_lite_service import PACSLiteService

        revoked = sum(PACSLiteService.revoke_viewer_token(token_id=token.pk) for token in queryset)
        self.message_user(request, f"Revoked {revoked} viewer token(s).")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Actions need it; the fields stay read-only (no editable fields are declared).
        return bool(request.user.is_active and request.user.is_superuser) if obj is None else False


@admin.register(AuditEvent)
class AuditEventAdmin(RadiologyAccessMixin, ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "at",
        "username",
        "role",
        "viewer_token_id",
        "channel",
        "action",
        "method",
        "route",
        "study_uid",
        "image_id",
        "status_code",
        "outcome",
        "client_address",
    ]
    list_filter = ["outcome", "channel", "role", "action", "method", "at"]
    search_fields = ["username", "study_uid", "series_uid", "image_uid", "viewer_token_id", "route"]
    date_hierarchy = "at"
    list_select_related = ["user"]


@admin.register(LinkRevocation)
class LinkRevocationAdmin(RadiologyAccessMixin, ReadOnlyMixin, admin.ModelAdmin):
    """Who had all their links revoked, when, by whom (written by the user admin's action or revoke_links_of)."""

    list_display = ["user", "links_valid_after", "revoked_by"]
    list_select_related = ["user", "revoked_by"]
    search_fields = ["user__username"]


@admin.register(DicomListenerHeartbeat)
class DicomListenerHeartbeatAdmin(RadiologyAccessMixin, ReadOnlyMixin, admin.ModelAdmin):
    """Each DICOM listener's last heartbeat, as /healthz judges it (written only by the listener)."""

    list_display = ["ae_title", "host", "port", "beat_at", "active_associations", "stopped_at", "started_at", "pid"]


_user_model = get_user_model()
_registered_user_admin = (
    type(admin.site.get_model_admin(_user_model)) if admin.site.is_registered(_user_model) else UserAdmin
)


class RadiologyLinksUserAdmin(_registered_user_admin):  # type: ignore[misc,valid-type]
    """The EMR's user admin, plus revoking every radiology link a user issued (superusers only)."""

    actions = [*(_registered_user_admin.actions or []), "revoke_radiology_links"]

    @admin.action(
        description="Revoke every radiology link these users issued (viewer links and image URLs)",
        permissions=["revoke_links"],
    )
    def revoke_radiology_links(self, request: HttpRequest, queryset: Any) -> None:
        users = list(queryset)
        tokens = sum(signing.revoke_links_of(user=user, revoked_by=request.user) for user in users)
        self.message_user(
            request, f"Revoked every radiology link of {len(users)} user(s), {tokens} of them active viewer token(s)."
        )

    def has_revoke_links_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)


if admin.site.is_registered(_user_model):
    admin.site.unregister(_user_model)
admin.site.register(_user_model, RadiologyLinksUserAdmin)
