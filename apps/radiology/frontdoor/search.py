"""The study list a person searches: what they may search by, and the one query that answers it.

The search is posted and kept in the session, never put in the page's URL: a patient's name
in a query string lands in the access log of every server and proxy on the way, in the
browser's history on a shared workstation, and in a Referer. The list page's URL carries only
its page number. The audit trail records who read the list (access/audit.py), never the search.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django import forms
from django.db.models import Count, F, IntegerField, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce

from apps.radiology.access import selectors
from apps.radiology.access.principals import Principal
from apps.radiology.access.visible import visible_images
from apps.radiology.dicomweb.wildcards import WildcardMatch
from apps.radiology.models import Modality, RadiologyStudy

SESSION_KEY = "radiology_frontdoor_study_search"
PATIENT_MAX_LENGTH = 64


@dataclass(frozen=True)
class StudySearch:
    """What the list is narrowed to; empty: every study the person may see."""

    patient: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    modality: str = ""

    @property
    def is_empty(self) -> bool:
        return self == StudySearch()

    def to_session(self) -> dict[str, str]:
        return {
            "patient": self.patient,
            "date_from": self.date_from.isoformat() if self.date_from else "",
            "date_to": self.date_to.isoformat() if self.date_to else "",
            "modality": self.modality,
        }

    @classmethod
    def from_session(cls, stored: Any) -> StudySearch:
        """The search kept in the session; anything unreadable there is no search (never a 500)."""
        form = StudySearchForm(stored if isinstance(stored, dict) else {})
        return form.search() if form.is_valid() else cls()


class StudySearchForm(forms.Form):
    """The search box: every field optional, each checked so a bad value is a message, not a 500."""

    patient = forms.CharField(
        label="Patient name or ID",
        required=False,
        max_length=PATIENT_MAX_LENGTH,
        strip=True,
        help_text="Part of the name, or the ID; * and ? are wildcards.",
    )
    date_from = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    modality = forms.ChoiceField(label="Modality", required=False, choices=[("", "Any"), *Modality.choices])

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        date_from, date_to = cleaned.get("date_from"), cleaned.get("date_to")
        if date_from and date_to and date_from > date_to:
            raise forms.ValidationError("The From date must be on or before the To date.")
        return cleaned

    def search(self) -> StudySearch:
        data = self.cleaned_data
        return StudySearch(
            patient=data.get("patient") or "",
            date_from=data.get("date_from"),
            date_to=data.get("date_to"),
            modality=data.get("modality") or "",
        )


def _image_count(principal: Principal) -> Coalesce:
    """Each study's image count as a subquery of the list's own query (no query per row)."""
    per_study = (
        visible_images(principal)
        .filter(series__study=OuterRef("pk"))
        .order_by()
        .values("series__study")
        .annotate(count=Count("pk"))
        .values("count")
    )
    return Coalesce(Subquery(per_study, output_field=IntegerField()), 0)


def _patient_condition(patient: str) -> Q:
    """Name (either form, case-insensitive, anywhere in it) or ID; LIKE, linear time (dicomweb/wildcards.py)."""
    anywhere = f"*{patient}*"
    return (
        Q(WildcardMatch(F("patient_name"), anywhere))
        | Q(WildcardMatch(F("patient_dicom_name"), anywhere))
        | Q(WildcardMatch(F("patient_id"), anywhere))
    )


def matching_studies(principal: Principal, search: StudySearch) -> QuerySet[RadiologyStudy]:
    """The principal's studies matching `search`, newest first (as the API lists them), with `image_count`.

    One query per page of it whatever the page size (and one to count them).
    """
    if principal.read_scope.is_nothing:
        return RadiologyStudy.objects.none()
    studies = selectors.study_list(principal)
    if search.patient:
        studies = studies.filter(_patient_condition(search.patient))
    if search.date_from:
        studies = studies.filter(study_date__gte=search.date_from)
    if search.date_to:
        studies = studies.filter(study_date__lte=search.date_to)
    if search.modality:
        studies = studies.filter(modality__iexact=search.modality)
    return studies.annotate(image_count=_image_count(principal)).only(
        "id",
        "created_at",
        "study_date",
        "study_description",
        "modality",
        "patient_name",
        "patient_id",
        "source_clinic",
    )
