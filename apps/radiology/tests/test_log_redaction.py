"""Link tokens, signatures and Authorization credentials never reach a log line (issue 14 item 11).

Two real servers, each started as an operator starts it, on one migrated SQLite file (or a
fresh PostgreSQL database when the suite runs there):
- `manage.py runserver` (what `make run` serves): its request lines go through `django.server`,
  its 4xx warnings through `django.request`;
- the app server (`python -m config.app_server`, granian), with the access log on and a format
  that also writes the query string, the Referer and the Authorization header.
Each gets requests carrying secrets in the query string, the Referer and the Authorization
header; the captured output must not contain any secret, and must show the redaction marker
where the secret was. `redact()` itself is checked line by line below.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from apps.radiology.tests.app_server import REPO, AppServer, free_port, own_database, server_env
from config.log_redaction import REDACTED, redact

VIEWER_SECRET = "viewerSECRET0123456789abcdefghij"
FILE_SECRET = "fileSECRET.0123456789.-.abcdefghij"
AUTH_SECRET = "0123456789abcdef0123456789abcdefAUTHSECRET"
REFERER_SECRET = "refererSECRET0123456789abcdefghij"
SECRETS = (VIEWER_SECRET, FILE_SECRET, AUTH_SECRET, REFERER_SECRET)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '"GET /api/v1/radiology/viewer/?token=abc.def:ghi-JK&StudyInstanceUIDs=1.2 HTTP/1.1" 403 120',
            f'"GET /api/v1/radiology/viewer/?token={REDACTED}&StudyInstanceUIDs=1.2 HTTP/1.1" 403 120',
        ),
        (
            "GET /api/v1/radiology/files/7/a.dcm?expires=1700000000&token=12.1700.-.sig",
            f"GET /api/v1/radiology/files/7/a.dcm?expires=1700000000&token={REDACTED}",
        ),
        (
            "next=http%3A%2F%2Fh%2Fx%3Fexpires%3D1%26token%3Dsecret%26a%3Db",
            f"next=http%3A%2F%2Fh%2Fx%3Fexpires%3D1%26token%3D{REDACTED}%26a%3Db",
        ),
        ("Authorization: Bearer abc.def", f"Authorization: Bearer {REDACTED}"),
        ("authorization=Basic dXNlcjpwdw==", f"authorization=Basic {REDACTED}"),
        ("{'HTTP_AUTHORIZATION': 'Token " + "a" * 40 + "'}", f"{{'HTTP_AUTHORIZATION': 'Token {REDACTED}'}}"),
        (
            "s3 ?X-Amz-Credential=K%2F1&X-Amz-Signature=beef&X-Amz-Security-Token=t&X-Amz-Expires=30",
            f"s3 ?X-Amz-Credential={REDACTED}&X-Amz-Signature={REDACTED}&X-Amz-Security-Token={REDACTED}"
            "&X-Amz-Expires=30",
        ),
        ("viewer_token=zzz&sig=1&password=hunter2", f"viewer_token={REDACTED}&sig={REDACTED}&password={REDACTED}"),
        # Nothing secret: left exactly as it was.
        ("Token endpoint throttled for 127.0.0.1", "Token endpoint throttled for 127.0.0.1"),
        ("radiology image 4 stored in study 2.25.1", "radiology image 4 stored in study 2.25.1"),
        ("GET /api/v1/radiology/studies/?limit=2&offset=2", "GET /api/v1/radiology/studies/?limit=2&offset=2"),
    ],
)
def test_redact_replaces_only_the_secret(line: str, expected: str) -> None:
    assert redact(line) == expected


def _hostile_requests(base_url: str) -> list[int]:
    """Requests carrying every kind of secret; their status codes (all answered, none 5xx)."""
    statuses = []
    for path, headers in (
        (f"/api/v1/radiology/viewer/?token={VIEWER_SECRET}&StudyInstanceUIDs=1.2.3", {}),
        (f"/api/v1/radiology/files/1/a.dcm?expires=1700000000&token={FILE_SECRET}", {}),
        ("/api/v1/radiology/studies/", {"Authorization": f"Token {AUTH_SECRET}"}),
        (
            "/api/v1/radiology/dicomweb/studies",
            {
                "Authorization": f"Bearer {AUTH_SECRET}",
                "Referer": f"http://127.0.0.1:3000/viewer?StudyInstanceUIDs=1.2&token={REFERER_SECRET}",
            },
        ),
    ):
        statuses.append(requests.get(base_url + path, headers=headers, timeout=60).status_code)
    return statuses


def _assert_redacted(log: str) -> None:
    leaked = [secret for secret in SECRETS if secret in log]
    assert leaked == [], log[-3000:]
    assert f"token={REDACTED}" in log, log[-3000:]


@pytest.fixture
def server_environment(tmp_path: Path) -> Iterator[dict[str, str]]:
    with own_database(tmp_path, "logs") as database_url:
        env = server_env(tmp_path, database_url)
        AppServer(env, tmp_path / "migrate.log").manage("migrate", "--noinput")
        yield env


@contextlib.contextmanager
def runserver(env: dict[str, str], log_path: Path) -> Iterator[str]:
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 (our own argv)
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload", "--skip-checks"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_path.read_text(errors="replace")
            with contextlib.suppress(requests.RequestException):
                requests.get(f"{url}/healthz", timeout=1)
                break
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_runserver_request_lines_and_warnings_are_redacted(server_environment: dict[str, str], tmp_path: Path) -> None:
    log_path = tmp_path / "runserver.log"
    with runserver({**server_environment, "DJANGO_LOG_LEVEL": "INFO"}, log_path) as url:
        statuses = _hostile_requests(url)
    log = log_path.read_text(errors="replace")

    assert statuses == [403, 403, 401, 401]
    _assert_redacted(log)
    # The request lines (django.server) and the 4xx warnings (django.request) were both written.
    assert f'"GET /api/v1/radiology/viewer/?token={REDACTED}&StudyInstanceUIDs=1.2.3 HTTP/1.1" 403' in log
    assert "Forbidden: /api/v1/radiology/viewer/" in log


def _app_server_log(env: dict[str, str], tmp_path: Path) -> tuple[list[int], str]:
    """The hostile requests' statuses and the log of an app server with its access log on."""
    server = AppServer({**env, "PACS_ACCESS_LOG": "1"}, tmp_path / "app_server.log", workers=1)
    server.start()
    try:
        statuses = _hostile_requests(server.url)
        # granian writes an access line after its answer has gone, from another thread: wait for the
        # five (these four requests and the start's one answered probe; whatever the format, each
        # line names the HTTP version) before stopping.
        deadline = time.monotonic() + 30
        while server.log_path.read_text(errors="replace").count(" HTTP/1.1") < len(statuses) + 1:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.05)
    finally:
        server.stop()
    return statuses, server.log_path.read_text(errors="replace")


def test_app_server_access_log_is_redacted(server_environment: dict[str, str], tmp_path: Path) -> None:
    access_format = (
        '"%(method)s %(path)s?%(query_string)s %(protocol)s" %(status)d '
        '"%(header{referer})s" "%(header{authorization})s"'
    )
    statuses, log = _app_server_log({**server_environment, "PACS_ACCESS_LOG_FORMAT": access_format}, tmp_path)

    assert statuses == [403, 403, 401, 401]
    _assert_redacted(log)
    assert f'"GET /api/v1/radiology/files/1/a.dcm?expires=1700000000&token={REDACTED} HTTP/1.1" 403' in log
    assert f'"http://127.0.0.1:3000/viewer?StudyInstanceUIDs=1.2&token={REDACTED}" "Bearer {REDACTED}"' in log
    assert f'"Token {REDACTED}"' in log


def test_app_server_default_access_line_has_no_query_string(server_environment: dict[str, str], tmp_path: Path) -> None:
    statuses, log = _app_server_log(server_environment, tmp_path)

    assert statuses == [403, 403, 401, 401]
    assert [secret for secret in SECRETS if secret in log] == []
    assert '127.0.0.1 "GET /api/v1/radiology/files/1/a.dcm HTTP/1.1" 403 ' in log
    assert '127.0.0.1 "GET /api/v1/radiology/viewer/ HTTP/1.1" 403 ' in log
