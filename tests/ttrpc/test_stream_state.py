"""The transition tables in shim.ttrpc._state, tested exhaustively."""

from __future__ import annotations

import itertools

import pytest

from shim.ttrpc import Code, LocalProtocolError
from shim.ttrpc._errors import StreamError
from shim.ttrpc._state import (
    CONNECTION_TRANSITIONS,
    REFUSALS,
    STREAM_TRANSITIONS,
    ConnectionInput,
    ConnectionState,
    ConnectionStateMachine,
    Role,
    StreamInput,
    StreamState,
    StreamTable,
)

_OPENER = {Role.SERVER: StreamInput.RECV_REQUEST, Role.CLIENT: StreamInput.SEND_REQUEST}
_CLOSER = {Role.SERVER: StreamInput.SEND_RESPONSE, Role.CLIENT: StreamInput.RECV_RESPONSE}


def _table_with(role: Role, state: StreamState) -> tuple[StreamTable, int]:
    """A table plus an odd stream id that is in ``state``."""
    table = StreamTable(role)
    if role is Role.CLIENT:
        opened = table.allocate()
    else:
        opened = 1
        table.apply(opened, StreamInput.RECV_REQUEST)
    if state is StreamState.IDLE:
        return table, opened + 2
    if state is StreamState.CLOSED:
        table.apply(opened, _CLOSER[role])
    return table, opened


@pytest.mark.parametrize(
    ("role", "state", "event"),
    list(itertools.product(Role, StreamState, StreamInput)),
    ids=lambda v: v.name,
)
def test_stream_matrix(role: Role, state: StreamState, event: StreamInput) -> None:
    table, stream_id = _table_with(role, state)
    assert table.state(stream_id) is state
    target = STREAM_TRANSITIONS[role].get((state, event))
    if target is not None:
        assert table.apply(stream_id, event) is target
        assert table.state(stream_id) is target
    elif event.remote:
        with pytest.raises(StreamError) as info:
            table.apply(stream_id, event)
        assert info.value.code is Code.INVALID_ARGUMENT
        assert info.value.message == REFUSALS[event]
        assert info.value.stream_id == stream_id
        assert table.state(stream_id) is state
    else:
        with pytest.raises(LocalProtocolError, match=f"stream {stream_id}.*{state.value}"):
            table.apply(stream_id, event)
        assert table.state(stream_id) is state


@pytest.mark.parametrize("event", [StreamInput.RECV_REQUEST, StreamInput.RECV_DATA])
@pytest.mark.parametrize("stream_id", [0, 2, 4, 0xFFFFFFFE])
def test_server_refuses_even_ids(event: StreamInput, stream_id: int) -> None:
    table = StreamTable(Role.SERVER)
    with pytest.raises(StreamError, match="StreamID must be odd for client initiated streams"):
        table.apply(stream_id, event)


def test_server_ids_must_increase() -> None:
    table = StreamTable(Role.SERVER)
    table.apply(5, StreamInput.RECV_REQUEST)
    for stale in (1, 3, 5):
        with pytest.raises(StreamError, match="cannot be re-used and must increment"):
            table.apply(stale, StreamInput.RECV_REQUEST)
    assert table.state(3) is StreamState.CLOSED  # skipped ids count as used
    table.apply(7, StreamInput.RECV_REQUEST)
    assert table.open_streams == {5, 7}


def test_refusal_owes_one_answer_per_refusal() -> None:
    table = StreamTable(Role.SERVER)
    table.apply(1, StreamInput.RECV_REQUEST)
    table.reject(1)  # e.g. id 1 re-used while still open: two answers owed on id 1
    table.reject(2)
    assert table.owed == 2
    table.apply(2, StreamInput.SEND_RESPONSE)
    table.apply(1, StreamInput.SEND_RESPONSE)
    table.apply(1, StreamInput.SEND_RESPONSE)
    assert table.owed == 0
    assert table.state(1) is StreamState.CLOSED
    with pytest.raises(LocalProtocolError):
        table.apply(1, StreamInput.SEND_RESPONSE)


def test_client_allocates_odd_increasing_ids() -> None:
    table = StreamTable(Role.CLIENT)
    assert [table.allocate() for _ in range(4)] == [1, 3, 5, 7]
    assert table.open_streams == {1, 3, 5, 7}


def test_client_ids_run_out() -> None:
    table = StreamTable(Role.CLIENT)
    table._last = 0xFFFFFFFF  # the last odd u32 has been used
    with pytest.raises(LocalProtocolError, match="exhausted"):
        table.allocate()


@pytest.mark.parametrize(
    ("state", "event"), list(itertools.product(ConnectionState, ConnectionInput))
)
def test_connection_matrix(state: ConnectionState, event: ConnectionInput) -> None:
    machine = ConnectionStateMachine()
    machine.state = state
    target = CONNECTION_TRANSITIONS.get((state, event))
    if target is None:
        with pytest.raises(LocalProtocolError, match=state.value):
            machine.apply(event)
        assert machine.state is state
    else:
        assert machine.apply(event) is target
