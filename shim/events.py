"""Publishing task events to containerd, in order, over ttrpc ``Events.Forward``.

Strategy: mirrors containerd ``runtime/v2/shim/publisher.go``. ``publish`` only queues (it
never blocks a handler), one task sends the queue in order to ``$TTRPC_ADDRESS`` with a 5 s
timeout per call, reconnecting on a closed connection and retrying a few times with backoff;
an event that still fails is logged and dropped. Any type URLs are bare names (typeurl v1).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from google.protobuf.message import Message

from shim.api.containerd.services.ttrpc.events.v1 import events_pb2
from shim.ttrpc import Client, TtrpcError
from shim.typeurl import pack

__all__ = ["Publisher"]

log = logging.getLogger(__name__)

_SERVICE = "containerd.services.events.ttrpc.v1.Events"
_TIMEOUT = 5.0
_RETRIES = 5


@dataclass(frozen=True, slots=True)
class _Queued:
    topic: str
    event: Message
    timestamp: float


class Publisher:
    """Sends events to containerd's ttrpc events service, one at a time, in order."""

    def __init__(self, address: str, namespace: str) -> None:
        self._address = address.removeprefix("unix://")
        self._namespace = namespace
        self._queue: asyncio.Queue[_Queued | None] = asyncio.Queue()
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None

    def publish(self, topic: str, event: Message) -> None:
        """Queue ``event`` under ``topic``; events leave in the order they were queued."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._queue.put_nowait(_Queued(topic, event, time.time()))

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (bounded by ``timeout``), then close the connection."""
        if self._task is not None:
            self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.warning("dropping %d unsent events at exit", self._queue.qsize())
                self._task.cancel()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _run(self) -> None:
        while (item := await self._queue.get()) is not None:
            await self._send(item)

    async def _send(self, item: _Queued) -> None:
        envelope = events_pb2.Envelope(namespace=self._namespace, topic=item.topic)
        seconds = int(item.timestamp)
        envelope.timestamp.seconds = seconds
        envelope.timestamp.nanos = int((item.timestamp - seconds) * 1e9)
        envelope.event.CopyFrom(pack(item.event))
        payload = events_pb2.ForwardRequest(envelope=envelope).SerializeToString()
        for attempt in range(_RETRIES):
            try:
                if self._client is None:
                    self._client = await Client.connect(self._address)
                await self._client.call(
                    _SERVICE,
                    "Forward",
                    payload,
                    metadata={"containerd-namespace-ttrpc": self._namespace},
                    timeout=_TIMEOUT,
                )
                return
            except (OSError, TtrpcError, TimeoutError) as exc:
                log.warning("publishing %s failed (attempt %d): %s", item.topic, attempt + 1, exc)
                if self._client is not None:
                    await self._client.close()
                    self._client = None
                await asyncio.sleep(0.1 * (attempt + 1))
        log.error("dropping event %s after %d attempts", item.topic, _RETRIES)
