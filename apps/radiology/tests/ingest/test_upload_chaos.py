"""Chaos: a device syncs a whole study over a bad link to a real server that is killed mid-upload.

The server is the app server (granian, 2 workers) in its own process group, with its own database (a
temporary SQLite file, or a fresh database on the same PostgreSQL server when the suite
runs on PostgreSQL), its own media and spool directories, and the filesystem or S3 (moto's
server) as the store. The device sends every file of one study (DICOM samples relabelled
into one study, and a JPEG photo) in random chunk sizes from a seeded random generator and,
along the way:
- drops connections: a chunk whose Content-Length promises more than is sent, then close (the
  bytes that arrived are kept and counted: the device resumes after them);
- loses responses: the request arrives whole, the device never reads the answer;
- replays chunks already accepted, sends a chunk twice, posts the metadata again;
- is cut off by a SIGKILL of the whole server while a chunk is half sent; the server is
  started again and the device resumes from what a repeated metadata POST tells it.
At the end there must be exactly one image per file, each byte-identical to the original
(fetched through its signed URL as a doctor), and no staged chunk or stray object in the
store. Then two clients send the same DICOM file at once: one image, both uploads
completed with its id.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.operations.demo import jpeg_with_exif, relabelled_dicom
from apps.radiology.tests.app_server import AppServer, own_database, server_env
from apps.radiology.tests.stores import s3_client
from apps.radiology.tests.upload_helpers import DeviceFile, metadata, sha256_hex

SEED = 20260115
TIMEOUT = 20  # seconds for any one HTTP request
DEADLINE = 90  # seconds for the whole device run: the test stops by itself
MAX_CHUNK = 12_000
# Two app server workers write at once here: the settings' SQLite defaults (BEGIN IMMEDIATE, a
# busy timeout, WAL) are what keep them from failing with "database is locked".


# --- The server -----------------------------------------------------------------------------


@dataclass
class Store:
    """The server's radiology store, seen from outside: list every key."""

    kind: str
    media_root: Path
    s3_endpoint: str = ""
    bucket: str = ""

    def env(self) -> dict[str, str]:
        if self.kind != "s3":
            return {"RADIOLOGY_STORAGE": "filesystem"}
        return {
            "RADIOLOGY_STORAGE": "s3",
            "AWS_S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_STORAGE_BUCKET_NAME": self.bucket,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_S3_REGION_NAME": "us-east-1",
            "AWS_S3_USE_SSL": "0",
        }

    def keys(self) -> list[str]:
        if self.kind != "s3":
            if not self.media_root.exists():
                return []
            return sorted(p.relative_to(self.media_root).as_posix() for p in self.media_root.rglob("*") if p.is_file())
        client = s3_client(self.s3_endpoint)
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)


@dataclass
class Deployment:
    server: AppServer
    store: Store
    order_id: int
    radtech_token: str
    doctor_token: str


@pytest.fixture(params=["filesystem", "s3"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    store = Store(kind=request.param, media_root=tmp_path / "media")
    if request.param == "s3":
        store.s3_endpoint = request.getfixturevalue("s3_endpoint")
        store.bucket = request.getfixturevalue("s3_bucket")
    with own_database(tmp_path, "chaos") as database_url:
        env = server_env(tmp_path, database_url, staging="spool", **store.env())
        server = AppServer(env, tmp_path / "app_server.log")
        try:
            seeded = server.seed_and_start()
            tokens = seeded["tokens"]
            yield Deployment(server, store, seeded["radiology_orders"][0], tokens["radtech"], tokens["doctor"])
        finally:
            server.stop()


# --- The device -----------------------------------------------------------------------------


@dataclass
class SyncFile:
    filename: str
    content: bytes
    mime_type: str
    declared: dict[str, Any] = field(default_factory=dict)
    client_upload_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    upload_id: int | None = None
    received: int = 0  # what the device believes the server has
    accepted: list[tuple[int, int]] = field(default_factory=list)
    image: dict[str, Any] | None = None

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def checksum(self) -> str:
        return sha256_hex(self.content)

    def metadata(self, order_id: int) -> dict[str, Any]:
        device_file = DeviceFile(self.filename, self.content, self.mime_type, self.declared)
        return metadata(order_id, device_file, client_upload_id=self.client_upload_id)


def study_files() -> list[SyncFile]:
    """Eight files of one study: CT x3, MR x2, a secondary capture, an RT dose, and a JPEG photo."""
    study_uid = generate_uid()
    plan = [("CT_small.dcm", 3), ("MR_small.dcm", 2), ("JPEG-lossy.dcm", 1), ("rtdose.dcm", 1)]
    files = []
    for series_number, (sample, count) in enumerate(plan, start=1):
        series_uid = generate_uid()
        for number in range(1, count + 1):
            content = relabelled_dicom(
                sample, study_uid=study_uid, series_uid=series_uid, instance_number=number, series_number=series_number
            )
            files.append(SyncFile(f"{sample.removesuffix('.dcm')}_{number}.dcm", content, "application/dicom"))
    files.append(
        SyncFile(
            "film_photo.jpg",
            jpeg_with_exif(width=640, height=480),
            "image/jpeg",
            {"study_uid": study_uid, "series_description": "Photo of film", "modality": "OT"},
        )
    )
    return files


@dataclass
class Tally:
    """What the chaos did, so the test can tell it really happened."""

    chunks: int = 0
    dropped: int = 0
    lost_responses: int = 0
    replays: int = 0
    duplicates: int = 0
    reposts: int = 0
    kills: int = 0
    server_errors: list[str] = field(default_factory=list)


class Device:
    """A radiology tech's device: one token, one HTTP session, and raw sockets for the bad link."""

    def __init__(self, deployment: Deployment, tally: Tally) -> None:
        self.deployment = deployment
        self.tally = tally
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {deployment.radtech_token}"

    @property
    def url(self) -> str:
        return self.deployment.server.url

    def _binary_path(self, sync_file: SyncFile) -> str:
        return f"/api/v1/radiology/uploads/{sync_file.upload_id}/binary/"

    def _retrying(self, send: Callable[[], requests.Response]) -> requests.Response:
        """Send; on a 5xx (recorded) wait a little and send again, as a device would."""
        for _attempt in range(20):
            response = send()
            if response.status_code < 500:
                return response
            self.tally.server_errors.append(f"{response.status_code} {response.text[:200]}")
            time.sleep(0.2)
        raise AssertionError(f"server kept failing: {self.tally.server_errors[-3:]}")

    def post(self, sync_file: SyncFile, *, expect: int) -> dict[str, Any]:
        response = self._retrying(
            lambda: self.session.post(
                f"{self.url}/api/v1/radiology/uploads/",
                json=sync_file.metadata(self.deployment.order_id),
                timeout=TIMEOUT,
            )
        )
        assert response.status_code == expect, response.text
        body: dict[str, Any] = response.json()
        if sync_file.upload_id is not None:
            assert body["id"] == sync_file.upload_id
        sync_file.upload_id = body["id"]
        self._learn(sync_file, body)
        return body

    def state(self, sync_file: SyncFile) -> dict[str, Any]:
        response = self.session.get(f"{self.url}/api/v1/radiology/uploads/{sync_file.upload_id}/", timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        self._learn(sync_file, body)
        return body

    def _learn(self, sync_file: SyncFile, body: dict[str, Any]) -> None:
        assert body["status"] in ("pending", "completed"), body
        assert body["file_size"] == sync_file.size
        sync_file.received = body["received_bytes"]
        if body["status"] == "completed":
            sync_file.image = body["image"]

    def put(self, sync_file: SyncFile, start: int, end: int) -> requests.Response:
        return self._retrying(
            lambda: self.session.put(
                f"{self.url}{self._binary_path(sync_file)}",
                data=sync_file.content[start : end + 1],
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"bytes {start}-{end}/{sync_file.size}",
                },
                timeout=TIMEOUT,
            )
        )

    def put_whole(self, sync_file: SyncFile) -> requests.Response:
        return self._retrying(
            lambda: self.session.put(
                f"{self.url}{self._binary_path(sync_file)}",
                data=sync_file.content,
                headers={"Content-Type": "application/octet-stream"},
                timeout=TIMEOUT,
            )
        )

    def send_chunk(self, sync_file: SyncFile, start: int, end: int) -> requests.Response:
        """A chunk the device expects to be taken: 202, or 201 on the last byte."""
        response = self.put(sync_file, start, end)
        body = response.json()
        if response.status_code == 409:  # the device's idea of received_bytes was stale
            assert body["code"] == "range_mismatch", body
            sync_file.received = body["received_bytes"]
            return response
        assert response.status_code in (201, 202), body
        assert body["received_bytes"] == (end + 1 if response.status_code == 202 else sync_file.size)
        sync_file.accepted.append((start, end))
        self.tally.chunks += 1
        self._learn(sync_file, body)
        return response

    def open_raw_put(self, sync_file: SyncFile, start: int, end: int) -> socket.socket:
        """Start a chunk PUT on a raw socket: headers sent, body not yet."""
        sock = socket.create_connection(("127.0.0.1", self.deployment.server.port), timeout=TIMEOUT)
        head = (
            f"PUT {self._binary_path(sync_file)} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{self.deployment.server.port}\r\n"
            f"Authorization: Token {self.deployment.radtech_token}\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-Range: bytes {start}-{end}/{sync_file.size}\r\n"
            f"Content-Length: {end - start + 1}\r\n"
            "Connection: close\r\n\r\n"
        )
        sock.sendall(head.encode())
        return sock

    def drop_chunk(self, sync_file: SyncFile, start: int, end: int, rng: random.Random) -> None:
        """Send part of a chunk whose Content-Length promises all of it, then hang up.

        The server keeps the bytes that arrived (none: nothing changes); the device waits for
        the server to be done with the request, then asks where to resume.
        """
        before = sync_file.received
        sent = rng.randint(0, end - start)
        sock = self.open_raw_put(sync_file, start, end)
        sock.sendall(sync_file.content[start : start + sent])
        sock.shutdown(socket.SHUT_WR)  # the link drops: the server reads the end of the body
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass  # whatever the server answers, until it is done with the request
        sock.close()
        self.tally.dropped += 1
        assert self.state(sync_file)["received_bytes"] == before + sent, "the bytes that arrived were not kept"
        if sent:
            sync_file.accepted.append((start, start + sent - 1))

    def lose_response(self, sync_file: SyncFile, start: int, end: int) -> None:
        """The whole chunk arrives; its answer never reaches the device, which asks the state."""
        sock = self.open_raw_put(sync_file, start, end)
        sock.sendall(sync_file.content[start : end + 1])
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass  # the answer is lost on the way back; wait until the server is done with it
        sock.close()
        self.tally.lost_responses += 1
        state = self.state(sync_file)
        assert state["received_bytes"] in (start, end + 1, sync_file.size), state
        if state["received_bytes"] != start:
            sync_file.accepted.append((start, end))


def next_range(sync_file: SyncFile, rng: random.Random) -> tuple[int, int]:
    remaining = sync_file.size - sync_file.received
    size = remaining if rng.random() < 0.1 else rng.randint(1, min(remaining, MAX_CHUNK))
    return sync_file.received, sync_file.received + size - 1


def chaos_step(device: Device, sync_file: SyncFile, rng: random.Random) -> None:
    """One thing the device does for this file: mostly a chunk, sometimes a misfortune."""
    start, end = next_range(sync_file, rng)
    roll = rng.random()
    if roll < 0.55:
        device.send_chunk(sync_file, start, end)
    elif roll < 0.65:
        device.drop_chunk(sync_file, start, end, rng)
    elif roll < 0.73:
        device.lose_response(sync_file, start, end)
    elif roll < 0.83 and sync_file.accepted:
        replay_start, replay_end = rng.choice(sync_file.accepted)
        response = device.put(sync_file, replay_start, replay_end)
        assert (response.status_code, response.json()) == (
            409,
            {
                "detail": "This chunk does not start where the received bytes end; resume from received_bytes.",
                "code": "range_mismatch",
                "received_bytes": sync_file.received,
            },
        )
        device.tally.replays += 1
    elif roll < 0.93:
        first = device.send_chunk(sync_file, start, end)
        again = device.put(sync_file, start, end)
        if first.status_code == 201:
            assert (again.status_code, again.json()) == (200, first.json())
        else:
            assert (again.status_code, again.json()["code"]) == (409, "range_mismatch")
            assert again.json()["received_bytes"] == end + 1
        device.tally.duplicates += 1
    else:
        body = device.post(sync_file, expect=200)
        assert body["received_bytes"] == sync_file.received
        device.tally.reposts += 1


def kill_mid_chunk(device: Device, sync_file: SyncFile, rng: random.Random) -> None:
    """A chunk is half sent when the server loses power; it comes back and the device resumes."""
    start, end = next_range(sync_file, rng)
    before = sync_file.received
    sock = device.open_raw_put(sync_file, start, end)
    sock.sendall(sync_file.content[start : start + (end - start + 1) // 2])
    time.sleep(0.2)  # a worker is now blocked reading the rest of the body
    device.deployment.server.kill()
    sock.close()
    device.tally.kills += 1
    device.deployment.server.start()
    assert device.state(sync_file)["received_bytes"] == before


def run_device(deployment: Deployment, files: list[SyncFile], tally: Tally) -> None:
    rng = random.Random(SEED)  # noqa: S311 (chaos, not crypto)
    device = Device(deployment, tally)
    started = time.monotonic()
    # The first metadata POST's answer is lost: the repeat finds the upload the server made.
    first = files[0]
    sock = socket.create_connection(("127.0.0.1", deployment.server.port), timeout=TIMEOUT)
    payload = json.dumps(first.metadata(deployment.order_id)).encode()
    sock.sendall(
        b"POST /api/v1/radiology/uploads/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Token {deployment.radtech_token}\r\n".encode()
        + f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )
    assert sock.recv(65536).startswith(b"HTTP/1.1 201")
    sock.close()
    device.post(first, expect=200)
    for sync_file in files[1:]:
        device.post(sync_file, expect=201)

    total = sum(sync_file.size for sync_file in files)
    kill_points = [total * 0.3, total * 0.7]
    while pending := [sync_file for sync_file in files if sync_file.image is None]:
        assert time.monotonic() - started < DEADLINE, f"device still busy after {DEADLINE} s: {tally}"
        sync_file = rng.choice(pending)
        done = sum(f.received for f in files)
        if kill_points and done >= kill_points[0]:
            kill_points.pop(0)
            kill_mid_chunk(device, sync_file, rng)
            # After the restart the device does not trust what it knew: it posts every
            # pending file's metadata again and resumes from the received_bytes it is told.
            for unsure in pending:
                device.post(unsure, expect=200)
                tally.reposts += 1
            continue
        chaos_step(device, sync_file, rng)

    # Completed uploads answer any further PUT or POST with the same completed body.
    for sync_file in files:
        late = device.put(sync_file, 0, sync_file.size - 1)
        assert (late.status_code, late.json()["image"]) == (200, sync_file.image)
        assert device.post(sync_file, expect=200)["image"] == sync_file.image


def concurrent_same_file(
    deployment: Deployment, tally: Tally, content: bytes, *, chunked: bool
) -> list[dict[str, Any]]:
    """Two clients send the same file at once under their own client_upload_ids."""
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def client(seed: int) -> None:
        try:
            rng = random.Random(seed)  # noqa: S311 (chaos, not crypto)
            device = Device(deployment, tally)
            sync_file = SyncFile("same_ct.dcm", content, "application/dicom")
            device.post(sync_file, expect=201)
            if chunked:
                while sync_file.size - sync_file.received > 2000:
                    start = sync_file.received
                    device.send_chunk(sync_file, start, start + rng.randint(1, 2000) - 1)
            barrier.wait()
            response = (
                device.send_chunk(sync_file, sync_file.received, sync_file.size - 1)
                if chunked
                else device.put_whole(sync_file)
            )
            assert response.status_code == 201, response.text
            results.append(device.state(sync_file))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    assert errors == []
    return results


def fetch_study(deployment: Deployment) -> list[dict[str, Any]]:
    """The order's images as a doctor sees them through the API."""
    doctor = requests.Session()
    doctor.headers["Authorization"] = f"Token {deployment.doctor_token}"
    studies = doctor.get(f"{deployment.server.url}/api/v1/radiology/studies/", timeout=TIMEOUT).json()
    [study] = [study for study in studies if study["radiology_order"] == deployment.order_id]
    grouped = doctor.get(f"{deployment.server.url}/api/v1/radiology/studies/{study['id']}/images/", timeout=TIMEOUT)
    assert grouped.status_code == 200, grouped.text
    return [image for series in grouped.json()["series"] for image in series["images"]]


def fetch_bytes(deployment: Deployment, image_id: int) -> bytes:
    """The stored bytes, through the image's signed URL (S3: a redirect to a presigned URL)."""
    doctor = requests.Session()
    doctor.headers["Authorization"] = f"Token {deployment.doctor_token}"
    signed = doctor.get(f"{deployment.server.url}/api/v1/radiology/images/{image_id}/url/", timeout=TIMEOUT)
    assert signed.status_code == 200, signed.text
    response = requests.get(signed.json()["image_url"], timeout=TIMEOUT)
    assert response.status_code == 200
    return response.content


def test_a_study_survives_a_bad_link_replays_and_a_server_restart(deployment: Deployment) -> None:
    files = study_files()
    tally = Tally()

    try:
        run_device(deployment, files, tally)
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- server log ---\n{deployment.server.log_tail()}") from error

    assert tally.kills == 2
    assert min(tally.dropped, tally.lost_responses, tally.replays, tally.duplicates, tally.reposts) >= 1, tally
    # Exactly one image per file, each with the file's own bytes.
    image_ids = {sync_file.filename: sync_file.image["id"] for sync_file in files if sync_file.image}
    assert len(set(image_ids.values())) == len(files)
    listed = fetch_study(deployment)
    assert sorted(image["id"] for image in listed) == sorted(image_ids.values())
    for sync_file in files:
        assert sync_file.image is not None
        assert sync_file.image["checksum"] == sync_file.checksum
        assert hashlib.sha256(fetch_bytes(deployment, sync_file.image["id"])).hexdigest() == sync_file.checksum
    # Nothing staged is left and nothing but the images is stored.
    assert deployment.store.keys() == sorted(sync_file.image["file_key"] for sync_file in files if sync_file.image)

    # Two clients, the same DICOM file, at once: whole bodies, then chunks ending together.
    extra_study_uid = next(f for f in files if f.filename == "CT_small_1.dcm").image["study_uid"]  # type: ignore[index]
    for chunked in (False, True):
        content = relabelled_dicom(
            "CT_small.dcm", study_uid=extra_study_uid, series_uid=generate_uid(), instance_number=1
        )
        both = concurrent_same_file(deployment, tally, content, chunked=chunked)
        assert [upload["status"] for upload in both] == ["completed", "completed"]
        assert both[0]["image"] == both[1]["image"]
        assert both[0]["id"] != both[1]["id"]
        assert fetch_bytes(deployment, both[0]["image"]["id"]) == content
    assert len(fetch_study(deployment)) == len(files) + 2
    stored = deployment.store.keys()
    assert not [key for key in stored if key.startswith("staging/")]
    assert len(stored) == len(files) + 2
    assert tally.server_errors == [], tally.server_errors
