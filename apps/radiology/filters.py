"""Query filters of the studies list (the seed's ?radiology_order_id= and more)."""

from __future__ import annotations

import django_filters

from apps.radiology.models import RadiologyStudy


class StudyFilter(django_filters.FilterSet):
    radiology_order_id = django_filters.NumberFilter(field_name="radiology_order_id")
    patient_id = django_filters.CharFilter(field_name="patient_id")
    modality = django_filters.CharFilter(field_name="modality", lookup_expr="iexact")
    study_date_from = django_filters.DateFilter(field_name="study_date", lookup_expr="gte")
    study_date_to = django_filters.DateFilter(field_name="study_date", lookup_expr="lte")

    class Meta:
        model = RadiologyStudy
        fields: list[str] = []
