"""PACS-lite against Orthanc: the same DICOM data, the same client code, one run, side by side.

Run from the repository root (as root: it may apt-get install orthanc and runs PostgreSQL
as the postgres user):  make bench   (= .venv/bin/python bench/compare_orthanc.py)

What it does, all on 127.0.0.1 and in a temporary directory (never var/):
1. installs Debian's orthanc + orthanc-dicomweb when missing (never starts the service);
2. makes a synthetic dataset from pydicom's CT_small.dcm: 5 studies x 2 series x 50
   instances plus one study of one 500-instance series (1,000 instances of ~39 KB), every
   UID distinct, InstanceNumber and ImagePositionPatient/SliceLocation varying;
3. starts a throwaway PostgreSQL (scripts/pg_throwaway.sh), migrates, seeds the demo users
   and one order per study, starts PACS-lite under gunicorn (3 gthread workers, which keep
   connections alive as Orthanc does; production settings, DJANGO_DEBUG=0, plain HTTP on
   loopback) and Orthanc (fresh storage, DicomWeb plugin);
4. measures both with dicomweb-client, interleaving the two servers request by request:
   STOW-RS in batches of 50, QIDO, series metadata (50 and 500 instances), one frame, a
   rendered JPEG, an instance; then the memory of each server while it takes a ~1 GB
   DICOM file (PACS-lite through its resumable upload API, whole and in 64 MiB chunks;
   Orthanc through POST /instances, its only way in for one file);
5. stops Orthanc and measures how PACS-lite's cost grows: the study images endpoint and
   series metadata at 10, 100 and 1,000 instances, and QIDO with 100 and 10,000 studies
   in the database (rows made with bulk_create in this process), with EXPLAIN plans.
Prints two tables of medians and writes them, with the plans, to bench/results/compare_orthanc.md.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import io
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import _services as services  # noqa: E402
from bench_upload_memory import FRAME_BYTES, MIB, write_big_dicom  # noqa: E402
from bench_upload_memory import upload as resumable_upload  # noqa: E402

ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "compare_orthanc.md"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
SLICE_SPACING = 5.0
STOW_BATCH = 50


# --- The dataset --------------------------------------------------------------------------


@dataclass
class Series:
    uid: str
    number: int
    instances: list[tuple[str, bytes]] = field(default_factory=list)  # (SOP Instance UID, Part 10 bytes)


@dataclass
class Study:
    uid: str
    patient_id: str
    series: list[Series] = field(default_factory=list)


def make_dataset(plan: list[list[int]]) -> list[Study]:
    """Copies of CT_small.dcm relabelled into studies and series, each instance its own slice."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    x, y, z0 = (float(value) for value in template.ImagePositionPatient)
    studies = []
    for study_index, sizes in enumerate(plan, start=1):
        study = Study(uid=generate_uid(prefix=None), patient_id=f"BENCH-{study_index:03d}")
        for series_number, count in enumerate(sizes, start=1):
            series = Series(uid=generate_uid(prefix=None), number=series_number)
            for instance_number in range(1, count + 1):
                dataset = copy.copy(template)  # shallow: every changed element is set anew below
                dataset.file_meta = copy.deepcopy(template.file_meta)
                sop_uid = generate_uid(prefix=None)
                dataset.StudyInstanceUID = study.uid
                dataset.SeriesInstanceUID = series.uid
                dataset.SOPInstanceUID = sop_uid
                dataset.file_meta.MediaStorageSOPInstanceUID = sop_uid
                dataset.PatientID = study.patient_id
                dataset.PatientName = f"Bench^Patient{study_index}"
                dataset.SeriesNumber = series_number
                dataset.InstanceNumber = instance_number
                z = z0 - (instance_number - 1) * SLICE_SPACING
                dataset.ImagePositionPatient = [x, y, z]
                dataset.SliceLocation = z
                buffer = io.BytesIO()
                dataset.save_as(buffer, enforce_file_format=True)
                series.instances.append((sop_uid, buffer.getvalue()))
            study.series.append(series)
        studies.append(study)
    return studies


# --- Timing -------------------------------------------------------------------------------


class TimedSession(requests.Session):
    """The session dicomweb-client talks through; it clocks each HTTP exchange.

    An exchange runs from sending the request to having the whole response body; what the
    client then does with the body (json.loads of megabytes of DICOM JSON, splitting a
    multipart, pydicom reading an instance) is the client's cost, not the server's, and on
    this machine it can dwarf the server's (see the note printed under the table).
    """

    def __init__(self) -> None:
        super().__init__()
        self.exchange_ms = 0.0

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        started = time.perf_counter()
        response = super().send(request, **kwargs)
        _ = response.content  # the whole body, inside the clock
        self.exchange_ms += (time.perf_counter() - started) * 1000
        return response


Call = Callable[[int], Any]


def interleaved(reps: int, calls: dict[str, Call], sessions: dict[str, TimedSession]) -> dict[str, list[float]]:
    """Each call once to warm up, then `reps` timed rounds, alternating which server goes first.

    A round's figure is the time of the HTTP exchange(s) the call made (TimedSession).
    """
    for call in calls.values():
        call(0)
    timings: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_number in range(reps):
        for name in names if round_number % 2 == 0 else reversed(names):
            sessions[name].exchange_ms = 0.0
            calls[name](round_number)
            timings[name].append(sessions[name].exchange_ms)
    return timings


def median(values: list[float]) -> float:
    return statistics.median(values)


@dataclass
class Row:
    label: str
    unit: str
    pacs: float
    orthanc: float | None
    higher_is_better: bool = False
    target: str = ""
    target_ratio: float | None = None  # met when the ratio reaches it
    target_pacs_max: float | None = None  # met when PACS-lite's own figure stays under it
    show_ratio: bool = True

    @property
    def ratio(self) -> float | None:
        if not self.show_ratio or self.orthanc is None or self.pacs <= 0 or self.orthanc <= 0:
            return None
        return self.pacs / self.orthanc if self.higher_is_better else self.orthanc / self.pacs

    @property
    def met(self) -> str:
        if self.target_ratio is not None:
            return "—" if self.ratio is None else ("yes" if self.ratio >= self.target_ratio else "**no**")
        if self.target_pacs_max is not None:
            return "yes" if self.pacs < self.target_pacs_max else "**no**"
        return ""


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{value:,.{digits}f} {unit}"


def comparison_table(rows: list[Row]) -> str:
    lines = [
        "| Measurement | PACS-lite | Orthanc | PACS-lite/Orthanc (>1 = PACS-lite better) | Target | Met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        ratio = "—" if row.ratio is None else f"{row.ratio:.2f}x"
        cells = [row.label, fmt(row.pacs, row.unit), fmt(row.orthanc, row.unit), ratio, row.target, row.met]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- Clients ------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    client: DICOMwebClient
    session: TimedSession
    stow_url: Callable[[int], str]  # study index -> STOW-RS URL


def store_batch(server: Server, study_index: int, parts: list[bytes]) -> None:
    """POST one multipart/related batch through dicomweb-client's own STOW-RS code path.

    The parts are encoded before the clock starts (store_instances would dcmwrite each
    dataset first), so the figure is the server's, not pydicom's on the client.
    """
    answer = server.client._http_post_multipart_application_dicom(server.stow_url(study_index), parts)
    stored = len(answer.get("ReferencedSOPSequence", []))
    failed = len(answer.get("FailedSOPSequence", []))
    if stored != len(parts) or failed:
        raise RuntimeError(f"{server.name} STOW-RS stored {stored} of {len(parts)}, {failed} failed")


# --- The benchmark ------------------------------------------------------------------------


def compare(
    arguments: argparse.Namespace, studies: list[Study], pacs: Server, orthanc: Server
) -> tuple[list[Row], list[str]]:
    notes: list[str] = []
    rows: list[Row] = []
    reps, big_reps = arguments.reps, max(3, arguments.reps // 3)

    # STOW-RS: every batch is 50 instances of one series; the servers take turns batch by batch.
    batches = [
        (study_index, [data for _uid, data in series.instances[start : start + STOW_BATCH]])
        for study_index, study in enumerate(studies)
        for series in study.series
        for start in range(0, len(series.instances), STOW_BATCH)
    ]
    rates: dict[str, list[float]] = {pacs.name: [], orthanc.name: []}
    totals = dict.fromkeys(rates, 0.0)
    for number, (study_index, parts) in enumerate(batches):
        for server in (pacs, orthanc) if number % 2 == 0 else (orthanc, pacs):
            server.session.exchange_ms = 0.0
            store_batch(server, study_index, parts)
            seconds = server.session.exchange_ms / 1000
            rates[server.name].append(len(parts) / seconds)
            totals[server.name] += seconds
    count = sum(len(parts) for _study, parts in batches)
    rows.append(
        Row(
            f"STOW-RS ingest, batches of {STOW_BATCH} (median of {len(batches)} batches)",
            "inst/s",
            median(rates[pacs.name]),
            median(rates[orthanc.name]),
            higher_is_better=True,
            target=">= 1.0x",
            target_ratio=1.0,
        )
    )
    notes.append(
        f"Ingest of {count} instances in total: PACS-lite {totals[pacs.name]:.1f} s "
        f"({count / totals[pacs.name]:.0f} inst/s), Orthanc {totals[orthanc.name]:.1f} s "
        f"({count / totals[orthanc.name]:.0f} inst/s)."
    )

    def pair(label: str, timed: dict[str, list[float]], target: str = "", ratio: float | None = None) -> None:
        rows.append(
            Row(label, "ms", median(timed[pacs.name]), median(timed[orthanc.name]), target=target, target_ratio=ratio)
        )

    first, big = studies[0], studies[-1]
    small_series, big_series = first.series[0], big.series[0]
    servers = (pacs, orthanc)
    sessions = {s.name: s.session for s in servers}

    def timed(count: int, calls: dict[str, Call]) -> dict[str, list[float]]:
        return interleaved(count, calls, sessions)

    pair(
        f"QIDO-RS studies (all {len(studies)}) (median of {reps})",
        timed(reps, {s.name: (lambda _i, s=s: s.client.search_for_studies()) for s in servers}),
        ">= 1.0x",
        1.0,
    )
    pair(
        f"QIDO-RS series of a study (median of {reps})",
        timed(
            reps, {s.name: (lambda _i, s=s: s.client.search_for_series(study_instance_uid=first.uid)) for s in servers}
        ),
        ">= 1.0x",
        1.0,
    )
    # First request for a series (PACS-lite has nothing cached yet): each 50-instance series once,
    # and the 500-instance series once.
    cold: dict[str, list[float]] = {pacs.name: [], orthanc.name: []}
    small_all = [(study, series) for study in studies[:-1] for series in study.series]
    for study, series in [*small_all, (big, big_series)]:
        for s in servers:
            s.session.exchange_ms = 0.0
            s.client.retrieve_series_metadata(study.uid, series.uid)
            cold[s.name].append(s.session.exchange_ms)
    n_small = len(small_all)
    rows.append(
        Row(
            f"Series metadata, 50 instances, first request (median of {n_small} series)",
            "ms",
            median(cold[pacs.name][:n_small]),
            median(cold[orthanc.name][:n_small]),
            target=">= 3x",
            target_ratio=3.0,
        )
    )
    rows.append(
        Row(
            "Series metadata, 500 instances, first request (1 series)",
            "ms",
            cold[pacs.name][-1],
            cold[orthanc.name][-1],
            target=">= 3x",
            target_ratio=3.0,
        )
    )
    for s in servers:
        s.session.exchange_ms = 0.0
        started = time.perf_counter()
        s.client.retrieve_series_metadata(big.uid, big_series.uid)
        decode = (time.perf_counter() - started) * 1000 - s.session.exchange_ms
        notes.append(
            f"dicomweb-client decoding {s.name}'s 500-instance metadata (json.loads, client side, not counted "
            f"above): {decode:.0f} ms."
        )

    for series, count_reps in ((small_series, reps), (big_series, big_reps)):
        study_uid = first.uid if series is small_series else big.uid

        def metadata(_i: int, s: Server, study_uid: str = study_uid, series: Series = series) -> None:
            answer = s.client.retrieve_series_metadata(study_uid, series.uid)
            if len(answer) != len(series.instances):
                raise RuntimeError(f"{s.name} metadata has {len(answer)} of {len(series.instances)} instances")

        pair(
            f"Series metadata, {len(series.instances)} instances, again (median of {count_reps})",
            timed(count_reps, {s.name: (lambda i, s=s: metadata(i, s)) for s in servers}),
            ">= 3x",
            3.0,
        )

    # One frame: OHIF asks transfer-syntax=*; Orthanc's plugin needs the explicit syntax named
    # (FIELD-NOTES). Both answer the same native bytes. Instances rotate through a series.
    frame_types = {
        pacs.name: (("application/octet-stream", "*"),),
        orthanc.name: (("application/octet-stream", EXPLICIT_LITTLE),),
    }

    def frame(i: int, s: Server) -> None:
        sop = small_series.instances[i % len(small_series.instances)][0]
        parts = s.client.retrieve_instance_frames(
            first.uid, small_series.uid, sop, frame_numbers=[1], media_types=frame_types[s.name]
        )
        if len(parts) != 1 or len(parts[0]) != 128 * 128 * 2:
            raise RuntimeError(f"{s.name} frame has {len(parts[0]) if parts else 0} bytes")

    pair(
        f"Frame, multipart octet-stream (median of {reps})",
        timed(reps, {s.name: (lambda i, s=s: frame(i, s)) for s in servers}),
        ">= 1.0x",
        1.0,
    )

    def rendered(i: int, s: Server, *, fixed: bool) -> None:
        sop = big_series.instances[0 if fixed else 1 + i][0]
        jpeg = s.client.retrieve_instance_rendered(big.uid, big_series.uid, sop, media_types=("image/jpeg",))
        if not jpeg.startswith(b"\xff\xd8"):
            raise RuntimeError(f"{s.name} rendered is not a JPEG")

    pair(
        f"Rendered JPEG, first request for an instance (median of {reps})",
        timed(reps, {s.name: (lambda i, s=s: rendered(i, s, fixed=False)) for s in servers}),
        ">= 1.0x",
        1.0,
    )
    pair(
        f"Rendered JPEG, same instance again (median of {reps})",
        timed(reps, {s.name: (lambda i, s=s: rendered(i, s, fixed=True)) for s in servers}),
        ">= 1.0x",
        1.0,
    )
    second = studies[1].series[1]

    def instance(i: int, s: Server) -> None:
        sop = second.instances[i % len(second.instances)][0]
        dataset = s.client.retrieve_instance(studies[1].uid, second.uid, sop)
        if dataset.SOPInstanceUID != sop:
            raise RuntimeError(f"{s.name} returned another instance")

    pair(
        f"Instance retrieval, application/dicom (median of {reps})",
        timed(reps, {s.name: (lambda i, s=s: instance(i, s)) for s in servers}),
    )
    notes.append(
        "Frames: PACS-lite is asked as OHIF asks (transfer-syntax=*), Orthanc with the explicit little endian "
        "syntax its plugin needs; both answer the same native bytes."
    )
    notes.append(
        "Rendered JPEG 'first request' rotates through instances nobody asked for yet (PACS-lite decodes, then "
        "caches the render); 'same instance again' repeats one (PACS-lite answers from its render cache)."
    )
    return rows, notes


@dataclass
class MemoryFigures:
    label: str
    idle_mib: float
    peak_mib: float
    hwm_mib: float
    seconds: float
    size: int

    @property
    def delta(self) -> float:
        return self.peak_mib - self.idle_mib


def pacs_upload_memory(
    pacs_base: str, token: str, workers: list[int], order_ids: list[int], size_mb: int, workdir: Path
) -> list[MemoryFigures]:
    """RSS of the gunicorn workers while a ~1 GB DICOM goes in, whole and in 64 MiB chunks."""
    frames = max(1, size_mb * MIB // FRAME_BYTES)
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    figures = []
    for (label, chunk), order_id in zip((("whole PUT", None), ("64 MiB chunks", 64 * MIB)), order_ids, strict=True):
        path = workdir / f"big-{uuid.uuid4().hex[:8]}.dcm"
        big = write_big_dicom(
            path, frames=frames, study_uid=generate_uid(prefix=None), series_uid=generate_uid(prefix=None)
        )
        time.sleep(0.5)
        idle = {pid: services.status_kib(pid, "VmRSS") for pid in workers}
        ticks = {pid: services.cpu_ticks(pid) for pid in workers}
        with services.RssSampler(workers) as sampler:
            started = time.monotonic()
            response = resumable_upload(session, pacs_base, order_id, big, chunk_bytes=chunk)
            seconds = time.monotonic() - started
            time.sleep(0.1)
        if response.status_code != 201 or response.json()["image"]["checksum"] != big.checksum:
            raise RuntimeError(f"upload ({label}) did not complete: {response.status_code} {response.text[:300]}")
        # The worker that served the upload is the one that spent the most CPU time meanwhile.
        pid = max(workers, key=lambda p: services.cpu_ticks(p) - ticks[p])
        figures.append(
            MemoryFigures(
                f"PACS-lite, {label}",
                idle[pid] / 1024,
                sampler.peaks[pid] / 1024,
                services.status_kib(pid, "VmHWM") / 1024,
                seconds,
                big.size,
            )
        )
        path.unlink()
    return figures


def orthanc_upload_memory(base: str, pid: int, size_mb: int, workdir: Path) -> MemoryFigures | None:
    """RSS of Orthanc while it takes the same kind of file through POST /instances."""
    frames = max(1, size_mb * MIB // FRAME_BYTES)
    path = workdir / "big-orthanc.dcm"
    big = write_big_dicom(
        path, frames=frames, study_uid=generate_uid(prefix=None), series_uid=generate_uid(prefix=None)
    )
    time.sleep(0.5)
    idle = services.status_kib(pid, "VmRSS")
    try:
        with services.RssSampler([pid]) as sampler, path.open("rb") as handle:
            started = time.monotonic()
            response = requests.post(
                f"{base}/instances", data=handle, headers={"Content-Type": "application/dicom"}, timeout=900
            )
            seconds = time.monotonic() - started
            time.sleep(0.1)
    finally:
        path.unlink()
    if not response.ok:
        print(f"Orthanc refused the {size_mb} MB file: {response.status_code} {response.text[:200]}", flush=True)
        return None
    return MemoryFigures(
        "Orthanc, POST /instances",
        idle / 1024,
        sampler.peaks[pid] / 1024,
        services.status_kib(pid, "VmHWM") / 1024,
        seconds,
        big.size,
    )


def memory_table(figures: list[MemoryFigures]) -> str:
    lines = [
        "| ~1 GB upload | idle RSS | peak RSS (20 ms samples) | peak - idle | VmHWM after | seconds | MiB/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for figure in figures:
        lines.append(
            f"| {figure.label} | {figure.idle_mib:.0f} MiB | {figure.peak_mib:.0f} MiB | {figure.delta:.0f} MiB | "
            f"{figure.hwm_mib:.0f} MiB | {figure.seconds:.1f} | {figure.size / MIB / figure.seconds:.0f} |"
        )
    return "\n".join(lines)


# --- How cost grows (in-process rows against the same database) ---------------------------


class Growth:
    """Rows made fast with bulk_create, then timed over HTTP against the running PACS-lite."""

    def __init__(self, template_image_uid: str) -> None:
        from django.contrib.auth import get_user_model

        from apps.radiology.models import RadiologyImage

        self.template = RadiologyImage.objects.get(image_uid=template_image_uid)
        self.doctor = get_user_model().objects.get(username="doctor")
        self.made = 0

    def studies(self, count: int, *, images_per_study: int, full_metadata: bool) -> list[Any]:
        """`count` studies (patient, visit, order, study), one series each, N image rows each."""
        from apps.emr.models import Patient, Visit
        from apps.radiology.imagefiles.stored_header import metadata_text
        from apps.radiology.models import (
            DICOM_MIME_TYPE,
            RadiologyImage,
            RadiologyOrder,
            RadiologySeries,
            RadiologyStudy,
        )

        tag = f"{self.made:06d}"
        self.made += count
        today = dt.date(2026, 1, 15)
        patients = Patient.objects.bulk_create(
            [
                Patient(hospital_number=f"GROW-{tag}-{i:05d}", first_name="Grow", last_name=f"Patient{i}")
                for i in range(count)
            ],
            batch_size=2000,
        )
        visits = Visit.objects.bulk_create([Visit(patient=p, visit_date=today) for p in patients], batch_size=2000)
        orders = RadiologyOrder.objects.bulk_create(
            [
                RadiologyOrder(visit=v, modality="CT", exam_requested="CT Chest", ordering_doctor=self.doctor)
                for v in visits
            ],
            batch_size=2000,
        )
        studies = RadiologyStudy.objects.bulk_create(
            [
                RadiologyStudy(
                    radiology_order=o,
                    study_uid=generate_uid(prefix=None),
                    study_date=today,
                    study_description="Bench growth",
                    modality="CT",
                    accession_number=o.accession_number,
                    patient_name=f"Grow Patient{i}",
                    patient_dicom_name=f"Patient{i}^Grow",
                    patient_id=p.hospital_number,
                )
                for i, (o, p) in enumerate(zip(orders, patients, strict=True))
            ],
            batch_size=2000,
        )
        series = RadiologySeries.objects.bulk_create(
            [
                RadiologySeries(study=s, series_uid=generate_uid(prefix=None), series_number=1, modality="CT")
                for s in studies
            ],
            batch_size=2000,
        )
        template = self.template
        images = []
        for one_series in series:
            for number in range(1, images_per_study + 1):
                uid = generate_uid(prefix=None)
                metadata: dict[str, Any] = {}
                if full_metadata:
                    metadata = dict(template.image_metadata)
                    metadata["00080018"] = {"vr": "UI", "Value": [uid]}
                    metadata["0020000D"] = {"vr": "UI", "Value": [one_series.study.study_uid]}
                    metadata["0020000E"] = {"vr": "UI", "Value": [one_series.series_uid]}
                    metadata["00200013"] = {"vr": "IS", "Value": [number]}
                images.append(
                    RadiologyImage(
                        series=one_series,
                        image_uid=uid,
                        sop_class_uid=template.sop_class_uid,
                        transfer_syntax_uid=template.transfer_syntax_uid,
                        instance_number=number,
                        number_of_frames=1,
                        rows=template.rows,
                        columns=template.columns,
                        file_key=f"bench-rows-only/{uid}.dcm",
                        filename=f"{uid}.dcm",
                        file_size=template.file_size,
                        mime_type=DICOM_MIME_TYPE,
                        checksum=template.checksum,
                        image_metadata=metadata,
                        pixel_data=template.pixel_data,
                        bulk_data=template.bulk_data,
                    )
                )
                # As ingest writes it: the text series metadata answers are made of.
                images[-1].metadata_text = metadata_text(images[-1]) if full_metadata else ""
        RadiologyImage.objects.bulk_create(images, batch_size=2000)
        return studies


def analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def explain_qido(queries: dict[str, str]) -> tuple[list[str], dict[str, list[str]]]:
    """EXPLAIN ANALYZE every SQL statement each QIDO search runs; (seq scans found, plans)."""
    from django.db import connection
    from django.http import QueryDict
    from django.test.utils import CaptureQueriesContext

    from apps.radiology.access.principals import EVERYTHING, ScopePrincipal
    from apps.radiology.dicomweb.qido import parse_search, search_series, search_studies

    reader = ScopePrincipal(EVERYTHING)  # a doctor's view: every study

    scans: list[str] = []
    plans: dict[str, list[str]] = {}
    for label, query_string in queries.items():
        path, _, params = query_string.partition("?")
        query = parse_search(QueryDict(params))
        with CaptureQueriesContext(connection) as captured:
            if path.endswith("/series"):
                # As the view does: the series of the study named by its UID, through the read door.
                search_series(query, principal=reader, url=lambda *parts: "", study_uid=path.split("/")[1])
            else:
                search_studies(query, principal=reader, url=lambda *parts: "")
        lines: list[str] = []
        with connection.cursor() as cursor:
            for statement in captured.captured_queries:
                cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + statement["sql"])
                plan = [row[0] for row in cursor.fetchall()]
                lines += [f"-- {statement['sql'][:160]}{'…' if len(statement['sql']) > 160 else ''}", *plan, ""]
                scans += [f"{label}: {line.strip()}" for line in plan if "Seq Scan on radiology_" in line]
        plans[label] = lines
    return scans, plans


def growth(
    arguments: argparse.Namespace, pacs_base: str, token: str, template_uid: str
) -> tuple[str, str, list[str], dict[str, list[str]]]:
    from apps.radiology.models import RadiologyStudy

    reps = arguments.reps
    session = TimedSession()
    session.headers["Authorization"] = f"Token {token}"
    client = DICOMwebClient(f"{pacs_base}/api/v1/radiology/dicomweb", session=session, timeout=300)
    maker = Growth(template_uid)

    def once(call: Callable[[], Any]) -> float:
        session.exchange_ms = 0.0
        call()
        return session.exchange_ms

    def timed(call: Callable[[], Any], count: int) -> float:
        call()
        return median([once(call) for _ in range(count)])

    sizes = (10, 100, 1000)
    images_ms, metadata_first_ms, metadata_ms = [], [], []
    for size in sizes:
        made = maker.studies(3, images_per_study=size, full_metadata=True)
        uids = [(one.study_uid, one.series.get().series_uid) for one in made]
        firsts = [once(lambda pair=pair: client.retrieve_series_metadata(*pair)) for pair in uids]
        metadata_first_ms.append(median(firsts))
        study = made[0]
        series_uid = study.series.get().series_uid
        count = reps if size < 1000 else max(3, reps // 3)

        def images(study_id: int = study.pk, size: int = size) -> None:
            response = session.get(f"{pacs_base}/api/v1/radiology/studies/{study_id}/images/", timeout=300)
            response.raise_for_status()
            if sum(len(item["images"]) for item in response.json()["series"]) != size:
                raise RuntimeError("images endpoint returned the wrong number of images")

        images_ms.append(timed(images, count))
        metadata_ms.append(timed(lambda s=study, u=series_uid: client.retrieve_series_metadata(s.study_uid, u), count))
    cost = [
        "| PACS-lite, median ms | 10 instances | 100 instances | 1,000 instances | per 1,000 more |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, values in (
        ("Study images endpoint (signed URLs)", images_ms),
        ("Series metadata, first request (median of 3 series)", metadata_first_ms),
        ("Series metadata, again (cached)", metadata_ms),
    ):
        slope = (values[2] - values[1]) / 0.9
        cost.append(f"| {label} | {values[0]:.1f} | {values[1]:.1f} | {values[2]:.1f} | +{slope:.0f} ms |")

    # QIDO with 100, then 10,000 studies in the database (each filler study: 1 series, 2 image rows).
    probe = RadiologyStudy.objects.filter(study_uid=arguments.probe_study_uid).get()
    queries = {
        "studies?StudyInstanceUID=<uid>": f"studies?StudyInstanceUID={probe.study_uid}",
        "studies?PatientID=<id>": f"studies?PatientID={probe.patient_id}",
        "studies?limit=25 (newest first)": "studies?limit=25",
        "studies/<uid>/series": f"studies/{probe.study_uid}/series?",
    }
    qido_ms: dict[str, list[float]] = {label: [] for label in queries}
    all_scans: list[str] = []
    all_plans: dict[str, list[str]] = {}
    for total in (100, 10_000):
        missing = total - RadiologyStudy.objects.count()
        while missing > 0:
            made = min(missing, 2500)
            maker.studies(made, images_per_study=2, full_metadata=False)
            missing -= made
        analyze()
        for label, query_string in queries.items():
            url = f"{pacs_base}/api/v1/radiology/dicomweb/{query_string}"
            qido_ms[label].append(
                timed(lambda url=url: session.get(url, headers={"Accept": "application/dicom+json"}, timeout=60), reps)
            )
        scans, plans = explain_qido(queries)
        all_scans += [f"[{total:,} studies] {scan}" for scan in scans]
        all_plans.update({f"{label} — {total:,} studies": plan for label, plan in plans.items()})
    qido = [
        "| PACS-lite QIDO-RS, median ms | 100 studies | 10,000 studies | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, (small, large) in qido_ms.items():
        qido.append(f"| {label} | {small:.1f} | {large:.1f} | {large / small:.2f}x |")
    return "\n".join(cost), "\n".join(qido), all_scans, all_plans


# --- Main ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30, help="timed repetitions per read (a third for the big ones)")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn workers (default 3, as docker-compose)")
    parser.add_argument(
        "--worker-class",
        default="gthread",
        help="gunicorn worker class (default gthread: keeps connections alive, as Orthanc does; sync closes each)",
    )
    parser.add_argument("--upload-mb", type=int, default=1024, help="size of the big upload in MiB (default 1024)")
    parser.add_argument("--skip-upload", action="store_true", help="skip the ~1 GB upload memory measurement")
    parser.add_argument("--output", type=Path, default=RESULTS)
    arguments = parser.parse_args()
    began = time.monotonic()

    def step(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {message}", flush=True)

    load_before = os.getloadavg()[0]
    orthanc_version = services.ensure_orthanc()
    step(f"{orthanc_version}, DicomWeb plugin {services.plugin_version()}")
    plan = [[50, 50]] * 5 + [[500]]
    studies = make_dataset(plan)
    instance_count = sum(len(s.instances) for study in studies for s in study.series)
    step(f"dataset: {len(studies)} studies, {instance_count} instances from CT_small.dcm")
    arguments.probe_study_uid = studies[0].uid

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pacs-vs-orthanc-")))
        database = stack.enter_context(services.postgres())
        env = services.pacs_env(workdir, database.url, secrets.token_urlsafe(50))
        services.manage(env, "migrate", "--noinput")
        seeded = services.manage(env, "seed_demo", "--json", "--orders", str(len(studies) + 2))
        summary = json.loads(seeded.strip().splitlines()[-1])
        order_ids = summary["radiology_orders"]
        step(f"PostgreSQL up, migrated, seeded ({len(order_ids)} orders)")
        pacs_server = stack.enter_context(
            services.gunicorn(env, workdir, workers=arguments.workers, worker_class=arguments.worker_class)
        )
        token = requests.post(
            f"{pacs_server.base}/api/v1/auth/token/",
            json={"username": summary["users"]["radtech"], "password": summary["password"]},
            timeout=30,
        ).json()["token"]
        with services.orthanc(workdir) as (orthanc_base, orthanc_pid):
            step(f"gunicorn ({arguments.workers} workers) and Orthanc up")
            pacs_session, orthanc_session = TimedSession(), TimedSession()
            pacs_session.headers["Authorization"] = f"Token {token}"
            pacs_dicomweb = f"{pacs_server.base}/api/v1/radiology/dicomweb"
            pacs = Server(
                "PACS-lite",
                DICOMwebClient(pacs_dicomweb, session=pacs_session, timeout=300),
                pacs_session,
                lambda index: f"{pacs_dicomweb}/studies?radiology_order_id={order_ids[index]}",
            )
            orthanc = Server(
                "Orthanc",
                DICOMwebClient(f"{orthanc_base}/dicom-web", session=orthanc_session, timeout=300),
                orthanc_session,
                lambda _index: f"{orthanc_base}/dicom-web/studies",
            )
            rows, notes = compare(arguments, studies, pacs, orthanc)
            step("comparison done")
            # Every worker, not only the one that later takes the upload: which one that is varies.
            worker_rss = sorted(services.status_kib(pid, "VmRSS") // 1024 for pid in pacs_server.worker_pids)
            notes.append(
                f"RSS of the {len(worker_rss)} PACS-lite gunicorn workers after the comparison: "
                f"{', '.join(f'{mib} MiB' for mib in worker_rss)} (total {sum(worker_rss)} MiB)."
            )

            memory: list[MemoryFigures] = []
            if not arguments.skip_upload:
                memory = pacs_upload_memory(
                    pacs_server.base,
                    token,
                    pacs_server.worker_pids,
                    order_ids[len(studies) :],
                    arguments.upload_mb,
                    workdir,
                )
                step("PACS-lite upload memory done")
                orthanc_memory = orthanc_upload_memory(orthanc_base, orthanc_pid, arguments.upload_mb, workdir)
                if orthanc_memory is not None:
                    memory.append(orthanc_memory)
                step("Orthanc upload memory done")
                pacs_memory = [figure for figure in memory if figure.label.startswith("PACS-lite")]
                worst = max(pacs_memory, key=lambda figure: figure.delta)
                rows.append(
                    Row(
                        f"Peak RSS above idle during a {arguments.upload_mb} MiB upload (worst PACS-lite mode)",
                        "MiB",
                        worst.delta,
                        orthanc_memory.delta if orthanc_memory else None,
                        target="< 100 MiB",
                        target_pacs_max=100,
                        show_ratio=False,  # a ratio of two differences, one near 0, says nothing
                    )
                )
                rows.append(
                    Row(
                        "Peak RSS of the serving process during that upload",
                        "MiB",
                        worst.peak_mib,
                        orthanc_memory.peak_mib if orthanc_memory else None,
                    )
                )
        # Orthanc has stopped: the growth figures are PACS-lite's alone.
        os.environ.update(env)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        cost_table, qido_table, scans, plans = growth(
            arguments, pacs_server.base, token, studies[0].series[0].instances[0][0]
        )
        step("growth done")
        from django.db import connections

        connections.close_all()

    date = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load = f"1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    header = (
        f"Run {date} on {os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, "
        f"PostgreSQL 15 (fsync=off), gunicorn {arguments.workers} {arguments.worker_class} workers; "
        f"{orthanc_version} with DicomWeb plugin {services.plugin_version()} "
        f"(SQLite index, SyncStorageArea false, other options default). "
        f"Command: `make bench` (`.venv/bin/python bench/compare_orthanc.py --reps {arguments.reps}`). "
        f"Dataset: {instance_count} instances of CT_small.dcm (128x128, 16-bit, explicit VR LE, ~39 KB) in "
        f"{len(studies)} studies; one client (dicomweb-client over requests), requests to the two servers interleaved; "
        f"each figure is the HTTP exchange (request sent to whole body received), the client's decoding excluded. "
        f"{load}; total {time.monotonic() - began:.0f} s."
    )
    ratios = "Ratios are oriented so that **>1 means PACS-lite is better** (faster, more instances/s, less memory)."
    large = [scan for scan in scans if scan.startswith("[10,000")]
    small = len(scans) - len(large)
    explain = (
        "EXPLAIN ANALYZE of every statement of these QIDO searches with 10,000 studies: "
        + ("no sequential scan of a radiology table (index scans only)" if not large else "sequential scans:\n")
        + "\n".join(f"- `{scan}`" for scan in large)
        + (
            f". With 100 studies the planner picks {small} sequential scans of tables that small "
            "(cheaper there than an index); the plans are in the results file."
            if small
            else "."
        )
    )
    report = "\n\n".join(
        [
            header,
            ratios,
            "### PACS-lite and Orthanc, same data, same run",
            comparison_table(rows),
            *(
                [
                    "Memory of the serving process (PACS-lite: the gunicorn worker that took the upload):",
                    memory_table(memory),
                ]
                if memory
                else []
            ),
            "\n".join(f"- {note}" for note in notes),
            "### How PACS-lite's cost grows",
            cost_table,
            qido_table,
            explain,
        ]
    )
    plan_text = "\n".join(f"#### {label}\n\n```\n" + "\n".join(lines) + "\n```" for label, lines in plans.items())
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(
        f"# PACS-lite vs Orthanc\n\n{report}\n\n### EXPLAIN ANALYZE of the QIDO queries\n\n{plan_text}\n"
    )
    print()
    print(report)
    print(f"\nwritten to {arguments.output} (with the EXPLAIN plans); total {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
