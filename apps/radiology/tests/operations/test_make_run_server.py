"""`make run` serves as production does (issue 17).

The real target, started as a clinic starts it (apps/radiology/tests/operations/make_run.py):
two granian app servers behind nginx (both ports) under supervisord, DEBUG off, a secret key
generated into var/, plain HTTP. Checked here: a STOW-RS body sent with Transfer-Encoding:
chunked (as Orthanc sends it) is read to its end and stored; no answer is ever Django's debug
page; the viewer's port reaches its routes only, through nginx, recorded with the client's
address; a crashed process comes back; Ctrl-C leaves no process behind; the key file is 0600
and the next start uses the same key.
"""

from __future__ import annotations

import ast
import contextlib
import http.client
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pydicom
import pytest
import requests

from apps.radiology.dicomweb.multipart import MAX_BOUNDARY_LENGTH
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.operations.demo import relabelled_dicom
from apps.radiology.tests.app_server import REPO, children_of, free_port, own_database
from apps.radiology.tests.operations.make_run import START_SECONDS, MakeRun, command_line

BOUNDARY = "make-run-chunked"
# What Django's technical (DEBUG) pages always carry, and its plain pages never do.
DEBUG_PAGE_MARKERS = (b"DEBUG = True", b"Traceback", b"technical_500", b"Request Method:", b"settings.py")
# Django's own 404 page with DEBUG off (django.views.defaults.page_not_found).
PLAIN_404 = (
    b'\n<!doctype html>\n<html lang="en">\n<head>\n  <title>Not Found</title>\n</head>\n<body>\n'
    b"  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n</body>\n</html>\n"
)
# Django's own 400 page with DEBUG off (django.views.defaults.bad_request): a Host not served.
PLAIN_400 = (
    b'\n<!doctype html>\n<html lang="en">\n<head>\n  <title>Bad Request (400)</title>\n</head>\n<body>\n'
    b"  <h1>Bad Request (400)</h1><p></p>\n</body>\n</html>\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeRun]:
    tmp_path = tmp_path_factory.mktemp("make-run")
    with own_database(tmp_path, "make_run") as database_url:
        running = MakeRun(tmp_path / "var", database_url, tmp_path / "make-run.log")
        running.start()
        try:
            yield running
        finally:
            left = running.ctrl_c() if running.process is not None else []
            assert left == [], f"processes left after Ctrl-C: {left}\n{running.log_tail()}"


def chunked_stow(base: str, token: str, files: list[bytes], query: str = "") -> tuple[int, dict[str, Any]]:
    """POST a STOW-RS body with Transfer-Encoding: chunked (no Content-Length), one chunk per ~16 KiB."""

    def body() -> Iterator[bytes]:
        for content in files:
            yield f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            for start in range(0, len(content), 16384):
                yield content[start : start + 16384]
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        connection.request(
            "POST",
            f"/api/v1/radiology/dicomweb/studies{query}",
            body=body(),
            headers={
                "Authorization": f"Token {token}",
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                "Accept": "application/dicom+json",
            },
            encode_chunked=True,
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def order_study_files(order: dict[str, Any], count: int) -> tuple[str, str, list[bytes]]:
    """(study UID, series UID, `count` CT instances of that new study and series), labelled with the
    order's patient and accession."""
    study_uid, series_uid = generate_uid(), generate_uid()
    return (
        study_uid,
        series_uid,
        [
            relabelled_dicom(
                "CT_small.dcm",
                study_uid=study_uid,
                series_uid=series_uid,
                instance_number=number,
                patient_id=order["patient_id"],
                accession_number=order["accession"],
            )
            for number in range(1, count + 1)
        ],
    )


def test_a_chunked_stow_rs_body_is_read_to_its_end_and_stored(server: MakeRun) -> None:
    order = server.empty_orders()[0]
    study_uid, _series_uid, files = order_study_files(order, 3)
    uids = [str(pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True).SOPInstanceUID) for content in files]

    status, answer = chunked_stow(server.api, server.token(), files)

    assert status == 200, answer
    assert [item["00081155"]["Value"][0] for item in answer["00081199"]["Value"]] == uids
    # Stored: QIDO finds the three instances, and each one's bytes come back as sent.
    headers = {"Authorization": f"Token {server.token('doctor')}"}
    found = requests.get(
        f"{server.api}/api/v1/radiology/dicomweb/studies/{study_uid}/instances", headers=headers, timeout=30
    )
    assert found.status_code == 200
    assert sorted(item["00080018"]["Value"][0] for item in found.json()) == sorted(uids)
    assert order["id"] not in [remaining["id"] for remaining in server.empty_orders()]


def _assert_not_a_debug_page(response: requests.Response) -> None:
    for marker in DEBUG_PAGE_MARKERS:
        assert marker not in response.content, (marker, response.content[:500])


def test_an_unknown_page_is_django_plain_404_on_both_ports(server: MakeRun) -> None:
    for path in ("/no-such-page", "/static/no-such-file.css"):
        response = requests.get(f"{server.api}{path}", timeout=30)
        assert (response.status_code, response.content) == (404, PLAIN_404)
    # The viewer's port answers index.html for client routes; its own prefixes are 404 there.
    viewer = requests.get(f"{server.viewer}/admin/no-such-page", timeout=30)
    assert (viewer.status_code, viewer.content) == (404, PLAIN_404)


def test_an_unknown_api_path_is_json_on_both_ports(server: MakeRun) -> None:
    for base in (server.api, server.viewer):
        response = requests.get(f"{base}/api/v1/no-such-endpoint/", timeout=30)
        assert response.status_code == 404
        assert response.json() == {"detail": "Not found.", "code": "not_found"}


def test_a_host_not_served_is_a_plain_400(server: MakeRun) -> None:
    page = requests.get(f"{server.api}/admin/", headers={"Host": "evil.example"}, timeout=30)
    api = requests.get(f"{server.api}/api/v1/radiology/studies/", headers={"Host": "evil.example"}, timeout=30)

    assert (page.status_code, page.content) == (400, PLAIN_400)
    assert (api.status_code, api.json()) == (400, {"detail": "The request could not be read.", "code": "bad_request"})


def test_a_server_error_is_never_the_debug_page(server: MakeRun) -> None:
    """A real 500: the shared cache directory (the token endpoint's throttle counts) made unusable."""
    cache = server.var_dir / "cache"
    moved = server.var_dir / "cache.moved"
    cache.rename(moved)
    cache.write_text("not a directory")
    try:
        response = requests.post(
            f"{server.api}/api/v1/auth/token/", json={"username": "doctor", "password": "x"}, timeout=30
        )
    finally:
        cache.unlink()
        moved.rename(cache)

    _assert_not_a_debug_page(response)
    assert response.status_code == 500
    assert response.json() == {"detail": "The server could not answer this request.", "code": "server_error"}


def test_viewer_links_name_the_viewer_port_make_run_serves(server: MakeRun) -> None:
    headers = {"Authorization": f"Token {server.token('doctor')}"}
    studies = requests.get(f"{server.api}/api/v1/radiology/studies/", headers=headers, timeout=30).json()
    first = (studies["results"] if isinstance(studies, dict) else studies)[0]
    link = requests.get(f"{server.api}/api/v1/radiology/studies/{first['id']}/viewer-url/", headers=headers, timeout=30)

    assert link.status_code == 200
    assert link.json()["viewer_url"].startswith(f"{server.viewer}/viewer?StudyInstanceUIDs=")


def _get_from(address: str, port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """GET from a given loopback source address (127.0.0.2 is this machine too, but not 127.0.0.1)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(address, 0))
    try:
        connection.request("GET", path, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_the_viewer_port_is_nginx_passing_the_viewer_routes_only_with_the_client_address(server: MakeRun) -> None:
    """The viewer's port is nginx (config/front_proxy.py) in front of the app servers: DICOMweb
    with the study's viewer token answers there, the REST API does not, and the audit trail records
    the address nginx saw (X-Forwarded-For's last hop, taken because nginx sent the start's proxy
    key), never one a client claims, on either port."""
    headers = {"Authorization": f"Token {server.token('doctor')}"}
    studies = requests.get(f"{server.api}/api/v1/radiology/studies/", headers=headers, timeout=30).json()
    first = (studies["results"] if isinstance(studies, dict) else studies)[0]
    link = requests.get(f"{server.api}/api/v1/radiology/studies/{first['id']}/viewer-url/", headers=headers, timeout=30)
    viewer_token = parse_qs(urlsplit(link.json()["viewer_url"]).query)["token"][0]
    claimed = {"X-Forwarded-For": "203.0.113.9", "X-PACS-Proxy-Key": "a-guess"}
    dicomweb = "/api/v1/radiology/dicomweb/studies"
    as_viewer = {"Authorization": f"Bearer {viewer_token}", "Accept": "application/dicom+json", **claimed}

    found = _get_from("127.0.0.2", server.viewer_port, dicomweb, as_viewer)
    direct = _get_from("127.0.0.3", server.port, dicomweb, as_viewer)
    rest = requests.get(f"{server.viewer}/api/v1/radiology/studies/", headers={**headers, **claimed}, timeout=30)

    assert found[0] == 200, found[1]
    assert [study["0020000D"]["Value"][0] for study in json.loads(found[1])] == [first["study_uid"]]
    assert direct[0] == 200, direct[1]
    assert (rest.status_code, rest.json()) == (404, {"detail": "Not found.", "code": "not_found"})
    recorded = server.manage(
        "shell",
        "-c",
        "from apps.radiology.models import AuditEvent as E; "
        "print([(e.client_address, e.status_code) for e in E.objects.filter(channel='dicomweb', "
        "client_address__in=['127.0.0.2', '127.0.0.3', '203.0.113.9'])])",
    )
    # Each worker writes its events in groups of its own: in whichever order they land.
    assert sorted(ast.literal_eval(recorded.strip().splitlines()[-1])) == [("127.0.0.2", 200), ("127.0.0.3", 200)]

    # nginx (master and worker) killed: supervisord starts it again, and the viewer's port answers.
    nginx = server.program_master("nginx")
    os.killpg(os.getpgid(nginx), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(AssertionError, requests.RequestException):
            restarted = server.program_master("nginx") != nginx
            if restarted and requests.get(f"{server.viewer}/app-config.js", timeout=5).status_code == 200:
                break
        time.sleep(0.2)
    else:
        raise AssertionError(server.log_tail())


def _signed_image_url(server: MakeRun) -> str:
    headers = {"Authorization": f"Token {server.token('doctor')}"}
    studies = requests.get(f"{server.api}/api/v1/radiology/studies/", headers=headers, timeout=30).json()
    first = (studies["results"] if isinstance(studies, dict) else studies)[-1]
    images = requests.get(f"{server.api}/api/v1/radiology/studies/{first['id']}/images/", headers=headers, timeout=30)
    assert images.status_code == 200, images.text
    return str(images.json()["series"][0]["images"][0]["image_url"])


def test_a_second_make_run_on_the_same_ports_refuses_to_start(server: MakeRun, tmp_path: Path) -> None:
    """A second server on the same ports would fail inside supervisord's restarts, or with SO_REUSEPORT
    share their connections silently: scripts/serve.sh refuses before starting anything."""
    second = MakeRun(server.var_dir, server.env["DATABASE_URL"], tmp_path / "second.log")
    second.port, second.viewer_port = server.port, server.viewer_port
    finished = subprocess.run(  # noqa: S603 (fixed argv)
        second.command(),
        cwd=REPO,
        env=second.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_SECONDS,
        check=False,
    )
    assert finished.returncode != 0
    assert (
        f"Cannot serve on 127.0.0.1:{server.port}: Address already in use. "
        "Is PACS-lite (or another server) already running there?"
    ) in finished.stderr
    assert requests.get(f"{server.api}/healthz", timeout=10).status_code == 200


def test_a_crashed_app_server_is_restarted_and_keeps_the_key(server: MakeRun) -> None:
    """make run's app servers (PACS_WEB_WORKERS=2, make_run.py) run one worker each behind nginx: a
    worker that dies is started again by its app server, an app server that dies by supervisord,
    and meanwhile nginx hands every request to the other one."""
    signed = _signed_image_url(server)
    masters = server.program_masters("pacs-api")
    assert len(masters) == 2
    assert all(len(children_of(master)) == 1 for master in masters)
    first, other = masters
    (worker,) = children_of(first)

    # A worker killed: its app server starts another (config/app_server.py respawn_failed_workers).
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and children_of(first) in ([worker], []):
        time.sleep(0.1)
    replaced = children_of(first)
    assert len(replaced) == 1 and worker not in replaced

    # A whole app server (main process and worker) killed: the API answers at once, from the other
    # one, and supervisord starts the killed one again, on the socket it left behind.
    os.killpg(os.getpgid(first), signal.SIGKILL)
    answers = [requests.get(f"{server.api}/healthz", timeout=30).status_code for _ in range(6)]
    assert answers == [200] * 6, server.log_tail()
    deadline = time.monotonic() + 60
    restarted: list[int] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(AssertionError):
            restarted = server.program_masters("pacs-api")
        if len(restarted) == 2 and first not in restarted:
            break
        time.sleep(0.1)
    assert len(restarted) == 2 and first not in restarted and other in restarted, server.log_tail()
    server.wait_until_answering()
    (new,) = (master for master in restarted if master != other)
    assert command_line(new).strip() == "pacs-api"
    # A link signed before the crash still opens: the new processes read the same key.
    assert requests.get(signed, timeout=30).status_code == 200


def test_ctrl_c_stops_everything_and_the_next_start_uses_the_same_key(tmp_path: Path) -> None:
    with own_database(tmp_path, "make_run_key") as database_url:
        first = MakeRun(tmp_path / "var", database_url, tmp_path / "first.log")
        first.start()
        try:
            key_file = tmp_path / "var" / "secret_key"
            key = key_file.read_text()
            signed = _signed_image_url(first)
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
            assert len(key.strip()) >= 50
        finally:
            left = first.ctrl_c()
        assert left == [], first.log_tail()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{first.api}/healthz", timeout=5)

        # The same ports again: the signed link names them.
        second = MakeRun(tmp_path / "var", database_url, tmp_path / "second.log")
        second.port, second.viewer_port = first.port, first.viewer_port
        second.api, second.viewer = first.api, first.viewer
        second.start()
        try:
            assert key_file.read_text() == key
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
            assert requests.get(signed, timeout=30).status_code == 200
        finally:
            left = second.ctrl_c()
        assert left == [], second.log_tail()


# --- Orthanc pushes a study by STOW-RS, chunked as it does by default --------------------------------

ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@pytest.fixture
def orthanc(server: MakeRun, tmp_path: Path) -> Iterator[str]:
    """Debian's Orthanc on 127.0.0.1 with its DICOMweb plugin and one peer: this server, by token.

    Its own config, storage and index in tmp_path; no DICOM port. `make test` installs it
    (scripts/system_packages.sh); without it (a developer without root) the test is skipped.
    """
    if not (shutil.which("Orthanc") and ORTHANC_PLUGIN.exists()):
        pytest.skip("Orthanc is not installed: run scripts/system_packages.sh as root")
    port = free_port()
    config = {
        "Name": "pacs-lite-test",
        "StorageDirectory": str(tmp_path / "orthanc-storage"),
        "IndexDirectory": str(tmp_path / "orthanc-index"),
        "HttpPort": port,
        # Orthanc 1.10 has no bind address: it listens everywhere but refuses anyone not on this machine.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "Plugins": [str(ORTHANC_PLUGIN)],
        # No "ChunkedTransfers" key: Orthanc's default (chunked) is what is tested.
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "Servers": {
                "pacs": {
                    "Url": f"{server.api}/api/v1/radiology/dicomweb/",
                    "HttpHeaders": {"Authorization": f"Token {server.token()}"},
                }
            },
        },
    }
    config_path = tmp_path / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log_path = tmp_path / "orthanc.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(  # noqa: S603 (fixed argv)
            [str(shutil.which("Orthanc")), str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/system", timeout=2).ok:
                    break
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# The boundary Orthanc's DICOMweb plugin (1.7, Debian 12) writes: two UUIDs joined, 73 characters,
# over RFC 2046's 70; apps/radiology/dicomweb/multipart.py takes up to MAX_BOUNDARY_LENGTH.
ORTHANC_BOUNDARY = "30eaa967-a96e-4e90-a695-3221f8fa2e55-30eaa967-a96e-4e90-a695-3221f8fa2e55"


def test_orthanc_pushes_a_study_by_stow_rs_and_it_is_stored(server: MakeRun, orthanc: str) -> None:
    assert len(ORTHANC_BOUNDARY) <= MAX_BOUNDARY_LENGTH  # what Orthanc sends is within what PACS-lite takes
    order = server.empty_orders()[0]
    study_uid, series_uid, files = order_study_files(order, 2)
    uids = [str(pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True).SOPInstanceUID) for content in files]
    in_orthanc = [requests.post(f"{orthanc}/instances", data=content, timeout=30).json() for content in files]
    orthanc_study = in_orthanc[0]["ParentStudy"]

    pushed = requests.post(
        f"{orthanc}/dicom-web/servers/pacs/stow", json={"Resources": [orthanc_study], "Synchronous": True}, timeout=120
    )

    # Orthanc answers its own user 200 only when PACS-lite answered 200 (all stored): 202 or 409 is its 500.
    assert pushed.status_code == 200, pushed.text
    headers = {"Authorization": f"Token {server.token('doctor')}"}
    found = requests.get(
        f"{server.api}/api/v1/radiology/dicomweb/studies/{study_uid}/instances", headers=headers, timeout=30
    )
    assert found.status_code == 200
    assert sorted(item["00080018"]["Value"][0] for item in found.json()) == sorted(uids)
    assert order["id"] not in [remaining["id"] for remaining in server.empty_orders()]
    # Every byte as Orthanc holds it.
    for content, uid in zip(files, uids, strict=True):
        stored = requests.get(
            f"{server.api}/api/v1/radiology/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{uid}",
            headers={**headers, "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            timeout=30,
        )
        assert stored.status_code == 200
        assert content in stored.content
