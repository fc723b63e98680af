# Strategy: sans-IO ttrpc connections (after h11's Connection; our own code).
#
# A connection turns received bytes into events and messages to send into bytes. It owns
# no socket, loop or clock:
#     conn.receive_data(chunk)        # b"" means EOF
#     while (event := conn.next_event()) is not NEED_DATA: ...
#     transport.write(conn.send(...))
# Incoming bytes go into one bytearray; whole frames are cut off its front (CPython makes
# front deletion cheap). Each frame's data is copied out once, as bytes (small frames by
# slicing, which copies twice but costs less than making a memoryview).
#
# Faults come in two levels (Go ttrpc v1.1.1 channel.go/server.go behaviour):
#   stream level -- answered on that stream, the connection goes on:
#     * data length > MAX_DATA: seen as soon as the header arrives; the declared bytes are
#       discarded as they come in (never buffered) and StreamRejected(RESOURCE_EXHAUSTED)
#       is reported at once;
#     * (server) even stream id, id re-used or not increasing, Data frame (no streaming
#       here, so never on an active stream), request that does not decode:
#       StreamRejected(INVALID_ARGUMENT).
#   connection level -- RemoteProtocolError, the connection enters ERROR, later calls fail
#     fast: EOF inside a frame (header, data, or the discarded bytes of an oversized frame).
# Frames of any other type (and responses sent to a server) are skipped, as Go 1.1.1 does,
# for forward compatibility; so are responses for which no call is waiting (client).
"""Sans-IO ttrpc connections: ServerConnection and ClientConnection."""

from __future__ import annotations

from typing import ClassVar, Literal

from ._errors import (
    DecodeError,
    LocalProtocolError,
    MessageTooLargeError,
    RemoteProtocolError,
    StreamError,
)
from ._events import (
    NEED_DATA,
    ConnectionClosed,
    Event,
    Need,
    RequestReceived,
    ResponseReceived,
    StreamRejected,
)
from ._frames import HEADER, HEADER_SIZE, MAX_DATA, MessageType
from ._messages import Request, Response
from ._state import (
    ConnectionInput,
    ConnectionState,
    ConnectionStateMachine,
    Role,
    StreamInput,
    StreamState,
    StreamTable,
)
from ._status import Code
from ._wire import decode_request, decode_response, encode_request, encode_response

__all__ = ["ClientConnection", "ServerConnection"]

_REQUEST = MessageType.REQUEST.value
_RESPONSE = MessageType.RESPONSE.value
_DATA = MessageType.DATA.value
_CLOSED = ConnectionClosed()
#: Frames from this size on are copied out of the receive buffer through a memoryview.
_COPY_ONCE = 64 * 1024


class _Connection:
    """What both roles share: the receive buffer, framing and the connection state."""

    role: ClassVar[Role]
    __slots__ = ("_buf", "_discard", "_eof", "_machine", "_streams", "frames_ignored")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._discard = 0
        self._eof = False
        self._machine = ConnectionStateMachine()
        self._streams = StreamTable(self.role)
        #: Frames skipped without an event (unknown type, no waiting call, ...).
        self.frames_ignored = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events (never holds discarded bytes)."""
        return len(self._buf)

    @property
    def state(self) -> ConnectionState:
        """OPEN, CLOSED (peer sent EOF at a frame boundary) or ERROR."""
        return self._machine.state

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes received from the peer (copied: the caller may reuse its buffer).

        Args:
            data: the bytes, in order; empty means the peer closed its end (EOF).

        Raises:
            RemoteProtocolError: the connection is in ERROR.
            LocalProtocolError: data fed after EOF.
        """
        if self._machine.state is ConnectionState.ERROR:
            raise RemoteProtocolError("connection is in ERROR state")
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("data received after EOF")
        if self._discard:
            skipped = min(self._discard, len(data))
            self._discard -= skipped
            if skipped == len(data):
                return
            data = data[skipped:]
        self._buf += data

    def next_event(self) -> Event | Literal[Need.DATA]:
        """Return the next event, or NEED_DATA if no complete event is buffered.

        After EOF at a frame boundary it returns ConnectionClosed (every time).

        Raises:
            RemoteProtocolError: the peer broke the protocol (EOF inside a frame), now or
                earlier. The connection is in ERROR afterwards and stays there.
        """
        if self._machine.state is ConnectionState.ERROR:
            raise RemoteProtocolError("connection is in ERROR state")
        buf = self._buf
        while True:
            if self._discard:
                if self._eof:
                    self._fail(f"EOF while discarding an oversized frame ({self._discard} left)")
                return NEED_DATA
            size = len(buf)
            if size < HEADER_SIZE:
                if not self._eof:
                    return NEED_DATA
                if size:
                    self._fail("EOF inside a frame header")
                if self._machine.state is ConnectionState.OPEN:
                    self._machine.apply(ConnectionInput.EOF)
                return _CLOSED
            length, stream_id, mtype, flags = HEADER.unpack_from(buf)
            if length > MAX_DATA:
                present = min(size - HEADER_SIZE, length)
                del buf[: HEADER_SIZE + present]
                self._discard = length - present
                event = self._oversized(stream_id, length)
            else:
                end = HEADER_SIZE + length
                if size < end:
                    if self._eof:
                        self._fail(f"EOF inside a frame ({end - size} bytes missing)")
                    return NEED_DATA
                if length < _COPY_ONCE:
                    data = bytes(buf[HEADER_SIZE:end])
                else:  # one copy, not two (a bytearray's slice is a copy already)
                    with memoryview(buf) as view:
                        data = view[HEADER_SIZE:end].tobytes()
                del buf[:end]
                event = self._frame(stream_id, mtype, flags, data)
            if event is not None:
                return event
            self.frames_ignored += 1

    def _fail(self, message: str) -> None:
        self._machine.apply(ConnectionInput.PROTOCOL_ERROR)
        self._buf.clear()
        raise RemoteProtocolError(message)

    def _check_can_send(self) -> None:
        if self._machine.state is ConnectionState.ERROR:
            raise LocalProtocolError("cannot send: connection is in ERROR state")

    def _oversized(self, stream_id: int, length: int) -> Event | None:
        raise NotImplementedError

    def _frame(self, stream_id: int, mtype: int, flags: int, data: bytes) -> Event | None:
        raise NotImplementedError


def _too_large(length: int) -> str:
    return f"message length {length} exceed maximum message size of {MAX_DATA}"


class ServerConnection(_Connection):
    """The accepting end: receives requests, sends responses.

    Events: RequestReceived, StreamRejected, ConnectionClosed. Every RequestReceived and
    every StreamRejected must be answered with exactly one send() on its stream id.
    """

    role = Role.SERVER
    __slots__ = ()

    @property
    def awaiting_response(self) -> int:
        """Streams owed a response (open requests plus refusals not yet answered)."""
        return len(self._streams.open_streams) + self._streams.owed

    def send(self, stream_id: int, response: Response) -> bytes:
        """Return the frame answering ``stream_id`` with ``response``.

        Raises:
            MessageTooLargeError: the encoded response exceeds MAX_DATA; the stream still
                awaits an answer (send a smaller one, e.g. a RESOURCE_EXHAUSTED status).
            LocalProtocolError: no answer is owed on ``stream_id``, the response cannot
                be encoded, or the connection is in ERROR.
        """
        self._check_can_send()
        data = encode_response(response)
        if len(data) > MAX_DATA:
            raise MessageTooLargeError(f"response on stream {stream_id}: {_too_large(len(data))}")
        self._streams.apply(stream_id, StreamInput.SEND_RESPONSE)
        return HEADER.pack(len(data), stream_id, _RESPONSE, 0) + data

    def _refuse(self, error: StreamError) -> StreamRejected:
        self._streams.reject(error.stream_id)
        return StreamRejected(error.stream_id, error.code, error.message)

    def _oversized(self, stream_id: int, length: int) -> Event | None:
        self._streams.reject(stream_id)
        return StreamRejected(stream_id, Code.RESOURCE_EXHAUSTED, _too_large(length))

    def _frame(self, stream_id: int, mtype: int, flags: int, data: bytes) -> Event | None:
        if mtype == _REQUEST:
            try:
                self._streams.apply(stream_id, StreamInput.RECV_REQUEST)
            except StreamError as exc:
                return self._refuse(exc)
            try:
                request = decode_request(data)
            except DecodeError as exc:
                # The stream is open now; this answer closes it (INVALID_ARGUMENT, or
                # RESOURCE_EXHAUSTED for an envelope over the decoder's work bound).
                return StreamRejected(stream_id, exc.code, f"unmarshal request error: {exc}")
            return RequestReceived(stream_id, request)
        if mtype == _DATA:
            try:
                self._streams.apply(stream_id, StreamInput.RECV_DATA)
            except StreamError as exc:
                return self._refuse(exc)
        return None


class ClientConnection(_Connection):
    """The connecting end: sends requests, receives responses.

    Events: ResponseReceived, StreamRejected (the answer to a pending call could not be
    read; fail that call with the status), ConnectionClosed. Stream ids are allocated
    1, 3, 5, ...; a response for which no call is waiting is dropped.
    """

    role = Role.CLIENT
    __slots__ = ()

    @property
    def pending(self) -> frozenset[int]:
        """Stream ids of calls still waiting for their response."""
        return self._streams.open_streams

    def send(self, request: Request) -> tuple[int, bytes]:
        """Start a call; return its stream id and the frame to write.

        Raises:
            MessageTooLargeError: the encoded request exceeds MAX_DATA (nothing recorded).
            LocalProtocolError: the request cannot be encoded, stream ids are exhausted,
                or the connection is in ERROR.
        """
        self._check_can_send()
        data = encode_request(request)
        if len(data) > MAX_DATA:
            raise MessageTooLargeError(f"request: {_too_large(len(data))}")
        stream_id = self._streams.allocate()
        return stream_id, HEADER.pack(len(data), stream_id, _REQUEST, 0) + data

    def abandon(self, stream_id: int) -> None:
        """Forget a pending call (e.g. it timed out); its late response will be dropped."""
        if self._streams.state(stream_id) is StreamState.OPEN:
            self._streams.apply(stream_id, StreamInput.ABANDON)

    def _take(self, stream_id: int) -> bool:
        if self._streams.state(stream_id) is not StreamState.OPEN:
            return False
        self._streams.apply(stream_id, StreamInput.RECV_RESPONSE)
        return True

    def _oversized(self, stream_id: int, length: int) -> Event | None:
        if not self._take(stream_id):
            return None
        return StreamRejected(stream_id, Code.RESOURCE_EXHAUSTED, _too_large(length))

    def _frame(self, stream_id: int, mtype: int, flags: int, data: bytes) -> Event | None:
        if mtype != _RESPONSE or not self._take(stream_id):
            return None
        try:
            response = decode_response(data)
        except DecodeError as exc:
            return StreamRejected(stream_id, Code.INTERNAL, f"unmarshal response error: {exc}")
        return ResponseReceived(stream_id, response)
