# Strategy: the asyncio ttrpc client -- I/O around ClientConnection.
#
# * One asyncio.Protocol per connection. call() encodes the request (ClientConnection
#   allocates ids 1, 3, 5, ...), registers a future under the stream id and writes the
#   frame in one transport.write(), so frames never interleave. data_received() resolves
#   futures as responses arrive, in any order; many calls share one connection.
# * A non-OK status raises TtrpcError(code, message, details); an answer that cannot be
#   read (oversize, undecodable) raises TtrpcError with the status the connection reports.
# * timeout: sent as timeout_nano (so the server runs the handler under that deadline) and
#   enforced locally too. Either way the caller sees TtrpcError(DEADLINE_EXCEEDED); a late
#   response is dropped (ClientConnection.abandon).
# * The connection closing or breaking (EOF, reset, protocol error, close()) fails every
#   pending and later call with ClosedError: TtrpcError(UNAVAILABLE, "ttrpc: closed"),
#   Go ttrpc's ErrClosed; the cause, if any, is chained.
# Behaviour facts from containerd/ttrpc v1.1.1 client.go (read, not copied).
"""asyncio ttrpc client."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Final, Self

from ._connection import ClientConnection
from ._errors import ClosedError, MessageTooLargeError, RemoteProtocolError, TtrpcError
from ._events import ConnectionClosed, ResponseReceived, StreamRejected
from ._messages import Request
from ._status import Code

__all__ = ["Client", "MetadataArg"]

log = logging.getLogger(__name__)

MetadataArg = Mapping[str, str | Sequence[str]]

_UNIX_PREFIX: Final = "unix://"


def _metadata(metadata: MetadataArg | None) -> tuple[tuple[str, str], ...]:
    if not metadata:
        return ()
    pairs: list[tuple[str, str]] = []
    for key, values in metadata.items():
        key = key.lower()
        if isinstance(values, str):
            pairs.append((key, values))
        else:
            pairs.extend((key, value) for value in values)
    return tuple(pairs)


class Client:
    """A ttrpc client on one connection. Make one with connect() or from_socket()."""

    def __init__(self, transport: asyncio.Transport, protocol: _ClientProtocol) -> None:
        """Private: use Client.connect() or Client.from_socket()."""
        self._transport = transport
        self._protocol = protocol

    @classmethod
    async def connect(cls, path: str) -> Self:
        """Connect to a ttrpc server on a unix socket.

        Args:
            path: a socket path, optionally prefixed with ``unix://``; a leading NUL
                byte (``"\\0name"``) names an abstract socket.

        Raises:
            OSError: the connection could not be made.
        """
        if path.startswith(_UNIX_PREFIX):
            path = path[len(_UNIX_PREFIX) :]
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_unix_connection(_ClientProtocol, path)
        assert isinstance(transport, asyncio.Transport)
        return cls(transport, protocol)

    @classmethod
    async def from_socket(cls, sock: socket.socket) -> Self:
        """Use an already connected AF_UNIX stream socket (the client owns it from now on)."""
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_unix_connection(_ClientProtocol, sock=sock)
        assert isinstance(transport, asyncio.Transport)
        return cls(transport, protocol)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """True once the connection is closed or broken; calls then raise ClosedError."""
        return self._protocol.is_closed

    @property
    def pending(self) -> int:
        """Calls waiting for a response."""
        return len(self._protocol.waiters)

    async def call(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        metadata: MetadataArg | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Call ``service``/``method`` with a serialized request; return the serialized reply.

        Args:
            service: e.g. ``containerd.task.v2.Task``.
            method: e.g. ``State``.
            payload: the serialized request message.
            metadata: key -> value or values; keys are lower-cased.
            timeout: seconds; sent as timeout_nano and enforced locally. None: no deadline.

        Raises:
            TtrpcError: the call ended with a non-OK status; DEADLINE_EXCEEDED when the
                timeout passed (locally or on the server); RESOURCE_EXHAUSTED when the
                request is larger than 4 MiB.
            ClosedError: the connection is closed or broke before the answer came.
        """
        protocol = self._protocol
        if protocol.is_closed:
            raise protocol.closed_error()
        timeout_nano = 0
        if timeout is not None:
            if timeout <= 0:
                raise TtrpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded before the call")
            timeout_nano = max(1, int(timeout * 1e9))
        request = Request(service, method, payload, timeout_nano, _metadata(metadata))
        try:
            stream_id, frame = protocol.conn.send(request)
        except MessageTooLargeError as exc:
            raise TtrpcError(Code.RESOURCE_EXHAUSTED, str(exc)) from exc
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        protocol.waiters[stream_id] = future
        try:
            if protocol.paused:
                await protocol.wait_drained()
                if protocol.is_closed:
                    raise protocol.closed_error()
            self._transport.write(frame)
            if timeout is None:
                return await future
            try:
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError as exc:
                raise TtrpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded") from exc
        finally:
            if protocol.waiters.pop(stream_id, None) is not None:
                protocol.conn.abandon(stream_id)

    async def close(self) -> None:
        """Close the connection; pending calls fail with ClosedError at once. Idempotent."""
        self._protocol.shut()
        self._transport.close()
        await self._protocol.wait_lost()


class _ClientProtocol(asyncio.Protocol):
    """The connection's receiving side; owned by one Client."""

    def __init__(self) -> None:
        self.conn = ClientConnection()
        self.waiters: dict[int, asyncio.Future[bytes]] = {}
        self.is_closed = False
        self._cause: BaseException | None = None
        self.paused = False
        self._transport: asyncio.Transport | None = None
        self._drained: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._lost = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        try:
            conn.receive_data(data)
            self._drain_events()
        except RemoteProtocolError as exc:
            log.warning("ttrpc: client connection broken: %s", exc)
            self.shut(exc)
            if self._transport is not None:
                self._transport.abort()

    def eof_received(self) -> bool:
        try:
            self.conn.receive_data(b"")
            self._drain_events()
        except RemoteProtocolError as exc:
            self.shut(exc)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.shut(exc)
        self._transport = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    async def wait_drained(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        await self._drained

    async def wait_lost(self) -> None:
        if self._lost is not None:
            await asyncio.shield(self._lost)

    def _drain_events(self) -> None:
        conn = self.conn
        waiters = self.waiters
        while True:
            event = conn.next_event()
            if type(event) is ResponseReceived:
                future = waiters.pop(event.stream_id, None)
                if future is None or future.done():
                    continue
                status = event.response.status
                if status is None or status.code == 0:
                    future.set_result(event.response.payload)
                else:
                    future.set_exception(TtrpcError(status.code, status.message, status.details))
            elif type(event) is StreamRejected:
                future = waiters.pop(event.stream_id, None)
                if future is not None and not future.done():
                    future.set_exception(TtrpcError(event.code, event.message))
            elif type(event) is ConnectionClosed:
                self.shut(None)
                return
            else:
                return

    def closed_error(self) -> ClosedError:
        """A fresh ClosedError chained to what closed the connection."""
        error = ClosedError()
        error.__cause__ = self._cause
        return error

    def shut(self, cause: BaseException | None = None) -> None:
        """Mark the connection closed and fail every pending call."""
        if not self.is_closed:
            self.is_closed = True
            self._cause = cause
        waiters, self.waiters = self.waiters, {}
        for future in waiters.values():
            if not future.done():
                future.set_exception(self.closed_error())
