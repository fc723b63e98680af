# Strategy: errors typed by whose fault they are (after h11's _util.py, in our own words).
#
# ProtocolError      -- base for "the bytes on this connection are wrong".
#   LocalProtocolError  -- our side misused the API (e.g. a response for a stream that
#                          is not waiting for one).
#     MessageTooLargeError -- a message to send does not fit in MAX_DATA.
#   RemoteProtocolError -- the peer broke the protocol. Raised by the connection it is a
#                          connection-level fault: the connection is in ERROR and later
#                          calls fail fast.
#     DecodeError       -- a protobuf message does not decode (stream-level: the
#                          connection turns it into a rejection of that stream).
#       EnvelopeTooComplex -- a Request holds more fields than the decoder will read
#                          (RESOURCE_EXHAUSTED on that stream).
#     StreamError       -- a stream-level fault carrying the status to answer with.
# TtrpcError         -- not a protocol fault: a call ended with a non-OK status. The client
#                       raises it; handlers may raise it to pick the status themselves.
#   ClosedError      -- the connection went away before the call was answered
#                       (ttrpc's ErrClosed, "ttrpc: closed"), code UNAVAILABLE.
"""Typed errors of the ttrpc package."""

from __future__ import annotations

from collections.abc import Sequence

from ._status import Code, to_code

__all__ = [
    "ClosedError",
    "DecodeError",
    "EnvelopeTooComplex",
    "LocalProtocolError",
    "MessageTooLargeError",
    "ProtocolError",
    "RemoteProtocolError",
    "StreamError",
    "TtrpcError",
]


class ProtocolError(Exception):
    """Base class for protocol faults.

    Attributes:
        code: the status code that best describes the fault, as a hint for whoever
            reports it to the peer.
    """

    code: Code = Code.INTERNAL


class LocalProtocolError(ProtocolError):
    """Our side tried to do something the protocol does not allow."""

    code = Code.INTERNAL


class MessageTooLargeError(LocalProtocolError):
    """A message to send is longer than MAX_DATA; nothing was sent or recorded."""

    code = Code.RESOURCE_EXHAUSTED


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""

    code = Code.INVALID_ARGUMENT


class DecodeError(RemoteProtocolError):
    """A protobuf message (ttrpc envelope) is malformed."""

    code = Code.INVALID_ARGUMENT


class EnvelopeTooComplex(DecodeError):
    """A Request envelope holds more fields than the decoder's work bound allows."""

    code = Code.RESOURCE_EXHAUSTED


class StreamError(RemoteProtocolError):
    """A fault confined to one stream; the peer is answered on that stream.

    Attributes:
        stream_id: the offending stream.
        code: the status code to answer with.
        message: the status message to answer with.
    """

    def __init__(self, stream_id: int, code: Code, message: str) -> None:
        super().__init__(f"stream {stream_id}: {message}")
        self.stream_id = stream_id
        self.code = code
        self.message = message


class TtrpcError(Exception):
    """A call that ended with a non-OK status.

    Args:
        code: the status code (a Code, or an int for codes outside the known set).
        message: the status message.
        details: the status details, each a serialized google.protobuf.Any.
    """

    def __init__(self, code: int, message: str = "", details: Sequence[bytes] = ()) -> None:
        super().__init__(code, message)
        self.code: int = to_code(code)
        self.message = message
        self.details: tuple[bytes, ...] = tuple(details)

    def __str__(self) -> str:
        name = self.code.name if isinstance(self.code, Code) else str(self.code)
        return f"ttrpc: {name}: {self.message}" if self.message else f"ttrpc: {name}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class ClosedError(TtrpcError):
    """The connection closed (or broke) before the call was answered.

    Always code UNAVAILABLE, message "ttrpc: closed" (Go ttrpc's ErrClosed text). The
    underlying cause, if any, is chained as ``__cause__``.
    """

    def __init__(self, message: str = "ttrpc: closed") -> None:
        super().__init__(Code.UNAVAILABLE, message)

    def __str__(self) -> str:
        return self.message
