"""`manage.py run_forwarder`: push the forwarding outbox to RADIOLOGY_FORWARD_DESTINATIONS until SIGTERM or Ctrl-C.

Run by supervisord (deploy/supervisord.conf, program `forwarder`) and by docker-compose
(service `forwarder`), always: with no destination configured it says so once and stays up
idle (supervisord would restart a process that exits, and give up on one that keeps exiting),
as IDLE_PROGRAM: a bare interpreter of a few MiB that exits 0 on SIGTERM, instead of a Django
process of 60 MiB doing nothing on every clinic server that forwards nowhere (issue 19's
memory budget). Settings come from the environment only, so a destination configured later
takes a restart of the service either way.
A destination without its token is refused at start (exit 1): nothing could be sent to it.
On SIGTERM / SIGINT it stops claiming, lets each push end its chunk and give its image back
(up to --grace seconds, below supervisord's stopwaitsecs), and exits 0 (apps/radiology/forwarding/).

--once runs until nothing is due, in flight or to verify, then exits: for tests and for a
cron-like use. A task waiting out its backoff is not due.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from apps.radiology.forwarding.forwarder import STOP_GRACE_SECONDS, Forwarder

# -I -S: no site-packages, no environment; waits for SIGTERM or SIGINT and exits 0 (also as a
# container's process 1, which gets no default signal handling).
IDLE_PROGRAM = (
    "import signal, sys; "
    "[signal.signal(s, lambda *_: sys.exit(0)) for s in (signal.SIGTERM, signal.SIGINT)]; "
    "signal.pause()"
)


class Command(BaseCommand):
    help = "Forward stored images to the RADIOLOGY_FORWARD_DESTINATIONS servers (upload sync, resumable)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="exit once nothing is due or in flight")
        parser.add_argument(
            "--grace", type=float, default=STOP_GRACE_SECONDS, help="seconds pushes may take to stop on SIGTERM"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            forwarder = Forwarder()
        except ImproperlyConfigured as error:
            raise CommandError(str(error)) from None
        if forwarder.destinations:
            # Names and URLs only: the tokens never reach a log.
            where = ", ".join(f"{each.name} ({each.url}, {each.rule})" for each in forwarder.destinations)
            self.stdout.write(
                f"Forwarder to {where}: {forwarder.in_flight} in flight, "
                f"compression {settings.RADIOLOGY_FORWARD_COMPRESSION}"
            )
        else:
            self.stdout.write("Forwarder: no destination configured (RADIOLOGY_FORWARD_DESTINATIONS); idle")
            if not options["once"]:
                self.stdout.flush()
                connections.close_all()
                os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", IDLE_PROGRAM])  # noqa: S606 (our own argv)
        self.stdout.flush()
        previous = {
            signum: signal.signal(signum, lambda *_: forwarder.stop()) for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            forwarder.run(once=options["once"], grace_seconds=options["grace"])
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self.stdout.write("Forwarder stopped")
