"""Servers for bench/compare_orthanc.py and bench/compare_dimse.py: Orthanc, a throwaway PostgreSQL, PACS-lite.

Everything listens on 127.0.0.1 only and lives in a temporary directory; each context
manager stops what it started (by its own process id) and leaves nothing running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_POSTGRESQL_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so")
PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: object, what: str, *, seconds: float = 60, log: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException, OSError):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not come up in {seconds:.0f} s\n{tail}")


def stop_process_group(process: subprocess.Popen[bytes], *, grace: float = 20) -> None:
    """SIGTERM the group this script started (start_new_session), then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)


# --- Orthanc ------------------------------------------------------------------------------


def ensure_orthanc() -> str:
    """Install Debian's orthanc and orthanc-dicomweb when missing; return Orthanc's version line.

    Installing must not start the system service: where no policy-rc.d forbids it, one is put
    in place for the duration of the install and removed afterwards.
    """
    if not (shutil.which("Orthanc") and ORTHANC_PLUGIN.exists()):
        if os.geteuid() != 0:
            raise RuntimeError("orthanc is not installed; run as root (apt-get install -y orthanc orthanc-dicomweb)")
        _apt_install("orthanc", "orthanc-dicomweb")
    version = subprocess.run(["Orthanc", "--version"], capture_output=True, text=True, check=False)
    return (version.stdout or version.stderr).splitlines()[0].strip()


def _apt_install(*packages: str) -> None:
    """apt-get install, never starting the packages' services: where no policy-rc.d forbids it,
    one is put in place for the duration of the install and removed afterwards."""
    policy = Path("/usr/sbin/policy-rc.d")
    placed = not policy.exists()
    if placed:
        policy.write_text("#!/bin/sh\n# bench/: do not start services while installing\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", *packages]
        print(f"installing {' '.join(packages)} (apt-get)...", flush=True)
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
            subprocess.run(install, env=env, check=True, capture_output=True)
    finally:
        if placed:
            policy.unlink()


def plugin_version() -> str:
    """The DicomWeb plugin's package version, as dpkg knows it."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "orthanc-dicomweb"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


@contextlib.contextmanager
def orthanc(workdir: Path, options: dict[str, object] | None = None) -> Iterator[tuple[str, int]]:
    """Orthanc on 127.0.0.1 with the DicomWeb plugin, fresh storage; yields (base URL, pid).

    `options` replace or add to the configuration below (bench/compare_dimse.py turns the DICOM
    server on and puts SyncStorageArea back to Orthanc's default).
    """
    port = free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(workdir / "orthanc-storage"),
        "IndexDirectory": str(workdir / "orthanc-index"),
        "HttpPort": port,
        # Orthanc 1.10 has no bind-address option: it listens on every interface but refuses any
        # client that is not on this machine; the benchmark only ever talks to 127.0.0.1.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        # SyncStorageArea is left at Orthanc's default (true: each file fsync'd before it answers), as
        # PACS-lite's store fsyncs each new file: both durable, as a clinic runs them.
        "Plugins": [str(ORTHANC_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    config.update(options or {})
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = workdir / "orthanc.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            ["Orthanc", str(config_path)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: process.poll() is None and requests.get(f"{base}/system", timeout=2).ok, "Orthanc", log=log_path
        )
        yield base, process.pid
    finally:
        stop_process_group(process)


def orthanc_postgresql_options(database: Postgres, name: str) -> dict[str, object]:
    """Orthanc's PostgreSQL index plugin (Debian's orthanc-postgresql), its advice for production,
    over database `name` of the same cluster; files stay on disk (EnableStorage false, its default).

    Every other option of the plugin keeps its default (Lock true, one index connection).
    """
    create_database(database, name)
    port = int(database.url.rsplit(":", 1)[1].split("/", 1)[0])
    return {
        "Plugins": [str(ORTHANC_PLUGIN), str(ORTHANC_POSTGRESQL_PLUGIN)],
        "PostgreSQL": {
            "EnableIndex": True,
            "EnableStorage": False,
            "Host": "127.0.0.1",
            "Port": port,
            "Database": name,
            "Username": "postgres",
            "Password": "",
        },
    }


def ensure_orthanc_postgresql() -> str:
    """Install Debian's orthanc-postgresql when missing (as root); return its package version."""
    if not ORTHANC_POSTGRESQL_PLUGIN.exists():
        if os.geteuid() != 0:
            raise RuntimeError("orthanc-postgresql is not installed; run as root (apt-get install orthanc-postgresql)")
        _apt_install("orthanc-postgresql")
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "orthanc-postgresql"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


# --- PostgreSQL ---------------------------------------------------------------------------


@dataclass
class Postgres:
    url: str
    directory: Path

    def pids(self) -> list[int]:
        """The cluster's processes: the postmaster (first line of postmaster.pid) and its children."""
        try:
            postmaster = int((self.directory / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return process_tree(postmaster)


def _as_postgres(*command: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@contextlib.contextmanager
def postgres(*, durable: bool = False) -> Iterator[Postgres]:
    """A throwaway cluster from scripts/pg_throwaway.sh (fsync=off); stopped and removed after.

    durable=True restarts it with PostgreSQL's own defaults (fsync on, synchronous_commit on),
    as a clinic's server runs: what bench/compare_dimse.py measures an acknowledged C-STORE against.
    """
    started = subprocess.run(
        ["bash", "-c", 'source scripts/pg_throwaway.sh >&2; echo "$DATABASE_URL"; echo "$PG_THROWAWAY_DIR"'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if started.returncode != 0:
        raise RuntimeError(f"PostgreSQL did not start:\n{started.stderr[-3000:]}")
    url, directory = started.stdout.strip().splitlines()[-2:]
    try:
        if durable:
            _restart_with_defaults(url, directory)
        yield Postgres(url=url, directory=Path(directory))
    finally:
        subprocess.run(
            _as_postgres(str(PGBIN / "pg_ctl"), "-D", f"{directory}/data", "-m", "fast", "-w", "stop"),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(directory, ignore_errors=True)


def create_database(database: Postgres, name: str) -> None:
    """A second database in the throwaway cluster (Orthanc's PostgreSQL index)."""
    port = database.url.rsplit(":", 1)[1].split("/", 1)[0]
    created = subprocess.run(
        _as_postgres(str(PGBIN / "createdb"), "-h", "127.0.0.1", "-p", port, "-U", "postgres", name),
        capture_output=True,
        text=True,
        check=False,
    )
    if created.returncode != 0:
        raise RuntimeError(f"createdb {name} failed:\n{created.stderr[-2000:]}")


def _restart_with_defaults(url: str, directory: str) -> None:
    """Restart the cluster with the same address, port and socket directory but no `-c fsync=off`.

    pg_ctl restart with -o replaces the options the script started it with (postmaster.opts).
    """
    port = url.rsplit(":", 1)[1].split("/", 1)[0]
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {directory}"
    command = [str(PGBIN / "pg_ctl"), "-D", f"{directory}/data", "-l", f"{directory}/log", "-w", "-t", "30"]
    restarted = subprocess.run(
        _as_postgres(*command, "-m", "fast", "-o", options, "restart"), capture_output=True, text=True, check=False
    )
    if restarted.returncode != 0:
        raise RuntimeError(f"PostgreSQL did not restart with its defaults:\n{restarted.stderr[-3000:]}")


# --- PACS-lite ----------------------------------------------------------------------------


def _inherited_env() -> dict[str, str]:
    """This process's environment without any variable PACS-lite's settings (or its store) read."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "MINIO_", "RADIOLOGY_", "DATABASE_", "DJANGO_", "PACS_", "MEDIA_", "OHIF_"))
    }


def pacs_env(workdir: Path, database_url: str, secret_key: str) -> dict[str, str]:
    """Production settings (DJANGO_DEBUG=0) over plain HTTP on loopback, all state in `workdir`."""
    return {
        **_inherited_env(),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_DEBUG": "0",
        "PACS_ALLOW_PLAIN_HTTP": "1",
        "DJANGO_SECRET_KEY": secret_key,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_LOG_LEVEL": "WARNING",
        "DATABASE_URL": database_url,
        "PACS_VAR_DIR": str(workdir / "var"),
        "MEDIA_ROOT": str(workdir / "media"),
        "RADIOLOGY_STORAGE": "filesystem",
        "OHIF_VIEWER_URL": "",
    }


def manage(env: dict[str, str], *args: str, wrapper: tuple[str, ...] = (), timeout: float = 600) -> str:
    result = subprocess.run(
        [*wrapper, str(VENV_BIN / "python"), "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


@dataclass
class ServedPacs:
    """PACS-lite as `make run` serves it: scripts/serve.sh, supervisord and every program it runs."""

    base: str  # the API's origin
    supervisor_pid: int
    env: dict[str, str]  # what manage.py needs to reach the same database and store
    dicom_port: int
    command: str = ""

    def manage(self, *args: str) -> str:
        """manage.py in the environment serve.sh gave the server (scripts/serve_env.sh, as `make seed` runs it)."""
        return manage(self.env, *args, wrapper=("sh", "scripts/serve_env.sh"))

    def pids(self) -> list[int]:
        """Every process of the server: supervisord and all its descendants (app server, nginx, listener, forwarder)."""
        return process_tree(self.supervisor_pid)

    def api_worker_pids(self) -> list[int]:
        """The app server's workers (the processes that answer DICOMweb), titled "pacs-api worker-N"."""
        return [pid for pid in self.pids() if "pacs-api" in _cmdline(pid) and _parent(pid) != self.supervisor_pid]


def serve_env(workdir: Path, database_url: str) -> dict[str, str]:
    """The environment `make run` gives scripts/serve.sh, with the database and var directory in `workdir`.

    Nothing benchmark-only: serve_env.sh fills in the rest (secret key generated into var/, plain
    HTTP on loopback, hosts), and every setting keeps its shipped default.
    """
    return {
        **_inherited_env(),
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "VIEWER_PORT": str(free_port()),
        "RADIOLOGY_DICOM_PORT": str(free_port()),
        "PACS_VAR_DIR": str(workdir / "var"),
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }


@contextlib.contextmanager
def serve_pacs(workdir: Path, database_url: str) -> Iterator[ServedPacs]:
    """Run scripts/serve.sh (migrate, collectstatic, check --deploy, then supervisord) and wait for /healthz."""
    env = serve_env(workdir, database_url)
    log_path = workdir / "serve.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            ["bash", "scripts/serve.sh"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{env['PORT']}"
    try:
        wait_until(
            lambda: process.poll() is None and requests.get(f"{base}/healthz", timeout=2).status_code == 200,
            "PACS-lite (scripts/serve.sh)",
            seconds=180,
            log=log_path,
        )
        yield ServedPacs(
            base=base,
            supervisor_pid=process.pid,
            env=env,
            dicom_port=int(env["RADIOLOGY_DICOM_PORT"]),
            command="HOST=127.0.0.1 DATABASE_URL=postgres://... bash scripts/serve.sh",
        )
    finally:
        stop_process_group(process, grace=40)


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc (children of every thread)."""
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                queue.extend(int(child) for child in (task / "children").read_text().split())
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def total_rss_mib(pids: list[int]) -> float:
    """The sum of the processes' VmRSS (shared pages counted in each, as `ps` and `top` show them)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, RuntimeError):
            total += status_kib(pid, "VmRSS")
    return total / 1024


@dataclass
class DicomListener:
    port: int
    pid: int
    command: str


@contextlib.contextmanager
def dicom_listener(env: dict[str, str], workdir: Path) -> Iterator[DicomListener]:
    """PACS-lite's DICOM listener on 127.0.0.1, started as supervisord's `dicom` program starts it.

    `env` says who may call (RADIOLOGY_DICOM_NODES). Up once it prints that it listens.
    """
    port = free_port()
    command = [str(VENV_BIN / "python"), "manage.py", "run_dicom_listener", "--host", "127.0.0.1", "--port", str(port)]
    log_path = workdir / "dicom-listener.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until(
            lambda: process.poll() is None and "DICOM listener " in log_path.read_text(errors="replace"),
            "the DICOM listener",
            log=log_path,
        )
        shown = " ".join(["python", *command[1:-1], "PORT"])
        yield DicomListener(port=port, pid=process.pid, command=shown)
    finally:
        stop_process_group(process, grace=30)


# --- Memory -------------------------------------------------------------------------------


def status_kib(pid: int, name: str) -> int:
    """VmRSS or VmHWM of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {name} for {pid}")


def _user_system_ticks(pid: int) -> tuple[int, int]:
    """(user, system) CPU time of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of a process, in clock ticks."""
    return sum(_user_system_ticks(pid))


def cpu_times(pids: list[int]) -> dict[int, tuple[int, int]]:
    """pid -> (user, system) CPU time in clock ticks, for the processes still there."""
    times = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            times[pid] = _user_system_ticks(pid)
    return times


def cpu_spent_ms(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> tuple[float, float]:
    """(user, system) milliseconds the processes of `after` spent since `before` (one started
    meanwhile counts from 0; one that ended meanwhile is not counted)."""
    per_tick = 1000 / os.sysconf("SC_CLK_TCK")
    user = sum(times[0] - before.get(pid, (0, 0))[0] for pid, times in after.items())
    system = sum(times[1] - before.get(pid, (0, 0))[1] for pid, times in after.items())
    return user * per_tick, system * per_tick


def tree_cpu_ticks(root: int) -> int:
    """cpu_ticks of `root` and all its descendants; a process that ends meanwhile counts as none."""
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_ticks(pid)
    return total


class TotalRssSampler:
    """The sum of several processes' VmRSS every 50 ms, in a thread: its peak and its mean."""

    interval = 0.05

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(total_rss_mib(self.pids))
            time.sleep(self.interval)

    @property
    def peak(self) -> float:
        return max(self.samples, default=0.0)

    def __enter__(self) -> TotalRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class RssSampler:
    """VmRSS of several processes every 20 ms, in a thread."""

    interval = 0.02

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peaks = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                with contextlib.suppress(OSError, RuntimeError):
                    self.peaks[pid] = max(self.peaks[pid], status_kib(pid, "VmRSS"))
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
