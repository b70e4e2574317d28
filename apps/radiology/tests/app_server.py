"""A real PACS-lite server for tests that kill it: the app server in its own process group, own database.

Shared by the upload chaos test and the crash-safety test. The database is a temporary
SQLite file, or a fresh database CREATEd on the suite's PostgreSQL server (when the suite
runs there) and dropped afterwards, so CI exercises both.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import requests
from psycopg2 import sql

REPO = Path(__file__).resolve().parents[3]
VENV_BIN = Path(sys.executable).parent
# Any request answered 401 means the app is up (no credentials sent).
READY_PATH = "/api/v1/radiology/studies/"


def children_of(pid: int) -> list[int]:
    """Every child of process `pid`, whichever of its threads started it; [] once it is gone.

    /proc/PID/task/TID/children lists the children of one thread: the app server runs requests on
    threads it starts and ends as needed (granian's blocking threads), and a child outlives the
    thread that started it, listed then under another thread of the process.
    """
    children: set[int] = set()
    with contextlib.suppress(OSError):  # the process, or one of its threads, ended meanwhile
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                children.update(int(child) for child in (task / "children").read_text().split())
    return sorted(children)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def own_database(tmp_path: Path, prefix: str) -> Iterator[str]:
    """DATABASE_URL of the server: a temp SQLite file, or a new database beside the suite's PostgreSQL."""
    suite_url = os.environ.get("DATABASE_URL", "")
    if not suite_url.startswith(("postgres://", "postgresql://")):
        yield f"sqlite:///{tmp_path / f'{prefix}.sqlite3'}"
        return
    parts = urlsplit(suite_url)
    name = f"pacs_{prefix}_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(
        host=parts.hostname,
        port=parts.port or 5432,
        user=parts.username,
        password=parts.password,
        dbname=parts.path.lstrip("/") or "postgres",
    )
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


class OwnProcessGroup:
    """A process the test started with start_new_session=True: killed or stopped with all its children."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        """Power cut: SIGKILL to the process and its children at once, no chance to finish anything."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self, *, grace: float = 15) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


class AppServer(OwnProcessGroup):
    """The app server as `make run` starts it (`python -m config.app_server`, granian) with
    `workers` workers, in its own process group (a SIGKILL takes all of it)."""

    def __init__(self, env: dict[str, str], log_path: Path, *, workers: int = 2) -> None:
        super().__init__(log_path)
        self.env = env
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def manage(self, *args: str) -> str:
        result = subprocess.run(  # noqa: S603 (our own argv)
            [str(VENV_BIN / "python"), "manage.py", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()[-3000:]
        return result.stdout.decode()

    def seed_and_start(self) -> dict[str, Any]:
        """Migrate, seed one demo order, start; seed_demo's summary ({"users", "password",
        "radiology_orders", ...}) with "tokens": an API token per demo role, logged in over HTTP."""
        self.manage("migrate", "--noinput")
        seeded: dict[str, Any] = json.loads(
            self.manage("seed_demo", "--json", "--orders", "1").strip().splitlines()[-1]
        )
        self.start()
        seeded["tokens"] = {}
        for role in ("radtech", "doctor"):
            response = requests.post(
                f"{self.url}/api/v1/auth/token/",
                json={"username": seeded["users"][role], "password": seeded["password"]},
                timeout=60,
            )
            assert response.status_code == 200, response.text
            seeded["tokens"][role] = response.json()["token"]
        return seeded

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (our own argv)
                [str(VENV_BIN / "python"), "-m", "config.app_server", "--bind", f"127.0.0.1:{self.port}"],
                cwd=REPO,
                env={**self.env, "PACS_WEB_WORKERS": str(self.workers)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the app server exited: {self.log_tail()}"
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}{READY_PATH}", timeout=1).status_code == 401:
                    return
            time.sleep(0.1)
        raise AssertionError(f"the app server did not answer within 30 s: {self.log_tail()}")


def server_env(tmp_path: Path, database_url: str, *, staging: str = "staging", **extra: str) -> dict[str, str]:
    """The server's environment: test settings, its own database, every path under `tmp_path`.

    The suite's own storage/database/settings variables are dropped so they can't leak in.
    """
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "MINIO_", "RADIOLOGY_", "DATABASE_", "DJANGO_", "PACS_", "MEDIA_"))
    }
    return {
        **inherited,
        "RADIOLOGY_STORAGE": "filesystem",
        **extra,
        "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_LOG_LEVEL": "WARNING",
        "DATABASE_URL": database_url,
        "PACS_VAR_DIR": str(tmp_path / "var"),
        "MEDIA_ROOT": str(tmp_path / "media"),
        "RADIOLOGY_STAGING_DIR": str(tmp_path / staging),
        "PYTHONUNBUFFERED": "1",
    }
