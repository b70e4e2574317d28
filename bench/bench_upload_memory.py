"""Memory of the app server worker while a ~1 GB DICOM file is uploaded, whole and in 64 MB chunks.

Run from the repository root:  .venv/bin/python bench/bench_upload_memory.py [--size-mb 1024] [--chunk-mb 64]

What it does, all in a temporary directory (never var/):
- migrates a throwaway SQLite database and creates the demo users and an order (seed_demo --json);
- writes a valid DICOM file of about --size-mb to disk without ever holding it in memory
  (apps/radiology/operations/large_dicom.py):
  pydicom writes the header of a multi-frame 16-bit image (1024 x 1024 x N frames,
  explicit VR little endian), then the PixelData element (OW, defined length) is appended
  frame by frame; the SHA-256 is computed while writing;
- starts the app server (config/app_server.py, granian) with one worker (filesystem store in
  the temp dir) and samples the worker's VmRSS from /proc/PID/status every 20 ms in a thread;
- uploads the file twice through the offline sync API as the demo radiology tech (each time
  a file with its own SOP Instance UID): (a) one PUT of the whole file, streamed from disk
  by requests; (b) PUTs of --chunk-mb chunks with Content-Range.
Prints, per mode, the worker's RSS before the PUT (idle), its peak during the upload, the
difference, and the throughput (file size / wall time from the first byte sent to the
201). Nothing is asserted about the figures; the upload itself must complete.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script, only bench/ is on the path

from apps.radiology.operations.large_dicom import write_large_multiframe  # noqa: E402

VENV_BIN = Path(sys.executable).parent
ROWS = COLUMNS = 1024
FRAME_BYTES = ROWS * COLUMNS * 2
MIB = 1024 * 1024
SAMPLE_SECONDS = 0.02


@dataclass(frozen=True)
class BigDicom:
    path: Path
    size: int
    checksum: str
    frames: int


def write_big_dicom(path: Path, *, frames: int, study_uid: str, series_uid: str, **identity: str) -> BigDicom:
    """A multi-frame 16-bit DICOM file written header first, then pixel data frame by frame (never
    whole in memory); `identity` (DICOM keywords, e.g. an order's accession and patient) replaces
    the bench patient."""
    attributes = {"PatientName": "Bench^Upload", "PatientID": "BENCH-1", **identity}
    checksum = write_large_multiframe(
        path,
        frames=frames,
        rows=ROWS,
        columns=COLUMNS,
        SOPInstanceUID=generate_uid(prefix=None),
        StudyInstanceUID=study_uid,
        SeriesInstanceUID=series_uid,
        StudyDate="20260115",
        Modality="OT",
        SeriesNumber=1,
        InstanceNumber=1,
        **attributes,
    )
    return BigDicom(path=path, size=path.stat().st_size, checksum=checksum, frames=frames)


class RssSampler:
    """VmRSS of one process every 20 ms, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for {self.pid}")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.rss_kib()))
            time.sleep(SAMPLE_SECONDS)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def peak_between(self, start: float, end: float) -> int:
        return max(rss for moment, rss in self.samples if start <= moment <= end)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [str(VENV_BIN / "python"), "manage.py", *args], cwd=ROOT, env=env, capture_output=True, check=True, timeout=300
    )
    return result.stdout.decode()


@contextlib.contextmanager
def app_server(env: dict[str, str], port: int, log_path: Path) -> Iterator[int]:
    """The app server (config/app_server.py) with one worker; yields the worker's pid once it answers."""
    with log_path.open("ab") as log:
        master = subprocess.Popen(
            [str(VENV_BIN / "python"), "-m", "config.app_server", "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env={**env, "PACS_WEB_WORKERS": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if master.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the app server did not start:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/api/v1/radiology/studies/", timeout=1).status_code == 401:
                    break
            time.sleep(0.1)
        children = Path(f"/proc/{master.pid}/task/{master.pid}/children").read_text().split()
        if len(children) != 1:
            raise RuntimeError(f"expected one worker, found {children}")
        yield int(children[0])
    finally:
        os.killpg(master.pid, signal.SIGTERM)
        try:
            master.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(master.pid, signal.SIGKILL)
            master.wait(timeout=15)


@dataclass(frozen=True)
class Figures:
    mode: str
    idle_kib: int
    peak_kib: int
    seconds: float
    size: int

    def row(self) -> str:
        idle, peak = self.idle_kib / 1024, self.peak_kib / 1024
        rate = self.size / MIB / self.seconds
        return f"{self.mode:<8} {idle:>10.1f} {peak:>10.1f} {peak - idle:>10.1f} {rate:>9.1f} {self.seconds:>9.1f}"


def upload(
    session: requests.Session, base: str, order_id: int, big: BigDicom, *, chunk_bytes: int | None
) -> requests.Response:
    """Declare the file, then PUT it whole (streamed from disk) or in chunks; return the last answer."""
    declared = session.post(
        f"{base}/api/v1/radiology/uploads/",
        json={
            "client_upload_id": str(uuid.uuid4()),
            "radiology_order": order_id,
            "filename": big.path.name,
            "file_size": big.size,
            "mime_type": "application/dicom",
            "checksum": big.checksum,
        },
        timeout=60,
    )
    if declared.status_code != 201:
        raise RuntimeError(f"POST failed: {declared.status_code} {declared.text}")
    binary = f"{base}/api/v1/radiology/uploads/{declared.json()['id']}/binary/"
    return _put(session, binary, big, chunk_bytes=chunk_bytes)


def _put(session: requests.Session, binary: str, big: BigDicom, *, chunk_bytes: int | None) -> requests.Response:
    headers = {"Content-Type": "application/octet-stream"}
    with big.path.open("rb") as handle:
        if chunk_bytes is None:
            return session.put(binary, data=handle, headers=headers, timeout=900)
        start = 0
        while True:
            chunk = handle.read(chunk_bytes)
            end = start + len(chunk) - 1
            response = session.put(
                binary, data=chunk, headers={**headers, "Content-Range": f"bytes {start}-{end}/{big.size}"}, timeout=900
            )
            if end + 1 == big.size or response.status_code != 202:
                return response
            start = end + 1


def measure(
    mode: str, session: requests.Session, base: str, order_id: int, big: BigDicom, worker_pid: int, chunk: int | None
) -> Figures:
    sampler = RssSampler(worker_pid)
    sampler.start()
    try:
        time.sleep(0.5)
        idle = sampler.rss_kib()
        started = time.monotonic()
        response = upload(session, base, order_id, big, chunk_bytes=chunk)
        finished = time.monotonic()
        time.sleep(0.1)
    finally:
        sampler.stop()
    body = response.json()
    if response.status_code != 201 or body["image"]["checksum"] != big.checksum:
        raise RuntimeError(f"{mode} upload did not complete: {response.status_code} {str(body)[:500]}")
    return Figures(mode, idle, sampler.peak_between(started, finished + 0.1), finished - started, big.size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="approximate file size in MiB (default 1024)")
    parser.add_argument("--chunk-mb", type=int, default=64, help="chunk size in MiB for the chunked mode (default 64)")
    arguments = parser.parse_args()
    frames = max(1, arguments.size_mb * MIB // FRAME_BYTES)

    with tempfile.TemporaryDirectory(prefix="pacs-bench-upload-") as workdir_name:
        workdir = Path(workdir_name)
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AWS_", "MINIO_", "RADIOLOGY_", "DATABASE_", "DJANGO_", "PACS_", "MEDIA_"))
        }
        env = {
            **inherited,
            "DJANGO_SETTINGS_MODULE": "config.test_settings",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DJANGO_LOG_LEVEL": "WARNING",
            "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}",
            "PACS_VAR_DIR": str(workdir / "var"),
            "MEDIA_ROOT": str(workdir / "media"),
            "RADIOLOGY_STAGING_DIR": str(workdir / "spool"),
            "RADIOLOGY_STORAGE": "filesystem",
            "RADIOLOGY_MAX_UPLOAD_SIZE": str(max(2 * 1024**3, (frames + 1) * FRAME_BYTES)),
        }
        manage(env, "migrate", "--noinput")
        seeded = json.loads(manage(env, "seed_demo", "--json", "--orders", "1").strip().splitlines()[-1])
        order_id = seeded["radiology_orders"][0]

        study_uid, series_uid = generate_uid(prefix=None), generate_uid(prefix=None)
        began = time.monotonic()
        files = [
            write_big_dicom(workdir / f"big_{name}.dcm", frames=frames, study_uid=study_uid, series_uid=series_uid)
            for name in ("whole", "chunked")
        ]
        print(
            f"file: {files[0].size / MIB:.1f} MiB ({files[0].size} bytes), {ROWS}x{COLUMNS} 16-bit x {frames} frames, "
            f"two written in {time.monotonic() - began:.1f} s"
        )

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with app_server(env, port, workdir / "app_server.log") as worker_pid:
            session = requests.Session()
            token = session.post(
                f"{base}/api/v1/auth/token/",
                json={"username": seeded["users"]["radtech"], "password": seeded["password"]},
                timeout=30,
            ).json()["token"]
            session.headers["Authorization"] = f"Token {token}"
            # Warm the worker up (imports, first queries) so "idle" is the resting size.
            session.get(f"{base}/api/v1/radiology/studies/", timeout=30)
            figures = [
                measure("whole", session, base, order_id, files[0], worker_pid, None),
                measure(
                    f"{arguments.chunk_mb}MB", session, base, order_id, files[1], worker_pid, arguments.chunk_mb * MIB
                ),
            ]

    print(
        "granian (config/app_server.py), 1 worker; "
        f"RSS of the worker in MiB, sampled every {SAMPLE_SECONDS * 1000:.0f} ms"
    )
    print(f"{'mode':<8} {'idle':>10} {'peak':>10} {'delta':>10} {'MiB/s':>9} {'seconds':>9}")
    for figure in figures:
        print(figure.row())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
