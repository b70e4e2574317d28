"""config/viewer_origin.py: which requests are the viewer's origin, routed with config.viewer_urls.

nginx on the viewer's origin (`make run`'s config/front_proxy.py, compose's deploy/nginx.conf)
marks what it passes on with X-PACS-Viewer-Origin: 1; that mark alone picks the viewer's routes,
never the port a request arrived on. The REST API is the API port's only: behind the mark it is
404. The real nginx in front of `make run` is driven by operations/test_make_run_server.py.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AbstractBaseUser

from apps.radiology.tests.api_fixtures import token_client

pytestmark = pytest.mark.django_db
STUDIES = "/api/v1/radiology/studies/"


def test_a_request_the_viewer_proxy_marks_gets_the_viewer_routes_only(doctor: AbstractBaseUser) -> None:
    client = token_client(doctor)

    unmarked = client.get(STUDIES, SERVER_PORT="8000")
    marked = client.get(STUDIES, SERVER_PORT="8000", HTTP_X_PACS_VIEWER_ORIGIN="1")

    assert (unmarked.status_code, unmarked.json()) == (200, [])
    assert (marked.status_code, marked.json()) == (404, {"detail": "Not found.", "code": "not_found"})


@pytest.mark.parametrize("mark", ["", "0", "yes", "true"])
def test_only_the_mark_1_makes_a_viewer_request_whatever_the_port(doctor: AbstractBaseUser, mark: str) -> None:
    client = token_client(doctor)

    assert client.get(STUDIES, SERVER_PORT="3000", HTTP_X_PACS_VIEWER_ORIGIN=mark).status_code == 200
    assert client.get(STUDIES, SERVER_PORT="3000").status_code == 200
