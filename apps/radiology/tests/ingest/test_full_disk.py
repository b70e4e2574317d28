"""A full disk loses nothing (issue 17): every way in refuses with 507 before writing, and resumes once freed.

The disk is real and small: each test mounts its own 16 MiB tmpfs, puts the staging
directory and the filesystem store on it, and fills it with a filler file until free space is
below RADIOLOGY_MIN_FREE_BYTES (4 MiB here). Upload sync, STOW-RS and bulk import then refuse
with 507 insufficient_storage, leaving no row, no stored object and no staging file; /healthz
says "degraded"; once the filler is removed, the very same request succeeds.

Where no filesystem can be mounted (a CI runner without root or CAP_SYS_ADMIN), these tests
still run, on a plain directory with only `os.statvfs` faked: it answers for the directory as
for a 16 MiB disk holding the files under it (FakeStatvfs). Nothing else is faked. What a
fake cannot show, a write that finds the disk full half way (ENOSPC), is tested only on the
real tmpfs: those tests (`needs_a_real_disk`) are skipped, saying why, where none can be mounted.
The unmount is in the fixture's teardown, whatever the test did.
"""

from __future__ import annotations

import io
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.test import Client

from apps.radiology import storage
from apps.radiology.dicomweb.multipart import read_parts
from apps.radiology.errors import InsufficientStorage
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.ingest import pipeline
from apps.radiology.models import RadiologyImage, RadiologyOrder, RadiologyUpload
from apps.radiology.operations.demo import relabelled_dicom
from apps.radiology.storage import free_space
from apps.radiology.tests.factories import read_stored, row_counts, sample_bytes, stored_keys
from apps.radiology.tests.stores import FILESYSTEM_BACKEND, S3_BACKEND, s3_options
from apps.radiology.tests.upload_helpers import (
    DeviceFile,
    client_for,
    completed_body,
    metadata,
    pending_body,
    post_upload,
    put_range,
    put_whole,
    staged_keys,
)

pytestmark = pytest.mark.django_db

MIB = 1024 * 1024
DISK_SIZE = 16 * MIB
MIN_FREE = 4 * MIB
BLOCK = 4096
CT = DeviceFile("CT_small.dcm", sample_bytes("CT_small.dcm"))
STUDIES = "/api/v1/radiology/dicomweb/studies"
BOUNDARY = "full-disk-boundary"

INSUFFICIENT_STORAGE = {
    "detail": "The server is short of disk space; nothing was saved. Send it again once space is freed.",
    "code": "insufficient_storage",
}
HEALTHY = {"status": "ok", "database": "ok", "storage": "ok", "disk_space": "ok"}


def degraded(places: str) -> dict[str, str]:
    return {
        "status": "degraded",
        "database": "ok",
        "storage": "ok",
        "disk_space": "low",
        "detail": f"Free disk space on the {places} is below RADIOLOGY_MIN_FREE_BYTES: "
        "new images are refused (507 insufficient_storage) until space is freed.",
    }


BOTH_PLACES = "staging directory and the image store"


# --- the small disk --------------------------------------------------------------------------------


class FakeStatvfs:
    """os.statvfs for the fallback: `root` as a DISK_SIZE disk holding exactly the files under it.

    Any other path is answered by the real os.statvfs.
    """

    def __init__(self, root: Path, real: Any) -> None:
        self.root = root
        self.real = real

    def __call__(self, path: Any) -> os.statvfs_result:
        if not Path(path).resolve().is_relative_to(self.root.resolve()):
            return self.real(path)
        used = sum(-(-file.stat().st_size // BLOCK) * BLOCK for file in self.root.rglob("*") if file.is_file())
        blocks, free = DISK_SIZE // BLOCK, max(DISK_SIZE - used, 0) // BLOCK
        return os.statvfs_result((BLOCK, BLOCK, blocks, free, free, 1000, 1000, 1000, 0, 255))


@dataclass
class SmallDisk:
    """A DISK_SIZE filesystem holding the staging directory (staging/) and the store (media/)."""

    root: Path
    real: bool  # a tmpfs mounted for the test; False: a directory with os.statvfs faked

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def filler(self) -> Path:
        return self.root / "filler"

    def free(self) -> int:
        return free_space.free_bytes(self.root)

    def fill(self, *, leave_free: int = MIN_FREE // 2) -> None:
        """Write the filler until at most `leave_free` bytes are free."""
        missing = self.free() - leave_free
        with self.filler.open("ab") as handle:
            while missing > 0:
                block = min(missing, MIB)
                handle.write(bytes(block))
                missing -= block
        assert self.free() <= leave_free

    def free_up(self) -> None:
        self.filler.unlink()
        assert self.free() > MIN_FREE + CT.size

    def staging_files(self) -> list[str]:
        return sorted(path.name for path in self.staging.iterdir()) if self.staging.exists() else []


def _run(*command: str) -> bool:
    """Run a mount or umount; whether it worked (False too when the program is missing)."""
    try:
        return subprocess.run(command, capture_output=True, check=False, timeout=60).returncode == 0  # noqa: S603
    except OSError:
        return False


def _mount_tmpfs(mountpoint: Path) -> bool:
    return _run("mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(mountpoint))


def _unmount(mountpoint: Path) -> None:
    if not _run("umount", str(mountpoint)):
        _run("umount", "--lazy", str(mountpoint))


@pytest.fixture
def small_disk(tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallDisk]:
    """The staging directory and the filesystem store on a small disk; RADIOLOGY_MIN_FREE_BYTES 4 MiB."""
    root = tmp_path / "disk"
    root.mkdir()
    mounted = _mount_tmpfs(root)
    try:
        if not mounted:
            monkeypatch.setattr(os, "statvfs", FakeStatvfs(root, os.statvfs))
        stores = dict(django_settings.STORAGES)
        stores["radiology"] = {
            "BACKEND": FILESYSTEM_BACKEND,
            "OPTIONS": {"location": str(root / "media"), "base_url": None},
        }
        settings.STORAGES = stores
        settings.MEDIA_ROOT = root / "media"
        settings.RADIOLOGY_STAGING_DIR = root / "staging"
        settings.RADIOLOGY_MIN_FREE_BYTES = MIN_FREE
        yield SmallDisk(root, real=mounted)
    finally:
        if mounted:
            _unmount(root)


@pytest.fixture
def needs_a_real_disk(small_disk: SmallDisk) -> SmallDisk:
    """The small disk, for a test of a write that finds it full: only a real filesystem can refuse one."""
    if not small_disk.real:
        pytest.skip("no tmpfs can be mounted here: a write running out of space needs a real small filesystem")
    return small_disk


def assert_nothing_written(disk: SmallDisk) -> None:
    """No image row, no object in the store, nothing in the staging directory."""
    assert row_counts() == (0, 0, 0)
    assert stored_keys() == []
    assert disk.staging_files() == []


def healthz() -> tuple[int, dict[str, Any]]:
    response = Client().get("/healthz")
    return response.status_code, response.json()


# --- upload sync -----------------------------------------------------------------------------------


def test_a_refused_chunk_is_sent_again_once_space_is_freed_and_the_upload_completes(
    small_disk: SmallDisk, radtech: Any, order: RadiologyOrder
) -> None:
    client = client_for(radtech)
    created = post_upload(client, metadata(order, CT))
    upload = RadiologyUpload.objects.get(pk=created.data["id"])
    first = put_range(client, upload.pk, CT.content, 0, 19_999)
    assert first.status_code == 202
    assert first.data == pending_body(upload, received_bytes=20_000)

    small_disk.fill()
    refused = put_range(client, upload.pk, CT.content, 20_000, CT.size - 1)

    assert refused.status_code == 507
    assert refused.json() == {**INSUFFICIENT_STORAGE, "received_bytes": 20_000}
    upload.refresh_from_db()
    assert (upload.status, upload.received_bytes, upload.chunk_offsets) == ("pending", 20_000, [0])
    assert stored_keys() == staged_keys(upload.pk) == [f"staging/uploads/{upload.pk}/{0:015d}"]
    assert row_counts() == (0, 0, 0)
    assert small_disk.staging_files() == []
    assert healthz() == (200, degraded(BOTH_PLACES))

    small_disk.free_up()
    resumed = put_range(client, upload.pk, CT.content, 20_000, CT.size - 1)

    assert resumed.status_code == 201
    image = RadiologyImage.objects.get()
    upload.refresh_from_db()
    assert resumed.data == completed_body(upload, image)
    assert read_stored(image.file_key) == CT.content
    assert stored_keys() == [image.file_key]
    assert small_disk.staging_files() == []
    assert healthz() == (200, HEALTHY)


def test_a_refused_whole_file_is_sent_again_once_space_is_freed(
    small_disk: SmallDisk, radtech: Any, order: RadiologyOrder
) -> None:
    client = client_for(radtech)
    upload_id = post_upload(client, metadata(order, CT)).data["id"]
    small_disk.fill()

    refused = put_whole(client, upload_id, CT.content)

    assert refused.status_code == 507
    assert refused.json() == {**INSUFFICIENT_STORAGE, "received_bytes": 0}
    assert RadiologyUpload.objects.values_list("status", "received_bytes").get() == ("pending", 0)
    assert_nothing_written(small_disk)

    small_disk.free_up()
    resumed = put_whole(client, upload_id, CT.content)

    assert resumed.status_code == 201
    assert read_stored(RadiologyImage.objects.get().file_key) == CT.content


def test_free_space_counts_the_declared_file_size(
    small_disk: SmallDisk, radtech: Any, order: RadiologyOrder, settings: Any
) -> None:
    """Enough free space for the margin, not for the margin and the file: refused."""
    client = client_for(radtech)
    upload_id = post_upload(client, metadata(order, CT)).data["id"]
    small_disk.fill(leave_free=MIN_FREE + CT.size - BLOCK)
    assert free_space.short_places() == []

    refused = put_whole(client, upload_id, CT.content)

    assert refused.status_code == 507
    assert_nothing_written(small_disk)
    settings.RADIOLOGY_MIN_FREE_BYTES = MIN_FREE - 2 * CT.size
    assert put_whole(client, upload_id, CT.content).status_code == 201


# --- STOW-RS ---------------------------------------------------------------------------------------


def stow_body(*contents: bytes) -> bytes:
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + content + b"\r\n" for content in contents
    )
    return body + f"--{BOUNDARY}--\r\n".encode()


def stow(radtech: Any, order: RadiologyOrder, body: bytes) -> Any:
    return client_for(radtech).post(
        f"{STUDIES}?radiology_order_id={order.pk}",
        data=body,
        content_type=f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        headers={"Accept": "application/dicom+json"},
    )


def test_stow_is_refused_before_its_body_is_read_and_stored_once_space_is_freed(
    small_disk: SmallDisk, radtech: Any, order: RadiologyOrder
) -> None:
    instance = relabelled_dicom("CT_small.dcm", study_uid=generate_uid(), series_uid=generate_uid(), instance_number=1)
    body = stow_body(instance)
    small_disk.fill()

    refused = stow(radtech, order, body)

    assert refused.status_code == 507
    assert refused.json() == INSUFFICIENT_STORAGE
    assert_nothing_written(small_disk)
    assert healthz() == (200, degraded(BOTH_PLACES))

    small_disk.free_up()
    stored = stow(radtech, order, body)

    assert stored.status_code == 200
    image = RadiologyImage.objects.get()
    assert stored.json()["00081199"]["Value"][0]["00081155"] == {"vr": "UI", "Value": [image.image_uid]}
    assert read_stored(image.file_key) == instance
    assert small_disk.staging_files() == []


def test_stow_counts_its_content_length(small_disk: SmallDisk, radtech: Any, order: RadiologyOrder) -> None:
    """Free space above the margin but not above the margin and the body: refused before reading."""
    body = stow_body(
        *(
            relabelled_dicom("CT_small.dcm", study_uid=generate_uid(), series_uid=generate_uid(), instance_number=1)
            for _ in range(3)
        )
    )
    small_disk.fill(leave_free=MIN_FREE + len(body) - BLOCK)

    refused = stow(radtech, order, body)

    assert refused.status_code == 507
    assert refused.json() == INSUFFICIENT_STORAGE
    assert_nothing_written(small_disk)


def test_a_stow_body_that_fills_the_disk_is_507_with_every_staged_part_removed(
    needs_a_real_disk: SmallDisk,
) -> None:
    """No Content-Length to check (a chunked body): the disk fills up while the parts are staged."""
    disk = needs_a_real_disk
    disk.fill(leave_free=6 * MIB)
    body = stow_body(bytes(3 * MIB), bytes(3 * MIB), bytes(3 * MIB))

    with pytest.raises(InsufficientStorage):
        read_parts(io.BytesIO(body), f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')

    assert disk.staging_files() == []
    assert disk.free() >= 6 * MIB - BLOCK  # every byte staged is given back


# --- bulk import -----------------------------------------------------------------------------------


def run_import(*args: Any) -> tuple[list[str], str | None]:
    out = io.StringIO()
    try:
        call_command("import_radiology", *[str(arg) for arg in args], "--no-progress", stdout=out, stderr=io.StringIO())
    except CommandError as error:
        return out.getvalue().splitlines(), str(error)
    return out.getvalue().splitlines(), None


def test_import_refuses_each_file_exits_non_zero_and_imports_them_once_space_is_freed(
    small_disk: SmallDisk, order: RadiologyOrder, tmp_path: Path
) -> None:
    source = tmp_path / "cd"
    source.mkdir()
    study_uid, series_uid = generate_uid(), generate_uid()
    files = {
        name: relabelled_dicom("CT_small.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=number)
        for number, name in enumerate(("a.dcm", "b.dcm"), start=1)
    }
    for name, content in files.items():
        (source / name).write_bytes(content)
    small_disk.fill()

    lines, error = run_import(source, "--order", order.pk)

    assert error == "2 file(s) failed to import"
    assert lines[1:] == [
        f"FAILED a.dcm: insufficient_storage: {INSUFFICIENT_STORAGE['detail']}",
        f"FAILED b.dcm: insufficient_storage: {INSUFFICIENT_STORAGE['detail']}",
    ]
    assert lines[0].startswith("Stored 0, held 0 unmatched, skipped 0 already stored, ignored 0 non-DICOM, failed 2;")
    assert_nothing_written(small_disk)

    small_disk.free_up()
    lines, error = run_import(source, "--order", order.pk)

    assert error is None
    assert lines[0].startswith("Stored 2, held 0 unmatched, skipped 0 already stored, ignored 0 non-DICOM, failed 0;")
    assert sorted(read_stored(image.file_key) for image in RadiologyImage.objects.all()) == sorted(files.values())
    assert small_disk.staging_files() == []


# --- writes that find the disk full half way (a real filesystem only) ------------------------------


def test_a_chunk_that_fills_the_store_is_507_and_leaves_no_partial_chunk(
    needs_a_real_disk: SmallDisk, radtech: Any, order: RadiologyOrder, settings: Any
) -> None:
    """The margin allows it, but the chunk is written twice (its spool, then the store): the second fills the disk."""
    disk = needs_a_real_disk
    settings.RADIOLOGY_MIN_FREE_BYTES = 0
    content = os.urandom(3 * MIB)
    device_file = DeviceFile("big.dcm", content)
    client = client_for(radtech)
    upload = RadiologyUpload.objects.get(pk=post_upload(client, metadata(order, device_file)).data["id"])
    disk.fill(leave_free=4 * MIB)
    assert free_space.short_places(incoming_bytes=len(content)) == []  # the check beforehand lets it in

    refused = put_range(client, upload.pk, content, 0, len(content) - 2)

    assert refused.status_code == 507
    assert refused.json() == {**INSUFFICIENT_STORAGE, "received_bytes": 0}
    upload.refresh_from_db()
    assert (upload.received_bytes, upload.chunk_offsets) == (0, [])
    assert_nothing_written(disk)
    assert disk.free() >= 4 * MIB - BLOCK


def test_a_spool_that_fills_the_disk_is_refused_and_removed(
    needs_a_real_disk: SmallDisk, radtech: Any, order: RadiologyOrder, settings: Any
) -> None:
    """No size declared, so nothing to check beforehand: the spool itself runs out of room."""
    disk = needs_a_real_disk
    settings.RADIOLOGY_MIN_FREE_BYTES = 0
    disk.fill(leave_free=CT.size // 2)

    (outcome,) = pipeline.ingest_images(
        [pipeline.IngestItem(order=order, stream=io.BytesIO(CT.content), filename="ct.dcm")], uploaded_by=radtech
    )

    assert isinstance(outcome, InsufficientStorage)
    assert outcome.body() == INSUFFICIENT_STORAGE
    assert_nothing_written(disk)


def test_a_store_that_fills_up_while_a_file_is_copied_in_keeps_no_partial_file(
    needs_a_real_disk: SmallDisk, radtech: Any, order: RadiologyOrder, settings: Any, tmp_path: Path
) -> None:
    """Staging on another filesystem, so the store copies the file (no link): the copy runs out of room."""
    disk = needs_a_real_disk
    settings.RADIOLOGY_MIN_FREE_BYTES = 0
    settings.RADIOLOGY_STAGING_DIR = tmp_path / "staging-elsewhere"
    disk.fill(leave_free=CT.size // 2)

    (outcome,) = pipeline.ingest_images(
        [pipeline.IngestItem(order=order, stream=io.BytesIO(CT.content), filename="ct.dcm")], uploaded_by=radtech
    )

    assert isinstance(outcome, InsufficientStorage)
    assert row_counts() == (0, 0, 0)
    assert stored_keys() == []
    assert list((tmp_path / "staging-elsewhere").iterdir()) == []
    with pytest.raises(InsufficientStorage):
        storage.save_new_object("radiology/x/big.bin", io.BytesIO(bytes(CT.size)), content_type="application/dicom")
    assert stored_keys() == []


# --- S3: only staging has a disk here --------------------------------------------------------------


@pytest.mark.s3
def test_on_s3_only_the_staging_disk_is_watched(
    small_disk: SmallDisk, settings: Any, s3_endpoint: str, s3_bucket: str, radtech: Any, order: RadiologyOrder
) -> None:
    stores = dict(django_settings.STORAGES)
    stores["radiology"] = {"BACKEND": S3_BACKEND, "OPTIONS": s3_options(s3_endpoint, s3_bucket)}
    settings.STORAGES = stores
    assert list(free_space.watched_places()) == [free_space.STAGING]
    client = client_for(radtech)
    upload_id = post_upload(client, metadata(order, CT, client_upload_id=uuid.uuid4())).data["id"]
    small_disk.fill()

    refused = put_whole(client, upload_id, CT.content)

    assert refused.status_code == 507
    assert refused.json() == {**INSUFFICIENT_STORAGE, "received_bytes": 0}
    assert healthz() == (200, degraded("staging directory"))
    assert_nothing_written(small_disk)

    small_disk.free_up()
    assert put_whole(client, upload_id, CT.content).status_code == 201
    assert healthz() == (200, HEALTHY)


@pytest.mark.s3
def test_an_s3_store_out_of_space_is_insufficient_storage(
    settings: Any, s3_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MinIO answers a write with 507 XMinioStorageFull when its drives are full: the same refusal."""
    stores = dict(django_settings.STORAGES)
    stores["radiology"] = {"BACKEND": S3_BACKEND, "OPTIONS": s3_options(s3_endpoint, s3_bucket)}
    settings.STORAGES = stores
    full = ClientError(
        {
            "Error": {"Code": "XMinioStorageFull", "Message": "Storage backend has reached its minimum free drive"},
            "ResponseMetadata": {"HTTPStatusCode": 507},
        },
        "PutObject",
    )

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise full

    monkeypatch.setattr(storage.radiology_storage().connection.meta.client, "put_object", refuse)

    with pytest.raises(InsufficientStorage) as refused:
        storage.save_new_object("radiology/x/ct.dcm", io.BytesIO(CT.content), content_type="application/dicom")

    assert refused.value.__cause__ is full
    monkeypatch.undo()
    assert stored_keys() == []
