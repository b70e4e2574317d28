"""Fuzz every operation of the OpenAPI 3.1 document with schemathesis, in process through the WSGI app.

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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from django.urls import Resolver404, resolve
from hypothesis import HealthCheck, settings
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

from apps.radiology.demo import relabelled_dicom
from apps.radiology.models import DICOM_MIME_TYPE, RadiologyUpload
from apps.radiology.tests.conftest import PASSWORD, IngestFile, MakeOrder
from apps.radiology.uids import generate_uid
from apps.radiology.upload_sync import UploadMetadata, upload_receive, upload_start
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
