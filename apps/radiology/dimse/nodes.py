"""The DICOM nodes PACS-lite knows (RADIOLOGY_DICOM_NODES): who may open an association, from where, as what.

A DICOM caller proves nothing about itself but its calling AE title, which any device can be
set to; so a node is an AE title *and* the address it connects from, and only that pair is let
in, with its role (access/principals.py: a modality may store, a workstation may query and
retrieve). A workstation also names the port its own storage SCP listens on, where C-MOVE
sends the images it asks for.

The list is one environment variable, comma-separated entries of the form

    AE_TITLE@ADDRESS:ROLE[:MOVE_PORT]      e.g. CT_SCANNER@192.168.1.20:modality,RADIANT@192.168.1.30:workstation:11113

with an IPv6 address in brackets ([fd00::5]). Addresses are IP addresses, never names: the
check compares the peer address of the socket, and a name would make it depend on DNS.
A malformed list is refused when the listener starts (ImproperlyConfigured naming the entry).

The demo switch RADIOLOGY_DICOM_DEMO_LOCAL_ROLE lets any AE title calling from this machine's
loopback address in with that role, so `make run` can be tried with storescu on the server
itself; listed nodes keep their own role.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from apps.radiology.access.principals import DicomNodePrincipal, DicomNodeRole

_ENTRY = re.compile(r"^(?P<ae>[^@]+)@(?P<address>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):(?P<role>[a-z]+)(?::(?P<port>[0-9]+))?$")
# PS3.5 AE: at most 16 characters of the default repertoire, no backslash or control characters.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


@dataclass(frozen=True)
class DicomNode:
    """One known DICOM application entity."""

    ae_title: str
    address: str  # normalised (ipaddress), as peer addresses are compared
    role: DicomNodeRole
    move_port: int | None = None

    @property
    def principal(self) -> DicomNodePrincipal:
        return DicomNodePrincipal(ae_title=self.ae_title, role=self.role)


def normalised_address(address: str) -> str:
    """An IP address as compared: IPv4-mapped IPv6 (::ffff:10.0.0.1) is the IPv4 address."""
    parsed = ipaddress.ip_address(address.strip().strip("[]"))
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return str(parsed)


def parse_nodes(text: str, *, setting: str = "RADIOLOGY_DICOM_NODES") -> tuple[DicomNode, ...]:
    """The nodes of a RADIOLOGY_DICOM_NODES value; ImproperlyConfigured naming the first bad entry."""
    nodes: list[DicomNode] = []
    seen: set[tuple[str, str]] = set()
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        nodes.append(_parse_entry(entry, setting))
        key = (nodes[-1].ae_title, nodes[-1].address)
        if key in seen:
            raise ImproperlyConfigured(f"{setting}: {entry!r} lists an AE title and address already listed")
        seen.add(key)
    return tuple(nodes)


def _parse_entry(entry: str, setting: str) -> DicomNode:
    match = _ENTRY.match(entry)
    if match is None:
        raise ImproperlyConfigured(f"{setting}: {entry!r} is not AE_TITLE@ADDRESS:ROLE[:MOVE_PORT]")
    ae_title = match["ae"].strip()
    if not _AE_TITLE.match(ae_title):
        raise ImproperlyConfigured(f"{setting}: {entry!r}: an AE title is 1 to 16 characters, no backslash")
    try:
        address = normalised_address(match["address"])
    except ValueError:
        raise ImproperlyConfigured(f"{setting}: {entry!r}: {match['address']!r} is not an IP address") from None
    try:
        role = DicomNodeRole(match["role"])
    except ValueError:
        choices = " or ".join(role.value for role in DicomNodeRole)
        raise ImproperlyConfigured(f"{setting}: {entry!r}: the role must be {choices}") from None
    port = int(match["port"]) if match["port"] else None
    if port is not None and role != DicomNodeRole.WORKSTATION:
        raise ImproperlyConfigured(f"{setting}: {entry!r}: only a workstation has a C-MOVE port")
    if port is not None and not 1 <= port <= 65535:
        raise ImproperlyConfigured(f"{setting}: {entry!r}: {port} is not a TCP port")
    return DicomNode(ae_title=ae_title, address=address, role=role, move_port=port)


def demo_local_role(value: str, *, setting: str = "RADIOLOGY_DICOM_DEMO_LOCAL_ROLE") -> DicomNodeRole | None:
    """The role the demo switch gives any loopback caller; None when it is off ("")."""
    if not value.strip():
        return None
    try:
        return DicomNodeRole(value.strip())
    except ValueError:
        choices = " or ".join(role.value for role in DicomNodeRole)
        raise ImproperlyConfigured(f"{setting} must be empty, {choices}, not {value!r}") from None


@dataclass(frozen=True)
class NodeList:
    """Who may call: the known nodes, and the demo switch's role for loopback callers."""

    nodes: tuple[DicomNode, ...]
    local_role: DicomNodeRole | None = None

    @classmethod
    def from_settings(cls) -> NodeList:
        """The list in settings, checked: a bad entry stops the listener from starting."""
        return cls(
            nodes=parse_nodes(settings.RADIOLOGY_DICOM_NODES),
            local_role=demo_local_role(settings.RADIOLOGY_DICOM_DEMO_LOCAL_ROLE),
        )

    def known_title(self, ae_title: str) -> bool:
        return any(node.ae_title == ae_title.strip() for node in self.nodes)

    def move_destination(self, ae_title: str) -> DicomNode | None:
        """The node C-MOVE may send to as `ae_title`: a listed one with a MOVE_PORT, else None."""
        return next((node for node in self.nodes if node.ae_title == ae_title and node.move_port), None)

    def node_for(self, ae_title: str, address: str) -> DicomNode | None:
        """The node calling as `ae_title` from `address`, or None: refused at association."""
        title = ae_title.strip()
        try:
            peer = normalised_address(address)
        except ValueError:
            return None
        for node in self.nodes:
            if node.ae_title == title and node.address == peer:
                return node
        if self.local_role is not None and ipaddress.ip_address(peer).is_loopback and _AE_TITLE.match(title):
            return DicomNode(ae_title=title, address=peer, role=self.local_role)
        return None
