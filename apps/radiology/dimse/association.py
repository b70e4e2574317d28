"""Who may open an association: a known node (AE title + address) or nobody.

Checked when the A-ASSOCIATE-RQ arrives (evt.EVT_REQUESTED), before any presentation context
is negotiated: an unknown calling AE title, or a known one calling from an address not
listed for it, gets an A-ASSOCIATE-RJ "rejected-permanent, DICOM UL service-user, calling
AE title not recognized" (PS3.8 9.3.4, the reason pynetdicom's own require_calling_aet
gives) and an audit event. pynetdicom provides for rejecting from an EVT_REQUESTED handler (it
skips negotiation once the association is rejected); the handler then does what its own
rejection does (send_reject, then kill, which waits for the reject to be sent).

Every handler after that asks `node_of_association` who is calling: the node is looked
up again from the association's AE title and peer address (a dictionary-sized list, no query),
so no state is kept per association.

Database connections: each association runs in a thread of its own, and Django's connections
are per thread. The association's thread takes over a connection an earlier association left
(fastpaths/dimse_db_connections.py: `adopt` before its first query) and leaves its own for the
next one when it ends (`park`), instead of opening and closing one per association.
"""

from __future__ import annotations

import logging
import threading

from django.db import close_old_connections, connections
from pynetdicom.association import Association
from pynetdicom.events import Event

from apps.radiology.dimse.audit import UNKNOWN_NODE_ROLE, record_dicom, record_request
from apps.radiology.dimse.nodes import DicomNode, NodeList, normalised_address
from apps.radiology.fastpaths import dimse_db_connections
from apps.radiology.models import AuditEvent

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: rejected-permanent (1), source DICOM UL service-user (1), calling AE title not recognized (3).
REJECT_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
CALLING_AE_NOT_RECOGNIZED = 0x03


def peer_address(assoc: Association) -> str:
    return str(assoc.requestor.address)


def node_of_association(assoc: Association, nodes: NodeList) -> DicomNode | None:
    """The known node behind an established association (None: it should not have been let in)."""
    return nodes.node_for(str(assoc.requestor.ae_title), peer_address(assoc))


def handle_requested(event: Event, nodes: NodeList) -> None:
    """EVT_REQUESTED: reject (and audit) a caller that is no known node from its listed address."""
    assoc = event.assoc
    calling = str(assoc.requestor.primitive.calling_ae_title).strip()
    address = peer_address(assoc)
    if nodes.node_for(calling, address) is not None:
        return
    logger.warning("DICOM association refused: calling AE title %r from %s is not a known node", calling, address)
    # Audited before the answer: once the caller has its reject, the trail already says so.
    dimse_db_connections.adopt()
    close_old_connections()
    try:
        record_dicom(
            ae_title=calling,
            role=_role_tried(calling, nodes),
            address=_audit_address(address),
            route="associate",
            method="ASSOCIATE",
            status_code=403,
            outcome=AuditEvent.Outcome.DENIED,
        )
    finally:
        dimse_db_connections.park()  # this association's thread ends here
    assoc.acse.send_reject(REJECT_PERMANENT, SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNIZED)
    # As pynetdicom's own rejection does: wait until the reject has gone out and the peer has
    # closed (or the ARTIM timer ran out) before the thread closes the socket.
    assoc.kill()


def handle_accepted(event: Event, nodes: NodeList) -> None:
    """EVT_ACCEPTED: one audit event per association let in (who, from where, when), as for one refused."""
    dimse_db_connections.adopt()  # the first query of the association's thread
    close_old_connections()
    record_request(
        event.assoc,
        node_of_association(event.assoc, nodes),
        method="ASSOCIATE",
        status_code=200,
        outcome=AuditEvent.Outcome.ALLOWED,
    )


def handle_closed(event: Event) -> None:
    """EVT_RELEASED / EVT_ABORTED: the association's thread ends; its database connections go.

    Each association runs in a thread of its own, and Django's connections are per thread: left
    open, each association would leave one behind (what request_finished does for a request).
    Open and clean, they are parked for the next association; otherwise closed. An abort by the
    listener's stop runs in the stopping thread, not the association's: that thread's own
    connections are closed, as before, never parked.
    """
    if threading.current_thread() is event.assoc:
        dimse_db_connections.park()
    else:
        connections.close_all()


def _role_tried(calling: str, nodes: NodeList) -> str:
    """The role a known AE title has elsewhere (it called from the wrong address), else unknown."""
    for node in nodes.nodes:
        if node.ae_title == calling:
            return node.role.value
    return UNKNOWN_NODE_ROLE


def _audit_address(address: str) -> str | None:
    try:
        return normalised_address(address)
    except ValueError:
        return None
