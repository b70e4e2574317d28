"""OHIF v3 in real headless Chromium, reading PACS-lite's DICOMweb with a study's viewer_url.

The doctor logs in through the API, asks for a study's viewer_url and opens it; OHIF sends
the token as `Authorization: Bearer` on every DICOMweb request. A valid token draws the
study's first image (checked from the viewport's pixels in a screenshot) and lists its
series; an expired, altered or other study's token draws nothing and every DICOMweb request
the viewer makes is refused. Screenshots are kept under test-artifacts/browser/.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest

from apps.radiology.models import RadiologyStudy
from apps.radiology.tests.browser.conftest import ViewerSite, token_of
from apps.radiology.tests.browser.ohif_driver import STUDY_NOT_AVAILABLE, ViewerVisit

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def with_token(viewer_url: str, token: str, *, study_uid: str | None = None) -> str:
    """`viewer_url` with its token (and optionally its study UID) replaced."""
    parts = urlsplit(viewer_url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    query["token"] = token
    if study_uid is not None:
        query["StudyInstanceUIDs"] = study_uid
    return urlunsplit(parts._replace(query=urlencode(query)))


def altered(token: str) -> str:
    """The token with one character of its signed payload changed."""
    index = len(token.split(":", 1)[0]) // 2
    replacement = "A" if token[index] != "A" else "B"
    return token[:index] + replacement + token[index + 1 :]


def assert_image_drawn(visit: ViewerVisit, *, token: str) -> None:
    """A drawn viewport, every DICOMweb request made with the token and answered, frames fetched."""
    details = visit.describe()
    assert visit.timed_out == [], details
    assert visit.viewport is not None, details
    assert visit.viewport.drawn, details
    assert visit.dicomweb, details
    assert {exchange.authorization for exchange in visit.dicomweb} == {f"Bearer {token}"}, details
    assert [exchange for exchange in visit.dicomweb if exchange.status >= 400] == [], details
    assert any(exchange.is_frame and exchange.status == 200 for exchange in visit.dicomweb), details
    assert any(exchange.path.endswith("/thumbnail") and exchange.status == 200 for exchange in visit.dicomweb), details
    # OHIF takes the token out of the address bar (and so out of history) once it has it.
    assert "token=" not in visit.address, details
    assert "StudyInstanceUIDs=" in visit.address, details


def assert_nothing_shown(visit: ViewerVisit, *, token: str, status: int) -> None:
    """No viewport at all, OHIF's "not available" page, every DICOMweb request refused with `status`."""
    details = visit.describe()
    assert visit.timed_out == [], details
    assert STUDY_NOT_AVAILABLE in visit.body_text, details
    assert visit.viewport_count == 0, details
    assert visit.viewport is None or not visit.viewport.drawn, details
    assert visit.series == [], details
    assert visit.dicomweb, details
    assert {exchange.status for exchange in visit.dicomweb} == {status}, details
    assert {exchange.authorization for exchange in visit.dicomweb} == {f"Bearer {token}"}, details
    assert not any(exchange.is_frame or exchange.path.endswith("/metadata") for exchange in visit.dicomweb), details


def test_demo_study_draws_its_image_and_lists_its_three_series(
    viewer_site: ViewerSite, demo_study: RadiologyStudy
) -> None:
    url = viewer_site.viewer_url(demo_study)
    assert url.startswith(f"{viewer_site.base_url}/viewer?StudyInstanceUIDs={demo_study.study_uid}&token=")

    visit = viewer_site.open(url, name="demo-study", expect_image=True, series_count=3)

    assert_image_drawn(visit, token=token_of(url))
    details = visit.describe()
    assert [entry.modality for entry in visit.series] == ["CT", "MR", "OT"], details
    assert visit.series[2].description == "Photo of film", details
    assert all(entry.thumbnail_loaded for entry in visit.series), details
    # Series number and image count of each entry: CT S:1 with 3 images, MR S:2 with 2, the photo S:3 with 1.
    assert [entry.text.split()[-2:] for entry in visit.series] == [["S:1", "3"], ["S:2", "2"], ["S:3", "1"]], details


def test_jpeg_only_study_draws_the_photo(viewer_site: ViewerSite, jpeg_study: RadiologyStudy) -> None:
    url = viewer_site.viewer_url(jpeg_study)

    visit = viewer_site.open(url, name="jpeg-only-study", expect_image=True, series_count=1)

    assert_image_drawn(visit, token=token_of(url))
    details = visit.describe()
    assert [(entry.modality, entry.description) for entry in visit.series] == [("OT", "Photo of film")], details
    assert visit.series[0].thumbnail_loaded, details


def test_expired_token_shows_no_image(viewer_site: ViewerSite, demo_study: RadiologyStudy) -> None:
    url = viewer_site.viewer_url(demo_study, expires_in=1)
    time.sleep(1.2)  # the token's expiry (whole seconds, at most 1 s ahead) is now in the past

    visit = viewer_site.open(url, name="expired-token", expect_image=False)

    assert_nothing_shown(visit, token=token_of(url), status=401)


def test_altered_token_shows_no_image(viewer_site: ViewerSite, demo_study: RadiologyStudy) -> None:
    url = viewer_site.viewer_url(demo_study)
    token = altered(token_of(url))
    assert token != token_of(url)

    visit = viewer_site.open(with_token(url, token), name="altered-token", expect_image=False)

    assert_nothing_shown(visit, token=token, status=401)


def test_token_of_one_study_does_not_open_another(
    viewer_site: ViewerSite, demo_study: RadiologyStudy, jpeg_study: RadiologyStudy
) -> None:
    """A valid token is scoped to its study: with another study's UID the viewer finds nothing."""
    url = viewer_site.viewer_url(demo_study)
    token = token_of(url)

    visit = viewer_site.open(
        with_token(url, token, study_uid=jpeg_study.study_uid), name="other-study", expect_image=False
    )

    details = visit.describe()
    assert visit.timed_out == [], details
    assert STUDY_NOT_AVAILABLE in visit.body_text, details
    assert visit.viewport_count == 0, details
    assert visit.dicomweb, details
    assert {exchange.authorization for exchange in visit.dicomweb} == {f"Bearer {token}"}, details
    # The token is valid, so nothing is 401; the other study simply does not exist for it.
    assert not any(exchange.is_frame or exchange.path.endswith("/metadata") for exchange in visit.dicomweb), details
    assert not any(jpeg_study.study_uid in exchange.path and exchange.status < 400 for exchange in visit.dicomweb), (
        details
    )
