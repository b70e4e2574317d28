"""A DICOM listener for one test: started in this process on a free port, with the test's node list.

The listener's associations run in their own threads, with their own database connections,
so its tests use the transactional database (django_db(transaction=True)).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from apps.radiology.dimse.listener import start_listener, stop_listener
from apps.radiology.dimse.nodes import NodeList, demo_local_role, parse_nodes

MODALITY_AE = "CT_SCANNER"
WORKSTATION_AE = "RADIANT_WS"
# Both call from this machine: the tests send from loopback only.
TEST_NODES = f"{MODALITY_AE}@127.0.0.1:modality,{WORKSTATION_AE}@127.0.0.1:workstation:11113"


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    ae_title: str


StartListener = Callable[..., Listener]


@pytest.fixture
def start_dicom_listener(transactional_db: None, settings: Any) -> Iterator[StartListener]:
    """Factory: start the listener (nodes: a RADIOLOGY_DICOM_NODES value); stopped after the test."""
    servers: list[Any] = []

    def _start(nodes: str = TEST_NODES, *, local_role: str = "") -> Listener:
        settings.RADIOLOGY_DICOM_NODES = nodes
        settings.RADIOLOGY_DICOM_DEMO_LOCAL_ROLE = local_role
        node_list = NodeList(nodes=parse_nodes(nodes), local_role=demo_local_role(local_role))
        server = start_listener("127.0.0.1", 0, nodes=node_list)
        servers.append(server)
        return Listener("127.0.0.1", server.server_address[1], settings.RADIOLOGY_DICOM_AE_TITLE)

    yield _start
    for server in servers:
        stop_listener(server, grace_seconds=5)


@pytest.fixture
def dicom_listener(start_dicom_listener: StartListener) -> Listener:
    return start_dicom_listener()
