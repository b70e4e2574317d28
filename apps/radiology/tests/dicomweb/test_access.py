"""Who may use DICOMweb, and how far a viewer token reaches.

EMR users (Doctor, Radiology Tech, superuser) by session or Token; nurses 403; anonymous
401 with a WWW-Authenticate header. A viewer token (`Authorization: Bearer ...`, what
OHIF sends) reads its one study only: every route of another study is 404, searches see
only its study, STOW is 403; an expired, revoked or altered token is 401 invalid_token.
ROUTES lists every DICOMweb route, and a test checks it against the URLconf.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern

from apps.radiology.access import signing
from apps.radiology.dicomweb import urls as dicomweb_urls
from apps.radiology.tests.api_fixtures import freeze_signing_time, token_client
from apps.radiology.tests.conftest import PASSWORD

from .conftest import API, PHOTO, Put, Stored
from .helpers import QUIET_UID_WARNINGS, body_of, error, json_of

pytestmark = [pytest.mark.django_db, QUIET_UID_WARNINGS]

INVALID_TOKEN = error("The viewer token is invalid, expired or revoked.", "invalid_token")
NOT_AUTHENTICATED = error("Authentication credentials were not provided.", "not_authenticated")
DENIED = error(
    "Only doctors and radiology technicians may use DICOMweb; only technicians may store.", "permission_denied"
)
BEARER_CHALLENGE = 'Bearer realm="pacs-lite dicomweb"'


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # with {study}, {series}, {instance}

    def url(self, stored: Stored, *, study: Stored | None = None) -> str:
        """The route filled with `stored`'s UIDs (the study UID from `study` when given)."""
        return f"{API}/" + self.path.format(
            study=(study or stored).study_uid, series=stored.series_uid, instance=stored.image_uid
        )

    @property
    def searches(self) -> bool:
        return self.path in ("studies", "series", "instances")


INSTANCE = "studies/{study}/series/{series}/instances/{instance}"
ROUTES = [
    Route("dicomweb-root", "GET", ""),
    Route("dicomweb-studies", "GET", "studies"),
    Route("dicomweb-studies", "POST", "studies"),
    Route("dicomweb-series-search", "GET", "series"),
    Route("dicomweb-instances-search", "GET", "instances"),
    Route("dicomweb-study", "GET", "studies/{study}"),
    Route("dicomweb-study", "POST", "studies/{study}"),
    Route("dicomweb-study-metadata", "GET", "studies/{study}/metadata"),
    Route("dicomweb-study-series", "GET", "studies/{study}/series"),
    Route("dicomweb-study-instances", "GET", "studies/{study}/instances"),
    Route("dicomweb-series", "GET", "studies/{study}/series/{series}"),
    Route("dicomweb-series-metadata", "GET", "studies/{study}/series/{series}/metadata"),
    Route("dicomweb-series-instances", "GET", "studies/{study}/series/{series}/instances"),
    Route("dicomweb-series-rendered", "GET", "studies/{study}/series/{series}/rendered"),
    Route("dicomweb-series-thumbnail", "GET", "studies/{study}/series/{series}/thumbnail"),
    Route("dicomweb-instance", "GET", INSTANCE),
    Route("dicomweb-instance-metadata", "GET", f"{INSTANCE}/metadata"),
    Route("dicomweb-instance-rendered", "GET", f"{INSTANCE}/rendered"),
    Route("dicomweb-instance-thumbnail", "GET", f"{INSTANCE}/thumbnail"),
    Route("dicomweb-frames", "GET", f"{INSTANCE}/frames/1"),
    Route("dicomweb-frame-rendered", "GET", f"{INSTANCE}/frames/1/rendered"),
    Route("dicomweb-bulk", "GET", f"{INSTANCE}/bulk/7FE00010"),
]
READS = [route for route in ROUTES if route.method == "GET" and route.path]
SCOPED_READS = [route for route in READS if not route.searches]
WRITES = [route for route in ROUTES if route.method == "POST"]


def request(client: Client, route: Route, url: str, **headers: str) -> Any:
    if route.method == "POST":
        return client.post(
            url,
            data=b"--b--\r\n",
            content_type="multipart/related; type=application/dicom; boundary=b",
            headers=headers,
        )
    return client.get(url, headers=headers)


def bearer(token: str) -> Client:
    return Client(headers={"Authorization": f"Bearer {token}"})


@dataclass(frozen=True)
class Two:
    a: Stored
    b: Stored
    token_a: str
    token_b: str


@pytest.fixture
def two(put: Put, make_order: Any, doctor: Any) -> Two:
    """Two studies of two patients (A: an MR instance and a photo; B: a CT), a viewer token for each."""
    a = put("MR_small.dcm", order=make_order())
    put(PHOTO, order=a.study.radiology_order)
    b = put("CT_small.dcm", order=make_order(first_name="Chidi", last_name="Okafor"))
    return Two(
        a=a,
        b=b,
        token_a=signing.issue_viewer_token(study=a.study, user=doctor),
        token_b=signing.issue_viewer_token(study=b.study, user=doctor),
    )


def test_the_route_table_covers_every_dicomweb_route() -> None:
    names = {pattern.name for pattern in dicomweb_urls.urlpatterns if isinstance(pattern, URLPattern)}
    assert {route.name for route in ROUTES} == names


# --- viewer tokens -----------------------------------------------------------------------


@pytest.mark.parametrize("route", READS, ids=lambda route: route.path or "root")
def test_a_viewer_token_reads_its_own_study(two: Two, route: Route) -> None:
    response = request(bearer(two.token_a), route, route.url(two.a))
    body = body_of(response)
    assert response.status_code == 200, body
    if route.searches:
        assert {item["0020000D"]["Value"][0] for item in json_of(response)} == {two.a.study_uid}


def not_found(route: Route) -> dict[str, str]:
    """The 404 of a route whose UIDs are not (visibly) there: named after its deepest UID."""
    if "{instance}" in route.path:
        return error("No such instance.", "instance_not_found")
    if "{series}" in route.path:
        return error("No such series.", "series_not_found")
    return error("No such study.", "study_not_found")


@pytest.mark.parametrize("route", SCOPED_READS, ids=lambda route: route.path)
def test_every_route_of_another_study_is_404_with_a_viewer_token(two: Two, doctor_client: Client, route: Route) -> None:
    for token, other, own in ((two.token_a, two.b, two.a), (two.token_b, two.a, two.b)):
        client = bearer(token)
        response = request(client, route, route.url(other))
        assert response.status_code == 404
        assert json_of(response) == not_found(route)
        if "{series}" in route.path:
            # Its own study UID with the other study's series and instance: still 404.
            response = request(client, route, route.url(other, study=own))
            assert response.status_code == 404
            assert json_of(response) == not_found(route)
        # The very same URL answers a doctor.
        response = doctor_client.get(route.url(other))
        assert response.status_code == 200
        assert body_of(response)


@pytest.mark.parametrize("path", ["studies", "series", "instances"])
def test_a_viewer_tokens_searches_see_only_its_study(two: Two, path: str) -> None:
    client = bearer(two.token_a)
    everything = json_of(client.get(f"{API}/{path}"))
    assert everything and {item["0020000D"]["Value"][0] for item in everything} == {two.a.study_uid}
    for params in (
        {"PatientID": two.b.study.patient_id},
        {"StudyInstanceUID": two.b.study_uid},
        {"StudyInstanceUID": f"{two.b.study_uid},{two.a.study_uid}"},
        {"PatientName": "Okafor*"},
        {"AccessionNumber": two.b.study.accession_number},
        {"Modality": "CT"},
        {"SOPInstanceUID": two.b.image_uid},
        {"SeriesInstanceUID": two.b.series_uid},
    ):
        found = json_of(client.get(f"{API}/{path}", params))
        assert {item["0020000D"]["Value"][0] for item in found} <= {two.a.study_uid}, params
    assert json_of(client.get(f"{API}/{path}", {"PatientID": two.b.study.patient_id})) == []
    assert uids_of(client, path, StudyInstanceUID=f"{two.b.study_uid},{two.a.study_uid}") == {two.a.study_uid}


def uids_of(client: Client, path: str, **params: str) -> set[str]:
    return {item["0020000D"]["Value"][0] for item in json_of(client.get(f"{API}/{path}", params))}


@pytest.mark.parametrize("route", WRITES, ids=lambda route: route.path)
def test_a_viewer_token_may_not_store(two: Two, route: Route) -> None:
    response = request(bearer(two.token_a), route, route.url(two.a))
    assert response.status_code == 403
    assert json_of(response) == DENIED


def altered(token: str) -> list[str]:
    """The token with one character of its payload, then of its signature, changed."""

    def swap(text: str, index: int) -> str:
        return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]

    return [swap(token, 5), swap(token, len(token) - 3), token + "x", token[:-1], "not-a-token", "a:b:c"]


def test_an_expired_revoked_or_altered_token_is_401_on_every_route(two: Two, monkeypatch: pytest.MonkeyPatch) -> None:
    short = signing.issue_viewer_token(study=two.a.study, user=None, expires_in=60)
    revoked = signing.issue_viewer_token(study=two.a.study, user=None)
    assert signing.revoke_viewer_token(signing.verify_viewer_token(revoked).token_id)
    bad = {"revoked": [revoked], "altered": altered(two.token_a)}
    for route in ROUTES:
        for kind, tokens in bad.items():
            for token in tokens:
                response = request(bearer(token), route, route.url(two.a))
                assert response.status_code == 401, (route, kind, token)
                assert response["WWW-Authenticate"] == BEARER_CHALLENGE
                assert json_of(response) == INVALID_TOKEN
    # Valid a minute ago, expired now (signing's clock moved past its expiry).
    assert bearer(short).get(f"{API}/studies").status_code == 200
    freeze_signing_time(monkeypatch, time.time() + 61)
    for route in ROUTES:
        response = request(bearer(short), route, route.url(two.a))
        assert response.status_code == 401, route
        assert json_of(response) == INVALID_TOKEN
    # The long-lived token still works at that time; a malformed Authorization is also 401.
    assert bearer(two.token_a).get(f"{API}/studies").status_code == 200
    response = Client(headers={"Authorization": f"Bearer {two.token_a} extra"}).get(f"{API}/studies")
    assert (response.status_code, json_of(response)) == (401, error("Malformed bearer token.", "invalid_token"))


def test_a_token_revoked_after_use_stops_working_at_once(two: Two) -> None:
    client = bearer(two.token_a)
    assert client.get(two.a.url("/metadata")).status_code == 200
    signing.revoke_viewer_token(signing.verify_viewer_token(two.token_a).token_id)
    response = client.get(two.a.url("/metadata"))
    assert (response.status_code, json_of(response)) == (401, INVALID_TOKEN)
    assert bearer(two.token_b).get(two.b.url("/metadata")).status_code == 200


LOOKUP_ROUTES = [route for route in SCOPED_READS if "{instance}" in route.path]


@pytest.mark.parametrize("ends", ["revoked", "issuer_cut_off"])
def test_the_instance_routes_refuse_a_token_the_moment_it_ends(two: Two, doctor: Any, ends: str) -> None:
    """These check the token's row in the instance's own statement (OHIF's frames): no second query, no window."""
    client = bearer(two.token_a)
    for route in LOOKUP_ROUTES:
        assert request(client, route, route.url(two.a)).status_code == 200, route
    if ends == "revoked":
        signing.revoke_viewer_token(signing.verify_viewer_token(two.token_a).token_id)
    else:
        signing.revoke_links_of(user=doctor)
    for route in LOOKUP_ROUTES:
        response = request(client, route, route.url(two.a))
        assert (response.status_code, json_of(response)) == (401, INVALID_TOKEN), route
        assert response["WWW-Authenticate"] == BEARER_CHALLENGE


def test_a_revoked_token_hears_401_before_any_other_refusal(two: Two) -> None:
    """A request the view would refuse anyway (an Accept it cannot serve, a bad frame list, a write):
    a live token hears why, a revoked one only that it is refused."""
    revoked = signing.issue_viewer_token(study=two.a.study, user=None)
    signing.revoke_viewer_token(signing.verify_viewer_token(revoked).token_id)
    cases = [
        ("get", two.a.url("/frames/1"), {"Accept": "text/html"}, 406),
        ("get", two.a.url("/frames/0"), {}, 404),  # frame_not_found
        ("get", two.a.url("/rendered"), {"Accept": "application/pdf"}, 406),
        ("put", two.a.url("/frames/1"), {}, 403),
        ("options", two.a.url("/frames/1"), {}, 200),
    ]
    for method, url, headers, live_status in cases:
        live = getattr(bearer(two.token_a), method)(url, headers=headers)
        assert live.status_code == live_status, (method, url, body_of(live))
        refused = getattr(bearer(revoked), method)(url, headers=headers)
        assert (refused.status_code, json_of(refused)) == (401, INVALID_TOKEN), (method, url)


# --- EMR users ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["doctor", "radtech", "superuser"])
@pytest.mark.parametrize("auth", ["token", "session"])
def test_doctors_techs_and_superusers_read_every_study(
    request: pytest.FixtureRequest, two: Two, role: str, auth: str
) -> None:
    user = request.getfixturevalue(role)
    if auth == "token":
        client = token_client(user)
    else:
        client = Client()
        assert client.login(username=user.username, password=PASSWORD)
    for route in READS:
        for stored in (two.a, two.b):
            response = request_route(client, route, stored)
            assert response.status_code == 200, (route, role, auth)
    assert uids_of(client, "studies") == {two.a.study_uid, two.b.study_uid}


def request_route(client: Client, route: Route, stored: Stored) -> Any:
    response = request(client, route, route.url(stored))
    body_of(response)
    return response


@pytest.mark.parametrize("auth", ["token", "session"])
def test_a_nurse_is_403_on_every_route(two: Two, nurse: Any, auth: str) -> None:
    if auth == "token":
        client = token_client(nurse)
    else:
        client = Client()
        assert client.login(username=nurse.username, password=PASSWORD)
    for route in ROUTES:
        response = request(client, route, route.url(two.a))
        assert response.status_code == 403, route
        assert json_of(response) == DENIED


def test_anonymous_is_401_with_a_challenge_on_every_route(two: Two, client: Client) -> None:
    for route in ROUTES:
        response = request(client, route, route.url(two.a))
        assert response.status_code == 401, route
        assert response["WWW-Authenticate"] == BEARER_CHALLENGE
        assert json_of(response) == NOT_AUTHENTICATED


def test_a_wrong_api_token_is_401(two: Two) -> None:
    response = Client(headers={"Authorization": "Token 0123456789abcdef0123456789abcdef01234567"}).get(f"{API}/studies")
    assert response.status_code == 401
    assert json_of(response) == error("Invalid token.", "authentication_failed")


def test_the_root_is_404(two: Two, doctor_client: Client) -> None:
    for client in (doctor_client, bearer(two.token_a)):
        response = client.get(f"{API}/")
        assert response.status_code == 404
        assert json_of(response) == error("Use /studies, /series or /instances.", "not_found")


# --- CORS for the viewer's origin --------------------------------------------------------


def preflight(client: Client, url: str, origin: str, method: str = "GET") -> Any:
    return client.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,accept",
        },
    )


def viewer_origin(settings: Any) -> str:
    origins = list(settings.CORS_ALLOWED_ORIGINS)
    assert origins, "CORS_ALLOWED_ORIGINS must name the viewer's origin"
    return str(origins[0])


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: f"{route.method} {route.path or 'root'}")
def test_a_preflight_from_the_viewer_is_answered_without_credentials(
    two: Two, client: Client, settings: Any, route: Route
) -> None:
    origin = viewer_origin(settings)
    response = preflight(client, route.url(two.a), origin, route.method)
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == origin
    allowed = {header.strip().lower() for header in response["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "accept"} <= allowed
    assert {method.strip() for method in response["Access-Control-Allow-Methods"].split(",")} == {
        "GET",
        "OPTIONS",
        "POST",
    }
    assert response["Access-Control-Max-Age"] == "86400"
    assert "Access-Control-Allow-Credentials" not in response


def test_the_viewers_requests_carry_cors_headers(two: Two, settings: Any) -> None:
    origin = viewer_origin(settings)
    client = bearer(two.token_a)
    for route in READS:
        response = client.get(route.url(two.a), headers={"Origin": origin})
        body_of(response)
        assert response.status_code == 200
        assert response["Access-Control-Allow-Origin"] == origin
        assert response["Access-Control-Expose-Headers"] == "Content-Type, Content-Length, Content-Location"
        assert "Access-Control-Allow-Credentials" not in response
    # A refused request still tells the viewer why (its CORS headers let it read the 401).
    response = bearer("forged").get(f"{API}/studies", headers={"Origin": origin})
    assert (response.status_code, response["Access-Control-Allow-Origin"]) == (401, origin)


def test_another_origin_gets_no_cors_headers(two: Two, client: Client) -> None:
    for origin in ("https://evil.example", "http://localhost:3001", "null"):
        response = preflight(client, two.a.url("/frames/1"), origin)
        assert "Access-Control-Allow-Origin" not in response
        response = bearer(two.token_a).get(f"{API}/studies", headers={"Origin": origin})
        assert response.status_code == 200
        assert "Access-Control-Allow-Origin" not in response


@pytest.mark.parametrize(
    "path", ["/api/v1/radiology/studies/", "/api/v1/auth/token/", "/api/v1/radiology/images/1/url/", "/admin/"]
)
def test_cors_headers_only_on_dicomweb_paths(two: Two, client: Client, settings: Any, path: str) -> None:
    origin = viewer_origin(settings)
    response = preflight(client, path, origin)
    assert "Access-Control-Allow-Origin" not in response
    assert "Access-Control-Allow-Headers" not in response
    response = client.get(path, headers={"Origin": origin})
    assert "Access-Control-Allow-Origin" not in response
