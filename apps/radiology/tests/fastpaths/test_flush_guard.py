"""fastpaths/flush_guard.py: two statements around every flush list, on one connection, for a block.

The permit it carries is checked end to end (SQLite and PostgreSQL, a failing flush, another
connection) by the flush tests of tests/access/test_audit.py; these check the wrapping itself.
"""

from __future__ import annotations

import pytest
from django.db import DEFAULT_DB_ALIAS, connections

from apps.radiology.fastpaths.flush_guard import statements_around_flush


class RecordingFlush:
    """Stands in for execute_sql_flush: records each statement list it is handed."""

    def __init__(self) -> None:
        self.lists: list[list[str]] = []

    def __call__(self, sql_list: list[str]) -> None:
        self.lists.append(list(sql_list))


def test_inside_the_block_each_flush_list_runs_between_the_two_statements() -> None:
    connection = connections[DEFAULT_DB_ALIAS]
    recorder = RecordingFlush()
    setattr(connection.ops, "execute_sql_flush", recorder)  # noqa: B010 (an instance attribute, as a spy)
    try:
        with statements_around_flush(connection, first="OPEN", last="CLOSE"):
            connection.ops.execute_sql_flush(["DELETE FROM a", "DELETE FROM b"])
            connection.ops.execute_sql_flush([])  # nothing to flush: nothing added
        connection.ops.execute_sql_flush(["DELETE FROM c"])  # after the block: as it was

        assert recorder.lists == [["OPEN", "DELETE FROM a", "DELETE FROM b", "CLOSE"], [], ["DELETE FROM c"]]
        assert vars(connection.ops)["execute_sql_flush"] is recorder
    finally:
        del connection.ops.execute_sql_flush


def test_the_method_is_back_as_it_was_after_the_block_even_on_an_error() -> None:
    connection = connections[DEFAULT_DB_ALIAS]
    method = type(connection.ops).execute_sql_flush

    with pytest.raises(RuntimeError), statements_around_flush(connection, first="OPEN", last="CLOSE"):
        assert "execute_sql_flush" in vars(connection.ops)
        raise RuntimeError("the flush failed")

    assert "execute_sql_flush" not in vars(connection.ops)
    assert connection.ops.execute_sql_flush.__func__ is method


def test_only_the_given_connections_flush_is_wrapped() -> None:
    connection = connections[DEFAULT_DB_ALIAS]
    other = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        with statements_around_flush(connection, first="OPEN", last="CLOSE"):
            assert "execute_sql_flush" not in vars(other.ops)
    finally:
        other.close()
