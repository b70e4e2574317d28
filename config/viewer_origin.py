"""Route requests that reached the viewer's origin through its proxy with config.viewer_urls.

The viewer's origin is nginx on both layouts: under `make run` on VIEWER_PORT
(config/front_proxy.py, passing every request to the app servers), under docker compose
its `nginx` service (deploy/nginx.conf, which serves the OHIF dist itself). nginx marks the
requests it passes on with `X-PACS-Viewer-Origin: 1`, and this middleware then resolves them
with config.viewer_urls, so the viewer's origin reaches the same short list of routes on both
layouts (DICOMweb, the lite viewer, signed file URLs) and the REST API, token endpoint, admin,
schema and docs are 404 there.

The header can only take routes away: a client that sends it to the API port itself gets
fewer routes, never more, so it needs no secret.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

VIEWER_URLCONF = "config.viewer_urls"
HEADER = "HTTP_X_PACS_VIEWER_ORIGIN"


class ViewerOriginMiddleware:
    """Set request.urlconf to config.viewer_urls for a request the viewer's proxy marks as its own."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.META.get(HEADER, "").strip() == "1":
            request.urlconf = VIEWER_URLCONF
        return self.get_response(request)
