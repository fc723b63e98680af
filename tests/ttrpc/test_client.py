"""The asyncio Client, against the real Server and against hand-driven fake servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from shim.ttrpc import (
    MAX_DATA,
    Client,
    ClosedError,
    Code,
    RemoteProtocolError,
    Request,
    RequestContext,
    Response,
    Server,
    Status,
    TtrpcError,
)
from shim.ttrpc._wire import decode_request, encode_response

from .helpers import frame, read_frame, run, serving, short_tmpdir

SVC = "test.v1.Svc"
REQ, RESP = 1, 2

FakeHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_server(handle: FakeHandler) -> AsyncIterator[str]:
    """A hand-driven server: ``handle`` gets the raw streams of each connection."""
    with short_tmpdir() as tmp:
        path = os.path.join(tmp, "fake.sock")
        server = await asyncio.start_unix_server(handle, path)
        try:
            yield path
        finally:
            server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[int, Request]:
    stream_id, mtype, _flags, data = await read_frame(reader)
    assert mtype == REQ
    return stream_id, decode_request(data)


def answer(stream_id: int, payload: bytes, status: Status | None = None) -> bytes:
    return frame(stream_id, RESP, encode_response(Response(status or Status(), payload)))


async def echo(ctx: RequestContext, payload: bytes) -> bytes:
    return payload


def echo_server() -> Server:
    server = Server()
    server.register(SVC, {"Echo": echo})
    return server


def test_connect_with_unix_prefix() -> None:
    async def main() -> None:
        async with serving(echo_server()) as path:
            async with await Client.connect("unix://" + path) as client:
                assert await client.call(SVC, "Echo", b"hi") == b"hi"
            assert client.closed

    run(main())


def test_connect_to_abstract_socket() -> None:
    async def main() -> None:
        name = f"\0pyrunc-ttrpc-test-{os.getpid()}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(name)
        listener.listen()
        server = echo_server()
        serve = asyncio.create_task(server.serve(listener))
        try:
            async with await Client.connect(name) as client:
                assert await client.call(SVC, "Echo", b"abstract") == b"abstract"
        finally:
            server.close()
            await server.wait_closed()
            await serve

    run(main())


def test_from_socket() -> None:
    async def main() -> None:
        async with serving(echo_server()) as path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            async with await Client.from_socket(sock) as client:
                assert await client.call(SVC, "Echo", b"s") == b"s"

    run(main())


def test_thousand_concurrent_calls_on_one_connection() -> None:
    async def main() -> None:
        async with serving(echo_server()) as path, await Client.connect(path) as client:
            replies = await asyncio.gather(
                *(client.call(SVC, "Echo", i.to_bytes(2, "big")) for i in range(1000))
            )
            assert replies == [i.to_bytes(2, "big") for i in range(1000)]

    run(main())


def test_out_of_order_answers_and_stray_answers() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests = [await read_request(reader) for _ in range(3)]
        assert [sid for sid, _ in requests] == [1, 3, 5]
        writer.write(answer(99, b"nobody asked"))  # dropped by the client
        writer.write(answer(2, b"even"))  # dropped too
        for stream_id, request in reversed(requests):
            writer.write(answer(stream_id, request.payload + b"!"))
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with fake_server(handle) as path, await Client.connect(path) as client:
            replies = await asyncio.gather(*(client.call(SVC, "M", b"%d" % i) for i in range(3)))
            assert replies == [b"0!", b"1!", b"2!"]

    run(main())


def test_request_fields_on_the_wire() -> None:
    seen: list[Request] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream_id, request = await read_request(reader)
        seen.append(request)
        writer.write(answer(stream_id, b""))
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with fake_server(handle) as path, await Client.connect(path) as client:
            await client.call(
                "containerd.task.v2.Task",
                "State",
                b"\x0a\x05redis",
                metadata={"Containerd-Namespace-TTRPC": "default", "k": ("a", "b")},
                timeout=2.5,
            )

    run(main())
    [request] = seen
    assert (request.service, request.method, request.payload) == (
        "containerd.task.v2.Task",
        "State",
        b"\x0a\x05redis",
    )
    assert request.metadata == (("containerd-namespace-ttrpc", "default"), ("k", "a"), ("k", "b"))
    assert 2_000_000_000 < request.timeout_nano <= 2_500_000_000


def test_status_errors() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream_id, _ = await read_request(reader)
        # A Go server leaves the payload empty on errors; be lenient if one is present.
        writer.write(answer(stream_id, b"ignored", Status(Code.NOT_FOUND, "gone", (b"",))))
        stream_id, _ = await read_request(reader)
        writer.write(frame(stream_id, RESP, b""))  # no status at all: success
        stream_id, _ = await read_request(reader)
        writer.write(frame(stream_id, RESP, b"\x0a\x02\x08"))  # broken status
        stream_id, _ = await read_request(reader)
        writer.write(answer(stream_id, b"", Status(77, "from the future")))
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with fake_server(handle) as path, await Client.connect(path) as client:
            with pytest.raises(TtrpcError) as info:
                await client.call(SVC, "M", b"")
            assert (info.value.code, info.value.message, info.value.details) == (
                Code.NOT_FOUND,
                "gone",
                (b"",),
            )
            assert str(info.value) == "ttrpc: NOT_FOUND: gone"
            assert await client.call(SVC, "M", b"") == b""
            with pytest.raises(TtrpcError) as info:
                await client.call(SVC, "M", b"")
            assert info.value.code == Code.INTERNAL
            with pytest.raises(TtrpcError) as info:
                await client.call(SVC, "M", b"")
            assert info.value.code == 77
            assert str(info.value) == "ttrpc: 77: from the future"

    run(main())


def test_local_timeout_and_late_answer() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        late_id, _ = await read_request(reader)
        next_id, request = await read_request(reader)
        writer.write(answer(late_id, b"late"))  # after the caller gave up: dropped
        writer.write(answer(next_id, request.payload))
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with fake_server(handle) as path, await Client.connect(path) as client:
            with pytest.raises(TtrpcError) as info:
                await client.call(SVC, "M", b"", timeout=0.05)
            assert info.value.code == Code.DEADLINE_EXCEEDED
            assert client.pending == 0
            assert await client.call(SVC, "M", b"next") == b"next"
            with pytest.raises(TtrpcError) as info:
                await client.call(SVC, "M", b"", timeout=0)
            assert info.value.code == Code.DEADLINE_EXCEEDED

    run(main())


def test_cancelled_call_is_forgotten() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first, _ = await read_request(reader)
        second, request = await read_request(reader)
        writer.write(answer(first, b"late"))
        writer.write(answer(second, request.payload))
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with fake_server(handle) as path, await Client.connect(path) as client:
            call = asyncio.create_task(client.call(SVC, "M", b""))
            await asyncio.sleep(0.05)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert await client.call(SVC, "M", b"second") == b"second"

    run(main())


def test_connection_loss_fails_pending_and_later_calls() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(3):
            await read_request(reader)
        writer.close()

    async def main() -> None:
        async with fake_server(handle) as path:
            client = await Client.connect(path)
            results = await asyncio.gather(
                *(client.call(SVC, "M", b"") for _ in range(3)), return_exceptions=True
            )
            for result in results:
                assert isinstance(result, ClosedError)
                assert (result.code, result.message) == (Code.UNAVAILABLE, "ttrpc: closed")
                assert str(result) == "ttrpc: closed"
            assert client.closed
            with pytest.raises(ClosedError):
                await client.call(SVC, "M", b"")
            await client.close()

    run(main())


def test_protocol_error_fails_pending_calls() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream_id, _ = await read_request(reader)
        writer.write(answer(stream_id, b"truncated")[:-2])
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with fake_server(handle) as path, await Client.connect(path) as client:
            with pytest.raises(ClosedError) as info:
                await client.call(SVC, "M", b"")
            assert isinstance(info.value.__cause__, RemoteProtocolError)

    run(main())


def test_close_fails_pending_calls() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def main() -> None:
        async with fake_server(handle) as path:
            client = await Client.connect(path)
            call = asyncio.create_task(client.call(SVC, "M", b""))
            await asyncio.sleep(0.02)
            await client.close()
            await client.close()  # idempotent
            with pytest.raises(ClosedError):
                await call

    run(main())


def test_oversize_request_fails_locally() -> None:
    async def main() -> None:
        async with serving(echo_server()) as path, await Client.connect(path) as client:
            with pytest.raises(TtrpcError) as info:
                await client.call(SVC, "Echo", b"\0" * MAX_DATA)
            assert info.value.code == Code.RESOURCE_EXHAUSTED
            assert await client.call(SVC, "Echo", b"ok") == b"ok"

    run(main())


def test_oversize_answer_fails_that_call_only() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first, _ = await read_request(reader)
        second, _ = await read_request(reader)
        writer.write(frame(first, RESP, b"\0" * (MAX_DATA + 1)))
        writer.write(answer(second, b"fine"))
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with fake_server(handle) as path, await Client.connect(path) as client:
            first = asyncio.create_task(client.call(SVC, "M", b""))
            await asyncio.sleep(0.01)
            second = asyncio.create_task(client.call(SVC, "M", b""))
            with pytest.raises(TtrpcError) as info:
                await first
            assert info.value.code == Code.RESOURCE_EXHAUSTED
            assert await second == b"fine"

    run(main())
