"""/healthz: is the database reachable, is the image store reachable. No authentication, no data."""

from __future__ import annotations

import logging

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from apps.radiology import storage

logger = logging.getLogger(__name__)


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    checks = {"database": "ok", "storage": "ok"}
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
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if healthy else "unhealthy", **checks}, status=200 if healthy else 503)
