# Strategy: everything about "what is allowed when" lives here, as data.
#
# Two tables, in the manner of h11's _state.py (our own code):
#
# CONNECTION_TRANSITIONS: (ConnectionState, ConnectionInput) -> ConnectionState.
#   OPEN --EOF at a frame boundary--> CLOSED;  OPEN --protocol error--> ERROR.
#   ERROR is terminal: receiving fails fast with RemoteProtocolError and sending with
#   LocalProtocolError. CLOSED only means the peer stopped sending; we may still send.
#
# STREAM_TRANSITIONS: role -> (StreamState, StreamInput) -> StreamState, for unary ttrpc
#   streams (one request, one response). A stream's state is derived from ids, so the
#   table never grows with history: ids above the highest one seen are IDLE, ids in the
#   open set are OPEN, every other id is CLOSED (answered, or skipped over -- ttrpc ids
#   must only increase).
#     server: IDLE --recv request--> OPEN --send response--> CLOSED
#     client: IDLE --send request--> OPEN --recv response / abandon--> CLOSED
#   A move missing from the table is refused: remote inputs raise StreamError (INVALID_
#   ARGUMENT with Go ttrpc's text, answered on that stream), local inputs raise
#   LocalProtocolError naming the role, stream, state and input.
#   One rule sits outside the table: a server refuses even ids on requests and data
#   ("StreamID must be odd for client initiated streams"), before any table lookup.
#
# A refused frame still owes the peer an answer on its id: reject() records that, and the
# next SEND_RESPONSE on that id pays the debt (no transition) before the table is used.
#
# Facts: containerd/ttrpc v1.1.1 server.go (odd ids), v1.2 server.go (ids must increase,
# "no longer active" data), PROTOCOL.md (stream states). Nothing here does I/O.
"""Connection and stream state machines for ttrpc, as transition tables."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from ._errors import LocalProtocolError, StreamError
from ._frames import MAX_STREAM_ID
from ._status import Code

__all__ = [
    "CONNECTION_TRANSITIONS",
    "REFUSALS",
    "STREAM_TRANSITIONS",
    "ConnectionInput",
    "ConnectionState",
    "ConnectionStateMachine",
    "Role",
    "StreamInput",
    "StreamState",
    "StreamTable",
]

ODD_IDS_MESSAGE: Final = "StreamID must be odd for client initiated streams"


class _Enum(enum.Enum):
    """Enum hashed by identity (members are singletons compared by identity), sparing the
    per-frame table lookups Enum's Python-level __hash__."""

    __hash__ = object.__hash__


class Role(_Enum):
    """Which end of the connection a table serves."""

    CLIENT = "client"
    SERVER = "server"


class ConnectionState(_Enum):
    """Whole-connection state."""

    OPEN = "open"
    CLOSED = "closed"
    ERROR = "error"


class ConnectionInput(_Enum):
    """Things that happen to a whole connection."""

    EOF = "eof"
    PROTOCOL_ERROR = "protocol error"


CONNECTION_TRANSITIONS: Final[Mapping[tuple[ConnectionState, ConnectionInput], ConnectionState]] = {
    (ConnectionState.OPEN, ConnectionInput.EOF): ConnectionState.CLOSED,
    (ConnectionState.OPEN, ConnectionInput.PROTOCOL_ERROR): ConnectionState.ERROR,
    (ConnectionState.CLOSED, ConnectionInput.PROTOCOL_ERROR): ConnectionState.ERROR,
}


class StreamState(_Enum):
    """State of one stream id."""

    IDLE = "idle"
    OPEN = "open"
    CLOSED = "closed"


class StreamInput(_Enum):
    """Things that happen to a stream; ``remote`` tells whose doing it is."""

    RECV_REQUEST = "receive request"
    RECV_DATA = "receive data"
    RECV_RESPONSE = "receive response"
    SEND_REQUEST = "send request"
    SEND_RESPONSE = "send response"
    ABANDON = "abandon"

    @property
    def remote(self) -> bool:
        """True for inputs caused by the peer."""
        return self in _REMOTE


_REMOTE: Final = frozenset(
    {StreamInput.RECV_REQUEST, StreamInput.RECV_DATA, StreamInput.RECV_RESPONSE}
)

_S, _I = StreamState, StreamInput
STREAM_TRANSITIONS: Final[Mapping[Role, Mapping[tuple[StreamState, StreamInput], StreamState]]] = {
    Role.SERVER: {
        (_S.IDLE, _I.RECV_REQUEST): _S.OPEN,
        (_S.OPEN, _I.SEND_RESPONSE): _S.CLOSED,
    },
    Role.CLIENT: {
        (_S.IDLE, _I.SEND_REQUEST): _S.OPEN,
        (_S.OPEN, _I.RECV_RESPONSE): _S.CLOSED,
        (_S.OPEN, _I.ABANDON): _S.CLOSED,
    },
}

#: Status message for a refused remote input (Go ttrpc's texts where it has one).
REFUSALS: Final[Mapping[StreamInput, str]] = {
    _I.RECV_REQUEST: "StreamID cannot be re-used and must increment",
    _I.RECV_DATA: "StreamID is no longer active",
    _I.RECV_RESPONSE: "no call is waiting on this stream",
}


_OPEN, _IDLE, _CLOSED = StreamState.OPEN, StreamState.IDLE, StreamState.CLOSED
_SEND_RESPONSE = StreamInput.SEND_RESPONSE
_ODD_ONLY: Final = frozenset({StreamInput.RECV_REQUEST, StreamInput.RECV_DATA})


class ConnectionStateMachine:
    """Tracks one connection's state through CONNECTION_TRANSITIONS."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = ConnectionState.OPEN

    def apply(self, event: ConnectionInput) -> ConnectionState:
        """Apply ``event``.

        Raises:
            LocalProtocolError: the table has no such move from the current state.
        """
        try:
            self.state = CONNECTION_TRANSITIONS[self.state, event]
        except KeyError:
            raise LocalProtocolError(
                f"connection: cannot handle {event.value} in state {self.state.value}"
            ) from None
        return self.state


class StreamTable:
    """Per-connection table of stream ids for one role (see the module comment).

    Memory is proportional to the streams awaiting an answer, not to history.
    """

    __slots__ = ("_last", "_open", "_owed", "_transitions", "role")

    def __init__(self, role: Role) -> None:
        self.role = role
        self._transitions = STREAM_TRANSITIONS[role]
        self._last = 0
        self._open: set[int] = set()
        self._owed: dict[int, int] = {}

    @property
    def open_streams(self) -> frozenset[int]:
        """Ids in state OPEN."""
        return frozenset(self._open)

    @property
    def owed(self) -> int:
        """How many refusals are still owed an answer."""
        return sum(self._owed.values())

    def state(self, stream_id: int) -> StreamState:
        """Return the state of ``stream_id``."""
        if stream_id in self._open:
            return _OPEN
        return _IDLE if stream_id > self._last else _CLOSED

    def apply(self, stream_id: int, event: StreamInput) -> StreamState:
        """Apply ``event`` to ``stream_id`` and return the stream's new state.

        Raises:
            StreamError: a remote input the role or table refuses (status to answer with).
            LocalProtocolError: a local input the table refuses.
        """
        if self._owed and event is _SEND_RESPONSE:
            owed = self._owed.get(stream_id)
            if owed:
                if owed == 1:
                    del self._owed[stream_id]
                else:
                    self._owed[stream_id] = owed - 1
                return self.state(stream_id)
        if not stream_id & 1 and self.role is Role.SERVER and event in _ODD_ONLY:
            raise StreamError(stream_id, Code.INVALID_ARGUMENT, ODD_IDS_MESSAGE)
        is_open = stream_id in self._open
        state = _OPEN if is_open else _IDLE if stream_id > self._last else _CLOSED
        new = self._transitions.get((state, event))
        if new is None:
            if event.remote:
                raise StreamError(stream_id, Code.INVALID_ARGUMENT, REFUSALS[event])
            raise LocalProtocolError(
                f"{self.role.value} stream {stream_id}: cannot {event.value} in state {state.value}"
            )
        if new is _OPEN:
            self._open.add(stream_id)
            if stream_id > self._last:
                self._last = stream_id
        elif is_open:
            self._open.discard(stream_id)
        return new

    def allocate(self) -> int:
        """(client) Open the next stream: ids 1, 3, 5, ...

        Raises:
            LocalProtocolError: stream ids are exhausted (2**31 calls on one connection).
        """
        stream_id = self._last + 2 if self._last else 1
        if stream_id > MAX_STREAM_ID:
            raise LocalProtocolError("stream ids exhausted on this connection")
        self.apply(stream_id, StreamInput.SEND_REQUEST)
        return stream_id

    def reject(self, stream_id: int) -> None:
        """Record that a refused frame on ``stream_id`` owes the peer a status response."""
        self._owed[stream_id] = self._owed.get(stream_id, 0) + 1
