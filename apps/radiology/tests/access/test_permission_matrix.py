"""Who gets what, for every route the URL configuration has: route x method x actor -> exact status.

The routes are discovered by walking config.urls' resolver, and every one must have a rule
here: a route added without one fails `test_every_route_has_a_rule`, so nobody ships an
endpoint whose permissions were never stated. Admin's own routes are checked apart (login
redirect for anonymous, 200 for a superuser on the radiology changelists).

Path parameters are real objects (a study ingested through the one ingest path, the radtech's
pending upload), so a 200 is a real answer, not a lucky 404. The data set is built once for
the module inside a transaction that is rolled back at the end; each test runs in a savepoint
within it.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Permission
from django.db import transaction
from django.test import Client, override_settings
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.authtoken.models import Token

from apps.emr.models import Patient, Visit
from apps.radiology.access.permissions import DOCTOR_GROUP, RADIOLOGY_TECH_GROUP
from apps.radiology.models import RadiologyOrder, RadiologyUpload
from apps.radiology.tests.conftest import make_user
from apps.radiology.tests.trust_helpers import StoredStudy, ingest_study, issue_token

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# clerk: staff of another part of the EMR, in no radiology group (with every radiology model permission).
USERS = ("nurse", "clerk", "doctor", "radtech", "superuser")
# Tokens of the target study whose issuer was deactivated, or removed from the radiology groups.
ISSUER_GONE = ("inactive_issuer_token", "ungrouped_issuer_token")
TOKENS = ("other_token", "expired_token", *ISSUER_GONE)
ACTORS = ("anonymous", *USERS, *TOKENS)
VIEWERS = ("doctor", "radtech", "superuser")
WRITES = ("POST", "PUT", "PATCH", "DELETE")

Statuses = dict[str, dict[str, int]]  # actor -> method -> status


# --- the data set --------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    target: StoredStudy
    other: StoredStudy
    upload: RadiologyUpload
    auth: dict[str, dict[str, str]]  # actor -> request headers
    tokens: dict[str, str]  # token actor -> viewer token
    media: Path
    staging: Path


def _order(number: int) -> RadiologyOrder:
    patient = Patient.objects.create(
        hospital_number=f"MATRIX-{number}", first_name="Amaka", last_name="Obi", sex=Patient.Sex.FEMALE
    )
    visit = Visit.objects.create(patient=patient, visit_date="2026-01-15", reason="Matrix")
    return RadiologyOrder.objects.create(visit=visit, modality="CT", exam_requested="CT Chest")


def _store_settings(media: Path) -> dict[str, Any]:
    stores = dict(django_settings.STORAGES)
    stores["radiology"] = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(media), "base_url": None},
    }
    return stores


def _build_world(media: Path, staging: Path) -> World:
    users: dict[str, AbstractBaseUser] = {
        "nurse": make_user("matrix-nurse"),
        "clerk": make_user("matrix-clerk"),
        "doctor": make_user("matrix-doctor", groups=(DOCTOR_GROUP,)),
        "radtech": make_user("matrix-radtech", groups=(RADIOLOGY_TECH_GROUP,)),
        "superuser": make_user("matrix-admin", superuser=True),
    }
    target = ingest_study(_order(1), images=1, user=users["radtech"])
    other = ingest_study(_order(2), images=1)
    upload = RadiologyUpload.objects.create(
        client_upload_id=uuid.uuid4(),
        uploaded_by=users["radtech"],
        radiology_order=target.study.radiology_order,
        filename="next.dcm",
        file_size=2048,
        mime_type="application/dicom",
        checksum="d" * 64,
    )
    users["clerk"].is_staff = True
    users["clerk"].save()
    users["clerk"].user_permissions.add(*Permission.objects.filter(content_type__app_label="radiology"))
    gone = make_user("matrix-gone", groups=(DOCTOR_GROUP,))
    moved = make_user("matrix-moved", groups=(RADIOLOGY_TECH_GROUP,))
    tokens = {
        "other_token": issue_token(other.study, expires_in=3600),
        "expired_token": issue_token(target.study, expires_in=-60),
        "inactive_issuer_token": issue_token(target.study, user=gone, expires_in=3600),
        "ungrouped_issuer_token": issue_token(target.study, user=moved, expires_in=3600),
    }
    gone.is_active = False
    gone.save()
    moved.groups.clear()
    auth = {
        "anonymous": {},
        **{name: {"Authorization": f"Token {Token.objects.create(user=user).key}"} for name, user in users.items()},
        **{name: {"Authorization": f"Bearer {token}"} for name, token in tokens.items()},
    }
    return World(target, other, upload, auth, tokens, media, staging)


@pytest.fixture(scope="module")
def world(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Built once, in a transaction rolled back when the module is done (like TestCase.setUpTestData).

    Requested only through `matrix`, which brings `db`: pytest-django creates the test
    databases only when some collected test asks for one.
    """
    media = tmp_path_factory.mktemp("matrix-media")
    staging = tmp_path_factory.mktemp("matrix-staging")
    outer = transaction.atomic()
    with django_db_blocker.unblock(), override_settings(STORAGES=_store_settings(media), RADIOLOGY_STAGING_DIR=staging):
        outer.__enter__()
        try:
            built = _build_world(media, staging)
        except BaseException:
            outer.__exit__(*sys.exc_info())
            raise
    yield built
    with django_db_blocker.unblock():
        transaction.set_rollback(True)
        outer.__exit__(None, None, None)


@pytest.fixture
def matrix(world: World, settings: Any, db: None) -> World:
    """The module's data set, with its store (the root conftest points every test at a store of its own)."""
    settings.STORAGES = _store_settings(world.media)
    settings.RADIOLOGY_STAGING_DIR = world.staging
    return world


# --- expected statuses ---------------------------------------------------------------------------


def methods(get: int, *, post: int = 405, write: int = 405, options: int = 405) -> dict[str, int]:
    """Statuses by method: HEAD as GET, PUT/PATCH/DELETE as `write`."""
    return {
        "GET": get,
        "HEAD": get,
        "POST": post,
        "PUT": write,
        "PATCH": write,
        "DELETE": write,
        "OPTIONS": options,
    }


def everyone(by_method: dict[str, int]) -> Statuses:
    return {actor: by_method for actor in ACTORS}


def every_method(status: int) -> dict[str, int]:
    return dict.fromkeys(METHODS, status)


def rest(ok: dict[str, dict[str, int]]) -> Statuses:
    """A DRF endpoint with token/session login: anonymous and viewer tokens 401, nurse 403, the rest as given."""
    statuses = {actor: every_method(401) for actor in ("anonymous", *TOKENS)}
    statuses["nurse"] = every_method(403)
    statuses["clerk"] = every_method(403)
    return {**statuses, **ok}


def rest_read() -> Statuses:
    return rest(dict.fromkeys(VIEWERS, methods(200, options=200)))


def dicomweb(get: int, *, other_token: int, stow: int | None = None) -> Statuses:
    """A DICOMweb endpoint: EMR users or viewer tokens; writes only by radtech/superuser (STOW)."""
    store = methods(get, post=405 if stow is None else stow, write=405, options=200)
    return {
        "anonymous": every_method(401),
        "expired_token": every_method(401),
        **{actor: every_method(401) for actor in ISSUER_GONE},
        "nurse": every_method(403),
        "clerk": every_method(403),
        "doctor": methods(get, post=403, write=403, options=200),
        "radtech": store,
        "superuser": store,
        "other_token": methods(other_token, post=403, write=403, options=200),
    }


@dataclass(frozen=True)
class Rule:
    expected: Statuses
    kwargs: Callable[[World], dict[str, Any]] = lambda world: {}
    query: Callable[[World, str], dict[str, str]] = lambda world, actor: {}


def _study(world: World) -> dict[str, Any]:
    return {"study_uid": world.target.study.study_uid}


def _series(world: World) -> dict[str, Any]:
    return {**_study(world), "series_uid": world.target.series.series_uid}


def _instance(world: World) -> dict[str, Any]:
    return {**_series(world), "image_uid": world.target.image.image_uid}


def _viewer_query(world: World, actor: str) -> dict[str, str]:
    query = {"StudyInstanceUIDs": world.target.study.study_uid}
    if actor in world.tokens:
        query["token"] = world.tokens[actor]
    return query


STOW_WITHOUT_PARTS = 415  # radtech/superuser POST with an empty JSON body: not multipart/related

RULES: dict[str, Rule] = {
    "healthz": Rule(everyone(methods(200))),
    "api-token": Rule(everyone(methods(405, post=400, options=200))),
    "api-schema": Rule(everyone(methods(200, options=200))),
    "api-docs": Rule(everyone(methods(200))),
    "radiology:signed-image": Rule(
        everyone(methods(403)),
        kwargs=lambda w: {"image_id": w.target.image.pk, "filename": w.target.image.file_key.rsplit("/", 1)[-1]},
    ),
    "radiology:lite-viewer": Rule(everyone(methods(403)), query=_viewer_query),
    "radiology:lite-viewer-image-url": Rule(
        dicomweb(200, other_token=404), query=lambda w, actor: {"image": w.target.image.image_uid}
    ),
    "radiology:dicomweb-root": Rule(dicomweb(404, other_token=404)),
    "radiology:dicomweb-studies": Rule(dicomweb(200, other_token=200, stow=STOW_WITHOUT_PARTS)),
    "radiology:dicomweb-series-search": Rule(dicomweb(200, other_token=200)),
    "radiology:dicomweb-instances-search": Rule(dicomweb(200, other_token=200)),
    "radiology:dicomweb-study": Rule(dicomweb(200, other_token=404, stow=STOW_WITHOUT_PARTS), kwargs=_study),
    "radiology:dicomweb-study-metadata": Rule(dicomweb(200, other_token=404), kwargs=_study),
    "radiology:dicomweb-study-series": Rule(dicomweb(200, other_token=404), kwargs=_study),
    "radiology:dicomweb-study-instances": Rule(dicomweb(200, other_token=404), kwargs=_study),
    "radiology:dicomweb-series": Rule(dicomweb(200, other_token=404), kwargs=_series),
    "radiology:dicomweb-series-metadata": Rule(dicomweb(200, other_token=404), kwargs=_series),
    "radiology:dicomweb-series-instances": Rule(dicomweb(200, other_token=404), kwargs=_series),
    "radiology:dicomweb-series-rendered": Rule(dicomweb(200, other_token=404), kwargs=_series),
    "radiology:dicomweb-series-thumbnail": Rule(dicomweb(200, other_token=404), kwargs=_series),
    "radiology:dicomweb-instance": Rule(dicomweb(200, other_token=404), kwargs=_instance),
    "radiology:dicomweb-instance-metadata": Rule(dicomweb(200, other_token=404), kwargs=_instance),
    "radiology:dicomweb-instance-rendered": Rule(dicomweb(200, other_token=404), kwargs=_instance),
    "radiology:dicomweb-instance-thumbnail": Rule(dicomweb(200, other_token=404), kwargs=_instance),
    "radiology:dicomweb-frames": Rule(dicomweb(200, other_token=404), kwargs=lambda w: {**_instance(w), "frames": "1"}),
    "radiology:dicomweb-frame-rendered": Rule(
        dicomweb(200, other_token=404), kwargs=lambda w: {**_instance(w), "frames": "1"}
    ),
    "radiology:dicomweb-bulk": Rule(
        dicomweb(200, other_token=404), kwargs=lambda w: {**_instance(w), "tag": "7FE00010"}
    ),
    # The front door's pages (apps/radiology/frontdoor) are for people signed in with a session:
    # an API or viewer token opens none of them (every actor here is anonymous to them). What a
    # signed-in doctor, tech or nurse gets there is in tests/frontdoor/.
    "frontdoor:home": Rule(everyone(methods(200))),
    "frontdoor:sign-in": Rule(everyone(methods(200, post=200, options=200))),
    "frontdoor:sign-out": Rule(everyone({**every_method(405), "POST": 302, "OPTIONS": 200})),
    "frontdoor:studies": Rule(everyone(methods(302))),
    "frontdoor:search": Rule(everyone({**every_method(405), "POST": 302})),
    "frontdoor:failed-uploads": Rule(everyone(methods(302))),
    "frontdoor:open-ohif": Rule(
        everyone({**every_method(405), "POST": 302}), kwargs=lambda w: {"study_id": w.target.study.pk}
    ),
    "frontdoor:open-lite": Rule(
        everyone({**every_method(405), "POST": 302}), kwargs=lambda w: {"study_id": w.target.study.pk}
    ),
    "frontdoor:forward": Rule(
        everyone({**every_method(405), "POST": 302}), kwargs=lambda w: {"study_id": w.target.study.pk}
    ),
    "radiology:study-list": Rule(rest_read()),
    "radiology:study-detail": Rule(rest_read(), kwargs=lambda w: {"pk": w.target.study.pk}),
    "radiology:study-images": Rule(rest_read(), kwargs=lambda w: {"pk": w.target.study.pk}),
    "radiology:study-viewer-url": Rule(rest_read(), kwargs=lambda w: {"pk": w.target.study.pk}),
    # Send to a forwarding destination: with none configured here, a POST is 400 unknown_destination.
    "radiology:study-forward": Rule(
        rest(dict.fromkeys(VIEWERS, methods(405, post=400, options=200))), kwargs=lambda w: {"pk": w.target.study.pk}
    ),
    "radiology:image-url": Rule(rest_read(), kwargs=lambda w: {"pk": w.target.image.pk}),
    # Uploads: radiology techs (and superusers) only; each sees only their own (another's is 404).
    "radiology:upload-list": Rule(
        rest(
            {
                "doctor": every_method(403),
                "radtech": methods(405, post=400, options=200),
                "superuser": methods(405, post=400, options=200),
            }
        )
    ),
    "radiology:upload-detail": Rule(
        rest(
            {
                "doctor": every_method(403),
                "radtech": methods(200, options=200),
                "superuser": methods(404, options=200),
            }
        ),
        kwargs=lambda w: {"pk": w.upload.pk},
    ),
    # What a forwarding clinic delivered of a study: forwarding clinic accounts only (none among the actors).
    "radiology:forwarded-study": Rule(rest(dict.fromkeys(VIEWERS, every_method(403))), kwargs=_study),
    "radiology:upload-binary": Rule(
        rest(
            {
                "doctor": every_method(403),
                "radtech": {**methods(405, options=200), "PUT": 400},
                "superuser": {**methods(405, options=200), "PUT": 404},
            }
        ),
        kwargs=lambda w: {"pk": w.upload.pk},
    ),
}


# --- discovery -----------------------------------------------------------------------------------


def discovered_routes() -> dict[str, str]:
    """Every named route of config.urls but admin's own, as name (with namespace) -> pattern."""
    found: dict[str, str] = {}

    def walk(resolver: URLResolver, prefix: str, namespace: str) -> None:
        for entry in resolver.url_patterns:
            if isinstance(entry, URLResolver):
                if entry.namespace == "admin":
                    continue
                inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
                walk(entry, prefix + str(entry.pattern), inner)
            elif isinstance(entry, URLPattern):
                name = f"{namespace}{entry.name}" if entry.name else f"<unnamed {prefix}{entry.pattern}>"
                assert name not in found, f"two routes named {name}"
                found[name] = prefix + str(entry.pattern)

    walk(get_resolver("config.urls"), "/", "")
    return found


def test_every_route_has_a_rule() -> None:
    routes = discovered_routes()

    assert set(routes) - set(RULES) == set(), "routes without a rule in RULES"
    assert set(RULES) - set(routes) == set(), "rules for routes that no longer exist"


def test_discovery_sees_the_whole_api() -> None:
    routes = discovered_routes()

    assert routes["radiology:dicomweb-bulk"] == (
        "/api/v1/radiology/dicomweb/studies/<uid:study_uid>/series/<uid:series_uid>/instances/<uid:image_uid>"
        "/bulk/<str:tag>"
    )
    assert routes["healthz"] == "/healthz"
    assert routes["frontdoor:studies"] == "/radiology/studies/"
    assert len(routes) == 46


# --- the matrix ----------------------------------------------------------------------------------


def _request(client: Client, method: str, url: str, query: dict[str, str]) -> int:
    response = client.generic(method, url, b"", content_type="application/json", query_params=query)
    return int(response.status_code)


@pytest.mark.parametrize("route", sorted(RULES))
def test_route_statuses(route: str, matrix: World) -> None:
    world = matrix
    rule = RULES[route]
    url = reverse(route, kwargs=rule.kwargs(world))
    clients = {actor: Client(headers=world.auth[actor]) for actor in ACTORS}

    actual = {
        actor: {method: _request(clients[actor], method, url, rule.query(world, actor)) for method in METHODS}
        for actor in ACTORS
    }

    assert actual == rule.expected


def test_a_viewer_token_of_its_own_study_reads_it(matrix: World) -> None:
    world = matrix
    """The other token is not powerless: its own study answers 200 (so its 404s above are scope)."""
    client = Client(headers=world.auth["other_token"])
    own = {"study_uid": world.other.study.study_uid, "series_uid": world.other.series.series_uid}

    assert client.get(reverse("radiology:dicomweb-series-metadata", kwargs=own)).status_code == 200
    assert [study["0020000D"]["Value"] for study in client.get(reverse("radiology:dicomweb-studies")).json()] == [
        [world.other.study.study_uid]
    ]


# --- admin ---------------------------------------------------------------------------------------

RADIOLOGY_ADMIN = ["radiologyorder", "radiologystudy", "radiologyseries", "radiologyimage", "viewertoken", "auditevent"]


@pytest.mark.parametrize("model", RADIOLOGY_ADMIN)
def test_admin_changelists(model: str, matrix: World) -> None:
    url = reverse(f"admin:radiology_{model}_changelist")
    admin = Client()
    admin.force_login(get_user_model().objects.get(username="matrix-admin"))
    doctor = Client()
    doctor.force_login(get_user_model().objects.get(username="matrix-doctor"))

    anonymous = Client().get(url)
    not_staff = doctor.get(url)
    superuser = admin.get(url)

    for response in (anonymous, not_staff):
        assert response.status_code == 302
        assert response["Location"] == f"/admin/login/?next={url}"
    assert superuser.status_code == 200


def test_admin_refuses_staff_without_a_radiology_role(matrix: World) -> None:
    """The clerk passes admin's staff check but no radiology page: changelists, change pages, the viewer."""
    clerk = Client()
    clerk.force_login(get_user_model().objects.get(username="matrix-clerk"))
    image, study = matrix.target.image, matrix.target.study
    urls = [
        *(reverse(f"admin:radiology_{model}_changelist") for model in RADIOLOGY_ADMIN),
        reverse("admin:radiology_radiologyimage_change", args=[image.pk]),
        reverse("admin:radiology_radiologyseries_change", args=[matrix.target.series.pk]),
        reverse("admin:radiology_radiologystudy_change", args=[study.pk]),
        reverse("admin:radiology_radiologyorder_change", args=[study.radiology_order.pk]),
        reverse("admin:radiology_radiologystudy_viewer", args=[study.pk]),
    ]

    statuses = {url: clerk.get(url).status_code for url in urls}

    assert statuses == dict.fromkeys(urls, 403)
    assert clerk.get(reverse("admin:app_list", args=["radiology"])).status_code == 404
