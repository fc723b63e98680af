# Strategy: what a connection reports, as values.
#
# ServerConnection.next_event() yields RequestReceived, StreamRejected and ConnectionClosed;
# ClientConnection.next_event() yields ResponseReceived, StreamRejected and
# ConnectionClosed. Both return NEED_DATA when the buffered bytes hold no complete event.
# Events are frozen, slotted dataclasses; NEED_DATA is an Enum member (not a sentinel class).
"""Events produced by ServerConnection and ClientConnection."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Literal

from ._messages import Request, Response

__all__ = [
    "NEED_DATA",
    "ConnectionClosed",
    "Event",
    "Need",
    "RequestReceived",
    "ResponseReceived",
    "StreamRejected",
]


class Need(enum.Enum):
    """Marker returned by next_event() when more bytes are needed."""

    DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by next_event() when no complete event is buffered yet.
NEED_DATA: Final[Literal[Need.DATA]] = Need.DATA


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """(server) A well-formed request opened stream ``stream_id``; answer it exactly once."""

    stream_id: int
    request: Request


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """(client) The answer to the call on ``stream_id`` arrived."""

    stream_id: int
    response: Response


@dataclass(frozen=True, slots=True)
class StreamRejected:
    """A frame on ``stream_id`` was refused with status ``code``/``message``.

    Server side: the peer sent a bad frame (oversize, even or reused stream id, an
    undecodable request, data on a stream that isn't active). The server must send a
    Response carrying this status on ``stream_id``; the connection goes on.

    Client side: the answer to the pending call on ``stream_id`` could not be read
    (oversize or undecodable); that call fails with this status.
    """

    stream_id: int
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the connection cleanly, at a frame boundary."""


Event = RequestReceived | ResponseReceived | StreamRejected | ConnectionClosed
