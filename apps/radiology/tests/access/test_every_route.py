"""Every route of both URLconfs, every method, as every principal without access: nothing of the study comes out.

The routes are discovered, not listed: config.urls (the API, admin, DICOMweb, the lite viewer)
and config.viewer_urls (the viewer's origin) are walked recursively, and each path parameter
is filled with a real id or UID of one study (its series, image, order, patient...), so every
request aims at real data. Each route is asked with every HTTP method (a method a route does
not allow must leak nothing either) by:
- anonymous;
- a nurse: logged in (session) and with an API token, in no radiology group;
- a viewer token of ANOTHER study (`Authorization: Bearer`, and `?token=` for the lite viewer).
Each must get nothing: a 4xx, or a redirect to a login page (admin's, or the front door's
sign-in); the one exception is a search by the other study's token, which may answer 2xx when
that answer is exactly what it gets when the study does not exist (a search sees only the
token's own study). No body, of any answer, holds the study's patient name, patient id, any
of its UIDs, or its image bytes.

Routes meant to be public are in PUBLIC with the reason; they are still checked to leak
nothing. A new route is protected by default: if it answers, this test fails until it is
listed here with a reason, or until it refuses. A new path parameter name fails the test
until FILL says what real value to give it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from django.apps import apps
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.contenttypes.models import ContentType
from django.db.models import Model
from django.http import HttpResponse
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from apps.radiology.access import signing
from apps.radiology.models import RadiologyImage, RadiologyStudy, RadiologyUpload, ViewerToken
from apps.radiology.tests.api_fixtures import make_study_with_images, token_client
from apps.radiology.tests.conftest import IngestFile, MakeOrder
from apps.radiology.tests.factories import read_stored

pytestmark = pytest.mark.django_db

URLCONFS = ("config.urls", "config.viewer_urls")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
SAFE = {"GET", "HEAD", "OPTIONS"}

# Routes anyone may call, by (URLconf, route pattern), with the reason. Still checked for leaks.
PUBLIC: dict[tuple[str, str], str] = {
    ("config.urls", "healthz"): "liveness/readiness probe of the load balancer; answers about the server only",
    ("config.urls", ""): "the front door: what this server is and where to go; no data",
    ("config.urls", "sign-in/"): "the front door's sign-in form",
    ("config.urls", "sign-out/"): "ends a session; shows no data",
    ("config.urls", "admin/login/"): "the admin login form",
    ("config.urls", "admin/logout/"): "ends a session; shows no data",
    ("config.urls", "api/v1/auth/token/"): "the API login: username and password for a token",
    ("config.urls", "api/v1/schema/"): "the OpenAPI schema: describes the API, holds no data",
    ("config.urls", "api/v1/docs/"): "Swagger UI over the schema",
    ("config.viewer_urls", "app-config.js"): "OHIF's static configuration (where DICOMweb is)",
    (
        "config.viewer_urls",
        "^(?!api/|admin/|static/|healthz(?:/|$))(?P<path>.*)$",
    ): "OHIF's static files, and index.html for its client routes",
}


@dataclass(frozen=True)
class Route:
    urlconf: str
    pattern: str  # the full route, as Django prints its patterns
    groups: tuple[str, ...]  # path parameter names, in order

    @property
    def admin_model(self) -> type[Model] | None:
        """The model of an admin route (admin/<app_label>/<model_name>/...)."""
        found = re.match(r"admin/(\w+)/(\w+)/", self.pattern)
        if found is None:
            return None
        try:
            return apps.get_model(found.group(1), found.group(2))
        except LookupError:
            return None

    def __str__(self) -> str:
        return f"{self.urlconf}:{self.pattern}"


def _walk(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry


# A path converter (<uid:study_uid>) or a named regex group ((?P<pk>[^/.]+)), whole.
_GROUP = re.compile(r"<(?:\w+:)?(\w+)>|\(\?P<(\w+)>[^)]*\)")


def discovered_routes() -> list[Route]:
    routes = []
    for urlconf in URLCONFS:
        for pattern, _entry in _walk(get_resolver(urlconf).url_patterns):
            groups = tuple(a or b for a, b in _GROUP.findall(pattern))
            routes.append(Route(urlconf, pattern, groups))
    return routes


ROUTES = discovered_routes()


@dataclass
class Target:
    """The study nobody in this test may see, and what would give it away."""

    study: RadiologyStudy
    image: RadiologyImage
    upload: RadiologyUpload
    token: ViewerToken
    needles: list[str]
    image_bytes: bytes


@pytest.fixture
def target(make_order: MakeOrder, ingest_file: IngestFile, radtech: AbstractBaseUser) -> Target:
    order = make_order(first_name="Zanele", last_name="Quaxley")
    image = RadiologyImage.objects.select_related("series__study").get(
        pk=ingest_file(order, "CT_small.dcm", user=radtech).image.pk
    )
    study = image.series.study
    content = read_stored(image.file_key)
    upload = RadiologyUpload.objects.create(
        client_upload_id=uuid.uuid4(),
        uploaded_by=radtech,
        radiology_order=order,
        filename=image.filename,
        file_size=image.file_size,
        mime_type=image.mime_type,
        checksum=image.checksum,
        status=RadiologyUpload.Status.COMPLETED,
        received_bytes=image.file_size,
        image=image,
    )
    token = ViewerToken.objects.get(
        pk=signing.verify_viewer_token(signing.issue_viewer_token(study=study, user=None)).token_id
    )
    needles = [
        study.patient_name,
        study.patient_dicom_name,
        study.patient_id,
        "Zanele",
        "Quaxley",
        study.study_uid,
        image.series.series_uid,
        image.image_uid,
    ]
    assert all(needles)
    middle = len(content) // 2
    return Target(study, image, upload, token, needles, content[middle : middle + 48])


def _admin_object_id(model: type[Model] | None, target: Target, user: AbstractBaseUser) -> str:
    study = target.study
    order = study.radiology_order
    ids: dict[Any, Any] = {
        "radiology.radiologystudy": study.pk,
        "radiology.radiologyseries": target.image.series_id,
        "radiology.radiologyimage": target.image.pk,
        "radiology.radiologyorder": order.pk,
        "radiology.viewertoken": target.token.pk,
        "radiology.radiologyupload": target.upload.pk,
        "emr.patient": order.visit.patient_id,
        "emr.visit": order.visit_id,
        "auth.user": user.pk,
    }
    label = model._meta.label_lower if model is not None else None
    if label in ids:
        return str(ids[label])
    first = model._default_manager.order_by("pk").first() if model is not None else None
    return str(first.pk) if first is not None else "1"


# What each path parameter is given: (route, target, a user) -> the real value.
Fill = Callable[[Route, Target, AbstractBaseUser], str]
FILL: dict[str, Fill] = {
    "study_uid": lambda route, target, user: target.study.study_uid,
    "series_uid": lambda route, target, user: target.image.series.series_uid,
    "image_uid": lambda route, target, user: target.image.image_uid,
    "image_id": lambda route, target, user: str(target.image.pk),
    "filename": lambda route, target, user: target.image.file_key.rsplit("/", 1)[-1],
    "frames": lambda route, target, user: "1",
    "tag": lambda route, target, user: "7FE00010",
    "study_id": lambda route, target, user: str(target.study.pk),
    "pk": lambda route, target, user: str(
        {"studies": target.study.pk, "images": target.image.pk, "uploads": target.upload.pk}[
            re.search(r"\^(\w+)/", route.pattern).group(1)  # type: ignore[union-attr]
        ]
    ),
    "object_id": lambda route, target, user: _admin_object_id(route.admin_model, target, user),
    "content_type_id": lambda route, target, user: str(ContentType.objects.get_for_model(RadiologyStudy).pk),
    "id": lambda route, target, user: str(user.pk),  # admin/auth/user/<id>/password/
    "app_label": lambda route, target, user: "radiology",
    "url": lambda route, target, user: f"radiology/radiologystudy/{target.study.pk}/change",
    "path": lambda route, target, user: "viewer",
}
# The same parameters naming nothing that exists.
MISSING: dict[str, str] = {
    "study_uid": "9.9.9",
    "series_uid": "9.9.9.1",
    "image_uid": "9.9.9.1.1",
    "image_id": "999999999",
    "study_id": "999999999",
    "pk": "999999999",
    "object_id": "999999999",
}


def path_of(route: Route, values: dict[str, str]) -> str:
    """The route's path with each parameter replaced by its value, in order."""
    position = iter(route.groups)

    def replace(_match: re.Match[str]) -> str:
        return values[next(position)]

    path = "/" + _GROUP.sub(replace, route.pattern)
    # A regex route: its anchors and the look-ahead of the OHIF fallback are no part of the path.
    path = re.sub(r"\(\?!.*?\)\)", "", path.replace("^", "")).replace("$", "")
    return path


@dataclass
class Principal:
    name: str
    client: Client
    query: dict[str, str]


def principals(nurse: AbstractBaseUser, other_token: str) -> list[Principal]:
    nurse_client = token_client(nurse)
    nurse_client.force_login(nurse)
    return [
        Principal("anonymous", Client(), {}),
        Principal("nurse", nurse_client, {}),
        Principal(
            "other study's viewer token",
            Client(headers={"Authorization": f"Bearer {other_token}"}),
            {"token": other_token},
        ),
    ]


def body_of(response: HttpResponse) -> bytes:
    """The whole body. Django's test client closes the response itself (a streaming one once its
    content is read to the end) with close_old_connections held off; closing it again here would
    send request_finished with it, and close the test's own database connection on PostgreSQL."""
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content)  # type: ignore[attr-defined]
    return bytes(response.content)


def ask(principal: Principal, method: str, path: str, query: dict[str, str]) -> tuple[int, bytes, HttpResponse]:
    """(status, body, response); the body without echoes of the request's own URL.

    A page may repeat the URL it was asked for (the admin login form posts back to it): that
    tells the caller only what it sent, so it is taken out before looking for leaks.
    """
    full = f"{path}?{urlencode({**query, **principal.query})}"
    response = principal.client.generic(method, full)
    body = body_of(response)
    for echo in (full, full.replace("&", "&amp;")):
        body = body.replace(echo.encode(), b"")
    return response.status_code, body, response


def leaks(body: bytes, target: Target) -> list[str]:
    text = body.decode("utf-8", errors="replace").lower()
    found = [needle for needle in target.needles if needle.lower() in text]
    if target.image_bytes in body:
        found.append("image bytes")
    return found


LOGIN_PAGES = ("/admin/login/", "/sign-in/")


def refused(status: int, response: HttpResponse) -> bool:
    if 400 <= status < 500:
        return True
    return status in (301, 302) and response.get("Location", "").startswith(LOGIN_PAGES)


def test_every_route_is_discovered_and_every_public_one_exists() -> None:
    patterns = {(route.urlconf, route.pattern) for route in ROUTES}
    assert len(ROUTES) > 100  # the walk reached admin, the API, DICOMweb and the viewer's origin
    assert set(PUBLIC) <= patterns, set(PUBLIC) - patterns
    names = {group for route in ROUTES for group in route.groups}
    assert names <= set(FILL), f"No real value for path parameter(s) {names - set(FILL)}: add them to FILL"


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_no_principal_without_access_gets_anything_of_the_study(
    route: Route,
    target: Target,
    nurse: AbstractBaseUser,
    make_order: MakeOrder,
    settings: Any,
) -> None:
    settings.ROOT_URLCONF = route.urlconf
    other = make_study_with_images(make_order(first_name="Other", last_name="Patient"), images=1)
    other_token = signing.issue_viewer_token(study=other, user=None)
    values = {name: FILL[name](route, target, nurse) for name in route.groups}
    missing = {name: MISSING.get(name, value) for name, value in values.items()}
    query = {
        "StudyInstanceUIDs": target.study.study_uid,
        "PatientID": target.study.patient_id,
        "image": target.image.image_uid,
    }
    missing_query = {"StudyInstanceUIDs": "9.9.9", "PatientID": "no-such-patient", "image": "9.9.9.1.1"}
    public = (route.urlconf, route.pattern) in PUBLIC
    problems = []
    for principal in principals(nurse, other_token):
        for method in METHODS:
            status, body, response = ask(principal, method, path_of(route, values), query)
            if found := leaks(body, target):
                problems.append(f"{principal.name} {method}: {status} leaks {found}")
            if public or refused(status, response):
                continue
            if principal.name.endswith("viewer token") and method in SAFE:
                # A search by another study's token sees only that study: the same answer as
                # for a study that does not exist is no answer about this one.
                miss_status, miss_body, _miss = ask(principal, method, path_of(route, missing), missing_query)
                if (status, body) == (miss_status, miss_body):
                    continue
            problems.append(f"{principal.name} {method}: {status} (not refused) {body[:200]!r}")
    assert problems == [], f"{route}: {problems}"
