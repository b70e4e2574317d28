"""QIDO-RS searches for studies, series and instances, answered from the database alone.

Matching (PS3.18 8.3.4, the subset OHIF and common clients send): UID lists, exact PatientID,
AccessionNumber and Modality, PatientName with * and ? (case-insensitive), StudyDate as a
date or a range, ModalitiesInStudy; limit/offset; includefield (tags, keywords or "all").
A fixed number of queries whatever the number of results.

Every search runs as a principal and starts from the read door (access/visible.py): what it
may not see is not there to match, the prepared fast path included.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from apps.radiology.access.principals import Principal
from apps.radiology.access.visible import VisibleLookup, visible_images, visible_series, visible_studies
from apps.radiology.errors import InvalidQuery
from apps.radiology.imagefiles import stored_header
from apps.radiology.models import RadiologyImage, RadiologySeries

from .dicom_json import instance_attributes, series_attributes, study_attributes
from .wildcards import WildcardMatch

MAX_LIMIT = 1000
# Values of one key (a UID list): beyond it SQLite refuses the statement (too many variables).
MAX_VALUES = 1000
# ASCII digits only: str.isdigit() and \d also accept "²" or "٣", which int() then refuses
# or reads (a 500 or a surprise). At most 18 digits: offset + limit stays inside the 64-bit
# integer SQL LIMIT/OFFSET bind to (2**63 and beyond were a 500), and int() never sees
# thousands of digits.
_PAGE_NUMBER = re.compile(r"[0-9]{1,18}")
_DATE = re.compile(r"[0-9]{8}")
_INTEGER = re.compile(r"-?[0-9]{1,10}")
# SeriesNumber and InstanceNumber are 32-bit columns (IS values are at most 12 characters).
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@dataclass
class SearchQuery:
    """The parsed query string of a QIDO request."""

    filters: dict[str, list[str]] = field(default_factory=dict)
    include_fields: set[str] = field(default_factory=set)
    include_all: bool = False
    limit: int | None = None
    offset: int = 0


def _keyword(name: str) -> str:
    """A query key as a DICOM keyword: 'PatientID' and '00100020' are the same key."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return keyword_for_tag(int(name, 16)) or name.upper()
    return name


def _tag(name: str) -> str | None:
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return name.upper()
    tag = tag_for_keyword(name)
    return f"{tag:08X}" if tag is not None else None


def _page_number(key: str, raw: str) -> int:
    """limit or offset as an int; InvalidQuery (400 invalid_query) unless 1 to 18 ASCII digits."""
    if not _PAGE_NUMBER.fullmatch(raw):
        if raw.isascii() and raw.isdigit():
            raise InvalidQuery(f"{key} must be a non-negative integer of at most 18 digits.")
        raise InvalidQuery(f"{key} must be a non-negative integer.")
    return int(raw)


def _integer_value(keyword: str, raw: str) -> int:
    """An integer attribute's value (SeriesNumber, InstanceNumber) in the 32-bit range of its column."""
    if not _INTEGER.fullmatch(raw):
        raise InvalidQuery(f"{keyword} must be an integer.")
    number = int(raw)
    if not INT32_MIN <= number <= INT32_MAX:
        raise InvalidQuery(f"{keyword} must be an integer from {INT32_MIN} to {INT32_MAX}.")
    return number


def check_filter(key: str, values: list[str]) -> None:
    """InvalidQuery unless a search key and its values can go to the database (QIDO and C-FIND)."""
    if "\x00" in key or any("\x00" in value for value in values):
        # PostgreSQL cannot take NUL in a string (the driver raised: a 500).
        raise InvalidQuery("A search parameter must not contain a NUL character.")
    if len(values) > MAX_VALUES:
        raise InvalidQuery(f"{_keyword(key)} takes at most {MAX_VALUES} values.")


def parse_search(params: Any) -> SearchQuery:
    """Read filters, includefield, limit and offset from a QueryDict."""
    query = SearchQuery()
    for key in params:
        values = [value for raw in params.getlist(key) for value in raw.split(",") if value != ""]
        check_filter(key, values)
        lowered = key.lower()
        if lowered == "includefield":
            for value in values:
                if value.lower() == "all":
                    query.include_all = True
                elif (tag := _tag(value)) is not None:
                    query.include_fields.add(tag)
        elif lowered in ("limit", "offset"):
            number = _page_number(key, params.get(key, ""))
            if lowered == "limit":
                query.limit = min(number, MAX_LIMIT)
            else:
                query.offset = number
        elif lowered in ("fuzzymatching", "format"):
            continue
        elif values:
            query.filters[_keyword(key)] = values
    return query


def _date_range(value: str) -> tuple[dt.date | None, dt.date | None]:
    start, dash, end = value.partition("-")
    for part in (start, end):
        if part and not _DATE.fullmatch(part):
            raise InvalidQuery("StudyDate must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD.")

    def as_date(text: str) -> dt.date | None:
        try:
            return dt.datetime.strptime(text, "%Y%m%d").date() if text else None  # noqa: DTZ007 (a date)
        except ValueError:
            raise InvalidQuery("StudyDate is not a valid date.") from None

    if not dash:
        return as_date(start), as_date(start)
    return as_date(start), as_date(end)


# The keys each level's conditions below match on (C-FIND warns of the keys it does not match).
STUDY_MATCH_KEYS = frozenset(
    {"StudyInstanceUID", "PatientID", "AccessionNumber", "PatientName", "StudyDate", "ModalitiesInStudy"}
)
SERIES_MATCH_KEYS = frozenset({"SeriesInstanceUID", "Modality", "SeriesNumber"})
INSTANCE_MATCH_KEYS = frozenset({"SOPInstanceUID", "SOPClassUID", "InstanceNumber"})


def _study_q(filters: dict[str, list[str]], prefix: str = "") -> Q:
    """Conditions on study attributes; `prefix` reaches the study from series or images."""
    condition = Q()
    if values := filters.get("StudyInstanceUID"):
        condition &= Q(**{f"{prefix}study_uid__in": values})
    if values := filters.get("PatientID"):
        condition &= Q(**{f"{prefix}patient_id": values[0]})
    if values := filters.get("AccessionNumber"):
        condition &= Q(**{f"{prefix}accession_number": values[0]})
    if values := filters.get("PatientName"):
        # SQL LIKE, not a regular expression: linear time whatever the pattern (wildcards.py).
        condition &= Q(WildcardMatch(F(f"{prefix}patient_dicom_name"), values[0])) | Q(
            WildcardMatch(F(f"{prefix}patient_name"), values[0])
        )
    if values := filters.get("StudyDate"):
        start, end = _date_range(values[0])
        if start:
            condition &= Q(**{f"{prefix}study_date__gte": start})
        if end:
            condition &= Q(**{f"{prefix}study_date__lte": end})
    if values := filters.get("ModalitiesInStudy"):
        # A subquery, not a join: joining the study's series would repeat a study (or an
        # instance) once per matching series and make the study's counts count only those.
        with_modality = RadiologySeries.objects.filter(modality__in=values).values("study_id")
        condition &= Q(**{f"{prefix}pk__in": with_modality})
    return condition


def _series_q(filters: dict[str, list[str]], prefix: str = "") -> Q:
    condition = Q()
    if values := filters.get("SeriesInstanceUID"):
        condition &= Q(**{f"{prefix}series_uid__in": values})
    if values := filters.get("Modality"):
        condition &= Q(**{f"{prefix}modality__in": values})
    if values := filters.get("SeriesNumber"):
        condition &= Q(**{f"{prefix}series_number": _integer_value("SeriesNumber", values[0])})
    return condition


def _instance_q(filters: dict[str, list[str]]) -> Q:
    condition = Q()
    if values := filters.get("SOPInstanceUID"):
        condition &= Q(image_uid__in=values)
    if values := filters.get("SOPClassUID"):
        condition &= Q(sop_class_uid__in=values)
    if values := filters.get("InstanceNumber"):
        condition &= Q(instance_number=_integer_value("InstanceNumber", values[0]))
    return condition


def _page(queryset: QuerySet[Any], query: SearchQuery) -> list[Any]:
    end = query.offset + query.limit if query.limit is not None else None
    return list(queryset[query.offset : end])


def _select(attributes: dict[str, Any], extra: dict[str, Any], query: SearchQuery) -> dict[str, Any]:
    """Attributes of the level, plus what includefield asks for from `extra`."""
    result = dict(attributes)
    if query.include_all:
        for tag, value in extra.items():
            result.setdefault(tag, value)
    else:
        for tag in query.include_fields:
            if tag in extra:
                result.setdefault(tag, extra[tag])
    return dict(sorted(result.items()))


UrlMaker = Callable[..., str]


def search_studies(query: SearchQuery, *, principal: Principal, url: UrlMaker) -> list[dict[str, Any]]:
    studies = visible_studies(principal).filter(_study_q(query.filters))
    # Counts as subqueries per study of the page: a join with GROUP BY counted every study's
    # series and images before the page was cut (10,000 studies: ~6x slower than 100).
    series_count = RadiologySeries.objects.filter(study_id=OuterRef("pk")).order_by().values("study_id")
    image_count = RadiologyImage.objects.filter(series__study_id=OuterRef("pk")).order_by().values("series__study_id")
    studies = studies.annotate(
        series_total=Coalesce(Subquery(series_count.annotate(n=Count("pk")).values("n")), 0),
        instance_total=Coalesce(Subquery(image_count.annotate(n=Count("pk")).values("n")), 0),
    ).order_by("-created_at", "-id")
    page = _page(studies, query)
    modalities = _modalities_by_study([study.pk for study in page])
    return [
        _select(
            study_attributes(
                study,
                modalities=modalities.get(study.pk, []),
                series_count=study.series_total,
                instance_count=study.instance_total,
                retrieve_url=url(study.study_uid),
            ),
            {},
            query,
        )
        for study in page
    ]


def _modalities_by_study(study_ids: list[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = defaultdict(list)
    rows = (
        RadiologySeries.objects.filter(study_id__in=study_ids)
        .exclude(modality="")
        .values_list("study_id", "modality")
        .distinct()
        .order_by("study_id", "modality")
    )
    for study_id, modality in rows:
        found[study_id].append(modality)
    return found


def _series_listing(series: QuerySet[RadiologySeries]) -> QuerySet[RadiologySeries]:
    return (
        series.select_related("study")
        .annotate(instance_total=Count("images", distinct=True))
        # NULLs last on every database (SQLite would put them first, PostgreSQL last).
        .order_by("study_id", F("series_number").asc(nulls_last=True), "id")
    )


_SERIES_OF_STUDY = VisibleLookup(
    visible_series, lambda series, study_uid: _series_listing(series.filter(study__study_uid=study_uid)), parameters=1
)


def search_series(
    query: SearchQuery, *, principal: Principal, url: UrlMaker, study_uid: str | None = None
) -> list[dict[str, Any]]:
    """Series `principal` may see matching `query`; only those of the study `study_uid` when given."""
    if study_uid is not None and query == SearchQuery():
        # What a viewer asks first when it opens a study: one query compiled once per scope kind.
        page = _SERIES_OF_STUDY.all(principal, study_uid)
    else:
        series = visible_series(principal).filter(_series_q(query.filters) & _study_q(query.filters, "study__"))
        if study_uid is not None:
            series = series.filter(study__study_uid=study_uid)
        page = _page(_series_listing(series), query)
    wants_modalities = query.include_all or "00080061" in query.include_fields
    modalities = _modalities_by_study(list({item.study_id for item in page})) if wants_modalities else {}
    results = []
    for item in page:
        study = item.study
        extra = (
            study_attributes(
                study,
                modalities=modalities.get(study.pk, []),
                series_count=0,
                instance_count=0,
                retrieve_url=url(study.study_uid),
            )
            if query.include_all or query.include_fields
            else {}
        )
        for counted in ("00201206", "00201208"):
            extra.pop(counted, None)  # study counts are not computed at series level
        results.append(
            _select(
                series_attributes(
                    item,
                    study_uid=study.study_uid,
                    instance_count=item.instance_total,
                    retrieve_url=url(study.study_uid, item.series_uid),
                ),
                extra,
                query,
            )
        )
    return results


def search_instances(
    query: SearchQuery,
    *,
    principal: Principal,
    url: UrlMaker,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> list[dict[str, Any]]:
    """Instances `principal` may see matching `query`, of one study or series when given."""
    images = visible_images(principal).filter(
        _instance_q(query.filters) & _series_q(query.filters, "series__") & _study_q(query.filters, "series__study__")
    )
    if study_uid is not None:
        images = images.filter(series__study__study_uid=study_uid)
    if series_uid is not None:
        images = images.filter(series__series_uid=series_uid)
    wants_metadata = query.include_all or bool(query.include_fields)
    images = images.select_related("series__study").order_by(
        F("series__series_number").asc(nulls_last=True), "series_id", F("instance_number").asc(nulls_last=True), "id"
    )
    if not wants_metadata:
        images = images.defer(stored_header.HEADER_COLUMN)
    page = _page(images, query)
    results = []
    for image in page:
        series = image.series
        study = series.study
        extra: dict[str, Any] = {}
        if wants_metadata:
            extra = {
                **stored_header.header_elements(image),
                **series_attributes(series, study_uid=study.study_uid, instance_count=0, retrieve_url=""),
            }
            extra.pop("00201209", None)
            extra.pop("00081190", None)
            extra = {
                tag: value for tag, value in extra.items() if "BulkDataURI" not in value and "InlineBinary" not in value
            }
        results.append(
            _select(
                instance_attributes(
                    image,
                    study_uid=study.study_uid,
                    series_uid=series.series_uid,
                    modality=series.modality,
                    retrieve_url=url(study.study_uid, series.series_uid, image.image_uid),
                ),
                extra,
                query,
            )
        )
    return results
