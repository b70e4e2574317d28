"""/healthz: is the database reachable, is the image store reachable, is there disk room to ingest.

No authentication, no data. Database or store down: 503 "unhealthy", so a load balancer
stops sending requests that cannot be served. Disk space low (storage/free_space.py): 200
"degraded", with `disk_space: "low"` and a detail naming where. A degraded server still
serves every image it has, which doctors need most when the disk fills; only new files are
refused (507), so taking it out of rotation would turn a full disk into an outage. Monitoring
alerts on any status but "ok".
"""

from __future__ import annotations

import logging

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from apps.radiology import storage
from apps.radiology.storage import free_space

logger = logging.getLogger(__name__)


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    checks = {"database": "ok", "storage": "ok", "disk_space": "ok"}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any failure means "not healthy", reported, never raised
        logger.error("healthz: database unreachable: %s", type(exc).__name__)
        checks["database"] = "unreachable"
    try:
        storage.check_reachable()
    except Exception as exc:
        logger.error("healthz: storage unreachable: %s", type(exc).__name__)
        checks["storage"] = "unreachable"
    short = free_space.short_places()
    if short:
        logger.warning("healthz: free disk space below RADIOLOGY_MIN_FREE_BYTES on the %s", " and the ".join(short))
        checks["disk_space"] = "low"
    if checks["database"] != "ok" or checks["storage"] != "ok":
        body: dict[str, str] = {"status": "unhealthy", **checks}
    else:
        body = {"status": "degraded" if short else "ok", **checks}
    if short:
        body["detail"] = low_space_detail(short)
    return JsonResponse(body, status=503 if body["status"] == "unhealthy" else 200)


def low_space_detail(short: list[str]) -> str:
    """What a degraded /healthz says about the disk, naming the places short of space."""
    return (
        f"Free disk space on the {' and the '.join(short)} is below RADIOLOGY_MIN_FREE_BYTES: "
        "new images are refused (507 insufficient_storage) until space is freed."
    )
