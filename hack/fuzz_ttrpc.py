#!/usr/bin/env python3
"""Fuzz a live shim's ttrpc socket while it serves a running container, and report how the
shim held up: whether it answered State throughout (latency p50/p99/max), whether its
container was left untouched (same pid, running, rootfs mounted), and how its RSS and open
file descriptors changed.

For each runtime (default: ``io.containerd.runc.v2``, the reference, then
``io.containerd.pyrunc.v2``) it starts a ``sleep`` container through containerd with ``ctr``,
connects to that container's shim socket (as containerd does: ``/run/containerd/s/<sha256 of
address/namespace/id>``) and, bounded by ``--frames`` and ``--seconds``, sends:

* well-formed requests of every Task method for containers that do not exist;
* those requests mutated (bit flips, bytes set, inserted, deleted, chunks repeated) in the
  envelope and the payload;
* length lies (a header that promises more or fewer bytes than follow), truncated frames,
  headers over the 4 MiB limit, unknown frame types, even stream ids;
* metadata bombs (40k and 80k empty metadata entries, a 4 MiB frame of them);
* from the start to the end: slowloris connections (one byte every 100 ms) and many idle
  connections.

The live container is never named: every request names a ghost id much shorter than the
live one, so no mutation of at most a few bytes can turn it into a Kill or Delete of the
container being measured. Mutated requests are not waited for; answers are read and dropped
so the shim is never blocked on writing. A separate connection, from a process of its own
(the campaign's busy event loop adds nothing to its timings), asks State for the live
container every 10 ms.

Bounded in count and time, loopback only (a unix socket), and it removes its container.

Usage:
    hack/fuzz_ttrpc.py [--frames N] [--seconds S] [--runtime R ...] [--json OUT]
                       [--address SOCK] [--namespace NS] [--image REF] [--seed N]
                       [--warmup N] [--rounds N] [--idle N]

RSS and fds are measured against a baseline taken after a warm-up of ``--warmup`` frames (every
code path once: what a first call loads, such as protobuf classes, is not growth); the RSS at
the start is reported too. Reported growth is what the campaign's rounds added after that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventLike
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shim.api.containerd.task.v2 import shim_pb2 as api
from shim.ttrpc import Client, Request, TtrpcError
from shim.ttrpc._frames import HEADER, MAX_DATA
from shim.ttrpc._wire import encode_request

SERVICE = "containerd.task.v2.Task"
RUNTIMES = ("io.containerd.runc.v2", "io.containerd.pyrunc.v2")
SOCKET_DIR = "/run/containerd/s"
REQUEST, RESPONSE, DATA = 1, 2, 3
PROBE_INTERVAL = 0.010
PROBE_TIMEOUT = 5.0
WORKERS = 4
SLOWLORIS = 8
IDLE_CONNECTIONS = 256
SETTLE = 1.0  # after the campaign, before the final RSS and fd count


# ---------------------------------------------------------------------------- requests


def _ghost(rng: random.Random) -> str:
    return f"g{rng.randrange(16**4):04x}"  # 5 chars; the live id has 20


def _well_formed(rng: random.Random) -> list[tuple[str, bytes]]:
    """(method, payload) of every Task method, for ids that do not exist."""
    g = _ghost(rng)
    exec_id = rng.choice(["", "e1"])
    return [
        ("State", api.StateRequest(id=g, exec_id=exec_id).SerializeToString()),
        ("Create", api.CreateTaskRequest(
            id=g, bundle=f"/nonexistent/{g}", terminal=rng.random() < 0.5,
            stdout="/nonexistent/out",
        ).SerializeToString()),
        ("Start", api.StartRequest(id=g, exec_id=exec_id).SerializeToString()),
        ("Delete", api.DeleteRequest(id=g, exec_id=exec_id).SerializeToString()),
        ("Pids", api.PidsRequest(id=g).SerializeToString()),
        ("Pause", api.PauseRequest(id=g).SerializeToString()),
        ("Resume", api.ResumeRequest(id=g).SerializeToString()),
        ("Checkpoint", api.CheckpointTaskRequest(
            id=g, path=f"/nonexistent/ckpt-{g}").SerializeToString()),
        ("Kill", api.KillRequest(id=g, exec_id=exec_id, signal=9, all=True).SerializeToString()),
        ("Exec", api.ExecProcessRequest(id=g, exec_id="e1").SerializeToString()),
        ("ResizePty", api.ResizePtyRequest(id=g, width=80, height=24).SerializeToString()),
        ("CloseIO", api.CloseIORequest(id=g, stdin=True).SerializeToString()),
        ("Update", api.UpdateTaskRequest(id=g).SerializeToString()),
        ("Wait", api.WaitRequest(id=g, exec_id=exec_id).SerializeToString()),
        ("Stats", api.StatsRequest(id=g).SerializeToString()),
        ("Connect", api.ConnectRequest(id=g).SerializeToString()),
    ]


def _envelope(method: str, payload: bytes, metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
    return encode_request(Request(SERVICE, method, payload, 0, metadata))


def _frame(stream_id: int, data: bytes, mtype: int = REQUEST, length: int | None = None) -> bytes:
    return HEADER.pack(len(data) if length is None else length, stream_id, mtype, 0) + data


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buf:
            buf.append(rng.randrange(256))
            continue
        op = rng.randrange(5)
        i = rng.randrange(len(buf))
        if op == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[i] = rng.choice([0, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == 2:
            buf.insert(i, rng.randrange(256))
        elif op == 3:
            del buf[i]
        else:
            j = min(len(buf), i + rng.randint(1, 16))
            buf[i:i] = buf[i:j] * rng.randint(1, 4)
    return bytes(buf)


_BOMBS = {n: _envelope("State", b"", (("", ""),) * n) for n in (40_000, 80_000)}
_FULL_BOMB = _envelope("State", b"") + b"\x2a\x00" * ((MAX_DATA - 32) // 2)


@dataclass
class Sent:
    frames: int = 0
    kinds: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str) -> None:
        self.frames += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


def _next_frames(rng: random.Random, stream: Callable[[], int], sent: Sent) -> tuple[bytes, bool]:
    """One batch of bytes to write, and whether the connection should be closed after it
    (a frame left half-sent cannot be followed by anything meaningful)."""
    roll = rng.random()
    method, payload = rng.choice(_well_formed(rng))
    if roll < 0.25:
        sent.count("well-formed")
        return _frame(stream(), _envelope(method, payload)), False
    if roll < 0.65:
        sent.count("mutated-payload")
        return _frame(stream(), _envelope(method, _mutate(rng, payload))), False
    if roll < 0.85:
        sent.count("mutated-envelope")
        return _frame(stream(), _mutate(rng, _envelope(method, payload))), False
    if roll < 0.88:
        sent.count("mutated-frame")
        return _mutate(rng, _frame(stream(), _envelope(method, payload))), True
    if roll < 0.91:
        sent.count("length-lie")
        data = _envelope(method, payload)
        return _frame(stream(), data, length=len(data) + rng.choice([-3, -1, 1, 7, 4096])), True
    if roll < 0.93:
        sent.count("truncated")
        whole = _frame(stream(), _envelope(method, payload))
        return whole[: rng.randrange(1, len(whole))], True
    if roll < 0.95:
        sent.count("oversize-header")
        return HEADER.pack(MAX_DATA + rng.randint(1, 1 << 20), stream(), REQUEST, 0), True
    if roll < 0.97:
        sent.count("odd-types-and-ids")
        sid = stream()
        return _frame(sid + 1, _envelope(method, payload)) + _frame(
            sid, _envelope(method, payload), mtype=rng.choice([RESPONSE, DATA, 9])
        ), False
    if roll < 0.9995:
        sent.count("duplicate-stream-id")
        sid = stream()
        data = _frame(sid, _envelope(method, payload))
        return data + data, False
    sent.count("metadata-bomb")
    bomb = rng.choice([_BOMBS[40_000], _BOMBS[80_000], _FULL_BOMB])
    return _frame(stream(), bomb), False


# ---------------------------------------------------------------------------- the campaign


async def _drain(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while await reader.read(65536):
            pass


async def _worker(path: str, rng: random.Random, sent: Sent, limit: int, stop: float) -> int:
    """Send fuzz frames on one connection after another until the budget is spent."""
    reconnects = 0
    while sent.frames < limit and time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_unix_connection(path)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        reconnects += 1
        drainer = asyncio.create_task(_drain(reader))
        next_id = 1

        def stream() -> int:
            nonlocal next_id
            sid, next_id = next_id, next_id + 2
            return sid

        try:
            while sent.frames < limit and time.monotonic() < stop:
                data, close = _next_frames(rng, stream, sent)
                writer.write(data)
                await writer.drain()
                if close or drainer.done():
                    break
        except OSError:
            pass  # the shim closed a connection it judged broken: that is its right
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            drainer.cancel()
    return reconnects


async def _slowloris(path: str, stop: float) -> None:
    data = _frame(1, _envelope("State", api.StateRequest(id="g0000").SerializeToString()))
    try:
        reader, writer = await asyncio.open_unix_connection(path)
    except OSError:
        return
    drainer = asyncio.create_task(_drain(reader))
    try:
        i = 0
        while time.monotonic() < stop:
            writer.write(data[i % len(data) : i % len(data) + 1])
            await writer.drain()
            i += 1
            await asyncio.sleep(0.1)
    except OSError:
        pass
    finally:
        writer.close()
        drainer.cancel()


@dataclass
class Probe:
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    pid_changes: int = 0


async def _probe(
    path: str, client: Client, cid: str, pid: int, stopped: Callable[[], bool], probe: Probe
) -> None:
    payload = api.StateRequest(id=cid).SerializeToString()
    try:
        while not stopped():
            t0 = time.perf_counter()
            try:
                reply = await client.call(SERVICE, "State", payload, timeout=PROBE_TIMEOUT)
                state = api.StateResponse.FromString(reply)
                probe.latencies_ms.append((time.perf_counter() - t0) * 1e3)
                if state.pid != pid or state.status != 2:  # RUNNING
                    probe.pid_changes += 1
                    probe.failures.append(f"State: pid {state.pid}, status {state.status}")
            except (TtrpcError, OSError, TimeoutError) as exc:
                probe.failures.append(f"State failed: {exc!r}")
                if client.closed:
                    await client.close()
                    client = await Client.connect(path)
            await asyncio.sleep(PROBE_INTERVAL)
    finally:
        await client.close()


def _probe_process(
    path: str, cid: str, pid: int, connected: EventLike, stop: EventLike, out: Connection
) -> None:
    """The State probe in a process of its own, so that its timings are the shim's: in the
    campaign's process a worker writing frames holds the event loop for many milliseconds
    at a time, and an answer that has arrived would wait for it. Sends its Probe to ``out``."""
    probe = Probe()

    async def run() -> None:
        client = await Client.connect(path)
        connected.set()
        await _probe(path, client, cid, pid, stop.is_set, probe)

    try:
        asyncio.run(run())
    except Exception as exc:  # reported, not raised: the campaign decides
        probe.failures.append(f"probe: {exc!r}")
    finally:
        connected.set()
        out.send(probe)
        out.close()


# ---------------------------------------------------------------------------- the target


def _ctr(args: argparse.Namespace, *argv: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["ctr", "--address", args.address, "--namespace", args.namespace, *argv],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"ctr {' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


@dataclass
class Report:
    runtime: str
    frames: int
    seconds: float
    kinds: dict[str, int]
    connections: int
    probes: int
    probe_failures: int
    probe_failure_examples: list[str]
    state_p50_ms: float
    state_p99_ms: float
    state_max_ms: float
    rss_at_start_kib: int
    rss_before_kib: int
    rss_after_kib: int
    rss_growth_kib: int
    rss_growth_from_start_kib: int
    rss_after_each_round_kib: list[int]
    fds_before: int
    fds_after: int
    container_running: bool
    same_pid: bool
    rootfs_mounted: bool
    shim_alive: bool


async def _round(
    args: argparse.Namespace, path: str, cid: str, pid: int, rng: random.Random, sent: Sent,
    probe: Probe,
) -> int:
    """One round of ``--frames`` frames (at most ``--seconds``) with the idle and slowloris
    connections and the State probe around it; returns how many connections it opened."""
    limit = sent.frames + args.frames
    deadline = time.monotonic() + args.seconds
    spawn = multiprocessing.get_context("spawn")
    connected, stop_probe = spawn.Event(), spawn.Event()
    results, sender = spawn.Pipe(duplex=False)
    prober = spawn.Process(
        target=_probe_process, args=(path, cid, pid, connected, stop_probe, sender), daemon=True)
    prober.start()
    sender.close()
    # The probe connects first: a connect while the 256 idle ones fill the listen backlog
    # gets EAGAIN, which asyncio takes for "in progress", and the socket never connects.
    await asyncio.to_thread(connected.wait, 60)
    idle = []
    for _ in range(args.idle):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(OSError):
            s.connect(path)
        idle.append(s)
    loris = [asyncio.create_task(_slowloris(path, deadline)) for _ in range(SLOWLORIS)]
    workers = [
        asyncio.create_task(_worker(path, random.Random(rng.random()), sent, limit, deadline))
        for _ in range(WORKERS)
    ]
    connections = sum(await asyncio.gather(*workers))
    for t in loris:
        t.cancel()
    await asyncio.gather(*loris, return_exceptions=True)
    for s in idle:
        s.close()
    await asyncio.sleep(SETTLE)
    stop_probe.set()
    try:
        got: Probe = await asyncio.to_thread(results.recv)
    except EOFError:
        got = Probe(failures=["the probe process died"])
    await asyncio.to_thread(prober.join, 30)
    results.close()
    probe.latencies_ms += got.latencies_ms
    probe.failures += got.failures
    probe.pid_changes += got.pid_changes
    await asyncio.sleep(SETTLE)  # the shim closes its end of the probe's connection
    return connections + len(idle) + SLOWLORIS


async def _campaign(args: argparse.Namespace, runtime: str, seed: int) -> Report:
    cid = f"fuzz-{os.urandom(7).hex()}"  # 19 chars
    _ctr(args, "run", "-d", "--runtime", runtime, args.image, cid, "sleep", "1000000")
    try:
        digest = hashlib.sha256(os.path.join(args.address, args.namespace, cid).encode())
        path = f"{SOCKET_DIR}/{digest.hexdigest()}"
        async with asyncio.timeout(10):
            client = await Client.connect(path)
            state = api.StateResponse.FromString(await client.call(
                SERVICE, "State", api.StateRequest(id=cid).SerializeToString()))
            conn = api.ConnectResponse.FromString(await client.call(
                SERVICE, "Connect", api.ConnectRequest(id=cid).SerializeToString()))
            await client.close()
        shim_pid, pid = conn.shim_pid, state.pid
        rootfs = os.path.join(state.bundle, "rootfs")
        rootfs_was_mounted = _mounted(rootfs)
        await asyncio.sleep(SETTLE)
        rss_start = _rss_kib(shim_pid)
        rng = random.Random(seed)
        probe = Probe()
        if args.warmup:  # every code path once: what a first call loads is not growth
            warm = argparse.Namespace(**{**vars(args), "frames": args.warmup})
            await _round(warm, path, cid, pid, rng, Sent(), probe)
        rss0, fds0 = _rss_kib(shim_pid), _fds(shim_pid)

        sent = Sent()
        connections = 0
        rounds_rss: list[int] = []
        t0 = time.monotonic()
        for _ in range(args.rounds):
            connections += await _round(args, path, cid, pid, rng, sent, probe)
            rounds_rss.append(_rss_kib(shim_pid) if os.path.exists(f"/proc/{shim_pid}") else 0)
        elapsed = time.monotonic() - t0
        alive = os.path.exists(f"/proc/{shim_pid}")
        rss1 = _rss_kib(shim_pid) if alive else 0
        fds1 = _fds(shim_pid) if alive else 0
        lat = sorted(probe.latencies_ms) or [float("nan")]
        tasks = _ctr(args, "task", "ls")
        running = any(line.split()[:3] == [cid, str(pid), "RUNNING"] for line in tasks.splitlines())
        return Report(
            runtime=runtime,
            frames=sent.frames,
            seconds=round(elapsed, 1),
            kinds=dict(sorted(sent.kinds.items())),
            connections=connections,
            probes=len(probe.latencies_ms),
            probe_failures=len(probe.failures),
            probe_failure_examples=probe.failures[:5],
            state_p50_ms=round(statistics.median(lat), 2),
            state_p99_ms=round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2),
            state_max_ms=round(lat[-1], 2),
            rss_at_start_kib=rss_start,
            rss_before_kib=rss0,
            rss_after_kib=rss1,
            rss_growth_kib=rss1 - rss0,
            rss_growth_from_start_kib=rss1 - rss_start if alive else 0,
            rss_after_each_round_kib=rounds_rss,
            fds_before=fds0,
            fds_after=fds1,
            container_running=running,
            same_pid=probe.pid_changes == 0,
            rootfs_mounted=_mounted(rootfs) or not rootfs_was_mounted,
            shim_alive=alive,
        )
    finally:
        _ctr(args, "task", "kill", "-s", "KILL", cid, check=False)
        for _ in range(50):
            if cid not in _ctr(args, "task", "ls", check=False):
                break
            _ctr(args, "task", "rm", "-f", cid, check=False)
            time.sleep(0.1)
        _ctr(args, "container", "rm", cid, check=False)


def _cell(value: object) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _table(reports: list[Report]) -> str:
    rows = [
        ("frames sent", "frames"), ("seconds", "seconds"), ("connections", "connections"),
        ("State probes", "probes"), ("State failures", "probe_failures"),
        ("State p50 ms", "state_p50_ms"), ("State p99 ms", "state_p99_ms"),
        ("State max ms", "state_max_ms"), ("RSS at start KiB", "rss_at_start_kib"),
        ("RSS before KiB (after warm-up)", "rss_before_kib"),
        ("RSS after KiB", "rss_after_kib"), ("RSS growth KiB", "rss_growth_kib"),
        ("RSS growth from start KiB", "rss_growth_from_start_kib"),
        ("RSS after each round KiB", "rss_after_each_round_kib"),
        ("fds before", "fds_before"), ("fds after", "fds_after"),
        ("container running", "container_running"), ("same pid", "same_pid"),
        ("rootfs mounted", "rootfs_mounted"), ("shim alive", "shim_alive"),
    ]
    head = "| measure | " + " | ".join(r.runtime for r in reports) + " |"
    sep = "|---|" + "---:|" * len(reports)
    body = [
        f"| {label} | " + " | ".join(_cell(getattr(r, key)) for r in reports) + " |"
        for label, key in rows
    ]
    return "\n".join([head, sep, *body])


def healthy(r: Report) -> list[str]:
    """What went wrong for a shim, by the campaign's own bar (empty: it held)."""
    problems = []
    if not r.shim_alive:
        problems.append("the shim died")
    if r.probe_failures:
        problems.append(f"{r.probe_failures} State probes failed: {r.probe_failure_examples}")
    if not (r.container_running and r.same_pid and r.rootfs_mounted):
        problems.append("the container was touched")
    if r.fds_after > r.fds_before:
        problems.append(f"open fds grew from {r.fds_before} to {r.fds_after}")
    if r.rss_growth_kib > 2048:
        problems.append(f"RSS grew by {r.rss_growth_kib} KiB")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--frames", type=int, default=100_000, help="frames per round")
    p.add_argument("--seconds", type=float, default=600.0, help="time bound per round")
    p.add_argument("--rounds", type=int, default=1,
                   help="rounds against the same shim (RSS after each: a leak keeps growing)")
    p.add_argument("--runtime", action="append", help="runtime(s) to fuzz (default: both)")
    p.add_argument("--address", default="/run/containerd/containerd.sock")
    p.add_argument("--namespace", default="default")
    p.add_argument("--image", default="localhost/pyrunc-test:latest")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5000,
                   help="frames sent before the RSS and fd baseline is taken (0: none)")
    p.add_argument("--idle", type=int, default=IDLE_CONNECTIONS,
                   help="idle connections held open through each round")
    p.add_argument("--json", type=Path, help="write the reports here")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("fuzz_ttrpc.py: needs root (it runs a container)", file=sys.stderr)
        return 2
    reports = []
    for runtime in args.runtime or RUNTIMES:
        print(f"fuzzing {runtime}: {args.frames} frames, at most {args.seconds:.0f} s",
              file=sys.stderr)
        reports.append(asyncio.run(_campaign(args, runtime, args.seed)))
    print(_table(reports))
    for r in reports:
        for problem in healthy(r):
            print(f"{r.runtime}: {problem}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in reports], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
