"""The DICOM listener under stress: a SIGKILL in the middle of an association, and a ~1 GB instance.

(a) `manage.py run_dicom_listener` runs as a real process, in a session of its own, with its
own database (a temporary SQLite file, or a fresh database on the suite's PostgreSQL server:
app_server.own_database), store and staging directory under tmp_path, migrated first.
storescu sends 20 small CT instances, a 256 MiB one, then 20 more, in one association; once
the 20 first are acknowledged and the big one is arriving (pynetdicom's file for it, named
*.dcm, has grown past 8 MiB in the staging or the temporary directory), the listener is
SIGKILLed. Then:
- every instance storescu saw acknowledged ("Received Store Response (Success)") has its row
  and its file, the file's dataset the one sent, its size and SHA-256 the row's;
- `manage.py purge_interrupted_ingests --older-than-minutes 0` leaves no file without a row
  in the store, and nothing in the staging directory nor in the listener's system temporary
  directory (its TMPDIR; the listener is down: nothing is under way);
  `manage.py verify_radiology_storage` finds no problem;
- the listener started again takes what was not acknowledged, sent again: every instance is stored.

(b) storescu sends a ~1 GB multi-frame instance (written to disk header first, then its pixel
data frame by frame: never whole in memory) to the listener in this process: success, its
row, the stored file's size, and the SHA-256 of its dataset equal to the sent file's. It takes
10 to 15 seconds on two cores (a minute at most); the big files are removed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pydicom
import pytest

from apps.radiology import storage
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import AuditEvent, RadiologyImage
from apps.radiology.operations.large_dicom import write_large_multiframe
from apps.radiology.tests.app_server import REPO, VENV_BIN, free_port, own_database, server_env
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.dimse.conftest import MODALITY_AE, Listener
from apps.radiology.tests.dimse.test_listener import ct_file, run_dcmtk
from apps.radiology.tests.ingest.test_crash_safety import query, stored_files

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk (make system-packages) is not installed"),
]

MIB = 1024 * 1024
ROWS = COLUMNS = 1024
FRAME_BYTES = ROWS * COLUMNS * 2
START_SECONDS = 60
ACKNOWLEDGED = "Received Store Response (Success)"
LISTENER_AE = "PACSLITE"  # RADIOLOGY_DICOM_AE_TITLE's default: server_env passes no RADIOLOGY_ variable on


# --- A big instance on disk -------------------------------------------------------------------------


@dataclass(frozen=True)
class BigInstance:
    path: Path
    image_uid: str
    size: int
    dataset_sha256: str  # of the dataset part: what storescu sends and the listener stores after its own meta


def write_big_instance(
    path: Path, *, frames: int, study_uid: str, accession: str = "", patient_id: str = ""
) -> BigInstance:
    """A multi-frame 16-bit instance written header first, then its pixel data frame by frame."""
    image_uid = generate_uid()
    dataset_sha256 = write_large_multiframe(
        path,
        frames=frames,
        rows=ROWS,
        columns=COLUMNS,
        digest_of="dataset",
        SOPInstanceUID=image_uid,
        StudyInstanceUID=study_uid,
        SeriesInstanceUID=generate_uid(),
        AccessionNumber=accession,
        PatientID=patient_id,
        PatientName="Big^Instance",
        StudyDate="20260115",
        Modality="OT",
        SeriesNumber=9,
        InstanceNumber=1,
    )
    return BigInstance(path, image_uid, path.stat().st_size, dataset_sha256)


def dataset_sha256(handle: IO[bytes]) -> tuple[str, int]:
    """SHA-256 and size of a Part 10 file's dataset part, read in chunks from `handle`."""
    head = handle.read(144)
    assert head[128:136] == b"DICM\x02\x00\x00\x00"  # (0002,0000) File Meta Information Group Length
    (group_length,) = struct.unpack("<I", head[140:144])
    handle.read(group_length)
    digest, size = hashlib.sha256(), 0
    while chunk := handle.read(8 * MIB):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


# --- (a) The listener as a process, killed ----------------------------------------------------------


@dataclass
class ListenerProcess:
    """`manage.py run_dicom_listener` with its own database and directories (one per test)."""

    env: dict[str, str]
    database_url: str
    media_root: Path
    staging_dir: Path
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    clients: list[subprocess.Popen[str]] = field(default_factory=list)  # storescu runs, stopped at the end

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 (manage.py with the test's own arguments)
            [str(VENV_BIN / "python"), "manage.py", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (manage.py with the test's own arguments)
                [str(VENV_BIN / "python"), "manage.py", "run_dicom_listener", "--port", str(self.port)],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_SECONDS
        while True:  # until it answers a C-ECHO
            assert self.process.poll() is None, f"the listener exited:\n{self.log_tail()}"
            echo = run_dcmtk("echoscu", "-aet", MODALITY_AE, "-aec", LISTENER_AE, "127.0.0.1", str(self.port))
            if echo.returncode == 0:
                return
            assert time.monotonic() < deadline, f"the listener did not answer:\n{self.log_tail()}"
            time.sleep(0.2)

    def kill(self) -> None:
        """A power cut: SIGKILL to the listener's whole session."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> int:
        """SIGTERM (supervisord's stop); the exit code."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self.process = None
        return code

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def image_rows(self) -> dict[str, tuple[str, str, int]]:
        """SOP Instance UID -> (file key, SHA-256, size) of every image row."""
        rows = query(self.database_url, "SELECT image_uid, file_key, checksum, file_size FROM radiology_radiologyimage")
        return {uid: (key, checksum, size) for uid, key, checksum, size in rows}

    def unmatched_keys(self) -> set[str]:
        rows = query(self.database_url, "SELECT file_key FROM radiology_unmatchedimage WHERE status = 'pending'")
        return {key for (key,) in rows}

    def staging_entries(self) -> list[str]:
        return sorted(os.listdir(self.staging_dir)) if self.staging_dir.exists() else []

    def receiving(self, *, over: int) -> bool:
        """Whether pynetdicom's file of an instance arriving (NamedTemporaryFile(suffix=".dcm"), in the
        staging directory where run_dicom_listener puts it, or TMPDIR) has grown past `over` bytes."""
        for folder in (self.staging_dir, Path(self.env["TMPDIR"])):
            for path in folder.glob("*.dcm") if folder.exists() else ():
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_size > over:
                        return True
        return False

    def temporary_entries(self) -> list[str]:
        """What is in the process's system temporary directory (TMPDIR)."""
        return sorted(os.listdir(self.env["TMPDIR"]))


@pytest.fixture
def listener_process(tmp_path: Path) -> Iterator[ListenerProcess]:
    with own_database(tmp_path, "dicom_listener") as database_url:
        port = free_port()
        env = server_env(
            tmp_path,
            database_url,
            RADIOLOGY_DICOM_NODES=f"{MODALITY_AE}@127.0.0.1:modality",
            RADIOLOGY_DICOM_PORT=str(port),
            TMPDIR=str(tmp_path / "tmp"),  # its system temporary directory too is the test's to look at
        )
        (tmp_path / "tmp").mkdir()
        running = ListenerProcess(
            env, database_url, tmp_path / "media", tmp_path / "staging", port, tmp_path / "listener.log"
        )
        migrated = running.manage("migrate", "--noinput")
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        try:
            yield running
        finally:
            if running.process is not None:  # whatever the test did: nothing outlives it
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(running.process.pid, signal.SIGKILL)
                running.process.wait(timeout=30)
            for client in running.clients:
                if client.poll() is None:
                    client.kill()
                    client.wait(timeout=30)
            remove_big_files(tmp_path)


def remove_big_files(folder: Path) -> None:
    """Files over 64 MiB under `folder` (pytest keeps the tmp dirs of recent runs)."""
    for path in folder.rglob("*"):
        if path.is_file() and path.stat().st_size > 64 * MIB:
            path.unlink()


CREATE_ORDER = """
import json
from apps.emr.models import Patient, Visit
from apps.radiology.models import RadiologyOrder
patient = Patient.objects.create(hospital_number="KILL-00001", first_name="Ada", last_name="Eze", sex="F")
visit = Visit.objects.create(patient=patient, visit_date="2026-01-15", reason="Test visit")
order = RadiologyOrder.objects.create(visit=visit, modality="CT", exam_requested="CT Head")
print(json.dumps({"accession": order.accession_number, "patient_id": patient.hospital_number}))
"""


class StorescuOutput:
    """storescu -v in the background: its output lines as they come, and the files it saw acknowledged."""

    def __init__(self, listener: ListenerProcess, paths: list[Path]) -> None:
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.process = subprocess.Popen(  # noqa: S603 (storescu with the test's own arguments)
            [  # noqa: S607 (dcmtk from PATH, as test_listener.py runs it)
                "storescu",
                "-v",
                "-aet",
                MODALITY_AE,
                "-aec",
                LISTENER_AE,
                "127.0.0.1",
                str(listener.port),
                *[str(path) for path in paths],
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        listener.clients.append(self.process)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def acknowledged(self) -> list[str]:
        """The files whose C-STORE was answered with success, in order ("Sending file: X" then the response)."""
        done, current = [], None
        with self.changed:
            lines = list(self.lines)
        for line in lines:
            if "Sending file: " in line:
                current = line.split("Sending file: ", 1)[1].strip()
            elif ACKNOWLEDGED in line and current is not None:
                done.append(current)
                current = None
        return done

    def wait_for_acknowledged(self, count: int, *, within: float) -> None:
        """Until `count` C-STOREs were answered with success (storescu still sending)."""
        deadline = time.monotonic() + within
        with self.changed:
            while sum(1 for line in self.lines if ACKNOWLEDGED in line) < count:
                assert self.reader.is_alive(), "\n".join(self.lines[-20:])
                assert time.monotonic() < deadline, "\n".join(self.lines[-20:])
                self.changed.wait(timeout=1)

    def finish(self) -> int:
        code = self.process.wait(timeout=120)
        self.reader.join(timeout=30)
        return code


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_a_sigkill_mid_association_loses_nothing_acknowledged_and_the_purge_leaves_rows_and_files_in_step(
    listener_process: ListenerProcess, tmp_path: Path
) -> None:
    created = listener_process.manage("shell", "-c", CREATE_ORDER)
    assert created.returncode == 0, created.stderr[-3000:]
    order = json.loads(created.stdout.strip().splitlines()[-1])
    study_uid = generate_uid()
    folder = tmp_path / "send"
    folder.mkdir()
    small = []
    for number in range(1, 41):
        path = folder / f"ct_{number:02d}.dcm"
        path.write_bytes(
            ct_file(accession=order["accession"], patient_id=order["patient_id"], study_uid=study_uid, instance=number)
        )
        small.append(path)
    big = write_big_instance(
        folder / "big.dcm",
        frames=256 * MIB // FRAME_BYTES,
        study_uid=study_uid,
        accession=order["accession"],
        patient_id=order["patient_id"],
    )
    sent = [*small[:20], big.path, *small[20:]]
    listener_process.start()

    storescu = StorescuOutput(listener_process, sent)
    storescu.wait_for_acknowledged(20, within=120)
    # The big instance is arriving: pynetdicom writes it to a temporary file as it comes.
    deadline = time.monotonic() + 120
    while not listener_process.receiving(over=8 * MIB):
        assert storescu.process.poll() is None, "\n".join(storescu.lines[-20:])
        assert time.monotonic() < deadline, "\n".join(storescu.lines[-20:])
        time.sleep(0.005)
    listener_process.kill()
    assert storescu.finish() != 0  # the association was cut
    acknowledged = storescu.acknowledged()

    # Nothing acknowledged is lost: each has its row, and its file holds what was sent. (The 20
    # first; the big one too only if its answer went out between the look and the kill.)
    assert len(acknowledged) >= 20
    assert acknowledged == [str(path) for path in sent[: len(acknowledged)]]
    rows = listener_process.image_rows()
    for name in acknowledged:
        key, checksum, size = rows[uid_of(Path(name))]
        digest = hashlib.sha256()
        with (listener_process.media_root / key).open("rb") as stored:
            while chunk := stored.read(8 * MIB):
                digest.update(chunk)
            assert (digest.hexdigest(), stored.tell()) == (checksum, size)
            stored.seek(0)
            assert dataset_sha256(stored) == dataset_sha256_of(Path(name))
    assert set(rows) <= {uid_of(path) for path in sent}

    # The purge: no stored file without its row, nothing left in the staging directory.
    without_rows = stored_files(listener_process.media_root, storage.KEY_PREFIX) - {key for key, *_ in rows.values()}
    purged = listener_process.manage("purge_interrupted_ingests", "--older-than-minutes", "0")
    assert purged.returncode == 0, purged.stderr[-3000:]
    assert purged.stdout.splitlines()[-1] == f"Removed {len(without_rows)} file(s) left by interrupted ingests."
    rows = listener_process.image_rows()
    assert stored_files(listener_process.media_root, storage.KEY_PREFIX) == {key for key, *_ in rows.values()}
    assert stored_files(listener_process.media_root, storage.UNMATCHED_PREFIX) == listener_process.unmatched_keys()
    assert listener_process.staging_entries() == []
    assert listener_process.temporary_entries() == []
    verified = listener_process.manage("verify_radiology_storage", "--no-progress")
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]

    # Started again, the listener takes what was not acknowledged: every instance is stored.
    listener_process.start()
    again = StorescuOutput(listener_process, [path for path in sent if str(path) not in acknowledged])
    assert again.finish() == 0, "\n".join(again.lines[-20:])
    assert listener_process.stop() == 0, listener_process.log_tail()
    rows = listener_process.image_rows()
    assert set(rows) == {uid_of(path) for path in sent}
    assert rows[big.image_uid][2] == (listener_process.media_root / rows[big.image_uid][0]).stat().st_size
    with (listener_process.media_root / rows[big.image_uid][0]).open("rb") as handle:
        assert dataset_sha256(handle) == (big.dataset_sha256, big.size - dataset_offset(big.path))
    assert listener_process.staging_entries() == []


def dataset_sha256_of(path: Path) -> tuple[str, int]:
    with path.open("rb") as handle:
        return dataset_sha256(handle)


def dataset_offset(path: Path) -> int:
    """Where a Part 10 file's dataset starts (after preamble, DICM and the File Meta group)."""
    with path.open("rb") as handle:
        head = handle.read(144)
    return 144 + struct.unpack("<I", head[140:144])[0]


# --- (b) A ~1 GB instance -----------------------------------------------------------------------------


@pytest.fixture
def big_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Any) -> Iterator[Path]:
    """A folder for the big instance; pynetdicom's received file on the staging disk, as run_dicom_listener
    puts it; every file under tmp_path removed at the end (pytest keeps tmp dirs of recent runs)."""
    settings.RADIOLOGY_STAGING_DIR.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(tempfile, "tempdir", str(settings.RADIOLOGY_STAGING_DIR))
    folder = tmp_path / "big"
    folder.mkdir()
    yield folder
    remove_big_files(tmp_path)


def test_storescu_of_a_1_gb_instance_is_stored_whole(
    dicom_listener: Listener, make_order: MakeOrder, big_files: Path, settings: Any
) -> None:
    order = make_order()
    big = write_big_instance(
        big_files / "big.dcm",
        frames=1024 * MIB // FRAME_BYTES,
        study_uid=generate_uid(),
        accession=order.accession_number,
        patient_id=order.visit.patient.hospital_number,
    )
    assert big.size > 1024 * MIB

    result = run_dcmtk(
        "storescu",
        "-v",
        "-aet",
        MODALITY_AE,
        "-aec",
        dicom_listener.ae_title,
        "127.0.0.1",
        dicom_listener.port,
        big.path,
    )

    assert result.returncode == 0, result.stderr
    assert ACKNOWLEDGED in result.stdout + result.stderr
    image = RadiologyImage.objects.select_related("series__study").get()
    assert (image.image_uid, image.series.study.radiology_order_id) == (big.image_uid, order.pk)
    assert image.number_of_frames == 1024 * MIB // FRAME_BYTES
    with storage.radiology_storage().open(image.file_key, "rb") as handle:
        digest, dataset_size = dataset_sha256(handle)
    assert (digest, dataset_size) == (big.dataset_sha256, big.size - dataset_offset(big.path))
    assert storage.radiology_storage().size(image.file_key) == image.file_size
    events = AuditEvent.objects.filter(channel="dicom").order_by("id")
    assert [(event.method, event.status_code, event.image_id) for event in events] == [
        ("ASSOCIATE", 200, None),
        ("C-STORE", 201, image.pk),
    ]
    assert sorted(os.listdir(settings.RADIOLOGY_STAGING_DIR)) == []
