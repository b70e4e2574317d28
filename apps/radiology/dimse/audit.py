"""The audit trail of the DICOM network: one AuditEvent per association (refused or let in), per
C-STORE, and per C-FIND, C-GET and C-MOVE request.

Written here rather than through access/audit.py's `record`, which takes a Django user and
derives the role from its groups: a DICOM caller is a node, whose role is its node role
(modality, workstation) and whose name is its calling AE title. channel "dicom"; `method` is
the DIMSE service (ASSOCIATE for an association, C-STORE, C-FIND, C-GET, C-MOVE); `status_code`
is the HTTP status of the same outcome (the column is the trail's common one and a DIMSE status
such as 0xC000 does not fit it): for an association, 200 let in, 403 refused; for a store, 201
stored, 200 an identical repeat, 202 held in the unmatched inbox, 403 refused, 409 conflict, 400
not understood, 507 out of resources, 500 anything else; for a search, 200 answered, 400
refused; for a retrieve, 200 every instance sent, 207 some not, 502 none, 499 cancelled by the
caller, 400 refused. A C-FIND's `query_keys` names the keys it matched on, never their values.
Like `record`, a failure to audit is logged loudly and never breaks the association, and the
events are written in groups (access/audit_writer.py, RADIOLOGY_AUDIT_FLUSH_MS): one commit for
many C-STOREs instead of one each, up to that long after the answer.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom.association import Association

from apps.radiology.access.audit_writer import write_event
from apps.radiology.access.principals import DicomNodeRole
from apps.radiology.dimse.nodes import DicomNode, normalised_address
from apps.radiology.models import AuditEvent

logger = logging.getLogger(__name__)

CHANNEL = "dicom"
# The role of a caller that is no known node (refused at association).
UNKNOWN_NODE_ROLE = "unknown_dicom_node"


def action_of(role: str) -> str:
    """A modality writes (stores); a workstation, or an unknown caller, reads."""
    return "write" if role == DicomNodeRole.MODALITY else "read"


def record_dicom(
    *,
    ae_title: str,
    role: str,
    address: str | None,
    route: str,
    method: str,
    status_code: int,
    outcome: str,
    action: str | None = None,
    **what: Any,
) -> AuditEvent | None:
    """Write one event of the DICOM channel (see the module docstring for its fields)."""
    try:
        event = AuditEvent(
            user=None,
            username=ae_title[:150],
            role=role[:32],
            channel=CHANNEL,
            action=action or action_of(role),
            route=route[:100],
            method=method[:10],
            status_code=status_code,
            outcome=outcome,
            client_address=address,
            **{key: value for key, value in what.items() if value not in (None, "")},
        )
        write_event(event)  # with the others of the next RADIOLOGY_AUDIT_FLUSH_MS, as the HTTP trail's
        return event
    except Exception:  # the trail must not take the listener down; the error is logged
        logger.exception("audit event could not be written for DICOM %s from %s", method, ae_title)
        return None


def record_request(
    assoc: Association,
    node: DicomNode | None,
    *,
    method: str,
    status_code: int,
    outcome: str,
    action: str | None = None,
    **what: Any,
) -> AuditEvent | None:
    """One event for a DIMSE request on an established association, as the node that made it
    (route: the method in lower case, e.g. c-find)."""
    requestor = getattr(assoc, "requestor", None)  # None: a handler called without an association
    try:
        address: str | None = normalised_address(str(requestor.address)) if requestor is not None else None
    except ValueError:
        address = None
    calling = str(requestor.ae_title).strip() if requestor is not None else ""
    return record_dicom(
        ae_title=node.ae_title if node is not None else calling,
        role=node.role.value if node is not None else UNKNOWN_NODE_ROLE,
        address=address,
        route=method.lower(),
        method=method,
        status_code=status_code,
        outcome=outcome,
        action=action,
        **what,
    )
