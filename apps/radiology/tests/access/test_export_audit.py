"""`manage.py export_radiology_audit`: the trail between two days (inclusive, server time zone) as CSV.

Events are written through audit.record with the clock set, since `at` is set on insert
and can never be changed afterwards. The server's zone in tests is Africa/Lagos (UTC+1, no
daylight saving), so a day starts at 23:00 UTC the evening before.
"""

from __future__ import annotations

import datetime as dt
import io
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.core.management import CommandError, call_command
from django.utils import timezone

from apps.radiology.access import audit
from apps.radiology.access.signing import ViewerGrant
from apps.radiology.dicomweb.auth import ViewerTokenPrincipal
from apps.radiology.models import AuditEvent

pytestmark = pytest.mark.django_db

HEADER = (
    "at,username,role,viewer_token_id,channel,action,method,route,order_id,study_id,image_id,upload_id,"
    "study_uid,series_uid,image_uid,query_keys,unmatched_id,reason,client_address,status_code,outcome\r\n"
)
TOKEN_ID = uuid.UUID("0b1e9a0c-3f52-4d7a-9c51-6a3c7d2e8f10")
UTC = dt.UTC


def _record_at(monkeypatch: pytest.MonkeyPatch, when: dt.datetime, **values: Any) -> AuditEvent:
    monkeypatch.setattr(timezone, "now", lambda: when)
    event = audit.record(**values)
    monkeypatch.undo()
    assert event is not None
    assert event.at == when
    return event


@pytest.fixture
def trail(monkeypatch: pytest.MonkeyPatch, doctor: AbstractBaseUser) -> list[AuditEvent]:
    """Five events around the days 2026-03-01 and 2026-03-02 (Lagos), written out of time order."""
    viewer = ViewerTokenPrincipal(ViewerGrant(token_id=TOKEN_ID, study_id=1, study_uid="1.2.3"))
    late = _record_at(
        monkeypatch,
        dt.datetime(2026, 3, 2, 22, 59, 59, 500000, tzinfo=UTC),
        user=viewer,
        channel="dicomweb",
        action="read",
        route="dicomweb-series-metadata",
        method="GET",
        status_code=200,
        address="192.0.2.10",
        study_uid="1.2.3",
        series_uid="1.2.3.4",
    )
    before = _record_at(
        monkeypatch,
        dt.datetime(2026, 2, 28, 22, 59, 59, tzinfo=UTC),
        user=doctor,
        channel="api",
        action="read",
        route="study-list",
        method="GET",
        status_code=200,
        address="127.0.0.1",
    )
    first = _record_at(
        monkeypatch,
        dt.datetime(2026, 2, 28, 23, 0, 0, tzinfo=UTC),
        user=doctor,
        channel="api",
        action="read",
        route="image-url",
        method="GET",
        status_code=200,
        address="127.0.0.1",
        query_keys="expires_in",
        image_id=7,
    )
    middle = _record_at(
        monkeypatch,
        dt.datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC),
        user=None,
        channel="signed_url",
        action="read",
        route="signed-image",
        method="GET",
        status_code=403,
        image_id=7,
    )
    after = _record_at(
        monkeypatch,
        dt.datetime(2026, 3, 2, 23, 0, 0, tzinfo=UTC),
        user=doctor,
        channel="api",
        action="write",
        route="upload-list",
        method="POST",
        status_code=201,
        address="127.0.0.1",
    )
    return [before, first, middle, late, after]


FIRST_ROW = (
    "2026-03-01T00:00:00+01:00,doctor-alice,doctor,,api,read,GET,image-url,,,7,,,,,expires_in,,,"
    "127.0.0.1,200,allowed\r\n"
)
MIDDLE_ROW = "2026-03-02T13:00:00+01:00,,anonymous,,signed_url,read,GET,signed-image,,,7,,,,,,,,,403,denied\r\n"
LATE_ROW = (
    f"2026-03-02T23:59:59.500000+01:00,,viewer_token,{TOKEN_ID},dicomweb,read,GET,dicomweb-series-metadata,"
    ",,,,1.2.3,1.2.3.4,,,,,192.0.2.10,200,allowed\r\n"
)


def _export(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("export_radiology_audit", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_days_are_inclusive_in_the_server_time_zone(trail: list[AuditEvent]) -> None:
    out, err = _export("--since", "2026-03-01", "--until", "2026-03-02")

    assert out == HEADER + FIRST_ROW + MIDDLE_ROW + LATE_ROW
    assert err == ""


def test_one_day(trail: list[AuditEvent]) -> None:
    out, _err = _export("--since", "2026-03-02", "--until", "2026-03-02")

    assert out == HEADER + MIDDLE_ROW + LATE_ROW


def test_the_day_before_and_after(trail: list[AuditEvent]) -> None:
    before, _err = _export("--since", "2026-02-28", "--until", "2026-02-28")
    after, _err = _export("--since", "2026-03-03", "--until", "2026-03-31")

    assert before == (
        HEADER
        + "2026-02-28T23:59:59+01:00,doctor-alice,doctor,,api,read,GET,study-list,,,,,,,,,,,127.0.0.1,200,allowed\r\n"
    )
    assert after == (
        HEADER
        + "2026-03-03T00:00:00+01:00,doctor-alice,doctor,,api,write,POST,upload-list,,,,,,,,,,,"
        + "127.0.0.1,201,allowed\r\n"
    )


def test_no_events_is_the_header_alone(db: None) -> None:
    out, err = _export("--since", "2026-01-01", "--until", "2026-12-31")

    assert (out, err) == (HEADER, "")


def test_output_file(trail: list[AuditEvent], tmp_path: Path) -> None:
    target = tmp_path / "audit-march.csv"

    out, err = _export("--since", "2026-03-01", "--until", "2026-03-02", "--output", str(target))

    assert out == ""
    assert err == f"Wrote 3 audit events to {target}\n"
    with open(target, newline="", encoding="utf-8") as handle:
        assert handle.read() == HEADER + FIRST_ROW + MIDDLE_ROW + LATE_ROW


def test_output_file_with_no_events(db: None, tmp_path: Path) -> None:
    target = tmp_path / "empty.csv"

    _out, err = _export("--since", "2026-01-01", "--until", "2026-01-01", "--output", str(target))

    assert err == f"Wrote 0 audit events to {target}\n"
    assert target.read_bytes() == HEADER.encode()


@pytest.mark.parametrize("bad", ["2026-02-30", "yesterday", "03/01/2026", "2026-3-1x", ""])
def test_a_bad_date_is_a_command_error(db: None, bad: str, tmp_path: Path) -> None:
    target = tmp_path / "never.csv"

    with pytest.raises(CommandError) as since:
        _export("--since", bad, "--until", "2026-03-02", "--output", str(target))
    with pytest.raises(CommandError) as until:
        _export("--since", "2026-03-01", "--until", bad)

    # argparse's own usage error: on the command line it is a usage line and exit 2, no traceback.
    assert str(since.value) == f"Error: argument --since: {bad!r} is not a date (YYYY-MM-DD)"
    assert str(until.value) == f"Error: argument --until: {bad!r} is not a date (YYYY-MM-DD)"
    assert not target.exists()


def test_until_before_since_is_a_command_error(trail: list[AuditEvent], tmp_path: Path) -> None:
    target = tmp_path / "never.csv"

    with pytest.raises(CommandError, match=r"^--until is before --since$"):
        _export("--since", "2026-03-02", "--until", "2026-03-01", "--output", str(target))

    assert not target.exists()


@pytest.mark.parametrize(
    ("args", "missing"), [(["--since", "2026-03-01"], "--until"), (["--until", "2026-03-01"], "--since")]
)
def test_both_bounds_are_required(db: None, args: list[str], missing: str) -> None:
    with pytest.raises(CommandError, match=rf"^Error: the following arguments are required: {missing}$"):
        _export(*args)
