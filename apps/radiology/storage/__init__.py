"""The only module that touches the image store: STORAGES["radiology"] via django-storages.

Filesystem (default) or S3/MinIO. Two rules hold on both:
- an existing object is never overwritten: a second writer to the same key gets a fresh
  key beside it (the filesystem backend opens with O_EXCL; the S3 backend below writes
  with `If-None-Match: *`), so a race can never replace a stored patient image;
- errors of the store surface as StorageFailure, so callers handle one exception type; a
  disk with no room left (ENOSPC) as its kind InsufficientStorage, with no partial file left.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import errno
import logging
import os
import posixpath
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation, SuspiciousOperation
from django.core.files import File
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.utils.text import get_valid_filename
from storages.utils import safe_join

from apps.radiology.errors import InsufficientStorage, InvalidFilename, StorageFailure, StoredObjectMissing
from apps.radiology.imagefiles.uids import validate_uid

if TYPE_CHECKING:
    from storages.backends.s3 import S3Storage

logger = logging.getLogger(__name__)

STORAGE_ALIAS = "radiology"
KEY_PREFIX = "radiology"
MAX_FILENAME_LENGTH = 128
STREAM_CHUNK_SIZE = 64 * 1024
_UNSAFE_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
# A write that found the disk (or the user's quota) full.
_OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def radiology_storage() -> Storage:
    """The configured store of radiology files."""
    return storages[STORAGE_ALIAS]


# The S3 backend (boto3, botocore, cryptography: ~16 MiB in every process) is imported only when
# STORAGES names it (RadiologyS3Storage, in .s3), so no process on the filesystem store (the
# default) loads it. Until it is loaded no S3 store can exist and no botocore error be raised:
# the three helpers below then match nothing.


class _NotLoaded(Exception):
    """Stands for a botocore error while botocore is not loaded (nothing can raise it then)."""


def _s3_storage_class() -> type[S3Storage] | None:
    """django-storages' S3Storage if its module is loaded (every S3 store is one), else None."""
    backend = sys.modules.get("storages.backends.s3")
    return None if backend is None else backend.S3Storage


def _s3_client_error() -> type[Exception]:
    """botocore's ClientError (a request the S3 store answered with an error), or _NotLoaded."""
    exceptions = sys.modules.get("botocore.exceptions")
    return _NotLoaded if exceptions is None else exceptions.ClientError


def _s3_errors() -> tuple[type[Exception], ...]:
    """botocore's BotoCoreError and ClientError (every failure of an S3 call), or _NotLoaded."""
    exceptions = sys.modules.get("botocore.exceptions")
    return (_NotLoaded,) if exceptions is None else (exceptions.BotoCoreError, exceptions.ClientError)


def __getattr__(name: str) -> Any:
    """RadiologyS3Storage (STORAGES names it apps.radiology.storage.RadiologyS3Storage), imported
    on first use (PEP 562), so importing this package does not load boto3."""
    if name == "RadiologyS3Storage":
        from apps.radiology.storage.s3 import RadiologyS3Storage

        return RadiologyS3Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_out_of_space(error: BaseException) -> bool:
    """Whether a failed write found no room: refused as InsufficientStorage (507), not a 500 or 503.

    A disk (ENOSPC, or the user's quota), or an S3 store answering 507 (MinIO's
    XMinioStorageFull, when its drives are below their own free-space threshold).
    """
    if isinstance(error, _s3_client_error()):
        return error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 507
    return isinstance(error, OSError) and error.errno in _OUT_OF_SPACE_ERRNOS


@contextlib.contextmanager
def refused_when_disk_full() -> Iterator[None]:
    """Raise InsufficientStorage (507) for a write inside that found its disk full, not the OSError (a 500)."""
    try:
        yield
    except OSError as exc:
        if is_out_of_space(exc):
            raise InsufficientStorage() from exc
        raise


def is_s3(storage: Storage | None = None) -> bool:
    store = storage or radiology_storage()  # first: making the configured store imports its backend
    s3_storage = _s3_storage_class()
    return s3_storage is not None and isinstance(store, s3_storage)


def safe_filename(original: str) -> str:
    """Reduce a client's filename to a safe base name for a storage key.

    Directory parts of either separator (`../`, `C:\\exports\\`) go, control characters
    go, and what remains passes Django's get_valid_filename (letters, digits, `-_.`).
    Raises InvalidFilename when nothing usable is left.
    """
    base = re.split(r"[\\/]", original or "")[-1]
    base = _UNSAFE_CHARACTERS.sub("", base).strip().lstrip(".")
    try:
        cleaned = get_valid_filename(base)
    except SuspiciousFileOperation as exc:
        raise InvalidFilename() from exc
    cleaned = cleaned.lstrip(".")
    if not any(character.isalnum() for character in cleaned):
        raise InvalidFilename()
    if len(cleaned) > MAX_FILENAME_LENGTH:
        stem, dot, extension = cleaned.rpartition(".")
        if dot and 0 < len(extension) <= 16:
            cleaned = f"{stem[: MAX_FILENAME_LENGTH - len(extension) - 1]}.{extension}"
        else:
            cleaned = cleaned[:MAX_FILENAME_LENGTH]
    return cleaned


def original_filename(original: str) -> str:
    """The client's filename as kept on the image row (at most 255 characters).

    Path parts stay (it is a record of what was sent), control characters go: PostgreSQL
    text cannot hold NUL at all, and none of them belongs in a name shown to people.
    """
    return _UNSAFE_CHARACTERS.sub("", original or "")[:255]


def build_file_key(*, study_uid: str, series_uid: str, image_uid: str, filename: str) -> str:
    """radiology/{study_uid}/{series_uid}/{image_uid}/{safe filename}, e.g.
    radiology/1.2.3.4/1.2.3.4.1/1.2.3.4.1.1/chest_pa.dcm"""
    validate_uid(study_uid, field="study_uid")
    validate_uid(series_uid, field="series_uid")
    validate_uid(image_uid, field="image_uid")
    return f"{KEY_PREFIX}/{study_uid}/{series_uid}/{image_uid}/{safe_filename(filename)}"


UNMATCHED_PREFIX = "unmatched"


def build_unmatched_key(*, image_uid: str, filename: str) -> str:
    """unmatched/{image_uid}/{safe filename}: a file that came with no order, waiting for a tech
    (ingest/holding.py). Outside radiology/, so nothing takes it for an image of a study."""
    validate_uid(image_uid, field="image_uid")
    return f"{UNMATCHED_PREFIX}/{image_uid}/{safe_filename(filename)}"


def save_new_object(key: str, content: IO[bytes], *, content_type: str, local_path: Path | None = None) -> str:
    """Stream `content` to a new object at `key` (or beside it if taken); return the key used.

    `local_path`: where `content` lies on this machine, if it is a file nothing will write
    to again (an ingest spool). The filesystem store then links it in rather than copying it.
    A disk with no room for it raises InsufficientStorage, and no part of the file is left.
    On the filesystem the file and its directories are fsynced before this returns, so a row
    committed after it never points at bytes a power cut can take (_sync_new_file).
    """
    upload = File(content, name=os.path.basename(key))
    upload.content_type = content_type  # type: ignore[attr-defined]  # read by the S3 backend
    store = radiology_storage()
    try:
        if isinstance(store, FileSystemStorage):
            first_new_directory = _first_missing_directory(store, key)
            linked = _link_new_file(store, key, local_path) if local_path is not None else None
            written = linked if linked is not None else _write_new_file(store, key, upload)
            name = written if written is not None else store.save(key, upload)
            batch = _sync_batch.get()
            if batch is not None:
                batch.append((Path(store.path(name)), _last_directory_to_sync(store, first_new_directory)))
            else:
                _sync_new_file(store, name, first_new_directory)
            return name
        # A PUT is durable when S3 (or MinIO) answers it: nothing to sync.
        return store.save(key, upload)
    except (OSError, *_s3_errors()) as exc:
        logger.error("radiology storage write failed for %s: %s", key, type(exc).__name__)
        if is_out_of_space(exc):
            raise InsufficientStorage() from exc
        raise StorageFailure() from exc


def _write_new_file(store: FileSystemStorage, key: str, content: File) -> str | None:
    """Stream `content` into a new file at `key` (or beside it if taken); None if it cannot be.

    Django's save, except that a write that fails half way (the disk filled up) leaves no
    partial file: Django's own save leaves it, a file no row would ever point at. The name
    is first made this call's own by an exclusive create, as Django's save does, so nothing
    stored is ever replaced and removing it after a failure cannot touch another writer's
    file; Django's save then writes into it (allow_overwrite), with its file mode and group.
    None (Django's save alone writes) when directories need a mode of their own.
    """
    if store.directory_permissions_mode is not None:
        return None
    name, full_path = _claim_new_name(
        store, key, lambda path: os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    )
    into_own_file = FileSystemStorage(
        location=store.location, file_permissions_mode=store.file_permissions_mode, allow_overwrite=True
    )
    try:
        return into_own_file.save(name, content)
    except BaseException:
        full_path.unlink(missing_ok=True)
        raise


def _link_new_file(store: FileSystemStorage, key: str, source: Path) -> str | None:
    """Hard-link `source` in as a new file at `key` (or beside it if taken); None if it cannot be.

    What FileSystemStorage.save does for a stream, without copying the bytes: os.link, like
    its O_EXCL open, fails on an existing name, so nothing stored is ever replaced. None
    (the caller copies) when the spool is on another filesystem or cannot be linked, and
    when directories need a mode of their own (Django's save sets it).
    """
    if store.directory_permissions_mode is not None:
        return None
    try:
        name, full_path = _claim_new_name(store, key, lambda path: os.link(source, path))
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            return None
        raise
    # The spool was created private (0600); the stored file gets the mode Django's save gives.
    os.chmod(full_path, store.file_permissions_mode if store.file_permissions_mode is not None else 0o644)
    return name


def _first_missing_directory(store: FileSystemStorage, key: str) -> Path | None:
    """The topmost directory on the way to `key` that does not exist yet (the save makes it), or None."""
    missing = None
    directory = Path(store.path(key)).parent
    while not directory.exists():
        missing, directory = directory, directory.parent
    return missing


# The files saved inside `synced_together()` (their path, the last directory up to which to sync).
_sync_batch: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar(
    "radiology_sync_batch", default=None
)


@contextlib.contextmanager
def synced_together() -> Iterator[None]:
    """Files saved inside the block are fsynced together when it ends, as _sync_new_file would
    one by one: every file first, then each directory on their ways once, deepest first.

    For a batch (a STOW-RS request): on ext4 the first fsync commits the journal with the other
    files' data, so the rest cost little, and a series directory is synced once, not once a
    file. The caller commits rows only after the block ends; if the sync fails, the error is
    raised (as StorageFailure or InsufficientStorage) and the caller removes the files it saved.
    """
    if _sync_batch.get() is not None:  # already inside one: that block syncs these files too
        yield
        return
    saved: list[tuple[Path, Path]] = []
    token = _sync_batch.set(saved)
    try:
        yield
    finally:
        _sync_batch.reset(token)
    try:
        for path, _last in saved:
            _fsync(path)
        directories: set[Path] = set()
        for path, last in saved:
            directory = path.parent
            while True:
                directories.add(directory)
                if directory == last or directory == directory.parent:
                    break
                directory = directory.parent
        for directory in sorted(directories, key=lambda found: len(found.parts), reverse=True):
            _fsync(directory)
    except OSError as exc:
        logger.error("radiology storage sync failed: %s", type(exc).__name__)
        if is_out_of_space(exc):
            raise InsufficientStorage() from exc
        raise StorageFailure() from exc


def _last_directory_to_sync(store: FileSystemStorage, first_new_directory: Path | None) -> Path:
    """The store's root, or the parent of the root when this save created the root."""
    root = Path(store.location)
    if first_new_directory is not None and root.is_relative_to(first_new_directory):
        return first_new_directory.parent
    return root


def _sync_new_file(store: FileSystemStorage, name: str, first_new_directory: Path | None) -> None:
    """Put the new file `name` on disk, bytes and name, before the caller's row may point at it.

    Its row commits once this returns, and only then is the image acknowledged (201, C-STORE
    success). Until fsync the bytes may sit in the page cache only, a linked spool's as much
    as a written file's (nothing fsynced them when they were staged), and so may the file's
    entry in its directory and each new directory's entry in its parent: a power cut would
    leave a committed row pointing at an empty or missing file. So: the file first, then each
    directory from its own up to the store's root. Directories another writer just made (two
    associations sending one study) are on that way too, so those are not left to it; an
    unchanged directory's fsync costs little. Above the root only what this save created.

    Always on, by design: no setting turns it off. A store of medical images must never lose
    one it acknowledged, and a switch that trades that for speed is one no install should have.
    If the sync fails the file is removed (its row never commits) and the error goes on.
    """
    full_path = Path(store.path(name))
    last = _last_directory_to_sync(store, first_new_directory)
    try:
        _fsync(full_path)
        directory = full_path.parent
        while True:
            _fsync(directory)
            if directory == last or directory == directory.parent:
                break
            directory = directory.parent
    except BaseException:
        full_path.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    """fsync one file or directory by its path (a read-only descriptor is enough on Linux)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _claim_new_name(store: FileSystemStorage, key: str, create: Callable[[Path], object]) -> tuple[str, Path]:
    """(name, path) of the file `create` made at `key`, or at the next free name beside it.

    `create` must fail with FileExistsError on a taken path (an O_EXCL open, os.link): the name
    is then this call's own, so nothing stored is ever replaced, however many writers race.
    """
    name = store.get_available_name(key)
    while True:
        full_path = Path(store.path(name))
        full_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            create(full_path)
        except FileExistsError:
            name = store.get_available_name(name)
            continue
        return name, full_path


def delete_object(key: str) -> None:
    """Remove an object this process wrote and no row references (clean-up after a failure)."""
    try:
        radiology_storage().delete(key)
    except (OSError, *_s3_errors()) as exc:
        # Logged, not raised: the caller is already failing; verify_radiology_storage finds orphans.
        logger.error("radiology storage clean-up failed for %s: %s", key, type(exc).__name__)


def delete_under(prefix: str) -> None:
    """Remove every object under `prefix` (e.g. "staging/uploads/18/"), and on the filesystem its
    emptied directory: clean-up of a whole scratch area, logged and not raised like delete_object.

    For objects nothing recorded: a process killed between writing an object and recording its
    key leaves one that no row names, and only a listing finds it.
    """
    try:
        keys = list(iter_keys(prefix))
    except StorageFailure as exc:
        logger.error("radiology storage clean-up could not list %s: %s", prefix, type(exc.__cause__).__name__)
        return
    for key in keys:
        delete_object(key)
    store = radiology_storage()
    if is_s3(store):
        return
    base = Path(store.path(prefix))
    try:
        directories = [path for path in base.rglob("*") if path.is_dir()]
    except OSError as exc:  # unreadable: its objects are gone, the empty directories can stay
        logger.error("radiology storage clean-up could not list the directories of %s: %s", prefix, type(exc).__name__)
        return
    for directory in [*sorted(directories, key=lambda path: -len(path.parts)), base]:
        with contextlib.suppress(OSError):  # not empty: something new arrived
            directory.rmdir()


def object_exists(key: str) -> bool:
    try:
        return radiology_storage().exists(key)
    except (OSError, *_s3_errors()) as exc:
        raise StorageFailure() from exc


def object_modified_time(key: str) -> dt.datetime | None:
    """When the object was last written (an aware datetime), or None if it is gone."""
    try:
        return radiology_storage().get_modified_time(key)
    except FileNotFoundError:
        return None
    except _s3_client_error() as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return None
        raise StorageFailure() from exc
    except (OSError, *_s3_errors()) as exc:
        raise StorageFailure() from exc


def check_reachable() -> None:
    """Raise StorageFailure unless the store answers; on S3 its bucket must exist.

    A HEAD of a missing key is 404 whether the key or the whole bucket is missing, so S3 is
    asked about the bucket itself (HeadBucket: the ListBucket right that listing needs).
    """
    store = radiology_storage()
    try:
        if is_s3(store):
            store.connection.meta.client.head_bucket(Bucket=store.bucket_name)
        else:
            store.exists(f"{KEY_PREFIX}/.healthz")
    except (OSError, *_s3_errors()) as exc:
        raise StorageFailure() from exc


def open_object(key: str) -> IO[bytes] | None:
    """Open a stored object for streaming reads; None if it is missing."""
    try:
        return radiology_storage().open(key, "rb")
    except FileNotFoundError:
        return None
    except (OSError, *_s3_errors()) as exc:
        raise StorageFailure() from exc


def iter_object_chunks(key: str, chunk_size: int = STREAM_CHUNK_SIZE) -> Iterator[bytes]:
    """Yield a stored object's bytes chunk by chunk (never all at once)."""
    handle = open_object(key)
    if handle is None:
        raise StoredObjectMissing(f"Stored object {key} is missing.")
    with handle:
        while chunk := handle.read(chunk_size):
            yield chunk


def _s3_key(store: S3Storage, name: str) -> str:
    """The bucket key of a storage name: `name` under the store's `location`, `.` and `..` resolved.

    What django-storages' S3Storage does to every name it is given (its private _normalize_name,
    as of version 1.14.6), built on its public storages.utils.safe_join, for the S3 calls made
    here directly: a name that climbs out of `location` is refused, as in the backend itself.
    The keys must stay the backend's (it reads what RadiologyS3Storage._save in .s3 wrote):
    tests/fastpaths/test_private_api_versions.py compares the two.
    """
    try:
        return safe_join(store.location, name)
    except ValueError as exc:
        raise SuspiciousOperation(f"Attempted access to '{name}' denied.") from exc


def presigned_get_url(key: str, *, expires_in: int, content_type: str, filename: str) -> str:
    """A short-lived S3 GET URL that answers with our content type and no shared caching.

    Only reached after the app checked its own signature: moto (and a misconfigured
    MinIO) may not check expiry, so the app's signature is the real gate.
    """
    parameters = {
        "ResponseContentType": content_type,
        "ResponseCacheControl": "private, no-store, max-age=0",
        "ResponseContentDisposition": f'inline; filename="{filename}"',
    }
    try:
        return radiology_storage().url(key, parameters=parameters, expire=expires_in)
    except _s3_errors() as exc:
        raise StorageFailure() from exc


def object_size(key: str) -> int | None:
    """Size in bytes of a stored object; None if missing."""
    try:
        return radiology_storage().size(key)
    except FileNotFoundError:
        return None
    except (OSError, *_s3_errors()) as exc:
        raise StorageFailure() from exc


# Below this many keys object_sizes asks S3 about each (HEAD); from it, one listing of their
# common folder (a study's or series' objects, 1,000 a page) answers for all of them.
_LIST_FROM_KEYS = 4


def object_sizes(keys: list[str]) -> dict[str, int | None]:
    """Size in bytes of each stored object (None: missing), e.g. before streaming a whole study.

    Filesystem: one stat each. S3: a HEAD each for a few keys; for more, one listing page per
    thousand objects under their common folder (radiology/{study}/ or deeper), so checking a
    500-instance study is one request, not 500. A shallower common folder (keys of several
    studies) would list the whole store: then a HEAD each.
    """
    store = radiology_storage()
    unique = list(dict.fromkeys(keys))
    if not is_s3(store) or len(unique) < _LIST_FROM_KEYS:
        return {key: object_size(key) for key in unique}
    folder = posixpath.commonpath(unique)
    if folder.count("/") < 1:  # "radiology" alone: every object in the store
        return {key: object_size(key) for key in unique}
    try:
        found = {entry["Key"]: int(entry["Size"]) for entry in _s3_listing(store, folder + "/")}
    except _s3_errors() as exc:
        raise StorageFailure() from exc
    return {key: found.get(_s3_key(store, key)) for key in unique}


def iter_object_range(key: str, offset: int, length: int, chunk_size: int = STREAM_CHUNK_SIZE) -> Iterator[bytes]:
    """Yield `length` bytes of a stored object from `offset`: a seek on disk, a ranged GET on S3.

    Frames and bulk data are served this way, so a frame of a large multi-frame object never
    downloads or reads the rest of it.
    """
    if length <= 0:
        return
    store = radiology_storage()
    try:
        if is_s3(store):
            response = store.connection.meta.client.get_object(
                Bucket=store.bucket_name,
                Key=_s3_key(store, key),
                Range=f"bytes={offset}-{offset + length - 1}",
            )
            yield from response["Body"].iter_chunks(chunk_size)
            return
        with store.open(key, "rb") as handle:
            handle.seek(offset)
            remaining = length
            while remaining > 0 and (chunk := handle.read(min(chunk_size, remaining))):
                remaining -= len(chunk)
                yield chunk
    except FileNotFoundError as exc:
        raise StoredObjectMissing(f"Stored object {key} is missing.") from exc
    except _s3_client_error() as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            raise StoredObjectMissing(f"Stored object {key} is missing.") from exc
        raise StorageFailure() from exc
    except (OSError, *_s3_errors()) as exc:
        raise StorageFailure() from exc


def read_object_range(key: str, offset: int, length: int) -> bytes:
    """Bytes of one small range (a frame, a bulk element) of a stored object."""
    return b"".join(iter_object_range(key, offset, length))


def filesystem_path(key: str) -> Path | None:
    """The object's own file on the filesystem backend (a sender may read it directly); None on S3."""
    store = radiology_storage()
    return None if is_s3(store) else Path(store.path(key))


@contextlib.contextmanager
def local_path(key: str) -> Iterator[Path]:
    """A path on local disk holding the object: the file itself on the filesystem backend,
    a streamed temporary copy on S3 (for decoders that need a seekable file)."""
    own_file = filesystem_path(key)
    if own_file is not None:
        yield own_file
        return
    store = cast("S3Storage", radiology_storage())
    settings.RADIOLOGY_STAGING_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(prefix="pacs-object-", dir=settings.RADIOLOGY_STAGING_DIR) as copy:
        try:
            store.connection.meta.client.download_fileobj(store.bucket_name, _s3_key(store, key), copy)
        except _s3_errors() as exc:
            raise StorageFailure() from exc
        copy.flush()
        yield Path(copy.name)


def _s3_listing(store: S3Storage, prefix: str) -> Iterator[dict[str, Any]]:
    """Every object entry (Key, Size, ...) under `prefix` in the bucket, listed page by page."""
    paginator = store.connection.meta.client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=store.bucket_name, Prefix=_s3_key(store, prefix)):
        yield from page.get("Contents", ())


def iter_keys(prefix: str) -> Iterator[str]:
    """Every object key under `prefix` (e.g. "radiology/"), listed page by page.

    Keys as this module names objects (an image row's file_key), not bucket keys: under an
    S3 `location` the bucket key has it in front, and it is taken off.
    """
    store = radiology_storage()
    try:
        if is_s3(store):
            location = _s3_key(store, "")
            for entry in _s3_listing(store, prefix):
                yield entry["Key"][len(location) :]
            return
        root = Path(store.path(""))
        base = root / prefix
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file():
                yield path.relative_to(root).as_posix()
    except (OSError, *_s3_errors()) as exc:
        raise StorageFailure() from exc
