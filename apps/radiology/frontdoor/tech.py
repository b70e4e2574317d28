"""What a radiology tech must act on: their own failed uploads, and the unmatched inbox.

A failed upload (RadiologyUpload status failed) is the tech's own, as the upload API shows
each user only theirs. The unmatched inbox (UnmatchedImage waiting for a tech) is decided in
admin (ingest/unmatched.py's actions); the front door only counts it and links there.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from apps.radiology.models import RadiologyUpload, UnmatchedImage


@dataclass(frozen=True)
class TechAttention:
    """The counts the study list shows a tech above the list (two queries)."""

    failed_uploads: int
    unmatched_waiting: int


def failed_uploads(user: AbstractBaseUser) -> QuerySet[RadiologyUpload]:
    """The user's failed uploads, latest failure first, with the order and patient they were for."""
    return (
        RadiologyUpload.objects.filter(uploaded_by=user, status=RadiologyUpload.Status.FAILED)
        .select_related("radiology_order__visit__patient")
        .order_by("-updated_at", "-id")
    )


def tech_attention(user: AbstractBaseUser) -> TechAttention:
    return TechAttention(
        failed_uploads=failed_uploads(user).count(),
        unmatched_waiting=UnmatchedImage.objects.filter(status=UnmatchedImage.Status.PENDING).count(),
    )
