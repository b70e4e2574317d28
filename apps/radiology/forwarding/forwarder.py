"""The forwarder's loop: keep at most N images in flight to the destinations, then have each study confirmed.

One round, about every second or as soon as a push ends:
1. claim due tasks (outbox/progress.py: leased, so a second forwarder or a restart never sends
   an image twice at once) for the free places among RADIOLOGY_FORWARD_IN_FLIGHT, the
   destinations taking turns at the first place, and push each in a thread of its own
   (client.py);
2. verify: for each study whose images are all sent, ask the far side once which of them it
   holds (GET forwarded/{study_uid}/) and record the answer: delivered, or the missing images
   queued again. A link down there is asked again later, after a backoff.

A thread per push, at most N at once, rather than a ThreadPoolExecutor: the executor's workers
are joined when the interpreter exits, so one push stuck on a stalled socket would hold a
stopping forwarder past its grace (and supervisord would SIGKILL it). Push threads are
daemons: on SIGTERM the forwarder stops claiming, lets each push finish the chunk in flight and
give its task back (client.push_task), waits up to the grace, and exits. Nothing is lost if it
is SIGKILLed instead: a task's lease lapses (RADIOLOGY_FORWARD_LEASE_SECONDS) and its
remembered upload id resumes the upload where the far side's bytes end.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, close_old_connections, connection, connections

from apps.radiology.forwarding.chunking import ChunkSizer
from apps.radiology.forwarding.client import (
    FORWARDER_FAULT,
    DestinationClient,
    FarSideRefusal,
    LinkError,
    make_pool,
    push_task,
    recorded,
)
from apps.radiology.models import ForwardTask
from apps.radiology.outbox import progress
from apps.radiology.outbox.destinations import Destination, configured_destinations

logger = logging.getLogger(__name__)

# The longest wait between rounds when nothing happens (new images are due as soon as stored).
POLL_SECONDS = 1.0
# Studies asked about per destination and round.
VERIFY_BATCH = 50
# On SIGTERM, how long pushes may take to end their chunk: below supervisord's stopwaitsecs (25).
STOP_GRACE_SECONDS = 20.0
# What the far side says of an image it holds that counts as there: stored under the order, or
# held for a tech in its unmatched inbox. "discarded" (a tech threw it away there) does not.
CONFIRMING_STATES = frozenset({"stored", "held"})
# A tech there threw it away: not sent again on our own (progress.apply_verification says why).
DISCARDED_STATE = "discarded"


def forwarding_destinations() -> tuple[Destination, ...]:
    """The configured destinations; ImproperlyConfigured when one has no token (nothing could be sent to it)."""
    destinations = configured_destinations()
    for destination in destinations:
        if not destination.token:
            raise ImproperlyConfigured(
                f"Forwarding destination {destination.name!r} has no token: set "
                f"RADIOLOGY_FORWARD_TOKEN_{destination.name.upper()} (or its _FILE twin) to the API token "
                "of this server's forwarding-clinic account on the far side."
            )
    return destinations


@dataclass
class _Route:
    """One destination's client, its link's chunk sizer, and when its studies may next be verified."""

    client: DestinationClient
    sizer: ChunkSizer
    verify_failures: int = 0
    verify_after: float = 0.0

    @property
    def name(self) -> str:
        return self.client.destination.name


@dataclass
class _Running:
    threads: dict[int, threading.Thread] = field(default_factory=dict)  # task id -> its push

    def reap(self) -> None:
        for task_id in [task_id for task_id, thread in self.threads.items() if not thread.is_alive()]:
            del self.threads[task_id]


class Forwarder:
    """Pushes the outbox of every configured destination until stopped (or, once, until nothing is due)."""

    def __init__(self, destinations: tuple[Destination, ...] | None = None, *, in_flight: int | None = None) -> None:
        self.destinations = forwarding_destinations() if destinations is None else destinations
        self.in_flight = in_flight or settings.RADIOLOGY_FORWARD_IN_FLIGHT
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._pool = make_pool(in_flight=self.in_flight)
        self._routes = [
            _Route(
                DestinationClient(destination, self._pool),
                ChunkSizer(
                    target_seconds=settings.RADIOLOGY_FORWARD_CHUNK_SECONDS,
                    max_bytes=settings.RADIOLOGY_FORWARD_MAX_CHUNK_BYTES,
                ),
            )
            for destination in self.destinations
        ]
        self._running = _Running()
        self._turn = 0

    def stop(self) -> None:
        """Stop claiming; pushes in flight end their chunk and give their tasks back (safe from a signal handler)."""
        self.stopping.set()
        self._wake.set()

    def run(self, *, once: bool = False, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """Push until stop(); with `once`, return as soon as nothing is due, in flight or to verify."""
        if not self._routes:
            # No destination: stay up doing nothing (supervisord restarts a process that exits).
            while not once and not self.stopping.wait(POLL_SECONDS):
                pass
            return
        try:
            while not self.stopping.is_set():
                self._wake.clear()
                self._running.reap()
                try:
                    moved = self._round()
                except DatabaseError as error:  # the database restarting: wait, the next round reconnects
                    logger.warning("forwarder round failed on the database (%s); trying again", type(error).__name__)
                    connections.close_all()
                    moved = 1  # not "nothing to do": --once tries again
                if once and not moved and not self._running.threads:
                    return
                self._wake.wait(POLL_SECONDS)
        finally:
            self._wind_down(grace_seconds)

    def _round(self) -> int:
        """Claim and start due pushes, then verify finished studies; how many things moved."""
        if not connection.in_atomic_block:
            close_old_connections()  # as each request does: a connection past its age or broken is replaced
        return self._claim() + self._verify()

    def _claim(self) -> int:
        started = 0
        for offset in range(len(self._routes)):
            route = self._routes[(self._turn + offset) % len(self._routes)]
            free = self.in_flight - len(self._running.threads)
            if free <= 0 or self.stopping.is_set():
                break
            for task in progress.claim_due(
                destination=route.name, limit=free, lease_seconds=settings.RADIOLOGY_FORWARD_LEASE_SECONDS
            ):
                thread = threading.Thread(target=self._push, args=(route, task), name=f"forward-{task.pk}", daemon=True)
                self._running.threads[task.pk] = thread
                thread.start()
                started += 1
        self._turn += 1
        return started

    def _push(self, route: _Route, task: ForwardTask) -> None:
        """One push, in its own thread with its own database connection (closed when it ends)."""
        try:
            push_task(task, client=route.client, sizer=route.sizer, stop=self.stopping)
        except Exception:
            # A fault of this process, not of the link or the far side: recorded, retried later.
            logger.exception("forward task %s image %s to %s: the push failed", task.pk, task.image_id, route.name)
            try:
                recorded(
                    progress.mark_retry,
                    task,
                    error_code=FORWARDER_FAULT,
                    error_detail="The forwarder failed while sending this image; see its log.",
                    wire_bytes_added=0,
                    delay_seconds=progress.backoff_seconds(task.attempts),
                )
            except DatabaseError:
                logger.warning("forward task %s: not recorded; its lease lapses", task.pk)
        finally:
            connections.close_all()
            self._wake.set()

    def _verify(self) -> int:
        """Ask each destination about its studies whose images are all sent; how many answers were recorded."""
        recorded = 0
        for route in self._routes:
            if time.monotonic() < route.verify_after or self.stopping.is_set():
                continue
            for delivery in progress.deliveries_to_verify(destination=route.name, limit=VERIFY_BATCH):
                try:
                    images = route.client.forwarded_images(delivery.study.study_uid)
                except (LinkError, FarSideRefusal) as error:
                    delay = progress.backoff_seconds(route.verify_failures)
                    route.verify_failures += 1
                    route.verify_after = time.monotonic() + delay
                    logger.warning(
                        "forwarder: %s could not confirm study %s (%s); asking again in %.1f s",
                        route.name,
                        delivery.study_id,
                        error.code,
                        delay,
                    )
                    break
                route.verify_failures = 0
                confirmed = {
                    str(image.get("image_uid")): str(image.get("checksum"))
                    for image in images
                    if image.get("state") in CONFIRMING_STATES
                }
                discarded = {str(image.get("image_uid")) for image in images if image.get("state") == DISCARDED_STATE}
                delivered = progress.apply_verification(delivery, confirmed=confirmed, discarded=discarded)
                recorded += 1
                logger.info(
                    "forwarder: study %s %s at %s (%d of %d images confirmed)",
                    delivery.study_id,
                    "delivered" if delivered else "incomplete, the missing images are queued again",
                    route.name,
                    len(confirmed),
                    delivery.images_total,
                )
        return recorded

    def _wind_down(self, grace_seconds: float) -> None:
        """Wait up to the grace for pushes to end their chunk; those still running are left to their leases."""
        deadline = time.monotonic() + grace_seconds
        for thread in list(self._running.threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
        self._running.reap()
        if self._running.threads:
            logger.warning(
                "forwarder stopping with %d pushes still in flight: their leases lapse and the next start resumes them",
                len(self._running.threads),
            )
        self._pool.clear()
