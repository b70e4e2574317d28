"""C-GET and C-MOVE sub-operations sent from a file on disk, never from a whole dataset in memory.

Not for speed, for memory: pynetdicom's Query/Retrieve SCP (service_class.py, `_get_scp` and
`_move_scp`) takes the instances to send as pydicom Datasets yielded by the EVT_C_GET /
EVT_C_MOVE handler, and sends each with `assoc.send_c_store(dataset)`, which encodes the whole
dataset in memory: a 1 GB instance would cost the listener well over 1 GB. Its `send_c_store`
also takes a file path, and with `_config.STORE_SEND_CHUNKED_DATASET` reads that file in
chunks as it sends; but the SCP refuses anything yielded that is not a Dataset.

So the handler yields a `PendingInstance`: a Dataset carrying only the SOP Instance UID (which
pynetdicom puts in the Failed SOP Instance UID List when the sub-operation fails) and a
callable that, given the association the sub-operation goes over, writes the instance in a
transfer syntax that association accepted and returns its path. `install()` wraps
`Association.send_c_store` once per process: a PendingInstance is turned into its file and sent
by path; anything else goes to pynetdicom's own method unchanged. The wrap relies on no private
name, only on the SCP calling `send_c_store(dataset, ...)` with what the handler yielded.

Reading the file in chunks is not enough: pynetdicom puts every P-DATA PDU of a message on the
association's send queue (`dul.to_provider_queue`, a queue.Queue without a bound) as fast as it
reads them, and its network thread drains that queue only as fast as the receiver takes them.
To a receiver on a slow link, a 1 GB instance would pile up in memory. So before a file goes,
that queue is swapped (once it is empty) for `_SendQueue`, which holds at most SEND_QUEUE_PDUS P-DATA PDUs (a few
MiB at the usual PDU sizes) and makes the sending thread wait for room, giving up (the
sub-operation fails) if the association ends meanwhile. Other primitives (release, abort) are
never held back. Private: `Association.dul` and its `to_provider_queue` attribute, which the
network thread looks up anew each time it reads it (pynetdicom 3.0.4's dul.py and fsm.py).
Checked against pynetdicom 3.0.4 (CHECKED_PYNETDICOM_VERSIONS); tests/fastpaths/
test_private_api_versions.py fails after an upgrade, and tests/dimse/test_retrieve.py sends a
file larger than the memory the listener may use.
"""

from __future__ import annotations

import functools
import importlib.metadata
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import P_DATA

CHECKED_PYNETDICOM_VERSIONS = frozenset({(3, 0)})
# PS3.7 C.5.x: the sub-operation is answered as failed without a request being sent (no
# accepted presentation context fits the instance, or it could not be produced).
NOT_SENT = 0x0122  # Refused: SOP Class not supported
# P-DATA PDUs waiting to go on one association: 64 x the PDU size (16 KiB to 1 MiB).
SEND_QUEUE_PDUS = 64
_WAIT_SECONDS = 0.5

# A path to send, and what to call once it has been sent (remove a temporary file).
Materialise = Callable[[Association], tuple[Path, Callable[[], None]] | None]

_installed = threading.Lock()
_done = False


class PendingInstance(Dataset):
    """What a retrieve handler yields per instance: made into a file only when it is sent."""

    def __init__(self, sop_instance_uid: str, materialise: Materialise) -> None:
        super().__init__()
        self.SOPInstanceUID = sop_instance_uid
        # Plain attributes (lower case: not DICOM keywords, so pydicom keeps them as such).
        self.materialise = materialise
        self.status: int | None = None

    def __bool__(self) -> bool:
        """pynetdicom sends a pending sub-operation only for a truthy dataset."""
        return True


def pynetdicom_version() -> tuple[int, int]:
    major, minor = importlib.metadata.version("pynetdicom").split(".")[:2]
    return int(major), int(minor)


def install() -> None:
    """Wrap Association.send_c_store once (idempotent, thread-safe)."""
    global _done
    with _installed:
        if _done:
            return
        Association.send_c_store = _sending_files(Association.send_c_store)  # type: ignore[method-assign]
        _done = True


def _sending_files(original: Callable[..., Dataset]) -> Callable[..., Dataset]:
    @functools.wraps(original)
    def send_c_store(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
        if not isinstance(dataset, PendingInstance):
            return original(self, dataset, *args, **kwargs)
        made = dataset.materialise(self)
        if made is None:
            answer = Dataset()
            answer.Status = NOT_SENT
            dataset.status = NOT_SENT
            return answer
        path, finished = made
        _bound_send_queue(self)
        try:
            answer = original(self, path, *args, **kwargs)
        finally:
            finished()
        dataset.status = int(answer.Status) if "Status" in answer else None
        return answer

    return send_c_store


class _SendQueue(queue.Queue):  # type: ignore[type-arg]
    """The association's send queue, holding at most SEND_QUEUE_PDUS P-DATA PDUs (see the module docstring)."""

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self._assoc = assoc

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if isinstance(item, P_DATA):
            with self.not_full:
                while len(self.queue) >= SEND_QUEUE_PDUS:
                    if not (self._assoc.is_established and self._assoc.dul.is_alive()):
                        raise ConnectionAbortedError("the association ended while an instance was being sent")
                    self.not_full.wait(_WAIT_SECONDS)
        super().put(item, block, timeout)


def _bound_send_queue(assoc: Association) -> None:
    """Swap the association's send queue for a bounded one, once, when it is empty.

    This thread is the queue's only producer, so once the network thread has drained it nothing
    is in flight between its peek (`queue[0]`) and its `get`: the swap cannot lose or reorder a PDU.
    """
    dul = assoc.dul
    current = dul.to_provider_queue
    if isinstance(current, _SendQueue):
        return
    while current.qsize():
        if not (assoc.is_established and dul.is_alive()):
            return  # the send that follows fails on its own
        time.sleep(0.001)
    dul.to_provider_queue = _SendQueue(assoc)


def no_delay(event: Any) -> None:
    """EVT_CONN_OPEN: send small DIMSE messages at once (TCP_NODELAY) on an outgoing association.

    pynetdicom never sets it: a reply of several small PDUs then waits ~40 ms for the peer's
    delayed ACK (Nagle's algorithm), which made each C-FIND and each retrieve sub-operation
    that much slower. The listener sets it on its listening socket (accepted ones inherit it on
    Linux); this is for the associations C-MOVE opens. Private: `Association.dul.socket.socket`.
    """
    raw = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if raw is not None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
