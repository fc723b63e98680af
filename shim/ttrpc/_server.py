# Strategy: the asyncio ttrpc server -- I/O around ServerConnection, nothing protocol-wise.
#
# * One asyncio.BufferedProtocol per accepted connection (not streams: no reader task, no
#   per-frame await). Every connection reads into one buffer the server shares (the loop
#   hands the bytes on before its next read, so nothing is allocated per read), at most
#   READ_SIZE bytes per read, and feeds them to its sans-IO ServerConnection, whose events
#   it then handles: RequestReceived starts one task per request (Wait blocks while
#   State/Kill go on, as Go ttrpc runs a goroutine per request); StreamRejected is answered
#   at once.
# * Fair between connections: a connection handles at most EVENTS_PER_TURN events per loop
#   turn. If more may be buffered it stops reading and carries on in a later turn
#   (loop.call_soon), after every other ready connection and task had theirs; it reads
#   again once its buffer holds no whole frame. A client flooding one connection with
#   frames thus delays another connection's request by a few events' work, not by its
#   whole backlog, and what it has sent stays in the kernel's socket buffer, not ours.
# * One writer: every frame goes out in a single transport.write() from the loop thread,
#   so frames never interleave. When the transport asks us to pause writing we also stop
#   reading, and handler tasks wait before writing, so neither side buffers without bound.
# * A request with timeout_nano > 0 runs under asyncio.timeout_at(deadline).
# * Errors are mapped once, by the error mapper (default_error_mapper unless given). A
#   success is status OK + payload; an error is a status and no payload (Go's behaviour).
# * Unknown service/method: UNIMPLEMENTED "service X" / "method X" (Go ttrpc's texts).
# * Client gone mid-request: the handler runs to completion, its response is dropped.
#   EOF from the client closes the connection at once, as Go's server does.
# * Shutdown: close() stops accepting and closes each connection once it has no request in
#   flight (Go's Shutdown); abort() also cancels every handler and drops every connection
#   (Go's Close). wait_closed() returns when listeners, connections and handlers are gone.
#   A handler cancelled by abort() sends nothing.
# * Optional peer check (require_same_user): SO_PEERCRED uid and gid must equal our euid and
#   egid, as containerd's shims do; otherwise the connection is dropped.
# Behaviour facts from containerd/ttrpc v1.1.1 server.go and services.go (read, not copied).
"""asyncio ttrpc server."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from ._connection import ServerConnection
from ._errors import MessageTooLargeError, RemoteProtocolError, TtrpcError
from ._events import RequestReceived, StreamRejected
from ._messages import Request, Response, Status
from ._status import Code

__all__ = [
    "EVENTS_PER_TURN",
    "NAMESPACE_KEY",
    "READ_SIZE",
    "ErrorMapper",
    "Handler",
    "RequestContext",
    "Server",
    "default_error_mapper",
]

log = logging.getLogger(__name__)

#: Metadata key containerd uses to pass the namespace over ttrpc.
NAMESPACE_KEY: Final = "containerd-namespace-ttrpc"

_EMPTY_METADATA: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({})
_OK: Final = Status()
_PEERCRED: Final = struct.Struct("3i")

#: Most bytes one read takes from a connection.
READ_SIZE: Final = 64 * 1024
#: Most events (requests and refusals) one connection handles per event-loop turn.
EVENTS_PER_TURN: Final = 8


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a handler knows about its call.

    Attributes:
        service: the service name from the request.
        method: the method name from the request.
        metadata: request metadata; keys lower-cased, each with all its values in order.
        deadline: when the caller stops waiting, in the event loop's clock
            (``loop.time()``, i.e. time.monotonic()); None if the caller set no timeout.
    """

    service: str
    method: str
    metadata: Mapping[str, tuple[str, ...]]
    deadline: float | None

    def namespace(self) -> str:
        """The containerd namespace (metadata ``containerd-namespace-ttrpc``), or ""."""
        values = self.metadata.get(NAMESPACE_KEY)
        return values[0] if values else ""


Handler = Callable[[RequestContext, bytes], Awaitable[bytes]]
ErrorMapper = Callable[[BaseException], Status]


def default_error_mapper(exc: BaseException) -> Status:
    """Map a handler's exception to a status.

    TtrpcError -> its own code, message and details; TimeoutError -> DEADLINE_EXCEEDED;
    asyncio.CancelledError -> CANCELLED; anything else -> UNKNOWN with ``str(exc)``.
    """
    if isinstance(exc, TtrpcError):
        return Status(exc.code, exc.message, exc.details)
    if isinstance(exc, TimeoutError):
        return Status(Code.DEADLINE_EXCEEDED, str(exc) or "deadline exceeded")
    if isinstance(exc, asyncio.CancelledError):
        return Status(Code.CANCELLED, str(exc) or "cancelled")
    return Status(Code.UNKNOWN, str(exc) or type(exc).__name__)


def _metadata(pairs: tuple[tuple[str, str], ...]) -> Mapping[str, tuple[str, ...]]:
    if not pairs:
        return _EMPTY_METADATA
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:  # linear: a repeated key appends, it does not copy
        grouped.setdefault(key.lower(), []).append(value)
    return MappingProxyType({key: tuple(values) for key, values in grouped.items()})


class Server:
    """A ttrpc server over unix sockets.

    Args:
        error_mapper: turns a handler's exception into a Status; default_error_mapper if
            None. If the mapper itself fails the status is UNKNOWN.
        require_same_user: drop connections whose peer uid/gid differ from our euid/egid.
        on_connection_closed: called (on the loop, must not block) whenever a connection
            is gone.
    """

    def __init__(
        self,
        error_mapper: ErrorMapper | None = None,
        *,
        require_same_user: bool = False,
        on_connection_closed: Callable[[], None] | None = None,
    ) -> None:
        self._map_error: ErrorMapper = error_mapper or default_error_mapper
        self._require_same_user = require_same_user
        self._on_connection_closed = on_connection_closed
        self._services: dict[str, dict[str, Handler]] = {}
        self._listeners: set[asyncio.Server] = set()
        self._connections: set[_ServerProtocol] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        # Every connection reads into this; its bytes are copied out before the next read.
        self._read_buffer = memoryview(bytearray(READ_SIZE))

    # ------------------------------------------------------------------ public API

    def register(self, service: str, methods: Mapping[str, Handler]) -> None:
        """Serve ``methods`` (method name -> handler) under ``service``.

        Raises:
            ValueError: the service is already registered.
        """
        if service in self._services:
            raise ValueError(f"duplicate service {service} registered")
        self._services[service] = dict(methods)

    async def serve(self, listener: socket.socket) -> None:
        """Accept connections on a listening (or bound) AF_UNIX socket until close().

        The server owns the socket from here on and closes it when it stops accepting
        (it does not unlink the path). Each connection is served concurrently, each
        request in its own task. Returns once the listener is closed.
        """
        if self._closing:
            listener.close()
            return
        loop = asyncio.get_running_loop()
        listening = await loop.create_unix_server(lambda: _ServerProtocol(self), sock=listener)
        self._listeners.add(listening)
        try:
            await self._stop.wait()
        finally:
            listening.close()
            self._listeners.discard(listening)
            self._changed.set()

    def close(self) -> None:
        """Stop accepting; close each connection as soon as it has no request in flight.

        Requests that arrive meanwhile on a still-open connection are served. Idempotent.
        """
        self._closing = True
        self._stop.set()
        for listening in list(self._listeners):
            listening.close()
        for conn in list(self._connections):
            conn.close_if_idle()
        self._changed.set()

    def abort(self) -> None:
        """close(), and also cancel every handler and drop every connection now."""
        self.close()
        for task in list(self._tasks):
            task.add_done_callback(self._untrack)
            task.cancel()
        for conn in list(self._connections):
            conn.abort()

    async def wait_closed(self) -> None:
        """Wait until listeners, connections and handler tasks are all gone (call close() or
        abort() first, or this waits for them)."""
        while self._listeners or self._connections or self._tasks or not self._closing:
            self._changed.clear()
            await self._changed.wait()

    @property
    def closing(self) -> bool:
        """True once close() or abort() was called."""
        return self._closing

    @property
    def connection_count(self) -> int:
        """Connections currently open."""
        return len(self._connections)

    @property
    def in_flight(self) -> int:
        """Handler tasks still running (including ones whose client has gone)."""
        return len(self._tasks)

    # ------------------------------------------------------------------ internals

    def _untrack(self, task: asyncio.Task[None]) -> None:
        # Handler tasks untrack themselves when they finish (no done-callback, which would
        # cost an extra loop iteration per request); this is for tasks abort() cancels,
        # which may never get to run.
        self._tasks.discard(task)
        self._changed.set()

    def _add_connection(self, conn: _ServerProtocol) -> None:
        self._connections.add(conn)

    def _remove_connection(self, conn: _ServerProtocol) -> None:
        self._connections.discard(conn)
        self._changed.set()
        if self._on_connection_closed is not None:
            self._on_connection_closed()

    def _status_for(self, exc: BaseException) -> Status:
        try:
            return self._map_error(exc)
        except Exception as mapper_exc:
            log.exception("ttrpc: error mapper failed on %r", exc)
            return Status(Code.UNKNOWN, f"error mapper failed: {mapper_exc}")

    async def _call(self, request: Request) -> Response:
        """Run the handler for ``request``; return the response to send."""
        methods = self._services.get(request.service)
        if methods is None:
            return Response(Status(Code.UNIMPLEMENTED, f"service {request.service}"))
        handler = methods.get(request.method)
        if handler is None:
            return Response(Status(Code.UNIMPLEMENTED, f"method {request.method}"))
        metadata = _metadata(request.metadata)
        try:
            if request.timeout_nano > 0:
                deadline = asyncio.get_running_loop().time() + request.timeout_nano / 1e9
                ctx = RequestContext(request.service, request.method, metadata, deadline)
                async with asyncio.timeout_at(deadline):
                    payload = await handler(ctx, request.payload)
            else:
                ctx = RequestContext(request.service, request.method, metadata, None)
                payload = await handler(ctx, request.payload)
            if not isinstance(payload, bytes | bytearray | memoryview):
                raise TypeError(
                    f"handler {request.service}/{request.method} returned "
                    f"{type(payload).__name__}, not bytes"
                )
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled (abort): answer nothing
            return Response(self._status_for(exc))
        except Exception as exc:
            if not isinstance(exc, TtrpcError):
                log.debug("ttrpc: %s/%s failed", request.service, request.method, exc_info=exc)
            return Response(self._status_for(exc))
        return Response(_OK, bytes(payload))


class _ServerProtocol(asyncio.BufferedProtocol):
    """One accepted connection."""

    __slots__ = (
        "_backlog", "_conn", "_drained", "_ignored", "_in_flight", "_paused", "_reading",
        "_scheduled", "_server", "_transport",
    )

    def __init__(self, server: Server) -> None:
        self._server = server
        self._conn = ServerConnection()
        self._transport: asyncio.Transport | None = None
        self._in_flight = 0
        self._ignored = 0
        self._paused = False  # the transport asked us to stop writing
        self._backlog = False  # events may be buffered: a later loop turn handles them
        self._reading = True
        self._scheduled = False  # a _carry_on() is queued on the loop
        self._drained: asyncio.Future[None] | None = None

    # -------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self._server._require_same_user and not _same_user(transport):
            transport.abort()
            return
        self._transport = transport
        self._server._add_connection(self)
        if self._server._closing:
            transport.close()  # accepted while the listener was closing

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._server._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self._conn.receive_data(self._server._read_buffer[:nbytes])
        except RemoteProtocolError as exc:
            log.warning("ttrpc: closing connection: %s", exc)
            self.abort()
            return
        if not self._backlog:
            self._handle_events()

    def eof_received(self) -> bool:
        # Reading stops while events are buffered, so no whole frame is left here: this
        # reports ConnectionClosed, or the broken frame the peer left behind.
        try:
            self._conn.receive_data(b"")
            while self._next_event():
                pass
        except RemoteProtocolError as exc:
            log.debug("ttrpc: connection ended: %s", exc)
        return False  # close the transport; pending responses are dropped

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            _break_transport_cycle(self._transport)
        self._transport = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._server._remove_connection(self)

    def pause_writing(self) -> None:
        self._paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None
        if self._backlog:
            self._handle_events()
        else:
            self._update_reading()

    # -------------------------------------------------------------- internals

    def _handle_events(self) -> None:
        """Handle up to EVENTS_PER_TURN events; if the budget runs out, stop reading and
        carry on in a later loop turn."""
        if self._transport is None or self._paused:
            return  # gone, or resume_writing() carries on
        try:
            for _ in range(EVENTS_PER_TURN):
                if not self._next_event():
                    self._backlog = False
                    self._update_reading()
                    return
        except RemoteProtocolError as exc:
            log.warning("ttrpc: closing connection: %s", exc)
            self.abort()
            return
        self._backlog = True
        self._update_reading()
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._carry_on)

    def _carry_on(self) -> None:
        self._scheduled = False
        self._handle_events()

    def _next_event(self) -> bool:
        """Handle one event; False when none is buffered (NEED_DATA or ConnectionClosed)."""
        conn = self._conn
        event = conn.next_event()
        if type(event) is RequestReceived:
            self._in_flight += 1
            self._server._tasks.add(
                asyncio.get_running_loop().create_task(self._run(event.stream_id, event.request))
            )
            return True
        if type(event) is StreamRejected:
            log.debug("ttrpc: rejected stream %d: %s", event.stream_id, event.message)
            self._write(event.stream_id, Response(Status(event.code, event.message)))
            return True
        if conn.frames_ignored != self._ignored:
            log.debug("ttrpc: skipped %d frame(s)", conn.frames_ignored - self._ignored)
            self._ignored = conn.frames_ignored
        return False

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        want = not (self._paused or self._backlog)
        if want != self._reading:
            self._reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    async def _run(self, stream_id: int, request: Request) -> None:
        try:
            response = await self._server._call(request)
            if self._paused and self._transport is not None:
                if self._drained is None:
                    self._drained = asyncio.get_running_loop().create_future()
                await self._drained
            self._write(stream_id, response)
        finally:
            self._in_flight -= 1
            server = self._server
            task = asyncio.current_task()
            if task is not None:
                server._tasks.discard(task)
            if server._closing:
                server._changed.set()
                if self._in_flight == 0:
                    self.close_if_idle()

    def _write(self, stream_id: int, response: Response) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # client gone: drop the answer quietly
        try:
            frame = self._conn.send(stream_id, response)
        except MessageTooLargeError as exc:
            frame = self._conn.send(stream_id, Response(Status(Code.RESOURCE_EXHAUSTED, str(exc))))
        transport.write(frame)

    def close_if_idle(self) -> None:
        if self._in_flight == 0 and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _break_transport_cycle(transport: asyncio.Transport) -> None:
    """Let a closed transport be freed by reference counting.

    CPython 3.11's selector transport keeps its read callback, a bound method of itself, in
    an attribute for its whole life: a reference cycle, so every closed connection's
    transport, socket and buffers wait for the cyclic garbage collector. A flood of short
    connections piles thousands of them up (and leaves the allocator's arenas fragmented
    after they go). Python 3.12 clears the attribute when the transport closes; this does
    the same for 3.11, from connection_lost(), after which the transport never reads.
    """
    attrs = getattr(transport, "__dict__", None)
    if attrs is not None and "_read_ready_cb" in attrs:
        attrs["_read_ready_cb"] = None


def _same_user(transport: asyncio.Transport) -> bool:
    sock = transport.get_extra_info("socket")
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        _pid, uid, gid = _PEERCRED.unpack(raw)
    except OSError as exc:
        log.warning("ttrpc: refusing connection, no peer credentials: %s", exc)
        return False
    if uid != os.geteuid() or gid != os.getegid():
        log.warning("ttrpc: refusing connection from uid %d gid %d", uid, gid)
        return False
    return True
