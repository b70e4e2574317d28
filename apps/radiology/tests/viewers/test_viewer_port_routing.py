"""config/viewer_origin.py: which requests are the viewer's origin, routed with config.viewer_urls.

Under `make run` one gunicorn listens on both ports; the port a request arrived on (WSGI
SERVER_PORT, from the listening socket) picks its routes. The REST API is the API port's only:
on the viewer's port it is 404, as under docker compose behind nginx's marked proxy.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.test import override_settings

from apps.radiology.tests.api_fixtures import token_client

pytestmark = pytest.mark.django_db
STUDIES = "/api/v1/radiology/studies/"


@override_settings(PACS_VIEWER_LISTEN_PORT="3999")
def test_a_request_that_arrived_on_the_viewer_port_gets_the_viewer_routes_only(doctor: AbstractBaseUser) -> None:
    client = token_client(doctor)

    on_api_port = client.get(STUDIES, SERVER_PORT="8000")
    on_viewer_port = client.get(STUDIES, SERVER_PORT="3999")

    assert (on_api_port.status_code, on_api_port.json()) == (200, [])
    assert on_viewer_port.status_code == 404


@override_settings(PACS_VIEWER_LISTEN_PORT=None)
def test_with_no_viewer_port_only_the_proxys_mark_makes_a_viewer_request(doctor: AbstractBaseUser) -> None:
    client = token_client(doctor)

    assert client.get(STUDIES, SERVER_PORT="3999").status_code == 200
    assert client.get(STUDIES, SERVER_PORT="8000", HTTP_X_PACS_VIEWER_ORIGIN="1").status_code == 404
