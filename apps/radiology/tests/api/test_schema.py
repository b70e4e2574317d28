"""The OpenAPI 3.1 document describes what the API really answers.

The document itself is checked against the OpenAPI 3.1 specification (openapi-spec-validator),
then real responses of every endpoint, for every documented status, are validated with
jsonschema against the schema the document gives for that path, method and status.
Component references ("#/components/schemas/...") resolve through a `referencing` Registry
holding the whole document. Validation is strict: an object with documented properties
may not carry undocumented ones, and "date-time" and "uri" formats are checked.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import Client
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from openapi_spec_validator import OpenAPIV31SpecValidator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from apps.radiology.models import RadiologyImage, RadiologyStudy
from apps.radiology.tests.api_fixtures import (
    STUDIES,
    TOKEN_URL,
    image_url_endpoint,
    make_image_row,
    make_series,
    make_study,
    study_url,
    token_client,
)
from apps.radiology.tests.conftest import PASSWORD, MakeOrder

DOCUMENT_URI = "urn:pacs-lite:openapi"

LIST = "/api/v1/radiology/studies/"
DETAIL = "/api/v1/radiology/studies/{id}/"
IMAGES = "/api/v1/radiology/studies/{id}/images/"
VIEWER = "/api/v1/radiology/studies/{id}/viewer-url/"
IMAGE_URL = "/api/v1/radiology/images/{id}/url/"
TOKEN = "/api/v1/auth/token/"
READ_PATHS = (LIST, DETAIL, IMAGES, VIEWER, IMAGE_URL)

# Documented but unreachable: the list has no object to miss (ERRORS is shared by every action).
UNREACHABLE = {(LIST, "get", "404")}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The schema as served (no database access: anonymous, no session)."""
    response = Client().get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/vnd.oai.openapi+json"
    return dict(json.loads(response.content))


def _strict(node: Any) -> Any:
    """A copy in which every object schema with properties forbids undocumented ones."""
    if isinstance(node, dict):
        strict = {key: _strict(value) for key, value in node.items()}
        if isinstance(node.get("properties"), dict) and "additionalProperties" not in node:
            strict["additionalProperties"] = False
        return strict
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


def _pointer_token(value: str) -> str:
    return value.replace("~", "~0").replace("/", "~1")


def _format_checker() -> FormatChecker:
    checker = FormatChecker()

    @checker.checks("uri", raises=ValueError)
    def is_uri(value: object) -> bool:
        if not isinstance(value, str):
            return True
        parts = urlsplit(value)
        return bool(parts.scheme in ("http", "https") and parts.netloc)

    return checker


@dataclass(frozen=True)
class ResponseSchemas:
    document: dict[str, Any]
    registry: Registry[Any]

    def validator(self, path: str, method: str, status: str) -> Draft202012Validator:
        operation = self.document["paths"][path][method]
        assert status in operation["responses"], f"{method.upper()} {path} does not document {status}"
        content = operation["responses"][status]["content"]
        assert set(content) == {"application/json"}
        pointer = "/".join(
            ["", "paths", _pointer_token(path), method, "responses", status, "content", "application~1json", "schema"]
        )
        return Draft202012Validator(
            {"$ref": f"{DOCUMENT_URI}#{pointer}"}, registry=self.registry, format_checker=_format_checker()
        )


@pytest.fixture(scope="module")
def schemas(document: dict[str, Any]) -> ResponseSchemas:
    resource = Resource.from_contents(_strict(copy.deepcopy(document)), default_specification=DRAFT202012)
    return ResponseSchemas(document=document, registry=Registry().with_resource(DOCUMENT_URI, resource))


# --- The document ------------------------------------------------------------------------


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def read_api_document(document: dict[str, Any]) -> dict[str, Any]:
    """The document cut down to this suite's endpoints and the components they reference.

    Other endpoints (uploads, DICOMweb) are other suites' to check.
    """
    paths = {path: document["paths"][path] for path in (*READ_PATHS, TOKEN)}
    schemas = document["components"]["schemas"]
    wanted: set[str] = set()
    pending = [ref.rsplit("/", 1)[-1] for ref in _refs(paths)]
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending.extend(ref.rsplit("/", 1)[-1] for ref in _refs(schemas[name]))
    components = {**document["components"], "schemas": {name: schemas[name] for name in sorted(wanted)}}
    return {**document, "paths": paths, "components": components}


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    read_api = read_api_document(document)

    OpenAPIV31SpecValidator(read_api).validate()

    assert set(read_api["components"]["schemas"]) == {
        "DeliveryError",
        "Error",
        "ImagePatientIdentity",
        "ImageUrl",
        "PaginatedStudyList",
        "Study",
        "StudyDelivery",
        "StudyDeliveryStateEnum",
        "StudyImage",
        "StudyImages",
        "StudySeries",
        "TokenRequestRequest",
        "TokenResponse",
        "ViewerUrl",
    }
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "PACS-lite API"
    assert document["info"]["version"] == "1.0.0"


def test_the_document_lists_every_endpoint_with_only_its_methods(document: dict[str, Any]) -> None:
    """GET only on the read endpoints (every other method is 405), POST only on the token one."""
    paths = document["paths"]

    assert {path: set(paths[path]) - {"parameters"} for path in (*READ_PATHS, TOKEN)} == {
        **{path: {"get"} for path in READ_PATHS},
        TOKEN: {"post"},
    }


def test_the_document_names_the_parameters(document: dict[str, Any]) -> None:
    def names(path: str, method: str = "get") -> set[str]:
        return {parameter["name"] for parameter in document["paths"][path][method].get("parameters", [])}

    assert names(LIST) == {
        "radiology_order_id",
        "patient_id",
        "modality",
        "study_date_from",
        "study_date_to",
        "limit",
        "offset",
    }
    assert names(DETAIL) == {"id"}
    for path in (IMAGES, VIEWER, IMAGE_URL):
        assert names(path) == {"id", "expires_in"}
    expires_in = next(p for p in document["paths"][IMAGES]["get"]["parameters"] if p["name"] == "expires_in")
    assert expires_in["in"] == "query"
    assert expires_in["schema"] == {"type": "integer"}


def test_the_document_describes_both_authentications(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]

    assert schemes["tokenAuth"]["type"] == "apiKey"
    assert (schemes["tokenAuth"]["in"], schemes["tokenAuth"]["name"]) == ("header", "Authorization")
    assert schemes["cookieAuth"]["type"] == "apiKey"
    assert schemes["cookieAuth"]["in"] == "cookie"
    for path in READ_PATHS:
        assert document["paths"][path]["get"]["security"] == [{"tokenAuth": []}, {"cookieAuth": []}]


def test_the_schema_is_also_served_as_yaml() -> None:
    response = Client().get("/api/v1/schema/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi;")
    assert response.content.startswith(b"openapi: 3.1.0\n")


def test_the_docs_page_is_html_that_loads_the_schema() -> None:
    response = Client().get("/api/v1/docs/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"swagger-ui" in response.content
    assert b"/api/v1/schema/" in response.content


def test_strict_validation_rejects_an_undocumented_key(schemas: ResponseSchemas) -> None:
    """The check the other tests rely on: extra or missing keys and wrong formats fail."""
    validator = schemas.validator(IMAGE_URL, "get", "200")
    good = {"image_url": "http://testserver/x", "image_uid": "1.2", "filename": "a.dcm", "expires_in": 60}
    validator.validate(good)

    for bad in (
        {**good, "file_key": "radiology/1.2/a.dcm"},
        {key: value for key, value in good.items() if key != "filename"},
        {**good, "image_url": "not a url"},
        {**good, "expires_in": "60"},
    ):
        with pytest.raises(ValidationError):
            validator.validate(bad)


# --- Real responses against the document -------------------------------------------------


@dataclass(frozen=True)
class World:
    study: RadiologyStudy
    image: RadiologyImage
    doctor: Client
    nurse: Client
    anonymous: Client


@pytest.fixture
def world(doctor: Any, nurse: Any, make_order: MakeOrder) -> World:
    study = make_study(make_order(), study_date=dt.date(2026, 1, 15))
    image = make_image_row(make_series(study, series_number=1), instance_number=1)
    make_study(make_order())  # a second study, so the paginated list has a next link
    return World(study, image, token_client(doctor), token_client(nurse), Client())


Call = Callable[[World], Any]


def _get(client: str, url: Callable[[World], str]) -> Call:
    return lambda world: getattr(world, client).get(url(world))


def _token(payload: dict[str, str]) -> Call:
    return lambda world: Client().post(TOKEN_URL, payload, content_type="application/json")


def _scenarios() -> Iterator[Any]:
    """(path, method, status, request) for every documented response, read endpoints first."""
    by_path: dict[str, Callable[[World], str]] = {
        LIST: lambda w: STUDIES,
        DETAIL: lambda w: study_url(w.study),
        IMAGES: lambda w: study_url(w.study, "images/"),
        VIEWER: lambda w: study_url(w.study, "viewer-url/"),
        IMAGE_URL: lambda w: image_url_endpoint(w.image),
    }
    missing: dict[str, str] = {
        DETAIL: f"{STUDIES}999999/",
        IMAGES: f"{STUDIES}999999/images/",
        VIEWER: f"{STUDIES}999999/viewer-url/",
        IMAGE_URL: "/api/v1/radiology/images/999999/url/",
    }
    for path, url in by_path.items():
        yield pytest.param(path, "get", "200", _get("doctor", url), id=f"{path} 200")
        yield pytest.param(path, "get", "401", _get("anonymous", url), id=f"{path} 401")
        yield pytest.param(path, "get", "403", _get("nurse", url), id=f"{path} 403")
        if path in missing:
            yield pytest.param(path, "get", "404", _get("doctor", lambda w, u=missing[path]: u), id=f"{path} 404")
        if path in (LIST, DETAIL):
            bad = _get("doctor", lambda w, u=url: u(w) + "?study_date_from=bad")
            yield pytest.param(path, "get", "400", bad, id=f"{path} 400 bad date")
        else:
            bad = _get("doctor", lambda w, u=url: u(w) + "?expires_in=0")
            yield pytest.param(path, "get", "400", bad, id=f"{path} 400 expires_in")
    yield pytest.param(LIST, "get", "200", _get("doctor", lambda w: STUDIES + "?limit=1"), id="list 200 paginated")
    yield pytest.param(
        LIST, "get", "200", _get("doctor", lambda w: STUDIES + "?limit=1&offset=1"), id="list 200 last page"
    )
    yield pytest.param(TOKEN, "post", "200", _token({"username": "doctor-alice", "password": PASSWORD}), id="token 200")
    yield pytest.param(
        TOKEN, "post", "400", _token({"username": "doctor-alice", "password": "nope"}), id="token 400 credentials"
    )
    yield pytest.param(TOKEN, "post", "400", _token({"username": "doctor-alice"}), id="token 400 required")


SCENARIOS = list(_scenarios())


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "method", "status", "call"), SCENARIOS)
def test_a_real_response_matches_its_documented_schema(
    schemas: ResponseSchemas, world: World, path: str, method: str, status: str, call: Call
) -> None:
    response = call(world)

    assert str(response.status_code) == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    schemas.validator(path, method, status).validate(body)
    if status != "200":
        assert set(body) <= {"detail", "code", "errors"}
        assert body["code"]


def test_every_documented_response_has_a_real_example(document: dict[str, Any]) -> None:
    documented = {
        (path, method, status)
        for path in (*READ_PATHS, TOKEN)
        for method, operation in document["paths"][path].items()
        if method != "parameters"
        for status in operation["responses"]
    }
    exercised = {tuple(scenario.values[:3]) for scenario in SCENARIOS}

    assert exercised <= documented
    assert documented - exercised == UNREACHABLE
