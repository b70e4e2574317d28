"""backup_radiology and restore_radiology: the round trip, a backup during ingest, incremental runs, failures.

The installs here are real ones, each its own database (a SQLite file, or a database CREATEd on
the suite's PostgreSQL server when the suite runs there: the same vendor as the connection under
test) and its own store (a directory, or a bucket on moto's S3 server), driven through
`manage.py` in subprocesses exactly as a clinic would: seed, back up, restore into a fresh
database and store, then compare every row, every stored byte and the API's answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from pydicom.uid import generate_uid

from apps.radiology.ingest import unmatched
from apps.radiology.models import RadiologyImage, UnmatchedImage
from apps.radiology.operations import backup
from apps.radiology.tests.app_server import REPO, VENV_BIN, own_database, server_env
from apps.radiology.tests.factories import relabelled
from apps.radiology.tests.stores import s3_client

PROBE = "apps.radiology.tests.operations.install_probe"


class Install:
    """One PACS-lite install: its environment (database, store) and its manage.py."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 (our own argv)
            [str(VENV_BIN / "python"), "manage.py", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def manage(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    def probe(self, function: str, path: Path) -> Any:
        self.manage("shell", "-c", f"from {PROBE} import {function}; {function}({str(path)!r})")
        return json.loads(path.read_text())


def store_env(kind: str, tmp_path: Path, name: str, endpoint: str | None) -> dict[str, str]:
    if kind == "filesystem":
        return {"RADIOLOGY_STORAGE": "filesystem", "MEDIA_ROOT": str(tmp_path / f"media-{name}")}
    assert endpoint is not None
    bucket = f"{name}-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=bucket)
    return {
        "RADIOLOGY_STORAGE": "s3",
        "AWS_S3_ENDPOINT_URL": endpoint,
        "AWS_STORAGE_BUCKET_NAME": bucket,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }


@pytest.fixture
def make_install(tmp_path: Path) -> Iterator[Callable[[str, str, str | None], Install]]:
    """Factory of installs, each with its own new database (dropped afterwards) and store."""
    with_databases: list[Any] = []

    def make(name: str, store: str, endpoint: str | None) -> Install:
        database = own_database(tmp_path, name)
        url = database.__enter__()
        with_databases.append(database)
        env = server_env(tmp_path / name, url)
        env.update(store_env(store, tmp_path, name, endpoint))
        if store == "filesystem":
            env["MEDIA_ROOT"] = str(tmp_path / name / "media")
        return Install(env)

    yield make
    for database in reversed(with_databases):
        database.__exit__(None, None, None)


def unmatched_file(tmp_path: Path) -> Path:
    """A CT file whose AccessionNumber no order has: import --by-accession holds it unmatched."""
    folder = tmp_path / "unmatched-import"
    folder.mkdir()
    path = folder / "stray.dcm"
    path.write_bytes(
        relabelled("CT_small.dcm", study_uid=generate_uid(), series_uid=generate_uid(), AccessionNumber="NOSUCH-1")
    )
    return folder


def destination_for(store: str, tmp_path: Path, endpoint: str | None) -> tuple[str, dict[str, str]]:
    if store == "filesystem":
        return str(tmp_path / "usb-disk" / "pacs-backups"), {}
    assert endpoint is not None
    bucket = f"backups-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/clinic", {"PACS_BACKUP_S3_ENDPOINT_URL": endpoint}


@pytest.mark.parametrize("store", ["filesystem", "s3"])
def test_a_restored_install_holds_every_row_and_byte_and_answers_the_same(
    store: str, tmp_path: Path, make_install: Callable[..., Install], request: pytest.FixtureRequest
) -> None:
    endpoint = request.getfixturevalue("s3_endpoint") if store == "s3" else None
    original = make_install("original", store, endpoint)
    original.manage("migrate", "--noinput")
    original.manage("seed_demo", "--with-images", "--orders", "1")
    original.manage("import_radiology", str(unmatched_file(tmp_path)), "--by-accession", "--no-progress")
    dest, dest_env = destination_for(store, tmp_path, endpoint)
    original.env.update(dest_env)
    before = original.probe("dump", tmp_path / "original-dump.json")
    assert {key.split("/")[0] for key in before["objects"]} == {"radiology", "unmatched"}
    assert any(key.endswith(".jpg") for key in before["objects"])

    first = original.manage("backup_radiology", dest, "--no-progress")
    second = original.manage("backup_radiology", dest, "--no-progress")

    count, total = len(before["objects"]), sum(item["size"] for item in before["objects"].values())
    assert f": {count} objects ({total} bytes); copied {count} ({total} bytes), 0 already there." in first
    # Incremental: nothing changed, nothing copied again.
    assert f": {count} objects ({total} bytes); copied 0 (0 bytes), {count} already there." in second

    restored = make_install("restored", store, endpoint)
    restored.env.update(dest_env)
    summary = restored.manage("restore_radiology", dest, "--no-progress")

    vendor = "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite"
    assert f"Restored {vendor} database of snapshot " in summary
    assert (
        f"{count - 1} images, 1 unmatched files waiting; {count} objects ({total} bytes), "
        f"{count} re-checked by SHA-256, 0 problem(s)." in summary
    )
    after = restored.probe("dump", tmp_path / "restored-dump.json")
    assert after == before
    assert restored.probe("answers", tmp_path / "restored-answers.json") == original.probe(
        "answers", tmp_path / "original-answers.json"
    )
    restored.manage("verify_radiology_storage", "--no-progress", "--restart")
    # A second restore finds the install no longer empty: refused, exit status non-zero.
    again = restored.run("restore_radiology", dest, "--no-progress")
    assert again.returncode != 0
    assert "restore only onto an empty install" in again.stderr


INGEST_LOOP = """
import io, pathlib, itertools
from pydicom.uid import generate_uid
from apps.radiology.models import RadiologyOrder
from apps.radiology.pacs_lite_service import PACSLiteService
from apps.radiology.tests.factories import relabelled
order = RadiologyOrder.objects.order_by("pk").first()
study_uid, series_uid = order.study.study_uid, generate_uid()
stop, count = pathlib.Path({stop!r}), pathlib.Path({count!r})
after_stop = 0
for number in itertools.count(1):
    content = relabelled("CT_small.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=number)
    PACSLiteService.ingest_image(order=order, stream=io.BytesIO(content), filename=f"{{number}}.dcm", uploaded_by=None)
    count.write_text(str(number))
    if stop.exists():
        after_stop += 1
        if after_stop > 1:  # one more after the stop is seen: images arrived after the backup's snapshot
            break
"""


def test_a_backup_taken_while_images_arrive_restores_with_every_row_and_its_file(
    tmp_path: Path, make_install: Callable[..., Install]
) -> None:
    original = make_install("busy", "filesystem", None)
    original.manage("migrate", "--noinput")
    original.manage("seed_demo", "--with-images", "--orders", "0")
    stop, count = tmp_path / "stop", tmp_path / "count"
    ingest = subprocess.Popen(  # noqa: S603 (our own argv)
        [str(VENV_BIN / "python"), "manage.py", "shell", "-c", INGEST_LOOP.format(stop=str(stop), count=str(count))],
        cwd=REPO,
        env=original.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not count.exists() and ingest.poll() is None:  # the ingest loop is under way
            threading.Event().wait(0.05)
        dest = str(tmp_path / "backups")
        original.manage("backup_radiology", dest, "--no-progress")
    finally:
        stop.touch()
        _out, errors = ingest.communicate(timeout=120)
    assert ingest.returncode == 0, errors[-3000:]

    restored = make_install("calm", "filesystem", None)
    summary = restored.manage("restore_radiology", dest, "--no-progress")
    # Every image row restored has its file, no file lacks its row (orphans), all re-hashed.
    restored.manage("verify_radiology_storage", "--no-progress", "--restart")
    restored_images = int(summary.split(" images, ")[0].rsplit(" ", 1)[-1])
    original_images = 6 + int(count.read_text())
    assert 6 <= restored_images < original_images
    assert "0 problem(s)" in summary


def _held(tmp_path: Path, name: str) -> UnmatchedImage:
    folder = tmp_path / f"hold-{name}"
    folder.mkdir()
    (folder / f"{name}.dcm").write_bytes(
        relabelled("CT_small.dcm", study_uid=generate_uid(), series_uid=generate_uid(), AccessionNumber="NOSUCH-2")
    )
    call_command("import_radiology", str(folder), "--by-accession", "--no-progress")
    return UnmatchedImage.objects.get(filename=f"{name}.dcm")


def _directory_manifest(dest: Path) -> dict[str, Any]:
    (snapshot,) = backup.DirectoryDestination(dest).snapshots()
    return backup.DirectoryDestination(dest).read_manifest(snapshot)


@pytest.mark.django_db(transaction=True)
def test_what_happens_after_the_snapshot_stays_out_of_the_backup_and_decided_unmatched_files_are_handled(
    radiology_store: str,
    tmp_path: Path,
    make_order: Callable[..., Any],
    ingest_file: Callable[..., Any],
    radtech: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order = make_order()
    first_image = ingest_file(order, "CT_small.dcm").image
    other_order = make_order()
    to_discard, to_assign = _held(tmp_path, "discard-me"), _held(tmp_path, "assign-me")
    real_snapshot = backup.snapshot_database
    late: list[RadiologyImage] = []

    def snapshot_then_busy_clinic(workdir: Path) -> backup.DatabaseSnapshot:
        taken = real_snapshot(workdir)
        # All of this commits after the snapshot, before the objects are copied.
        same_study = relabelled("MR_small.dcm", study_uid=order.study.study_uid, series_uid=generate_uid())
        late.append(ingest_file(order, same_study, "late.dcm").image)
        unmatched.discard([to_discard.pk], user=radtech, channel="admin", reason="duplicate")
        assigned = unmatched.assign([to_assign.pk], order=other_order, user=radtech, channel="admin")
        assert assigned.refused == []
        return taken

    monkeypatch.setattr(backup, "snapshot_database", snapshot_then_busy_clinic)
    dest = tmp_path / "backups"
    out = _call("backup_radiology", str(dest), "--no-progress")

    assert (
        f"WARNING unmatched file {to_discard.pk} ({to_discard.file_key}) was discarded during the backup: not in it"
        in out
    )
    manifest = _directory_manifest(dest)
    listed = {entry["key"]: entry for entry in manifest["objects"]}
    assert set(listed) == {first_image.file_key, to_assign.file_key}  # the late image is wholly out
    assert listed[to_assign.file_key]["sha256"] == to_assign.checksum  # read from the image it became
    (gone,) = manifest["unmatched_discarded_during_backup"]
    assert (gone["row_id"], gone["status"]) == (to_discard.pk, "discarded")

    restored_env = _fresh_install_env(tmp_path, radiology_store, request_endpoint=_endpoint_of(radiology_store))
    with own_database(tmp_path, "after-race") as url:
        env = {**restored_env, "DATABASE_URL": url}
        summary = Install(env).manage("restore_radiology", str(dest), "--no-progress")
        assert "1 images, 1 unmatched files waiting; 2 objects" in summary
        assert "1 unmatched file(s) discarded during the backup." in summary
        Install(env).manage("verify_radiology_storage", "--no-progress", "--restart")
        rows = Install(env).manage(
            "shell",
            "-c",
            "from apps.radiology.models import UnmatchedImage as U; "
            "print(sorted(U.objects.values_list('pk', 'status')))",
        )
    assert rows.strip().splitlines()[-1] == str(sorted([(to_discard.pk, "discarded"), (to_assign.pk, "pending")]))


def _endpoint_of(store: str) -> str | None:
    from django.conf import settings

    return settings.STORAGES["radiology"]["OPTIONS"].get("endpoint_url") if store == "s3" else None


def _fresh_install_env(tmp_path: Path, store: str, *, request_endpoint: str | None) -> dict[str, str]:
    env = server_env(tmp_path / "fresh", "")
    env.update(store_env(store, tmp_path, "fresh", request_endpoint))
    return env


def _call(*args: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_an_unwritable_destination_fails_the_backup(
    tmp_path: Path, order: Any, ingest_file: Callable[..., Any]
) -> None:
    ingest_file(order, "CT_small.dcm")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the USB disk's folder should be")
    with pytest.raises(CommandError, match=r"^backup failed: cannot write to .*not-a-directory/backups"):
        _call("backup_radiology", str(blocker / "backups"), "--no-progress")


@pytest.mark.django_db(transaction=True)
def test_a_missing_bucket_fails_the_backup(s3_endpoint: str, order: Any, ingest_file: Callable[..., Any]) -> None:
    ingest_file(order, "CT_small.dcm")
    with pytest.raises(CommandError, match=r"^backup failed: cannot write to s3://no-such-bucket-here/x"):
        _call("backup_radiology", "s3://no-such-bucket-here/x", "--s3-endpoint-url", s3_endpoint, "--no-progress")


@pytest.mark.django_db(transaction=True)
def test_a_corrupt_stored_object_fails_the_backup_and_leaves_no_manifest(
    tmp_path: Path, order: Any, ingest_file: Callable[..., Any], settings: Any
) -> None:
    image = ingest_file(order, "CT_small.dcm").image
    stored = Path(settings.STORAGES["radiology"]["OPTIONS"]["location"]) / image.file_key
    stored.write_bytes(b"X" + stored.read_bytes()[1:])  # bit rot on the clinic's disk
    dest = tmp_path / "backups"
    with pytest.raises(CommandError, match=r"is incomplete: 1 object\(s\) could not be copied"):
        _call("backup_radiology", str(dest), "--no-progress")
    assert backup.DirectoryDestination(dest).snapshots() == []
    assert list((dest / "objects" / "sha256").glob("*/*")) == []  # nothing under the checksum's name


@pytest.mark.django_db(transaction=True)
def test_a_damaged_backup_copy_is_reported_and_never_reaches_the_store(
    tmp_path: Path, order: Any, ingest_file: Callable[..., Any]
) -> None:
    image = ingest_file(order, "CT_small.dcm").image
    dest = tmp_path / "backups"
    _call("backup_radiology", str(dest), "--no-progress")
    copy = dest / backup.object_name(image.checksum)
    content = copy.read_bytes()
    copy.write_bytes(content[:-1] + bytes([content[-1] ^ 0xFF]))  # one bit flipped on the backup disk
    with own_database(tmp_path, "damaged") as url:
        env = {**server_env(tmp_path / "damaged", url), "MEDIA_ROOT": str(tmp_path / "damaged-media")}
        result = Install(env).run("restore_radiology", str(dest), "--no-progress")
    assert result.returncode != 0
    assert f"PROBLEM image {image.pk} {image.file_key}: checksum mismatch" in result.stdout
    assert not (tmp_path / "damaged-media" / image.file_key).exists()


def test_a_snapshot_name_sorts_by_time_and_suits_a_fat_usb_disk() -> None:
    import datetime as dt

    name = backup.snapshot_name(dt.datetime(2026, 1, 15, 2, 0, 0, 123456, tzinfo=dt.UTC))
    assert name == "20260115T020000.123456Z"
