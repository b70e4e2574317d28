"""Read queries with their prefetches, so list endpoints make a constant number of queries.

Each starts from the read door (visible.py): the studies, series and images of the principal.
"""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from apps.radiology.access.principals import Principal
from apps.radiology.access.visible import visible_images, visible_series, visible_studies
from apps.radiology.models import RadiologyStudy, StudyDelivery


def study_list(principal: Principal) -> QuerySet[RadiologyStudy]:
    """The principal's studies newest first (index rad_study_newest), with their forwarding deliveries (1 query)."""
    return (
        visible_studies(principal)
        .order_by("-created_at", "-id")
        .prefetch_related(Prefetch("deliveries", queryset=StudyDelivery.objects.order_by("destination")))
    )


def studies_with_series_and_images(principal: Principal) -> QuerySet[RadiologyStudy]:
    """The principal's studies with their series (by number) and images (by instance number): 3 queries for one."""
    images = (
        visible_images(principal)
        .order_by("instance_number", "id")
        .only(
            "id",
            "series_id",
            "image_uid",
            "filename",
            "file_key",
            "file_size",
            "mime_type",
            "instance_number",
            "checksum",
            "patient_identity",
            "file_patient_id",
            "file_patient_name",
            "patient_identity_reason",
        )
    )
    series = (
        visible_series(principal).order_by("series_number", "id").prefetch_related(Prefetch("images", queryset=images))
    )
    return visible_studies(principal).prefetch_related(Prefetch("series", queryset=series))
