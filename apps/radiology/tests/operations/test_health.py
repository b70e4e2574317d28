"""/healthz: database and image store reachable -> 200; either down -> 503 naming which. No login needed.

Free disk space below RADIOLOGY_MIN_FREE_BYTES is 200 "degraded" (503 only with something down).

"Down" for S3 is a bucket that does not exist on the moto server, or an endpoint on a
loopback port nothing listens on. It answers over plain HTTP even when everything else is
redirected to HTTPS, for load balancers inside the network.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from botocore.config import Config
from django.conf import settings as django_settings
from django.db import OperationalError
from django.test import Client

from apps.radiology.models import AuditEvent
from apps.radiology.operations import health
from apps.radiology.tests.trust_helpers import API
from conftest import S3_BACKEND, s3_options

HEALTHY = {"status": "ok", "database": "ok", "storage": "ok", "disk_space": "ok"}
STORAGE_DOWN = {"status": "unhealthy", "database": "ok", "storage": "unreachable", "disk_space": "ok"}

pytestmark = pytest.mark.django_db


def _closed_port() -> int:
    """A loopback port that was free a moment ago: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _use_s3(settings: Any, endpoint: str, bucket: str, **extra: Any) -> None:
    stores = dict(django_settings.STORAGES)
    stores["radiology"] = {"BACKEND": S3_BACKEND, "OPTIONS": {**s3_options(endpoint, bucket), **extra}}
    settings.STORAGES = stores


def test_healthy_on_both_stores(radiology_store: str, client: Client) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == HEALTHY
    assert response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"]
    assert AuditEvent.objects.count() == 0


def test_head_is_answered_and_writes_are_not(radiology_store: str, client: Client) -> None:
    head = client.head("/healthz")
    post = client.post("/healthz")

    assert head.status_code == 200
    assert head.content == b""
    assert post.status_code == 405
    assert post["Allow"] == "GET, HEAD"


def test_no_authentication_needed_and_credentials_ignored(radiology_store: str) -> None:
    anonymous = Client().get("/healthz")
    bad_token = Client(headers={"Authorization": "Token not-a-token"}).get("/healthz")
    bad_bearer = Client(headers={"Authorization": "Bearer not-a-token"}).get("/healthz")

    assert [response.status_code for response in (anonymous, bad_token, bad_bearer)] == [200, 200, 200]
    assert bad_bearer.json() == HEALTHY


def test_missing_bucket_is_unhealthy(s3_endpoint: str, settings: Any, client: Client) -> None:
    _use_s3(settings, s3_endpoint, "no-such-bucket-for-healthz")

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == STORAGE_DOWN


def test_endpoint_nobody_listens_on_is_unhealthy(settings: Any, client: Client) -> None:
    # Without retries: the answer is the same, only sooner than botocore's backoff allows.
    _use_s3(
        settings,
        f"http://127.0.0.1:{_closed_port()}",
        "radiology",
        client_config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2),
    )

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == STORAGE_DOWN


def test_database_down_is_unhealthy(radiology_store: str, client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    class Unreachable:
        def cursor(self) -> Any:
            raise OperationalError("connection refused")

    monkeypatch.setattr(health, "connection", Unreachable())

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == {"status": "unhealthy", "database": "unreachable", "storage": "ok", "disk_space": "ok"}


def test_exempt_from_the_https_redirect(radiology_store: str, settings: Any, doctor: Any) -> None:
    settings.SECURE_SSL_REDIRECT = True
    client = Client()  # built after the change: SecurityMiddleware reads its settings when created

    health_plain = client.get("/healthz")
    api_plain = client.get(f"{API}/studies/")
    api_secure = client.get(f"{API}/studies/", secure=True)

    assert health_plain.status_code == 200
    assert health_plain.json() == HEALTHY
    assert api_plain.status_code == 301
    assert api_plain["Location"] == f"https://testserver{API}/studies/"
    assert api_secure.status_code == 401


def _low_space_detail(places: str) -> str:
    return (
        f"Free disk space on the {places} is below RADIOLOGY_MIN_FREE_BYTES: "
        "new images are refused (507 insufficient_storage) until space is freed."
    )


def test_low_disk_space_is_degraded_but_still_served(radiology_store: str, settings: Any, client: Client) -> None:
    """200, not 503: a server short of space still serves every image; only new files are refused.

    The disks are real; the margin is larger than any disk. On S3 only the staging disk is watched.
    """
    settings.RADIOLOGY_MIN_FREE_BYTES = 2**62
    places = "staging directory" if radiology_store == "s3" else "staging directory and the image store"

    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {
        "status": "degraded",
        "database": "ok",
        "storage": "ok",
        "disk_space": "low",
        "detail": _low_space_detail(places),
    }


def test_a_store_down_with_low_disk_space_is_unhealthy(s3_endpoint: str, settings: Any, client: Client) -> None:
    _use_s3(settings, s3_endpoint, "no-such-bucket-for-healthz")
    settings.RADIOLOGY_MIN_FREE_BYTES = 2**62

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == {
        **STORAGE_DOWN,
        "disk_space": "low",
        "detail": _low_space_detail("staging directory"),
    }
