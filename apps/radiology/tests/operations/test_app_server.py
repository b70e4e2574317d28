"""The app server as `make run` starts it (config/app_server.py, granian), driven over real connections.

An answer given before the request's body was read says `Connection: close` (config/unread_body.py):
a client sending its next request on that connection would otherwise find it dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from apps.radiology.tests.app_server import AppServer, own_database, server_env


@pytest.fixture
def app_server(tmp_path: Path) -> Iterator[AppServer]:
    with own_database(tmp_path, "app_server") as database_url:
        server = AppServer(server_env(tmp_path, database_url), tmp_path / "app_server.log", workers=1)
        server.manage("migrate", "--noinput")
        server.start()
        try:
            yield server
        finally:
            server.stop()


def test_an_answer_before_the_body_was_read_closes_and_the_next_request_gets_a_new_connection(
    app_server: AppServer,
) -> None:
    session = requests.Session()
    body = b"\0" * 3_000_000  # more than one socket buffer: the answer comes before it is all sent
    stow = f"{app_server.url}/api/v1/radiology/dicomweb/studies"

    refused = [
        session.post(stow, data=body, headers={"Content-Type": "application/dicom"}, timeout=30) for _ in range(5)
    ]
    chunked = session.post(
        stow, data=iter([body[:1000], body]), headers={"Content-Type": "application/dicom"}, timeout=30
    )
    after = session.get(f"{app_server.url}/healthz", timeout=30)

    assert [(r.status_code, r.json()["code"], r.headers["Connection"]) for r in [*refused, chunked]] == [
        (401, "not_authenticated", "close")
    ] * 6
    assert after.status_code == 200
    assert "Connection" not in after.headers or after.headers["Connection"].lower() == "keep-alive"
