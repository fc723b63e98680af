#!/usr/bin/env python3
"""Benchmark shim.ttrpc: round-trip latency and throughput over a unix socket.

The server runs in a subprocess by default (one process per side, as with containerd and
a shim); --in-process runs both in one event loop. Two runs:
  * sequential: one client, N empty requests one after another;
  * concurrent: C clients (one connection each), N requests in total, all at once.
Prints median / p99 round trip in microseconds and requests per second; --json FILE also
writes the numbers. For scale it also measures a "floor": the same sequential loop against
a bare asyncio echo protocol (no ttrpc at all), which is what the event loop and the
kernel cost by themselves. --pin CPU runs both processes on one CPU (no cross-CPU wakeups).

Usage: python3 hack/bench_ttrpc.py [--requests 10000] [--clients 8] [--in-process]
                                   [--pin CPU] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shim.ttrpc import Client, RequestContext, Server

SERVICE, METHOD = "bench.v1.Bench", "Empty"
T = TypeVar("T")


async def _empty(ctx: RequestContext, payload: bytes) -> bytes:
    return b""


def _listener(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(128)
    return sock


def _server() -> Server:
    server = Server()
    server.register(SERVICE, {METHOD: _empty})
    return server


async def _serve_forever(path: str) -> None:
    server = _server()
    task = asyncio.create_task(server.serve(_listener(path)))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    server.close()
    await server.wait_closed()
    await task


class _Echo(asyncio.Protocol):
    """The floor: answer every chunk with itself (a frame-sized write, no ttrpc)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _EchoClient(asyncio.Protocol):
    def __init__(self) -> None:
        self.waiter: asyncio.Future[bytes] | None = None

    def data_received(self, data: bytes) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)


async def _serve_echo_forever(path: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(_Echo, sock=_listener(path))
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


async def _floor(path: str, requests: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_unix_connection(_EchoClient, path)
    frame = b"\0" * 40  # about the size of an empty ttrpc request frame
    latencies: list[int] = []
    clock = time.perf_counter_ns
    start = clock()
    for i in range(requests + 500):
        t0 = clock()
        protocol.waiter = loop.create_future()
        transport.write(frame)
        await protocol.waiter
        if i >= 500:
            latencies.append(clock() - t0)
        else:
            start = clock()
    transport.close()
    return _summary(latencies, (clock() - start) / 1e9)


def _summary(latencies_ns: list[int], wall_s: float) -> dict[str, float]:
    ordered = sorted(latencies_ns)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "requests": len(ordered),
        "median_us": statistics.median(ordered) / 1000,
        "p99_us": p99 / 1000,
        "mean_us": statistics.fmean(ordered) / 1000,
        "max_us": ordered[-1] / 1000,
        "requests_per_s": len(ordered) / wall_s,
    }


async def _sequential(path: str, requests: int) -> dict[str, float]:
    async with await Client.connect(path) as client:
        for _ in range(500):  # warm up
            await client.call(SERVICE, METHOD, b"")
        latencies: list[int] = []
        clock = time.perf_counter_ns
        start = clock()
        for _ in range(requests):
            t0 = clock()
            await client.call(SERVICE, METHOD, b"")
            latencies.append(clock() - t0)
        return _summary(latencies, (clock() - start) / 1e9)


async def _concurrent(path: str, requests: int, clients: int) -> dict[str, float]:
    conns = [await Client.connect(path) for _ in range(clients)]
    per_client = -(-requests // clients)
    latencies: list[int] = []
    clock = time.perf_counter_ns

    async def worker(client: Client) -> None:
        for _ in range(per_client):
            t0 = clock()
            await client.call(SERVICE, METHOD, b"")
            latencies.append(clock() - t0)

    await asyncio.gather(*(worker(c) for c in conns))  # warm up
    latencies.clear()
    start = clock()
    await asyncio.gather(*(worker(c) for c in conns))
    wall = (clock() - start) / 1e9
    for client in conns:
        await client.close()
    result = _summary(latencies, wall)
    result["clients"] = clients
    return result


async def _run_in_process(path: str, requests: int, clients: int) -> dict[str, object]:
    server = _server()
    task = asyncio.create_task(server.serve(_listener(path)))
    try:
        return {
            "sequential": await _sequential(path, requests),
            "concurrent": await _concurrent(path, requests, clients),
        }
    finally:
        server.close()
        await server.wait_closed()
        await task


def _with_child(mode: str, path: str, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` while a server child process (``mode``) listens on ``path``."""
    child = subprocess.Popen(
        [sys.executable, __file__, mode, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("benchmark server did not start")
        return asyncio.run(work)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=10)


def _print(name: str, r: dict[str, float]) -> None:
    extra = f", {int(r['clients'])} clients" if "clients" in r else ""
    print(
        f"{name:<11} {int(r['requests'])} requests{extra}: median {r['median_us']:.1f} us, "
        f"p99 {r['p99_us']:.1f} us, {r['requests_per_s']:.0f} requests/s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--in-process", action="store_true", help="server in this process")
    parser.add_argument("--pin", type=int, metavar="CPU", help="run both sides on this CPU")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--serve", metavar="PATH", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--serve-echo", metavar="PATH", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()

    if args.serve:
        asyncio.run(_serve_forever(args.serve))
        return 0
    if args.serve_echo:
        asyncio.run(_serve_echo_forever(args.serve_echo))
        return 0
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})  # inherited by the server subprocess

    with tempfile.TemporaryDirectory(prefix="ttrpc-bench-") as tmp:
        path = os.path.join(tmp, "bench.sock")
        if args.in_process:
            results = asyncio.run(_run_in_process(path, args.requests, args.clients))
        else:
            results = {"floor": _with_child("--serve-echo", path, _floor(path, args.requests))}
            os.unlink(path)

            async def measure() -> dict[str, object]:
                return {
                    "sequential": await _sequential(path, args.requests),
                    "concurrent": await _concurrent(path, args.requests, args.clients),
                }

            results.update(_with_child("--serve", path, measure()))

    results["setup"] = {
        "server": "in-process" if args.in_process else "subprocess",
        "pinned_cpu": args.pin,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    for name in ("floor", "sequential", "concurrent"):
        if name in results:
            _print(name, results[name])  # type: ignore[arg-type]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
