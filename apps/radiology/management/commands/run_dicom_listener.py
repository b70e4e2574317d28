"""`manage.py run_dicom_listener`: serve PACS-lite's DICOM listener until SIGTERM or Ctrl-C.

Run by supervisord (deploy/supervisord.conf, program `dicom`, with --host set to the API's
HOST) and by docker-compose (service `dicom`). On SIGTERM / SIGINT it stops taking
associations, lets those under way finish for up to --grace seconds (below supervisord's
stopwaitsecs), aborts the rest, and exits 0: an instance aborted mid-way was never
acknowledged, so its sender retries it.

While it listens, a heartbeat thread writes its row in the database every
RADIOLOGY_DICOM_HEARTBEAT_SECONDS, and marks it stopped on that clean stop (dimse/heartbeat.py):
/healthz, answered by another process, reads it.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.radiology.dimse.heartbeat import Heartbeat, ListenerAddress
from apps.radiology.dimse.listener import start_listener, stop_listener
from apps.radiology.dimse.nodes import NodeList
from apps.radiology.dimse.store import receive_into_staging


class Command(BaseCommand):
    help = "Serve the DICOM listener (C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE) on --host and RADIOLOGY_DICOM_PORT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on (make run: the API's HOST)")
        parser.add_argument("--port", type=int, default=None, help="default: RADIOLOGY_DICOM_PORT")
        parser.add_argument("--grace", type=float, default=20.0, help="seconds associations may finish on stop")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            nodes = NodeList.from_settings()
        except ImproperlyConfigured as error:
            raise CommandError(str(error)) from None
        # pynetdicom writes each incoming dataset to a temporary file as it arrives: on the
        # staging disk (whose free space ingest watches), never a /tmp that may be memory, and
        # under the spool prefix purge_interrupted_ingests clears after a kill.
        receive_into_staging()
        host = options["host"].strip("[]")
        port = options["port"] or settings.RADIOLOGY_DICOM_PORT
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        server = start_listener(host, port, nodes=nodes)
        heartbeat = Heartbeat(
            ListenerAddress(settings.RADIOLOGY_DICOM_AE_TITLE, host, server.server_address[1]),
            interval_seconds=settings.RADIOLOGY_DICOM_HEARTBEAT_SECONDS,
            active_associations=lambda: len(server.active_associations),
        )
        heartbeat.start()
        self.stdout.write(
            f"DICOM listener {settings.RADIOLOGY_DICOM_AE_TITLE} on {host}:{port} ({len(nodes.nodes)} known nodes)"
        )
        self.stdout.flush()
        stop.wait()
        stop_listener(server, grace_seconds=options["grace"])
        heartbeat.stop()  # after the associations: "stopped" is written once none is left
        self.stdout.write("DICOM listener stopped")
