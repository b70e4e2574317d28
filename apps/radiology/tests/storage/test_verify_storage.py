"""`manage.py verify_radiology_storage` on the filesystem and on S3 (moto over HTTP).

The store is damaged behind the app's back, the way a disk or an operator would: bytes
overwritten in place (same size and shorter), an object deleted, an object no row names
under radiology/, and a staging chunk left by an upload that is no longer pending.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.core.management import CommandError, call_command
from tqdm import tqdm

from apps.radiology import storage
from apps.radiology.ingest.upload_sync import STAGING_PREFIX
from apps.radiology.management.commands import verify_radiology_storage
from apps.radiology.models import RadiologyImage, RadiologyUpload
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.factories import stored_keys
from apps.radiology.tests.trust_helpers import StoredStudy, ingest_study

pytestmark = pytest.mark.django_db


def put_raw(key: str, content: bytes) -> None:
    """Write (or overwrite) an object directly in the store, bypassing the app's no-overwrite rule."""
    store: Any = storage.radiology_storage()
    if storage.is_s3(store):
        store.connection.meta.client.put_object(Bucket=store.bucket_name, Key=key, Body=content)
        return
    path = Path(store.path(key))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def remove_raw(key: str) -> None:
    storage.radiology_storage().delete(key)
    assert key not in stored_keys()


class Run:
    """One run of the command: its output, and the CommandError if it failed."""

    def __init__(self, checkpoint: Path, *extra: str, progress: bool = False) -> None:
        out, err = io.StringIO(), io.StringIO()
        args = ["--checkpoint", str(checkpoint), *extra, *([] if progress else ["--no-progress"])]
        self.error: CommandError | None = None
        try:
            call_command("verify_radiology_storage", *args, stdout=out, stderr=err)
        except CommandError as exc:
            self.error = exc
        self.out = out.getvalue()
        self.err = err.getvalue()

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


@pytest.fixture
def stored(radiology_store: str, make_order: MakeOrder) -> StoredStudy:
    return ingest_study(make_order(), images=3)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return tmp_path / "state" / "verify.json"


def _upload(order_id: int, user: AbstractBaseUser, status: str) -> RadiologyUpload:
    return RadiologyUpload.objects.create(
        client_upload_id=uuid.uuid4(),
        uploaded_by=user,
        radiology_order_id=order_id,
        filename="chunked.dcm",
        file_size=2000,
        mime_type="application/dicom",
        checksum="c" * 64,
        status=status,
        received_bytes=1000 if status == RadiologyUpload.Status.PENDING else 0,
    )


def test_clean_store(stored: StoredStudy, checkpoint: Path) -> None:
    run = Run(checkpoint)

    assert run.error is None
    assert (
        run.out == "Verified 3 images: 0 missing, 0 corrupt, 0 orphaned objects; 0 problem(s) among unmatched files.\n"
    )
    assert run.err == ""
    assert not checkpoint.exists()


def test_clean_store_shows_progress_in_bytes(stored: StoredStudy, checkpoint: Path) -> None:
    run = Run(checkpoint, progress=True)

    total = tqdm.format_sizeof(sum(len(content) for content in stored.contents))
    assert run.error is None
    assert (
        run.out == "Verified 3 images: 0 missing, 0 corrupt, 0 orphaned objects; 0 problem(s) among unmatched files.\n"
    )
    assert "100%" in run.err
    assert f"| {total}/{total} [" in run.err


def test_a_pending_upload_chunk_is_not_an_orphan(
    stored: StoredStudy, checkpoint: Path, radtech: AbstractBaseUser
) -> None:
    upload = _upload(stored.study.radiology_order_id, radtech, RadiologyUpload.Status.PENDING)
    put_raw(f"{STAGING_PREFIX}/{upload.pk}/{0:015d}", b"x" * 1000)

    run = Run(checkpoint)

    assert run.error is None
    assert run.lines == [
        "Verified 3 images: 0 missing, 0 corrupt, 0 orphaned objects; 0 problem(s) among unmatched files."
    ]


def test_every_kind_of_problem(stored: StoredStudy, checkpoint: Path, radtech: AbstractBaseUser) -> None:
    first, second, third = stored.images
    flipped = bytearray(stored.contents[0])
    flipped[-1] ^= 0xFF
    put_raw(first.file_key, bytes(flipped))  # same size, other bytes
    remove_raw(second.file_key)
    put_raw(third.file_key, stored.contents[2][:100])  # truncated
    stray = f"radiology/{stored.study.study_uid}/stray.dcm"
    put_raw(stray, b"no row names me")
    done = _upload(stored.study.radiology_order_id, radtech, RadiologyUpload.Status.COMPLETED)
    failed = _upload(stored.study.radiology_order_id, radtech, RadiologyUpload.Status.FAILED)
    pending = _upload(stored.study.radiology_order_id, radtech, RadiologyUpload.Status.PENDING)
    leftovers = [f"{STAGING_PREFIX}/{done.pk}/{0:015d}", f"{STAGING_PREFIX}/{failed.pk}/{1000:015d}"]
    for key in [*leftovers, f"{STAGING_PREFIX}/{pending.pk}/{0:015d}"]:
        put_raw(key, b"c" * 1000)

    run = Run(checkpoint)

    assert run.lines == [
        f"MISSING image {second.pk}: {second.file_key}",
        f"CORRUPT image {first.pk}: {first.file_key}",
        f"CORRUPT image {third.pk}: {third.file_key}",
        f"ORPHAN {stray}",
        *(f"ORPHAN {key}" for key in leftovers),
        "Verified 3 images: 1 missing, 2 corrupt, 3 orphaned objects; 0 problem(s) among unmatched files.",
    ]
    assert run.error is not None
    assert str(run.error) == "6 storage problem(s) found"
    assert run.error.returncode == 1
    assert not checkpoint.exists()
    # Reporting changes nothing: the rows and the orphans are all still there.
    assert RadiologyImage.objects.count() == 3
    assert stray in stored_keys()


def test_an_orphan_in_an_otherwise_empty_store(radiology_store: str, checkpoint: Path) -> None:
    put_raw("radiology/1.2.3/4.5.6/7.8.9/lost.dcm", b"DICM")

    run = Run(checkpoint)

    assert run.lines == [
        "ORPHAN radiology/1.2.3/4.5.6/7.8.9/lost.dcm",
        "Verified 0 images: 0 missing, 0 corrupt, 1 orphaned objects; 0 problem(s) among unmatched files.",
    ]
    assert str(run.error) == "1 storage problem(s) found"


@pytest.fixture
def five(radiology_store: str, make_order: MakeOrder) -> StoredStudy:
    return ingest_study(make_order(), images=5)


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """Make the command's per-image check raise KeyboardInterrupt once `count` images are done."""
    real = verify_radiology_storage.Command._check
    calls: list[int] = []

    def interrupted(self: Any, image: RadiologyImage, progress: Any) -> str | None:
        if len(calls) == count:
            raise KeyboardInterrupt
        calls.append(image.pk)
        return real(self, image, progress)

    monkeypatch.setattr(verify_radiology_storage.Command, "_check", interrupted)


def test_an_interrupted_run_resumes_after_the_last_verified_image(
    five: StoredStudy, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = five.images
    put_raw(images[0].file_key, b"damaged")  # found before the interruption
    remove_raw(images[3].file_key)  # found after it
    _interrupt_after(monkeypatch, 2)

    with pytest.raises(KeyboardInterrupt):
        call_command("verify_radiology_storage", "--checkpoint", str(checkpoint), "--no-progress", stdout=io.StringIO())

    assert json.loads(checkpoint.read_text()) == {
        "last_id": images[1].pk,
        "verified": 2,
        "missing": [],
        "corrupt": [{"id": images[0].pk, "file_key": images[0].file_key}],
    }
    monkeypatch.undo()
    ids: list[int] = []
    real = verify_radiology_storage.Command._check

    def spy(self: Any, image: RadiologyImage, progress: Any) -> str | None:
        ids.append(image.pk)
        return real(self, image, progress)

    monkeypatch.setattr(verify_radiology_storage.Command, "_check", spy)

    run = Run(checkpoint)

    assert ids == [image.pk for image in images[2:]]
    assert run.lines == [
        f"Resuming after image id {images[1].pk} (2 already verified)",
        f"MISSING image {images[3].pk}: {images[3].file_key}",
        f"CORRUPT image {images[0].pk}: {images[0].file_key}",
        "Verified 5 images: 1 missing, 1 corrupt, 0 orphaned objects; 0 problem(s) among unmatched files.",
    ]
    assert str(run.error) == "2 storage problem(s) found"
    assert not checkpoint.exists()


def test_restart_ignores_a_checkpoint(five: StoredStudy, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        call_command("verify_radiology_storage", "--checkpoint", str(checkpoint), "--no-progress", stdout=io.StringIO())
    assert json.loads(checkpoint.read_text())["verified"] == 3
    monkeypatch.undo()

    run = Run(checkpoint, "--restart")

    assert run.error is None
    assert run.lines == [
        "Verified 5 images: 0 missing, 0 corrupt, 0 orphaned objects; 0 problem(s) among unmatched files."
    ]
    assert not checkpoint.exists()


def test_a_second_run_after_a_complete_one_starts_over(stored: StoredStudy, checkpoint: Path) -> None:
    first = Run(checkpoint)
    second = Run(checkpoint)

    assert (
        first.out
        == second.out
        == "Verified 3 images: 0 missing, 0 corrupt, 0 orphaned objects; 0 problem(s) among unmatched files.\n"
    )


def test_files_waiting_in_the_unmatched_inbox_are_verified_too(stored: StoredStudy, checkpoint: Path) -> None:
    import io

    from apps.radiology.imagefiles.uids import generate_uid
    from apps.radiology.ingest.holding import Arrival
    from apps.radiology.ingest.pipeline import IngestItem, ingest_images
    from apps.radiology.models import UnmatchedImage
    from apps.radiology.tests.factories import relabelled

    files = [relabelled("CT_small.dcm", study_uid=generate_uid(), series_uid=generate_uid()) for _ in range(3)]
    ingest_images(
        [IngestItem(order=None, stream=io.BytesIO(content), filename=f"{n}.dcm") for n, content in enumerate(files)],
        uploaded_by=None,
        arrival=Arrival("import"),
    )
    lost, damaged, _fine = UnmatchedImage.objects.order_by("pk")
    storage.delete_object(lost.file_key)
    storage.delete_object(damaged.file_key)
    storage.save_new_object(damaged.file_key, io.BytesIO(b"not the file"), content_type="application/dicom")
    stray = storage.save_new_object("unmatched/1.2.3/stray.dcm", io.BytesIO(b"x"), content_type="application/dicom")

    run = Run(checkpoint)

    assert str(run.error) == "3 storage problem(s) found"
    assert run.lines == [
        f"MISSING unmatched file {lost.pk}: {lost.file_key}",
        f"CORRUPT unmatched file {damaged.pk}: {damaged.file_key}",
        f"ORPHAN {stray}",
        "Verified 3 images: 0 missing, 0 corrupt, 1 orphaned objects; 2 problem(s) among unmatched files.",
    ]
