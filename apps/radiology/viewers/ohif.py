"""The self-hosted OHIF v3 viewer: its app-config.js, and serving its prebuilt dist.

The npm package @ohif/app ships a built dist/ that must sit at the root of its own origin,
so the viewer runs on its own port (VIEWER_PORT) with `config.viewer_urls`: the dist at "/"
(client routes such as /viewer fall back to index.html) *and* the DICOMweb API under the
same origin. Same origin means no CORS preflight for every frame URL, which on a slow
link would double the number of round trips.
"""

from __future__ import annotations

import json
import mimetypes
import os
from pathlib import Path

from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

DICOMWEB_PATH = "/api/v1/radiology/dicomweb"
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


def app_config_js() -> str:
    """window.config for PACS-lite: one DICOMweb data source on this origin, no study list."""
    data_source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "pacs-lite",
        "configuration": {
            "friendlyName": "PACS-lite",
            "name": "pacs-lite",
            "qidoSupportsIncludeField": True,
            "imageRendering": "wadors",
            # Thumbnails come from our own .../thumbnail endpoint (a small server-rendered JPEG).
            "thumbnailRendering": "thumbnail",
            "thumbnailRequestStrategy": "fetch",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": False,
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "name": "pacs-lite",
        "routerBasename": None,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": False,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 20, "thumbnail": 3, "prefetch": 4},
        "defaultDataSourceName": "pacs-lite",
        "dataSources": [data_source],
    }
    return (
        "/* Written by PACS-lite from its settings; do not edit (see apps/radiology/viewers/ohif.py). */\n"
        f"window.config = {json.dumps(config, indent=2)};\n"
        "(function () {\n"
        "  // DICOMweb lives on the viewer's own origin (or PACS_PUBLIC_URL when set).\n"
        f"  var root = ({json.dumps(settings.PACS_PUBLIC_URL)} || window.location.origin) + "
        f"{json.dumps(DICOMWEB_PATH)};\n"
        "  var source = window.config.dataSources[0].configuration;\n"
        "  source.qidoRoot = root; source.wadoRoot = root; source.wadoUriRoot = root;\n"
        "})();\n"
    )


def write_app_config(dist: Path | None = None) -> Path:
    """Write app-config.js into the installed dist (for web servers that serve it as a file)."""
    target = (dist or settings.OHIF_DIST_DIR) / "app-config.js"
    target.write_text(app_config_js(), encoding="utf-8")
    return target


def _with_viewer_headers(response: HttpResponse) -> HttpResponse:
    # The viewer URL carries the study token: never leak it in a Referer.
    response["Referrer-Policy"] = "no-referrer"
    return response


@require_safe
def app_config(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(app_config_js(), content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = "no-store"
    return _with_viewer_headers(response)


def _inside_dist(dist: Path, path: str) -> Path:
    """`path` under `dist` with its `.` and `..` worked out; Http404 when that climbs out of dist.

    Worked out on the names alone (os.path.abspath, no filesystem access), as Django's
    `safe_join` did here before: a name the filesystem would refuse (a NUL, one too long) still
    gets its usual answer, 404 if it climbs out and index.html otherwise, where Path.resolve()
    would raise on a NUL. No symlink is followed: the dist `make viewer` unpacks has none.
    """
    root = Path(os.path.abspath(dist))
    candidate = Path(os.path.abspath(root / path))
    if not candidate.is_relative_to(root):
        raise Http404("Not found")
    return candidate


@require_safe
def dist_file(request: HttpRequest, path: str = "") -> HttpResponse:
    """A file of the OHIF dist, or index.html for client-side routes (/viewer?...)."""
    dist = Path(settings.OHIF_DIST_DIR)
    index = dist / "index.html"
    if not index.is_file():
        raise Http404("The OHIF viewer is not installed: run `make viewer`.")
    candidate = _inside_dist(dist, path) if path else index
    try:
        is_asset = candidate.is_file() and candidate != index
    except (OSError, ValueError):  # a name too long for the filesystem (ENAMETOOLONG) names no asset
        is_asset = False
    target = candidate if is_asset else index
    content_type, _encoding = mimetypes.guess_type(target.name)
    response = FileResponse(target.open("rb"), content_type=content_type or "application/octet-stream")
    # Hashed bundles may be cached; index.html (which names them) is revalidated every time.
    response["Cache-Control"] = "public, max-age=86400" if is_asset else "no-cache"
    return _with_viewer_headers(response)
