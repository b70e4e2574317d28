"""Crash safety: a real server SIGKILLed while uploads are being ingested keeps rows and files in step.

The server is the app server (granian, 2 workers) in its own process group, with its own database (a
temporary SQLite file, or a fresh database CREATEd on the suite's PostgreSQL server and
dropped afterwards), media, staging and var directories under tmp_path, migrated with
`manage.py migrate` and given users by `manage.py seed_demo --json`. In each of three
rounds, eight radiology-tech clients (threads) upload eight distinct DICOM files at once,
half in 4 KB chunks with Content-Range and half as whole-body PUTs, and the test SIGKILLs
the whole process group inside the n-th ingest of the round (n seeded-random from 1 to 3;
an ingest is under way while its spool file exists in the staging directory) or, in the
second round, the moment an ingest has written its file and not yet committed its rows.
Then, with the server started again:
- no image row lacks its file: every row's file_key exists and hashes to its checksum;
- a file without its row can only be one of the round's files in flight (a worker killed
  between writing the file and committing its rows cannot take it back), and
  `manage.py purge_interrupted_ingests` removes it (and the killed ingests' spool files):
  afterwards no stored file under radiology/ lacks its row;
- every interrupted upload resumes (its state fetched, then the rest sent from
  received_bytes with Content-Range, or the whole body PUT again) and completes;
- at the end there is exactly one image per file sent, each holding that file's bytes, and
  no staged chunk is left behind.
Every request has a timeout and the whole test a deadline, so it stops by itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import pydicom
import pytest
import requests

from apps.radiology import storage
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.operations.demo import relabelled_dicom, sample_path
from apps.radiology.pacs_lite_service import PACSLiteService
from apps.radiology.tests.app_server import AppServer, own_database, server_env
from apps.radiology.tests.conftest import IngestFile, MakeOrder
from apps.radiology.tests.factories import read_stored, stored_keys
from apps.radiology.tests.upload_helpers import DeviceFile, metadata, sha256_hex

SEED = 20260116
ROUNDS = 3
FILES_PER_ROUND = 8
CHUNK_SIZE = 4096
TIMEOUT = 10  # seconds for any one HTTP request
DEADLINE = 80  # seconds for the whole test after the server first answers
SAMPLES = ("CT_small.dcm", "MR_small.dcm", "JPEG-lossy.dcm", "rtdose.dcm")
UPLOADS = "/api/v1/radiology/uploads/"


# --- The server's database, seen from outside --------------------------------------------------


def query(database_url: str, statement: str) -> list[tuple[Any, ...]]:
    """Run one read-only statement against the server's database (SQLite file or PostgreSQL)."""
    if database_url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(urlsplit(database_url).path, timeout=30)) as connection:
            return list(connection.execute(statement).fetchall())
    with contextlib.closing(psycopg2.connect(database_url)) as connection, connection.cursor() as cursor:
        cursor.execute(statement)
        return list(cursor.fetchall())


# --- The server ---------------------------------------------------------------------------------


@dataclass
class Deployment:
    server: AppServer
    database_url: str
    media_root: Path
    staging_dir: Path
    order_id: int
    radtech_token: str


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with own_database(tmp_path, "crash") as database_url:
        env = server_env(tmp_path, database_url)
        server = AppServer(env, tmp_path / "app_server.log")
        try:
            seeded = server.seed_and_start()
            yield Deployment(
                server=server,
                database_url=database_url,
                media_root=tmp_path / "media",
                staging_dir=tmp_path / "staging",
                order_id=seeded["radiology_orders"][0],
                radtech_token=seeded["tokens"]["radtech"],
            )
        finally:
            server.stop()


# --- The clients ------------------------------------------------------------------------------


@dataclass
class Upload:
    """One file a client sends, and what the client knows of it."""

    name: str
    content: bytes
    chunked: bool
    image_uid: str
    client_upload_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    upload_id: int | None = None
    received: int = 0
    image: dict[str, Any] | None = None

    @property
    def checksum(self) -> str:
        return sha256_hex(self.content)

    def metadata(self, order_id: int) -> dict[str, Any]:
        return metadata(order_id, DeviceFile(self.name, self.content), client_upload_id=self.client_upload_id)


class ServerError(AssertionError):
    """The server answered 5xx: never acceptable, even around a crash."""


class Client:
    """A radiology tech's device: one token, one session; stops at the first connection failure."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {deployment.radtech_token}"

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self.session.request(method, f"{self.deployment.server.url}{path}", timeout=TIMEOUT, **kwargs)
        if response.status_code >= 500:
            raise ServerError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response

    def _learn(self, upload: Upload, response: requests.Response, *, expect: tuple[int, ...]) -> dict[str, Any]:
        assert response.status_code in expect, (upload.name, response.status_code, response.text[:300])
        body: dict[str, Any] = response.json()
        assert body["status"] in ("pending", "completed"), (upload.name, body)
        upload.upload_id = body["id"]
        upload.received = body["received_bytes"]
        if body["status"] == "completed":
            upload.image = body["image"]
        return body

    def declare(self, upload: Upload) -> None:
        """POST the metadata; a repeat (same client_upload_id) returns the upload as it stands."""
        response = self._send("POST", UPLOADS, json=upload.metadata(self.deployment.order_id))
        self._learn(upload, response, expect=(200, 201))

    def refresh(self, upload: Upload) -> None:
        self._learn(upload, self._send("GET", f"{UPLOADS}{upload.upload_id}/"), expect=(200,))

    def send_next(self, upload: Upload) -> None:
        """One step: the next chunk from received_bytes, or the whole body."""
        path = f"{UPLOADS}{upload.upload_id}/binary/"
        headers = {"Content-Type": "application/octet-stream"}
        if not upload.chunked:
            self._learn(upload, self._send("PUT", path, data=upload.content, headers=headers), expect=(200, 201))
            return
        start = upload.received
        end = min(start + CHUNK_SIZE, len(upload.content)) - 1
        headers["Content-Range"] = f"bytes {start}-{end}/{len(upload.content)}"
        response = self._send("PUT", path, data=upload.content[start : end + 1], headers=headers)
        if response.status_code == 409 and response.json().get("code") == "range_mismatch":
            upload.received = response.json()["received_bytes"]
            return
        self._learn(upload, response, expect=(200, 201, 202))

    def complete(self, upload: Upload) -> None:
        """Declare (again) and send until the server says completed."""
        self.declare(upload)
        for _step in range(len(upload.content) // CHUNK_SIZE + 10):
            if upload.image is not None:
                return
            self.send_next(upload)
        raise AssertionError(f"{upload.name} did not complete: received {upload.received}")


@dataclass
class Round:
    uploads: list[Upload]
    interrupted: list[str] = field(default_factory=list)  # connection lost mid-upload
    server_errors: list[str] = field(default_factory=list)
    other_errors: list[str] = field(default_factory=list)


def round_files(study_uid: str, number: int) -> list[Upload]:
    """Eight distinct relabelled DICOM files in a new series of the order's study; odd ones chunked."""
    series_uid = generate_uid()
    uploads = []
    for index in range(FILES_PER_ROUND):
        sample = SAMPLES[index % len(SAMPLES)]
        content = relabelled_dicom(
            sample, study_uid=study_uid, series_uid=series_uid, instance_number=index + 1, series_number=number
        )
        image_uid = str(pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True).SOPInstanceUID)
        uploads.append(Upload(f"round{number}_{index}_{sample}", content, chunked=index % 2 == 1, image_uid=image_uid))
    return uploads


def upload_until_killed(deployment: Deployment, upload: Upload, outcome: Round) -> None:
    """A client thread: declare and send its file; a lost connection ends it (the server died)."""
    try:
        Client(deployment).complete(upload)
    except requests.RequestException as error:
        outcome.interrupted.append(f"{upload.name}: {type(error).__name__}")
    except ServerError as error:
        outcome.server_errors.append(str(error))
    except Exception as error:  # reported by the test thread
        outcome.other_errors.append(f"{upload.name}: {error!r}")


def ingest_spools(staging_dir: Path) -> set[str]:
    """Spool files of ingests under way: ingest copies each incoming file to staging as `ingest-*`."""
    if not staging_dir.exists():
        return set()
    with os.scandir(staging_dir) as entries:
        return {entry.name for entry in entries if entry.name.startswith("ingest-")}


def run_round_and_kill(
    deployment: Deployment, uploads: list[Upload], rng: random.Random, *, at_new_file: bool
) -> tuple[Round, bool]:
    """Start every upload at once and SIGKILL the server during an ingest; return the round and whether it was.

    The kill comes inside the n-th ingest of the round (n random, 1 to 3), or, with
    `at_new_file`, as soon as an ingest has written a new file under radiology/: the moment
    before its rows commit. Spool files of ingests killed in earlier rounds stay until the
    recovery, so only new ones count.
    """
    outcome = Round(uploads)
    left_over = ingest_spools(deployment.staging_dir)
    files_before = stored_files(deployment.media_root, "radiology")
    target = rng.randint(1, 3)
    threads = [
        threading.Thread(target=upload_until_killed, args=(deployment, upload, outcome), daemon=True)
        for upload in uploads
    ]
    for thread in threads:
        thread.start()
    seen: set[str] = set()
    caught_ingest = False
    wait_until = time.monotonic() + 10
    while time.monotonic() < wait_until and any(thread.is_alive() for thread in threads):
        under_way = ingest_spools(deployment.staging_dir) - left_over
        seen |= under_way
        if at_new_file:
            caught_ingest = bool(stored_files(deployment.media_root, "radiology") - files_before)
        else:
            caught_ingest = bool(under_way) and len(seen) >= target
        if caught_ingest:
            break
        time.sleep(0.0005)
    deployment.server.kill()
    for thread in threads:
        thread.join(timeout=TIMEOUT + 5)
    assert not any(thread.is_alive() for thread in threads), "a client hung after the kill"
    return outcome, caught_ingest


# --- Checks -------------------------------------------------------------------------------------


def stored_files(media_root: Path, prefix: str) -> set[str]:
    root = media_root / prefix
    if not root.exists():
        return set()
    return {path.relative_to(media_root).as_posix() for path in root.rglob("*") if path.is_file()}


def image_rows(deployment: Deployment) -> list[tuple[int, str, str, int]]:
    return query(deployment.database_url, "SELECT id, file_key, checksum, file_size FROM radiology_radiologyimage")


def assert_no_row_without_its_file(deployment: Deployment) -> list[tuple[int, str, str, int]]:
    """Every image row's file exists and has the row's size and SHA-256."""
    rows = image_rows(deployment)
    problems = []
    for image_id, file_key, checksum, file_size in rows:
        path = deployment.media_root / file_key
        if not path.is_file():
            problems.append(f"image {image_id}: file {file_key} missing")
            continue
        content = path.read_bytes()
        if (hashlib.sha256(content).hexdigest(), len(content)) != (checksum, file_size):
            problems.append(f"image {image_id}: {file_key} does not hash to its checksum")
    assert problems == [], problems
    return rows


def files_without_rows(deployment: Deployment) -> set[str]:
    keys = {file_key for _id, file_key, _checksum, _size in image_rows(deployment)}
    return stored_files(deployment.media_root, "radiology") - keys


def assert_rows_and_files_in_step(deployment: Deployment) -> list[tuple[int, str, str, int]]:
    """Every image row has its file with its checksum and size; every file under radiology/ has its row."""
    rows = assert_no_row_without_its_file(deployment)
    assert files_without_rows(deployment) == set()
    return rows


def recover(deployment: Deployment, uploads: list[Upload]) -> set[str]:
    """After the restart: what the kill left, checked, then removed by purge_interrupted_ingests.

    A worker killed between writing a file and committing its rows leaves the file without
    a row (nothing in the process survives to remove it): such a file may only be one of
    this round's, and the recovery command removes it. Returns the files it removed.
    """
    assert_no_row_without_its_file(deployment)
    left = files_without_rows(deployment)
    in_flight = {upload.image_uid for upload in uploads}
    assert {key.split("/")[3] for key in left} <= in_flight, left
    # The server is idle (no client is sending), so nothing younger belongs to an ingest under way.
    output = deployment.server.manage("purge_interrupted_ingests", "--older-than-minutes", "0")
    assert output.splitlines()[-1] == f"Removed {len(left)} file(s) left by interrupted ingests."
    assert_rows_and_files_in_step(deployment)
    assert ingest_spools(deployment.staging_dir) == set()
    # A worker killed as it finished an upload (status saved, chunks not yet discarded) left
    # them under a finished upload: the other cron job removes those, and keeps pending ones'.
    output = deployment.server.manage("purge_radiology_uploads")
    assert output.splitlines()[0] == "Purged 0 stale partial upload(s).", output
    pending = {str(row[0]) for row in query(deployment.database_url, PENDING_UPLOADS)}
    assert {key.split("/")[2] for key in stored_files(deployment.media_root, "staging")} <= pending
    return left


PENDING_UPLOADS = "SELECT id FROM radiology_radiologyupload WHERE status = 'pending'"


def test_sigkill_during_ingests_leaves_no_row_without_file_nor_file_without_row(deployment: Deployment) -> None:
    rng = random.Random(SEED)  # noqa: S311 (test timing, not crypto)
    started = time.monotonic()
    study_uid = generate_uid()
    every_upload: list[Upload] = []
    caught_ingests = 0
    interrupted = 0

    for number in range(1, ROUNDS + 1):
        assert time.monotonic() - started < DEADLINE, f"still busy after {DEADLINE} s (round {number})"
        uploads = round_files(study_uid, number)
        every_upload.extend(uploads)
        outcome, caught_ingest = run_round_and_kill(deployment, uploads, rng, at_new_file=number == 2)
        caught_ingests += caught_ingest
        interrupted += len(outcome.interrupted)
        assert outcome.server_errors == [], outcome.server_errors
        assert outcome.other_errors == [], outcome.other_errors

        deployment.server.start()
        recover(deployment, uploads)
        # Each device resumes: it fetches the state (re-declaring when its first POST may
        # not have arrived) and sends the rest, or the whole body again.
        client = Client(deployment)
        for upload in uploads:
            if upload.upload_id is not None:
                client.refresh(upload)
            client.complete(upload)
        assert_rows_and_files_in_step(deployment)

    # Kills happened while ingests were running and while uploads were in flight.
    assert caught_ingests == ROUNDS, f"only {caught_ingests} of {ROUNDS} kills landed during an ingest"
    assert interrupted >= ROUNDS, f"only {interrupted} uploads were cut off by the kills"
    # Exactly one image per file, each with that file's bytes, and nothing staged left over.
    rows = assert_rows_and_files_in_step(deployment)
    images = {upload.name: upload.image for upload in every_upload}
    assert all(image is not None for image in images.values()), images
    image_ids = sorted(image["id"] for image in images.values() if image is not None)
    assert len(set(image_ids)) == len(every_upload) == ROUNDS * FILES_PER_ROUND
    assert sorted(row[0] for row in rows) == image_ids
    by_id = {row[0]: row for row in rows}
    for upload in every_upload:
        assert upload.image is not None
        _id, file_key, checksum, file_size = by_id[upload.image["id"]]
        assert (checksum, file_size) == (upload.checksum, len(upload.content))
        assert (deployment.media_root / file_key).read_bytes() == upload.content
    statuses = query(deployment.database_url, "SELECT status, COUNT(*) FROM radiology_radiologyupload GROUP BY status")
    assert statuses == [("completed", len(every_upload))]
    assert stored_files(deployment.media_root, "staging") == set()


# --- The recovery, in process, on both stores ----------------------------------------------------


def test_purge_interrupted_ingests_removes_only_old_files_without_rows(
    radiology_store: str, make_order: MakeOrder, ingest_file: IngestFile, settings: Any
) -> None:
    """What a killed ingest leaves goes once old enough; a stored image and a young file stay."""
    stored = ingest_file(make_order(), "MR_small.dcm").image
    orphan = storage.save_new_object(
        "radiology/1.2.3/1.2.3.4/1.2.3.4.5/killed.dcm", io.BytesIO(b"half an ingest"), content_type="application/dicom"
    )
    staging = Path(settings.RADIOLOGY_STAGING_DIR)
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "ingest-killed").write_bytes(b"spooled")

    kept = PACSLiteService.purge_interrupted_ingests(older_than=dt.timedelta(hours=1))

    assert kept == []
    assert stored_keys() == sorted([stored.file_key, orphan])
    assert ingest_spools(staging) == {"ingest-killed"}

    removed = PACSLiteService.purge_interrupted_ingests(older_than=dt.timedelta(0))

    assert removed == [orphan]
    assert stored_keys() == [stored.file_key]
    assert read_stored(stored.file_key) == sample_path("MR_small.dcm").read_bytes()
    assert ingest_spools(staging) == set()
