"""`make run` started as a clinic starts it, for tests: the real Makefile target, on free ports, in a temp var/.

The server runs in a session of its own (as under a terminal), so a test can press Ctrl-C the way
a terminal does (SIGINT to the foreground process group) and then look for any process of that
session still alive. Its database is a temp SQLite file, or a fresh database on the suite's
PostgreSQL server when the suite runs there (apps/radiology/tests/app_server.own_database).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from apps.radiology.tests.app_server import REPO, VENV_BIN, children_of, free_port

# Variables config/ reads, and make's own: none of the suite's may reach the server.
_DROPPED_PREFIXES = ("AWS_", "MINIO_", "RADIOLOGY_", "DATABASE_", "DJANGO_", "PACS_", "MEDIA_", "OHIF_", "DEMO_")
_DROPPED = {"MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "HOST", "PORT", "VIEWER_PORT"}
START_SECONDS = 180


def session_processes(session_id: int) -> list[int]:
    """Every live (not zombie) process whose session is `session_id`."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # Fields after the command name (which may hold spaces): state ppid pgrp session ...
            state, _ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]
            if int(session) == session_id and state != "Z":
                found.append(int(entry.name))
    return found


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


class MakeRun:
    """`make run HOST=127.0.0.1 PORT=… VIEWER_PORT=…` with PACS_VAR_DIR in a temp directory."""

    def __init__(self, var_dir: Path, database_url: str, log_path: Path, **extra_env: str) -> None:
        self.var_dir = var_dir
        self.port = free_port()
        self.viewer_port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.viewer = f"http://127.0.0.1:{self.viewer_port}"
        self.log_path = log_path
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(_DROPPED_PREFIXES) and name not in _DROPPED
        }
        self.env = {
            **inherited,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "PACS_VAR_DIR": str(var_dir),
            "DATABASE_URL": database_url,
            "PYTHONUNBUFFERED": "1",
            # Two app servers, not three: the suite shares two cores with other servers.
            "PACS_WEB_WORKERS": "2",
            # Its own DICOM port too: two servers of the suite must not both take 11112.
            "RADIOLOGY_DICOM_PORT": str(free_port()),
            **extra_env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    # --- starting and stopping -------------------------------------------------------------------

    def command(self) -> list[str]:
        """`make run` on this server's ports, as a person types it (make from PATH)."""
        return [
            "make",
            "--no-print-directory",
            "run",
            "HOST=127.0.0.1",
            f"PORT={self.port}",
            f"VIEWER_PORT={self.viewer_port}",
        ]

    def start(self) -> None:
        """`make run` in its own session; returns once both ports answer."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (fixed argv)
                self.command(),
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self.wait_until_answering()
        except BaseException:
            self.ctrl_c()  # nothing of a failed start outlives the test
            raise

    def wait_until_answering(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, f"make run exited:\n{self.log_tail()}"
            with contextlib.suppress(requests.RequestException):
                api = requests.get(f"{self.api}/healthz", timeout=2)
                viewer = requests.get(f"{self.viewer}/app-config.js", timeout=2)
                if api.status_code == 200 and viewer.status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"make run did not answer on both ports:\n{self.log_tail()}")

    @property
    def session_id(self) -> int:
        assert self.process is not None
        return self.process.pid  # start_new_session: the session is named after its leader

    def ctrl_c(self) -> list[int]:
        """SIGINT to the foreground process group, as a terminal's Ctrl-C; the session's processes after."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):  # make may have ended already
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=90)
        finally:
            left = session_processes(self.session_id)
            for pid in left:  # never leave the suite's machine with strays, whatever the test says
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.process = None
        return left

    # --- looking inside ---------------------------------------------------------------------------

    def supervisor_pid(self) -> int:
        assert self.process is not None
        pids = [pid for pid in session_processes(self.session_id) if "supervisord" in command_line(pid)]
        assert len(pids) == 1, pids
        return pids[0]

    def program_masters(self, name: str) -> list[int]:
        """The main processes of program `name`, as supervisord runs them now: "pacs-api" (the app
        servers, titled so by config/app_server.py, one per PACS_WEB_WORKERS) or "nginx" (both ports)."""
        titled = (lambda line: line.startswith("nginx: master ")) if name == "nginx" else (lambda line: line == name)
        return sorted(pid for pid in children_of(self.supervisor_pid()) if titled(command_line(pid).strip()))

    def program_master(self, name: str) -> int:
        """The one main process of program `name` (see program_masters)."""
        masters = self.program_masters(name)
        assert len(masters) == 1, masters
        return masters[0]

    def manage(self, *args: str) -> str:
        """manage.py in the server's environment (scripts/serve_env.sh, as `make run` runs it)."""
        result = subprocess.run(  # noqa: S603 (fixed argv)
            ["/bin/sh", "scripts/serve_env.sh", str(VENV_BIN / "python"), "manage.py", *args],
            cwd=REPO,
            env={**self.env, "HOST": "127.0.0.1", "PORT": str(self.port), "VIEWER_PORT": str(self.viewer_port)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    def empty_orders(self) -> list[dict[str, Any]]:
        """The seeded orders without a study: id, accession number and the patient's hospital number."""
        script = (
            "import json; from apps.radiology.models import RadiologyOrder as O; "
            "print(json.dumps([{'id': o.pk, 'accession': o.accession_number, "
            "'patient_id': o.visit.patient.hospital_number} for o in "
            "O.objects.filter(study__isnull=True).select_related('visit__patient').order_by('pk')]))"
        )
        loaded: list[dict[str, Any]] = json.loads(self.manage("shell", "-c", script).strip().splitlines()[-1])
        return loaded

    def token(self, role: str = "radtech") -> str:
        response = requests.post(
            f"{self.api}/api/v1/auth/token/", json={"username": role, "password": "pacs-demo-2026"}, timeout=30
        )
        assert response.status_code == 200, response.text
        return str(response.json()["token"])

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""
