"""The asyncio Server over real unix sockets."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from shim.ttrpc import (
    MAX_DATA,
    Client,
    ClosedError,
    Code,
    Request,
    RequestContext,
    Server,
    Status,
    TtrpcError,
    default_error_mapper,
)
from shim.ttrpc._server import EVENTS_PER_TURN, _metadata
from shim.ttrpc._wire import decode_response, encode_request

from .helpers import frame, raw_connect, read_frame, run, serving
from .test_connection import GO_EVEN_ID, GO_UNKNOWN_SERVICE, XY_REQUEST

SVC = "test.v1.Svc"
REQ, RESP, DATA = 1, 2, 3


async def echo(ctx: RequestContext, payload: bytes) -> bytes:
    return payload


def make_server(**methods: object) -> Server:
    server = Server()
    server.register(SVC, {"Echo": echo, **methods})  # type: ignore[dict-item]
    return server


async def _status_of(reader: asyncio.StreamReader) -> tuple[int, Status | None, bytes]:
    stream_id, mtype, flags, data = await read_frame(reader)
    assert (mtype, flags) == (RESP, 0)
    response = decode_response(data)
    return stream_id, response.status, response.payload


# ------------------------------------------------------------------ round trips


def test_round_trip_with_metadata() -> None:
    seen: list[RequestContext] = []

    async def look(ctx: RequestContext, payload: bytes) -> bytes:
        seen.append(ctx)
        return payload[::-1]

    async def main() -> None:
        async with serving(make_server(Look=look)) as path, await Client.connect(path) as client:
            reply = await client.call(
                SVC,
                "Look",
                b"abc",
                metadata={"containerd-namespace-ttrpc": "default", "X-Multi": ["1", "2"]},
            )
            assert reply == b"cba"
            await client.call(SVC, "Look", b"", timeout=30)

    run(main())
    first, second = seen
    assert (first.service, first.method) == (SVC, "Look")
    assert first.namespace() == "default"
    assert first.metadata["x-multi"] == ("1", "2")
    assert first.deadline is None
    assert second.namespace() == ""
    assert second.deadline is not None


def test_success_and_error_frames_on_the_wire() -> None:
    async def fail(ctx: RequestContext, payload: bytes) -> bytes:
        raise TtrpcError(Code.NOT_FOUND, "container not created")

    async def main() -> None:
        async with serving(make_server(Fail=fail)) as path:
            reader, writer = await raw_connect(path)
            writer.write(frame(1, REQ, encode_request(Request(SVC, "Echo", b"\x0a\x05redis"))))
            writer.write(frame(3, REQ, encode_request(Request(SVC, "Fail", b"x"))))
            got = {}
            for _ in range(2):
                stream_id, _mtype, _flags, data = await read_frame(reader)
                got[stream_id] = data
            # Success: an OK status present (0a 00) plus the payload. Error: status only.
            assert got[1] == bytes.fromhex("0a0012070a057265646973")
            assert got[3] == bytes.fromhex("0a1908051215636f6e7461696e6572206e6f742063726561746564")
            writer.close()

    run(main())


def test_answers_match_go_ttrpc_byte_for_byte() -> None:
    # The frames containerd 1.6.20's own ttrpc server (Go ttrpc v1.1.1) sent back for the
    # same three requests (see test_connection.py for how they were captured).
    go_answers = {
        1: GO_UNKNOWN_SERVICE,
        3: bytes.fromhex("000000110000000302000a0f080c120b6d6574686f64204e6f7065"),
        4: GO_EVEN_ID,
    }

    async def main() -> None:
        server = Server()
        server.register("containerd.services.events.ttrpc.v1.Events", {"Forward": echo})
        async with serving(server) as path:
            reader, writer = await raw_connect(path)
            writer.write(frame(1, REQ, XY_REQUEST))
            events = Request("containerd.services.events.ttrpc.v1.Events", "Nope")
            writer.write(frame(3, REQ, encode_request(events)))
            writer.write(frame(4, REQ, XY_REQUEST))
            for _ in range(3):
                header = await reader.readexactly(10)
                data = header + await reader.readexactly(int.from_bytes(header[:4], "big"))
                assert data == go_answers[int.from_bytes(header[4:8], "big")]
            writer.close()

    run(main())


def test_unknown_service_and_method() -> None:
    async def main() -> None:
        async with serving(make_server()) as path, await Client.connect(path) as client:
            with pytest.raises(TtrpcError) as info:
                await client.call("no.Such", "Echo", b"")
            assert (info.value.code, info.value.message) == (Code.UNIMPLEMENTED, "service no.Such")
            with pytest.raises(TtrpcError) as info:
                await client.call(SVC, "Nope", b"")
            assert (info.value.code, info.value.message) == (Code.UNIMPLEMENTED, "method Nope")

    run(main())


def test_concurrent_calls_complete_out_of_order() -> None:
    # Deterministic under any load: each Gated call waits for its own gate, and the gates
    # open in the reverse order of sending (no sleeps deciding the order).
    n = 50
    release = asyncio.Event()
    gates = [asyncio.Event() for _ in range(n)]
    arrived: set[int] = set()
    all_arrived = asyncio.Event()

    async def wait(ctx: RequestContext, payload: bytes) -> bytes:
        await release.wait()
        return b"exited"

    async def gated(ctx: RequestContext, payload: bytes) -> bytes:
        arrived.add(payload[0])
        if len(arrived) == n:
            all_arrived.set()
        await gates[payload[0]].wait()
        return payload

    async def main() -> None:
        async with serving(make_server(Wait=wait, Gated=gated)) as path:
            client = await Client.connect(path)
            waiting = asyncio.create_task(client.call(SVC, "Wait", b""))
            calls = [
                asyncio.create_task(client.call(SVC, "Gated", bytes([i]))) for i in range(n)
            ]
            # Every handler is running at once on the one connection (a server handling
            # one request at a time would never get here) ...
            await asyncio.wait_for(all_arrived.wait(), 10)
            # ... and each answer comes back as soon as its own handler returns, while the
            # calls sent before it still wait: the replies complete out of order.
            for i in reversed(range(n)):
                gates[i].set()
                assert await asyncio.wait_for(calls[i], 10) == bytes([i])
                assert not any(call.done() for call in calls[:i]), i
            assert not waiting.done()
            release.set()
            assert await waiting == b"exited"
            await client.close()

    run(main())


def test_a_flooding_connection_does_not_hold_up_another() -> None:
    # One connection's backlog of requests is handled EVENTS_PER_TURN per loop turn, so a
    # request on another connection is handled within a turn or two, not after the flood.
    order: list[bytes] = []

    async def mark(ctx: RequestContext, payload: bytes) -> bytes:
        order.append(payload)
        return payload

    async def main() -> None:
        async with serving(make_server(Mark=mark)) as path:
            flood_r, flood_w = await raw_connect(path)
            probe_r, probe_w = await raw_connect(path)
            for reader, writer in ((flood_r, flood_w), (probe_r, probe_w)):
                writer.write(frame(1, REQ, encode_request(Request(SVC, "Echo", b""))))
                await read_frame(reader)  # accepted and being read
            n = 20 * EVENTS_PER_TURN
            flood_w.write(b"".join(
                frame(3 + 2 * i, REQ, encode_request(Request(SVC, "Mark", b"f")))
                for i in range(n)
            ))
            # written after the whole flood, before the server runs again
            probe_w.write(frame(3, REQ, encode_request(Request(SVC, "Mark", b"p"))))
            assert (await read_frame(probe_r))[:2] == (3, RESP)
            for _ in range(n):
                await read_frame(flood_r)
            assert order.count(b"f") == n
            assert order.index(b"p") <= 2 * EVENTS_PER_TURN, order.index(b"p")
            for writer in (flood_w, probe_w):
                writer.close()

    run(main())


def test_many_clients() -> None:
    async def main() -> None:
        async with serving(make_server()) as path:
            clients = [await Client.connect(path) for _ in range(8)]
            results = await asyncio.gather(
                *(clients[i % 8].call(SVC, "Echo", b"%d" % i) for i in range(400))
            )
            assert results == [b"%d" % i for i in range(400)]
            for c in clients:
                await c.close()

    run(main())


# ------------------------------------------------------------------ deadlines and errors


def test_server_enforces_timeout_nano() -> None:
    cancelled = asyncio.Event()

    async def slow(ctx: RequestContext, payload: bytes) -> bytes:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b""

    async def main() -> None:
        async with serving(make_server(Slow=slow)) as path:
            reader, writer = await raw_connect(path)
            request = Request(SVC, "Slow", b"", timeout_nano=100_000_000)
            writer.write(frame(1, REQ, encode_request(request)))
            stream_id, status, payload = await _status_of(reader)
            assert stream_id == 1
            assert status == Status(Code.DEADLINE_EXCEEDED, "deadline exceeded")
            assert payload == b""
            assert cancelled.is_set()
            writer.close()

    run(main())


def test_client_timeout_is_deadline_exceeded() -> None:
    async def slow(ctx: RequestContext, payload: bytes) -> bytes:
        await asyncio.sleep(30)
        return b""

    async def main() -> None:
        async with serving(make_server(Slow=slow)) as path, await Client.connect(path) as client:
            with pytest.raises(TtrpcError) as info:
                await client.call(SVC, "Slow", b"", timeout=0.1)
            assert info.value.code == Code.DEADLINE_EXCEEDED
            assert await client.call(SVC, "Echo", b"still fine") == b"still fine"

    run(main())


class Boom(Exception):
    pass


async def boom(ctx: RequestContext, payload: bytes) -> bytes:
    raise Boom("it broke")


async def not_found(ctx: RequestContext, payload: bytes) -> bytes:
    raise TtrpcError(Code.NOT_FOUND, "process does not exist x", (b"\x0a\x01t",))


async def cancelled(ctx: RequestContext, payload: bytes) -> bytes:
    raise asyncio.CancelledError()


async def not_bytes(ctx: RequestContext, payload: bytes) -> bytes:
    return None  # type: ignore[return-value]


async def huge(ctx: RequestContext, payload: bytes) -> bytes:
    return b"\0" * (MAX_DATA + 1)


@pytest.mark.parametrize(
    ("handler", "code", "message"),
    [
        (boom, Code.UNKNOWN, "it broke"),
        (not_found, Code.NOT_FOUND, "process does not exist x"),
        (cancelled, Code.CANCELLED, "cancelled"),
        (not_bytes, Code.UNKNOWN, f"handler {SVC}/M returned NoneType, not bytes"),
        (huge, Code.RESOURCE_EXHAUSTED, "response on stream 1: message length"),
    ],
)
def test_handler_errors_are_mapped(handler: object, code: Code, message: str) -> None:
    async def main() -> None:
        server = Server()
        server.register(SVC, {"M": handler})  # type: ignore[dict-item]
        async with serving(server) as path, await Client.connect(path) as client:
            with pytest.raises(TtrpcError) as info:
                await client.call(SVC, "M", b"")
            assert info.value.code == code
            assert info.value.message.startswith(message)
            if handler is not_found:
                assert info.value.details == (b"\x0a\x01t",)

    run(main())


def test_custom_error_mapper_and_mapper_failure() -> None:
    def mapper(exc: BaseException) -> Status:
        if isinstance(exc, Boom):
            return Status(Code.INTERNAL, f"mapped: {exc}")
        if isinstance(exc, KeyError):
            raise RuntimeError("mapper bug")
        return default_error_mapper(exc)

    async def key_error(ctx: RequestContext, payload: bytes) -> bytes:
        raise KeyError("k")

    async def main() -> None:
        server = Server(error_mapper=mapper)
        server.register(SVC, {"Boom": boom, "Key": key_error, "NotFound": not_found})
        async with serving(server) as path, await Client.connect(path) as client:
            with pytest.raises(TtrpcError, match="mapped: it broke") as info:
                await client.call(SVC, "Boom", b"")
            assert info.value.code == Code.INTERNAL
            with pytest.raises(TtrpcError, match="error mapper failed") as info:
                await client.call(SVC, "Key", b"")
            assert info.value.code == Code.UNKNOWN
            with pytest.raises(TtrpcError) as info:
                await client.call(SVC, "NotFound", b"")
            assert info.value.code == Code.NOT_FOUND

    run(main())


def test_duplicate_service_is_refused() -> None:
    server = make_server()
    with pytest.raises(ValueError, match="duplicate"):
        server.register(SVC, {})


# ------------------------------------------------------------------ malformed input


def test_malformed_frames_are_answered_while_other_requests_succeed() -> None:
    release = asyncio.Event()

    async def wait(ctx: RequestContext, payload: bytes) -> bytes:
        await release.wait()
        return b"done"

    async def main() -> None:
        async with serving(make_server(Wait=wait)) as path:
            bystander = await Client.connect(path)
            reader, writer = await raw_connect(path)

            def send(stream_id: int, mtype: int, data: bytes) -> None:
                writer.write(frame(stream_id, mtype, data))

            send(1, REQ, encode_request(Request(SVC, "Wait")))  # stays in flight throughout
            # Oversize: the header alone is answered; the body is then sent and skipped.
            writer.write((MAX_DATA + 1).to_bytes(4, "big") + bytes.fromhex("000000030100"))
            assert await _status_of(reader) == (
                3,
                Status(
                    Code.RESOURCE_EXHAUSTED,
                    f"message length {MAX_DATA + 1} exceed maximum message size of {MAX_DATA}",
                ),
                b"",
            )
            writer.write(b"\0" * (MAX_DATA + 1))
            send(4, REQ, encode_request(Request(SVC, "Echo", b"even")))
            send(1, REQ, encode_request(Request(SVC, "Echo", b"reused")))
            send(5, REQ, b"\x0a\x05ab")
            send(7, 9, b"unknown type")
            send(9, DATA, b"data")
            send(11, REQ, encode_request(Request(SVC, "Echo", b"fine")))
            answers = [await _status_of(reader) for _ in range(5)]
            assert [(sid, st.code if st else None) for sid, st, _ in answers] == [
                (4, Code.INVALID_ARGUMENT),
                (1, Code.INVALID_ARGUMENT),
                (5, Code.INVALID_ARGUMENT),
                (9, Code.INVALID_ARGUMENT),
                (11, Code.OK),
            ]
            assert answers[-1][2] == b"fine"
            assert await bystander.call(SVC, "Echo", b"other") == b"other"
            release.set()
            assert await _status_of(reader) == (1, Status(), b"done")
            send(13, REQ, encode_request(Request(SVC, "Echo", b"after")))
            assert await _status_of(reader) == (13, Status(), b"after")
            writer.close()
            await bystander.close()

    run(main())


def test_eof_mid_frame_closes_only_that_connection() -> None:
    async def main() -> None:
        server = make_server()
        async with serving(server) as path, await Client.connect(path) as bystander:
            reader, writer = await raw_connect(path)
            data = frame(1, REQ, encode_request(Request(SVC, "Echo", b"x")))
            writer.write(data[:-3])
            await writer.drain()
            writer.write_eof()
            assert await reader.read() == b""  # server closed its end
            writer.close()
            assert await bystander.call(SVC, "Echo", b"y") == b"y"
            for _ in range(100):
                if server.connection_count == 1:
                    break
                await asyncio.sleep(0.01)
            assert server.connection_count == 1

    run(main())


# ------------------------------------------------------------------ disconnects and shutdown


def test_client_gone_mid_request_drops_the_answer(caplog: pytest.LogCaptureFixture) -> None:
    started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def wait(ctx: RequestContext, payload: bytes) -> bytes:
        started.set()
        await release.wait()
        finished.set()
        return b"too late"

    async def main() -> None:
        server = make_server(Wait=wait)
        async with serving(server) as path:
            client = await Client.connect(path)
            call = asyncio.create_task(client.call(SVC, "Wait", b""))
            await started.wait()
            await client.close()
            with pytest.raises(ClosedError):
                await call
            for _ in range(100):
                if server.connection_count == 0:
                    break
                await asyncio.sleep(0.01)
            assert server.connection_count == 0
            assert server.in_flight == 1  # the handler runs on
            release.set()
            await finished.wait()
            await asyncio.sleep(0.01)
            assert server.in_flight == 0

    with caplog.at_level(logging.WARNING):
        run(main())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_close_drains_in_flight_requests() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def wait(ctx: RequestContext, payload: bytes) -> bytes:
        started.set()
        await release.wait()
        return b"drained"

    async def main() -> None:
        server = make_server(Wait=wait)
        async with serving(server) as path:
            client = await Client.connect(path)
            idle = await Client.connect(path)
            call = asyncio.create_task(client.call(SVC, "Wait", b""))
            await started.wait()
            server.close()
            with pytest.raises(ClosedError):
                await idle.call(SVC, "Echo", b"")  # idle connections close at once
            with pytest.raises(OSError):
                await Client.connect(path)  # no longer accepting
            assert not call.done()
            release.set()
            assert await call == b"drained"
            await asyncio.wait_for(server.wait_closed(), 5)
            assert server.connection_count == 0
            assert client.closed

    run(main())


def test_abort_cancels_handlers() -> None:
    started, was_cancelled = asyncio.Event(), asyncio.Event()

    async def wait(ctx: RequestContext, payload: bytes) -> bytes:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            was_cancelled.set()
            raise
        return b""

    async def main() -> None:
        server = make_server(Wait=wait)
        async with serving(server) as path:
            client = await Client.connect(path)
            call = asyncio.create_task(client.call(SVC, "Wait", b""))
            await started.wait()
            server.abort()
            with pytest.raises(ClosedError):
                await call
            await asyncio.wait_for(server.wait_closed(), 5)
            assert was_cancelled.is_set()
            assert server.in_flight == 0

    run(main())


def test_require_same_user(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main(expect_ok: bool) -> None:
        server = Server(require_same_user=True)
        server.register(SVC, {"Echo": echo})
        async with serving(server) as path, await Client.connect(path) as client:
            if expect_ok:
                assert await client.call(SVC, "Echo", b"me") == b"me"
            else:
                with pytest.raises(ClosedError):
                    await client.call(SVC, "Echo", b"me")

    run(main(True))
    monkeypatch.setattr(os, "geteuid", lambda: 12345)  # now we look like someone else
    run(main(False))


def test_large_responses_with_flow_control() -> None:
    big = b"\xab" * (3 << 20)

    async def large(ctx: RequestContext, payload: bytes) -> bytes:
        return big

    async def main() -> None:
        async with serving(make_server(Large=large)) as path, await Client.connect(path) as client:
            replies = await asyncio.gather(*(client.call(SVC, "Large", b"") for _ in range(8)))
            assert all(r == big for r in replies)

    run(main())


def test_a_backlog_waits_while_writing_is_paused_and_is_answered_after() -> None:
    # Many pipelined requests whose answers the client does not read at first: the server
    # stops writing (and reading) with requests still buffered, and answers them all once
    # the client reads.
    chunk = b"\xcd" * (256 << 10)
    n = 8 * EVENTS_PER_TURN

    async def large(ctx: RequestContext, payload: bytes) -> bytes:
        return chunk

    async def main() -> None:
        async with serving(make_server(Large=large)) as path:
            reader, writer = await raw_connect(path)
            writer.write(b"".join(
                frame(1 + 2 * i, REQ, encode_request(Request(SVC, "Large", b"")))
                for i in range(n)
            ))
            await asyncio.sleep(0.2)  # the server fills the socket and pauses
            answered = set()
            for _ in range(n):
                stream_id, mtype, _flags, data = await read_frame(reader)
                assert mtype == RESP and decode_response(data).payload == chunk
                answered.add(stream_id)
            assert answered == {1 + 2 * i for i in range(n)}
            writer.close()

    run(main())


def test_repeated_metadata_keys_group_in_order_in_linear_time() -> None:
    """Grouping appends (it once copied the tuple per value: 40k repeats took 1.5 s)."""
    pairs = (*(("K", str(i)) for i in range(4000)), ("other", "x"))
    grouped = _metadata(pairs)
    assert grouped["k"] == tuple(str(i) for i in range(4000))
    assert grouped["other"] == ("x",)
