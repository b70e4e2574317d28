"""The audit trail: one AuditEvent per radiology request, exact in every column, append-only.

Each request below is the only one its test makes through the audited prefixes (setup goes
through services, not requests), so "the one event" is the request's. Search values and
tokens must never reach the trail: only query parameter names, never `token` itself.
"""

from __future__ import annotations

import csv
import datetime as dt
import uuid
import zoneinfo
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.core.management import CommandError, call_command
from django.core.management.color import no_style
from django.core.management.commands import flush as django_flush_command
from django.core.management.sql import sql_flush
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.radiology.access import audit, selectors
from apps.radiology.access.signing import revoke_viewer_token
from apps.radiology.db_triggers import audit_delete_permit
from apps.radiology.errors import ImmutableRecord
from apps.radiology.management.commands import archive_radiology_audit as archive_command
from apps.radiology.management.commands.export_radiology_audit import COLUMNS as EXPORT_COLUMNS
from apps.radiology.models import AuditEvent, RadiologyUpload, ViewerToken
from apps.radiology.pacs_lite_service import PACSLiteService
from apps.radiology.tests.api_fixtures import NOT_AUTHENTICATED, PERMISSION_DENIED, token_client
from apps.radiology.tests.conftest import PASSWORD, MakeOrder
from apps.radiology.tests.trust_helpers import (
    API,
    DICOMWEB,
    INVALID_TOKEN,
    StoredStudy,
    bearer_client,
    column_values,
    event_row,
    expected_event,
    ingest_study,
    issue_token,
    only_event,
    refused_token_event,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def stored(make_order: MakeOrder, radtech: AbstractBaseUser) -> StoredStudy:
    return ingest_study(make_order(last_name="Doe"), images=2, user=radtech)


@pytest.fixture
def admin_client(superuser: AbstractBaseUser) -> Client:
    client = Client()
    client.force_login(superuser)
    return client


def _upload(radtech: AbstractBaseUser, stored: StoredStudy) -> RadiologyUpload:
    return RadiologyUpload.objects.create(
        client_upload_id=uuid.uuid4(),
        uploaded_by=radtech,
        radiology_order=stored.study.radiology_order,
        filename="ct_9.dcm",
        file_size=100,
        mime_type="application/dicom",
        checksum="a" * 64,
    )


# --- the REST API: one event per GET, with the ids from the URL -------------------------------------

REST_CASES: dict[str, tuple[Callable[[StoredStudy, RadiologyUpload], str], str, Callable[..., dict[str, Any]]]] = {
    "study-list": (lambda s, u: f"{API}/studies/", "doctor", lambda s, u: {}),
    "study-detail": (lambda s, u: f"{API}/studies/{s.study.pk}/", "doctor", lambda s, u: {"study_id": s.study.pk}),
    "study-images": (
        lambda s, u: f"{API}/studies/{s.study.pk}/images/?expires_in=60",
        "doctor",
        lambda s, u: {"study_id": s.study.pk, "query_keys": "expires_in"},
    ),
    "study-viewer-url": (
        lambda s, u: f"{API}/studies/{s.study.pk}/viewer-url/",
        "doctor",
        lambda s, u: {"study_id": s.study.pk},
    ),
    "image-url": (lambda s, u: f"{API}/images/{s.image.pk}/url/", "doctor", lambda s, u: {"image_id": s.image.pk}),
    "upload-detail": (lambda s, u: f"{API}/uploads/{u.pk}/", "radtech", lambda s, u: {"upload_id": u.pk}),
}
ROLE_OF = {"doctor": "doctor", "radtech": "radiology_tech"}


@pytest.mark.parametrize("route", list(REST_CASES))
def test_rest_get_leaves_one_event_with_the_ids_of_its_url(
    route: str, stored: StoredStudy, request: pytest.FixtureRequest
) -> None:
    url_of, actor, ids_of = REST_CASES[route]
    user = request.getfixturevalue(actor)
    upload = _upload(request.getfixturevalue("radtech"), stored)

    response = token_client(user).get(url_of(stored, upload))

    assert response.status_code == 200, response.content
    assert event_row(only_event()) == expected_event(
        user=user.pk,
        username=user.username,
        role=ROLE_OF[actor],
        channel="api",
        action="read",
        route=route,
        method="GET",
        status_code=200,
        outcome="allowed",
        **ids_of(stored, upload),
    )


def test_viewer_url_answer_carries_a_token_the_trail_does_not(doctor: AbstractBaseUser, stored: StoredStudy) -> None:
    response = token_client(doctor).get(f"{API}/studies/{stored.study.pk}/viewer-url/")

    token = response.json()["viewer_url"].split("token=", 1)[1]
    assert ViewerToken.objects.get().issued_to == doctor
    assert all(token not in value for value in column_values(only_event()))


# --- DICOMweb ----------------------------------------------------------------------------------------


def test_qido_search_records_parameter_names_never_their_values(doctor: AbstractBaseUser, stored: StoredStudy) -> None:
    response = token_client(doctor).get(
        f"{DICOMWEB}/studies", {"PatientName": "Doe*", "limit": "5", "includefield": "00081030"}
    )

    assert response.status_code == 200
    assert [study["0020000D"]["Value"] for study in response.json()] == [[stored.study.study_uid]]
    event = only_event()
    assert event_row(event) == expected_event(
        user=doctor.pk,
        username="doctor-alice",
        role="doctor",
        channel="dicomweb",
        action="read",
        route="dicomweb-studies",
        method="GET",
        query_keys="PatientName,includefield,limit",
        status_code=200,
        outcome="allowed",
    )
    assert not [value for value in column_values(event) if "Doe" in value or "00081030" in value]


def test_wado_metadata_records_the_uids_of_its_url(radtech: AbstractBaseUser, stored: StoredStudy) -> None:
    image = stored.images[1]

    response = token_client(radtech).get(stored.instance_url("/metadata", image=image))

    assert response.status_code == 200
    assert response.json()[0]["00080018"]["Value"] == [image.image_uid]
    assert event_row(only_event()) == expected_event(
        user=radtech.pk,
        username="radtech-bob",
        role="radiology_tech",
        channel="dicomweb",
        action="read",
        route="dicomweb-instance-metadata",
        method="GET",
        study_uid=stored.study.study_uid,
        series_uid=stored.series.series_uid,
        image_uid=image.image_uid,
        status_code=200,
        outcome="allowed",
    )


def test_wado_retrieve_by_a_superuser(superuser: AbstractBaseUser, stored: StoredStudy) -> None:
    response = token_client(superuser).get(stored.series_url())

    assert response.status_code == 200
    assert b"".join(response.streaming_content).count(b"DICM") == 2  # type: ignore[attr-defined]
    assert event_row(only_event()) == expected_event(
        user=superuser.pk,
        username="admin-dana",
        role="superuser",
        channel="dicomweb",
        action="read",
        route="dicomweb-series",
        method="GET",
        study_uid=stored.study.study_uid,
        series_uid=stored.series.series_uid,
        status_code=200,
        outcome="allowed",
    )


def test_viewer_token_request_records_the_token_id_not_the_token(stored: StoredStudy) -> None:
    token = issue_token(stored.study)
    token_id = ViewerToken.objects.get().pk

    response = bearer_client(token).get(stored.series_url("/metadata"))

    assert response.status_code == 200
    assert len(response.json()) == 2
    event = only_event()
    assert event_row(event) == expected_event(
        role="viewer_token",
        viewer_token_id=token_id,
        channel="dicomweb",
        action="read",
        route="dicomweb-series-metadata",
        method="GET",
        study_uid=stored.study.study_uid,
        series_uid=stored.series.series_uid,
        status_code=200,
        outcome="allowed",
    )
    assert all(token not in value for value in column_values(event))


def test_viewer_token_search_records_the_study_of_the_token(stored: StoredStudy) -> None:
    token = issue_token(stored.study)

    response = bearer_client(token).get(f"{DICOMWEB}/instances", {"SeriesInstanceUID": stored.series.series_uid})

    assert response.status_code == 200
    assert len(response.json()) == 2
    assert event_row(only_event()) == expected_event(
        role="viewer_token",
        viewer_token_id=ViewerToken.objects.get().pk,
        channel="dicomweb",
        action="read",
        route="dicomweb-instances-search",
        method="GET",
        study_uid=stored.study.study_uid,
        query_keys="SeriesInstanceUID",
        status_code=200,
        outcome="allowed",
    )


# --- signed URLs and the lite viewer ---------------------------------------------------------------


def test_signed_url_fetch_is_recorded_without_its_signature(stored: StoredStudy) -> None:
    url = PACSLiteService.generate_image_url(image=stored.image, user=None, expires_in=60)  # type: ignore[arg-type]
    signature = url.split("token=", 1)[1]

    response = Client().get(url)

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == stored.contents[0]  # type: ignore[attr-defined]
    event = only_event()
    assert event_row(event) == expected_event(
        role="anonymous",
        channel="signed_url",
        action="read",
        route="signed-image",
        method="GET",
        image_id=stored.image.pk,
        query_keys="expires",
        status_code=200,
        outcome="allowed",
    )
    assert all(signature not in value for value in column_values(event))


def test_signed_url_without_signature_is_denied(stored: StoredStudy) -> None:
    response = Client().get(f"{API}/files/{stored.image.pk}/{stored.image.filename}")

    assert response.status_code == 403
    assert event_row(only_event()) == expected_event(
        role="anonymous",
        channel="signed_url",
        action="read",
        route="signed-image",
        method="GET",
        image_id=stored.image.pk,
        status_code=403,
        outcome="denied",
    )


def test_lite_viewer_page_records_the_token_id_and_never_the_token(stored: StoredStudy) -> None:
    token = issue_token(stored.study)

    response = Client().get(f"{API}/viewer/", {"StudyInstanceUIDs": stored.study.study_uid, "token": token})

    assert response.status_code == 200
    assert stored.image.image_uid in response.content.decode()
    event = only_event()
    assert event_row(event) == expected_event(
        role="viewer_token",
        viewer_token_id=ViewerToken.objects.get().pk,
        channel="viewer",
        action="read",
        route="lite-viewer",
        method="GET",
        study_uid=stored.study.study_uid,
        query_keys="StudyInstanceUIDs",
        status_code=200,
        outcome="allowed",
    )
    assert all(token not in value for value in column_values(event))


def test_lite_viewer_page_with_an_altered_token_is_denied(stored: StoredStudy) -> None:
    token = issue_token(stored.study)

    response = Client().get(f"{API}/viewer/", {"StudyInstanceUIDs": stored.study.study_uid, "token": token + "x"})

    assert response.status_code == 403
    assert event_row(only_event()) == expected_event(
        role="invalid_viewer_token",
        channel="viewer",
        action="read",
        route="lite-viewer",
        method="GET",
        query_keys="StudyInstanceUIDs",
        status_code=403,
        outcome="denied",
    )


def test_lite_viewer_download_link_request(stored: StoredStudy) -> None:
    token = issue_token(stored.study)

    response = bearer_client(token).get(f"{API}/viewer/image-url/", {"image": stored.image.image_uid})

    assert response.status_code == 200
    assert f"/files/{stored.image.pk}/" in response.json()["image_url"]
    assert event_row(only_event()) == expected_event(
        role="viewer_token",
        viewer_token_id=ViewerToken.objects.get().pk,
        channel="viewer",
        action="read",
        route="lite-viewer-image-url",
        method="GET",
        study_uid=stored.study.study_uid,
        query_keys="image",
        status_code=200,
        outcome="allowed",
    )


# --- writes ------------------------------------------------------------------------------------------


def test_upload_post_is_a_write(radtech: AbstractBaseUser, stored: StoredStudy) -> None:
    body = {
        "client_upload_id": str(uuid.uuid4()),
        "radiology_order": stored.study.radiology_order_id,
        "filename": "ct_9.dcm",
        "file_size": 1000,
        "mime_type": "application/dicom",
        "checksum": "b" * 64,
    }

    response = token_client(radtech).post(f"{API}/uploads/", body, content_type="application/json")

    assert response.status_code == 201, response.content
    assert RadiologyUpload.objects.get().pk == response.json()["id"]
    assert event_row(only_event()) == expected_event(
        user=radtech.pk,
        username="radtech-bob",
        role="radiology_tech",
        channel="api",
        action="write",
        route="upload-list",
        method="POST",
        status_code=201,
        outcome="allowed",
    )


def test_stow_by_a_doctor_is_a_denied_write(doctor: AbstractBaseUser, stored: StoredStudy) -> None:
    response = token_client(doctor).post(stored.study_url(), b"", content_type="multipart/related; type=x")

    assert response.status_code == 403
    assert event_row(only_event()) == expected_event(
        user=doctor.pk,
        username="doctor-alice",
        role="doctor",
        channel="dicomweb",
        action="write",
        route="dicomweb-study",
        method="POST",
        study_uid=stored.study.study_uid,
        status_code=403,
        outcome="denied",
    )


# --- admin -------------------------------------------------------------------------------------------


def test_admin_study_page_is_recorded(admin_client: Client, superuser: AbstractBaseUser, stored: StoredStudy) -> None:
    response = admin_client.get(reverse("admin:radiology_radiologystudy_change", args=[stored.study.pk]))

    assert response.status_code == 200
    page = response.content.decode()
    thumbnail = reverse(
        "radiology:dicomweb-series-thumbnail",
        kwargs={"study_uid": stored.study.study_uid, "series_uid": stored.series.series_uid},
    )
    assert f'src="{thumbnail}?viewport=96,96"' in page
    assert reverse("admin:radiology_radiologystudy_viewer", args=[stored.study.pk]) in page
    assert event_row(only_event()) == expected_event(
        user=superuser.pk,
        username="admin-dana",
        role="superuser",
        channel="admin",
        action="read",
        route="radiology_radiologystudy_change",
        method="GET",
        study_id=stored.study.pk,
        status_code=200,
        outcome="allowed",
    )


def test_admin_open_in_viewer_is_recorded(
    admin_client: Client, superuser: AbstractBaseUser, stored: StoredStudy
) -> None:
    response = admin_client.get(reverse("admin:radiology_radiologystudy_viewer", args=[stored.study.pk]))

    assert response.status_code == 302
    assert ViewerToken.objects.get().issued_to == superuser
    assert event_row(only_event()) == expected_event(
        user=superuser.pk,
        username="admin-dana",
        role="superuser",
        channel="admin",
        action="read",
        route="radiology_radiologystudy_viewer",
        method="GET",
        study_id=stored.study.pk,
        status_code=302,
        outcome="allowed",
    )


# --- refusals and failures ---------------------------------------------------------------------------


def test_nurse_is_recorded_as_denied(nurse: AbstractBaseUser, stored: StoredStudy) -> None:
    response = token_client(nurse).get(f"{API}/studies/{stored.study.pk}/")

    assert response.status_code == 403
    assert response.json() == PERMISSION_DENIED
    assert event_row(only_event()) == expected_event(
        user=nurse.pk,
        username="nurse-charlie",
        role="other",
        channel="api",
        action="read",
        route="study-detail",
        method="GET",
        study_id=stored.study.pk,
        status_code=403,
        outcome="denied",
    )


def test_anonymous_is_recorded_as_denied(stored: StoredStudy) -> None:
    response = Client().get(f"{API}/images/{stored.image.pk}/url/")

    assert response.status_code == 401
    assert response.json() == NOT_AUTHENTICATED
    assert event_row(only_event()) == expected_event(
        role="anonymous",
        channel="api",
        action="read",
        route="image-url",
        method="GET",
        image_id=stored.image.pk,
        status_code=401,
        outcome="denied",
    )


def test_bad_viewer_token_is_recorded_as_denied(stored: StoredStudy) -> None:
    token = issue_token(stored.study)

    response = bearer_client(token[:-2]).get(stored.study_url("/metadata"))

    assert response.status_code == 401
    assert response.json() == INVALID_TOKEN
    event = only_event()
    assert event_row(event) == expected_event(
        role="invalid_viewer_token",  # altered: no token id can be trusted from it
        channel="dicomweb",
        action="read",
        route="dicomweb-study-metadata",
        method="GET",
        study_uid=stored.study.study_uid,
        status_code=401,
        outcome="denied",
    )
    assert all(token[:20] not in value for value in column_values(event))


def test_unknown_study_is_not_found(doctor: AbstractBaseUser, stored: StoredStudy) -> None:
    response = token_client(doctor).get(f"{API}/studies/{stored.study.pk + 1000}/")

    assert response.status_code == 404
    event = only_event()
    assert (event.route, event.study_id, event.status_code, event.outcome) == (
        "study-detail",
        stored.study.pk + 1000,
        404,
        "not_found",
    )


def test_bad_parameter_is_rejected(doctor: AbstractBaseUser, stored: StoredStudy) -> None:
    response = token_client(doctor).get(f"{API}/images/{stored.image.pk}/url/", {"expires_in": "0"})

    assert response.status_code == 400
    event = only_event()
    assert (event.route, event.query_keys, event.status_code, event.outcome) == (
        "image-url",
        "expires_in",
        400,
        "rejected",
    )


def test_server_error_is_recorded(
    doctor: AbstractBaseUser, stored: StoredStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: Any) -> Any:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(selectors, "study_list", broken)
    client = token_client(doctor)
    client.raise_request_exception = False

    response = client.get(f"{API}/studies/")

    assert response.status_code == 500
    event = only_event()
    assert (event.username, event.route, event.status_code, event.outcome) == (
        "doctor-alice",
        "study-list",
        500,
        "error",
    )


def test_unresolved_path_under_the_prefix_is_recorded(doctor: AbstractBaseUser, db: None) -> None:
    response = token_client(doctor).get(f"{API}/no-such-thing/?PatientID=123")

    assert response.status_code == 404
    assert event_row(only_event()) == expected_event(
        role="anonymous",
        channel="api",
        action="read",
        route="unresolved",
        method="GET",
        query_keys="PatientID",
        status_code=404,
        outcome="not_found",
    )


@pytest.mark.parametrize(
    ("path", "route", "ids"),
    [
        ("/studies/\u00b2/", "study-detail", {}),  # superscript 2: a digit to str.isdigit, not to int()
        ("/studies/\u0661/", "study-detail", {"study_id": 1}),  # Arabic-Indic 1: int() and the lookup read 1
        (f"/studies/{'9' * 30}/images/", "study-images", {}),  # beyond the id column
        (f"/images/{2**63}/url/", "image-url", {}),
        (f"/files/{'9' * 30}/x.dcm", "signed-image", {}),
    ],
)
def test_odd_ids_in_the_url_are_recorded_without_them(
    path: str, route: str, ids: dict[str, int], doctor: AbstractBaseUser
) -> None:
    response = token_client(doctor).get(f"{API}{path}")

    assert response.status_code in (403, 404)
    event = only_event()
    assert (event.route, event.study_id, event.image_id, event.status_code) == (
        route,
        ids.get("study_id"),
        None,
        response.status_code,
    )


def test_control_characters_in_query_names_do_not_lose_the_event(doctor: AbstractBaseUser, stored: StoredStudy) -> None:
    response = token_client(doctor).get(f"{API}/studies/?a%00b=1&c%0Ad=2&PatientName=Doe")

    assert response.status_code == 200
    assert only_event().query_keys == "PatientName,a?b,c?d"


# --- what is not recorded, and where the address comes from -------------------------------------------


def test_preflight_and_paths_outside_radiology_leave_no_event(doctor: AbstractBaseUser, stored: StoredStudy) -> None:
    client = token_client(doctor)

    responses = [
        client.options(f"{API}/studies/"),
        client.options(stored.study_url("/metadata")),
        client.get("/healthz"),
        client.get("/api/v1/schema/"),
        client.post("/api/v1/auth/token/", {"username": "doctor-alice", "password": PASSWORD}),
    ]

    assert [response.status_code for response in responses] == [200, 200, 200, 200, 200]
    assert AuditEvent.objects.count() == 0


@pytest.mark.parametrize(
    ("trusted", "forwarded", "expected"),
    [
        # The proxy appends the address it saw ($proxy_add_x_forwarded_for): only that last hop is its word.
        (True, "203.0.113.7, 198.51.100.20", "198.51.100.20"),
        (True, "198.51.100.20", "198.51.100.20"),
        (True, "2001:db8::7", "2001:db8::7"),
        # Not an address (a client's invention): the connection's own address instead.
        (True, "not-an-address, 198.51.100.20", "198.51.100.20"),
        (True, "203.0.113.7, not-an-address", "10.1.2.3"),
        (True, "", "10.1.2.3"),
        (False, "203.0.113.7, 198.51.100.20", "10.1.2.3"),
    ],
)
def test_client_address(
    trusted: bool, forwarded: str, expected: str, doctor: AbstractBaseUser, stored: StoredStudy, settings: Any
) -> None:
    settings.RADIOLOGY_TRUST_X_FORWARDED_FOR = trusted

    response = token_client(doctor).get(
        f"{API}/studies/", REMOTE_ADDR="10.1.2.3", headers={"X-Forwarded-For": forwarded}
    )

    assert response.status_code == 200
    assert only_event().client_address == expected


@pytest.mark.parametrize(
    ("sent_key", "expected"),
    [
        # `make run`'s nginx on the viewer's origin sends the key: its last hop is recorded.
        ("viewer-proxy-key", "198.51.100.20"),
        # A LAN client on the API's port, or one behind another proxy on the box (loopback peer),
        # sending its own X-Forwarded-For: its connection's address.
        ("", "127.0.0.1"),
        ("a-guess", "127.0.0.1"),
        ("viewer-proxy-ke", "127.0.0.1"),
    ],
)
def test_client_address_from_the_viewer_proxy_only(
    sent_key: str, expected: str, doctor: AbstractBaseUser, stored: StoredStudy, settings: Any
) -> None:
    settings.RADIOLOGY_TRUST_X_FORWARDED_FOR = False
    settings.RADIOLOGY_VIEWER_PROXY_KEY = "viewer-proxy-key"
    headers = {"X-Forwarded-For": "203.0.113.7, 198.51.100.20"}
    if sent_key:
        headers["X-PACS-Proxy-Key"] = sent_key

    response = token_client(doctor).get(f"{API}/studies/", REMOTE_ADDR="127.0.0.1", headers=headers)

    assert response.status_code == 200
    assert only_event().client_address == expected


def test_without_a_viewer_proxy_key_no_request_is_trusted(
    doctor: AbstractBaseUser, stored: StoredStudy, settings: Any
) -> None:
    settings.RADIOLOGY_TRUST_X_FORWARDED_FOR = False
    settings.RADIOLOGY_VIEWER_PROXY_KEY = ""

    response = token_client(doctor).get(
        f"{API}/studies/", REMOTE_ADDR="10.1.2.3", headers={"X-Forwarded-For": "198.51.100.20", "X-PACS-Proxy-Key": ""}
    )

    assert response.status_code == 200
    assert only_event().client_address == "10.1.2.3"


def test_a_connection_without_an_ip_address_is_still_recorded(doctor: AbstractBaseUser, stored: StoredStudy) -> None:
    response = token_client(doctor).get(f"{API}/studies/", REMOTE_ADDR="unix:/run/pacs-api.sock")

    assert response.status_code == 200
    assert only_event().client_address is None


def test_every_role_and_channel_name(
    doctor: AbstractBaseUser,
    radtech: AbstractBaseUser,
    nurse: AbstractBaseUser,
    superuser: AbstractBaseUser,
    stored: StoredStudy,
) -> None:
    for user in (doctor, radtech, nurse, superuser):
        token_client(user).get(f"{API}/studies/")
    Client().get(f"{API}/studies/")
    bearer_client(issue_token(stored.study)).get(stored.study_url("/series"))

    assert list(AuditEvent.objects.order_by("id").values_list("role", "channel", "status_code")) == [
        ("doctor", "api", 200),
        ("radiology_tech", "api", 200),
        ("other", "api", 403),
        ("superuser", "api", 200),
        ("anonymous", "api", 401),
        ("viewer_token", "dicomweb", 200),
    ]


# --- append-only -------------------------------------------------------------------------------------

WRITE_ONCE = r"^This record is written once and cannot be changed or deleted\.$"


@pytest.fixture
def event(doctor: AbstractBaseUser, stored: StoredStudy) -> AuditEvent:
    token_client(doctor).get(f"{API}/studies/{stored.study.pk}/")
    return only_event()


def test_an_event_cannot_be_saved_again(event: AuditEvent) -> None:
    event.outcome = AuditEvent.Outcome.DENIED

    with pytest.raises(ImmutableRecord, match=WRITE_ONCE):
        event.save()

    assert AuditEvent.objects.get().outcome == "allowed"


def test_an_event_cannot_be_deleted(event: AuditEvent) -> None:
    with pytest.raises(ImmutableRecord, match=WRITE_ONCE):
        event.delete()

    assert AuditEvent.objects.count() == 1


def test_bulk_update_and_delete_are_refused(event: AuditEvent) -> None:
    with pytest.raises(ImmutableRecord, match=WRITE_ONCE):
        AuditEvent.objects.filter(pk=event.pk).update(outcome="denied")
    with pytest.raises(ImmutableRecord, match=WRITE_ONCE):
        AuditEvent.objects.all().delete()
    # bulk_update runs in atomic(savepoint=False): give it a savepoint of its own.
    with pytest.raises(ImmutableRecord, match=WRITE_ONCE), transaction.atomic():
        AuditEvent.objects.bulk_update([event], ["outcome"])

    assert event_row(AuditEvent.objects.get()) == event_row(event)


def _raw_update(event: AuditEvent) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "UPDATE radiology_auditevent SET outcome = %s, username = %s WHERE id = %s", ["denied", "x", event.pk]
        )


def test_raw_sql_update_is_refused_by_the_database(event: AuditEvent) -> None:
    with pytest.raises(DatabaseError, match="audit events are append-only"):
        _raw_update(event)

    assert event_row(AuditEvent.objects.get()) == event_row(event)


def test_the_trigger_comes_back_after_migrate(event: AuditEvent) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "DROP TRIGGER IF EXISTS radiology_audit_append_only"
            + (" ON radiology_auditevent" if connection.vendor == "postgresql" else "")
        )

    call_command("migrate", verbosity=0)

    with pytest.raises(DatabaseError, match="audit events are append-only"):
        _raw_update(event)
    assert AuditEvent.objects.get().outcome == "allowed"


# --- admin: read-only, filterable --------------------------------------------------------------------


def _events_of_every_kind(doctor: AbstractBaseUser, nurse: AbstractBaseUser, stored: StoredStudy) -> None:
    token_client(doctor).get(f"{API}/studies/")
    token_client(nurse).get(f"{API}/studies/")
    Client().get(stored.study_url())
    bearer_client(issue_token(stored.study)).get(stored.study_url("/metadata"))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, 4),
        ({"outcome": "denied"}, 2),
        ({"outcome__exact": "allowed"}, 2),
        ({"channel__exact": "dicomweb"}, 2),
        ({"role__exact": "viewer_token"}, 1),
        ({"action__exact": "read"}, 4),
        ({"method__exact": "POST"}, 0),
        ({"q": "nurse-charlie"}, 1),
    ],
)
def test_admin_changelist_filters(
    admin_client: Client,
    doctor: AbstractBaseUser,
    nurse: AbstractBaseUser,
    stored: StoredStudy,
    query: dict[str, str],
    expected: int,
) -> None:
    _events_of_every_kind(doctor, nurse, stored)

    response = admin_client.get(reverse("admin:radiology_auditevent_changelist"), query)

    assert response.status_code == 200
    assert response.context["cl"].result_count == expected
    # The admin's own visit is recorded too, after the page was built.
    assert AuditEvent.objects.filter(channel="admin", route="radiology_auditevent_changelist").count() == 1


def test_admin_offers_no_add_change_or_delete(
    admin_client: Client, doctor: AbstractBaseUser, nurse: AbstractBaseUser, stored: StoredStudy
) -> None:
    _events_of_every_kind(doctor, nurse, stored)
    event = AuditEvent.objects.get(role="other")
    before = event_row(event)

    changelist = admin_client.get(reverse("admin:radiology_auditevent_changelist"))
    add = admin_client.get(reverse("admin:radiology_auditevent_add"))
    change = admin_client.get(reverse("admin:radiology_auditevent_change", args=[event.pk]))
    post = admin_client.post(reverse("admin:radiology_auditevent_change", args=[event.pk]), {"outcome": "allowed"})
    delete = admin_client.post(reverse("admin:radiology_auditevent_delete", args=[event.pk]), {"post": "yes"})
    bulk = admin_client.post(
        reverse("admin:radiology_auditevent_changelist"),
        {"action": "delete_selected", "_selected_action": [event.pk]},
    )

    assert changelist.status_code == 200
    assert b"delete_selected" not in changelist.content
    assert reverse("admin:radiology_auditevent_add").encode() not in changelist.content
    assert (add.status_code, change.status_code, post.status_code, delete.status_code) == (403, 200, 403, 403)
    assert change.context["has_change_permission"] is False
    assert b'name="_save"' not in change.content
    assert bulk.status_code == 200  # the changelist again, with "No action selected"
    assert event_row(AuditEvent.objects.get(pk=event.pk)) == before
    assert AuditEvent.objects.exclude(channel="admin").count() == 4


def test_no_column_holds_bytes_or_tokens(stored: StoredStudy, doctor: AbstractBaseUser) -> None:
    token = issue_token(stored.study)
    signed = PACSLiteService.generate_image_url(image=stored.image, user=doctor, expires_in=60)
    # Streamed bodies are read to the end, as a server sends them: the event is written when
    # the response is closed (audit.py).
    b"".join(bearer_client(token).get(stored.instance_url()).streaming_content)
    Client().get(f"{API}/viewer/", {"StudyInstanceUIDs": stored.study.study_uid, "token": token})
    b"".join(Client().get(signed).streaming_content)
    b"".join(token_client(doctor).get(stored.instance_url("/frames/1")).streaming_content)
    secrets_ = [token, signed.split("token=", 1)[1]]

    values = [value for event in AuditEvent.objects.all() for value in column_values(event)]

    assert AuditEvent.objects.count() == 4
    assert max(len(value) for value in values) <= 64
    assert not [value for value in values for secret in secrets_ if secret in value]


def test_the_event_is_written_when_the_answer_is_closed_even_if_cut_short(
    stored: StoredStudy, doctor: AbstractBaseUser
) -> None:
    """The INSERT waits until the server closes the response (off the request's latency);
    a client that drops the connection mid-body still leaves its event."""
    response = token_client(doctor).get(stored.instance_url("/frames/1"))
    body = iter(response.streaming_content)
    next(body)  # part of the body, then the connection drops

    assert AuditEvent.objects.count() == 0
    # The client goes away: the test client's emulation of a WSGI server closes the response
    # when its body iterator is closed (and keeps the test's database connection open).
    response._iterator.close()

    assert list(AuditEvent.objects.values_list("route", "status_code", "image_uid", "role")) == [
        ("dicomweb-frames", 200, stored.image.image_uid, "doctor")
    ]
    assert response.closed


# --- refused viewer tokens and admin login redirects -------------------------------------------------


def test_an_expired_viewer_token_is_recorded_by_its_id(stored: StoredStudy) -> None:
    token = issue_token(stored.study, expires_in=-60)

    response = bearer_client(token).get(stored.study_url("/metadata"))

    assert response.status_code == 401
    assert event_row(only_event()) == refused_token_event(stored, ViewerToken.objects.get().pk)


def test_a_frame_asked_with_a_revoked_token_is_recorded_by_its_id(stored: StoredStudy) -> None:
    """The frame route checks the token's row in its instance lookup; the refusal reads the same in the trail."""
    token = issue_token(stored.study)
    token_id = ViewerToken.objects.get().pk
    revoke_viewer_token(token_id)

    response = bearer_client(token).get(stored.instance_url("/frames/1"))

    assert response.status_code == 401
    assert event_row(only_event()) == refused_token_event(
        stored,
        token_id,
        route="dicomweb-frames",
        study_uid=stored.study.study_uid,
        series_uid=stored.series.series_uid,
        image_uid=stored.image.image_uid,
    )


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("studies", "dicomweb-studies"),
        ("series", "dicomweb-series-search"),
        ("instances", "dicomweb-instances-search"),
    ],
)
def test_a_search_with_a_revoked_token_names_no_study(stored: StoredStudy, path: str, route: str) -> None:
    """The study a refused token claims is no study the request touched: the event names none."""
    token = issue_token(stored.study)
    token_id = ViewerToken.objects.get().pk
    revoke_viewer_token(token_id)

    response = bearer_client(token).get(f"{DICOMWEB}/{path}")

    assert response.status_code == 401
    route = {
        "studies": "dicomweb-studies",
        "series": "dicomweb-series-search",
        "instances": "dicomweb-instances-search",
    }
    assert event_row(only_event()) == refused_token_event(stored, token_id, route=route[path], study_uid="")


def test_a_malformed_bearer_token_is_marked(stored: StoredStudy) -> None:
    response = bearer_client("not-a-token").get(f"{DICOMWEB}/studies")

    assert response.status_code == 401
    assert (only_event().role, only_event().viewer_token_id) == ("invalid_viewer_token", None)


def test_an_admin_login_redirect_is_a_denial(stored: StoredStudy) -> None:
    url = reverse("admin:radiology_radiologystudy_change", args=[stored.study.pk])

    response = Client().get(url)

    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={url}"
    assert event_row(only_event()) == expected_event(
        role="anonymous",
        channel="admin",
        action="read",
        route="radiology_radiologystudy_change",
        method="GET",
        study_id=stored.study.pk,
        status_code=302,
        outcome="denied",
    )


# --- DELETE refused by the database; the archive command is the one way ------------------------------


def _raw_delete(event: AuditEvent) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM radiology_auditevent WHERE id = %s", [event.pk])


def test_raw_sql_delete_is_refused_by_the_database(event: AuditEvent) -> None:
    with pytest.raises(DatabaseError, match="audit events are append-only"):
        _raw_delete(event)

    assert event_row(AuditEvent.objects.get()) == event_row(event)


def test_the_delete_guard_comes_back_after_migrate(event: AuditEvent) -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("DROP TRIGGER IF EXISTS radiology_audit_append_only ON radiology_auditevent")
        else:
            cursor.execute("DROP TRIGGER IF EXISTS radiology_audit_no_delete")

    call_command("migrate", verbosity=0)

    with pytest.raises(DatabaseError, match="audit events are append-only"):
        _raw_delete(event)
    assert AuditEvent.objects.count() == 1


def _permits() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM radiology_audit_delete_permit")
        return cursor.fetchone()[0]


def _empty_the_trail() -> None:
    """What a flush does to the table: TRUNCATE on PostgreSQL, an unfiltered DELETE on SQLite."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The test's own transaction holds deferred foreign-key checks of the rows it wrote,
            # which TRUNCATE would refuse for reasons of its own: check them now.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute("TRUNCATE radiology_auditevent")
        else:
            cursor.execute("DELETE FROM radiology_auditevent")


def test_emptying_the_whole_table_is_refused_by_the_database(event: AuditEvent) -> None:
    with pytest.raises(DatabaseError, match="audit events are append-only"):
        _empty_the_trail()

    assert event_row(AuditEvent.objects.get()) == event_row(event)


def test_the_archive_permit_does_not_allow_truncate(event: AuditEvent) -> None:
    # The archive's permit covers events before its day; TRUNCATE (PostgreSQL) would take all of
    # them, so only the flush's permit (no end) lets it through. SQLite has no TRUNCATE: its
    # DELETE of every row is checked row by row, and the newer row stops it.
    with (
        pytest.raises(DatabaseError, match="audit events are append-only"),
        audit_delete_permit(before=event.at - dt.timedelta(seconds=1)),
    ):
        _empty_the_trail()

    assert event_row(AuditEvent.objects.get()) == event_row(event)
    assert _permits() == 0


# PostgreSQL only, and defined only there (CI's second pass runs the suite on PostgreSQL), so the
# SQLite pass skips nothing: SQLite has no TRUNCATE; its DELETE guard is tested above.
if connection.vendor == "postgresql":

    def test_the_truncate_guard_comes_back_after_migrate(event: AuditEvent) -> None:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER radiology_audit_no_truncate ON radiology_auditevent")

        call_command("migrate", verbosity=0)

        with pytest.raises(DatabaseError, match="audit events are append-only"):
            _empty_the_trail()
        assert AuditEvent.objects.count() == 1


def _event_at(when: dt.datetime, monkeypatch: pytest.MonkeyPatch, route: str) -> AuditEvent:
    """An event written as if at `when` (the trail's time comes from the clock, never from the caller)."""
    with monkeypatch.context() as patch:
        patch.setattr(timezone, "now", lambda: when)
        event = audit.record(user=None, channel="api", action="read", route=route, method="GET", status_code=200)
    assert event is not None
    return event


def test_archive_moves_old_events_to_a_file_and_deletes_only_those(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    zone = timezone.get_current_timezone()
    old = [_event_at(dt.datetime(2026, 1, day, 9, 30, tzinfo=zone), monkeypatch, route=f"old-{day}") for day in (2, 3)]
    kept = _event_at(dt.datetime(2026, 2, 1, 0, 0, tzinfo=zone), monkeypatch, route="kept")
    output = tmp_path / "audit-2026-01.csv"

    call_command("archive_radiology_audit", "--before", "2026-02-01", "--output", str(output))

    with open(output, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == EXPORT_COLUMNS
    assert [row[EXPORT_COLUMNS.index("route")] for row in rows[1:]] == ["old-2", "old-3"]
    assert [row[0] for row in rows[1:]] == [event.at.astimezone(zone).isoformat() for event in old]
    remaining = list(AuditEvent.objects.order_by("id").values_list("route", "channel", "action", "method"))
    assert remaining == [
        ("kept", "api", "read", "GET"),
        ("archive_radiology_audit", "maintenance", "delete", "CLI"),
    ]
    with pytest.raises(DatabaseError, match="audit events are append-only"):
        _raw_delete(kept)  # the permit ended with the archive
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM radiology_audit_delete_permit")
        assert cursor.fetchone() == (0,)


def test_archive_refuses_to_overwrite_a_file_and_deletes_nothing(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _event_at(dt.datetime(2026, 1, 2, tzinfo=timezone.get_current_timezone()), monkeypatch, route="old")
    output = tmp_path / "existing.csv"
    output.write_text("keep me")

    with pytest.raises(CommandError, match="exists; choose a new file"):
        call_command("archive_radiology_audit", "--before", "2026-02-01", "--output", str(output))

    assert output.read_text() == "keep me"
    assert AuditEvent.objects.count() == 1


def test_archive_refuses_a_day_in_the_future(tmp_path: Any) -> None:
    with pytest.raises(CommandError, match="--before is in the future"):
        call_command("archive_radiology_audit", "--before", "2999-01-01", "--output", str(tmp_path / "a.csv"))

    assert not (tmp_path / "a.csv").exists()


@pytest.mark.parametrize(
    ("zone_name", "archived", "kept"),
    [
        # West of UTC: 22:00 on the last day is already the next day in UTC (03:00 / 04:00 UTC).
        ("America/New_York", [(1, 31, 22, 0), (1, 31, 23, 59)], [(2, 1, 0, 0), (2, 1, 18, 0)]),
        # Far east of UTC: the first hours of the day are still the day before in UTC.
        ("Asia/Tokyo", [(1, 31, 8, 0), (1, 31, 23, 59)], [(2, 1, 0, 0), (2, 1, 8, 0)]),
        ("UTC", [(1, 31, 23, 59)], [(2, 1, 0, 0)]),
    ],
)
def test_archive_cuts_at_midnight_of_the_server_time_zone(
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    zone_name: str,
    archived: list[tuple[int, int, int, int]],
    kept: list[tuple[int, int, int, int]],
) -> None:
    settings.TIME_ZONE = zone_name
    assert settings.USE_TZ
    zone = zoneinfo.ZoneInfo(zone_name)
    assert timezone.get_current_timezone() == zone
    # Written newest first, so the ids do not follow the time: only the time decides.
    for month, day, hour, minute in sorted(archived + kept, reverse=True):
        when = dt.datetime(2026, month, day, hour, minute, tzinfo=zone)
        _event_at(when, monkeypatch, route=f"{month}-{day}T{hour:02}:{minute:02}")
    output = tmp_path / "audit.csv"

    call_command("archive_radiology_audit", "--before", "2026-02-01", "--output", str(output))

    with open(output, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    in_id_order = sorted(archived, reverse=True)
    assert rows[0] == EXPORT_COLUMNS
    assert [row[EXPORT_COLUMNS.index("route")] for row in rows[1:]] == [
        f"{m}-{d}T{h:02}:{mi:02}" for m, d, h, mi in in_id_order
    ]
    assert [row[0] for row in rows[1:]] == [
        dt.datetime(2026, m, d, h, mi, tzinfo=zone).isoformat() for m, d, h, mi in in_id_order
    ]
    assert list(AuditEvent.objects.order_by("id").values_list("route", flat=True)) == [
        *(f"{m}-{d}T{h:02}:{mi:02}" for m, d, h, mi in sorted(kept, reverse=True)),
        "archive_radiology_audit",
    ]
    assert _permits() == 0


def test_an_archive_that_cannot_match_its_file_deletes_nothing_and_removes_the_file(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    zone = timezone.get_current_timezone()
    events = [
        _event_at(dt.datetime(2026, 1, day, 9, 30, tzinfo=zone), monkeypatch, route=f"old-{day}") for day in (2, 3)
    ]
    # The file loses a row (as if the export and the delete disagreed): 1 written, 2 would go.
    real_rows = archive_command.audit_rows
    monkeypatch.setattr(archive_command, "audit_rows", lambda rows, zone: list(real_rows(rows, zone))[:-1])
    output = tmp_path / "audit.csv"

    with pytest.raises(CommandError, match="wrote 1 events but 2 matched; nothing deleted"):
        call_command("archive_radiology_audit", "--before", "2026-02-01", "--output", str(output))

    assert not output.exists()
    assert list(tmp_path.iterdir()) == []
    assert [event_row(event) for event in AuditEvent.objects.order_by("id")] == [event_row(event) for event in events]
    assert _permits() == 0
    with pytest.raises(DatabaseError, match="audit events are append-only"):
        _raw_delete(events[0])  # the permit went with the rolled-back transaction


def test_an_archive_whose_file_cannot_be_written_leaves_no_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _event_at(dt.datetime(2026, 1, 2, tzinfo=timezone.get_current_timezone()), monkeypatch, route="old")

    def broken(rows: Any, zone: Any) -> Any:
        yield EXPORT_COLUMNS
        raise OSError("disk full")

    monkeypatch.setattr(archive_command, "audit_rows", broken)
    output = tmp_path / "audit.csv"

    with pytest.raises(OSError, match="disk full"):
        call_command("archive_radiology_audit", "--before", "2026-02-01", "--output", str(output))

    assert list(tmp_path.iterdir()) == []
    assert list(AuditEvent.objects.values_list("route", flat=True)) == ["old"]


@pytest.mark.django_db(transaction=True)
def test_flush_empties_the_trail_and_the_guard_stays(doctor: AbstractBaseUser, stored: StoredStudy) -> None:
    token_client(doctor).get(f"{API}/studies/")
    assert AuditEvent.objects.count() == 1

    call_command("flush", interactive=False, verbosity=0)

    assert AuditEvent.objects.count() == 0
    event = audit.record(user=None, channel="api", action="read", route="after", method="GET", status_code=200)
    assert event is not None
    with pytest.raises(DatabaseError, match="audit events are append-only"):
        _raw_delete(event)
    assert _permits() == 0


def _flush_statements(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every statement list the flush hands to execute_sql_flush (which runs each in one transaction)."""
    seen: list[list[str]] = []
    real = connection.ops.execute_sql_flush

    def spy(sql_list: list[str]) -> None:
        seen.append(list(sql_list))
        real(sql_list)

    monkeypatch.setattr(connection.ops, "execute_sql_flush", spy)
    return seen


@pytest.mark.django_db(transaction=True)
def test_flush_takes_the_permit_inside_its_own_transaction(
    doctor: AbstractBaseUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_client(doctor).get(f"{API}/studies/")
    seen = _flush_statements(monkeypatch)

    call_command("flush", interactive=False, verbosity=0)

    assert len(seen) == 1
    assert (
        seen[0][0]
        == {
            "postgresql": "INSERT INTO radiology_audit_delete_permit (before) VALUES ('infinity')",
            "sqlite": "INSERT INTO radiology_audit_delete_permit (before) VALUES ('9999-12-31 23:59:59')",
        }[connection.vendor]
    )
    assert seen[0][-1] == "DELETE FROM radiology_audit_delete_permit"
    assert seen[0][1:-1] == sql_flush(no_style(), connection, reset_sequences=True, allow_cascade=False)
    assert any("radiology_auditevent" in statement for statement in seen[0][1:-1])
    assert (AuditEvent.objects.count(), _permits()) == (0, 0)


@pytest.mark.django_db(transaction=True)
def test_a_flush_that_fails_half_way_rolls_back_the_permit_with_the_rest(
    doctor: AbstractBaseUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a killed process would: the tables are emptied, then the transaction never commits.
    token_client(doctor).get(f"{API}/studies/")
    before = [event_row(event) for event in AuditEvent.objects.all()]
    real_sql_flush = django_flush_command.sql_flush
    monkeypatch.setattr(
        django_flush_command,
        "sql_flush",
        lambda *args, **kwargs: [*real_sql_flush(*args, **kwargs), "SELECT * FROM no_such_table"],
    )

    with pytest.raises(CommandError, match="couldn't be flushed"):
        call_command("flush", interactive=False, verbosity=0)

    assert [event_row(event) for event in AuditEvent.objects.all()] == before
    assert _permits() == 0
    with pytest.raises(DatabaseError, match="audit events are append-only"):
        _empty_the_trail()


# PostgreSQL only, and defined only there (CI's second pass runs the suite on PostgreSQL), so the
# SQLite pass skips nothing: SQLite's test database is one shared in-memory file, where a second
# reader would be refused the lock rather than shown what it may see.
if connection.vendor == "postgresql":

    @pytest.mark.django_db(transaction=True)
    def test_no_other_connection_sees_the_flush_permit(doctor: AbstractBaseUser) -> None:
        token_client(doctor).get(f"{API}/studies/")
        other = connections.create_connection(DEFAULT_DB_ALIAS)
        seen: list[tuple[str, int, int]] = []

        def look_from_elsewhere(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            result = execute(sql, params, many, context)
            if "radiology_audit_delete_permit" in sql or sql.startswith("TRUNCATE"):
                with other.cursor() as cursor:
                    cursor.execute("SELECT COUNT(*) FROM radiology_audit_delete_permit")
                    elsewhere = cursor.fetchone()[0]
                raw = context["cursor"].cursor  # the driver's cursor: not through this wrapper again
                raw.execute("SELECT COUNT(*) FROM radiology_audit_delete_permit")
                seen.append((sql.split()[0], raw.fetchone()[0], elsewhere))
            return result

        try:
            with connection.execute_wrapper(look_from_elsewhere):
                call_command("flush", interactive=False, verbosity=0, inhibit_post_migrate=True)
        finally:
            other.close()

        # The flush's connection holds the permit from its INSERT to its DELETE; the other never sees it.
        assert seen == [("INSERT", 1, 0), ("TRUNCATE", 1, 0), ("DELETE", 0, 0)]
        assert (AuditEvent.objects.count(), _permits()) == (0, 0)
