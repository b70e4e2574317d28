"""apps.radiology.storage: file keys, safe names, never-overwrite writes and wrapped store errors.

Everything that touches the store runs twice through `radiology_store`: on the filesystem
and on S3 through moto's server over HTTP.
"""

from __future__ import annotations

import errno
import io
import logging
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import SuspiciousOperation
from django.core.files.base import ContentFile
from django.test import Client

from apps.radiology import storage
from apps.radiology.errors import InvalidFilename, InvalidUID, StorageFailure
from apps.radiology.pacs_lite_service import PACSLiteService
from apps.radiology.tests.factories import read_stored, stored_keys
from apps.radiology.tests.stores import use_s3_store

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.1"
IMAGE = "1.2.826.0.1.3680043.8.498.1.1.1"


def _boom(*_args: Any, **_kwargs: Any) -> Any:
    raise OSError("disk on fire")


# --- file keys and filenames --------------------------------------------------------------


def test_file_key_is_radiology_study_series_image_filename() -> None:
    key = storage.build_file_key(study_uid=STUDY, series_uid=SERIES, image_uid=IMAGE, filename="chest_pa.dcm")
    assert key == f"radiology/{STUDY}/{SERIES}/{IMAGE}/chest_pa.dcm"
    assert (
        PACSLiteService.generate_file_key(study_uid=STUDY, series_uid=SERIES, image_uid=IMAGE, filename="chest_pa.dcm")
        == key
    )


@pytest.mark.parametrize(
    ("original", "safe"),
    [
        ("chest_pa.dcm", "chest_pa.dcm"),
        ("../../etc/passwd", "passwd"),
        ("C:\\exports\\CT 1.dcm", "CT_1.dcm"),
        ("scans/2026/a\\b\\c.jpg", "c.jpg"),
        ("a\x00b\x1fc\x7f.dcm", "abc.dcm"),
        ("line\nbreak.dcm", "linebreak.dcm"),
        (".hidden.dcm", "hidden.dcm"),
        ("$(rm -rf ~).dcm", "rm_-rf_.dcm"),
        ("  padded name .jpg  ", "padded_name_.jpg"),
        ("x" * 300 + ".dcm", "x" * 124 + ".dcm"),
        ("y" * 300, "y" * 128),
    ],
)
def test_safe_filename_reduces_to_a_safe_base_name(original: str, safe: str) -> None:
    assert storage.safe_filename(original) == safe
    key = storage.build_file_key(study_uid=STUDY, series_uid=SERIES, image_uid=IMAGE, filename=original)
    assert key == f"radiology/{STUDY}/{SERIES}/{IMAGE}/{safe}"
    assert "\\" not in key
    assert ".." not in key
    assert key.count("/") == 4


@pytest.mark.parametrize("original", ["", "../", "..\\", "...", ".", "/", "\x00\x01", "   ", "---", "C:\\exports\\"])
def test_filename_with_nothing_usable_left_is_invalid_filename(original: str) -> None:
    with pytest.raises(InvalidFilename) as excinfo:
        storage.safe_filename(original)
    assert excinfo.value.code == "invalid_filename"
    assert excinfo.value.status_code == 400
    with pytest.raises(InvalidFilename):
        storage.build_file_key(study_uid=STUDY, series_uid=SERIES, image_uid=IMAGE, filename=original)


@pytest.mark.parametrize(
    ("original", "kept"),
    [
        ("../../etc/passwd", "../../etc/passwd"),
        ("C:\\exports\\CT 1.dcm", "C:\\exports\\CT 1.dcm"),
        ("scan\x00\x1f\x7f.dcm", "scan.dcm"),
        ("z" * 300, "z" * 255),
    ],
)
def test_original_filename_keeps_the_name_without_control_characters(original: str, kept: str) -> None:
    assert storage.original_filename(original) == kept


@pytest.mark.parametrize("field", ["study_uid", "series_uid", "image_uid"])
def test_file_key_refuses_an_invalid_uid(field: str) -> None:
    uids = {"study_uid": STUDY, "series_uid": SERIES, "image_uid": IMAGE, field: "1.2.03"}
    with pytest.raises(InvalidUID) as excinfo:
        storage.build_file_key(filename="a.dcm", **uids)
    assert excinfo.value.code == "invalid_uid"
    assert field in excinfo.value.detail


# --- writes that never overwrite -------------------------------------------------------------


def test_store_image_never_overwrites_an_existing_key(radiology_store: str) -> None:
    key = storage.build_file_key(study_uid=STUDY, series_uid=SERIES, image_uid=IMAGE, filename="a.dcm")

    first = PACSLiteService.store_image(file_content=b"first bytes", file_key=key, content_type="application/dicom")
    second = PACSLiteService.store_image(file_content=b"second bytes", file_key=key, content_type="application/dicom")

    assert first == key
    assert second != key
    assert second.startswith(f"radiology/{STUDY}/{SERIES}/{IMAGE}/a")
    assert second.endswith(".dcm")
    assert read_stored(first) == b"first bytes"
    assert read_stored(second) == b"second bytes"
    assert stored_keys() == sorted([first, second])


def test_store_image_accepts_a_stream(radiology_store: str) -> None:
    key = storage.build_file_key(study_uid=STUDY, series_uid=SERIES, image_uid=IMAGE, filename="photo.jpg")
    content = b"\xff\xd8\xff" + bytes(range(256)) * 600  # larger than one stream chunk

    used = PACSLiteService.store_image(file_content=io.BytesIO(content), file_key=key, content_type="image/jpeg")

    assert used == key
    assert read_stored(key) == content
    assert b"".join(storage.iter_object_chunks(key)) == content
    assert storage.object_size(key) == len(content)
    assert storage.object_exists(key) is True


def test_backend_write_to_a_key_taken_in_a_race_goes_beside_it(radiology_store: str) -> None:
    """The backend's own _save (past Django's exists() check) refuses to replace an object.

    Filesystem: O_EXCL; S3: a PUT with If-None-Match: * that the store answers 412.
    """
    key = f"radiology/{STUDY}/{SERIES}/{IMAGE}/race.dcm"
    store: Any = storage.radiology_storage()
    assert store._save(key, ContentFile(b"winner")) == key

    loser = store._save(key, ContentFile(b"loser"))

    assert loser != key
    assert read_stored(key) == b"winner"
    assert read_stored(loser) == b"loser"
    assert stored_keys() == sorted([key, loser])


def test_backend_is_the_configured_one(radiology_store: str) -> None:
    assert storage.is_s3() is (radiology_store == "s3")
    if radiology_store == "s3":
        assert isinstance(storage.radiology_storage(), storage.RadiologyS3Storage)


# --- store errors -----------------------------------------------------------------------------


def test_write_failure_is_storage_failure(radiology_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(type(storage.radiology_storage()), "_save", _boom)

    with pytest.raises(StorageFailure) as excinfo:
        storage.save_new_object(f"radiology/{STUDY}/x.dcm", io.BytesIO(b"abc"), content_type="application/dicom")

    assert excinfo.value.code == "storage_unavailable"
    assert excinfo.value.status_code == 503
    assert isinstance(excinfo.value.__cause__, OSError)
    monkeypatch.undo()
    assert stored_keys() == []


def _spool(tmp_path: Path, content: bytes) -> Path:
    spool = tmp_path / "ingest-spool"
    spool.write_bytes(content)
    spool.chmod(0o600)  # as tempfile makes it
    return spool


def test_a_local_spool_is_linked_in_not_copied(radiology_store: str, tmp_path: Path) -> None:
    spool = _spool(tmp_path, b"spooled bytes")
    key = f"radiology/{STUDY}/linked.dcm"

    with spool.open("rb") as content:
        stored = storage.save_new_object(key, content, content_type="application/dicom", local_path=spool)

    assert stored == key
    assert read_stored(key) == b"spooled bytes"
    if radiology_store == "filesystem":
        with storage.local_path(key) as path:
            assert path.stat().st_ino == spool.stat().st_ino  # one file, two names
            assert path.stat().st_mode & 0o777 == 0o644
        spool.unlink()  # the spool goes when ingest is done with it; the object stays
        assert read_stored(key) == b"spooled bytes"
    assert stored_keys() == [key]


def test_a_linked_spool_never_replaces_a_stored_object(radiology_store: str, tmp_path: Path) -> None:
    key = f"radiology/{STUDY}/taken.dcm"
    storage.save_new_object(key, io.BytesIO(b"first"), content_type="application/dicom")
    spool = _spool(tmp_path, b"second")

    with spool.open("rb") as content:
        beside = storage.save_new_object(key, content, content_type="application/dicom", local_path=spool)

    assert beside != key
    assert beside.startswith(f"radiology/{STUDY}/taken")
    assert (read_stored(key), read_stored(beside)) == (b"first", b"second")
    assert stored_keys() == sorted([key, beside])


def test_a_spool_on_another_filesystem_is_copied(
    radiology_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def other_filesystem(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(storage.os, "link", other_filesystem)
    spool = _spool(tmp_path, b"copied bytes")
    key = f"radiology/{STUDY}/copied.dcm"

    with spool.open("rb") as content:
        assert storage.save_new_object(key, content, content_type="application/dicom", local_path=spool) == key

    assert read_stored(key) == b"copied bytes"
    if radiology_store == "filesystem":
        with storage.local_path(key) as path:
            assert path.stat().st_ino != spool.stat().st_ino


def test_a_failing_link_is_storage_failure(
    radiology_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage.os, "link", _boom)
    spool = _spool(tmp_path, b"abc")
    key = f"radiology/{STUDY}/x.dcm"

    with spool.open("rb") as content:
        if radiology_store == "s3":  # nothing to link: the spool is uploaded
            assert storage.save_new_object(key, content, content_type="application/dicom", local_path=spool) == key
        else:
            with pytest.raises(StorageFailure):
                storage.save_new_object(key, content, content_type="application/dicom", local_path=spool)

    monkeypatch.undo()
    assert stored_keys() == ([key] if radiology_store == "s3" else [])


def test_s3_bucket_that_does_not_exist_is_storage_failure(s3_endpoint: str, settings: Any) -> None:
    use_s3_store(settings, s3_endpoint, "no-such-bucket-pacs-lite")

    with pytest.raises(StorageFailure) as excinfo:
        storage.save_new_object(f"radiology/{STUDY}/x.dcm", io.BytesIO(b"abc"), content_type="application/dicom")

    assert excinfo.value.code == "storage_unavailable"


def test_the_s3_calls_made_here_name_objects_as_the_backend_does_under_a_location(
    s3_endpoint: str, s3_bucket: str, settings: Any, tmp_path: Path
) -> None:
    """Ranged reads, size listings, local copies and conditional writes use the backend's keys.

    Those S3 calls are made here directly; with AWS_LOCATION set the key is not the name, and
    what one side writes the other must find.
    """
    use_s3_store(settings, s3_endpoint, s3_bucket)
    settings.STORAGES["radiology"]["OPTIONS"]["location"] = "pacs"
    settings.RADIOLOGY_STAGING_DIR = tmp_path / "staging"
    names = [f"radiology/{STUDY}/{SERIES}/{IMAGE}/part{number}.dcm" for number in range(4)]
    for number, name in enumerate(names):  # written by our conditional PUT (RadiologyS3Storage._save)
        saved = storage.save_new_object(name, io.BytesIO(b"%d" % number * 8), content_type="application/dicom")
        assert saved == name

    store: Any = storage.radiology_storage()
    listed = store.connection.meta.client.list_objects_v2(Bucket=s3_bucket)
    assert sorted(entry["Key"] for entry in listed["Contents"]) == [f"pacs/{name}" for name in names]
    assert storage.read_object_range(names[1], 2, 3) == b"111"
    assert storage.object_sizes(names) == dict.fromkeys(names, 8)  # four keys: one listing
    with storage.local_path(names[2]) as copy:
        assert copy.read_bytes() == b"2" * 8
    handle = storage.open_object(names[3])  # the backend's own read
    assert handle is not None
    with handle:
        assert handle.read() == b"3" * 8
    assert list(storage.iter_keys("radiology/")) == names  # names, not bucket keys
    storage.delete_under(f"radiology/{STUDY}/{SERIES}/{IMAGE}/")
    assert store.connection.meta.client.list_objects_v2(Bucket=s3_bucket)["KeyCount"] == 0
    with pytest.raises(SuspiciousOperation) as refused:
        storage.read_object_range("../outside.dcm", 0, 1)
    assert str(refused.value) == "Attempted access to '../outside.dcm' denied."


def test_missing_object_reads_as_none(radiology_store: str) -> None:
    key = f"radiology/{STUDY}/missing.dcm"
    assert storage.open_object(key) is None
    assert storage.object_size(key) is None
    assert storage.object_exists(key) is False
    with pytest.raises(StorageFailure):
        list(storage.iter_object_chunks(key))


def test_delete_object_removes_and_a_failed_delete_is_logged_not_raised(
    radiology_store: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = PACSLiteService.store_image(
        file_content=b"bytes", file_key=f"radiology/{STUDY}/d.dcm", content_type="application/dicom"
    )
    storage.delete_object(key)
    assert stored_keys() == []

    key = PACSLiteService.store_image(
        file_content=b"bytes", file_key=f"radiology/{STUDY}/d.dcm", content_type="application/dicom"
    )
    monkeypatch.setattr(type(storage.radiology_storage()), "delete", _boom)
    with caplog.at_level(logging.ERROR, logger="apps.radiology.storage"):
        storage.delete_object(key)
    assert f"radiology storage clean-up failed for {key}: OSError" in caplog.text
    assert stored_keys() == [key]


def test_delete_under_removes_every_object_under_the_prefix_and_nothing_beside_it(
    radiology_store: str, settings: Any
) -> None:
    keys = ["staging/uploads/1/000000000000000", "staging/uploads/1/later/x", "staging/uploads/10/000000000000000"]
    for key in keys:
        storage.save_new_object(key, io.BytesIO(b"chunk"), content_type="application/octet-stream")

    storage.delete_under("staging/uploads/1/")

    assert stored_keys() == ["staging/uploads/10/000000000000000"]
    if radiology_store == "filesystem":  # the emptied directory goes too, its neighbour stays
        staging = Path(settings.MEDIA_ROOT) / "staging" / "uploads"
        assert sorted(path.name for path in staging.iterdir()) == ["10"]
    storage.delete_under("staging/uploads/2/")  # nothing there: nothing happens
    assert stored_keys() == ["staging/uploads/10/000000000000000"]


def test_delete_under_removes_the_objects_even_where_it_cannot_list_directories(
    radiology_store: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = "staging/uploads/1/000000000000000"
    storage.save_new_object(key, io.BytesIO(b"chunk"), content_type="application/octet-stream")
    real_rglob = Path.rglob
    walks: list[Path] = []

    def unreadable(path: Path, pattern: str) -> Any:
        walks.append(path)
        if len(walks) > 1:  # the objects are listed first; the walk for directories fails
            raise PermissionError(13, "Permission denied")
        return real_rglob(path, pattern)

    monkeypatch.setattr(Path, "rglob", unreadable)
    with caplog.at_level(logging.ERROR, logger="apps.radiology.storage"):
        storage.delete_under("staging/uploads/1/")
    monkeypatch.undo()

    assert stored_keys() == []
    if radiology_store == "filesystem":  # S3 has no directories to list
        assert "could not list the directories of staging/uploads/1/: PermissionError" in caplog.text


def test_delete_under_logs_a_failed_listing_and_raises_nothing(
    radiology_store: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = "staging/uploads/1/000000000000000"
    storage.save_new_object(key, io.BytesIO(b"chunk"), content_type="application/octet-stream")

    def failing_listing(prefix: str) -> Any:
        raise StorageFailure() from OSError("disk on fire")
        yield prefix  # a generator, as iter_keys is

    monkeypatch.setattr(storage, "iter_keys", failing_listing)
    with caplog.at_level(logging.ERROR, logger="apps.radiology.storage"):
        storage.delete_under("staging/uploads/1/")

    assert "radiology storage clean-up could not list staging/uploads/1/: OSError" in caplog.text
    assert stored_keys() == [key]


def test_presigned_url_answers_with_our_headers(s3_endpoint: str, s3_bucket: str, settings: Any) -> None:
    use_s3_store(settings, s3_endpoint, s3_bucket)
    key = PACSLiteService.store_image(
        file_content=b"bytes", file_key=f"radiology/{STUDY}/p.dcm", content_type="application/dicom"
    )
    url = storage.presigned_get_url(key, expires_in=30, content_type="application/dicom", filename="p.dcm")
    assert "response-content-type=application%2Fdicom" in url
    assert "response-cache-control=private%2C%20no-store%2C%20max-age%3D0" in url
    assert "X-Amz-Expires=30" in url
    with urllib.request.urlopen(url) as response:  # noqa: S310 (a loopback moto URL)
        assert response.read() == b"bytes"
        assert response.headers["Content-Type"] == "application/dicom"


# --- nothing is served unsigned -----------------------------------------------------------------


@pytest.mark.django_db
def test_media_url_does_not_serve_stored_files(radiology_store: str, settings: Any, client: Client) -> None:
    key = PACSLiteService.store_image(
        file_content=b"patient bytes", file_key=f"radiology/{STUDY}/secret.dcm", content_type="application/dicom"
    )
    assert read_stored(key) == b"patient bytes"

    response = client.get(f"{settings.MEDIA_URL}{key}")

    assert response.status_code == 404
    assert b"patient bytes" not in response.content
