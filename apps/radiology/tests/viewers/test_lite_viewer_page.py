"""The built-in lightweight viewer's page and its download endpoint, through Django's test client.

The page (GET /api/v1/radiology/viewer/?StudyInstanceUIDs=..&token=..) is the viewer link
itself: no-store, no referrer, a CSP whose nonce is the inline script's, the study as a
json_script config (series in number order, instances in instance-number order, a series
without a number last, CT presets only for CT, the header's window), gzip when asked, and
the refusal page (403) for any token that does not grant exactly this study. The download
endpoint turns the viewer token into a signed URL of one original file of the study. The
admin study page links to the viewer through a fresh token; the renders the page asks for
carry an ETag and revalidate to 304. Browser behaviour is in browser/test_lite_viewer.py.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import caches
from django.http import HttpResponse
from django.template.loader import render_to_string
from django.test import Client

from apps.radiology.access.principals import ViewerTokenPrincipal
from apps.radiology.access.signing import ViewerGrant, issue_viewer_token, verify_viewer_token
from apps.radiology.dicomweb import pixels
from apps.radiology.imagefiles.uids import generate_uid
from apps.radiology.models import RadiologyImage, RadiologyOrder, RadiologyStudy, ViewerToken
from apps.radiology.operations.demo import jpeg_with_exif, relabelled_dicom
from apps.radiology.pacs_lite_service import DeclaredImage, PACSLiteService
from apps.radiology.tests.api_fixtures import freeze_signing_time
from apps.radiology.tests.browser.lite_driver import ct_slice
from apps.radiology.tests.conftest import MakeOrder
from apps.radiology.tests.factories import relabelled
from apps.radiology.viewers.lite_viewer import viewer_context

pytestmark = pytest.mark.django_db

API = "/api/v1/radiology"
VIEWER = f"{API}/viewer/"
DOWNLOAD = f"{API}/viewer/image-url/"
REFUSED = "This viewer link is not valid"
CT_PRESETS = [
    {"name": "Lung", "center": -600, "width": 1500},
    {"name": "Bone", "center": 300, "width": 1500},
    {"name": "Soft tissue", "center": 40, "width": 400},
    {"name": "Brain", "center": 40, "width": 80},
]
NONCE = re.compile(r'<script nonce="([^"]+)">')
CONFIG = re.compile(r'<script id="viewer-config" type="application/json">(.*?)</script>', re.S)


@dataclass(frozen=True)
class ViewerStudy:
    """A study as ingested: its images by series in display order, and the bytes of each."""

    study: RadiologyStudy
    ct: list[RadiologyImage]
    mr: list[RadiologyImage]
    photo: RadiologyImage
    content: dict[str, bytes]


def build_study(order: RadiologyOrder) -> ViewerStudy:
    """MR (series 2) stored first, CT (series 1) slices in the order 3, 1, 2, then a photo with no series number."""
    patient = order.visit.patient
    study_uid, ct_series, mr_series = generate_uid(), generate_uid(), generate_uid()
    names = {"patient_name": patient.dicom_name, "patient_id": patient.hospital_number}
    content: dict[str, bytes] = {}

    def ingest(data: bytes, filename: str, declared: DeclaredImage | None = None) -> None:
        result = PACSLiteService.ingest_image(
            order=order, stream=io.BytesIO(data), filename=filename, uploaded_by=None, declared=declared
        )
        content[result.image.image_uid] = data

    for number in (2, 1):
        ingest(
            relabelled_dicom(
                "MR_small.dcm",
                study_uid=study_uid,
                series_uid=mr_series,
                instance_number=number,
                series_number=2,
                **names,
            ),
            f"mr_{number}.dcm",
        )
    for number in (3, 1, 2):
        ingest(ct_slice(number=number, study_uid=study_uid, series_uid=ct_series, **names), f"ct_{number}.dcm")
    ingest(
        jpeg_with_exif(width=320, height=240),
        "film.jpg",
        DeclaredImage(study_uid=study_uid, series_description="Photo of film", modality="OT"),
    )

    def images(series_uid: str) -> list[RadiologyImage]:
        return list(RadiologyImage.objects.filter(series__series_uid=series_uid).order_by("instance_number"))

    study = RadiologyStudy.objects.get(study_uid=study_uid)
    photo = RadiologyImage.objects.get(series__study=study, mime_type="image/jpeg")
    return ViewerStudy(study, images(ct_series), images(mr_series), photo, content)


@pytest.fixture
def viewer_study(make_order: MakeOrder) -> ViewerStudy:
    return build_study(make_order(modality="CT", exam_requested="CT Head without contrast"))


@pytest.fixture
def other_study(make_order: MakeOrder) -> ViewerStudy:
    return build_study(make_order(modality="CT", first_name="Other", last_name="Patient"))


@pytest.fixture
def builtin_viewer(settings: Any) -> None:
    """OHIF off: viewer URLs point at the built-in page."""
    settings.OHIF_VIEWER_URL = ""
    settings.PACS_PUBLIC_URL = ""


def token_for(study: RadiologyStudy, user: AbstractBaseUser | None = None, expires_in: int | None = None) -> str:
    return issue_viewer_token(study=study, user=user, expires_in=expires_in)


def open_page(study: RadiologyStudy, token: str, **headers: str) -> HttpResponse:
    return Client().get(VIEWER, {"StudyInstanceUIDs": study.study_uid, "token": token}, headers=headers)


def config_of(response: HttpResponse) -> dict[str, Any]:
    body = gzip.decompress(response.content) if response.get("Content-Encoding") == "gzip" else response.content
    match = CONFIG.search(body.decode())
    assert match is not None, body[:500]
    return dict(json.loads(match.group(1)))


def bearer(token: str) -> Client:
    return Client(headers={"Authorization": f"Bearer {token}"})


# --- the page ---------------------------------------------------------------------------------


def test_page_headers_no_store_no_referrer_and_a_csp_whose_nonce_is_the_scripts(viewer_study: ViewerStudy) -> None:
    response = open_page(viewer_study.study, token_for(viewer_study.study))

    assert response.status_code == 200
    body = response.content.decode()
    nonces = NONCE.findall(body)
    assert len(nonces) == 1 and len(nonces[0]) >= 16
    assert body.count("<script") == 2  # the JSON config (not executed) and the one nonce'd script
    assert response["Content-Type"] == "text/html; charset=utf-8"
    assert response["Cache-Control"] == "no-store"
    assert response["Referrer-Policy"] == "no-referrer"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"] == (
        f"default-src 'none'; script-src 'nonce-{nonces[0]}'; style-src 'unsafe-inline'; "
        "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    assert '<meta name="referrer" content="no-referrer">' in body
    # A fresh nonce for every response.
    again = open_page(viewer_study.study, token_for(viewer_study.study))
    assert NONCE.findall(again.content.decode()) != nonces


def test_config_has_the_study_header_and_series_in_order_with_ct_presets_and_header_windows(
    viewer_study: ViewerStudy,
) -> None:
    study = viewer_study.study
    ct_series, mr_series, photo_series = (
        viewer_study.ct[0].series,
        viewer_study.mr[0].series,
        viewer_study.photo.series,
    )

    config = config_of(open_page(study, token_for(study)))

    assert config == {
        "study": {
            "uid": study.study_uid,
            "description": study.study_description,
            "date": study.study_date.isoformat() if study.study_date else "",
            "modality": study.modality,
            "patient_name": study.patient_name,
            "patient_id": study.patient_id,
        },
        "series": [
            {
                "uid": ct_series.series_uid,
                "number": 1,
                "description": ct_series.series_description,
                "modality": "CT",
                "dicom": True,
                "window": [40.0, 400.0],
                "overlays": False,
                "presets": CT_PRESETS,
                "instances": [[image.image_uid, 1] for image in viewer_study.ct],
            },
            {
                "uid": mr_series.series_uid,
                "number": 2,
                "description": mr_series.series_description,
                "modality": "MR",
                "dicom": True,
                "window": [600.0, 1600.0],
                "overlays": False,
                "presets": [],
                "instances": [[image.image_uid, 1] for image in viewer_study.mr],
            },
            {
                "uid": photo_series.series_uid,
                "number": photo_series.series_number,
                "description": "Photo of film",
                "modality": "OT",
                "dicom": False,
                "window": None,
                "overlays": False,
                "presets": [],
                "instances": [[viewer_study.photo.image_uid, 1]],
            },
        ],
        "dicomweb": "http://testserver/api/v1/radiology/dicomweb",
        "download": "http://testserver/api/v1/radiology/viewer/image-url/",
        "maxRenderSide": 2048,
    }
    assert [image.instance_number for image in viewer_study.ct] == [1, 2, 3]
    assert study.patient_id == viewer_study.ct[0].series.study.radiology_order.visit.patient.hospital_number


def test_a_series_without_a_number_comes_last_on_every_database(make_order: MakeOrder) -> None:
    """SQLite sorts NULL first and PostgreSQL last; the viewer must open on the numbered series either way."""
    order = make_order()
    study_uid, unnumbered, numbered = generate_uid(), generate_uid(), generate_uid()
    for series_uid, series_number in ((unnumbered, None), (numbered, 7)):
        content = relabelled("CT_small.dcm", study_uid=study_uid, series_uid=series_uid, SeriesNumber=series_number)
        PACSLiteService.ingest_image(order=order, stream=io.BytesIO(content), filename="ct.dcm", uploaded_by=None)
    study = RadiologyStudy.objects.get(study_uid=study_uid)

    series = config_of(open_page(study, token_for(study)))["series"]

    assert [(row["uid"], row["number"]) for row in series] == [(numbered, 7), (unnumbered, None)]


def test_viewer_context_reads_the_study_in_three_queries(
    viewer_study: ViewerStudy, django_assert_num_queries: Any
) -> None:
    study = viewer_study.study
    principal = ViewerTokenPrincipal(ViewerGrant(token_id=uuid.uuid4(), study_id=study.pk, study_uid=study.study_uid))
    with django_assert_num_queries(3):
        context = viewer_context(study, principal)
    assert [len(series["instances"]) for series in context["series"]] == [3, 2, 1]


def test_page_is_gzipped_when_the_browser_accepts_it(viewer_study: ViewerStudy) -> None:
    token = token_for(viewer_study.study)

    plain = open_page(viewer_study.study, token)
    zipped = open_page(viewer_study.study, token, accept_encoding="gzip, deflate, br")

    assert "Content-Encoding" not in plain
    assert zipped["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in zipped["Vary"]
    assert len(zipped.content) < len(plain.content) / 2
    unzipped = gzip.decompress(zipped.content).decode()
    assert unzipped.startswith("<!doctype html>")
    assert config_of(zipped) == config_of(plain)
    assert zipped["Cache-Control"] == "no-store"


def _expired(study: RadiologyStudy, monkeypatch: pytest.MonkeyPatch) -> str:
    move_to = freeze_signing_time(monkeypatch, now=1_800_000_000)
    token = token_for(study, expires_in=60)
    move_to(1_800_000_000 + 61)
    return token


def _revoked(study: RadiologyStudy, monkeypatch: pytest.MonkeyPatch) -> str:
    token = token_for(study)
    PACSLiteService.revoke_viewer_token(token_id=verify_viewer_token(token).token_id)
    return token


def _altered(study: RadiologyStudy, monkeypatch: pytest.MonkeyPatch) -> str:
    token = token_for(study)
    index = len(token.split(":", 1)[0]) // 2
    return token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda study, monkeypatch: "", id="missing"),
        pytest.param(lambda study, monkeypatch: "not-a-token", id="garbage"),
        pytest.param(_altered, id="altered"),
        pytest.param(_expired, id="expired"),
        pytest.param(_revoked, id="revoked"),
    ],
)
def test_a_token_that_is_not_valid_gets_the_refusal_page(
    viewer_study: ViewerStudy, monkeypatch: pytest.MonkeyPatch, make_token: Any
) -> None:
    token = make_token(viewer_study.study, monkeypatch)

    response = open_page(viewer_study.study, token)

    assert_refused(response, viewer_study)


def test_a_valid_token_for_another_study_gets_the_refusal_page(
    viewer_study: ViewerStudy, other_study: ViewerStudy
) -> None:
    token = token_for(viewer_study.study)

    response = open_page(other_study.study, token)

    assert_refused(response, other_study)
    assert_refused(response, viewer_study)


def assert_refused(response: HttpResponse, study: ViewerStudy) -> None:
    body = response.content.decode()
    assert response.status_code == 403
    assert body == render_to_string("radiology/lite_viewer_refused.html")
    assert REFUSED in body and 'id="refused"' in body
    assert response["Cache-Control"] == "no-store"
    assert response["Referrer-Policy"] == "no-referrer"
    for secret in (study.study.study_uid, study.study.patient_id, study.ct[0].image_uid):
        assert secret not in body


def test_the_page_only_answers_get_and_head(viewer_study: ViewerStudy) -> None:
    token = token_for(viewer_study.study)
    query = f"?StudyInstanceUIDs={viewer_study.study.study_uid}&token={token}"

    assert Client().post(VIEWER + query).status_code == 405
    head = Client().head(VIEWER + query)
    assert head.status_code == 200 and head.content == b""


# --- the download endpoint --------------------------------------------------------------------


@pytest.mark.parametrize("which", ["ct", "photo"])
def test_download_gives_a_signed_url_that_serves_the_exact_original(viewer_study: ViewerStudy, which: str) -> None:
    image = viewer_study.ct[0] if which == "ct" else viewer_study.photo
    token = token_for(viewer_study.study)

    response = bearer(token).get(DOWNLOAD, {"image": image.image_uid})

    assert response.status_code == 200
    assert list(response.json()) == ["image_url"]
    url = urlsplit(response.json()["image_url"])
    assert (url.scheme, url.netloc) == ("http", "testserver")
    assert url.path == f"{API}/files/{image.pk}/{image.file_key.rsplit('/', 1)[-1]}"
    assert set(parse_qs(url.query)) == {"expires", "token"}
    original = Client().get(f"{url.path}?{url.query}")
    assert original.status_code == 200
    assert original["Content-Type"] == image.mime_type
    assert b"".join(original.streaming_content) == viewer_study.content[image.image_uid]  # type: ignore[attr-defined]


def test_download_of_another_studys_image_is_404(viewer_study: ViewerStudy, other_study: ViewerStudy) -> None:
    token = token_for(viewer_study.study)

    for uid in (other_study.ct[0].image_uid, "1.2.3.4", ""):
        response = bearer(token).get(DOWNLOAD, {"image": uid})
        assert response.status_code == 404
        assert response.json() == {"detail": "No such instance.", "code": "instance_not_found"}


def test_download_without_a_valid_token_is_401(viewer_study: ViewerStudy, monkeypatch: pytest.MonkeyPatch) -> None:
    uid = viewer_study.ct[0].image_uid

    missing = Client().get(DOWNLOAD, {"image": uid})
    expired = bearer(_expired(viewer_study.study, monkeypatch)).get(DOWNLOAD, {"image": uid})

    assert missing.status_code == 401
    assert missing.json() == {"detail": "Authentication credentials were not provided.", "code": "not_authenticated"}
    assert missing["WWW-Authenticate"] == 'Bearer realm="pacs-lite dicomweb"'
    assert expired.status_code == 401
    assert expired.json() == {"detail": "The viewer token is invalid, expired or revoked.", "code": "invalid_token"}


# --- admin --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("builtin_viewer")
def test_admin_study_page_shows_thumbnails_and_opens_the_viewer_with_a_token_for_that_study(
    viewer_study: ViewerStudy, superuser: AbstractBaseUser
) -> None:
    study = viewer_study.study
    client = Client()
    client.force_login(superuser)

    page = client.get(f"/admin/radiology/radiologystudy/{study.pk}/change/")

    assert page.status_code == 200
    html = page.content.decode()
    thumbnails = re.findall(r'<img src="([^"]+/thumbnail\?viewport=96,96)"', html)
    series = [viewer_study.ct[0].series, viewer_study.mr[0].series, viewer_study.photo.series]
    # (Admin lists a series without a number first on SQLite and last on PostgreSQL.)
    assert sorted(thumbnails) == sorted(
        f"{API}/dicomweb/studies/{study.study_uid}/series/{row.series_uid}/thumbnail?viewport=96,96" for row in series
    )
    for thumbnail in thumbnails:  # they load with the admin's own session
        image = client.get(thumbnail)
        assert image.status_code == 200 and image["Content-Type"] == "image/jpeg"
    link = f"/admin/radiology/radiologystudy/{study.pk}/viewer/"
    assert f'<a class="button" href="{link}">Open in viewer</a>' in html

    redirect = client.get(link)

    assert redirect.status_code == 302
    location = redirect["Location"]
    assert location.startswith(f"http://testserver{VIEWER}?StudyInstanceUIDs={study.study_uid}&token=")
    token = parse_qs(urlsplit(location).query)["token"][0]
    grant = verify_viewer_token(token)
    assert (grant.study_id, grant.study_uid) == (study.pk, study.study_uid)
    assert ViewerToken.objects.get(pk=grant.token_id).issued_to == superuser
    viewer = Client().get(location.removeprefix("http://testserver"))
    assert viewer.status_code == 200
    assert config_of(viewer)["study"]["uid"] == study.study_uid


@pytest.mark.usefixtures("builtin_viewer")
def test_admin_viewer_link_needs_an_admin_login(viewer_study: ViewerStudy, doctor: AbstractBaseUser) -> None:
    client = Client()
    client.force_login(doctor)  # a doctor, but not staff

    response = client.get(f"/admin/radiology/radiologystudy/{viewer_study.study.pk}/viewer/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert ViewerToken.objects.count() == 0


@pytest.mark.usefixtures("builtin_viewer")
def test_doctors_viewer_url_is_the_built_in_viewer(viewer_study: ViewerStudy, doctor: AbstractBaseUser) -> None:
    client = Client()
    client.force_login(doctor)

    response = client.get(f"{API}/studies/{viewer_study.study.pk}/viewer-url/")

    assert response.status_code == 200
    url = response.json()["viewer_url"]
    assert url.startswith(f"http://testserver{VIEWER}?StudyInstanceUIDs={viewer_study.study.study_uid}&token=")
    assert Client().get(url.removeprefix("http://testserver")).status_code == 200


# --- the renders the page asks for --------------------------------------------------------------


def test_rendered_has_an_etag_private_caching_and_revalidates_to_304(
    viewer_study: ViewerStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    caches["renders"].clear()
    image = viewer_study.ct[0]
    url = (
        f"{API}/dicomweb/studies/{viewer_study.study.study_uid}/series/{image.series.series_uid}"
        f"/instances/{image.image_uid}/rendered"
    )
    client = bearer(token_for(viewer_study.study))
    params = {"viewport": "600,400", "quality": "80"}
    renders: list[int] = []
    real_render = pixels.render
    monkeypatch.setattr(pixels, "render", lambda *args, **kwargs: renders.append(1) or real_render(*args, **kwargs))

    first = client.get(url, params)
    second = client.get(url, params)
    revalidated = client.get(url, params, headers={"If-None-Match": f'"other", {first["ETag"]}'})
    weakened = client.get(url, params, headers={"If-None-Match": f"W/{first['ETag']}"})
    windowed = client.get(url, {**params, "window": "-600,1500"}, headers={"If-None-Match": first["ETag"]})

    assert first.status_code == 200 and first["Content-Type"] == "image/jpeg"
    assert re.fullmatch(r'"r-[0-9a-f]{40}"', first["ETag"])
    assert first["Cache-Control"] == "private, max-age=86400"
    assert (second.status_code, second["ETag"], second.content) == (200, first["ETag"], first.content)
    assert revalidated.status_code == 304 and revalidated.content == b""
    assert revalidated["ETag"] == first["ETag"]
    assert revalidated["Cache-Control"] == "private, max-age=86400"
    assert weakened.status_code == 304  # If-None-Match compares weakly (RFC 9110 13.1.2)
    assert windowed.status_code == 200 and windowed["ETag"] != first["ETag"]
    assert len(renders) == 2  # the first request and the windowed one; the rest came from the cache
