"""Searching the study list: by patient name or id, date range and modality; bad input is a message.

The search is posted and kept in the session, so no patient name is ever in a URL (access
logs, history, Referer). A page of the list costs the same number of queries whatever its size.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.radiology.frontdoor.search import SESSION_KEY
from apps.radiology.frontdoor.views import STUDIES_PER_PAGE
from apps.radiology.models import RadiologyStudy
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.frontdoor.helpers import SEARCH, STUDIES, listed_patients, make_listed_study, signed_in

pytestmark = pytest.mark.django_db

EMPTY = {"patient": "", "date_from": "", "date_to": "", "modality": ""}


@pytest.fixture
def studies(make_order: MakeOrder) -> dict[str, RadiologyStudy]:
    now = dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC)
    made = {}
    for age, (first, last, modality, date) in enumerate(
        [
            ("Zanele", "Quaxley", "MR", dt.date(2026, 3, 4)),
            ("Ngozi", "Balogun", "CT", dt.date(2026, 2, 10)),
            ("Ada", "Quaxley-Obi", "CT", dt.date(2025, 12, 31)),
            ("José", "Ñúñez", "CR", dt.date(2024, 6, 1)),
        ]
    ):
        made[last] = make_listed_study(
            make_order,
            first_name=first,
            last_name=last,
            modality=modality,
            study_date=date,
            created_at=now - dt.timedelta(days=age),
        )
    return made


def _search(client: Any, **fields: str) -> Any:
    return client.post(SEARCH, {**EMPTY, **fields})


def _listed_after(client: Any, **fields: str) -> list[str]:
    response = _search(client, **fields)
    assert (response.status_code, response["Location"]) == (302, STUDIES), response.content[:500]
    return listed_patients(client.get(STUDIES).content.decode())


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, ["Zanele Quaxley", "Ngozi Balogun", "Ada Quaxley-Obi", "José Ñúñez"]),
        ({"patient": "quax"}, ["Zanele Quaxley", "Ada Quaxley-Obi"]),
        ({"patient": "  QUAXLEY-obi "}, ["Ada Quaxley-Obi"]),
        ({"patient": "Quaxley^Zanele"}, ["Zanele Quaxley"]),  # the DICOM form of the name
        ({"patient": "ñúÑEZ"}, ["José Ñúñez"]),  # case beyond ASCII, on SQLite too
        ({"patient": "Q*Obi"}, ["Ada Quaxley-Obi"]),  # the wildcards QIDO takes
        ({"patient": "%"}, []),  # LIKE's own characters are literal
        ({"patient": "_"}, []),
        ({"date_from": "2026-01-01"}, ["Zanele Quaxley", "Ngozi Balogun"]),
        ({"date_to": "2026-02-10"}, ["Ngozi Balogun", "Ada Quaxley-Obi", "José Ñúñez"]),
        ({"date_from": "2026-02-10", "date_to": "2026-02-10"}, ["Ngozi Balogun"]),
        ({"modality": "CT"}, ["Ngozi Balogun", "Ada Quaxley-Obi"]),
        ({"patient": "quaxley", "modality": "CT"}, ["Ada Quaxley-Obi"]),
        ({"patient": "nobody"}, []),
    ],
)
def test_search_narrows_the_list(
    studies: dict[str, RadiologyStudy], doctor: AbstractBaseUser, fields: dict[str, str], expected: list[str]
) -> None:
    assert _listed_after(signed_in(doctor), **fields) == expected


def test_search_by_patient_id(studies: dict[str, RadiologyStudy], radtech: AbstractBaseUser) -> None:
    patient_id = studies["Balogun"].patient_id

    assert _listed_after(signed_in(radtech), patient=patient_id.lower()) == ["Ngozi Balogun"]


def test_the_search_is_kept_in_the_session_never_in_a_url(
    studies: dict[str, RadiologyStudy], doctor: AbstractBaseUser
) -> None:
    client = signed_in(doctor)

    posted = _search(client, patient="Quaxley", date_from="2025-01-01", modality="CT")
    page = client.get(STUDIES).content.decode()

    assert posted["Location"] == STUDIES
    assert client.session[SESSION_KEY] == {
        "patient": "Quaxley",
        "date_from": "2025-01-01",
        "date_to": "",
        "modality": "CT",
    }
    # The form shows the search; the page says the list is narrowed.
    assert 'name="patient" value="Quaxley"' in page
    assert 'name="date_from" value="2025-01-01"' in page
    assert '<option value="CT" selected>' in page
    assert '<p class="muted" id="summary">1 study match the search, newest first.</p>' in page
    # "Show all" posts an empty search.
    assert _listed_after(client) == ["Zanele Quaxley", "Ngozi Balogun", "Ada Quaxley-Obi", "José Ñúñez"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"date_from": "2026-03-01", "date_to": "2026-02-01"},
            "<li>The From date must be on or before the To date.</li>",
        ),
        ({"date_from": "2026-13-40"}, "<li>From: Enter a valid date.</li>"),
        ({"date_to": "yesterday"}, "<li>To: Enter a valid date.</li>"),
        (
            {"modality": "XX"},
            "<li>Modality: Select a valid choice. XX is not one of the available choices.</li>",
        ),
        (
            {"patient": "x" * 65},
            "<li>Patient name or ID: Ensure this value has at most 64 characters (it has 65).</li>",
        ),
        ({"patient": "a\x00b"}, "<li>Patient name or ID: Null characters are not allowed.</li>"),
    ],
)
def test_a_bad_search_is_a_message_and_keeps_the_last_good_one(
    studies: dict[str, RadiologyStudy], doctor: AbstractBaseUser, fields: dict[str, str], message: str
) -> None:
    client = signed_in(doctor)
    _search(client, modality="MR")

    response = _search(client, **fields)

    body = response.content.decode()
    assert response.status_code == 400
    assert f'<div class="errors" role="alert"><ul>\n    {message}' in body.replace("\n    \n    ", "\n    ")
    assert listed_patients(body) == []  # no list under a search that could not run
    assert client.session[SESSION_KEY]["modality"] == "MR"
    assert listed_patients(client.get(STUDIES).content.decode()) == ["Zanele Quaxley"]


def test_a_session_holding_anything_else_lists_everything(
    studies: dict[str, RadiologyStudy], doctor: AbstractBaseUser
) -> None:
    client = signed_in(doctor)
    for stored in ({"date_from": "not a date"}, "a string", ["a", "list"], {"modality": 3}):
        session = client.session
        session[SESSION_KEY] = stored
        session.save()

        response = client.get(STUDIES)

        assert response.status_code == 200
        assert len(listed_patients(response.content.decode())) == 4


def test_pages_of_the_list(make_order: MakeOrder, doctor: AbstractBaseUser) -> None:
    now = dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC)
    for number in range(STUDIES_PER_PAGE + 5):
        make_listed_study(
            make_order, first_name=f"P{number:02d}", last_name="X", created_at=now - dt.timedelta(minutes=number)
        )
    client = signed_in(doctor)

    first = client.get(STUDIES).content.decode()
    second = client.get(STUDIES + "?page=2").content.decode()

    assert listed_patients(first) == [f"P{number:02d} X" for number in range(STUDIES_PER_PAGE)]
    assert listed_patients(second) == [f"P{number:02d} X" for number in range(STUDIES_PER_PAGE, STUDIES_PER_PAGE + 5)]
    assert '<a href="?page=2">Older &rarr;</a>' in first
    assert '<span class="muted">Page 2 of 2</span>' in second
    # A page number that is not one is the first page; past the end, the last; never a 500.
    for asked, shown in [("abc", first), ("0", second), ("-1", second), ("99999999999999999999999", second)]:
        response = client.get(STUDIES + f"?page={asked}")
        assert response.status_code == 200
        assert listed_patients(response.content.decode()) == listed_patients(shown), asked


def _queries_for_the_list(client: Any) -> list[str]:
    """The page's queries, but the audit trail's one insert (access/audit.py), which every audited page makes."""
    with CaptureQueriesContext(connection) as captured:
        assert client.get(STUDIES).status_code == 200
    queries = [query["sql"] for query in captured.captured_queries]
    return [sql for sql in queries if not sql.startswith('INSERT INTO "radiology_auditevent"')]


@pytest.mark.parametrize("role", ["doctor", "radtech"])
def test_a_page_costs_the_same_queries_whatever_its_size(
    make_order: MakeOrder, role: str, request: pytest.FixtureRequest
) -> None:
    client = signed_in(request.getfixturevalue(role))
    make_listed_study(make_order, images=2)
    few = _queries_for_the_list(client)
    for number in range(STUDIES_PER_PAGE + 3):
        make_listed_study(make_order, first_name=f"P{number}", images=number % 4)
    full = _queries_for_the_list(client)
    _search(client, patient="P1", modality="CT", date_from="2000-01-01")
    searched = _queries_for_the_list(client)

    # Session, user, radiology groups, count, the page (image counts inside it), the page's
    # forwarding deliveries; a tech also counts failed uploads and waiting unmatched files.
    expected = 6 if role == "doctor" else 8
    assert (len(few), len(full), len(searched)) == (expected, expected, expected), full
    page_query = next(sql for sql in full if "LIMIT 25" in sql)
    assert "COUNT(" in page_query  # the image counts are a subquery of the page's own query
