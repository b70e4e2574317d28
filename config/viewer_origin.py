"""Route requests that reached the viewer's origin through its proxy with config.viewer_urls.

Under `make run` the viewer's port is a server of its own with PACS_ROOT_URLCONF=config.viewer_urls.
Under docker compose it is nginx (deploy/nginx.conf), which serves the OHIF dist itself and
proxies /api/, /admin/ and /static/ to the one app server; it marks those requests with
`X-PACS-Viewer-Origin: 1`, and this middleware then resolves them with config.viewer_urls, so
the viewer's origin reaches the same short list of routes on both layouts (DICOMweb, the lite
viewer, signed file URLs) and the REST API, token endpoint, admin, schema and docs are 404 there.

The header can only take routes away: a client that sends it to the API port itself gets
fewer routes, never more, so it needs no secret.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

VIEWER_URLCONF = "config.viewer_urls"
HEADER = "HTTP_X_PACS_VIEWER_ORIGIN"


class ViewerOriginMiddleware:
    """Set request.urlconf to config.viewer_urls when the viewer's proxy says the request is its own."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.META.get(HEADER, "").strip() == "1":
            request.urlconf = VIEWER_URLCONF
        return self.get_response(request)
