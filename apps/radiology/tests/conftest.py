"""Fixtures of the radiology tests: role users, orders with their own patient, an ingest helper.

Role users follow apps.radiology.access.permissions: `doctor` (Doctor group), `radtech` (Radiology
Tech group), `nurse` (no group: no access to radiology) and `superuser`. Every one has the
password PASSWORD. `make_order()` builds a fresh patient, visit and order each call, so
tests never share a study by accident.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Group

from apps.emr.models import Patient, Visit
from apps.radiology.access.permissions import DOCTOR_GROUP, RADIOLOGY_TECH_GROUP
from apps.radiology.models import Modality, RadiologyOrder
from apps.radiology.operations.demo import sample_path
from apps.radiology.pacs_lite_service import DeclaredImage, IngestResult, PACSLiteService
from apps.radiology.tests.live_server_requests import wait_for_live_server_requests, watch_live_server

PASSWORD = "pw-test-123"

_numbers = itertools.count(1)


@pytest.fixture(autouse=True)
def _live_server_done_before_flush(request: pytest.FixtureRequest) -> Iterator[None]:
    """A live-server test's requests all end before its database is flushed.

    The database fixture is taken first, so this fixture's teardown runs before the flush
    (and after the test's own fixtures, which close their clients).
    """
    if "live_server" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("transactional_db")
    watch_live_server(request.getfixturevalue("live_server"))
    yield
    wait_for_live_server_requests()


def make_user(username: str, *, groups: tuple[str, ...] = (), superuser: bool = False) -> Any:
    """A user with PASSWORD in the given groups (created if missing)."""
    user = get_user_model().objects.create_user(
        username=username,
        password=PASSWORD,
        is_staff=superuser,
        is_superuser=superuser,
    )
    for name in groups:
        group, _created = Group.objects.get_or_create(name=name)
        user.groups.add(group)
    return user


@pytest.fixture
def doctor(db: None) -> Any:
    return make_user("doctor-alice", groups=(DOCTOR_GROUP,))


@pytest.fixture
def radtech(db: None) -> Any:
    return make_user("radtech-bob", groups=(RADIOLOGY_TECH_GROUP,))


@pytest.fixture
def nurse(db: None) -> Any:
    """Should have no access to radiology: in no group."""
    return make_user("nurse-charlie")


@pytest.fixture
def superuser(db: None) -> Any:
    return make_user("admin-dana", superuser=True)


class MakeOrder(Protocol):
    def __call__(
        self,
        *,
        modality: str = ...,
        exam_requested: str = ...,
        ordering_doctor: AbstractBaseUser | None = ...,
        first_name: str = ...,
        last_name: str = ...,
    ) -> RadiologyOrder: ...


@pytest.fixture
def make_order(db: None) -> MakeOrder:
    """Factory: a new RadiologyOrder with its own Patient and Visit, no study yet."""

    def _make(
        *,
        modality: str = Modality.CT,
        exam_requested: str = "CT Head without contrast",
        ordering_doctor: AbstractBaseUser | None = None,
        first_name: str = "Ngozi",
        last_name: str = "Balogun",
    ) -> RadiologyOrder:
        number = next(_numbers)
        patient = Patient.objects.create(
            hospital_number=f"TEST-{number:05d}",
            first_name=first_name,
            last_name=last_name,
            sex=Patient.Sex.FEMALE,
        )
        visit = Visit.objects.create(patient=patient, visit_date="2026-01-15", reason="Test visit")
        return RadiologyOrder.objects.create(
            visit=visit, modality=modality, exam_requested=exam_requested, ordering_doctor=ordering_doctor
        )

    return _make


@pytest.fixture
def order(make_order: MakeOrder) -> RadiologyOrder:
    return make_order()


IngestFile = Callable[..., IngestResult]


@pytest.fixture
def ingest_file(db: None) -> IngestFile:
    """Helper: ingest a pydicom sample name, a Path or raw bytes into `order`.

    `ingest_file(order, "CT_small.dcm")` reads pydicom's bundled sample; an absolute path is
    read from disk; bytes are sent as they are. The filename defaults to the sample's or "upload.bin".
    """

    def _ingest(
        order: RadiologyOrder,
        path_or_bytes: str | Path | bytes,
        filename: str | None = None,
        declared: DeclaredImage | None = None,
        user: AbstractBaseUser | None = None,
    ) -> IngestResult:
        if isinstance(path_or_bytes, bytes):
            content = path_or_bytes
            default_name = "upload.bin"
        else:
            path = Path(path_or_bytes)
            if not path.is_absolute():
                path = sample_path(str(path_or_bytes))
            content = path.read_bytes()
            default_name = path.name
        return PACSLiteService.ingest_image(
            order=order,
            stream=io.BytesIO(content),
            filename=filename or default_name,
            uploaded_by=user,
            declared=declared,
        )

    return _ingest
