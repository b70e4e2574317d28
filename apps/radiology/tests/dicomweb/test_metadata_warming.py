"""A big series' metadata built ahead (dicomweb/metadata_warming.py).

It is the answer a request would build, kept under the key the request reads; it is built once
the series has been quiet (by the process's builder thread) or when import_radiology ends; never
for a series short of MIN_INSTANCES (here lowered to 3, so a test stores three instances, not a
thousand), and only for the DICOMweb roots clients used.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import caches
from django.test import Client

from apps.radiology.dicomweb import dicom_json, metadata_warming
from apps.radiology.dicomweb.render_cache import CACHE_ALIAS
from apps.radiology.ingest.signals import images_committed
from apps.radiology.models import RadiologyImage
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.ingest.test_bulk_import import run_import, study_files, write_folder

from .conftest import Put, Stored
from .helpers import QUIET_UID_WARNINGS

pytestmark = [pytest.mark.django_db, QUIET_UID_WARNINGS]

ROOT = "http://testserver/api/v1/radiology/dicomweb"
DICOM_JSON = {"Accept": "application/dicom+json"}


@pytest.fixture(autouse=True)
def three_make_a_big_series(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metadata_warming, "MIN_INSTANCES", 3)
    monkeypatch.setattr(metadata_warming, "_written_roots", {})
    caches[CACHE_ALIAS].clear()


def kept_answers() -> list[bytes]:
    """The metadata answers in the render cache (LocMemCache in tests; its keys carry a prefix)."""
    renders = caches[CACHE_ALIAS]
    with renders._lock:  # type: ignore[attr-defined] (the builder thread may be writing)
        keys = list(renders._cache)  # type: ignore[attr-defined]
    return [renders.get(key.split(":", 2)[2]) for key in keys if ":metadata:" in key]


def series_of(put: Put, count: int) -> Stored:
    first = put("CT_small.dcm", instance_number=1)
    for number in range(2, count + 1):
        put("CT_small.dcm", series_uid=first.series_uid, instance_number=number)
    return first


def answer_without_building(client: Client, stored: Stored, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """The series' metadata as a client gets it, with building it on request made impossible."""

    def refuse(*_args: Any, **_kwargs: Any) -> bytes:
        raise AssertionError("built on request")

    monkeypatch.setattr(dicom_json, "metadata_array", refuse)
    response = client.get(stored.series_url("/metadata"), headers=DICOM_JSON)
    assert response.status_code == 200, response.content
    return response.content


def test_a_series_built_ahead_is_the_answer_its_request_reads(
    put: Put, doctor_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = series_of(put, 3)
    on_request = doctor_client.get(first.series_url("/metadata"), headers=DICOM_JSON)  # also remembers ROOT
    assert on_request.status_code == 200
    assert metadata_warming.remembered_roots() == [ROOT]
    caches[CACHE_ALIAS].clear()  # the answer kept after that response, and the roots
    metadata_warming._written_roots.clear()
    assert metadata_warming.build_series([first.image.series_id]) == 0  # no root known: nothing to build for
    metadata_warming.remember_root(ROOT)
    assert metadata_warming.build_series([first.image.series_id]) == 1
    assert metadata_warming.build_series([first.image.series_id]) == 0  # kept already
    assert kept_answers() == [on_request.content]
    assert answer_without_building(doctor_client, first, monkeypatch) == on_request.content


def test_a_series_short_of_the_minimum_is_left_to_its_request(put: Put) -> None:
    first = series_of(put, 2)
    metadata_warming.remember_root(ROOT)
    assert metadata_warming.build_series([first.image.series_id]) == 0
    assert kept_answers() == []


def test_an_answer_is_built_for_each_root_clients_used_lately(put: Put) -> None:
    first = series_of(put, 3)
    for root in ("http://a", "http://b", "http://c", "http://d"):
        metadata_warming.remember_root(root)
    assert metadata_warming.remembered_roots() == ["http://b", "http://c", "http://d"]
    metadata_warming.remember_root("http://b")  # written by this process lately: not written again
    assert metadata_warming.remembered_roots() == ["http://b", "http://c", "http://d"]
    metadata_warming._written_roots.clear()  # as after ROOT_REFRESH_SECONDS
    metadata_warming.remember_root("http://b")
    assert metadata_warming.remembered_roots() == ["http://c", "http://d", "http://b"]
    assert metadata_warming.build_series([first.image.series_id]) == 3
    bulk_uris = sorted(answer.split(b'"BulkDataURI":"')[1].split(b"/studies/")[0] for answer in kept_answers())
    assert bulk_uris == [b"http://b", b"http://c", b"http://d"]


def test_ingest_announces_the_series_that_grew_once_its_rows_commit(
    put: Put, django_capture_on_commit_callbacks: Any
) -> None:
    received: list[frozenset[int]] = []

    def receiver(sender: Any, series_ids: frozenset[int], **_: Any) -> None:
        received.append(series_ids)

    images_committed.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            first = put("CT_small.dcm", instance_number=1)
        assert received == []  # not before the commit
        for callback in callbacks:
            callback()
        with django_capture_on_commit_callbacks(execute=True):
            put("CT_small.dcm", series_uid=first.series_uid, instance_number=2)
    finally:
        images_committed.disconnect(receiver)
    assert received == [frozenset({first.image.series_id})] * 2


def test_a_noted_series_is_due_once_quiet_and_noting_it_again_restarts_the_wait() -> None:
    noted = metadata_warming._Noted()
    noted._thread = threading.current_thread()  # alive: note() starts no builder for this instance
    noted.note([7, 8], delay=0.0)
    noted.note([8], delay=3600.0)  # series 8 grew again
    assert noted.take(all_of_them=False) == [7]
    assert noted.take(all_of_them=False) == []
    assert noted.take(all_of_them=True) == [8]
    assert noted.take(all_of_them=True) == []


@pytest.mark.django_db(transaction=True)
def test_a_series_is_built_by_the_builder_thread_once_quiet(
    put: Put, doctor_client: Client, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real thread, on its own database connection (hence committed rows: transaction=True)."""
    settings.RADIOLOGY_METADATA_PREBUILD_SECONDS = 0.5
    metadata_warming.remember_root(ROOT)
    first = series_of(put, 3)
    deadline = time.monotonic() + 60
    while not kept_answers() and time.monotonic() < deadline:
        time.sleep(0.1)
    (kept,) = kept_answers()
    assert answer_without_building(doctor_client, first, monkeypatch) == kept
    assert kept.count(b'"00080018"') == RadiologyImage.objects.filter(series=first.image.series).count() == 3


@pytest.mark.django_db(transaction=True)
def test_import_builds_the_big_series_it_stored_before_it_ends(
    make_order: MakeOrder,
    radiology_store: str,
    tmp_path: Path,
    settings: Any,
    doctor_client: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three CT instances (a big series here) and one MR: the CT series is built as the command ends.
    Its rows commit as the command runs (transaction=True), so the announcements come before its end."""
    settings.RADIOLOGY_METADATA_PREBUILD_SECONDS = 600.0  # the thread would wait; the command does not
    metadata_warming.remember_root(ROOT)
    order = make_order()
    folder = write_folder(tmp_path / "export", study_files(order))
    assert run_import(folder, "--order", order.pk).error is None
    ct = RadiologyImage.objects.select_related("series__study").filter(series__modality="CT").first()
    assert ct is not None
    (kept,) = kept_answers()
    served = answer_without_building(doctor_client, Stored(image=ct, content=b"", path=tmp_path), monkeypatch)
    assert served == kept
    assert kept.count(b'"00080018"') == 3
