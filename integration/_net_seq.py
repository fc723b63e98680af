"""The client end of ``/usr/bin/net-seq`` (hack/image/net-seq.c): one TCP connection whose
byte stream is checked in both directions.

Strategy: the client socket is made in a network namespace the test created (the calling
thread enters it with setns(2) just for ``socket()`` and comes back; a socket stays in the
namespace it was made in), so the test process itself talks to the container across a bridge
and keeps that one socket object for the whole test. The protocol is lockstep: the client
sends ``c<n> <payload(n)>``, the server checks number and payload and answers ``s<n> <n>
<fnv64 of all bytes it received> <payload(n)>``; the client checks all of it against its own
count and hash. A reconnect cannot hide: net-seq accepts one connection and closes its
listener, and a new connection would start at ``c1``.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field

__all__ = ["SeqClient", "connect_in", "established", "payload", "socket_in"]

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def payload(k: int) -> str:
    """net-seq's payload for record ``k``: (k * 37) % 97 letters, 'a' + (k + i) % 26."""
    return "".join(chr(ord("a") + (k + i) % 26) for i in range((k * 37) % 97))


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns to {what}: {os.strerror(err)}")


def socket_in(netns: str) -> socket.socket:
    """A TCP socket living in the network namespace at ``netns``."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        _setns(target, netns)
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            _setns(own, "this thread's own namespace")
    finally:
        os.close(own)
        os.close(target)


def connect_in(netns: str, host: str, port: int, timeout: float = 15) -> socket.socket:
    """Connect from ``netns`` to ``host:port``, retrying while nobody listens yet."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket_in(netns)
        sock.settimeout(5)
        try:
            sock.connect((host, port))
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@dataclass
class SeqClient:
    """The checking client; ``sent`` records went out and came back checked."""

    sock: socket.socket
    sent: int = 0
    hash: int = _FNV_OFFSET
    _buf: bytes = b""
    history: list[str] = field(default_factory=list)  # notes for failure messages

    @classmethod
    def connect(cls, netns: str, host: str, port: int) -> SeqClient:
        return cls(connect_in(netns, host, port))

    @property
    def local(self) -> tuple[str, int]:
        name: tuple[str, int] = self.sock.getsockname()
        return name

    @property
    def peer(self) -> tuple[str, int]:
        name: tuple[str, int] = self.sock.getpeername()
        return name

    def _line(self, timeout: float) -> str:
        self.sock.settimeout(timeout)
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"server closed the connection after {self.sent} records")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode(errors="replace")

    def exchange(self, count: int, timeout: float = 10) -> None:
        """Send the next ``count`` records one at a time; check every answer.

        Raises:
            AssertionError: an answer is not exactly the expected one (the server's ``bad
                ...`` report shows up here), or the connection ended.
        """
        for _ in range(count):
            n = self.sent + 1
            data = f"c{n} {payload(n)}\n".encode()
            for byte in data:
                self.hash = ((self.hash ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
            self.sock.sendall(data)
            answer = self._line(timeout)
            want = f"s{n} {n} {self.hash:016x} {payload(n)}"
            assert answer == want, f"record {n}: got {answer[:80]!r}, want {want[:80]!r}"
            self.sent = n

    def close(self) -> None:
        """Close with a reset (SO_LINGER 0): no orphaned socket keeps the namespace alive."""
        if self.sock.fileno() >= 0:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()


def established(netns: str, port: int) -> list[tuple[str, str]]:
    """(local, peer) of the established TCP connections in ``netns`` with peer port ``port``."""
    out = subprocess.run(
        ["nsenter", f"--net={netns}", "ss", "-Htn", "state", "established", "dport", f"= :{port}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        cols = line.split()  # Recv-Q Send-Q Local:Port Peer:Port (no State with a filter)
        if len(cols) >= 4:
            rows.append((cols[2], cols[3]))
    return rows
