"""The DICOM listener: one pynetdicom application entity that modalities and workstations call.

`build_ae` makes the AE (AE title RADIOLOGY_DICOM_AE_TITLE) with every storage SOP class and
Verification as SCP, each with the transfer syntaxes ingest takes (ACCEPTED_TRANSFER_SYNTAXES: not
the deflated ones, which ingest refuses, nor JPIP or SMPTE ST 2110), so an instance is
accepted in the syntax its sender proposes first and stored byte-exact, never transcoded.
`start_listener` serves it on (host, port) in background threads, one per association;
`manage.py run_dicom_listener` runs it (supervisord's `dicom` program, docker-compose's
`dicom` service) on the API's HOST and RADIOLOGY_DICOM_PORT.

Handlers bound (evt_handlers): EVT_REQUESTED (association.py: only known nodes), EVT_ACCEPTED
(audited),
EVT_C_ECHO (success), EVT_C_STORE (store.py), EVT_C_FIND (query.py, as the calling node),
EVT_C_GET and EVT_C_MOVE (retrieve.py, as the calling node), EVT_RELEASED/EVT_ABORTED (the
thread's database connections parked for the next association, or closed).

The storage contexts accept SCP/SCU role selection: C-GET's storage sub-operations go back on
the caller's association, this side as the storage SCU (PS3.7 D.3.3.4).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.conf import settings
from pydicom.uid import AllTransferSyntaxes, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, VerificationPresentationContexts, _config, evt
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.transport import ThreadedAssociationServer

from apps.radiology.access.principals import NOTHING, ScopePrincipal
from apps.radiology.dicomweb.transcode import LOSSLESS_COMPRESSED
from apps.radiology.dimse import association, query, retrieve, store
from apps.radiology.dimse.nodes import NodeList
from apps.radiology.fastpaths import dimse_contexts, dimse_db_connections, dimse_file_send

logger = logging.getLogger(__name__)

# Every transfer syntax pydicom knows with the pixel data in the dataset, but the deflated ones
# (ingest refuses them before inflating): not JPIP (pixels referenced elsewhere), nor SMPTE
# ST 2110 (pixels in another stream). In order of preference, since pynetdicom accepts, of the
# syntaxes a caller proposes in one presentation context, the first in this list: Explicit VR
# Little Endian (what WADO-RS serves by default, so no transcoding later), Implicit VR Little
# Endian, the lossless compressed ones (a sender that offers them holds the pixels exactly),
# then the rest (big endian, lossy, video) in pydicom's order.
_NOT_ACCEPTED = ("Deflate", "JPIP", "SMPTE")
_PREFERRED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, *sorted(LOSSLESS_COMPRESSED))
ACCEPTED_TRANSFER_SYNTAXES: list[str] = [str(uid) for uid in _PREFERRED] + [
    str(uid)
    for uid in AllTransferSyntaxes
    if not any(word in uid.name for word in _NOT_ACCEPTED) and str(uid) not in _PREFERRED
]

EventHandler = tuple[Any, Callable[..., Any], list[Any]] | tuple[Any, Callable[..., Any]]


def handle_echo(event: evt.Event) -> int:
    """EVT_C_ECHO: the caller is a known node (association.py let it in), so: success."""
    return store.SUCCESS


def handle_find(event: evt.Event, nodes: NodeList) -> Iterator[Any]:
    """EVT_C_FIND: the matches the calling node may see (query.py through the read door); a caller
    the node list does not know (it could not have associated) sees nothing."""
    node = association.node_of_association(event.assoc, nodes)
    principal = node.principal if node is not None else ScopePrincipal(NOTHING)
    yield from query.handle_find(event, principal, node)


def handlers(nodes: NodeList) -> list[EventHandler]:
    """The event handlers of the listener (see the module docstring for the ones to add)."""
    return [
        (evt.EVT_REQUESTED, association.handle_requested, [nodes]),
        (evt.EVT_ACCEPTED, association.handle_accepted, [nodes]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, store.handle_store, [nodes]),
        (evt.EVT_C_FIND, handle_find, [nodes]),
        (evt.EVT_C_GET, retrieve.handle_get, [nodes]),
        (evt.EVT_C_MOVE, retrieve.handle_move, [nodes]),
        (evt.EVT_RELEASED, association.handle_closed),
        (evt.EVT_ABORTED, association.handle_closed),
    ]


def _add_contexts(ae: AE, contexts: Iterable[PresentationContext], *, either_role: bool = False) -> None:
    for context in contexts:
        ae.add_supported_context(
            context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES, scu_role=either_role, scp_role=either_role
        )


def build_ae(ae_title: str | None = None) -> AE:
    """The application entity, with its supported presentation contexts (see the module docstring)."""
    # Each received dataset is written to a file as it arrives, never held in memory (store.py);
    # each retrieved one is read from its file as it is sent (retrieve.py, dimse_file_send).
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.STORE_SEND_CHUNKED_DATASET = True
    # pynetdicom would log each C-FIND/C-GET/C-MOVE identifier (a patient's name, id) and each
    # C-FIND match: no patient data in logs, whatever the log level.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    dimse_file_send.install()
    ae = AE(ae_title=ae_title or settings.RADIOLOGY_DICOM_AE_TITLE)
    _add_contexts(ae, VerificationPresentationContexts)
    _add_contexts(ae, AllStoragePresentationContexts, either_role=True)
    query_retrieve = (*query.FIND_SOP_CLASSES, *retrieve.GET_SOP_CLASSES, *retrieve.MOVE_SOP_CLASSES)
    _add_contexts(ae, [build_context(uid) for uid in query_retrieve])
    return ae


def start_listener(host: str, port: int, *, nodes: NodeList | None = None) -> ThreadedAssociationServer:
    """Serve the listener on (host, port) in the background; stop it with `stop_listener`.

    The node list is read and checked here (a malformed RADIOLOGY_DICOM_NODES stops the start).
    """
    nodes = nodes if nodes is not None else NodeList.from_settings()
    ae = build_ae()
    # The supported contexts, frozen and shared by every association rather than deep-copied
    # into each (33-38 ms of CPU per association: fastpaths/dimse_contexts.py).
    contexts = dimse_contexts.shared(ae.supported_contexts)
    server = ae.start_server((host, port), block=False, evt_handlers=handlers(nodes), contexts=contexts)
    # Small DIMSE messages (C-FIND matches, C-STORE responses) go at once rather than waiting
    # for the peer's delayed ACK; accepted sockets inherit the option from the listening one.
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    logger.info(
        "DICOM listener %s on %s:%d, %d known nodes", ae.ae_title, host, server.server_address[1], len(nodes.nodes)
    )
    return server


def stop_listener(server: ThreadedAssociationServer, *, grace_seconds: float = 0) -> None:
    """Stop taking associations; let those under way finish for up to `grace_seconds`, then abort them.

    An aborted C-STORE was never acknowledged, so its sender sends it again: nothing
    acknowledged is lost, and the half-received file is removed (pynetdicom's temporary file).
    """
    server.shutdown()  # stops accepting and closes the listening socket
    deadline = time.monotonic() + grace_seconds
    for assoc in list(server.active_associations):
        assoc.join(timeout=max(0.0, deadline - time.monotonic()))
    for assoc in list(server.active_associations):
        assoc.abort()
    dimse_db_connections.close_parked()  # the connections associations left for the next ones
