"""Helpers of ``test_checkpoint_options.py``: the ``pyrunc`` tool, host-side probes, CRIU logs.

Strategy: everything a test observes is read from the host as it is, never asked of the shim:
``/proc/<pid>/net/tcp`` (a process's TCP connections, in its own network namespace),
``/proc/<pid>/ns/net``, ``/proc/locks``, ``st_blocks`` of image files, and the CRIU logs
runc leaves in the ``--work-path`` directory. A socket "outside the container but in its
network namespace" is made by this process itself: :func:`socket_in_netns`, by a thread of its
own in the namespace (the shim's :func:`shim.checkpoint.rtnl.socket_in`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shim.checkpoint.criu import Criu, CriuFeatures, CriuVersion, criu_binary, probe
from shim.checkpoint.rtnl import socket_in
from shim.reaper import Reaper

from .harness import free_port, run_pyrunc

__all__ = [
    "DatagramSink",
    "Tcp",
    "blocks",
    "criu_facts",
    "flock_holders",
    "free_port",
    "held_netns",
    "log_lines",
    "netns",
    "pyrunc",
    "socket_in_netns",
    "tcp_connections",
    "tcp_sockets_on_port",
]

pyrunc = run_pyrunc  # ``pyrunc -a <harness socket> -n <namespace> args``


def netns(pid: int) -> str:
    """``readlink /proc/<pid>/ns/net`` (``net:[<inode>]``)."""
    return os.readlink(f"/proc/{pid}/ns/net")


@contextlib.contextmanager
def held_netns(pid: int) -> Iterator[str]:
    """Keep ``pid``'s network namespace alive (an open fd) for the body; yields its name.

    Namespace inode numbers are reused once a namespace is gone, so "another namespace than
    the one the dumped process had" can only be checked while that one still exists.
    """
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True, order=True)
class Tcp:
    """One IPv4 TCP socket: local and remote ``(address, port)`` and the kernel's state."""

    local: tuple[str, int]
    remote: tuple[str, int]
    state: int

    ESTABLISHED = 1
    LISTEN = 10


def _addr(text: str) -> tuple[str, int]:
    ip, port = text.split(":")
    raw = int(ip, 16).to_bytes(4, "little")
    return socket.inet_ntoa(raw), int(port, 16)


def _tcp_table(path: str) -> list[Tcp]:
    try:
        lines = Path(path).read_text().splitlines()[1:]
    except OSError:
        return []
    rows = []
    for line in lines:
        cols = line.split()
        rows.append(Tcp(_addr(cols[1]), _addr(cols[2]), int(cols[3], 16)))
    return rows


def tcp_connections(pid: int) -> list[Tcp]:
    """The established IPv4 TCP connections of ``pid``'s network namespace, sorted."""
    return sorted(t for t in _tcp_table(f"/proc/{pid}/net/tcp") if t.state == Tcp.ESTABLISHED)


def tcp_sockets_on_port(port: int) -> list[Tcp]:
    """IPv4 TCP sockets of this (the host's) network namespace with local port ``port``."""
    return [t for t in _tcp_table("/proc/self/net/tcp") if t.local[1] == port]


def flock_holders(inode: int) -> list[int]:
    """Pids (as the host sees them) holding a FLOCK on a file with inode ``inode``."""
    pids = []
    for line in Path("/proc/locks").read_text().splitlines():
        cols = line.split()
        # "1: FLOCK  ADVISORY  WRITE 16900 00:30:16641137 0 EOF" ("->" marks a waiter)
        if (
            len(cols) >= 6
            and cols[1] == "FLOCK"
            and "->" not in cols
            and int(cols[5].rsplit(":", 1)[1]) == inode
        ):
            pids.append(int(cols[4]))
    return pids


def blocks(directory: Path, pattern: str = "*") -> int:
    """Bytes allocated on disk (``st_blocks`` * 512) by the files matching ``pattern``."""
    return sum(p.stat().st_blocks * 512 for p in directory.glob(pattern) if p.is_file())


def log_lines(path: Path, pattern: str) -> list[str]:
    """The lines of the log at ``path`` matching the regex ``pattern`` ([] if no file)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    regex = re.compile(pattern)
    return [line for line in text.splitlines() if regex.search(line)]


_facts: list[tuple[CriuVersion, CriuFeatures]] = []


def criu_facts() -> tuple[CriuVersion, CriuFeatures]:
    """CRIU's VERSION and FEATURE_CHECK answers on this host (asked once per session), from
    the CRIU the shim will run (``criu`` in PATH, as for the harness's containerd)."""
    if not _facts:

        async def ask() -> tuple[CriuVersion, CriuFeatures]:
            reaper = Reaper()
            reaper.install(asyncio.get_running_loop())
            async with asyncio.timeout(60):
                return await probe(Criu(reaper, criu_binary("")))

        _facts.append(asyncio.run(ask()))
    return _facts[0]


def socket_in_netns(pid: int, kind: socket.SocketKind) -> socket.socket:
    """A new AF_UNIX socket of ``kind`` that belongs to ``pid``'s network namespace (unix
    socket diagnostics, which CRIU uses to find a socket's peer, are per namespace)."""
    return socket_in(f"/proc/{pid}/ns/net", socket.AF_UNIX, kind)


@dataclass
class DatagramSink:
    """Receives ``"<n>\\n"`` datagrams on a bound socket in a thread; ``numbers`` in order.

    Made with a bound SOCK_DGRAM socket; :meth:`close` stops the thread and closes it.
    """

    sock: socket.socket
    numbers: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> DatagramSink:
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, name="dgram-sink", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.numbers.extend(int(n) for n in data.decode().split())

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sock.close()
