"""Signed image URLs fetched over real HTTP, on the filesystem store and on S3 (moto server).

Each test runs a live Django server (pytest-django's `live_server`, a thread of this
process) and talks to it with `requests` or raw `http.client`, with no cookie and no
Authorization header: the URL's own signature is the only credential. On S3 the app
answers 302 to a presigned URL on the moto server; `requests` follows it, so the final
response is the store's, and `response.history[0]` is the app's redirect.

The signing clock is moved by replacing apps.radiology.access.signing.time (see
api_fixtures.freeze_signing_time); the live server thread sees the same module.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.conf import settings

from apps.radiology import storage
from apps.radiology.models import RadiologyImage, RadiologyOrder
from apps.radiology.operations.demo import jpeg_with_exif, sample_path
from apps.radiology.pacs_lite_service import DeclaredImage, PACSLiteService
from apps.radiology.tests.api_fixtures import INVALID_SIGNATURE, freeze_signing_time
from apps.radiology.tests.conftest import PASSWORD

TIMEOUT = 10


@dataclass(frozen=True)
class Stored:
    """An image ingested from real bytes, and those bytes."""

    image: RadiologyImage
    content: bytes


@dataclass(frozen=True)
class Pacs:
    """The live server, the store it uses, a doctor's API token and two stored images."""

    base_url: str
    store: str
    token: str
    dicom: Stored
    jpeg: Stored

    def signed_url(self, image: RadiologyImage, expires_in: int | None = None) -> str:
        """Ask the API, over HTTP, for the image's signed URL."""
        response = requests.get(
            f"{self.base_url}/api/v1/radiology/images/{image.pk}/url/",
            params={} if expires_in is None else {"expires_in": expires_in},
            headers={"Authorization": f"Token {self.token}"},
            timeout=TIMEOUT,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["image_url"])


@pytest.fixture
def pacs(radiology_store: str, live_server: Any, doctor: Any, order: RadiologyOrder, settings: Any) -> Pacs:
    settings.PACS_PUBLIC_URL = ""
    dicom_bytes = sample_path("CT_small.dcm").read_bytes()
    dicom = PACSLiteService.ingest_image(
        order=order, stream=io.BytesIO(dicom_bytes), filename="CT_small.dcm", uploaded_by=doctor
    ).image
    jpeg_bytes = jpeg_with_exif()
    jpeg = PACSLiteService.ingest_image(
        order=order,
        stream=io.BytesIO(jpeg_bytes),
        filename="film photo.jpg",
        uploaded_by=doctor,
        declared=DeclaredImage(study_uid=dicom.series.study.study_uid, series_number=2),
    ).image
    login = requests.post(
        f"{live_server.url}/api/v1/auth/token/",
        json={"username": doctor.username, "password": PASSWORD},
        timeout=TIMEOUT,
    )
    assert login.status_code == 200
    return Pacs(
        base_url=live_server.url,
        store=radiology_store,
        token=login.json()["token"],
        dicom=Stored(dicom, dicom_bytes),
        jpeg=Stored(jpeg, jpeg_bytes),
    )


def fetch(url: str, **kwargs: Any) -> requests.Response:
    """GET with a fresh session: no cookie, no Authorization header."""
    with requests.Session() as session:
        response = session.get(url, timeout=TIMEOUT, **kwargs)
    assert "Authorization" not in response.request.headers
    assert "Cookie" not in response.request.headers
    return response


def assert_private_no_store(response: requests.Response) -> None:
    directives = {part.strip() for part in response.headers["Cache-Control"].split(",")}
    assert {"private", "no-store"} <= directives


def assert_app_redirect_to_store(response: requests.Response, pacs: Pacs) -> None:
    """On S3 the app answered one 302 to a short-lived presigned URL; on the filesystem, no redirect."""
    if pacs.store == "filesystem":
        assert response.history == []
        assert response.url.startswith(pacs.base_url)
        return
    assert [hop.status_code for hop in response.history] == [302]
    redirect = response.history[0]
    assert_private_no_store(redirect)
    assert redirect.headers["Referrer-Policy"] == "no-referrer"
    location = redirect.headers["Location"]
    assert not location.startswith(pacs.base_url)
    query = parse_qs(urlsplit(location).query)
    assert query["X-Amz-Expires"] == [str(settings.RADIOLOGY_PRESIGNED_REDIRECT_SECONDS)]
    assert response.url == location


# --- Serving the bytes -------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "mime_type"), [("dicom", "application/dicom"), ("jpeg", "image/jpeg")])
def test_signed_url_serves_exactly_the_stored_bytes(pacs: Pacs, kind: str, mime_type: str) -> None:
    stored: Stored = getattr(pacs, kind)
    url = pacs.signed_url(stored.image)

    response = fetch(url)

    assert url.startswith(f"{pacs.base_url}/api/v1/radiology/files/{stored.image.pk}/")
    assert response.status_code == 200
    assert_app_redirect_to_store(response, pacs)
    assert hashlib.sha256(response.content).hexdigest() == stored.image.checksum
    assert response.content == stored.content
    assert response.headers["Content-Type"] == mime_type
    assert stored.image.mime_type == mime_type
    assert response.headers["Content-Length"] == str(len(stored.content))
    filename = stored.image.file_key.rsplit("/", 1)[-1]
    assert response.headers["Content-Disposition"] == f'inline; filename="{filename}"'
    assert_private_no_store(response)


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [("bytes=0-99", 0, 99), ("bytes=100-", 100, None), ("bytes=-50", -50, None), ("bytes=10-10", 10, 10)],
)
def test_a_range_request_answers_206_with_that_slice(
    pacs: Pacs, range_header: str, start: int, end: int | None
) -> None:
    """On S3 the redirect target (moto) answers the Range itself, the same way."""
    content = pacs.dicom.content
    size = len(content)
    first = start if start >= 0 else size + start
    last = size - 1 if end is None else end

    response = fetch(pacs.signed_url(pacs.dicom.image), headers={"Range": range_header})

    assert response.status_code == 206
    assert_app_redirect_to_store(response, pacs)
    assert response.content == content[first : last + 1]
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
    assert response.headers["Content-Length"] == str(last - first + 1)
    assert response.headers["Content-Type"] == "application/dicom"
    assert_private_no_store(response)


def test_an_unsatisfiable_range_is_416(pacs: Pacs) -> None:
    size = len(pacs.dicom.content)

    response = fetch(pacs.signed_url(pacs.dicom.image), headers={"Range": f"bytes={size}-"})

    assert response.status_code == 416
    assert_app_redirect_to_store(response, pacs)
    if pacs.store == "filesystem":
        assert response.headers["Content-Range"] == f"bytes */{size}"
        assert response.json() == {"detail": "The requested range is not satisfiable.", "code": "range_not_satisfiable"}
    else:
        assert b"<Code>InvalidRange</Code>" in response.content


def test_several_ranges_are_answered_with_the_whole_file(pacs: Pacs) -> None:
    response = fetch(pacs.signed_url(pacs.dicom.image), headers={"Range": "bytes=0-1,5-6"})

    assert response.status_code == 200
    assert response.content == pacs.dicom.content


def test_head_answers_without_a_body(pacs: Pacs) -> None:
    with requests.Session() as session:
        response = session.head(pacs.signed_url(pacs.jpeg.image), timeout=TIMEOUT)

    assert response.content == b""
    assert_private_no_store(response)
    if pacs.store == "filesystem":
        assert response.status_code == 200
        assert response.headers["Content-Length"] == str(len(pacs.jpeg.content))
        assert response.headers["Content-Type"] == "image/jpeg"
    else:  # requests does not follow redirects on HEAD
        assert response.status_code == 302
        assert not response.headers["Location"].startswith(pacs.base_url)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_the_signed_url_is_read_only(pacs: Pacs, method: str) -> None:
    """Writes never reach the view: Django's CSRF check refuses them first (403), and the
    view itself only answers GET and HEAD (405, tested with the CSRF check off below)."""
    url = pacs.signed_url(pacs.dicom.image)

    response = requests.request(method, url, data=b"other bytes", timeout=TIMEOUT, allow_redirects=False)

    assert response.status_code == 403
    assert b"CSRF verification failed" in response.content
    assert fetch(url).content == pacs.dicom.content


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_the_file_view_answers_only_get_and_head(client: Any, pacs: Pacs, method: str) -> None:
    url = pacs.signed_url(pacs.dicom.image)

    response = client.generic(method, url.removeprefix(pacs.base_url), b"other bytes")

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


def test_a_missing_stored_file(pacs: Pacs) -> None:
    """The row stays, the object is gone.

    Filesystem: the app says so (404 file_missing). S3: the app does not look before it
    redirects (one round trip less per image), so the store answers; moto answers a
    missing key behind a presigned URL with 403 SignatureDoesNotMatch (real S3: 403
    AccessDenied, or 404 NoSuchKey with ListBucket). Either way no bytes.
    """
    storage.delete_object(pacs.dicom.image.file_key)

    response = fetch(pacs.signed_url(pacs.dicom.image))

    assert_app_redirect_to_store(response, pacs)
    if pacs.store == "filesystem":
        assert response.status_code == 404
        assert response.json() == {"detail": "The stored file is missing.", "code": "file_missing"}
    else:
        assert response.status_code == 403
        assert b"<Code>SignatureDoesNotMatch</Code>" in response.content


# --- Refusals ----------------------------------------------------------------------------


def assert_refused(response: requests.Response, pacs: Pacs) -> None:
    """403 invalid_signature from the app itself: no redirect to the store, nothing cached."""
    assert response.status_code == 403
    assert response.history == []
    assert response.url.startswith(pacs.base_url)
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == INVALID_SIGNATURE
    assert_private_no_store(response)


def test_an_expired_url_is_refused(pacs: Pacs, monkeypatch: pytest.MonkeyPatch) -> None:
    url = pacs.signed_url(pacs.dicom.image, expires_in=1)
    expires_at = int(parse_qs(urlsplit(url).query)["expires"][0])
    move_clock = freeze_signing_time(monkeypatch, expires_at)

    at_expiry = fetch(url)
    move_clock(expires_at + 1)
    after_expiry = fetch(url)

    assert at_expiry.status_code == 200
    assert at_expiry.content == pacs.dicom.content
    assert_refused(after_expiry, pacs)


def test_an_url_made_already_expired_is_refused(pacs: Pacs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated while the signing clock is an hour behind: expired the moment it is used."""
    real_now = time.time()
    move_clock = freeze_signing_time(monkeypatch, real_now - 3600)
    url = pacs.signed_url(pacs.jpeg.image, expires_in=60)
    move_clock(real_now)

    assert_refused(fetch(url), pacs)


def test_image_a_url_with_image_b_id_is_refused(pacs: Pacs) -> None:
    url_a = pacs.signed_url(pacs.dicom.image)
    a_id, b_id = pacs.dicom.image.pk, pacs.jpeg.image.pk
    swapped = url_a.replace(f"/files/{a_id}/", f"/files/{b_id}/")

    response = fetch(swapped)

    assert swapped != url_a
    assert_refused(response, pacs)
    assert fetch(pacs.signed_url(pacs.jpeg.image)).content == pacs.jpeg.content


def test_the_query_of_one_image_does_not_open_another(pacs: Pacs) -> None:
    url_a, url_b = pacs.signed_url(pacs.dicom.image), pacs.signed_url(pacs.jpeg.image)
    mixed = url_b.split("?")[0] + "?" + url_a.split("?")[1]

    assert_refused(fetch(mixed), pacs)


@pytest.mark.parametrize(
    "query",
    ["", "?expires=", "?token=", "?expires=abc&token=abc", "?expires=99999999999&token="],
    ids=["no-query", "empty-expires", "empty-token", "garbage", "far-future-no-token"],
)
def test_an_url_without_a_valid_signature_is_refused(pacs: Pacs, query: str) -> None:
    path = pacs.signed_url(pacs.dicom.image).split("?")[0]

    assert_refused(fetch(path + query), pacs)


def test_an_unknown_image_id_gets_the_same_refusal(pacs: Pacs) -> None:
    """Ids are not enumerable: an id with no row answers like a bad signature."""
    url = pacs.signed_url(pacs.dicom.image)
    unknown = url.replace(f"/files/{pacs.dicom.image.pk}/", "/files/999999/")

    assert_refused(fetch(unknown), pacs)


def _replacements(character: str) -> list[str]:
    """Two other URL-safe characters for one position: one of the same kind, one not."""
    if character.isdigit():
        return [str((int(character) + 1) % 10), "x"]
    if character.islower():
        return [chr((ord(character) - ord("a") + 1) % 26 + ord("a")), "5"]
    if character.isupper():
        return [chr((ord(character) - ord("A") + 1) % 26 + ord("A")), "5"]
    return ["-" if character == "_" else "_", "x"]


def _raw_get(base_url: str, target: str) -> tuple[int, dict[str, str], bytes]:
    """Send exactly `target` as the request-target (requests would normalise it)."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname or "localhost", parts.port, timeout=TIMEOUT)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_changing_any_single_character_of_the_url_never_serves_an_image(pacs: Pacs) -> None:
    """Every position of path and query, two replacements each.

    Expected, by position (the path is /api/v1/radiology/files/<int:image_id>/<str:filename>):
    - the fixed prefix, and the slash after the id: 404, because no route matches any more;
    - an id digit replaced by a digit: 403, the route matches, another (or no) image, bad signature;
    - an id digit replaced by a letter: 404, the <int:> converter no longer matches;
    - the filename, the `?` (the query then becomes part of the filename) and every
      character of the query: 403, the signature covers them all.
    Never 200/206 and never a redirect to the store (on S3 that would hand out a presigned URL).
    """
    url = pacs.signed_url(pacs.dicom.image)
    target = url[len(pacs.base_url) :]
    prefix = "/api/v1/radiology/files/"
    id_text = str(pacs.dicom.image.pk)
    id_end = len(prefix) + len(id_text)
    stored_contents = {pacs.dicom.content, pacs.jpeg.content}
    assert target.startswith(prefix + id_text + "/")

    assert _raw_get(pacs.base_url, target)[0] in (200, 302)  # the untouched URL works
    outcomes: dict[str, int] = {}
    for position, character in enumerate(target):
        for replacement in _replacements(character):
            mutated = target[:position] + replacement + target[position + 1 :]
            status, headers, body = _raw_get(pacs.base_url, mutated)
            if position < len(prefix) or position == id_end:
                expected = 404
            elif position < id_end:
                expected = 403 if replacement.isdigit() else 404
            else:
                expected = 403
            assert status == expected, (position, character, replacement, status, body[:200])
            assert body not in stored_contents
            assert "Location" not in headers
            if status == 403:
                assert headers["Content-Type"] == "application/json"
                assert body == b'{"detail": "This image link is invalid or has expired.", "code": "invalid_signature"}'
            outcomes[f"{position}:{replacement}"] = status
    assert len(outcomes) == 2 * len(target)
    assert set(outcomes.values()) == {403, 404}
