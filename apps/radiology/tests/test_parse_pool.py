"""parse_pool: part of a big ingest batch parsed by a helper process, with the same result.

The helper is a real process (forkserver, as in production); nothing is mocked.
"""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest
from django.test import override_settings

from apps.radiology import parse_pool
from apps.radiology.dicom import DICOM_MIME_TYPE, parse_image_file
from apps.radiology.errors import TruncatedFile
from apps.radiology.models import RadiologyImage, RadiologyOrder
from apps.radiology.pacs_lite_service import IngestItem, IngestResult, PACSLiteService
from apps.radiology.tests.trust_helpers import labelled_ct
from apps.radiology.uids import generate_uid

BATCH = 20


@pytest.fixture(scope="module", autouse=True)
def helper_ready() -> None:
    with override_settings(RADIOLOGY_INGEST_PARSE_PROCESSES=1):
        assert parse_pool.wait_until_ready()


def ct_files(tmp_path: Path, count: int) -> list[tuple[Path, str]]:
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for number in range(1, count + 1):
        path = tmp_path / f"{number}.dcm"
        path.write_bytes(labelled_ct(study_uid=study_uid, series_uid=series_uid, instance_number=number))
        files.append((path, DICOM_MIME_TYPE))
    return files


@override_settings(RADIOLOGY_INGEST_PARSE_PROCESSES=1)
def test_the_helper_parses_the_last_part_of_a_batch_exactly_as_the_server_process(tmp_path: Path) -> None:
    files = ct_files(tmp_path, BATCH)

    handed = parse_pool.hand_over(files)

    assert [future is not None for future in handed] == [False] * 11 + [True] * 9
    helper_results = [parse_pool.result(future) for future in handed if future is not None]
    assert helper_results == [parse_image_file(path, mime) for path, mime in files[11:]]


@override_settings(RADIOLOGY_INGEST_PARSE_PROCESSES=1)
def test_small_batches_stay_in_the_server_process(tmp_path: Path) -> None:
    assert parse_pool.hand_over(ct_files(tmp_path, parse_pool.MIN_BATCH - 1)) == [None] * (parse_pool.MIN_BATCH - 1)


@override_settings(RADIOLOGY_INGEST_PARSE_PROCESSES=0)
def test_no_helper_when_turned_off(tmp_path: Path) -> None:
    assert parse_pool.hand_over(ct_files(tmp_path, BATCH)) == [None] * BATCH


@override_settings(RADIOLOGY_INGEST_PARSE_PROCESSES=1)
def test_a_file_the_helper_refuses_comes_back_for_the_server_process_to_refuse(tmp_path: Path) -> None:
    files = ct_files(tmp_path, BATCH)
    last = files[-1][0]
    last.write_bytes(last.read_bytes()[:-100])  # cut short: the pixel data ends early

    handed = parse_pool.hand_over(files)

    assert parse_pool.result(handed[-1]) is None  # type: ignore[arg-type]
    with pytest.raises(TruncatedFile):
        parse_image_file(last, DICOM_MIME_TYPE)


@pytest.mark.django_db
@override_settings(RADIOLOGY_INGEST_PARSE_PROCESSES=1)
def test_a_batch_ingested_with_the_helper_stores_what_the_server_process_parses(
    order: RadiologyOrder, tmp_path: Path
) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    contents = [
        labelled_ct(study_uid=study_uid, series_uid=series_uid, instance_number=number) for number in range(1, 21)
    ]
    contents[15] = contents[15][:-100]  # one truncated file among those the helper takes
    items = [IngestItem(order=order, stream=io.BytesIO(data), filename=f"{n}.dcm") for n, data in enumerate(contents)]

    outcomes = PACSLiteService.ingest_images(items, uploaded_by=None)

    assert [type(outcome) for outcome in outcomes] == [IngestResult] * 15 + [TruncatedFile] + [IngestResult] * 4
    stored = {image.filename: image for image in RadiologyImage.objects.all()}
    assert len(stored) == 19
    for number, data in enumerate(contents):
        if number == 15:
            continue
        written = tmp_path / f"{number}.dcm"
        written.write_bytes(data)
        expected = parse_image_file(written, DICOM_MIME_TYPE)  # this process's own parse
        image = stored[f"{number}.dcm"]
        assert (image.image_metadata, image.pixel_data, image.bulk_data, image.instance_number) == (
            expected.metadata,
            expected.pixel_data,
            expected.bulk_data,
            number + 1,
        )


@override_settings(RADIOLOGY_INGEST_PARSE_PROCESSES=1)
def test_a_killed_helper_is_replaced_and_nothing_waits_for_it(tmp_path: Path) -> None:
    files = ct_files(tmp_path, BATCH)
    pool = parse_pool.helper_pool()
    assert pool is not None
    for pid in list(pool._processes):  # the helper process, killed as the OOM killer would
        os.kill(pid, signal.SIGKILL)

    handed = parse_pool.hand_over(files)
    answers = [parse_pool.result(future) if future is not None else None for future in handed]

    assert answers == [None] * BATCH  # the caller parses them all itself
    assert parse_pool.wait_until_ready()  # a new helper
    assert parse_pool.helper_pool() is not pool
    again = parse_pool.hand_over(files)
    assert [parse_pool.result(future) for future in again if future is not None] == [
        parse_image_file(path, mime) for path, mime in files[11:]
    ]
