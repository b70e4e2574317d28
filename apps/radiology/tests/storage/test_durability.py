"""A stored file is on disk, bytes and name, before save_new_object returns (and its row commits).

What cannot run here is the power cut itself: whether the bytes survive one depends on the
disk and the kernel honouring fsync. What is checked is that PACS-lite asks for it: os.fsync
is spied on (a wrapper that records which file or directory each descriptor names, then calls
the real fsync), and each save must sync the file first, then every directory from the file's
own up to the store's root, in that order, whether the file was written or a staged spool
linked in; a save to S3 syncs nothing (a PUT is durable when it is answered).
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from apps.radiology import storage
from apps.radiology.errors import InsufficientStorage, StorageFailure
from apps.radiology.tests.stores import FILESYSTEM_BACKEND, use_s3_store

STUDY = "1.2.826.0.1.3680043.8.498.7"
SERIES = "1.2.826.0.1.3680043.8.498.7.1"
IMAGE = "1.2.826.0.1.3680043.8.498.7.1.1"
IMAGE_2 = "1.2.826.0.1.3680043.8.498.7.1.2"
KEY = f"radiology/{STUDY}/{SERIES}/{IMAGE}/chest.dcm"
KEY_2 = f"radiology/{STUDY}/{SERIES}/{IMAGE_2}/chest.dcm"


class FsyncSpy:
    """Records (path, inode) of each descriptor os.fsync is called with, then really syncs it."""

    def __init__(self, real_fsync: Callable[[int], None]) -> None:
        self.real_fsync = real_fsync
        self.synced: list[tuple[Path, int]] = []

    def __call__(self, descriptor: int) -> None:
        named = Path(os.readlink(f"/proc/self/fd/{descriptor}"))
        self.synced.append((named, os.fstat(descriptor).st_ino))
        self.real_fsync(descriptor)

    @property
    def paths(self) -> list[Path]:
        return [path for path, _inode in self.synced]


@pytest.fixture
def fsync_spy(monkeypatch: pytest.MonkeyPatch) -> FsyncSpy:
    spy = FsyncSpy(os.fsync)
    monkeypatch.setattr(storage.os, "fsync", spy)
    return spy


def _filesystem_store(settings: Any, root: Path, **options: Any) -> None:
    settings.STORAGES = {
        **settings.STORAGES,
        "radiology": {"BACKEND": FILESYSTEM_BACKEND, "OPTIONS": {"location": str(root), "base_url": None, **options}},
    }


@pytest.fixture
def store_root(settings: Any, tmp_path: Path) -> Path:
    """An existing, empty filesystem store (as MEDIA_ROOT is on an installed server)."""
    root = (tmp_path / "media").resolve()
    root.mkdir()
    _filesystem_store(settings, root)
    return root


def _chain(root: Path, key: str) -> list[Path]:
    """The file, then each directory from its own up to the store's root: the order of the syncs."""
    file = root / key
    directories = [file.parent, *file.parent.parents]
    return [file, *directories[: directories.index(root) + 1]]


def test_a_written_file_is_synced_then_each_directory_up_to_the_store_root(
    store_root: Path, fsync_spy: FsyncSpy
) -> None:
    stored = storage.save_new_object(KEY, io.BytesIO(b"pixels"), content_type="application/dicom")

    assert stored == KEY
    assert (store_root / KEY).read_bytes() == b"pixels"
    # image, series and study directories were made by this save; radiology/ too, in the root.
    assert fsync_spy.paths == [
        store_root / KEY,
        store_root / "radiology" / STUDY / SERIES / IMAGE,
        store_root / "radiology" / STUDY / SERIES,
        store_root / "radiology" / STUDY,
        store_root / "radiology",
        store_root,
    ]


def test_a_file_into_existing_directories_still_syncs_each_up_to_the_root(
    store_root: Path, fsync_spy: FsyncSpy
) -> None:
    """The series directory may have been made a moment ago by another writer not yet synced."""
    storage.save_new_object(KEY, io.BytesIO(b"first"), content_type="application/dicom")
    fsync_spy.synced.clear()

    stored = storage.save_new_object(KEY_2, io.BytesIO(b"second"), content_type="application/dicom")

    assert stored == KEY_2
    assert fsync_spy.paths == _chain(store_root, KEY_2)


def test_a_linked_staged_file_has_its_bytes_synced_then_each_directory(
    store_root: Path, tmp_path: Path, fsync_spy: FsyncSpy
) -> None:
    """The spool was written without fsync: syncing the linked name syncs those very bytes."""
    spool = tmp_path / "staging-spool"
    spool.write_bytes(b"spooled pixels")

    with spool.open("rb") as content:
        stored = storage.save_new_object(KEY, content, content_type="application/dicom", local_path=spool)

    assert stored == KEY
    assert (store_root / KEY).stat().st_ino == spool.stat().st_ino  # linked, not copied
    assert fsync_spy.paths == _chain(store_root, KEY)
    assert fsync_spy.synced[0][1] == spool.stat().st_ino  # the file first: the staged inode itself


def test_a_name_taken_beside_the_key_is_the_file_synced(store_root: Path, fsync_spy: FsyncSpy) -> None:
    storage.save_new_object(KEY, io.BytesIO(b"first"), content_type="application/dicom")
    fsync_spy.synced.clear()

    beside = storage.save_new_object(KEY, io.BytesIO(b"second"), content_type="application/dicom")

    assert beside != KEY
    assert fsync_spy.paths == _chain(store_root, beside)


def test_a_store_root_made_by_the_save_is_synced_in_its_parent(
    settings: Any, tmp_path: Path, fsync_spy: FsyncSpy
) -> None:
    root = (tmp_path / "new" / "media").resolve()
    _filesystem_store(settings, root)

    storage.save_new_object(KEY, io.BytesIO(b"pixels"), content_type="application/dicom")

    assert fsync_spy.paths == [*_chain(root, KEY), root.parent, root.parent.parent]


def test_a_file_django_writes_itself_is_synced_too(settings: Any, tmp_path: Path, fsync_spy: FsyncSpy) -> None:
    """With a directory mode of its own Django's save writes the file: it is synced the same way."""
    root = (tmp_path / "media").resolve()
    root.mkdir()
    _filesystem_store(settings, root, directory_permissions_mode=0o750)

    storage.save_new_object(KEY, io.BytesIO(b"pixels"), content_type="application/dicom")

    assert (root / KEY).read_bytes() == b"pixels"
    assert (root / "radiology" / STUDY).stat().st_mode & 0o777 == 0o750
    assert fsync_spy.paths == _chain(root, KEY)


@pytest.mark.parametrize(
    ("failure", "raised"), [(errno.EIO, StorageFailure), (errno.ENOSPC, InsufficientStorage)], ids=["eio", "enospc"]
)
@pytest.mark.parametrize("linked", [False, True], ids=["written", "linked"])
def test_a_failed_sync_leaves_no_file_and_raises(
    store_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: int,
    raised: type[Exception],
    linked: bool,
) -> None:
    """A file whose bytes may not be on disk must get no row: it goes, and the save fails."""

    def failing_fsync(_descriptor: int) -> None:
        raise OSError(failure, os.strerror(failure))

    monkeypatch.setattr(storage.os, "fsync", failing_fsync)
    spool = tmp_path / "staging-spool"
    spool.write_bytes(b"pixels")

    with spool.open("rb") as content, pytest.raises(raised):
        storage.save_new_object(KEY, content, content_type="application/dicom", local_path=spool if linked else None)

    assert not (store_root / KEY).exists()
    assert spool.read_bytes() == b"pixels"  # the staged file is ingest's to remove


@pytest.mark.parametrize("linked", [False, True], ids=["streamed", "with-local-spool"])
def test_an_s3_save_syncs_nothing(
    s3_endpoint: str, s3_bucket: str, settings: Any, tmp_path: Path, fsync_spy: FsyncSpy, linked: bool
) -> None:
    use_s3_store(settings, s3_endpoint, s3_bucket)
    spool = tmp_path / "staging-spool"
    spool.write_bytes(b"pixels")

    with spool.open("rb") as content:
        stored = storage.save_new_object(
            KEY, content, content_type="application/dicom", local_path=spool if linked else None
        )

    assert stored == KEY
    assert fsync_spy.synced == []


# --- A batch synced together (ingest's commit: every file on disk before any row commits) --------


def test_files_saved_together_are_synced_files_first_then_each_directory_once_deepest_first(
    store_root: Path, fsync_spy: FsyncSpy
) -> None:
    with storage.synced_together():
        first = storage.save_new_object(KEY, io.BytesIO(b"first"), content_type="application/dicom")
        second = storage.save_new_object(KEY_2, io.BytesIO(b"second"), content_type="application/dicom")
        assert fsync_spy.paths == []  # nothing synced until the block ends

    assert (first, second) == (KEY, KEY_2)
    series = store_root / "radiology" / STUDY / SERIES
    assert fsync_spy.paths[:2] == [store_root / KEY, store_root / KEY_2]
    directories = fsync_spy.paths[2:]
    assert sorted(directories[:2]) == sorted([series / IMAGE, series / IMAGE_2])  # the deepest, in either order
    assert directories[2:] == [series, series.parent, store_root / "radiology", store_root]


def test_a_batch_that_fails_inside_the_block_syncs_nothing(store_root: Path, fsync_spy: FsyncSpy) -> None:
    with pytest.raises(RuntimeError), storage.synced_together():
        storage.save_new_object(KEY, io.BytesIO(b"first"), content_type="application/dicom")
        raise RuntimeError("the next file could not be read")

    assert fsync_spy.paths == []


def test_a_failed_sync_of_a_batch_is_a_storage_failure(store_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(_descriptor: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(StorageFailure), storage.synced_together():
        storage.save_new_object(KEY, io.BytesIO(b"first"), content_type="application/dicom")
        monkeypatch.setattr(storage.os, "fsync", failing)
