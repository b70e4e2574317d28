"""Read queries with their prefetches, so list endpoints make a constant number of queries."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from apps.radiology.models import RadiologyImage, RadiologySeries, RadiologyStudy


def study_list() -> QuerySet[RadiologyStudy]:
    """Studies newest first (index rad_study_newest)."""
    return RadiologyStudy.objects.order_by("-created_at", "-id")


def studies_with_series_and_images() -> QuerySet[RadiologyStudy]:
    """Studies with their series (by number) and images (by instance number): 3 queries for one."""
    images = RadiologyImage.objects.order_by("instance_number", "id").only(
        "id",
        "series_id",
        "image_uid",
        "filename",
        "file_key",
        "file_size",
        "mime_type",
        "instance_number",
        "checksum",
    )
    series = RadiologySeries.objects.order_by("series_number", "id").prefetch_related(
        Prefetch("images", queryset=images)
    )
    return RadiologyStudy.objects.prefetch_related(Prefetch("series", queryset=series))
