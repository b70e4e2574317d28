"""Fuzz every operation of the OpenAPI 3.1 document with schemathesis, in process through the WSGI app;
then the headers and query parameters of every route, documented or not (second half of this file).

The schema is the one the server publishes at /api/v1/schema/; every request goes through
config.wsgi.application (middleware, authentication, the exception handler), not a test
client. A doctor's DRF token is sent to the read endpoints and a radiology tech's to the
upload endpoints. Every response must:
- not be a server error (no 500),
- have a status code the document lists for the operation,
- have the documented content type and validate against the documented schema.

Reproducible: Hypothesis runs derandomized (the same cases in the same order on every run,
no example database), at most MAX_EXAMPLES generated cases per operation plus schemathesis'
coverage cases. Database: the test holds pytest-django's `db` transaction; the world (users,
tokens, an order with a stored study, uploads) is built once per operation, and every
example runs inside a savepoint that is rolled back, so no example sees another's rows.
Half of the generated ids are aimed at the world's real objects, so the fuzzing reaches
the 200 paths and not only 404.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from django.http.response import HttpResponseBase
from django.test import Client
from django.urls import Resolver404, resolve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from schemathesis import Case, Response
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from apps.radiology.access.signing import issue_viewer_token
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.ingest.upload_sync import UploadMetadata, upload_receive, upload_start
from apps.radiology.models import DICOM_MIME_TYPE, RadiologyImage, RadiologyUpload
from apps.radiology.operations.demo import relabelled_dicom
from apps.radiology.pacs_lite_service import PACSLiteService
from apps.radiology.tests.conftest import PASSWORD, IngestFile, MakeOrder
from config.wsgi import application

MAX_EXAMPLES = 25
SCHEMA_PATH = "/api/v1/schema/"
UPLOADS_PREFIX = "/api/v1/radiology/uploads/"
TOKEN_PATH = "/api/v1/auth/token/"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# A path parameter the URL pattern refuses (id "0.5") never reaches the operation: Django's
# own 404 page answers. It still must not be a server error and 404 must be documented.
UNROUTED_CHECKS = [not_a_server_error, status_code_conformance]

CONFIG = SchemathesisConfig.from_dict(
    {
        "generation": {
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
            # The test sends the real token itself; generated Authorization headers would only say 401.
            "with-security-parameters": False,
        },
    }
)

schema = schemathesis.openapi.from_wsgi(SCHEMA_PATH, application, config=CONFIG)


@dataclass(frozen=True)
class World:
    """What the fuzzed requests can find: ids of real objects and the two tokens."""

    doctor_username: str
    doctor_token: str
    radtech_token: str
    order_id: int
    study_id: int
    image_id: int
    upload_ids: tuple[int, ...]

    def token_for(self, path: str) -> str:
        return self.radtech_token if path.startswith(UPLOADS_PREFIX) else self.doctor_token

    def ids_for(self, path: str) -> tuple[int, ...]:
        if path.startswith(UPLOADS_PREFIX):
            return self.upload_ids
        if path.startswith("/api/v1/radiology/images/"):
            return (self.image_id,)
        return (self.study_id,)


@pytest.fixture
def in_process_requests() -> Iterator[None]:
    """Keep the test's connection open across WSGI requests, as Django's test client does.

    The handler closes "old" connections when a request starts and finishes; inside the
    test's transaction that would drop the connection and the transaction with it.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def world(
    in_process_requests: None, doctor: Any, radtech: Any, make_order: MakeOrder, ingest_file: IngestFile
) -> World:
    order = make_order()
    image = ingest_file(order, "CT_small.dcm", user=radtech).image
    study_uid = image.series.study.study_uid
    uploads = []
    for received in (0, 1, None):  # pending from byte 0, pending half-way, completed
        content = relabelled_dicom("CT_small.dcm", study_uid=study_uid, series_uid=generate_uid(), instance_number=1)
        upload, _created = upload_start(
            user=radtech,
            metadata=UploadMetadata(
                client_upload_id=uuid.uuid4(),
                radiology_order_id=order.pk,
                filename="fuzz.dcm",
                file_size=len(content),
                mime_type=DICOM_MIME_TYPE,
                checksum=hashlib.sha256(content).hexdigest(),
            ),
        )
        if received is None:
            upload, _finished = upload_receive(upload=upload, body=io.BytesIO(content), content_range=None)
            assert upload.status == RadiologyUpload.Status.COMPLETED
        elif received:
            half = len(content) // 2
            upload_receive(
                upload=upload, body=io.BytesIO(content[:half]), content_range=f"bytes 0-{half - 1}/{len(content)}"
            )
        uploads.append(upload.pk)
    return World(
        doctor_username=doctor.get_username(),
        doctor_token=Token.objects.create(user=doctor).key,
        radtech_token=Token.objects.create(user=radtech).key,
        order_id=order.pk,
        study_id=image.series.study_id,
        image_id=image.pk,
        upload_ids=tuple(uploads),
    )


def _routed(response: Response) -> bool:
    """Whether the request's path matched a URL pattern (and so reached the operation)."""
    try:
        resolve(unquote(urlsplit(response.request.url).path))
    except Resolver404:
        return False
    return True


def _aimed(value: Any, real_ids: tuple[int, ...]) -> Any:
    """An even generated id (integer or digit string) becomes one of the real ids; others stay as generated."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value % 2 == 0:
        return real_ids[(value // 2) % len(real_ids)]
    # Only the last digits: int() refuses strings of more than 4,300 digits.
    if isinstance(value, str) and value.isascii() and value.isdigit() and int(value[-1]) % 2 == 0:
        return str(real_ids[(int(value[-6:]) // 2) % len(real_ids)])
    return value


def _aim_at_world(case: Case, world: World) -> None:
    if case.path_parameters and "id" in case.path_parameters:
        case.path_parameters["id"] = _aimed(case.path_parameters["id"], world.ids_for(case.path))
    if not isinstance(case.body, dict):
        return
    if case.path == UPLOADS_PREFIX and "radiology_order" in case.body:
        case.body["radiology_order"] = _aimed(case.body["radiology_order"], (world.order_id,))
    if case.path == TOKEN_PATH and isinstance(case.body.get("username"), str) and len(case.body["username"]) % 2 == 0:
        case.body.update(username=world.doctor_username, password=PASSWORD)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_operation_conforms_to_its_schema(case: Case, world: World) -> None:
    _aim_at_world(case, world)
    headers = {"Authorization": f"Token {world.token_for(case.path)}"}
    with transaction.atomic():
        response = case.call(headers=headers)
        case.validate_response(response, checks=CHECKS if _routed(response) else UNROUTED_CHECKS, headers=headers)
        transaction.set_rollback(True)  # every example starts from the same world


def _range_error(field: str, code: str, bound: str) -> dict[str, Any]:
    relation = "greater than or equal to" if code == "min_value" else "less than or equal to"
    message = f"Ensure this value is {relation} {bound}."
    return {"detail": f"{field}: {message}", "code": code, "errors": {field: [{"message": message, "code": code}]}}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # Found by the fuzzing: beyond the bigint id column the database driver could not bind it (500).
        (
            "radiology_order_id=-9.105335363103997e%2B131",
            _range_error("radiology_order_id", "min_value", str(-(2**63))),
        ),
        ("radiology_order_id=99999999999999999999999", _range_error("radiology_order_id", "max_value", str(2**63 - 1))),
    ],
)
def test_found_study_filters_are_refused_not_500(world: World, query: str, expected: dict[str, Any]) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {world.doctor_token}")

    response = client.get(f"/api/v1/radiology/studies/?{query}")

    assert (response.status_code, response.json()) == (400, expected)


@pytest.mark.parametrize(
    ("query", "name"),
    [
        # Before: 2**63 and beyond reached SQL OFFSET (a 500); "²" and 5,000 digits were ignored by luck.
        ("limit=1&offset=9223372036854775808", "offset"),
        ("limit=1&offset=" + "9" * 5000, "offset"),
        ("limit=1&offset=%C2%B2", "offset"),
        ("limit=" + "1" * 19, "limit"),
        ("limit=%D9%A1", "limit"),
        ("limit=-1", "limit"),
        ("limit=1.5", "limit"),
        ("limit=1&offset=abc", "offset"),
    ],
)
def test_malformed_page_numbers_of_the_study_list_are_400(world: World, query: str, name: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {world.doctor_token}")

    response = client.get(f"/api/v1/radiology/studies/?{query}")

    assert (response.status_code, response.json()) == (
        400,
        {"detail": f"{name} must be a non-negative integer of at most 18 digits.", "code": "invalid_query"},
    )


def test_the_largest_page_numbers_of_the_study_list_still_answer(world: World) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {world.doctor_token}")
    far = "9" * 18

    response = client.get(f"/api/v1/radiology/studies/?limit={far}&offset={far}")

    assert response.status_code == 200
    assert (response.json()["count"], response.json()["results"]) == (1, [])
    # Absent or empty stays DRF's: no pagination, the plain list.
    assert [study["id"] for study in client.get("/api/v1/radiology/studies/?limit=").json()] == [world.study_id]


def test_an_overlong_username_is_400_before_any_login_attempt(world: World) -> None:
    # Found by the fuzzing on PostgreSQL: it reached the failed-login records (varchar(255)): a 500.
    message = "Ensure this field has no more than 150 characters."

    response = APIClient().post(TOKEN_PATH, {"username": "a" * 300, "password": "wrong"}, format="json")

    assert (response.status_code, response.json()) == (
        400,
        {
            "detail": f"username: {message}",
            "code": "max_length",
            "errors": {"username": [{"message": message, "code": "max_length"}]},
        },
    )


def test_an_unrouted_api_path_is_a_json_404(world: World) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {world.doctor_token}")

    response = client.get("/api/v1/radiology/dicomweb/studies/1.2/series/1.2/instances/1.2/frames/1%2F2")

    assert (response.status_code, response.json()) == (404, {"detail": "Not found.", "code": "not_found"})


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        # Found by the fuzzing: numbers beyond 32 bits reached the integer columns (500).
        ("series_number", 2**31, _range_error("series_number", "max_value", str(2**31 - 1))),
        ("instance_number", -(2**63), _range_error("instance_number", "min_value", str(-(2**31)))),
    ],
)
def test_found_upload_numbers_are_refused_not_500(
    world: World, field: str, value: int, expected: dict[str, Any]
) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {world.radtech_token}")
    payload = {
        "client_upload_id": str(uuid.uuid4()),
        "radiology_order": world.order_id,
        "filename": "found.dcm",
        "file_size": 5,
        "mime_type": DICOM_MIME_TYPE,
        "checksum": "0" * 64,
        field: value,
    }

    response = client.post(UPLOADS_PREFIX, payload, format="json")

    assert (response.status_code, response.json()) == (400, expected)
    assert RadiologyUpload.objects.filter(client_upload_id=payload["client_upload_id"]).count() == 0


# --- Every route, through its headers and query parameters (issue 14 item 8) ---------------
#
# The schema-driven test above covers the REST operations' bodies and documented parameters.
# This one covers what it cannot see: DICOMweb (QIDO, retrieve, metadata, frames, rendered,
# thumbnail, bulk data, STOW-RS), the signed file URLs, the lite viewer and its download
# endpoint, chunked uploads and /healthz, and on every route the request HEADERS (Range,
# Accept, Authorization, Content-Range, Content-Type, ...) and QUERY PARAMETERS.
# Two passes per route:
# - a sweep: every value of SWEEP_VALUES (what broke servers before: numbers of thousands of
#   digits or beyond 2**63, Unicode digits, NUL, NaN, huge lists, over-long boundaries) in
#   each parameter the route reads and each header it interprets, one at a time, with the
#   route's real objects and credentials otherwise, so the value reaches the parser behind
#   the checks (not only 401/404);
# - a Hypothesis search mixing those values with arbitrary text across several parameters,
#   headers, identities and path segments at once.
# Every answer must be below 500, and every 4xx a JSON object with a string `code` (the lite
# viewer's page alone answers a refusal with an HTML page, as browsers open it).
# Reproducible: derandomized, no example database; every request is rolled back like above.

SWEEP_VALUES = (
    "",
    "0",
    "-1",
    "1.5",
    "1" * 5000,
    str(2**63),
    str(2**64 + 1),
    "\u00b2",
    "\u0661\u0662",
    "nan",
    "inf",
    "1e309",
    "\x00",
    "1,1,1",
    ",".join(["1"] * 1000),
    "nan,nan",
    "99999,99999",
    "-5,5",
    "1e308,1e308",
    "\u00e9\u00e8",
    "*" * 300,
    "*?*?*?*?*?*?*?*?*?*?*?#",
    "../../etc/passwd",
)
HEADER_VALUES = (
    "",
    "\u00b2",
    "1" * 5000,
    str(2**64 + 1),
    "nan",
    "bytes=0-",
    "bytes=-0",
    "bytes=5-1",
    "bytes=" + "9" * 5000 + "-",
    "bytes=0-" + "9" * 5000,
    "bytes=0-1,2-3,4-5",
    "bytes=\u00b2-",
    "bytes 0-1/" + "9" * 4000,
    "bytes */*",
    "bytes 0-" + str(2**64) + "/" + str(2**64 + 1),
    "*/*",
    "application/dicom+json;q=nan",
    "image/jpeg;q=1e999",
    "multipart/related; type=application/dicom; boundary=" + "b" * 300,
    'multipart/related; type="application/dicom"; boundary=',
    "multipart/related; type=application/dicom; transfer-syntax=" + "1" * 500,
    "Token ",
    "Bearer ",
    "Bearer " + "a" * 5000,
    "Token " + "0" * 40,
    "Basic !!!",
    "Basic " + "=" * 10,
)
HEADERS = (
    "Range",
    "Accept",
    "Authorization",
    "Content-Range",
    "Content-Type",
    "If-None-Match",
    "If-Modified-Since",
    "X-Forwarded-For",
    "Accept-Encoding",
)
QIDO_PARAMS = (
    "limit",
    "offset",
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "includefield",
)
RENDER_PARAMS = ("viewport", "window", "quality")
PATH_SEGMENTS = ("frames", "tag", "filename", "image_id", "dist_path")


@dataclass(frozen=True)
class Route:
    """One route: method, path template ({study_id} {study} {series} {image} {image_id} {upload}
    {frames} {tag} {filename} are filled in), what the sweep varies, how its refusals look."""

    method: str
    path: str
    params: tuple[str, ...] = ()
    headers: tuple[str, ...] = ("Authorization",)
    html_refusals: bool = False
    # STOW-RS answers a refusal with its PS3.18 response (application/dicom+json, Failed SOP Sequence).
    dicom_refusals: bool = False


D = "/api/v1/radiology/dicomweb"
INSTANCE = D + "/studies/{study}/series/{series}/instances/{image}"
REST_STUDY_PARAMS = ("radiology_order_id", "patient_id", "modality", "study_date_from", "study_date_to")
DICOMWEB_HEADERS = ("Authorization", "Accept")
RANGE_HEADERS = ("Authorization", "Accept", "Range")
ROUTES = (
    Route("get", "/healthz", ("verbose",), ()),
    Route("get", "/api/v1/radiology/studies/", (*REST_STUDY_PARAMS, "limit", "offset")),
    Route("get", "/api/v1/radiology/studies/{study_id}/"),
    Route("get", "/api/v1/radiology/studies/{study_id}/images/", ("expires_in",)),
    Route("get", "/api/v1/radiology/studies/{study_id}/viewer-url/", ("expires_in",)),
    Route("get", "/api/v1/radiology/images/{image_id}/url/", ("expires_in",)),
    Route("get", "/api/v1/radiology/uploads/{upload}/"),
    Route("put", "/api/v1/radiology/uploads/{upload}/binary/", (), ("Content-Range", "Content-Type")),
    Route("post", "/api/v1/auth/token/", (), ("Content-Type",)),
    Route("get", D + "/studies", QIDO_PARAMS, DICOMWEB_HEADERS),
    Route("get", D + "/series", QIDO_PARAMS, DICOMWEB_HEADERS),
    Route("get", D + "/instances", QIDO_PARAMS, DICOMWEB_HEADERS),
    Route("get", D + "/studies/{study}/series", ("limit", "offset", "SeriesNumber"), DICOMWEB_HEADERS),
    Route("get", D + "/studies/{study}/instances", ("limit", "offset", "includefield"), DICOMWEB_HEADERS),
    Route("get", D + "/studies/{study}/series/{series}/instances", ("limit", "offset"), DICOMWEB_HEADERS),
    Route("get", D + "/studies/{study}", (), RANGE_HEADERS),
    Route("get", D + "/studies/{study}/metadata", (), DICOMWEB_HEADERS),
    Route("get", D + "/studies/{study}/series/{series}/metadata", (), DICOMWEB_HEADERS),
    Route("get", D + "/studies/{study}/series/{series}/rendered", RENDER_PARAMS, DICOMWEB_HEADERS),
    Route("get", D + "/studies/{study}/series/{series}/thumbnail", RENDER_PARAMS, DICOMWEB_HEADERS),
    Route("get", INSTANCE, (), RANGE_HEADERS),
    Route("get", INSTANCE + "/metadata", (), DICOMWEB_HEADERS),
    Route("get", INSTANCE + "/rendered", RENDER_PARAMS, DICOMWEB_HEADERS),
    Route("get", INSTANCE + "/thumbnail", RENDER_PARAMS, DICOMWEB_HEADERS),
    Route("get", INSTANCE + "/frames/{frames}", (), RANGE_HEADERS),
    Route("get", INSTANCE + "/frames/{frames}/rendered", RENDER_PARAMS, DICOMWEB_HEADERS),
    Route("get", INSTANCE + "/bulk/{tag}", (), RANGE_HEADERS),
    Route("post", D + "/studies", ("radiology_order_id",), ("Content-Type", "Accept"), dicom_refusals=True),
    Route("post", D + "/studies/{study}", ("radiology_order_id",), ("Content-Type", "Accept"), dicom_refusals=True),
    Route("get", "/api/v1/radiology/files/{image_id}/{filename}", ("expires", "token"), ("Range",)),
    Route("get", "/api/v1/radiology/viewer/", ("token", "StudyInstanceUIDs"), (), html_refusals=True),
    Route("get", "/api/v1/radiology/viewer/image-url/", ("image",)),
)
# The viewer's port (config.viewer_urls): OHIF's app-config.js and dist files, index.html for the rest.
VIEWER_PORT_ROUTES = (
    Route("get", "/app-config.js", ("token",), ()),
    Route("get", "/{dist_path}", ("StudyInstanceUIDs", "token"), (), html_refusals=True),
)
EXAMPLES_PER_ROUTE = 10
# A STOW-RS body with one real instance, so the Content-Type sweep reaches the multipart reader.
STOW_BOUNDARY = "pacs-fuzz-boundary"


@dataclass(frozen=True)
class Targets:
    """The world's objects as the routes name them, and the credentials that reach them."""

    fills: dict[str, str]
    real_query: dict[str, dict[str, str]]
    authorization: dict[str, str]
    stow_body: bytes

    def identity_for(self, route: Route) -> str:
        if route.path.startswith(UPLOADS_PREFIX) or route.method == "post":
            return "radtech"
        if route.path.startswith(D):
            return "viewer"
        return "doctor"

    def query_for(self, route: Route) -> dict[str, str]:
        """The real query a working request sends (signed URL, viewer token); empty for most routes."""
        for ending, query in self.real_query.items():
            if route.path.endswith(ending) and (route.method == "post") == ending.startswith(D):
                return dict(query)
        return {}


@pytest.fixture
def targets(world: World, doctor: Any) -> Targets:
    image = RadiologyImage.objects.select_related("series__study").get(pk=world.image_id)
    study = image.series.study
    signed = urlsplit(PACSLiteService.generate_image_url(image=image, user=doctor, expires_in=600, base_url=""))
    viewer_token = issue_viewer_token(study=study, user=doctor, expires_in=600)
    instance = relabelled_dicom("CT_small.dcm", study_uid=study.study_uid, series_uid=generate_uid(), instance_number=9)
    stow_body = (
        f"--{STOW_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + instance
        + f"\r\n--{STOW_BOUNDARY}--\r\n".encode()
    )
    return Targets(
        fills={
            "study_id": str(world.study_id),
            "image_id": str(world.image_id),
            "upload": str(world.upload_ids[1]),
            "study": study.study_uid,
            "series": image.series.series_uid,
            "image": image.image_uid,
            "frames": "1",
            "tag": "7FE00010",
            "filename": signed.path.rsplit("/", 1)[1],
            "dist_path": "viewer",
        },
        real_query={
            "{filename}": dict(parse_qsl(signed.query)),
            "/viewer/": {"token": viewer_token, "StudyInstanceUIDs": study.study_uid},
            "/image-url/": {"image": image.image_uid},
            # STOW-RS into the world's order, so a well-formed request stores its instance.
            D + "/studies": {"radiology_order_id": str(world.order_id)},
            D + "/studies/{study}": {"radiology_order_id": str(world.order_id)},
        },
        authorization={
            "doctor": f"Token {world.doctor_token}",
            "radtech": f"Token {world.radtech_token}",
            "viewer": f"Bearer {viewer_token}",
        },
        stow_body=stow_body,
    )


@dataclass
class Fuzzed:
    """One request to a route: changes from the working request the route's targets make."""

    path_fills: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    identity: str | None = None  # None: the route's own; "none": no credentials
    drop_real_query: bool = False
    body: bytes | None = None

    def describe(self) -> str:
        def short(value: Any) -> str:
            text = repr(value)
            return text if len(text) <= 80 else f"{text[:60]}...({len(text)} chars)"

        changed = {key: short(value) for key, value in vars(self).items() if value not in (None, False, {}, b"")}
        return ", ".join(f"{key}={value}" for key, value in changed.items())


def _send(client: Client, route: Route, targets: Targets, fuzzed: Fuzzed) -> HttpResponseBase:
    fills = {**targets.fills, **{key: quote(value, safe="") for key, value in fuzzed.path_fills.items()}}
    path = route.path.format(**fills)
    query = {} if fuzzed.drop_real_query else targets.query_for(route)
    query.update(fuzzed.query)
    identity = fuzzed.identity or targets.identity_for(route)
    headers = {"Authorization": targets.authorization[identity]} if identity in targets.authorization else {}
    headers.update(fuzzed.headers)
    is_stow = route.method == "post" and route.path.startswith(D)
    default_type = f'multipart/related; type="application/dicom"; boundary={STOW_BOUNDARY}' if is_stow else ""
    content_type = headers.pop("Content-Type", default_type or "application/octet-stream")
    body = fuzzed.body if fuzzed.body is not None else (targets.stow_body if is_stow else b"")
    url = f"{path}?{urlencode(query)}" if query else path
    return client.generic(route.method.upper(), url, body, content_type=content_type, headers=headers)


def _problem(route: Route, client: Client, targets: Targets, fuzzed: Fuzzed) -> str | None:
    """Why the answer to `fuzzed` is wrong (a 5xx, an exception, a 4xx without a JSON code), or None."""
    try:
        with transaction.atomic():
            response = _send(client, route, targets, fuzzed)
            # The test client closes the response itself (at the end of a streamed body), without
            # letting request_finished close the test's connection; closing it here would.
            content = (
                b"".join(response.streaming_content)  # type: ignore[attr-defined]  # errors mid-body count too
                if getattr(response, "streaming", False)
                else response.content  # type: ignore[attr-defined]
            )
            transaction.set_rollback(True)
    except Exception as error:
        return f"{route.method.upper()} {route.path} [{fuzzed.describe()}]: raised {error!r}"[:600]
    status = response.status_code
    problem = None
    if status >= 500:
        problem = f"status {status}: {content[:200]!r}"
    elif 400 <= status < 500:
        content_type = response.get("Content-Type", "")
        if route.dicom_refusals and content_type.startswith("application/dicom+json"):
            if "00081198" not in json.loads(content):
                problem = f"status {status} without a Failed SOP Sequence: {content[:200]!r}"
        elif not (route.html_refusals and content_type.startswith("text/html")):
            try:
                body = json.loads(content)
            except ValueError:
                body = None
            if not (isinstance(body, dict) and isinstance(body.get("code"), str) and "detail" in body):
                problem = f"status {status} without a JSON code ({content_type}): {content[:200]!r}"
    return f"{route.method.upper()} {route.path} [{fuzzed.describe()}]: {problem}" if problem else None


def _sweep(route: Route) -> Iterator[Fuzzed]:
    """One hostile value at a time in each parameter, header and path segment the route reads."""
    for name in route.params:
        for value in SWEEP_VALUES:
            yield Fuzzed(query={name: value})
    for name in route.headers:
        for value in HEADER_VALUES:
            yield Fuzzed(headers={name: value})
    for name in PATH_SEGMENTS:
        if "{" + name + "}" in route.path:
            for value in SWEEP_VALUES:
                yield Fuzzed(path_fills={name: value})


hostile_text = st.one_of(
    st.sampled_from(SWEEP_VALUES + HEADER_VALUES),
    st.text(max_size=40),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
# What a socket can carry in a header: Latin-1, no line breaks.
header_text = hostile_text.filter(lambda value: "\r" not in value and "\n" not in value).map(
    lambda value: value.encode("latin-1", "replace").decode("latin-1")
)


@st.composite
def fuzzed_requests(draw: st.DrawFn, route: Route) -> Fuzzed:
    """Several hostile parameters, headers and path segments at once, under any identity."""
    segments = [name for name in PATH_SEGMENTS if "{" + name + "}" in route.path]
    known = (*route.params, "token", "expires", "limit", "offset")
    names = draw(st.lists(st.one_of(st.sampled_from(known), st.text(min_size=1, max_size=12)), max_size=4))
    return Fuzzed(
        path_fills={name: draw(hostile_text) for name in segments if draw(st.booleans())},
        query={name: draw(hostile_text) for name in names},
        headers={name: draw(header_text) for name in draw(st.lists(st.sampled_from(HEADERS), max_size=4, unique=True))},
        identity=draw(st.sampled_from([None, "doctor", "radtech", "viewer", "none"])),
        drop_real_query=draw(st.booleans()),
        body=draw(st.sampled_from([None, b"", b"\x00" * 10, b"--b\r\n\r\n--b--"])) if route.method != "get" else None,
    )


def _search(route: Route, client: Client, targets: Targets) -> str | None:
    """The first problem Hypothesis finds on `route` (shrunk), or None."""

    @given(fuzzed=fuzzed_requests(route))
    @settings(
        max_examples=EXAMPLES_PER_ROUTE,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    def search(fuzzed: Fuzzed) -> None:
        problem = _problem(route, client, targets, fuzzed)
        assert problem is None, problem

    try:
        search()
    except AssertionError as found:
        return str(found)
    return None


# Routes by family: one world per family keeps the test's time down (building it ingests a
# file and three uploads) while a failure still names its family and every route's problems.
ROUTE_FAMILIES = {
    "rest": [
        route
        for route in ROUTES
        if not route.path.startswith((D, "/api/v1/radiology/files", "/api/v1/radiology/viewer"))
    ],
    "qido": [route for route in ROUTES if route.path.startswith(D) and set(route.params) & {"limit"}],
    "wado": [
        route
        for route in ROUTES
        if route.path.startswith(D) and route.method == "get" and not set(route.params) & {"limit"}
    ],
    "stow": [route for route in ROUTES if route.path.startswith(D) and route.method == "post"],
    "links": [
        route for route in ROUTES if route.path.startswith(("/api/v1/radiology/files", "/api/v1/radiology/viewer"))
    ],
    "viewer_port": list(VIEWER_PORT_ROUTES),
}


def test_route_families_cover_every_route() -> None:
    assert sorted(route.path + route.method for family in ROUTE_FAMILIES.values() for route in family) == sorted(
        route.path + route.method for route in (*ROUTES, *VIEWER_PORT_ROUTES)
    )


@pytest.mark.parametrize("family", ROUTE_FAMILIES)
def test_headers_and_query_parameters_of_every_route_never_cause_a_server_error(
    family: str, targets: Targets, settings: Any
) -> None:
    if family == "viewer_port":
        settings.ROOT_URLCONF = "config.viewer_urls"  # the OHIF dist of `make viewer` (test_pages.py checks it)
    client = Client(raise_request_exception=True)
    problems = []
    for route in ROUTE_FAMILIES[family]:
        problems += [problem for fuzzed in _sweep(route) if (problem := _problem(route, client, targets, fuzzed))]
        if (found := _search(route, client, targets)) is not None:
            problems.append(found)
    assert problems == [], "\n".join(problems)


def test_a_nul_in_the_lite_viewers_image_parameter_is_404(targets: Targets) -> None:
    # Found by the sweep on PostgreSQL, which refuses NUL in a query string literal (a 500).
    response = Client().get(
        "/api/v1/radiology/viewer/image-url/?image=%00", headers={"Authorization": targets.authorization["viewer"]}
    )

    assert (response.status_code, response.json()) == (
        404,
        {"detail": "No such instance.", "code": "instance_not_found"},
    )
