"""Test kit for shim.ttrpc: an in-memory ConnectionPair, frame builders, a socket server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import struct
import tempfile
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from shim.ttrpc import (
    NEED_DATA,
    ClientConnection,
    Event,
    Request,
    Response,
    Server,
    ServerConnection,
)

T = TypeVar("T")

HEADER = struct.Struct(">IIBB")


def frame(stream_id: int, mtype: int, data: bytes, flags: int = 0) -> bytes:
    """A raw frame, built without shim.ttrpc's own encoder."""
    return HEADER.pack(len(data), stream_id, mtype, flags) + data


def drain(conn: ServerConnection | ClientConnection) -> list[Event]:
    """All events currently available from ``conn`` (stops at NEED_DATA or ConnectionClosed)."""
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if type(event).__name__ == "ConnectionClosed":
            return events


class ConnectionPair:
    """A ClientConnection and a ServerConnection joined by an in-memory link."""

    def __init__(self) -> None:
        self.client = ClientConnection()
        self.server = ServerConnection()

    def call(self, request: Request) -> int:
        """Client sends ``request``; the server receives its bytes. Returns the stream id."""
        stream_id, data = self.client.send(request)
        self.server.receive_data(data)
        return stream_id

    def respond(self, stream_id: int, response: Response) -> None:
        """Server answers ``stream_id``; the client receives the bytes."""
        self.client.receive_data(self.server.send(stream_id, response))

    def server_events(self) -> list[Event]:
        return drain(self.server)

    def client_events(self) -> list[Event]:
        return drain(self.client)


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """Run ``coro`` in a fresh event loop, failing the test if it takes too long."""

    async def guarded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(guarded())


@contextlib.contextmanager
def short_tmpdir() -> Iterator[str]:
    """A temporary directory with a short path (unix socket paths are limited to 108 bytes)."""
    path = tempfile.mkdtemp(prefix="ttrpc-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def serving(server: Server) -> AsyncIterator[str]:
    """Serve ``server`` on a fresh unix socket; yield its path; close and wait on exit."""
    with short_tmpdir() as tmp:
        path = os.path.join(tmp, "ttrpc.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen()
        task = asyncio.create_task(server.serve(listener))
        try:
            yield path
        finally:
            server.abort()
            await server.wait_closed()
            await task


async def raw_connect(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw (non-ttrpc) connection, to send hand-made bytes to a server."""
    return await asyncio.open_unix_connection(path)


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
    """Read one raw frame: (stream id, type, flags, data)."""
    header = await reader.readexactly(HEADER.size)
    length, stream_id, mtype, flags = HEADER.unpack(header)
    return stream_id, mtype, flags, await reader.readexactly(length)
