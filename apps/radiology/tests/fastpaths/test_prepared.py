"""PreparedLookup: the same rows as the queryset, compiled once, with Django's conversions."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.test.utils import CaptureQueriesContext

from apps.radiology.fastpaths import prepared
from apps.radiology.fastpaths.prepared import PreparedLookup, executed_sql
from apps.radiology.models import RadiologyImage, RadiologyOrder
from apps.radiology.tests.trust_helpers import StoredStudy, ingest_study

pytestmark = pytest.mark.django_db


def by_uid(image_uid: str) -> Any:
    return RadiologyImage.objects.select_related("series__study").filter(image_uid=image_uid).order_by()[:1]


@pytest.fixture
def stored(make_order: Any) -> StoredStudy:
    order: RadiologyOrder = make_order()
    return ingest_study(order, images=2)


def field_values(obj: Any) -> dict[str, Any]:
    """Every loaded field (reading a deferred one would load it)."""
    deferred = obj.get_deferred_fields()
    return {
        field.attname: getattr(obj, field.attname)
        for field in obj._meta.concrete_fields
        if field.attname not in deferred
    }


def test_a_row_comes_back_as_the_queryset_gives_it(stored: StoredStudy) -> None:
    lookup = PreparedLookup(by_uid, parameters=1)
    expected = by_uid(stored.images[1].image_uid)[0]

    found = lookup.first(stored.images[1].image_uid)

    assert found is not None
    assert found.get_deferred_fields() == expected.get_deferred_fields() == {"metadata_text"}
    assert field_values(found) == field_values(expected)  # JSON, dates and all, converted alike
    assert field_values(found.series) == field_values(expected.series)
    assert field_values(found.series.study) == field_values(expected.series.study)


def test_later_calls_only_bind_the_parameter(stored: StoredStudy, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[int] = []
    real = prepared._Compiled.__init__

    def counting(self: Any, *args: Any) -> None:
        compiled.append(1)
        real(self, *args)

    monkeypatch.setattr(prepared._Compiled, "__init__", counting)
    lookup = PreparedLookup(by_uid, parameters=1)
    with CaptureQueriesContext(connection) as captured:
        found = [lookup.first(image.image_uid) for image in stored.images]
        with_related = [image.series.study.study_uid for image in found if image is not None]

    assert [image.pk for image in found if image is not None] == [image.pk for image in stored.images]
    assert with_related == [stored.study.study_uid, stored.study.study_uid]  # select_related: no extra query
    assert len(captured.captured_queries) == 2
    assert compiled == [1]


def test_no_row_is_none_and_a_lookup_value_is_never_sql(stored: StoredStudy) -> None:
    lookup = PreparedLookup(by_uid, parameters=1)

    assert lookup.first("2.25.1") is None
    assert lookup.first("x' OR '1'='1") is None
    assert RadiologyImage.objects.count() == 2


def test_annotations_are_set_as_the_queryset_sets_them(stored: StoredStudy) -> None:
    from django.db.models import Value

    lookup = PreparedLookup(
        lambda uid: RadiologyImage.objects.annotate(label=Value("seen")).filter(image_uid=uid).order_by()[:1],
        parameters=1,
    )

    found = lookup.first(stored.image.image_uid)

    assert found is not None
    assert (found.pk, found.label) == (stored.image.pk, "seen")


def test_a_parameter_the_query_uses_twice_is_refused(stored: StoredStudy) -> None:
    from django.db.models import Q

    lookup = PreparedLookup(
        lambda uid: RadiologyImage.objects.filter(Q(image_uid=uid) | Q(sop_class_uid=uid)).order_by()[:1],
        parameters=1,
    )

    with pytest.raises(ValueError, match="exactly once"):
        lookup.first(stored.image.image_uid)


def test_all_gives_every_row_in_the_querysets_order(stored: StoredStudy) -> None:
    from django.db.models import Count

    def listing(series_uid: str) -> Any:
        return (
            RadiologyImage.objects.filter(series__series_uid=series_uid)
            .select_related("series")
            .annotate(same_series=Count("series__images"))
            .order_by("-instance_number")
        )

    lookup = PreparedLookup(listing, parameters=1)
    expected = list(listing(stored.series.series_uid))

    found = lookup.all(stored.series.series_uid)

    assert [(image.pk, image.same_series, image.series.pk) for image in found] == [
        (image.pk, image.same_series, image.series.pk) for image in expected
    ]
    assert [image.pk for image in found] == [stored.images[1].pk, stored.images[0].pk]
    assert lookup.all("2.25.1") == []


def _server_statements(name: str) -> list[str]:
    """The session's prepared statements of that name (PostgreSQL's pg_prepared_statements)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE name = %s", [name])
        return [row[0] for row in cursor.fetchall()]


def test_postgresql_plans_a_lookup_once_per_session_and_sqlite_gets_the_sql(stored: StoredStudy) -> None:
    lookup = PreparedLookup(by_uid, parameters=1)
    with CaptureQueriesContext(connection) as captured:
        first = lookup.first(stored.images[0].image_uid)
        second = lookup.first(stored.images[1].image_uid)
    assert (first.pk, second.pk) == (stored.images[0].pk, stored.images[1].pk)  # type: ignore[union-attr]
    compiled = lookup._for_connection()
    sent = [query["sql"] for query in captured.captured_queries]
    if connection.vendor == "postgresql":
        name = compiled.statement_name
        # Each call is an EXECUTE; the PREPARE went through the driver, so it is no query here.
        assert sent == [f"EXECUTE {name}('{image.image_uid}')" for image in stored.images]
        (statement,) = _server_statements(name)
        assert statement.startswith(f"PREPARE {name} AS SELECT ")
        assert '"radiology_radiologyimage"."image_uid" = $1 LIMIT 1' in statement
        assert compiled.prepared_in is prepared._prepared_in_session[connections[DEFAULT_DB_ALIAS]]
        assert compiled.statement_name in compiled.prepared_in
        assert [executed_sql(sql) for sql in sent] == [compiled.sql] * 2  # what a query log means
    else:
        assert sent == [compiled.sql.replace("%s", f"'{image.image_uid}'") for image in stored.images]
        assert [executed_sql(sql) for sql in sent] == sent
        assert compiled.prepared_in is None


@pytest.mark.django_db(transaction=True)
def test_a_prepared_lookup_outlives_a_rollback_and_is_prepared_again_in_a_new_session(make_order: Any) -> None:
    from django.db import transaction

    stored = ingest_study(make_order(), images=1)
    lookup = PreparedLookup(by_uid, parameters=1)
    with pytest.raises(RuntimeError), transaction.atomic():
        assert lookup.first(stored.image.image_uid).pk == stored.image.pk  # type: ignore[union-attr]
        raise RuntimeError("roll back")
    assert lookup.first(stored.image.image_uid).pk == stored.image.pk  # type: ignore[union-attr]
    first_session = connection.connection
    first_registry = lookup._for_connection().prepared_in

    connection.close()  # as Django does when CONN_MAX_AGE runs out
    assert lookup.first(stored.image.image_uid).pk == stored.image.pk  # type: ignore[union-attr]
    assert lookup.first("x' OR '1'='1") is None

    compiled = lookup._for_connection()
    if connection.vendor == "postgresql":
        assert connection.connection is not first_session
        # connection_created gave the new session a registry of its own, PREPAREd in again.
        assert first_registry is not None
        assert (
            compiled.prepared_in is prepared._prepared_in_session[connections[DEFAULT_DB_ALIAS]] is not first_registry
        )
        assert compiled.prepared_in == {compiled.statement_name}
        assert len(_server_statements(compiled.statement_name)) == 1
    else:  # SQLite: the suite's in-memory database keeps its one connection
        assert connection.connection is first_session
        assert compiled.prepared_in is None


def test_a_lookup_compiled_again_keeps_its_statement_name_and_one_registry_entry(stored: StoredStudy) -> None:
    lookup = PreparedLookup(by_uid, parameters=1)
    first = lookup._for_connection()
    entries = len(prepared._statement_sql)
    del lookup._local.compiled  # as for a new thread's connection

    again = lookup._for_connection()

    assert again is not first
    assert again.statement_name == first.statement_name
    assert len(prepared._statement_sql) == entries
    assert prepared._statement_sql[again.statement_name] == again.sql
    assert lookup.first(stored.image.image_uid).pk == stored.image.pk  # type: ignore[union-attr]


def test_on_a_django_release_not_checked_the_lookup_evaluates_its_queryset(
    stored: StoredStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiler internals are left alone: same rows, one query each, nothing compiled ahead."""
    monkeypatch.setattr(prepared, "CHECKED_DJANGO_VERSIONS", frozenset())
    monkeypatch.setattr(prepared, "_Compiled", None)  # never built
    lookup = PreparedLookup(by_uid, parameters=1)
    expected = by_uid(stored.images[1].image_uid)[0]

    with CaptureQueriesContext(connection) as captured:
        found = lookup.first(stored.images[1].image_uid)
        missing = lookup.first("2.25.1")
        listed = PreparedLookup(
            lambda uid: RadiologyImage.objects.filter(series__series_uid=uid).order_by("-instance_number"),
            parameters=1,
        ).all(stored.series.series_uid)

    assert not prepared.fast_path_supported()
    assert found is not None
    assert field_values(found) == field_values(expected)
    assert field_values(found.series.study) == field_values(expected.series.study)
    assert missing is None
    assert [image.pk for image in listed] == [stored.images[1].pk, stored.images[0].pk]
    assert len(captured.captured_queries) == 3
