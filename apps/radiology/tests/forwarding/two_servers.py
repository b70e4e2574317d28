"""A clinic and a regional PACS-lite on 127.0.0.1, the clinic's forwarder, and the bad link between them.

Used by test_two_servers.py and bench/forward.py. Each side is a real app server (the suite's
AppServer: its own process group, so a SIGKILL takes master and workers at once) with its
own database (own_database: a temporary SQLite file, or a fresh database on the suite's
PostgreSQL server) and its own media, var and staging directories. The regional server has a
forwarding-clinic account made by `manage.py create_forwarding_clinic`; the clinic's server and
forwarder (`manage.py run_forwarder`, also its own process group) are configured with
RADIOLOGY_FORWARD_DESTINATIONS=regional=all@<the proxy> and that account's token, so every byte
between them crosses the FaultProxy. Backoff and timeouts are short: minutes of a real outage
become seconds of test time.

Orders are seeded on both sides with the same accession numbers and patients (the regional
EMR knows the clinic's orders), with `manage.py shell -c`. Images go into the clinic by its
real ways in: STOW-RS, and the upload sync protocol for a big file. Each side's database can
be read from the test with a plain connection (`Side.query`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import psycopg2
import pydicom
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from apps.radiology.operations.large_dicom import write_large_multiframe
from apps.radiology.tests.app_server import (
    REPO,
    VENV_BIN,
    AppServer,
    OwnProcessGroup,
    own_database,
    server_env,
)
from apps.radiology.tests.forwarding.fault_proxy import FaultProxy

CLINIC_NAME = "Ikeja Clinic"
CLINIC_USERNAME = "ikeja"
DESTINATION = "regional"
STOW_PATH = "/api/v1/radiology/dicomweb/studies"
UPLOADS_PATH = "/api/v1/radiology/uploads/"
HTTP_TIMEOUT = 120  # seconds for one request to a server of our own (no proxy in between)
_TOKEN = re.compile(r"\b[0-9a-f]{40}\b")

# manage.py shell -c: create (or find) each patient and give it a new order with the given accession.
_SEED_ORDERS = """
import datetime, json
from apps.emr.models import Patient, Visit
from apps.radiology.models import RadiologyOrder
made = {}
for spec in json.loads(%r):
    patient, _ = Patient.objects.get_or_create(
        hospital_number=spec["patient_id"],
        defaults={"first_name": spec["first_name"], "last_name": spec["last_name"]},
    )
    visit = Visit.objects.create(patient=patient, visit_date=datetime.date.today(), reason="Forwarding test")
    order = RadiologyOrder.objects.create(
        visit=visit, modality=spec["modality"], exam_requested=spec["exam"], accession_number=spec["accession"]
    )
    made[spec["accession"]] = order.pk
print(json.dumps(made))
"""


@dataclass(frozen=True)
class OrderSpec:
    """An order as both EMRs know it."""

    accession: str
    patient_id: str
    first_name: str = "Amaka"
    last_name: str = "Obi"
    modality: str = "CT"
    exam: str = "CT Head without contrast"


@dataclass
class Side:
    """One PACS-lite: its server, database, directories, and a radiology tech's token."""

    name: str
    root: Path
    database_url: str
    env: dict[str, str]
    server: AppServer
    tokens: dict[str, str] = field(default_factory=dict)
    orders: dict[str, int] = field(default_factory=dict)  # accession -> order id

    @property
    def media_root(self) -> Path:
        return self.root / "media"

    @property
    def staging_dir(self) -> Path:
        return self.root / "staging"

    @property
    def url(self) -> str:
        return self.server.url

    def query(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One read-only statement on this side's database ("%s" placeholders on both engines)."""
        if self.database_url.startswith("sqlite:///"):
            path = urlsplit(self.database_url).path
            with contextlib.closing(sqlite3.connect(path, timeout=30)) as connection:
                return list(connection.execute(statement.replace("%s", "?"), params).fetchall())
        with contextlib.closing(psycopg2.connect(self.database_url)) as connection, connection.cursor() as cursor:
            cursor.execute(statement, params)
            return list(cursor.fetchall())

    def seed_orders(self, specs: list[OrderSpec]) -> dict[str, int]:
        payload = json.dumps([spec.__dict__ for spec in specs])
        made: dict[str, int] = json.loads(self.server.manage("shell", "-c", _SEED_ORDERS % payload).splitlines()[-1])
        self.orders.update(made)
        return made

    def session(self, role: str = "radtech") -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {self.tokens[role]}"
        return session

    def stow(self, instances: list[bytes], *, role: str = "radtech") -> dict[str, Any]:
        """STOW-RS the instances (each goes to the order of its AccessionNumber); 200 expected."""
        boundary = f"stow-{uuid.uuid4().hex}"
        body = io.BytesIO()
        for instance in instances:
            body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            body.write(instance)
            body.write(b"\r\n")
        body.write(f"--{boundary}--\r\n".encode())
        response = self.session(role).post(
            f"{self.url}{STOW_PATH}",
            data=body.getvalue(),
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
            timeout=HTTP_TIMEOUT,
        )
        assert response.status_code == 200, f"{self.name} STOW-RS: {response.status_code} {response.text[:2000]}"
        return response.json()  # type: ignore[no-any-return]

    def upload(self, path: Path, *, accession: str, checksum: str) -> dict[str, Any]:
        """Send a file on disk by the upload sync protocol (metadata, then the whole body streamed)."""
        session = self.session()
        response = session.post(
            f"{self.url}{UPLOADS_PATH}",
            json={
                "client_upload_id": str(uuid.uuid4()),
                "radiology_order": self.orders[accession],
                "filename": path.name,
                "file_size": path.stat().st_size,
                "mime_type": "application/dicom",
                "checksum": checksum,
            },
            timeout=HTTP_TIMEOUT,
        )
        assert response.status_code == 201, f"{self.name} upload: {response.status_code} {response.text[:2000]}"
        upload_id = response.json()["id"]
        with path.open("rb") as handle:
            response = session.put(
                f"{self.url}{UPLOADS_PATH}{upload_id}/binary/",
                data=handle,
                headers={"Content-Type": "application/octet-stream"},
                timeout=HTTP_TIMEOUT,
            )
        assert response.status_code in (200, 201), f"{self.name} binary: {response.status_code} {response.text[:2000]}"
        body: dict[str, Any] = response.json()
        assert body["status"] == "completed", body
        return body

    def stored_sha256(self, file_key: str) -> str:
        """SHA-256 of a stored file (filesystem store: MEDIA_ROOT/<key>)."""
        return file_sha256(self.media_root / file_key)

    def leftover_files(self) -> list[str]:
        """Files left in the staging directory and staged upload chunks left in the store."""
        places = [self.staging_dir, self.media_root / "staging"]
        return sorted(str(path) for place in places if place.exists() for path in place.rglob("*") if path.is_file())


class Forwarder(OwnProcessGroup):
    """`manage.py run_forwarder` of the clinic, in its own process group (so a test can SIGKILL it)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(log_path)
        self.env = env
        self.starts = 0

    def start(self) -> None:
        assert self.process is None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (our own argv)
                [str(VENV_BIN / "python"), "manage.py", "run_forwarder"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class TwoServers:
    regional: Side
    clinic: Side
    proxy: FaultProxy
    forwarder: Forwarder
    clinic_token: str  # the forwarding-clinic account's token on the regional side

    def seed_orders(self, specs: list[OrderSpec], *, regional_too: bool = True) -> None:
        """The same orders on both sides (or on the clinic only: the regional EMR does not know them)."""
        self.clinic.seed_orders(specs)
        if regional_too:
            self.regional.seed_orders(specs)

    def logs(self) -> str:
        """Every process's log tail, for an assertion message."""
        return "\n".join(
            [
                f"--- forwarder (started {self.forwarder.starts}x) ---\n{self.forwarder.log_tail()}",
                f"--- clinic app server ---\n{self.clinic.server.log_tail()}",
                f"--- regional app server ---\n{self.regional.server.log_tail()}",
            ]
        )

    def wait_for(self, condition: Callable[[], bool], what: str, *, seconds: float) -> None:
        """Poll `condition` until true; fail with every log if it is not within `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(sqlite3.OperationalError, psycopg2.OperationalError):
                if condition():
                    return
            time.sleep(0.2)
        raise AssertionError(f"{what}: not within {seconds:.0f} s\n{self.logs()}")


def forwarding_env(proxy_url: str, token: str, **overrides: str) -> dict[str, str]:
    """The clinic's forwarding settings: one destination behind the proxy, short backoff and timeouts."""
    return {
        "RADIOLOGY_FORWARD_DESTINATIONS": f"{DESTINATION}=all@{proxy_url}",
        "RADIOLOGY_FORWARD_TOKEN_REGIONAL": token,
        "RADIOLOGY_FORWARD_BACKOFF_SECONDS": "1",
        "RADIOLOGY_FORWARD_BACKOFF_MAX_SECONDS": "2",
        "RADIOLOGY_FORWARD_TIMEOUT_SECONDS": "5",
        "RADIOLOGY_FORWARD_LEASE_SECONDS": "30",
        **overrides,
    }


def create_forwarding_clinic(regional: Side, name: str = CLINIC_NAME, username: str = CLINIC_USERNAME) -> str:
    """`manage.py create_forwarding_clinic` on the regional side; the token it prints once."""
    printed = regional.server.manage("create_forwarding_clinic", name, "--username", username)
    tokens = _TOKEN.findall(printed)
    assert len(tokens) == 1, f"create_forwarding_clinic printed no single token: {printed!r}"
    return tokens[0]


def _side(name: str, root: Path, database_url: str, **extra: str) -> Side:
    root.mkdir(parents=True, exist_ok=True)
    env = server_env(root, database_url, **extra)
    return Side(name, root, database_url, env, AppServer(env, root / "app_server.log"))


def _start(side: Side) -> None:
    seeded = side.server.seed_and_start()
    side.tokens = seeded["tokens"]


@contextlib.contextmanager
def two_servers(
    tmp_path: Path, *, seed: int = 0, start_forwarder: bool = True, **clinic_settings: str
) -> Iterator[TwoServers]:
    """Regional server, proxy to it, clinic server and forwarder, all up; everything stopped after.

    `clinic_settings` override forwarding_env's (e.g. RADIOLOGY_FORWARD_IN_FLIGHT="2").
    """
    with own_database(tmp_path, "regional") as regional_db, own_database(tmp_path, "clinic") as clinic_db:
        regional = _side("regional", tmp_path / "regional", regional_db)
        clinic: Side | None = None
        forwarder: Forwarder | None = None
        proxy = FaultProxy("127.0.0.1", regional.server.port, seed=seed)
        try:
            _start(regional)
            token = create_forwarding_clinic(regional)
            proxy.start()
            clinic = _side(
                "clinic", tmp_path / "clinic", clinic_db, **forwarding_env(proxy.url, token, **clinic_settings)
            )
            _start(clinic)
            forwarder = Forwarder(clinic.env, clinic.root / "forwarder.log")
            if start_forwarder:
                forwarder.start()
            yield TwoServers(regional, clinic, proxy, forwarder, token)
        finally:
            if forwarder is not None:
                forwarder.stop()
            if clinic is not None:
                clinic.server.stop()
            proxy.close()
            regional.server.stop()


# --- Real DICOM files ---------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def sop_instance_uid(content: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True).SOPInstanceUID)


@dataclass(frozen=True)
class StudyFiles:
    """The UIDs of one study as the modality labels it, for one order."""

    order: OrderSpec
    study_uid: str = field(default_factory=generate_uid)

    def ct_instances(
        self,
        count: int,
        *,
        series_number: int = 1,
        first_number: int = 1,
        instance_uids: list[str] | None = None,
        sample: str = "CT_small.dcm",
    ) -> list[bytes]:
        """`count` copies of a pydicom sample (real CT pixels) in one new series of this study,
        each with a fresh SOP Instance UID (or the given ones), labelled with the order's
        accession and patient."""
        dataset = pydicom.dcmread(sample_path(sample))
        dataset.StudyInstanceUID = self.study_uid
        dataset.SeriesInstanceUID = generate_uid()
        dataset.SeriesNumber = series_number
        dataset.AccessionNumber = self.order.accession
        dataset.PatientID = self.order.patient_id
        dataset.PatientName = f"{self.order.last_name}^{self.order.first_name}"
        instances = []
        for index in range(count):
            uid = instance_uids[index] if instance_uids else generate_uid()
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = uid
            dataset.InstanceNumber = first_number + index
            buffer = io.BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)
            instances.append(buffer.getvalue())
        return instances

    def large_instance(
        self, path: Path, *, frames: int, rows: int = 512, columns: int = 512, ct_like: bool = True
    ) -> str:
        """A multi-frame instance of this study written to `path` (large_dicom.py); its SHA-256.

        ct_like: its frames are made to compress as a real CT's do (ct_like_frames), not as
        large_dicom.py's repeated ramp, which zstd shrinks a hundredfold.
        """
        digest = write_large_multiframe(
            path,
            frames=frames,
            rows=rows,
            columns=columns,
            SOPInstanceUID=generate_uid(),
            StudyInstanceUID=self.study_uid,
            SeriesInstanceUID=generate_uid(),
            SeriesNumber=90,
            InstanceNumber=1,
            Modality=self.order.modality,
            AccessionNumber=self.order.accession,
            PatientID=self.order.patient_id,
            PatientName=f"{self.order.last_name}^{self.order.first_name}",
        )
        if not ct_like:
            return digest
        frame_bytes = rows * columns * 2
        with path.open("r+b") as handle:
            handle.seek(path.stat().st_size - frames * frame_bytes)  # the Pixel Data's value: the file's end
            for frame in ct_like_frames(
                frames, rows, columns, seed=int(hashlib.sha256(self.study_uid.encode()).hexdigest()[:8], 16)
            ):
                handle.write(frame)
        return file_sha256(path)


def ct_like_frames(frames: int, rows: int, columns: int, *, seed: int) -> Iterator[bytes]:
    """12-bit frames that compress losslessly about as a real CT's do (zstd level 3: 2.0x; pydicom's
    real CT_small.dcm: 1.5x): a body of soft tissue with an organ and a bone ring drifting from
    slice to slice, in air, plus Gaussian noise of 12 units, CT-like; each frame differs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    cy, cx = rows / 2, columns / 2
    for number in range(frames):
        drift = 1.0 + 0.1 * np.sin(number / 15)
        body = ((y - cy) / (0.42 * rows)) ** 2 + ((x - cx) / (0.47 * columns)) ** 2 < 1
        organ = ((y - cy * 0.9) / (0.15 * rows * drift)) ** 2 + ((x - cx * 1.2) / (0.12 * columns)) ** 2 < 1
        ring = np.abs(np.hypot(y - cy, x - cx) - 0.3 * rows * drift) < 6
        image = np.where(body, 1040.0, 24.0) + 60.0 * organ + 900.0 * ring
        image += rng.normal(0.0, 12.0, size=(rows, columns))
        yield np.clip(image, 0, 4095).astype("<u2").tobytes()


def sample_path(name: str) -> Path:
    """One of pydicom's bundled test files (offline)."""
    found = get_testdata_file(name)
    assert found is not None, f"pydicom sample {name} is not bundled"
    return Path(str(found))
