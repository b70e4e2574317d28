"""/healthz: is the database reachable, the image store reachable, disk room to ingest, the DICOM listener alive.

No authentication, no data. Database or store down: 503 "unhealthy", so a load balancer
stops sending requests that cannot be served. Disk space low (storage/free_space.py): 200
"degraded", with `disk_space: "low"` and a detail naming where. A degraded server still
serves every image it has, which doctors need most when the disk fills; only new files are
refused (507), so taking it out of rotation would turn a full disk into an outage. Monitoring
alerts on any status but "ok".

The DICOM listener runs in a process of its own and reports through a heartbeat row in the
database (dimse/heartbeat.py): `dicom_listener` says "listening", "stopped" (a clean stop) or
"not_responding" (silent for three of its heartbeat intervals without a clean stop), the latter
200 "degraded" too: the web side still serves everything, only the DICOM network is down. The member
is absent when no listener ever wrote one (a deployment without it), which leaves the status alone.

A clinic that forwards its studies (store and forward, outbox/) gets `forwarding`: per
destination the queue length, failed images, the oldest pending image's age, the last success
and the last error (its code). It never changes the status (see forwarding_queues).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from apps.radiology import storage
from apps.radiology.dimse.heartbeat import ListenerHealth, ListenerState, listener_health
from apps.radiology.outbox.destinations import configured_destinations
from apps.radiology.outbox.status import queue_status_json
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
    listener = dicom_listener() if checks["database"] == "ok" else None
    listener_down = listener is not None and listener.state == ListenerState.NOT_RESPONDING
    if checks["database"] != "ok" or checks["storage"] != "ok":
        body: dict[str, Any] = {"status": "unhealthy", **checks}
    else:
        body = {"status": "degraded" if short or listener_down else "ok", **checks}
    if listener is not None:
        body["dicom_listener"] = listener.as_json()
    forwarding = forwarding_queues() if checks["database"] == "ok" else None
    if forwarding:
        body["forwarding"] = forwarding
    if short:
        body["detail"] = low_space_detail(short)
    return JsonResponse(body, status=503 if body["status"] == "unhealthy" else 200)


def forwarding_queues() -> list[dict[str, Any]]:
    """Each forwarding destination's queue (outbox/status.py); empty on a server that forwards nothing.

    It never changes the status: a clinic's link down for days is what store and forward is for,
    and the images wait safely; monitoring reads oldest_pending_seconds and last_error instead.
    """
    try:
        names = [destination.name for destination in configured_destinations()]
        return queue_status_json(names) if names else []
    except Exception as exc:
        logger.error("healthz: forwarding queue unreadable: %s", type(exc).__name__)
        return []


def dicom_listener() -> ListenerHealth | None:
    """The listener's heartbeat as /healthz reports it; None (member left out) if never started or unreadable."""
    try:
        listener = listener_health()
    except Exception as exc:  # e.g. the heartbeat table not migrated yet: reported in the log, never raised
        logger.error("healthz: DICOM listener heartbeat unreadable: %s", type(exc).__name__)
        return None
    if listener is not None and listener.state == ListenerState.NOT_RESPONDING:
        logger.warning(
            "healthz: the DICOM listener %s (port %d) wrote no heartbeat for %d s",
            listener.ae_title,
            listener.port,
            listener.beat_age_seconds,
        )
    return listener


def low_space_detail(short: list[str]) -> str:
    """What a degraded /healthz says about the disk, naming the places short of space."""
    return (
        f"Free disk space on the {' and the '.join(short)} is below RADIOLOGY_MIN_FREE_BYTES: "
        "new images are refused (507 insufficient_storage) until space is freed."
    )
