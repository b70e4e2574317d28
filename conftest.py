"""Shared fixtures: role users, real sample files, and the radiology store on filesystem or S3.

S3 runs through moto's server over real HTTP: .ci/run starts `moto_server` and sets
PACS_TEST_S3_ENDPOINT; without it (a developer's `make test`) the fixture starts moto's
ThreadedMotoServer on a free loopback port. moto does not check presigned-URL signatures
or expiry (see FIELD-NOTES), so tests of expiry and tampering exercise our own checks.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from apps.radiology.tests.stores import FILESYSTEM_BACKEND, S3_BACKEND, s3_client, s3_options


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server reached over HTTP on loopback."""
    external = os.environ.get("PACS_TEST_S3_ENDPOINT")
    if external:
        yield external
        return
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket for one test."""
    bucket = f"radiology-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(params=["filesystem", "s3"])
def radiology_store(request: pytest.FixtureRequest, settings: Any, tmp_path: Path) -> str:
    """Run the test once with files on the filesystem and once on S3 (moto server)."""
    stores = dict(django_settings.STORAGES)
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        stores["radiology"] = {"BACKEND": S3_BACKEND, "OPTIONS": s3_options(endpoint, bucket)}
    else:
        stores["radiology"] = {
            "BACKEND": FILESYSTEM_BACKEND,
            "OPTIONS": {"location": str(tmp_path / "media"), "base_url": None},
        }
        settings.MEDIA_ROOT = tmp_path / "media"
    settings.STORAGES = stores
    settings.RADIOLOGY_STAGING_DIR = tmp_path / "staging"
    return str(request.param)


@pytest.fixture(autouse=True)
def _isolated_default_store(settings: Any, tmp_path: Path) -> None:
    """Even tests that don't ask for a store never write into the developer's var/."""
    if (
        "radiology" in django_settings.STORAGES
        and django_settings.STORAGES["radiology"]["BACKEND"] == FILESYSTEM_BACKEND
    ):
        stores = dict(django_settings.STORAGES)
        stores["radiology"] = {
            "BACKEND": FILESYSTEM_BACKEND,
            "OPTIONS": {"location": str(tmp_path / "default-media"), "base_url": None},
        }
        settings.STORAGES = stores
    settings.RADIOLOGY_STAGING_DIR = tmp_path / "default-staging"
