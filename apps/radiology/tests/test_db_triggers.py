"""db_triggers.datetime_parameter: a datetime for raw SQL, in the form the database stores it.

The archive's DELETE and the delete permit compare it with stored datetimes in raw SQL; on
SQLite that comparison is on text, so the parameter must be the stored UTC text, not the aware
datetime's own text with its offset. (The archive's cut at midnight of the server's zone, with
events either side of it, is tested in tests/access/test_audit.py.)
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone

from apps.radiology.access import audit
from apps.radiology.db_triggers import datetime_parameter
from apps.radiology.models import AuditEvent

NEW_YORK_MIDNIGHT = dt.datetime(2026, 2, 1, 0, 0, tzinfo=zoneinfo.ZoneInfo("America/New_York"))


def test_the_parameter_is_what_the_database_stores_for_that_instant() -> None:
    connection = connections[DEFAULT_DB_ALIAS]

    parameter = datetime_parameter(NEW_YORK_MIDNIGHT)

    if connection.vendor == "sqlite":
        assert parameter == "2026-02-01 05:00:00"  # UTC text, without an offset, as SQLite rows hold it
    else:
        assert parameter == NEW_YORK_MIDNIGHT  # the driver sends the instant with its offset
        assert parameter.utcoffset() == dt.timedelta(hours=-5)


@pytest.mark.django_db
def test_raw_sql_with_the_parameter_cuts_where_the_orm_cuts(monkeypatch: pytest.MonkeyPatch) -> None:
    for minutes in (-1, 0, 1):  # events a minute before, at, and a minute after the cut
        with monkeypatch.context() as patch:  # the trail's time comes from the clock
            patch.setattr(timezone, "now", lambda minutes=minutes: NEW_YORK_MIDNIGHT + dt.timedelta(minutes=minutes))
            audit.record(user=None, channel="api", action="read", route=f"at{minutes}", method="GET", status_code=200)
    connection = connections[DEFAULT_DB_ALIAS]

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT route FROM radiology_auditevent WHERE at < %s ORDER BY route",
            [datetime_parameter(NEW_YORK_MIDNIGHT)],
        )
        before_in_raw_sql = [row[0] for row in cursor.fetchall()]

    assert before_in_raw_sql == ["at-1"]
    assert list(AuditEvent.objects.filter(at__lt=NEW_YORK_MIDNIGHT).values_list("route", flat=True)) == ["at-1"]
