"""REST API v1: every endpoint, every role, every method, with exact bodies and status codes.

Endpoints (all GET only):
  /api/v1/auth/token/                                  POST username/password -> token
  /api/v1/radiology/studies/                           list (filters, opt-in limit/offset)
  /api/v1/radiology/studies/{id}/                      one study
  /api/v1/radiology/studies/{id}/images/               images grouped by series, signed URLs
  /api/v1/radiology/studies/{id}/viewer-url/           OHIF URL with a study-scoped token
  /api/v1/radiology/images/{id}/url/                   one signed image URL
The bytes behind a signed URL are tested over real HTTP in test_file_views.py.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from apps.radiology.access import signing
from apps.radiology.models import (
    JPEG_MIME_TYPE,
    RadiologyImage,
    RadiologyOrder,
    RadiologyStudy,
    ViewerToken,
)
from apps.radiology.tests.api_fixtures import (
    FROZEN_NOW,
    INVALID_EXPIRES_IN,
    NOT_AUTHENTICATED,
    PERMISSION_DENIED,
    STUDIES,
    TOKEN_URL,
    freeze_signing_time,
    image_url_endpoint,
    make_image_row,
    make_series,
    make_study,
    make_study_with_images,
    method_not_allowed,
    study_body,
    study_url,
    token_client,
)
from apps.radiology.tests.conftest import PASSWORD, MakeOrder

pytestmark = pytest.mark.django_db

STUDY_KEYS = {
    "id",
    "study_uid",
    "radiology_order",
    "study_description",
    "modality",
    "study_date",
    "patient_name",
    "patient_id",
    "patient_birth_date",
    "patient_sex",
    "created_at",
    "source_clinic",
    "deliveries",
}


def assert_signed_image_url(
    url: str, image: RadiologyImage, *, expires_at: int, base: str = "http://testserver"
) -> None:
    """`url` is the absolute signed URL of exactly `image`, expiring at `expires_at`."""
    parts = urlsplit(url)
    filename = image.file_key.rsplit("/", 1)[-1]
    assert f"{parts.scheme}://{parts.netloc}" == base
    assert parts.path == f"/api/v1/radiology/files/{image.pk}/{filename}"
    query = parse_qs(parts.query, strict_parsing=True)
    assert set(query) == {"expires", "token"}
    assert query["expires"] == [str(expires_at)]
    signing.verify_image_url(image=image, filename=filename, expires=str(expires_at), token=query["token"][0])


@pytest.fixture
def study_with_image(order: RadiologyOrder) -> tuple[RadiologyStudy, RadiologyImage]:
    study = make_study(order, study_date=dt.date(2026, 1, 15))
    image = make_image_row(make_series(study, series_number=1), instance_number=1)
    return study, image


# --- Authentication: token and session ---------------------------------------------------


def test_token_endpoint_returns_a_40_hex_key_that_authenticates(doctor: AbstractBaseUser) -> None:
    response = Client().post(
        TOKEN_URL, {"username": "doctor-alice", "password": PASSWORD}, content_type="application/json"
    )

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token"}
    assert re.fullmatch(r"[0-9a-f]{40}", body["token"])
    assert body["token"] == Token.objects.get(user=doctor).key
    listed = Client(headers={"Authorization": f"Token {body['token']}"}).get(STUDIES)
    assert listed.status_code == 200
    assert listed.json() == []


def test_token_endpoint_returns_the_same_key_on_every_login(doctor: AbstractBaseUser) -> None:
    credentials = {"username": "doctor-alice", "password": PASSWORD}
    first = Client().post(TOKEN_URL, credentials, content_type="application/json").json()
    second = Client().post(TOKEN_URL, credentials).json()  # form-encoded works too

    assert first == second
    assert Token.objects.filter(user=doctor).count() == 1


@pytest.mark.parametrize(
    "credentials",
    [
        {"username": "doctor-alice", "password": "wrong-password"},
        {"username": "no-such-user", "password": PASSWORD},
        {"username": "DOCTOR-ALICE", "password": PASSWORD},
    ],
    ids=["wrong-password", "unknown-user", "username-case"],
)
def test_token_endpoint_refuses_wrong_credentials(doctor: AbstractBaseUser, credentials: dict[str, str]) -> None:
    response = Client().post(TOKEN_URL, credentials, content_type="application/json")

    assert response.status_code == 400
    assert response.json() == {
        "detail": "Unable to log in with the provided credentials.",
        "code": "invalid_credentials",
    }
    assert Token.objects.count() == 0


def test_token_endpoint_refuses_an_inactive_user(doctor: Any) -> None:
    doctor.is_active = False
    doctor.save()

    response = Client().post(
        TOKEN_URL, {"username": "doctor-alice", "password": PASSWORD}, content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json() == {
        "detail": "Unable to log in with the provided credentials.",
        "code": "invalid_credentials",
    }
    assert Token.objects.count() == 0


def _field_error(field: str, message: str, code: str) -> dict[str, list[dict[str, str]]]:
    return {field: [{"message": message, "code": code}]}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            {"password": PASSWORD},
            {
                "detail": "username: This field is required.",
                "code": "required",
                "errors": _field_error("username", "This field is required.", "required"),
            },
        ),
        (
            {"username": "doctor-alice"},
            {
                "detail": "password: This field is required.",
                "code": "required",
                "errors": _field_error("password", "This field is required.", "required"),
            },
        ),
        (
            {},
            {
                "detail": "username: This field is required.",
                "code": "required",
                "errors": {
                    **_field_error("username", "This field is required.", "required"),
                    **_field_error("password", "This field is required.", "required"),
                },
            },
        ),
        (
            {"username": "", "password": PASSWORD},
            {
                "detail": "username: This field may not be blank.",
                "code": "blank",
                "errors": _field_error("username", "This field may not be blank.", "blank"),
            },
        ),
    ],
    ids=["no-username", "no-password", "empty-body", "blank-username"],
)
def test_token_endpoint_names_the_missing_field(
    doctor: AbstractBaseUser, payload: dict[str, str], expected: dict[str, Any]
) -> None:
    response = Client().post(TOKEN_URL, payload, content_type="application/json")

    assert response.status_code == 400
    assert response.json() == expected


def test_token_endpoint_refuses_malformed_json() -> None:
    response = Client().post(TOKEN_URL, '{"username": ', content_type="application/json")

    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"detail", "code"}
    assert body["code"] == "parse_error"
    assert body["detail"].startswith("JSON parse error")


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_token_endpoint_only_accepts_post(method: str) -> None:
    response = Client().generic(method, TOKEN_URL)

    assert response.status_code == 405
    assert response.json() == method_not_allowed(method)


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        ("Token 0123456789abcdef0123456789abcdef01234567", "Invalid token."),
        ("Token", "Invalid token header. No credentials provided."),
        ("Token a b", "Invalid token header. Token string should not contain spaces."),
    ],
    ids=["unknown-key", "no-key", "spaces-in-key"],
)
def test_a_bad_token_header_is_401(doctor: AbstractBaseUser, header: str, detail: str) -> None:
    token_client(doctor)  # the doctor has a token; the header sends another
    response = Client(headers={"Authorization": header}).get(STUDIES)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert response.json() == {"detail": detail, "code": "authentication_failed"}


def test_the_token_of_a_deactivated_user_is_401(doctor: Any) -> None:
    client = token_client(doctor)
    doctor.is_active = False
    doctor.save()

    response = client.get(STUDIES)

    assert response.status_code == 401
    assert response.json() == {"detail": "User inactive or deleted.", "code": "authentication_failed"}


@pytest.mark.parametrize(
    ("role", "status"),
    [("doctor", 200), ("radtech", 200), ("superuser", 200), ("nurse", 403)],
)
def test_session_login_with_password_authenticates(request: pytest.FixtureRequest, role: str, status: int) -> None:
    user = request.getfixturevalue(role)
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)

    response = client.get(STUDIES)

    assert response.status_code == status
    assert response.json() == ([] if status == 200 else PERMISSION_DENIED)


def test_session_writes_are_refused_by_csrf_before_the_method_check(doctor: AbstractBaseUser) -> None:
    """A browser session must send the CSRF token even to be told 405; a token client need not."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(doctor)

    response = client.post(STUDIES)

    assert response.status_code == 403
    assert response.json() == {"detail": "CSRF Failed: CSRF cookie not set.", "code": "permission_denied"}
    assert token_client(doctor).post(STUDIES).status_code == 405


# --- The role x endpoint x method matrix -------------------------------------------------

ENDPOINTS = ["studies-list", "study-detail", "study-images", "study-viewer-url", "image-url"]
ROLES = ["anonymous", "nurse", "doctor", "radtech", "superuser"]
# Each signed-in role by API token and by session (the test client skips CSRF, as a
# browser sending its CSRF token would pass it; see the CSRF test above).
ROLE_AUTH = [("anonymous", "none")] + [(role, auth) for role in ROLES[1:] for auth in ("token", "session")]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
TOP_LEVEL_KEYS: dict[str, set[str] | None] = {
    "studies-list": None,  # a plain list of studies
    "study-detail": STUDY_KEYS,
    "study-images": {
        "study_uid",
        "study_description",
        "patient_name",
        "patient_id",
        "patient_birth_date",
        "patient_sex",
        "series",
        "quick_look_url",
    },
    "study-viewer-url": {"viewer_url", "study_uid", "expires_in"},
    "image-url": {"image_url", "image_uid", "filename", "expires_in"},
}


def _endpoint_url(endpoint: str, study: RadiologyStudy, image: RadiologyImage) -> str:
    return {
        "studies-list": STUDIES,
        "study-detail": study_url(study),
        "study-images": study_url(study, "images/"),
        "study-viewer-url": study_url(study, "viewer-url/"),
        "image-url": image_url_endpoint(image),
    }[endpoint]


def _client_for(request: pytest.FixtureRequest, role: str, auth: str) -> Client:
    if auth == "none":
        return Client()
    user = request.getfixturevalue(role)
    if auth == "token":
        return token_client(user)
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("role", "auth"), ROLE_AUTH)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_role_endpoint_method_matrix(
    request: pytest.FixtureRequest,
    study_with_image: tuple[RadiologyStudy, RadiologyImage],
    endpoint: str,
    role: str,
    auth: str,
    method: str,
) -> None:
    """Anonymous 401 and nurse 403 come before the method check; readers get 200 or 405."""
    study, image = study_with_image
    client = _client_for(request, role, auth)
    tokens_before = ViewerToken.objects.count()

    response = client.generic(
        method, _endpoint_url(endpoint, study, image), '{"study_uid": "1.2.3"}', "application/json"
    )

    if role == "anonymous":
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "Token"
        assert response.json() == NOT_AUTHENTICATED
    elif role == "nurse":
        assert response.status_code == 403
        assert response.json() == PERMISSION_DENIED
    elif method != "GET":
        assert response.status_code == 405
        assert response["Allow"] == "GET, HEAD, OPTIONS"
        assert response.json() == method_not_allowed(method)
    else:
        assert response.status_code == 200
        body = response.json()
        expected_keys = TOP_LEVEL_KEYS[endpoint]
        if expected_keys is None:
            assert body == [study_body(study)]
        else:
            assert set(body) == expected_keys
    # Only a reader's GET of the viewer URL, or of the images (their quick-look link), issues a
    # token; nothing else writes anything.
    issues_token = endpoint in ("study-viewer-url", "study-images")
    issued = 1 if (issues_token and method == "GET" and role not in ("anonymous", "nurse")) else 0
    assert ViewerToken.objects.count() == tokens_before + issued
    assert RadiologyStudy.objects.count() == 1
    assert RadiologyImage.objects.count() == 1


# --- 1. Studies list and detail ----------------------------------------------------------


def _at(day: int, hour: int = 9) -> dt.datetime:
    return dt.datetime(2026, 1, day, hour, 0, tzinfo=dt.UTC)


@pytest.fixture
def three_studies(make_order: MakeOrder) -> list[RadiologyStudy]:
    """Three studies whose creation order differs from their id order."""
    oldest = make_study(
        make_order(first_name="Ada", last_name="Obi"),
        created_at=_at(10),
        study_date=dt.date(2026, 1, 10),
        modality="CT",
        study_description="CT Head",
    )
    newest = make_study(
        make_order(first_name="Bola", last_name="Ade", modality="MR"),
        created_at=_at(12),
        study_date=dt.date(2026, 1, 12),
        modality="MR",
        study_description="MR Knee",
    )
    middle = make_study(
        make_order(first_name="Chidi", last_name="Eze"),
        created_at=_at(11),
        study_date=dt.date(2026, 1, 11),
        modality="CT",
        study_description="CT Chest",
    )
    return [oldest, newest, middle]


def test_studies_list_is_a_plain_list_newest_first_with_exact_values(
    doctor: AbstractBaseUser, three_studies: list[RadiologyStudy]
) -> None:
    oldest, newest, middle = three_studies

    response = token_client(doctor).get(STUDIES)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == [study_body(newest), study_body(middle), study_body(oldest)]
    first = response.json()[0]
    assert first["patient_name"] == "Bola Ade"
    assert first["modality"] == "MR"
    assert first["study_date"] == "2026-01-12"
    assert dt.datetime.fromisoformat(first["created_at"]) == _at(12)


def test_studies_created_at_the_same_instant_list_highest_id_first(
    doctor: AbstractBaseUser, make_order: MakeOrder
) -> None:
    first = make_study(make_order(), created_at=_at(5))
    second = make_study(make_order(), created_at=_at(5))

    response = token_client(doctor).get(STUDIES)

    assert [item["id"] for item in response.json()] == [second.pk, first.pk]


def test_studies_list_is_empty_without_studies(doctor: AbstractBaseUser) -> None:
    response = token_client(doctor).get(STUDIES)

    assert response.status_code == 200
    assert response.json() == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("modality=CT", ["middle", "oldest"]),
        ("modality=ct", ["middle", "oldest"]),  # case-insensitive
        ("modality=MR", ["newest"]),
        ("modality=US", []),
        ("study_date_from=2026-01-11", ["newest", "middle"]),
        ("study_date_to=2026-01-11", ["middle", "oldest"]),
        ("study_date_from=2026-01-11&study_date_to=2026-01-11", ["middle"]),
        ("study_date_from=2026-01-13", []),
        ("modality=CT&study_date_from=2026-01-11", ["middle"]),
        ("unknown_parameter=1", ["newest", "middle", "oldest"]),
    ],
)
def test_studies_list_filters(
    doctor: AbstractBaseUser, three_studies: list[RadiologyStudy], query: str, expected: list[str]
) -> None:
    by_name = dict(zip(["oldest", "newest", "middle"], three_studies, strict=True))

    response = token_client(doctor).get(f"{STUDIES}?{query}")

    assert response.status_code == 200
    assert response.json() == [study_body(by_name[name]) for name in expected]


def test_studies_list_filters_by_order_and_by_patient(
    doctor: AbstractBaseUser, three_studies: list[RadiologyStudy]
) -> None:
    _oldest, newest, middle = three_studies
    client = token_client(doctor)

    by_order = client.get(f"{STUDIES}?radiology_order_id={middle.radiology_order_id}").json()
    by_patient = client.get(f"{STUDIES}?patient_id={newest.patient_id}").json()
    no_order = client.get(f"{STUDIES}?radiology_order_id=999999").json()
    no_patient = client.get(f"{STUDIES}?patient_id=NOT-A-PATIENT").json()

    assert by_order == [study_body(middle)]
    assert newest.patient_id.startswith("TEST-")
    assert by_patient == [study_body(newest)]
    assert no_order == []
    assert no_patient == []


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("study_date_from=bad", "study_date_from", "Enter a valid date."),
        ("study_date_to=2026-13-01", "study_date_to", "Enter a valid date."),
        ("study_date_from=15/01/2026x", "study_date_from", "Enter a valid date."),
        ("radiology_order_id=abc", "radiology_order_id", "Enter a number."),
    ],
)
def test_studies_list_refuses_a_malformed_filter(
    doctor: AbstractBaseUser, three_studies: list[RadiologyStudy], query: str, field: str, message: str
) -> None:
    response = token_client(doctor).get(f"{STUDIES}?{query}")

    assert response.status_code == 400
    assert response.json() == {
        "detail": f"{field}: {message}",
        "code": "invalid",
        "errors": {field: [{"message": message, "code": "invalid"}]},
    }


def test_studies_list_paginates_only_when_asked(doctor: AbstractBaseUser, three_studies: list[RadiologyStudy]) -> None:
    oldest, newest, middle = three_studies
    client = token_client(doctor)

    first_page = client.get(f"{STUDIES}?limit=2")
    last_page = client.get(f"{STUDIES}?limit=2&offset=2")
    middle_page = client.get(f"{STUDIES}?limit=1&offset=1")

    assert first_page.json() == {
        "count": 3,
        "next": "http://testserver/api/v1/radiology/studies/?limit=2&offset=2",
        "previous": None,
        "results": [study_body(newest), study_body(middle)],
    }
    assert last_page.json() == {
        "count": 3,
        "next": None,
        "previous": "http://testserver/api/v1/radiology/studies/?limit=2",
        "results": [study_body(oldest)],
    }
    assert middle_page.json() == {
        "count": 3,
        "next": "http://testserver/api/v1/radiology/studies/?limit=1&offset=2",
        "previous": "http://testserver/api/v1/radiology/studies/?limit=1",
        "results": [study_body(middle)],
    }


def test_studies_list_paginates_the_filtered_list(
    doctor: AbstractBaseUser, three_studies: list[RadiologyStudy]
) -> None:
    oldest, _newest, middle = three_studies

    response = token_client(doctor).get(f"{STUDIES}?modality=CT&limit=1")

    assert response.json() == {
        "count": 2,
        "next": "http://testserver/api/v1/radiology/studies/?limit=1&modality=CT&offset=1",
        "previous": None,
        "results": [study_body(middle)],
    }
    assert oldest.modality == "CT"


def test_studies_list_makes_the_same_number_of_queries_for_1_or_25_studies(
    doctor: AbstractBaseUser, make_order: MakeOrder, django_assert_num_queries: Any
) -> None:
    client = token_client(doctor)
    make_study(make_order())
    # token+user+roles, studies, their forwarding deliveries, the audit event
    with django_assert_num_queries(4):
        assert len(client.get(STUDIES).json()) == 1
    for _ in range(24):
        make_study(make_order())
    with django_assert_num_queries(4):
        assert len(client.get(STUDIES).json()) == 25
    # paginated: one more for the count
    with django_assert_num_queries(5):
        assert len(client.get(f"{STUDIES}?limit=10").json()["results"]) == 10


def test_study_detail_returns_the_study(doctor: AbstractBaseUser, three_studies: list[RadiologyStudy]) -> None:
    middle = three_studies[2]

    response = token_client(doctor).get(study_url(middle))

    assert response.status_code == 200
    assert response.json() == study_body(middle)


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("999999/", "No RadiologyStudy matches the given query."),
        ("999999/images/", "No RadiologyStudy matches the given query."),
        ("999999/viewer-url/", "No RadiologyStudy matches the given query."),
        ("abc/", "Not found."),
        ("abc/images/", "Not found."),
    ],
)
def test_unknown_study_is_404_with_a_code(doctor: AbstractBaseUser, path: str, detail: str) -> None:
    response = token_client(doctor).get(f"{STUDIES}{path}")

    assert response.status_code == 404
    assert response.json() == {"detail": detail, "code": "not_found"}
    assert ViewerToken.objects.count() == 0


def test_unknown_image_is_404_with_a_code(doctor: AbstractBaseUser) -> None:
    response = token_client(doctor).get("/api/v1/radiology/images/999999/url/")

    assert response.status_code == 404
    assert response.json() == {"detail": "No RadiologyImage matches the given query.", "code": "not_found"}


# --- 2. A study's images grouped by series -----------------------------------------------


def test_study_images_are_grouped_by_series_number_and_instance_number(
    doctor: AbstractBaseUser, order: RadiologyOrder, monkeypatch: pytest.MonkeyPatch
) -> None:
    freeze_signing_time(monkeypatch)
    study = make_study(order, study_description="CT Head without contrast")
    # Created out of order: series 10 and 2 before 1 (10 after 2 numerically, not as text).
    series_10 = make_series(study, series_number=10, series_description="Photos", modality="OT")
    series_2 = make_series(study, series_number=2, series_description="Coronal")
    series_1 = make_series(study, series_number=1, series_description="Axial")
    photo = make_image_row(series_10, instance_number=1, mime_type=JPEG_MIME_TYPE)
    axial = [make_image_row(series_1, instance_number=number) for number in (3, 1, 2)]
    coronal = [make_image_row(series_2, instance_number=number) for number in (2, 1)]
    other_order_study = make_study_with_images(
        RadiologyOrder.objects.create(visit=order.visit, modality="CT", exam_requested="Other"), images=2
    )

    response = token_client(doctor).get(study_url(study, "images/"))

    assert response.status_code == 200
    body = response.json()

    def image_item(image: RadiologyImage) -> dict[str, Any]:
        return {
            "id": image.pk,
            "image_uid": image.image_uid,
            "filename": image.filename,
            "file_size": image.file_size,
            "mime_type": image.mime_type,
            "instance_number": image.instance_number,
            "image_url": body_urls[image.pk],
            "patient_identity": {
                "check": image.patient_identity,
                "file_patient_id": image.file_patient_id,
                "file_patient_name": image.file_patient_name,
                "reason": image.patient_identity_reason,
            },
        }

    body_urls = {item["id"]: item["image_url"] for series in body["series"] for item in series["images"]}
    quick_look = ViewerToken.objects.get()
    assert body == {
        "study_uid": study.study_uid,
        "study_description": "CT Head without contrast",
        **study_patient(study),
        "quick_look_url": quick_look_url(body, study),
        "series": [
            {
                "series_uid": series_1.series_uid,
                "series_description": "Axial",
                "series_number": 1,
                "modality": "CT",
                "images": [image_item(axial[1]), image_item(axial[2]), image_item(axial[0])],
            },
            {
                "series_uid": series_2.series_uid,
                "series_description": "Coronal",
                "series_number": 2,
                "modality": "CT",
                "images": [image_item(coronal[1]), image_item(coronal[0])],
            },
            {
                "series_uid": series_10.series_uid,
                "series_description": "Photos",
                "series_number": 10,
                "modality": "OT",
                "images": [image_item(photo)],
            },
        ],
    }
    assert [item["instance_number"] for item in body["series"][0]["images"]] == [1, 2, 3]
    assert body["series"][2]["images"][0]["mime_type"] == "image/jpeg"
    other_ids = set(RadiologyImage.objects.filter(series__study=other_order_study).values_list("pk", flat=True))
    assert other_ids.isdisjoint(body_urls)
    for image in [photo, *axial, *coronal]:
        assert_signed_image_url(body_urls[image.pk], image, expires_at=FROZEN_NOW + 3600)
    # The quick look: the built-in viewer, with a token for this study that lives as long as the URLs.
    assert (quick_look.study_id, quick_look.issued_to_id) == (study.pk, doctor.pk)
    assert signing.verify_viewer_token(quick_look_token(body)).study_id == study.pk


def study_patient(study: RadiologyStudy) -> dict[str, Any]:
    """The study's (the EMR's) patient, as the images endpoint shows it."""
    return {
        "patient_name": study.patient_name,
        "patient_id": study.patient_id,
        "patient_birth_date": study.patient_birth_date.isoformat() if study.patient_birth_date else None,
        "patient_sex": study.patient_sex,
    }


def quick_look_token(body: dict[str, Any]) -> str:
    return parse_qs(urlsplit(body["quick_look_url"]).query)["token"][0]


def quick_look_url(body: dict[str, Any], study: RadiologyStudy) -> str:
    """The built-in viewer's URL for `study`, with the token the answer carries."""
    query = urlencode({"StudyInstanceUIDs": study.study_uid, "token": quick_look_token(body)})
    return f"http://testserver/api/v1/radiology/viewer/?{query}"


def test_study_without_images_has_no_series(doctor: AbstractBaseUser, order: RadiologyOrder) -> None:
    study = make_study(order, study_description="Awaiting images")

    response = token_client(doctor).get(study_url(study, "images/"))

    assert response.status_code == 200
    body = response.json()
    assert body == {
        "study_uid": study.study_uid,
        "study_description": "Awaiting images",
        **study_patient(study),
        "series": [],
        "quick_look_url": quick_look_url(body, study),
    }


def test_study_images_query_count_is_the_same_for_1_and_200_images(
    doctor: AbstractBaseUser, make_order: MakeOrder, django_assert_num_queries: Any
) -> None:
    """Both sizes in one test, so the equality itself is asserted, not two separate constants."""
    small = make_study_with_images(make_order(), images=1)
    large = make_study_with_images(make_order(), images=200)
    client = token_client(doctor)
    counts: list[int] = []
    for study, image_count in ((small, 1), (large, 200)):
        # token+user+roles, the study, its series, their images, the quick-look viewer
        # token, the audit event.
        with django_assert_num_queries(6) as captured:
            response = client.get(study_url(study, "images/"))
        assert len(response.json()["series"][0]["images"]) == image_count
        counts.append(len(captured.captured_queries))

    assert counts == [6, 6]


def _quick_look_grant(body: dict[str, Any]) -> signing.ViewerGrant:
    return signing.verify_viewer_token(quick_look_token(body))


def test_repeated_study_images_calls_reuse_one_quick_look_token(
    doctor: AbstractBaseUser, study_with_image: tuple[RadiologyStudy, RadiologyImage]
) -> None:
    study, image = study_with_image
    client = token_client(doctor)

    first = client.get(study_url(study, "images/")).json()
    second = client.get(study_url(study, "images/")).json()

    record = ViewerToken.objects.get()
    assert (record.study_id, record.issued_to_id, record.revoked_at) == (study.pk, doctor.pk, None)
    assert (
        _quick_look_grant(first)
        == _quick_look_grant(second)
        == signing.ViewerGrant(token_id=record.id, study_id=study.pk, study_uid=study.study_uid)
    )
    assert quick_look_url(second, study) == second["quick_look_url"]
    for body in (first, second):
        url = body["series"][0]["images"][0]["image_url"]
        expires = int(parse_qs(urlsplit(url).query)["expires"][0])
        assert_signed_image_url(url, image, expires_at=expires)


def test_a_reused_quick_look_token_costs_no_write(
    doctor: AbstractBaseUser, study_with_image: tuple[RadiologyStudy, RadiologyImage], django_assert_num_queries: Any
) -> None:
    study, _image = study_with_image
    client = token_client(doctor)
    client.get(study_url(study, "images/"))

    # token+user+roles, the study (with the reusable token), its series, their images, the audit event.
    with django_assert_num_queries(5) as captured:
        assert client.get(study_url(study, "images/")).status_code == 200
    assert not any(query["sql"].startswith("INSERT") and "viewertoken" in query["sql"] for query in captured)
    assert ViewerToken.objects.count() == 1


def test_a_revoked_quick_look_token_is_replaced_by_a_new_one(
    doctor: AbstractBaseUser, study_with_image: tuple[RadiologyStudy, RadiologyImage]
) -> None:
    study, image = study_with_image
    client = token_client(doctor)
    first = _quick_look_grant(client.get(study_url(study, "images/")).json())

    assert signing.revoke_viewer_token(first.token_id) is True
    body = client.get(study_url(study, "images/")).json()

    second = _quick_look_grant(body)
    assert second.token_id != first.token_id
    assert ViewerToken.objects.count() == 2
    assert ViewerToken.objects.get(pk=second.token_id).revoked_at is None
    url = body["series"][0]["images"][0]["image_url"]
    assert_signed_image_url(url, image, expires_at=int(parse_qs(urlsplit(url).query)["expires"][0]))
    again = _quick_look_grant(client.get(study_url(study, "images/")).json())
    assert again.token_id == second.token_id
    assert ViewerToken.objects.count() == 2


def test_a_quick_look_token_is_reused_only_by_its_caller_for_its_study(
    doctor: AbstractBaseUser,
    radtech: AbstractBaseUser,
    study_with_image: tuple[RadiologyStudy, RadiologyImage],
    make_order: MakeOrder,
) -> None:
    study, _image = study_with_image
    other = make_study_with_images(make_order(), images=1)

    mine = _quick_look_grant(token_client(doctor).get(study_url(study, "images/")).json())
    theirs = _quick_look_grant(token_client(radtech).get(study_url(study, "images/")).json())
    other_study = _quick_look_grant(token_client(doctor).get(study_url(other, "images/")).json())

    assert len({mine.token_id, theirs.token_id, other_study.token_id}) == 3
    assert ViewerToken.objects.get(pk=theirs.token_id).issued_to_id == radtech.pk
    assert other_study.study_id == other.pk


def test_a_quick_look_token_never_lives_longer_than_asked_nor_much_shorter(
    doctor: AbstractBaseUser, study_with_image: tuple[RadiologyStudy, RadiologyImage]
) -> None:
    """Reused only while its expiry is within a tenth of the asked lifetime before a new one's."""
    study, _image = study_with_image
    client = token_client(doctor)
    long_lived = _quick_look_grant(client.get(study_url(study, "images/") + "?expires_in=3600").json())

    short = _quick_look_grant(client.get(study_url(study, "images/") + "?expires_in=60").json())
    short_again = _quick_look_grant(client.get(study_url(study, "images/") + "?expires_in=60").json())
    # 3600 s asked again: the 3600 s token is still within its window (a tenth is 360 s).
    long_again = _quick_look_grant(client.get(study_url(study, "images/") + "?expires_in=3600").json())
    # 4500 s asked: the 3600 s token would end 900 s before a new one, more than a tenth (450 s).
    longer = _quick_look_grant(client.get(study_url(study, "images/") + "?expires_in=4500").json())

    assert short.token_id != long_lived.token_id
    assert short_again.token_id == short.token_id
    assert long_again.token_id == long_lived.token_id
    assert longer.token_id not in (long_lived.token_id, short.token_id)
    assert ViewerToken.objects.count() == 3
    for grant, lifetime in ((long_lived, 3600), (short, 60), (longer, 4500)):
        record = ViewerToken.objects.get(pk=grant.token_id)
        assert lifetime - 1 <= (record.expires_at - record.issued_at).total_seconds() <= lifetime


# --- 3. One image's signed URL -----------------------------------------------------------


def test_image_url_returns_a_signed_url_for_that_image(
    doctor: AbstractBaseUser, study_with_image: tuple[RadiologyStudy, RadiologyImage], monkeypatch: pytest.MonkeyPatch
) -> None:
    freeze_signing_time(monkeypatch)
    _study, image = study_with_image

    response = token_client(doctor).get(image_url_endpoint(image))

    assert response.status_code == 200
    body = response.json()
    assert body == {
        "image_url": body["image_url"],
        "image_uid": image.image_uid,
        "filename": image.filename,
        "expires_in": 3600,
    }
    assert_signed_image_url(body["image_url"], image, expires_at=FROZEN_NOW + 3600)


def test_image_url_uses_pacs_public_url_when_set(
    doctor: AbstractBaseUser,
    study_with_image: tuple[RadiologyStudy, RadiologyImage],
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    freeze_signing_time(monkeypatch)
    settings.PACS_PUBLIC_URL = "https://pacs.hospital.example"
    _study, image = study_with_image

    body = token_client(doctor).get(image_url_endpoint(image)).json()

    assert_signed_image_url(
        body["image_url"], image, expires_at=FROZEN_NOW + 3600, base="https://pacs.hospital.example"
    )


def test_image_url_follows_the_scheme_and_host_of_the_request(
    doctor: AbstractBaseUser, study_with_image: tuple[RadiologyStudy, RadiologyImage], monkeypatch: pytest.MonkeyPatch
) -> None:
    freeze_signing_time(monkeypatch)
    _study, image = study_with_image

    body = token_client(doctor).get(image_url_endpoint(image), headers={"Host": "localhost"}, secure=True).json()

    assert_signed_image_url(body["image_url"], image, expires_at=FROZEN_NOW + 3600, base="https://localhost")


# --- 4. The viewer URL and its token -----------------------------------------------------


@pytest.fixture
def ohif(settings: Any) -> str:
    settings.OHIF_VIEWER_URL = "https://viewer.hospital.example/viewer"
    return str(settings.OHIF_VIEWER_URL)


def _viewer_token(viewer_url: str) -> str:
    return parse_qs(urlsplit(viewer_url).query, strict_parsing=True)["token"][0]


@pytest.mark.parametrize("role", ["doctor", "radtech", "superuser"])
def test_viewer_url_carries_a_token_for_that_study(
    request: pytest.FixtureRequest, ohif: str, study_with_image: tuple[RadiologyStudy, RadiologyImage], role: str
) -> None:
    user = request.getfixturevalue(role)
    study, _image = study_with_image

    before = timezone.now()
    response = token_client(user).get(study_url(study, "viewer-url/"))
    after = timezone.now()

    assert response.status_code == 200
    body = response.json()
    token = _viewer_token(body["viewer_url"])
    assert body == {
        "viewer_url": f"{ohif}?{urlencode({'StudyInstanceUIDs': study.study_uid, 'token': token})}",
        "study_uid": study.study_uid,
        "expires_in": 3600,
    }
    assert body["viewer_url"].startswith(f"{ohif}?StudyInstanceUIDs={study.study_uid}&token=")
    record = ViewerToken.objects.get()
    assert record.study_id == study.pk
    assert record.issued_to_id == user.pk
    assert record.revoked_at is None
    assert before + dt.timedelta(seconds=3600) <= record.expires_at <= after + dt.timedelta(seconds=3600)
    grant = signing.verify_viewer_token(token)
    assert grant == signing.ViewerGrant(token_id=record.id, study_id=study.pk, study_uid=study.study_uid)


def test_every_viewer_url_issues_its_own_token(
    doctor: AbstractBaseUser, ohif: str, study_with_image: tuple[RadiologyStudy, RadiologyImage]
) -> None:
    study, _image = study_with_image
    client = token_client(doctor)

    first = _viewer_token(client.get(study_url(study, "viewer-url/")).json()["viewer_url"])
    second = _viewer_token(client.get(study_url(study, "viewer-url/")).json()["viewer_url"])

    assert first != second
    assert ViewerToken.objects.count() == 2
    assert signing.verify_viewer_token(first).token_id != signing.verify_viewer_token(second).token_id


def test_a_revoked_viewer_token_no_longer_verifies(
    doctor: AbstractBaseUser, ohif: str, study_with_image: tuple[RadiologyStudy, RadiologyImage]
) -> None:
    study, _image = study_with_image
    token = _viewer_token(token_client(doctor).get(study_url(study, "viewer-url/")).json()["viewer_url"])
    grant = signing.verify_viewer_token(token)

    assert signing.revoke_viewer_token(grant.token_id) is True
    assert signing.revoke_viewer_token(grant.token_id) is False
    with pytest.raises(signing.SignatureRejected, match="revoked"):
        signing.verify_viewer_token(token)
    assert ViewerToken.objects.get().revoked_at is not None


def test_an_altered_viewer_token_does_not_verify(
    doctor: AbstractBaseUser, ohif: str, study_with_image: tuple[RadiologyStudy, RadiologyImage]
) -> None:
    study, _image = study_with_image
    token = _viewer_token(token_client(doctor).get(study_url(study, "viewer-url/")).json()["viewer_url"])
    middle = len(token) // 2
    altered = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]

    with pytest.raises(signing.SignatureRejected, match="bad token"):
        signing.verify_viewer_token(altered)
    assert signing.verify_viewer_token(token).study_uid == study.study_uid


def test_a_viewer_token_expires_after_expires_in(
    doctor: AbstractBaseUser,
    ohif: str,
    study_with_image: tuple[RadiologyStudy, RadiologyImage],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    study, _image = study_with_image
    issued_at = time.time()
    body = token_client(doctor).get(study_url(study, "viewer-url/") + "?expires_in=60").json()
    token = _viewer_token(body["viewer_url"])
    move_clock = freeze_signing_time(monkeypatch, issued_at + 55)

    assert body["expires_in"] == 60
    assert signing.verify_viewer_token(token).study_id == study.pk
    move_clock(issued_at + 62)
    with pytest.raises(signing.SignatureRejected, match="expired"):
        signing.verify_viewer_token(token)


# --- ?expires_in= on the three URL endpoints ---------------------------------------------

URL_ENDPOINTS = ["study-images", "study-viewer-url", "image-url"]


@pytest.mark.parametrize("raw", ["0", "86401", "-5", "abc", "1.5", "", " 5", "5 ", "5\n", "1e3", "+5", "\uff19"])
@pytest.mark.parametrize("endpoint", URL_ENDPOINTS)
def test_expires_in_out_of_range_or_not_an_integer_is_400(
    doctor: AbstractBaseUser,
    study_with_image: tuple[RadiologyStudy, RadiologyImage],
    endpoint: str,
    raw: str,
) -> None:
    study, image = study_with_image

    response = token_client(doctor).get(_endpoint_url(endpoint, study, image) + "?" + urlencode({"expires_in": raw}))

    assert response.status_code == 400
    assert response.json() == INVALID_EXPIRES_IN
    assert ViewerToken.objects.count() == 0


def _issued_expiry(endpoint: str, body: dict[str, Any]) -> int:
    """The expiry time carried by the URL the endpoint answered with."""
    if endpoint == "study-images":
        url = body["series"][0]["images"][0]["image_url"]
    elif endpoint == "image-url":
        url = body["image_url"]
    else:
        return int(ViewerToken.objects.get().expires_at.timestamp())
    return int(parse_qs(urlsplit(url).query)["expires"][0])


@pytest.mark.parametrize(
    ("query", "expires_in"),
    [("", 3600), ("?expires_in=1", 1), ("?expires_in=86400", 86400), ("?expires_in=0600", 600)],
)
@pytest.mark.parametrize("endpoint", URL_ENDPOINTS)
def test_expires_in_sets_the_lifetime_of_the_url(
    doctor: AbstractBaseUser,
    study_with_image: tuple[RadiologyStudy, RadiologyImage],
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
    query: str,
    expires_in: int,
) -> None:
    freeze_signing_time(monkeypatch)
    study, image = study_with_image

    before = int(time.time())
    response = token_client(doctor).get(_endpoint_url(endpoint, study, image) + query)
    after = int(time.time())

    assert response.status_code == 200
    body = response.json()
    if endpoint != "study-images":
        assert body["expires_in"] == expires_in
    if endpoint == "study-viewer-url":
        # The viewer token's expiry comes from the database clock, not signing's.
        assert before + expires_in - 1 <= _issued_expiry(endpoint, body) <= after + expires_in + 1
    else:
        assert _issued_expiry(endpoint, body) == FROZEN_NOW + expires_in


@pytest.mark.parametrize("endpoint", URL_ENDPOINTS)
def test_expires_in_limits_follow_the_settings(
    doctor: AbstractBaseUser,
    study_with_image: tuple[RadiologyStudy, RadiologyImage],
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    endpoint: str,
) -> None:
    freeze_signing_time(monkeypatch)
    settings.RADIOLOGY_URL_EXPIRES = 120
    settings.RADIOLOGY_MAX_URL_EXPIRES = 600
    study, image = study_with_image
    client = token_client(doctor)
    url = _endpoint_url(endpoint, study, image)

    default = client.get(url)
    too_long = client.get(url + "?expires_in=601")
    longest = client.get(url + "?expires_in=600")

    assert default.status_code == 200
    assert too_long.status_code == 400
    assert too_long.json() == {
        "detail": "expires_in must be an integer from 1 to 600 seconds.",
        "code": "invalid_expires_in",
    }
    assert longest.status_code == 200
    if endpoint == "study-viewer-url":
        assert (default.json()["expires_in"], longest.json()["expires_in"]) == (120, 600)
    else:
        assert _issued_expiry(endpoint, default.json()) == FROZEN_NOW + 120
        assert _issued_expiry(endpoint, longest.json()) == FROZEN_NOW + 600
