"""The forwarder process (forwarding/forwarder.py, manage.py run_forwarder): claims, concurrency, verification, stop.

Pushes run in threads with their own database connections, hence the transactional database.
The far side is this app in a live-server thread for a whole delivery, and far_side_stub.py where a
test needs a check that leaves an image out, a link down at verification, or a signal on cue.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.test.testcases import LiveServerThread, _StaticFilesHandler
from django.utils import timezone

from apps.radiology.forwarding import forwarder as forwarder_module
from apps.radiology.forwarding.client import FORWARD_NAMESPACE
from apps.radiology.forwarding.forwarder import Forwarder
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.management.commands import run_forwarder as run_forwarder_command
from apps.radiology.models import ForwardTask, RadiologyImage, RadiologyUpload
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.forwarding.far_side_stub import FarSideStub, far_side_stub
from apps.radiology.tests.forwarding.forwarder_helpers import (
    CHUNK,
    STUB_TOKEN,
    clinic_account,
    delivery_row,
    forward_to,
    ingest,
    native_ct,
    task_of,
    task_row,
)
from apps.radiology.tests.live_server_requests import wait_for_live_server_requests, watch_live_server

pytestmark = pytest.mark.django_db(transaction=True)

NO_TOKEN = (
    "Forwarding destination 'regional' has no token: set RADIOLOGY_FORWARD_TOKEN_REGIONAL (or its _FILE twin) "
    "to the API token of this server's forwarding-clinic account on the far side."
)


def run_forwarder(*args: str) -> list[str]:
    out = io.StringIO()
    call_command("run_forwarder", *args, stdout=out)
    return out.getvalue().splitlines()


def study_of_cts(order_factory: MakeOrder, count: int, *, side: int = 160) -> list[RadiologyImage]:
    order = order_factory()
    study_uid, series_uid = generate_uid(), generate_uid()
    return [
        ingest(order, native_ct(study_uid=study_uid, series_uid=series_uid, instance_number=n, side=side), f"{n}.dcm")
        for n in range(1, count + 1)
    ]


def upload_id_of(image: RadiologyImage, resends: int = 0) -> str:
    return str(uuid.uuid5(FORWARD_NAMESPACE, f"{image.image_uid}/{image.checksum}/{resends}"))


@pytest.fixture
def stub(settings: Any) -> Any:
    with far_side_stub(STUB_TOKEN) as far_side:
        forward_to(settings, far_side.url, STUB_TOKEN)
        yield far_side


class FarSideServer:
    """This app served by Django's live-server thread, each request on a database connection of its own."""

    def __init__(self) -> None:
        # No connections_override: pytest-django's live_server hands its request threads the test
        # thread's own connection to in-memory SQLite, and the forwarder's loop (on the test
        # thread) then ran statements on it while a request had a savepoint open ("cannot release
        # savepoint - SQL statements in progress"; one push refused for good). On their own
        # connections to the shared in-memory database, a clash is a "table is locked" error: a
        # 500, retried like any transient failure.
        self.thread = LiveServerThread("127.0.0.1", _StaticFilesHandler, connections_override={})
        self.thread.daemon = True
        self.thread.start()
        self.thread.is_ready.wait()
        if self.thread.error:
            raise self.thread.error
        self.url = f"http://127.0.0.1:{self.thread.port}"


@pytest.fixture
def far_side_server(transactional_db: None, settings: Any) -> Iterator[FarSideServer]:
    """A FarSideServer whose requests all end before the test's database is flushed."""
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "127.0.0.1"]
    server = FarSideServer()
    watch_live_server(server)
    try:
        yield server
        wait_for_live_server_requests()
    finally:
        server.thread.terminate()


def test_a_destination_without_its_token_is_refused_at_start(settings: Any) -> None:
    settings.RADIOLOGY_FORWARD_DESTINATIONS = "regional=all@https://pacs.regional.example.org"
    settings.RADIOLOGY_FORWARD_TOKENS = {"regional": ""}

    with pytest.raises(ImproperlyConfigured) as refused:
        Forwarder()
    assert str(refused.value) == NO_TOKEN
    with pytest.raises(CommandError) as refused_command:
        run_forwarder("--once")
    assert str(refused_command.value) == NO_TOKEN


def test_with_no_destination_it_says_so_and_idles(settings: Any) -> None:
    settings.RADIOLOGY_FORWARD_DESTINATIONS = ""
    settings.RADIOLOGY_FORWARD_TOKENS = {}

    assert run_forwarder("--once") == [
        "Forwarder: no destination configured (RADIOLOGY_FORWARD_DESTINATIONS); idle",
        "Forwarder stopped",
    ]


def test_once_delivers_a_study_to_the_real_far_side_and_exits(
    far_side_server: FarSideServer, settings: Any, make_order: MakeOrder
) -> None:
    token = clinic_account()
    forward_to(settings, far_side_server.url, token)
    # The far side's requests and the pushes share the in-memory SQLite test database across
    # threads, where a write can meet "database table is locked" (no busy wait in shared-cache
    # mode): the far side answers 500 and the push is retried, at once here.
    settings.RADIOLOGY_FORWARD_BACKOFF_SECONDS = 0
    images = study_of_cts(make_order, 3)

    lines = run_forwarder("--once")

    assert lines == [
        f"Forwarder to regional ({far_side_server.url}, all): 4 in flight, compression zstd",
        "Forwarder stopped",
    ]
    assert token not in "".join(lines)
    uploads = {upload.image_id: upload for upload in RadiologyUpload.objects.all()}
    assert sorted(uploads) == sorted(image.pk for image in images)
    for image in images:
        row = task_row(task_of(image))
        assert (row["state"], row["remote_upload_id"], row["resends"]) == ("sent", uploads[image.pk].pk, 0)
        assert str(uploads[image.pk].client_upload_id) == upload_id_of(image)
        assert uploads[image.pk].status == "completed"
    assert delivery_row(images[0]) == {
        "state": "delivered",
        "images_total": 3,
        "images_sent": 3,
        "error_code": "",
        "error_detail": "",
    }


def test_an_image_the_far_side_does_not_confirm_is_sent_again_as_a_new_upload(
    stub: FarSideStub, make_order: MakeOrder
) -> None:
    first, second = study_of_cts(make_order, 2)
    stub.omit_once = {second.image_uid}

    run_forwarder("--once")

    assert sorted(stub.posts()) == ["/api/v1/radiology/uploads/"] * 3
    assert sorted(upload.metadata["client_upload_id"] for upload in stub.uploads.values()) == sorted(
        [upload_id_of(first), upload_id_of(second), upload_id_of(second, resends=1)]
    )
    assert [path for method, path in stub.requests if method == "GET"] == [
        f"/api/v1/radiology/forwarded/{first.series.study.study_uid}/"
    ] * 2
    assert {key: task_row(task_of(first))[key] for key in ("state", "resends", "error_code")} == {
        "state": "sent",
        "resends": 0,
        "error_code": "",
    }
    # The last error stays on the row after the success that followed it.
    assert {key: task_row(task_of(second))[key] for key in ("state", "resends", "error_code")} == {
        "state": "sent",
        "resends": 1,
        "error_code": "not_confirmed",
    }
    assert delivery_row(first) == {
        "state": "delivered",
        "images_total": 2,
        "images_sent": 2,
        "error_code": "",
        "error_detail": "",
    }


def test_a_link_down_at_verification_leaves_the_study_sending_until_the_next_round(
    stub: FarSideStub, make_order: MakeOrder
) -> None:
    (image,) = study_of_cts(make_order, 1)
    stub.answer("GET", 1, 503, {"detail": "Down.", "code": "storage_unavailable"})

    assert run_forwarder("--once")[-1] == "Forwarder stopped"

    assert [method for method, _path in stub.requests] == ["POST", "PUT", "GET"]
    assert task_row(task_of(image))["state"] == "sent"
    assert delivery_row(image) == {
        "state": "sending",
        "images_total": 1,
        "images_sent": 1,
        "error_code": "",
        "error_detail": "",
    }


def test_at_most_n_images_are_in_flight(stub: FarSideStub, make_order: MakeOrder, settings: Any) -> None:
    settings.RADIOLOGY_FORWARD_IN_FLIGHT = 2
    images = study_of_cts(make_order, 5)
    stub.on_put = lambda: time.sleep(0.2)  # each chunk takes a while: pushes overlap

    run_forwarder("--once")

    assert stub.most_active == 2
    assert [task_row(task_of(image))["state"] for image in images] == ["sent"] * 5
    assert delivery_row(images[0])["state"] == "delivered"


def test_a_fault_in_the_push_is_recorded_and_retried_later(
    stub: FarSideStub, make_order: MakeOrder, monkeypatch: pytest.MonkeyPatch
) -> None:
    (image,) = study_of_cts(make_order, 1)

    def broken(*_args: Any, **_kwargs: Any) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(forwarder_module, "push_task", broken)

    run_forwarder("--once")

    row = ForwardTask.objects.get(image=image)
    assert (row.state, row.attempts, row.error_code, row.lease_until) == ("pending", 1, "forwarder_fault", None)
    assert row.next_attempt_at > timezone.now()
    assert stub.requests == []


def test_sigterm_stops_claiming_and_gives_the_image_in_flight_back(
    stub: FarSideStub, make_order: MakeOrder, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.RADIOLOGY_FORWARD_COMPRESSION = "none"
    image = ingest(make_order(), native_ct(study_uid=generate_uid(), series_uid=generate_uid()), "ct.dcm")
    stopped = threading.Event()
    stop = Forwarder.stop

    def stop_and_tell(self: Forwarder) -> None:
        stop(self)
        stopped.set()

    monkeypatch.setattr(Forwarder, "stop", stop_and_tell)

    def terminate_on_first_chunk() -> None:
        if not stopped.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
            assert stopped.wait(10)  # the first chunk is answered only once the forwarder is stopping

    stub.on_put = terminate_on_first_chunk
    handler_before = signal.getsignal(signal.SIGTERM)

    lines = run_forwarder()  # no --once: only the signal ends it

    assert lines[-1] == "Forwarder stopped"
    assert signal.getsignal(signal.SIGTERM) == handler_before
    assert [received.size for received in stub.received] == [CHUNK]
    row = ForwardTask.objects.get(image=image)
    assert (row.state, row.attempts, row.remote_upload_id, row.error_code) == ("pending", 0, 1, "")
    assert row.lease_until is not None and row.lease_until <= timezone.now()


def test_with_no_destination_the_service_idles_as_a_bare_interpreter_and_stops_on_sigterm(tmp_path: Any) -> None:
    """As supervisord and docker-compose run it: the Django process gives way to a few-MiB one."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "RADIOLOGY_FORWARD_DESTINATIONS": "",
        "PACS_VAR_DIR": str(tmp_path),
    }
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run_forwarder", "--skip-checks"],
        cwd=settings_module_root(),
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert (
            process.stdout.readline() == "Forwarder: no destination configured (RADIOLOGY_FORWARD_DESTINATIONS); idle\n"
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "-c" not in _cmdline(process.pid):
            time.sleep(0.05)
        assert _cmdline(process.pid) == [sys.executable, "-I", "-S", "-c", run_forwarder_command.IDLE_PROGRAM]
        assert _rss_kib(process.pid) < 20 * 1024  # a Django process with the app loaded is ~60 MiB
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return handle.read().decode().split("\0")[:-1]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))


def settings_module_root() -> str:
    """The repository root, where manage.py is."""
    return str(Path(__file__).resolve().parents[4])
