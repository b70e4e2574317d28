"""`manage.py purge_radiology_uploads`: staged chunks of idle partial uploads are dropped.

Time travel: `updated_at` is auto_now, so a queryset .update() (which bypasses it) sets
how long ago an upload was last touched.
"""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from apps.radiology import storage
from apps.radiology.models import RadiologyImage, RadiologyOrder, RadiologyUpload
from apps.radiology.tests.factories import read_stored, row_counts, sample_bytes, stored_keys
from apps.radiology.tests.upload_helpers import (
    DeviceFile,
    chunk_key,
    client_for,
    completed_body,
    metadata,
    pending_body,
    post_upload,
    put_range,
    put_whole,
    range_mismatch,
    staged_keys,
    upload_url,
)

NO_FINISHED = "Removed staged chunks left under 0 finished upload(s).\n"
CT = DeviceFile("CT_small.dcm", sample_bytes("CT_small.dcm"))
MR = DeviceFile("MR_small.dcm", sample_bytes("MR_small.dcm"))


@pytest.fixture
def tech(radtech: Any) -> APIClient:
    return client_for(radtech)


def purge(*args: str) -> str:
    out = io.StringIO()
    call_command("purge_radiology_uploads", *args, stdout=out)
    return out.getvalue()


def partial_upload(client: APIClient, order: RadiologyOrder, device_file: DeviceFile, sent: int) -> RadiologyUpload:
    """An upload with its first `sent` bytes staged in two chunks."""
    upload = RadiologyUpload.objects.get(pk=post_upload(client, metadata(order, device_file)).json()["id"])
    half = sent // 2
    assert put_range(client, upload.pk, device_file.content, 0, half - 1).status_code == 202
    assert put_range(client, upload.pk, device_file.content, half, sent - 1).status_code == 202
    return upload


def finished_uploads(tech: APIClient, order: RadiologyOrder) -> tuple[RadiologyUpload, RadiologyUpload]:
    """A completed upload (CT) and one failed on its content (MR declared in another series)."""
    completed = RadiologyUpload.objects.get(pk=post_upload(tech, metadata(order, CT)).json()["id"])
    assert put_whole(tech, completed.pk, CT.content).status_code == 201
    failed = RadiologyUpload.objects.get(pk=post_upload(tech, metadata(order, MR, series_uid="1.2.3")).json()["id"])
    assert put_whole(tech, failed.pk, MR.content).status_code == 400
    return completed, failed


def idle_for(upload: RadiologyUpload, hours: float) -> None:
    RadiologyUpload.objects.filter(pk=upload.pk).update(updated_at=timezone.now() - dt.timedelta(hours=hours))


def test_idle_partial_uploads_lose_their_chunks_and_restart_from_zero(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    stale = partial_upload(tech, order, CT, 20000)
    recent = partial_upload(tech, order, MR, 4000)
    idle_for(stale, 5)
    idle_for(recent, 3)
    assert len(staged_keys()) == 4

    output = purge("--older-than-hours", "4")

    assert output == "Purged 1 stale partial upload(s).\n" + NO_FINISHED
    assert tech.get(upload_url(stale.pk)).json() == pending_body(stale, 0)
    stale.refresh_from_db()
    assert (stale.status, stale.received_bytes, stale.chunk_offsets) == ("pending", 0, [])
    assert stale.updated_at > timezone.now() - dt.timedelta(minutes=1)
    assert staged_keys(stale.pk) == []
    # The recent one keeps everything and can carry on.
    assert staged_keys(recent.pk) == [chunk_key(recent.pk, 0), chunk_key(recent.pk, 2000)]
    assert tech.get(upload_url(recent.pk)).json() == pending_body(recent, 4000)
    assert put_range(tech, recent.pk, MR.content, 4000, MR.size - 1).status_code == 201
    assert row_counts() == (1, 1, 1)


def test_the_device_of_a_purged_upload_is_told_to_start_again(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    upload = partial_upload(tech, order, CT, 30000)
    idle_for(upload, 100)
    assert purge("--older-than-hours", "72") == "Purged 1 stale partial upload(s).\n" + NO_FINISHED

    resumed = put_range(tech, upload.pk, CT.content, 30000, CT.size - 1)

    assert (resumed.status_code, resumed.json()) == (409, range_mismatch(0))
    assert stored_keys() == []
    restarted = put_range(tech, upload.pk, CT.content, 0, CT.size - 1)
    image = RadiologyImage.objects.get()
    assert (restarted.status_code, restarted.json()) == (201, completed_body(upload, image))
    assert read_stored(image.file_key) == CT.content
    assert stored_keys() == [image.file_key]


def test_completed_failed_and_empty_uploads_are_left_alone(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    completed, failed = finished_uploads(tech, order)
    untouched = RadiologyUpload.objects.get(pk=post_upload(tech, metadata(order, MR)).json()["id"])
    before = {upload.pk: tech.get(upload_url(upload.pk)).json() for upload in (completed, failed, untouched)}
    for upload in (completed, failed, untouched):
        idle_for(upload, 1000)

    output = purge("--older-than-hours", "1")

    assert output == "Purged 0 stale partial upload(s).\n" + NO_FINISHED
    assert {upload.pk: tech.get(upload_url(upload.pk)).json() for upload in (completed, failed, untouched)} == before
    image = RadiologyImage.objects.get()
    assert stored_keys() == [image.file_key]
    assert read_stored(image.file_key) == CT.content


def test_chunks_left_under_finished_uploads_are_removed_whatever_their_age(
    tech: APIClient, order: RadiologyOrder, radiology_store: str
) -> None:
    """A server killed after saving an upload's new status but before discarding its chunks left them."""
    completed, failed = finished_uploads(tech, order)
    pending = partial_upload(tech, order, MR, 2000)
    left = [chunk_key(completed.pk, 0), chunk_key(completed.pk, 4096), chunk_key(failed.pk, 0), chunk_key(999_999, 0)]
    for key in left:  # the last under an upload row deleted since
        storage.save_new_object(key, io.BytesIO(b"left behind"), content_type="application/octet-stream")
    image = RadiologyImage.objects.get()
    before = {upload.pk: tech.get(upload_url(upload.pk)).json() for upload in (completed, failed, pending)}

    output = purge()

    assert output == "Purged 0 stale partial upload(s).\nRemoved staged chunks left under 3 finished upload(s).\n"
    assert stored_keys() == sorted([image.file_key, chunk_key(pending.pk, 0), chunk_key(pending.pk, 1000)])
    assert {upload.pk: tech.get(upload_url(upload.pk)).json() for upload in (completed, failed, pending)} == before
    assert purge() == "Purged 0 stale partial upload(s).\n" + NO_FINISHED


def test_default_age_is_radiology_upload_stale_hours(tech: APIClient, order: RadiologyOrder, settings: Any) -> None:
    settings.RADIOLOGY_UPLOAD_STALE_HOURS = 72
    older = partial_upload(tech, order, CT, 2000)
    younger = partial_upload(tech, order, MR, 2000)
    idle_for(older, 72.1)
    idle_for(younger, 71.9)

    assert purge() == "Purged 1 stale partial upload(s).\n" + NO_FINISHED

    assert (RadiologyUpload.objects.get(pk=older.pk).received_bytes, staged_keys(older.pk)) == (0, [])
    assert RadiologyUpload.objects.get(pk=younger.pk).received_bytes == 2000
    assert len(staged_keys(younger.pk)) == 2


def test_fractional_hours_and_a_second_run_purges_nothing_more(tech: APIClient, order: RadiologyOrder) -> None:
    first = partial_upload(tech, order, CT, 2000)
    second = partial_upload(tech, order, MR, 2000)
    idle_for(first, 0.75)
    idle_for(second, 0.6)

    assert purge("--older-than-hours", "0.5") == "Purged 2 stale partial upload(s).\n" + NO_FINISHED
    assert purge("--older-than-hours", "0.5") == "Purged 0 stale partial upload(s).\n" + NO_FINISHED
    assert staged_keys() == []
    assert list(RadiologyUpload.objects.order_by("pk").values_list("received_bytes", "chunk_offsets")) == [
        (0, []),
        (0, []),
    ]
