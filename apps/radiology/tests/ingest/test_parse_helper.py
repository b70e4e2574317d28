"""parse_helper: part of a big ingest batch parsed by a helper process, with the same result.

The helper is a real process (forkserver, as in production); nothing is mocked. The suite
runs with the helper off (test_settings), so these tests turn it on.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import signal
import time
from pathlib import Path

import pytest
import requests
from dicomweb_client import DICOMwebClient
from django.test import override_settings

from apps.radiology.dicomweb.dicom_json import instance_metadata
from apps.radiology.errors import TruncatedFile
from apps.radiology.fastpaths.encoded_json import EncodedJSON, encode
from apps.radiology.imagefiles.dicom import DICOM_MIME_TYPE, parse_image_file
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.ingest import parse_helper
from apps.radiology.models import RadiologyImage, RadiologyOrder, RadiologyStudy
from apps.radiology.pacs_lite_service import IngestItem, IngestResult, PACSLiteService
from apps.radiology.tests.app_server import AppServer, children_of, own_database, server_env
from apps.radiology.tests.factories import relabelled, served_json

BATCH = 20
HELPER_PART = int(BATCH * parse_helper.HELPER_SHARE)  # the last 9 of 20

pytestmark = pytest.mark.usefixtures("helper_on")


@pytest.fixture
def helper_on() -> None:
    with override_settings(RADIOLOGY_INGEST_PARSE_HELPER=True):
        assert parse_helper.wait_until_ready()
        yield


def ct_files(tmp_path: Path, count: int) -> list[tuple[Path, str]]:
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for number in range(1, count + 1):
        path = tmp_path / f"{number}.dcm"
        path.write_bytes(relabelled("CT_small.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=number))
        files.append((path, DICOM_MIME_TYPE))
    return files


def parsed_here(files: list[tuple[Path, str]]) -> list[object]:
    return [parse_image_file(path, mime) for path, mime in files]


def helper_parses(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record the files this process parses itself (the helper's parsing is not seen here)."""
    parsed: list[Path] = []
    real = parse_helper._parse_here

    def recording(path: Path, mime_type: str) -> object:
        parsed.append(path)
        return real(path, mime_type)

    monkeypatch.setattr(parse_helper, "_parse_here", recording)
    return parsed


def test_the_helper_parses_the_last_part_of_a_batch_exactly_as_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = ct_files(tmp_path, BATCH)
    parsed_in_this_process = helper_parses(monkeypatch)

    results = parse_helper.parse_files(files)

    assert parsed_in_this_process == [path for path, _mime in files[: BATCH - HELPER_PART]]
    assert results == parsed_here(files)
    # What came back from the helper keeps the JSON text it made there.
    assert all(type(result.metadata) is EncodedJSON for result in results)  # type: ignore[union-attr]
    assert [result.metadata.text for result in results] == [p.metadata.text for p in parsed_here(files)]  # type: ignore[union-attr,attr-defined]


def test_small_batches_stay_in_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = ct_files(tmp_path, parse_helper.MIN_BATCH - 1)
    parsed_in_this_process = helper_parses(monkeypatch)
    assert parse_helper.parse_files(files) == parsed_here(files)
    assert parsed_in_this_process == [path for path, _mime in files]


def test_no_helper_when_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = ct_files(tmp_path, BATCH)
    parsed_in_this_process = helper_parses(monkeypatch)
    with override_settings(RADIOLOGY_INGEST_PARSE_HELPER=False):
        assert parse_helper.parse_files(files) == parsed_here(files)
    assert parsed_in_this_process == [path for path, _mime in files]


def test_a_file_the_helper_refuses_is_refused_here_with_the_same_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = ct_files(tmp_path, BATCH)
    truncated, garbage = files[-1][0], files[-2][0]
    truncated.write_bytes(truncated.read_bytes()[:-100])  # cut short: the pixel data ends early
    garbage.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)  # no meta: read as cut short
    parsed_in_this_process = helper_parses(monkeypatch)

    results = parse_helper.parse_files(files)

    assert parsed_in_this_process[-2:] == [garbage, truncated]  # the helper sent them back
    assert len(parsed_in_this_process) == BATCH - HELPER_PART + 2
    assert isinstance(results[-1], TruncatedFile)
    assert isinstance(results[-2], TruncatedFile)
    assert results[:-2] == parsed_here(files[:-2])


@pytest.mark.django_db
def test_a_batch_ingested_with_the_helper_stores_what_this_process_parses(
    order: RadiologyOrder, tmp_path: Path
) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    contents = [
        relabelled("CT_small.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=number)
        for number in range(1, 21)
    ]
    contents[15] = contents[15][:-100]  # one truncated file among those the helper takes
    items = [IngestItem(order=order, stream=io.BytesIO(data), filename=f"{n}.dcm") for n, data in enumerate(contents)]

    outcomes = PACSLiteService.ingest_images(items, uploaded_by=None)

    assert [type(outcome) for outcome in outcomes] == [IngestResult] * 15 + [TruncatedFile] + [IngestResult] * 4
    stored = {image.filename: image for image in RadiologyImage.objects.all()}
    assert len(stored) == 19
    study = RadiologyStudy.objects.get(radiology_order=order)
    texts = dict(RadiologyImage.objects.values_list("filename", "metadata_text"))
    for number, data in enumerate(contents):
        if number == 15:
            continue
        written = tmp_path / f"{number}.dcm"
        written.write_bytes(data)
        expected = parse_image_file(written, DICOM_MIME_TYPE)  # this process's own parse
        image = stored[f"{number}.dcm"]
        assert (image.image_metadata, image.pixel_data, image.bulk_data, image.instance_number) == (
            served_json({**expected.metadata, **expected.metadata.held}, study, image.image_metadata),
            expected.pixel_data,
            expected.bulk_data,
            number + 1,
        )
        assert texts[f"{number}.dcm"] == encode(instance_metadata(image, study=None, series=None, instance_url=""))


def test_a_killed_helper_costs_one_batch_its_second_core_and_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = ct_files(tmp_path, BATCH)
    pid = parse_helper.helper_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # as the OOM killer would
    parsed_in_this_process = helper_parses(monkeypatch)

    assert parse_helper.parse_files(files) == parsed_here(files)

    assert parsed_in_this_process == [path for path, _mime in files]  # all of it, here
    assert parse_helper.wait_until_ready()  # a new helper
    assert parse_helper.helper_pid() not in (None, pid)
    parsed_in_this_process.clear()
    assert parse_helper.parse_files(files) == parsed_here(files)
    assert len(parsed_in_this_process) == BATCH - HELPER_PART


def test_an_idle_helper_is_stopped_and_a_later_batch_starts_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polls with a generous deadline; no timed assertion."""
    files = ct_files(tmp_path, BATCH)
    with parse_helper._lock:  # the fixture's helper, whose idle watch sleeps the real interval
        old, parse_helper._helper = parse_helper._helper, None
    if old is not None:
        old.stop()
    monkeypatch.setattr(parse_helper, "IDLE_SECONDS", 0.2)
    assert parse_helper.wait_until_ready()
    helper = parse_helper._helper
    assert helper is not None
    pid = helper.process.pid

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and helper.process.poll() is None:
        time.sleep(0.05)

    assert helper.process.poll() is not None
    assert (parse_helper._helper, parse_helper.helper_pid()) == (None, None)
    assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
    parsed_in_this_process = helper_parses(monkeypatch)
    assert parse_helper.parse_files(files) == parsed_here(files)  # parsed here while another starts
    assert parsed_in_this_process == [path for path, _mime in files]
    monkeypatch.setattr(parse_helper, "IDLE_SECONDS", 3600.0)
    assert parse_helper.wait_until_ready()
    parsed_in_this_process.clear()
    assert parse_helper.parse_files(files) == parsed_here(files)
    assert len(parsed_in_this_process) == BATCH - HELPER_PART


def _parse_processes(worker: int) -> list[int]:
    """A server worker's parse helper: its child started with HELPER_COMMAND (nothing else)."""
    marker = parse_helper.HELPER_COMMAND.split(";")[0].encode()
    return [child for child in children_of(worker) if marker in Path(f"/proc/{child}/cmdline").read_bytes()]


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


def _settled_ticks(pids: list[int]) -> int:
    """Their CPU time once it stops growing (the helpers have set up Django and wait for work)."""
    deadline = time.monotonic() + 60
    before = _cpu_ticks(pids)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _cpu_ticks(pids)
        if now == before:
            return now
        before = now
    raise AssertionError("the parse helpers never went idle")


def test_stow_rs_through_the_app_server_parses_on_helper_processes_and_stores_the_same(tmp_path: Path) -> None:
    """A real server with the helper on, fed by dicomweb-client: the worker starts its helper
    on its first big batch, later batches are parsed partly there, and what is stored is
    what this process parses. One worker, so every batch goes to the worker whose helper
    is watched."""
    with own_database(tmp_path, "helper") as database_url:
        server = AppServer(
            server_env(tmp_path, database_url, RADIOLOGY_INGEST_PARSE_HELPER="1"),
            tmp_path / "app_server.log",
            workers=1,
        )
        try:
            seeded = server.seed_and_start()
            session = requests.Session()
            session.headers["Authorization"] = f"Token {seeded['tokens']['radtech']}"
            client = DICOMwebClient(f"{server.url}/api/v1/radiology/dicomweb", session=session)
            url = f"{server.url}/api/v1/radiology/dicomweb/studies?radiology_order_id={seeded['radiology_orders'][0]}"
            study_uid, series_uid = generate_uid(), generate_uid()
            sent: list[bytes] = []

            def store_batch() -> None:
                batch = [
                    relabelled(
                        "CT_small.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=len(sent) + number
                    )
                    for number in range(1, 13)
                ]
                answer = client._http_post_multipart_application_dicom(url, batch)
                assert len(answer.ReferencedSOPSequence) == len(batch)
                assert "FailedSOPSequence" not in answer
                sent.extend(batch)

            assert server.process is not None
            (worker,) = children_of(server.process.pid)
            store_batch()  # the first big batch starts the helper (and is parsed without it)
            deadline = time.monotonic() + 60
            while not _parse_processes(worker) and time.monotonic() < deadline:
                time.sleep(0.1)
            helpers = _parse_processes(worker)
            assert len(helpers) == 1, server.log_tail()  # the helper, its own interpreter
            # Nothing else of multiprocessing's (a forkserver, a resource tracker) stays behind.
            assert children_of(worker) == helpers
            idle = _settled_ticks(helpers)
            for _batch in range(6):
                store_batch()
            assert _cpu_ticks(helpers) > idle  # the helper parsed part of those batches
            stored = {
                row["00080018"]["Value"][0]: row for row in client.retrieve_series_metadata(study_uid, series_uid)
            }
        finally:
            server.stop()
    assert "parse helper" not in server.log_tail()  # no helper failed, none fell back
    assert len(stored) == len(sent)
    # The server's own database: its study's EMR identity, as the first instance shows it (what
    # this test checks is that the helper's parse is this process's; identity: test_identity.py).
    first = next(iter(stored.values()))
    served_study = RadiologyStudy(
        patient_dicom_name=first["00100010"]["Value"][0]["Alphabetic"],
        patient_id=first["00100020"]["Value"][0],
        patient_birth_date=dt.date.fromisoformat(first["00100030"]["Value"][0])
        if "Value" in first["00100030"]
        else None,
        patient_sex=first["00100040"].get("Value", [""])[0],
    )
    for number, content in enumerate(sent):
        path = tmp_path / f"{number}.dcm"
        path.write_bytes(content)
        parsed = parse_image_file(path, DICOM_MIME_TYPE)
        metadata = stored[parsed.image_uid]  # type: ignore[index]
        plain = {tag: value for tag, value in metadata.items() if "BulkDataURI" not in value}
        assert plain == served_json({**parsed.metadata, **parsed.metadata.held}, served_study, plain)
