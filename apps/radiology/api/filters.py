"""Query filters of the studies list (the seed's ?radiology_order_id= and more)."""

from __future__ import annotations

import django_filters

from apps.radiology.models import RadiologyStudy

# The range of the bigint id column: a value beyond it is refused (400) rather than sent to
# the database driver, which cannot bind it (SQLite OverflowError, PostgreSQL out of range: a 500).
ID_MIN, ID_MAX = -(2**63), 2**63 - 1


class StudyFilter(django_filters.FilterSet):
    radiology_order_id = django_filters.NumberFilter(
        field_name="radiology_order_id", min_value=ID_MIN, max_value=ID_MAX
    )
    patient_id = django_filters.CharFilter(field_name="patient_id")
    modality = django_filters.CharFilter(field_name="modality", lookup_expr="iexact")
    study_date_from = django_filters.DateFilter(field_name="study_date", lookup_expr="gte")
    study_date_to = django_filters.DateFilter(field_name="study_date", lookup_expr="lte")

    class Meta:
        model = RadiologyStudy
        fields: list[str] = []
