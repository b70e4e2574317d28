"""Every HTML page loads only same-origin code, and the viewer's port serves only the viewer (issue 14 item 10).

Pages: the API docs (Swagger UI, from the pinned drf-spectacular-sidecar package), the admin
login and index, the lite viewer, and on the viewer's port (config.viewer_urls) the OHIF
index (the installed dist, as `make viewer` leaves it) and the lite viewer again. In each, every
script, stylesheet, icon, image and frame source is relative or on this origin, no inline script
or style names another origin, and the same-origin scripts and stylesheets are really served.
"""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.test import Client

from apps.radiology.access import signing
from apps.radiology.models import RadiologyImage
from apps.radiology.tests.conftest import IngestFile, MakeOrder

pytestmark = pytest.mark.django_db

VIEWER_URLCONF = "config.viewer_urls"
HOST = "testserver"
_URL_IN_CODE = re.compile(r"(?i)(?:https?:)?//([a-z0-9.-]+\.[a-z]{2,}|localhost|\d+\.\d+\.\d+\.\d+)(?::\d+)?/")
SOURCE_ATTRIBUTES = {"script": "src", "link": "href", "img": "src", "iframe": "src", "source": "src", "embed": "src"}


class Sources(HTMLParser):
    """The sources a browser would load from a page, and the text of its inline scripts and styles."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[tuple[str, str]] = []
        self.inline: list[str] = []
        self._in_code = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        wanted = SOURCE_ATTRIBUTES.get(tag)
        if wanted and values.get(wanted):
            self.sources.append((tag, values[wanted] or ""))
        self._in_code = tag in ("script", "style") and not values.get("src")

    def handle_endtag(self, tag: str) -> None:
        self._in_code = False

    def handle_data(self, data: str) -> None:
        if self._in_code:
            self.inline.append(data)


def _third_party(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob"):
        return False
    return (bool(parts.netloc) and parts.netloc != HOST) or parts.scheme not in ("", "http", "https")


def assert_same_origin_page(client: Client, path: str, **headers: Any) -> Sources:
    response = client.get(path, headers=headers)
    assert response.status_code == 200, (path, response.status_code)
    assert response["Content-Type"].startswith("text/html"), response["Content-Type"]
    body = b"".join(response.streaming_content) if response.streaming else response.content  # type: ignore[attr-defined]
    page = Sources()
    page.feed(body.decode("utf-8"))
    assert page.sources, f"{path}: no script or style at all?"
    assert [src for _tag, src in page.sources if _third_party(src)] == [], path
    hosts = {host for code in page.inline for host in _URL_IN_CODE.findall(code)}
    assert hosts <= {HOST}, (path, hosts)
    for tag, src in page.sources:
        if tag == "script" or (tag == "link" and src.endswith(".css")):
            served = client.get(urlsplit(src).path)
            assert served.status_code == 200, (path, src, served.status_code)
            if served.streaming:  # read to its end: the test client then closes the file
                b"".join(served.streaming_content)  # type: ignore[attr-defined]
    return page


@pytest.fixture
def study_image(make_order: MakeOrder, ingest_file: IngestFile, radtech: Any) -> RadiologyImage:
    return ingest_file(make_order(), "CT_small.dcm", user=radtech).image


def _lite_viewer_path(image: RadiologyImage, user: Any) -> str:
    url = signing.lite_viewer_url(study=image.series.study, user=user, expires_in=600, base_url=f"http://{HOST}")
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_api_docs_load_swagger_ui_from_the_pinned_package(client: Client) -> None:
    page = assert_same_origin_page(client, "/api/v1/docs/")
    scripts = [src for tag, src in page.sources if tag == "script"]
    assert scripts == [
        "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js",
        "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-standalone-preset.js",
    ]
    assert "validatorUrl" in "".join(page.inline)  # no badge from validator.swagger.io


def test_admin_pages_load_only_same_origin_code(client: Client, superuser: Any, study_image: RadiologyImage) -> None:
    assert_same_origin_page(client, "/admin/login/")
    client.force_login(superuser)
    for path in (
        "/admin/",
        "/admin/radiology/radiologystudy/",
        f"/admin/radiology/radiologystudy/{study_image.series.study_id}/change/",
        "/admin/radiology/radiologyimage/",
        f"/admin/radiology/radiologyimage/{study_image.pk}/change/",
    ):
        assert_same_origin_page(client, path)


def test_the_lite_viewers_refusal_page_loads_only_same_origin_code(client: Client) -> None:
    response = client.get("/api/v1/radiology/viewer/?token=not-a-token")
    assert response.status_code == 403
    page = Sources()
    page.feed(response.content.decode("utf-8"))
    assert [src for _tag, src in page.sources if _third_party(src)] == []
    assert {host for code in page.inline for host in _URL_IN_CODE.findall(code)} == set()


def test_lite_viewer_loads_only_same_origin_code(client: Client, study_image: RadiologyImage, doctor: Any) -> None:
    page = Sources()
    response = client.get(_lite_viewer_path(study_image, doctor))
    assert response.status_code == 200
    page.feed(response.content.decode("utf-8"))
    # The page is self-contained: a data: icon, inline code under a nonce, nothing fetched at load.
    assert page.sources == [("link", "data:,")]
    assert {host for code in page.inline for host in _URL_IN_CODE.findall(code)} == set()


@pytest.fixture
def viewer_port(settings: Any) -> Path:
    """The viewer's origin: config.viewer_urls, with the OHIF dist `make viewer` installed."""
    settings.ROOT_URLCONF = VIEWER_URLCONF
    dist = Path(django_settings.OHIF_DIST_DIR)
    if not (dist / "index.html").is_file():
        pytest.fail(f"OHIF is not installed in {dist}: run `make viewer` (`make test` does it first).")
    return dist


def test_ohif_index_on_the_viewer_port_loads_only_same_origin_code(viewer_port: Path, client: Client) -> None:
    for path in ("/", "/viewer?StudyInstanceUIDs=1.2.3"):
        page = assert_same_origin_page(client, path)
        assert ("script", "/app-config.js") in page.sources


def test_lite_viewer_on_the_viewer_port_loads_only_same_origin_code(
    viewer_port: Path, client: Client, study_image: RadiologyImage, doctor: Any
) -> None:
    response = client.get(_lite_viewer_path(study_image, doctor))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/html; charset=utf-8"


DJANGO_NOT_FOUND_PAGE = (
    b'\n<!doctype html>\n<html lang="en">\n<head>\n  <title>Not Found</title>\n</head>\n<body>\n'
    b"  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n</body>\n</html>\n"
)


@pytest.fixture
def small_dist(settings: Any, tmp_path: Path) -> Path:
    """A dist of two files on the viewer's port, beside a file no request may reach."""
    settings.ROOT_URLCONF = VIEWER_URLCONF
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_bytes(b"<!doctype html><title>OHIF</title>")
    (dist / "assets" / "app.css").write_bytes(b"body{}")
    (tmp_path / "secret.txt").write_bytes(b"not part of the viewer")
    (tmp_path / "dist-sibling").mkdir()
    (tmp_path / "dist-sibling" / "index.html").write_bytes(b"not part of the viewer either")
    settings.OHIF_DIST_DIR = dist
    return dist


def _body(response: Any) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.mark.parametrize(
    "path",
    [
        "/..",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/assets/../../secret.txt",
        "/../dist-sibling/index.html",
        "/../%00",
        "/../" + "a" * 5000,
    ],
)
def test_a_path_that_climbs_out_of_the_dist_is_djangos_404_page(small_dist: Path, client: Client, path: str) -> None:
    response = client.get(path)

    assert (response.status_code, response["Content-Type"], _body(response)) == (
        404,
        "text/html; charset=utf-8",
        DJANGO_NOT_FOUND_PAGE,
    )


@pytest.mark.parametrize(
    ("path", "served", "cache_control"),
    [
        ("/assets/app.css", b"body{}", "public, max-age=86400"),
        ("/assets/./app.css", b"body{}", "public, max-age=86400"),
        ("/viewer/../assets/app.css", b"body{}", "public, max-age=86400"),
        ("/../dist/assets/app.css", b"body{}", "public, max-age=86400"),
        ("/viewer", b"<!doctype html><title>OHIF</title>", "no-cache"),
        ("/assets/..", b"<!doctype html><title>OHIF</title>", "no-cache"),
        ("/%00", b"<!doctype html><title>OHIF</title>", "no-cache"),
        ("/" + "a" * 5000, b"<!doctype html><title>OHIF</title>", "no-cache"),
    ],
)
def test_a_path_that_stays_in_the_dist_is_its_file_or_index_html(
    small_dist: Path, client: Client, path: str, served: bytes, cache_control: str
) -> None:
    response = client.get(path)

    assert (response.status_code, _body(response), response["Cache-Control"]) == (200, served, cache_control)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/radiology/studies/"),
        ("get", "/api/v1/radiology/studies/1/"),
        ("get", "/api/v1/radiology/studies/1/images/"),
        ("get", "/api/v1/radiology/studies/1/viewer-url/"),
        ("get", "/api/v1/radiology/images/1/url/"),
        ("get", "/api/v1/radiology/uploads/"),
        ("post", "/api/v1/radiology/uploads/"),
        ("post", "/api/v1/auth/token/"),
        ("get", "/api/v1/schema/"),
        ("get", "/api/v1/docs/"),
        ("get", "/admin/"),
        ("get", "/admin/login/"),
        ("post", "/admin/login/"),
        ("get", "/admin/radiology/radiologyimage/"),
        ("get", "/healthz"),
        ("get", "/api/"),
        ("get", "/api/v1/radiology/"),
    ],
)
def test_the_viewer_port_serves_nothing_but_the_viewer(
    viewer_port: Path, client: Client, superuser: Any, study_image: RadiologyImage, method: str, path: str
) -> None:
    client.force_login(superuser)  # even a superuser's session reaches nothing here
    response = getattr(client, method)(path)
    assert response.status_code == 404, (path, response.status_code)


def test_the_viewer_port_serves_what_the_viewers_call(
    viewer_port: Path, client: Client, study_image: RadiologyImage, doctor: Any
) -> None:
    study = study_image.series.study
    config = client.get("/app-config.js")
    assert (config.status_code, config["Content-Type"]) == (200, "text/javascript; charset=utf-8")
    # OHIF's token (Bearer) on DICOMweb.
    token = signing.issue_viewer_token(study=study, user=doctor, expires_in=600)
    bearer = {"Authorization": f"Bearer {token}"}
    found = client.get("/api/v1/radiology/dicomweb/studies", headers={**bearer, "Accept": "application/dicom+json"})
    assert found.status_code == 200
    assert [item["0020000D"]["Value"][0] for item in found.json()] == [study.study_uid]
    # The lite viewer page, its download endpoint, and the signed file URL that endpoint hands out.
    assert client.get(_lite_viewer_path(study_image, doctor)).status_code == 200
    download = client.get(f"/api/v1/radiology/viewer/image-url/?image={study_image.image_uid}", headers=bearer)
    assert download.status_code == 200
    image_url = urlsplit(download.json()["image_url"])
    assert image_url.netloc == HOST
    served = client.get(f"{image_url.path}?{image_url.query}")
    assert served.status_code == 200
    content = b"".join(served.streaming_content)  # type: ignore[attr-defined]
    assert (len(content), hashlib.sha256(content).hexdigest()) == (study_image.file_size, study_image.checksum)


# --- docker compose: nginx is the viewer's origin and proxies to the one app server ------------

VIEWER_ORIGIN = {"X-PACS-Viewer-Origin": "1"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/radiology/studies/"),
        ("get", "/api/v1/radiology/images/{image_id}/url/"),
        ("post", "/api/v1/auth/token/"),
        ("get", "/api/v1/schema/"),
        ("get", "/api/v1/docs/"),
        ("get", "/admin/"),
        ("get", "/admin/login/"),
    ],
)
def test_requests_nginx_marks_as_the_viewers_reach_nothing_but_the_viewer(
    client: Client, superuser: Any, study_image: RadiologyImage, method: str, path: str
) -> None:
    path = path.format(image_id=study_image.pk)
    client.force_login(superuser)
    assert getattr(client, method)(path).status_code != 404  # the API port itself: routed
    response = getattr(client, method)(path, headers=VIEWER_ORIGIN)
    assert response.status_code == 404, (path, response.status_code)
    if path.startswith("/api/"):
        assert response.json() == {"detail": "Not found.", "code": "not_found"}


def test_requests_nginx_marks_as_the_viewers_reach_what_the_viewers_call(
    client: Client, study_image: RadiologyImage, doctor: Any
) -> None:
    token = signing.issue_viewer_token(study=study_image.series.study, user=doctor, expires_in=600)
    marked = {**VIEWER_ORIGIN, "Authorization": f"Bearer {token}"}
    found = client.get("/api/v1/radiology/dicomweb/studies", headers={**marked, "Accept": "application/dicom+json"})
    assert found.status_code == 200
    assert client.get(_lite_viewer_path(study_image, doctor), headers=VIEWER_ORIGIN).status_code == 200
    download = client.get(f"/api/v1/radiology/viewer/image-url/?image={study_image.image_uid}", headers=marked)
    assert download.status_code == 200
    image_url = urlsplit(download.json()["image_url"])
    served = client.get(f"{image_url.path}?{image_url.query}", headers=VIEWER_ORIGIN)
    assert served.status_code == 200
    b"".join(served.streaming_content)  # type: ignore[attr-defined]


def test_nginx_marks_every_request_it_proxies_as_the_viewers() -> None:
    conf = re.sub(r"#[^\n]*", "", (Path(__file__).resolve().parents[4] / "deploy" / "nginx.conf").read_text())
    proxied = [body for body in re.findall(r"location\s+[^{]*\{([^{}]*)\}", conf) if "proxy_pass" in body]
    assert len(proxied) == 3
    for body in proxied:
        assert re.search(r"proxy_set_header\s+X-PACS-Viewer-Origin\s+1;", body), body
