"""shim.events.Publisher against a real shim.ttrpc.Server playing containerd's Events service."""

from __future__ import annotations

import asyncio
import logging
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from google.protobuf.message import Message

import shim.events
from shim.api.containerd.events import task_pb2 as events
from shim.api.containerd.services.ttrpc.events.v1 import events_pb2
from shim.events import Publisher
from shim.ttrpc import Code, RequestContext, Server, TtrpcError

SERVICE = "containerd.services.events.ttrpc.v1.Events"


@dataclass
class Received:
    topic: str
    namespace: str
    type_url: str
    event: bytes
    timestamp: float
    metadata_namespace: str


@dataclass
class FakeContainerd:
    """The Events/Forward endpoint; ``fail`` decides per request whether to refuse it."""

    received: list[Received] = field(default_factory=list)
    attempts: list[str] = field(default_factory=list)
    fail: Callable[[str], bool] = lambda topic: False
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def forward(self, ctx: RequestContext, payload: bytes) -> bytes:
        req = events_pb2.ForwardRequest()
        req.ParseFromString(payload)
        env = req.envelope
        self.attempts.append(env.topic)
        if self.fail(env.topic):
            raise TtrpcError(Code.UNAVAILABLE, "not now")
        self.received.append(
            Received(
                topic=env.topic,
                namespace=env.namespace,
                type_url=env.event.type_url,
                event=env.event.value,
                timestamp=env.timestamp.seconds + env.timestamp.nanos / 1e9,
                metadata_namespace=ctx.namespace(),
            )
        )
        self.arrived.set()
        return b""  # google.protobuf.Empty

    async def wait_for(self, n: int) -> None:
        while len(self.received) < n:
            self.arrived.clear()
            await self.arrived.wait()


@contextmanager
def socket_dir() -> Iterator[Path]:
    """A short directory (unix socket paths are limited to 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="ev-") as d:
        yield Path(d)


@asynccontextmanager
async def serving(fake: FakeContainerd, path: Path) -> AsyncIterator[Server]:
    server = Server()
    server.register(SERVICE, {"Forward": fake.forward})
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.unlink(missing_ok=True)
    listener.bind(str(path))
    listener.listen()
    task = asyncio.create_task(server.serve(listener))
    try:
        yield server
    finally:
        server.abort()
        await server.wait_closed()
        await task


def run(coro: object, timeout: float = 10.0) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(timeout):
            await coro  # type: ignore[misc]

    asyncio.run(guarded())


def start(pid: int) -> Message:
    return events.TaskStart(container_id=f"c{pid}", pid=pid)


def test_events_arrive_in_order_with_envelope() -> None:
    async def main() -> None:
        fake = FakeContainerd()
        with socket_dir() as d:
            async with serving(fake, d / "ev.sock"):
                pub = Publisher(f"unix://{d / 'ev.sock'}", "k8s.io")
                t0 = time.time()
                for pid in range(1, 21):
                    pub.publish("/tasks/start", start(pid))
                pub.publish("/tasks/exit", events.TaskExit(container_id="c1", exit_status=3))
                await fake.wait_for(21)
                await pub.close()
        assert [r.topic for r in fake.received] == ["/tasks/start"] * 20 + ["/tasks/exit"]
        pids = []
        for r in fake.received[:20]:
            assert r.type_url == "containerd.events.TaskStart"  # bare, as typeurl v1 writes
            msg = events.TaskStart()
            msg.ParseFromString(r.event)
            pids.append(msg.pid)
        assert pids == list(range(1, 21))
        assert fake.received[-1].type_url == "containerd.events.TaskExit"
        for r in fake.received:
            assert r.namespace == "k8s.io"
            assert r.metadata_namespace == "k8s.io"
            assert t0 - 1 <= r.timestamp <= time.time() + 1  # the publish time, not zero
        stamps = [r.timestamp for r in fake.received]
        assert stamps == sorted(stamps)
        assert any(r.timestamp != int(r.timestamp) for r in fake.received)  # nanos are set

    run(main())


def test_close_flushes_the_queue() -> None:
    async def main() -> None:
        fake = FakeContainerd()
        with socket_dir() as d:
            async with serving(fake, d / "ev.sock"):
                pub = Publisher(str(d / "ev.sock"), "default")  # plain path works too
                for pid in range(1, 11):
                    pub.publish("/tasks/start", start(pid))
                assert fake.received == []  # publish only queues
                await pub.close()
                assert len(fake.received) == 10  # all sent before close returned
                assert pub._client is None

    run(main())


def test_close_without_events_is_a_no_op() -> None:
    async def main() -> None:
        pub = Publisher("/nonexistent/socket", "default")
        await pub.close()

    run(main())


class _Signal(logging.Handler):
    """Sets an asyncio.Event when a record matching ``text`` is logged (same thread)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@contextmanager
def log_signal(text: str) -> Iterator[asyncio.Event]:
    handler = _Signal(text)
    logger = logging.getLogger("shim.events")
    logger.addHandler(handler)
    try:
        yield handler.event
    finally:
        logger.removeHandler(handler)


def test_server_down_at_first_then_up() -> None:
    async def main() -> None:
        fake = FakeContainerd()
        with socket_dir() as d, log_signal("(attempt 1)") as first_failure:
            path = d / "ev.sock"
            pub = Publisher(f"unix://{path}", "default")
            pub.publish("/tasks/create", events.TaskCreate(container_id="c1"))
            pub.publish("/tasks/start", start(7))
            await first_failure.wait()  # nobody listens yet: the first attempt failed
            assert fake.attempts == []
            async with serving(fake, path):
                await fake.wait_for(2)
                await pub.close()
        assert [r.topic for r in fake.received] == ["/tasks/create", "/tasks/start"]

    run(main())


def test_reconnects_after_the_server_restarts() -> None:
    async def main() -> None:
        fake = FakeContainerd()
        with socket_dir() as d:
            path = d / "ev.sock"
            pub = Publisher(f"unix://{path}", "default")
            async with serving(fake, path):
                pub.publish("/tasks/start", start(1))
                await fake.wait_for(1)
            # containerd restarted: the old connection is gone, a new server listens.
            async with serving(fake, path):
                pub.publish("/tasks/start", start(2))
                await fake.wait_for(2)
                await pub.close()
        assert [r.event for r in fake.received] == [
            start(1).SerializeToString(),
            start(2).SerializeToString(),
        ]

    run(main())


def test_refused_event_is_retried_in_order() -> None:
    async def main() -> None:
        refusals = {"/tasks/create": 2}

        def fail(topic: str) -> bool:
            if refusals.get(topic, 0) > 0:
                refusals[topic] -= 1
                return True
            return False

        fake = FakeContainerd(fail=fail)
        with socket_dir() as d:
            async with serving(fake, d / "ev.sock"):
                pub = Publisher(str(d / "ev.sock"), "default")
                pub.publish("/tasks/create", events.TaskCreate(container_id="c1"))
                pub.publish("/tasks/start", start(1))
                await fake.wait_for(2)
                await pub.close()
        assert fake.attempts == ["/tasks/create"] * 3 + ["/tasks/start"]
        assert [r.topic for r in fake.received] == ["/tasks/create", "/tasks/start"]

    run(main())


def test_event_dropped_after_the_retries_and_later_ones_still_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shim.events, "_RETRIES", 2)

    async def main() -> None:
        fake = FakeContainerd(fail=lambda topic: topic == "/tasks/oom")
        with socket_dir() as d:
            async with serving(fake, d / "ev.sock"):
                pub = Publisher(str(d / "ev.sock"), "default")
                pub.publish("/tasks/oom", events.TaskOOM(container_id="c1"))
                pub.publish("/tasks/start", start(1))
                await fake.wait_for(1)
                await pub.close()
        assert fake.attempts == ["/tasks/oom", "/tasks/oom", "/tasks/start"]
        assert [r.topic for r in fake.received] == ["/tasks/start"]

    run(main())
