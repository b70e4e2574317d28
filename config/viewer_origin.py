"""Route requests that reached the viewer's origin through its proxy with config.viewer_urls.

Under `make run` the API's gunicorn listens on the viewer's port as well (PACS_VIEWER_BIND), and a
request that arrived on that port (WSGI SERVER_PORT, which gunicorn takes from the listening
socket, never from the Host header) is resolved with config.viewer_urls: one pool of workers for
both origins, not a second gunicorn of ~85 MiB for a few doctors' browsers (issue 19's memory
budget). Under docker compose it is nginx (deploy/nginx.conf), which serves the OHIF dist itself and
proxies /api/, /admin/ and /static/ to the one app server; it marks those requests with
`X-PACS-Viewer-Origin: 1`, and this middleware then resolves them with config.viewer_urls, so
the viewer's origin reaches the same short list of routes on both layouts (DICOMweb, the lite
viewer, signed file URLs) and the REST API, token endpoint, admin, schema and docs are 404 there.

The header can only take routes away: a client that sends it to the API port itself gets
fewer routes, never more, so it needs no secret.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

VIEWER_URLCONF = "config.viewer_urls"
HEADER = "HTTP_X_PACS_VIEWER_ORIGIN"


class ViewerOriginMiddleware:
    """Set request.urlconf to config.viewer_urls for a request to the viewer's origin: one that
    arrived on the viewer's port, or that the viewer's proxy marks as its own."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.viewer_port = settings.PACS_VIEWER_LISTEN_PORT

    def __call__(self, request: HttpRequest) -> HttpResponse:
        on_viewer_port = self.viewer_port is not None and request.META.get("SERVER_PORT") == self.viewer_port
        if on_viewer_port or request.META.get(HEADER, "").strip() == "1":
            request.urlconf = VIEWER_URLCONF
        return self.get_response(request)
