"""What each association gets at its start, kept cheap: the shared supported contexts and a reused database connection.

fastpaths/dimse_contexts.py: the listener's supported presentation contexts are frozen and handed
to every association as they are, not deep-copied into each (pynetdicom's default, tens of
milliseconds per association). fastpaths/dimse_db_connections.py: an association's thread takes
over the database connection the previous association left, instead of opening its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, connections, transaction
from pynetdicom import AE, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import CTImageStorage, Verification

from apps.radiology.dimse.listener import build_ae, start_listener, stop_listener
from apps.radiology.dimse.nodes import NodeList, parse_nodes
from apps.radiology.fastpaths import dimse_contexts, dimse_db_connections
from apps.radiology.models import AuditEvent
from apps.radiology.tests.dimse.conftest import MODALITY_AE, TEST_NODES

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def server(settings: Any) -> Iterator[Any]:
    settings.RADIOLOGY_DICOM_NODES = TEST_NODES
    listening = start_listener("127.0.0.1", 0, nodes=NodeList(nodes=parse_nodes(TEST_NODES)))
    try:
        yield listening
    finally:
        stop_listener(listening, grace_seconds=5)


def echo(server: Any) -> None:
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="PACSLITE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assoc.join(timeout=5)  # requestor side finished: the A-RELEASE-RP has arrived


def test_every_association_negotiates_with_the_listeners_own_frozen_contexts(server: Any) -> None:
    seen: list[list[PresentationContext]] = []
    server.bind(evt.EVT_ACCEPTED, lambda event: seen.append(event.assoc.acceptor.supported_contexts))
    echo(server)
    echo(server)

    assert len(seen) == 2
    for contexts in seen:
        assert [id(context) for context in contexts] == [id(context) for context in server.contexts]
    assert all(isinstance(context, dimse_contexts.SharedPresentationContext) for context in server.contexts)
    # The same contexts, with the same transfer syntaxes in the same order of preference, as the AE's.
    assert server.contexts == build_ae().supported_contexts


def test_a_shared_context_cannot_change_and_copies_are_itself() -> None:
    import copy

    original = build_ae().supported_contexts
    shared = dimse_contexts.shared(original)
    ct = next(context for context in shared if context.abstract_syntax == CTImageStorage)

    assert copy.deepcopy(shared)[shared.index(ct)] is ct
    with pytest.raises(AttributeError):
        ct.transfer_syntax = ["1.2.840.10008.1.2"]
    with pytest.raises(AttributeError):
        ct.add_transfer_syntax("1.2.840.10008.1.2.5")
    with pytest.raises(AttributeError):
        ct.scp_role = False
    assert ct == next(context for context in original if context.abstract_syntax == CTImageStorage)


def test_the_next_association_takes_over_the_database_connection_the_last_one_left(server: Any) -> None:
    used: list[tuple[Any, int]] = []  # (connection wrapper, thread) at each association's start; kept alive
    server.bind(evt.EVT_ACCEPTED, lambda event: used.append((connections["default"], threading.get_ident())))
    echo(server)
    echo(server)

    assert len(used) == 2
    assert used[0][1] != used[1][1]  # two association threads
    assert used[0][0] is used[1][0]  # one connection
    assert AuditEvent.objects.filter(channel="dicom", method="ASSOCIATE", status_code=200).count() == 2
    assert dimse_db_connections.parked_count() == 1


def test_the_listeners_stop_closes_the_parked_connections(settings: Any) -> None:
    settings.RADIOLOGY_DICOM_NODES = TEST_NODES
    listening = start_listener("127.0.0.1", 0, nodes=NodeList(nodes=parse_nodes(TEST_NODES)))
    echo(listening)
    assert dimse_db_connections.parked_count() == 1
    stop_listener(listening, grace_seconds=5)
    assert dimse_db_connections.parked_count() == 0


def test_a_parked_connection_serves_the_thread_that_adopts_it() -> None:
    answers: list[Any] = []

    def first() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        answers.append(connection.connection)  # kept alive, so no other object can take its place
        dimse_db_connections.park()

    def second() -> None:
        dimse_db_connections.adopt()
        with connection.cursor() as cursor:  # would raise if the wrapper still belonged to the first thread
            cursor.execute("SELECT 2")
            answers.append(cursor.fetchone()[0])
        answers.append(connection.connection)
        connections.close_all()

    for target in (first, second):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    assert answers[1] == 2
    assert answers[0] is answers[2]  # the same database connection
    assert dimse_db_connections.parked_count() == 0


def test_a_connection_in_a_transaction_or_after_an_error_is_closed_not_parked() -> None:
    """Closed, not handed on: it stays this thread's (an in-memory SQLite test database ignores the close)."""
    kept: list[bool] = []

    def in_transaction() -> None:
        with transaction.atomic():
            AuditEvent.objects.exists()
            before = connections["default"]
            dimse_db_connections.park()
            kept.append(connections["default"] is before)

    def after_error() -> None:
        AuditEvent.objects.exists()
        connection.errors_occurred = True
        before = connections["default"]
        dimse_db_connections.park()
        kept.append(connections["default"] is before)
        connection.errors_occurred = False
        connections.close_all()

    for target in (in_transaction, after_error):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    assert kept == [True, True]
    assert dimse_db_connections.parked_count() == 0
