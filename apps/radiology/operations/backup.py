"""Backups of an install (its database and every stored object) and their restore onto an empty one.

A backup destination (a directory, e.g. a USB disk, or `s3://bucket/prefix`) holds:

    objects/sha256/ab/ab12...            every object ever backed up, named by its SHA-256
    snapshots/20260115T020000.123456Z/   one per run, sorted by time
        database.sqlite3 | database.pgdump   the database as it was at one instant
        manifest.json                        written last: a snapshot without it is incomplete

Why objects are named by their content, shared by all runs: a backup is incremental (an object
already there with the same checksum is not copied again; one listing finds them all), an old
snapshot stays restorable whatever later runs write (a key freed by a discarded unmatched file
can come back with other bytes: by key, the later copy would replace the earlier one), and an
object's name is its own check (restore re-hashes it against the name and the manifest).

Why the database first, then exactly the objects its rows name: ingest writes a file before
its row commits (ingest/commit.py) and never deletes an image's file while its row exists
(images are write-once). So every image row in the snapshot has its file in the store for
the whole run, and an image whose row commits after the snapshot is not in this backup at
all: it is wholly in or wholly out, never a row without its file or a file without its row.
The one file that may go during a run is a waiting unmatched file a tech decides on after the
snapshot (ingest/unmatched.py removes it once the decision commits): see `_unmatched_gone`.

Not backed up: the staged chunks of uploads still arriving (staging/uploads/: a restore sets
those uploads back to byte 0 and the devices send them again, the rule purge_stale_uploads
already applies to stale ones), derived caches (renders), and settings/secrets (.env, var/),
which the clinic keeps by other means.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import boto3
import psycopg2
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.apps import apps as django_apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from apps.radiology import storage
from apps.radiology.errors import StorageFailure, StoredObjectMissing
from apps.radiology.ingest.upload_sync import STAGING_PREFIX
from apps.radiology.models import (
    DICOM_MIME_TYPE,
    DicomListenerHeartbeat,
    RadiologyImage,
    RadiologyUpload,
    UnmatchedImage,
)

MANIFEST_FORMAT = 1
MANIFEST = "manifest.json"
DATABASE_FILES = {"sqlite": "database.sqlite3", "postgresql": "database.pgdump"}
_SNAPSHOT_NAME = re.compile(r"^\d{8}T\d{6}\.\d{6}Z$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
COPY_CHUNK = storage.STREAM_CHUNK_SIZE
# The prefixes of objects a restore expects to find empty (staged chunks included: a store
# with any of them is someone's live install).
STORE_PREFIXES = (f"{storage.KEY_PREFIX}/", f"{storage.UNMATCHED_PREFIX}/", f"{STAGING_PREFIX}/")


class BackupError(Exception):
    """A backup or restore cannot go on (unreadable destination, wrong install, bad snapshot)."""


class ChecksumMismatch(BackupError):
    """Bytes read do not hash to what the rows and the manifest say."""


# --- streaming copies -------------------------------------------------------------------------


def copy_verified(
    chunks: Iterator[bytes], out: IO[bytes], *, sha256: str, size: int, progress: Callable[[int], None]
) -> None:
    """Write `chunks` to `out`, hashing as they pass; raise ChecksumMismatch unless they are the
    expected bytes. Never more than one chunk in memory."""
    digest = hashlib.sha256()
    written = 0
    for chunk in chunks:
        digest.update(chunk)
        out.write(chunk)
        written += len(chunk)
        progress(len(chunk))
    if written != size or digest.hexdigest() != sha256:
        raise ChecksumMismatch(f"read {written} bytes hashing to {digest.hexdigest()}, expected {size} bytes {sha256}")


def hash_stream(chunks: Iterator[bytes], progress: Callable[[int], None]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        progress(len(chunk))
    return digest.hexdigest(), size


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hash_stream(iter(lambda: handle.read(COPY_CHUNK), b""), lambda _n: None)[0]


@contextlib.contextmanager
def local_spool(directory: Path | None) -> Iterator[tuple[IO[bytes], Path]]:
    """A private temporary file on local disk (removed on the way out), for bytes on their way
    between two stores: verified whole before they go on, and never held in memory."""
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(prefix="pacs-backup-", dir=directory, delete=False)  # noqa: SIM115
    path = Path(handle.name)
    try:
        yield handle, path
    finally:
        handle.close()
        path.unlink(missing_ok=True)


# --- destinations -----------------------------------------------------------------------------


def object_name(sha256: str) -> str:
    return f"objects/sha256/{sha256[:2]}/{sha256}"


class Destination:
    """Where backups live: the same layout in a directory or under an S3 prefix."""

    description: str

    def check_writable(self) -> None:
        raise NotImplementedError

    def existing_objects(self) -> dict[str, int]:
        """sha256 -> size of every object already here (one listing, not a question per object)."""
        raise NotImplementedError

    def put_object(self, sha256: str, size: int, chunks: Iterator[bytes], progress: Callable[[int], None]) -> None:
        """Store verified bytes under their checksum; nothing appears under that name unless whole and right."""
        raise NotImplementedError

    def put_file(self, name: str, local: Path) -> None:
        raise NotImplementedError

    def snapshots(self) -> list[str]:
        """Names of the complete snapshots (their manifest written), oldest first."""
        raise NotImplementedError

    def read_manifest(self, snapshot: str) -> dict[str, Any]:
        raise NotImplementedError

    def fetch_file(self, name: str, local: Path) -> None:
        raise NotImplementedError

    def iter_object(self, sha256: str) -> Iterator[bytes]:
        raise NotImplementedError


class DirectoryDestination(Destination):
    """A directory (a USB disk, a NAS mount). Files are written under a temporary name, flushed
    to disk and renamed, so a power cut leaves no half object under a checksum's name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)

    def check_writable(self) -> None:
        try:
            incoming = self.root / "objects" / "incoming"
            incoming.mkdir(parents=True, exist_ok=True)
            probe = incoming / f"probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise BackupError(f"cannot write to {self.root}: {exc.strerror or exc}") from exc

    def existing_objects(self) -> dict[str, int]:
        base = self.root / "objects" / "sha256"
        if not base.is_dir():
            return {}
        return {path.name: path.stat().st_size for path in base.glob("*/*") if _SHA256.match(path.name)}

    def put_object(self, sha256: str, size: int, chunks: Iterator[bytes], progress: Callable[[int], None]) -> None:
        final = self.root / object_name(sha256)
        self._write_atomically(
            final, lambda out: copy_verified(chunks, out, sha256=sha256, size=size, progress=progress)
        )

    def put_file(self, name: str, local: Path) -> None:
        def copy(out: IO[bytes]) -> None:
            with local.open("rb") as source:
                shutil.copyfileobj(source, out, COPY_CHUNK)

        self._write_atomically(self.root / name, copy)

    def _write_atomically(self, final: Path, write: Callable[[IO[bytes]], None]) -> None:
        incoming = self.root / "objects" / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        part = incoming / f"{uuid.uuid4().hex}.part"
        try:
            with part.open("wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, final)
        finally:
            part.unlink(missing_ok=True)

    def snapshots(self) -> list[str]:
        base = self.root / "snapshots"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if _SNAPSHOT_NAME.match(p.name) and (p / MANIFEST).is_file())

    def read_manifest(self, snapshot: str) -> dict[str, Any]:
        return json.loads((self.root / "snapshots" / snapshot / MANIFEST).read_text())

    def fetch_file(self, name: str, local: Path) -> None:
        shutil.copyfile(self.root / name, local)

    def iter_object(self, sha256: str) -> Iterator[bytes]:
        with (self.root / object_name(sha256)).open("rb") as handle:
            while chunk := handle.read(COPY_CHUNK):
                yield chunk


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3/MinIO destination; each unset value falls back to the image store's own."""

    endpoint_url: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    region: str | None = None


class S3Destination(Destination):
    """`s3://bucket/prefix` on S3 or MinIO. An object is verified in a local spool before its
    upload: an S3 PUT (or a completed multipart upload) appears whole or not at all, so a key
    named by a checksum only ever holds those bytes."""

    def __init__(self, bucket: str, prefix: str, s3: S3Settings, spool_dir: Path | None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.description = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.spool_dir = spool_dir
        endpoint = s3.endpoint_url or settings.AWS_S3_ENDPOINT_URL
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=s3.access_key or settings.AWS_ACCESS_KEY_ID,
            aws_secret_access_key=s3.secret_key or settings.AWS_SECRET_ACCESS_KEY,
            region_name=s3.region or settings.AWS_S3_REGION_NAME,
            # As the store's own: v4 signatures, path-style addressing for MinIO and moto.
            config=Config(signature_version="s3v4", s3={"addressing_style": "path" if endpoint else "auto"}),
        )
        # Single-threaded transfers: one object at a time, no thread pool per file.
        self.transfer = TransferConfig(use_threads=False)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _list(self, name_prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(name_prefix)):
            yield from page.get("Contents", ())

    def check_writable(self) -> None:
        probe = self._key(f"objects/incoming/probe-{uuid.uuid4().hex}")
        try:
            self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"")
            self.client.delete_object(Bucket=self.bucket, Key=probe)
        except (BotoCoreError, ClientError) as exc:
            raise BackupError(f"cannot write to {self.description}: {exc}") from exc

    def existing_objects(self) -> dict[str, int]:
        found = {}
        for entry in self._list("objects/sha256/"):
            name = entry["Key"].rsplit("/", 1)[-1]
            if _SHA256.match(name):
                found[name] = int(entry["Size"])
        return found

    def put_object(self, sha256: str, size: int, chunks: Iterator[bytes], progress: Callable[[int], None]) -> None:
        with local_spool(self.spool_dir) as (spool, path):
            copy_verified(chunks, spool, sha256=sha256, size=size, progress=progress)
            spool.close()
            self.client.upload_file(str(path), self.bucket, self._key(object_name(sha256)), Config=self.transfer)

    def put_file(self, name: str, local: Path) -> None:
        self.client.upload_file(str(local), self.bucket, self._key(name), Config=self.transfer)

    def snapshots(self) -> list[str]:
        names = set()
        for entry in self._list("snapshots/"):
            parts = entry["Key"].split("/")
            if parts[-1] == MANIFEST and _SNAPSHOT_NAME.match(parts[-2]):
                names.add(parts[-2])
        return sorted(names)

    def read_manifest(self, snapshot: str) -> dict[str, Any]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(f"snapshots/{snapshot}/{MANIFEST}"))["Body"]
        return json.loads(body.read())

    def fetch_file(self, name: str, local: Path) -> None:
        self.client.download_file(self.bucket, self._key(name), str(local), Config=self.transfer)

    def iter_object(self, sha256: str) -> Iterator[bytes]:
        response = self.client.get_object(Bucket=self.bucket, Key=self._key(object_name(sha256)))
        yield from response["Body"].iter_chunks(COPY_CHUNK)


def open_destination(location: str, s3: S3Settings | None = None) -> Destination:
    """`s3://bucket/prefix` or a directory path."""
    if location.startswith("s3://"):
        bucket, _slash, prefix = location[len("s3://") :].partition("/")
        if not bucket:
            raise BackupError(f"no bucket in {location!r}")
        return S3Destination(bucket, prefix, s3 or S3Settings(), settings.RADIOLOGY_STAGING_DIR)
    return DirectoryDestination(Path(location).expanduser().resolve())


# --- the database snapshot ----------------------------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    """One object a snapshot's rows name: its key in the store and what it must hash to."""

    key: str
    sha256: str
    size: int
    content_type: str
    kind: str  # "image" | "unmatched"
    row_id: int


@dataclass
class DatabaseSnapshot:
    vendor: str
    path: Path
    objects: list[StoredObject]


_IMAGE_COLUMNS = "id, file_key, checksum, file_size, mime_type"
_UNMATCHED_COLUMNS = "id, file_key, checksum, file_size"


def _image_rows_sql() -> str:
    return f"SELECT {_IMAGE_COLUMNS} FROM {RadiologyImage._meta.db_table} ORDER BY id"  # noqa: S608 (model table)


def _unmatched_rows_sql() -> str:
    table = UnmatchedImage._meta.db_table
    return f"SELECT {_UNMATCHED_COLUMNS} FROM {table} WHERE status = 'pending' ORDER BY id"  # noqa: S608


def _objects_of(image_rows: list[tuple[Any, ...]], unmatched_rows: list[tuple[Any, ...]]) -> list[StoredObject]:
    objects = [
        StoredObject(key=key, sha256=checksum, size=size, content_type=mime, kind="image", row_id=pk)
        for pk, key, checksum, size, mime in image_rows
    ]
    objects += [
        StoredObject(key=key, sha256=checksum, size=size, content_type=DICOM_MIME_TYPE, kind="unmatched", row_id=pk)
        for pk, key, checksum, size in unmatched_rows
    ]
    return objects


def snapshot_database(workdir: Path) -> DatabaseSnapshot:
    """The database as at one instant, and the objects its rows name (read from that same instant)."""
    if connection.vendor == "sqlite":
        return _snapshot_sqlite(workdir)
    if connection.vendor == "postgresql":
        return _snapshot_postgresql(workdir)
    raise BackupError(f"backups support SQLite and PostgreSQL, not {connection.vendor}")


def _snapshot_sqlite(workdir: Path) -> DatabaseSnapshot:
    """SQLite's online backup API, in one step: it reads the database under one read transaction,
    so writers (WAL) go on and the copy is the database at one instant. The rows are then read
    from the copy itself, so the objects listed are exactly those the copy names."""
    path = workdir / DATABASE_FILES["sqlite"]
    connection.ensure_connection()
    with contextlib.closing(sqlite3.connect(path)) as copy:
        # Django's own connection as the source: the same database whether a file or (tests) memory.
        connection.connection.backup(copy, pages=-1)
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        images = copy.execute(_image_rows_sql()).fetchall()
        unmatched = copy.execute(_unmatched_rows_sql()).fetchall()
    return DatabaseSnapshot("sqlite", path, _objects_of(images, unmatched))


def postgres_bin(name: str) -> str:
    """A PostgreSQL client program: in PACS_PG_BIN_DIR if set, else the newest
    /usr/lib/postgresql/N/bin (Debian; pg_dump must be at least the server's version), else PATH."""
    configured = settings.PACS_PG_BIN_DIR
    candidates = [Path(configured)] if configured else []
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0
    )
    candidates += list(reversed(versions))
    for directory in candidates:
        if (directory / name).is_file():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found: install the PostgreSQL client or set PACS_PG_BIN_DIR")
    return found


def _pg_params() -> dict[str, Any]:
    settings_dict = connection.settings_dict
    params = {
        "dbname": settings_dict["NAME"],
        "user": settings_dict.get("USER") or None,
        "password": settings_dict.get("PASSWORD") or None,
        "host": settings_dict.get("HOST") or None,
        "port": settings_dict.get("PORT") or None,
    }
    sslmode = (settings_dict.get("OPTIONS") or {}).get("sslmode")
    if sslmode:
        params["sslmode"] = sslmode
    return {key: value for key, value in params.items() if value is not None}


def _pg_env(params: dict[str, Any]) -> dict[str, str]:
    """libpq's environment for pg_dump/pg_restore: the password never on a command line."""
    names = {"dbname": "PGDATABASE", "user": "PGUSER", "password": "PGPASSWORD", "host": "PGHOST", "port": "PGPORT"}
    names["sslmode"] = "PGSSLMODE"
    return {**os.environ, **{names[key]: str(value) for key, value in params.items()}}


def _snapshot_postgresql(workdir: Path) -> DatabaseSnapshot:
    """pg_dump (custom format) of a snapshot exported from a repeatable-read transaction, and
    the rows read in that same transaction: dump and object list see the very same instant."""
    path = workdir / DATABASE_FILES["postgresql"]
    params = _pg_params()
    with contextlib.closing(psycopg2.connect(**params)) as pinned:
        pinned.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with pinned.cursor() as cursor:
            cursor.execute("SELECT pg_export_snapshot()")
            (snapshot_id,) = cursor.fetchone()
            # The export stays importable while this transaction is open: it is, until the rows are read.
            result = subprocess.run(  # noqa: S603 (our own argv)
                [postgres_bin("pg_dump"), "--format=custom", f"--snapshot={snapshot_id}", f"--file={path}"],
                env=_pg_env(params),
                capture_output=True,
                check=False,
            )
            if result.returncode != 0:
                raise BackupError(f"pg_dump failed: {result.stderr.decode(errors='replace').strip()}")
            cursor.execute(_image_rows_sql())
            images = cursor.fetchall()
            cursor.execute(_unmatched_rows_sql())
            unmatched = cursor.fetchall()
        pinned.rollback()
    return DatabaseSnapshot("postgresql", path, _objects_of(images, unmatched))


# --- backup -------------------------------------------------------------------------------------


@dataclass
class BackupReport:
    snapshot: str = ""
    objects: int = 0
    bytes: int = 0
    copied: int = 0
    copied_bytes: int = 0
    already_there: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def snapshot_name(now: dt.datetime) -> str:
    """UTC, sortable, and without ':' (which FAT-formatted USB disks refuse)."""
    return now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def run_backup(
    destination: Destination, *, progress_factory: Callable[[int], Any], workdir: Path | None = None
) -> BackupReport:
    """Snapshot the database, copy every object its rows name that the destination lacks, then
    write the manifest. Problems are collected, not raised one by one, so a single bad object
    still lets every other be copied (and the next run has less to do); with any problem the
    manifest is not written and the snapshot stays incomplete (restore ignores it)."""
    destination.check_writable()
    report = BackupReport(snapshot=snapshot_name(timezone.now()))
    with tempfile.TemporaryDirectory(prefix="pacs-backup-", dir=workdir) as tmp:
        snapshot = snapshot_database(Path(tmp))
        manifest_objects, gone = _copy_objects(destination, snapshot.objects, report, progress_factory)
        database_name = f"snapshots/{report.snapshot}/{snapshot.path.name}"
        destination.put_file(database_name, snapshot.path)
        if report.problems:
            return report
        manifest = {
            "format": MANIFEST_FORMAT,
            "snapshot": report.snapshot,
            "created_at": timezone.now().astimezone(dt.UTC).isoformat(),
            "database": {
                "vendor": snapshot.vendor,
                "file": snapshot.path.name,
                "sha256": file_sha256(snapshot.path),
                "size": snapshot.path.stat().st_size,
            },
            "objects": manifest_objects,
            "unmatched_discarded_during_backup": gone,
            "not_backed_up": [f"{STAGING_PREFIX}/ (chunks of uploads in progress: they restart from byte 0)"],
        }
        manifest_path = Path(tmp) / MANIFEST
        manifest_path.write_text(json.dumps(manifest, indent=1))
        destination.put_file(f"snapshots/{report.snapshot}/{MANIFEST}", manifest_path)
    return report


def _copy_objects(
    destination: Destination,
    objects: list[StoredObject],
    report: BackupReport,
    progress_factory: Callable[[int], Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    present = destination.existing_objects()
    entries: list[dict[str, Any]] = []
    gone: list[dict[str, Any]] = []
    with progress_factory(sum(item.size for item in objects)) as progress:
        for item in objects:
            if present.get(item.sha256) == item.size:
                report.already_there += 1
                progress.update(item.size)
            else:
                try:
                    copied = _copy_one(destination, item, progress.update)
                except (StorageFailure, ChecksumMismatch, OSError, BotoCoreError, ClientError) as exc:
                    report.problems.append(f"{item.kind} {item.row_id} {item.key}: {_describe(exc)}")
                    continue
                if isinstance(copied, dict):  # discarded during the backup: recorded, not copied
                    gone.append(copied)
                    report.warnings.append(copied["warning"])
                    progress.update(item.size)
                    continue
                present[item.sha256] = item.size
                report.copied += 1
                report.copied_bytes += item.size
            report.objects += 1
            report.bytes += item.size
            entries.append(
                {
                    "key": item.key,
                    "sha256": item.sha256,
                    "size": item.size,
                    "content_type": item.content_type,
                    "kind": item.kind,
                    "row_id": item.row_id,
                }
            )
    return entries, gone


def _copy_one(destination: Destination, item: StoredObject, progress: Callable[[int], None]) -> dict[str, Any] | None:
    """Copy one object; for a waiting unmatched file gone since the snapshot, see _unmatched_decided."""
    try:
        destination.put_object(item.sha256, item.size, storage.iter_object_chunks(item.key), progress)
        return None
    except StoredObjectMissing:
        if item.kind != "unmatched":
            raise
        decided = _unmatched_decided(item)
        if decided is None:
            raise
    if isinstance(decided, dict):
        return decided
    destination.put_object(item.sha256, item.size, storage.iter_object_chunks(decided), progress)
    return None


def _unmatched_decided(item: StoredObject) -> str | dict[str, Any] | None:
    """A waiting unmatched file of the snapshot whose file is gone: what a tech decided since.

    Assigned: its bytes were ingested unchanged as an image (same SHA-256): the key to read
    them from, so the restored install has the file waiting, as its snapshot says. Discarded:
    the bytes are gone for good, on purpose. That is no failure of the backup (holding the
    tech's decision back for the length of a backup would be worse): the note returned goes in
    the manifest, and restore marks the row discarded, as the clinic decided, instead of
    leaving a waiting row without its file. None: still waiting (or vanished): a real loss.
    """
    live = UnmatchedImage.objects.filter(pk=item.row_id).select_related("image").first()
    if live is None or live.status == UnmatchedImage.Status.PENDING:
        return None
    if live.status == UnmatchedImage.Status.ASSIGNED:
        if live.image is not None and live.image.checksum == item.sha256:
            return live.image.file_key
        return None
    return {
        "row_id": item.row_id,
        "key": item.key,
        "sha256": item.sha256,
        "status": live.status,
        "handled_at": live.handled_at.isoformat() if live.handled_at else None,
        "warning": f"unmatched file {item.row_id} ({item.key}) was {live.status} during the backup: not in it",
    }


def _describe(exc: BaseException) -> str:
    if isinstance(exc, StoredObjectMissing):
        return "missing from the store"
    if isinstance(exc, ChecksumMismatch):
        return f"checksum mismatch ({exc})"
    return f"{type(exc).__name__}: {exc}"


# --- restore ------------------------------------------------------------------------------------


@dataclass
class RestoreReport:
    snapshot: str = ""
    vendor: str = ""
    objects: int = 0
    bytes: int = 0
    verified: int = 0
    images: int = 0
    unmatched_waiting: int = 0
    unmatched_marked_discarded: int = 0
    uploads_restarted: int = 0
    problems: list[str] = field(default_factory=list)


def choose_snapshot(destination: Destination, name: str | None) -> str:
    available = destination.snapshots()
    if not available:
        raise BackupError(f"no complete backup snapshot in {destination.description}")
    if name is None:
        return available[-1]
    if name not in available:
        raise BackupError(f"no complete snapshot {name!r} in {destination.description} (have: {', '.join(available)})")
    return name


def install_contents() -> list[str]:
    """What makes this install not empty (its own rows, users, stored objects); [] if empty.

    Django's own bookkeeping that `migrate` writes (content types, permissions, applied
    migrations) does not count: a freshly migrated database is empty; nor does a DICOM listener's
    heartbeat (the state of a process, not of the archive).
    """
    found = []
    tables = set(connection.introspection.table_names())
    models = [
        model
        for config in django_apps.get_app_configs()
        if config.name.startswith("apps.")
        for model in config.get_models()
        if model is not DicomListenerHeartbeat
    ]
    models.append(get_user_model())
    for model in models:
        if model._meta.db_table in tables and model._default_manager.exists():
            found.append(f"{model._meta.label} rows")
    for prefix in STORE_PREFIXES:
        if next(storage.iter_keys(prefix), None) is not None:
            found.append(f"objects under {prefix} in the store")
    return found


def run_restore(
    destination: Destination, snapshot: str, *, progress_factory: Callable[[int], Any], workdir: Path | None = None
) -> RestoreReport:
    """Restore the database, then each object into the configured store, then re-hash every one."""
    manifest = destination.read_manifest(snapshot)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise BackupError(f"snapshot {snapshot} has manifest format {manifest.get('format')!r}, not {MANIFEST_FORMAT}")
    report = RestoreReport(snapshot=snapshot, vendor=manifest["database"]["vendor"])
    if report.vendor != connection.vendor:
        raise BackupError(
            f"snapshot {snapshot} is of a {report.vendor} database; this install uses {connection.vendor}"
        )
    contents = install_contents()
    if contents:
        raise BackupError(
            "restore only onto an empty install; this one has "
            + ", ".join(contents)
            + ". Point DATABASE_URL at a new database and the store at an empty place."
        )
    with tempfile.TemporaryDirectory(prefix="pacs-restore-", dir=workdir) as tmp:
        database = Path(tmp) / manifest["database"]["file"]
        destination.fetch_file(f"snapshots/{snapshot}/{database.name}", database)
        if file_sha256(database) != manifest["database"]["sha256"]:
            raise BackupError(f"the database file of snapshot {snapshot} does not match its manifest checksum")
        _restore_database(report.vendor, database)
    # A backup of an older release restored by a newer one: bring the schema forward (a no-op
    # for the same release). post_migrate also re-creates the database's guard triggers.
    call_command("migrate", interactive=False, verbosity=0)
    # The old server's listener said "listening": here it would read as not responding.
    DicomListenerHeartbeat.objects.all().delete()
    _after_database(manifest, report)
    objects = manifest["objects"]
    report.objects = len(objects)
    report.bytes = sum(entry["size"] for entry in objects)
    with progress_factory(report.bytes) as progress:
        for entry in objects:
            try:
                _restore_object(destination, entry, progress.update)
            except (StorageFailure, ChecksumMismatch, OSError, BotoCoreError, ClientError, BackupError) as exc:
                report.problems.append(f"{entry['kind']} {entry['row_id']} {entry['key']}: {_describe(exc)}")
    _verify_restored(objects, report)
    return report


def _restore_database(vendor: str, database: Path) -> None:
    """SQLite: the online backup API, the snapshot file onto this install's database (every page:
    schema, rows and triggers). PostgreSQL: pg_restore. Neither fires the audit trail's row
    triggers (they guard UPDATE, DELETE and TRUNCATE; a restore only creates and inserts)."""
    if vendor == "sqlite":
        connection.ensure_connection()
        with contextlib.closing(sqlite3.connect(database)) as snapshot:
            snapshot.backup(connection.connection, pages=-1)
        connection.close()  # reopened on next use, so Django sees the restored schema afresh
        return
    params = _pg_params()
    # --clean --if-exists: a freshly migrated (empty, checked above) database has the tables already.
    result = subprocess.run(  # noqa: S603 (our own argv)
        [
            postgres_bin("pg_restore"),
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "--exit-on-error",
            f"--dbname={params['dbname']}",
            str(database),
        ],
        env=_pg_env(params),
        capture_output=True,
        check=False,
    )
    connection.close()
    if result.returncode != 0:
        raise BackupError(f"pg_restore failed: {result.stderr.decode(errors='replace').strip()}")


def _after_database(manifest: dict[str, Any], report: RestoreReport) -> None:
    """What the restored rows must say about what the backup does not hold.

    Uploads still arriving at backup time: their staged chunks are not backed up, so they go
    back to byte 0 (as purge_stale_uploads does for stale ones); the device is told 409 with
    received_bytes 0 and sends again. Unmatched files discarded during the backup: marked
    discarded as the tech decided (their bytes are gone), rather than waiting without a file.
    """
    now = timezone.now()
    with transaction.atomic():
        report.uploads_restarted = RadiologyUpload.objects.filter(
            status=RadiologyUpload.Status.PENDING, received_bytes__gt=0
        ).update(received_bytes=0, chunk_offsets=[], updated_at=now)
        for gone in manifest.get("unmatched_discarded_during_backup", []):
            handled_at = dt.datetime.fromisoformat(gone["handled_at"]) if gone.get("handled_at") else now
            report.unmatched_marked_discarded += UnmatchedImage.objects.filter(
                pk=gone["row_id"], status=UnmatchedImage.Status.PENDING
            ).update(
                status=UnmatchedImage.Status.DISCARDED,
                handled_at=handled_at,
                reason=f"discarded while backup {manifest['snapshot']} ran; file not in the backup",
            )


def _restore_object(destination: Destination, entry: dict[str, Any], progress: Callable[[int], None]) -> None:
    """Copy one object into the configured store at its key, verified in a local spool first
    (a damaged backup copy never reaches the store). The spool is in the ingest staging
    directory, on the store's own disk when the store is a filesystem: then it is linked in,
    not copied again."""
    with local_spool(settings.RADIOLOGY_STAGING_DIR) as (spool, path):
        copy_verified(
            destination.iter_object(entry["sha256"]),
            spool,
            sha256=entry["sha256"],
            size=entry["size"],
            progress=progress,
        )
        spool.flush()
        spool.seek(0)
        stored = storage.save_new_object(entry["key"], spool, content_type=entry["content_type"], local_path=path)
    if stored != entry["key"]:
        raise BackupError(f"the store already had {entry['key']}; stored beside it as {stored}")


def _verify_restored(objects: list[dict[str, Any]], report: RestoreReport) -> None:
    """Re-read every object from the store and hash it, and check the rows name exactly them."""
    expected = {entry["key"]: entry for entry in objects}
    for entry in objects:
        try:
            digest, size = hash_stream(storage.iter_object_chunks(entry["key"]), lambda _n: None)
        except StorageFailure as exc:
            report.problems.append(f"after restore, {entry['key']}: {_describe(exc)}")
            continue
        if (digest, size) != (entry["sha256"], entry["size"]):
            report.problems.append(f"after restore, {entry['key']}: checksum mismatch")
            continue
        report.verified += 1
    rows = list(RadiologyImage.objects.values_list("file_key", "checksum"))
    rows += list(
        UnmatchedImage.objects.filter(status=UnmatchedImage.Status.PENDING).values_list("file_key", "checksum")
    )
    report.images = RadiologyImage.objects.count()
    report.unmatched_waiting = len(rows) - report.images
    for key, checksum in rows:
        entry = expected.get(key)
        if entry is None or entry["sha256"] != checksum:
            report.problems.append(f"row names {key}, which the backup does not hold with its checksum")
