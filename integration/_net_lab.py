"""Network namespaces, bridges and veths made for one test, and what a host's network looks like.

Strategy: every name a test creates starts with ``pyt-`` and ends with the test's own tag, and
every object is registered the moment it exists, so :meth:`NetLab.cleanup` removes all of it
(host-side veths first, then bridges, then namespaces), even after a failure. Host-side veths
are deleted by name because deleting a namespace does not: a namespace stays alive inside the
kernel while anything holds it (an orphaned TCP socket retransmitting its FIN does), and its
half of a veth pair keeps the host half alive. IPv6 is switched off on every link the lab makes
so no link-local address appears (or changes state) behind a test's back. Addresses go only
into namespaces the test created (or a test container's).

Commands run as ``nsenter --net=<path> ip ...``, so one code path serves namespaces made with
``ip netns add`` (``/run/netns/<name>``) and a container's (``/proc/<pid>/ns/net``); ``None``
means this process's own namespace (the host).

:class:`NetState` is what the failure tests compare before and after a restore: ``ip -j
link``, ``ip -j addr`` and ``bridge -j link`` of one namespace.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .harness import wait_until

__all__ = ["NetLab", "NetState", "netns_id", "pids_in_netns"]


def _run(netns: str | None, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    full = [*(["nsenter", f"--net={netns}"] if netns else []), *argv]
    proc = subprocess.run(full, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def netns_id(path: str) -> str:
    """The ``net:[inode]`` a process in the namespace at ``path`` shows in /proc/<pid>/ns/net."""
    return f"net:[{os.stat(path).st_ino}]"


def pids_in_netns(path: str) -> list[int]:
    """Live processes whose network namespace is the one at ``path``."""
    want = netns_id(path)
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{name}/ns/net") == want:
                    found.append(int(name))
    return found


@dataclass(frozen=True, slots=True)
class NetState:
    """One namespace's links, addresses and bridge ports, as iproute2 prints them (JSON)."""

    links: str
    addresses: str
    ports: str

    @classmethod
    def of(cls, netns: str | None = None) -> NetState:
        def pretty(*argv: str) -> str:
            out = _run(netns, *argv).stdout
            return json.dumps(json.loads(out or "[]"), indent=1, sort_keys=True)

        return cls(
            pretty("ip", "-j", "link", "show"),
            pretty("ip", "-j", "addr", "show"),
            pretty("bridge", "-j", "link", "show"),
        )

    @classmethod
    def settled(cls, netns: str | None = None, timeout: float = 10) -> NetState:
        """:meth:`of`, once every link's operational state agrees with its carrier.

        The kernel reports a carrier change at once (``LOWER_UP``) but updates the
        operational state (``operstate``, and the ``NO-CARRIER`` that iproute2 derives from
        it) up to a second later (linkwatch), e.g. on a bridge that just lost its last port.
        Comparing states caught in between would see changes nobody made.
        """

        def unsettled() -> list[str]:
            odd = []
            for link in json.loads(_run(netns, "ip", "-j", "link", "show").stdout or "[]"):
                flags = link.get("flags", [])
                carrier = "LOWER_UP" in flags
                if "UP" in flags and carrier != (link.get("operstate") in ("UP", "UNKNOWN")):
                    odd.append(f"{link['ifname']} {link.get('operstate')} {flags}")
            return odd

        wait_until(
            lambda: not unsettled(),
            timeout,
            interval=0.1,
            message=lambda: f"links to settle: {unsettled()}",
        )
        return cls.of(netns)

    def diff(self, other: NetState) -> str:
        """A unified diff of every part that differs ("" when equal)."""
        parts = []
        for name in ("links", "addresses", "ports"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                lines = difflib.unified_diff(
                    a.splitlines(), b.splitlines(), f"{name} before", f"{name} after", lineterm=""
                )
                parts.append("\n".join(lines))
        return "\n".join(parts)


@dataclass
class NetLab:
    """The network objects of one test. Make links and namespaces through it; ``cleanup()``."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    _links: list[tuple[str | None, str]] = field(default_factory=list)  # (netns, name)
    _bridges: list[tuple[str | None, str]] = field(default_factory=list)
    _netns: list[str] = field(default_factory=list)

    def name(self, role: str) -> str:
        """``pyt-<role><tag>``: a link or namespace name of this test (at most 15 bytes)."""
        name = f"pyt-{role}{self.tag}"
        assert len(name) <= 15, name
        return name

    def run(self, netns: str | None, *argv: str, check: bool = True) -> str:
        """Run ``argv`` in ``netns`` (a path; None = here); its stdout."""
        return _run(netns, *argv, check=check).stdout

    def netns(self, role: str) -> str:
        """A new named network namespace with ``lo`` up; returns its path."""
        name = self.name(role)
        _run(None, "ip", "netns", "add", name)
        path = f"/run/netns/{name}"
        self._netns.append(name)
        self.run(path, "ip", "link", "set", "lo", "up")
        return path

    def _no_ipv6(self, netns: str | None, ifname: str) -> None:
        self.run(netns, "sysctl", "-q", "-w", f"net.ipv6.conf.{ifname}.disable_ipv6=1")

    def bridge(self, name: str, netns: str | None = None) -> str:
        """A bridge called ``name`` (STP off), up, without IPv6."""
        self.run(netns, "ip", "link", "add", name, "type", "bridge")
        self._bridges.append((netns, name))
        self._no_ipv6(netns, name)
        self.run(netns, "ip", "link", "set", name, "up")
        return name

    def veth(
        self,
        name: str,
        peer_netns: str,
        peer_name: str = "eth0",
        *,
        netns: str | None = None,
        bridge: str | None = None,
        address: str | None = None,
        gateway: str | None = None,
    ) -> str:
        """A veth pair: ``name`` in ``netns`` (on ``bridge`` if given, up), ``peer_name`` in
        ``peer_netns``, up, with ``address`` (CIDR) and a default route via ``gateway``."""
        self.run(
            netns,
            "ip",
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            peer_name,
            "netns",
            peer_netns,
        )
        self._links.append((netns, name))
        self._no_ipv6(netns, name)
        self._no_ipv6(peer_netns, peer_name)
        if bridge is not None:
            self.run(netns, "ip", "link", "set", name, "master", bridge)
        self.run(netns, "ip", "link", "set", name, "up")
        if address is not None:
            self.run(peer_netns, "ip", "addr", "add", address, "dev", peer_name)
        self.run(peer_netns, "ip", "link", "set", peer_name, "up")
        if gateway is not None:
            self.run(peer_netns, "ip", "route", "add", "default", "via", gateway)
        return name

    def adopt(self, name: str, netns: str | None = None) -> None:
        """Remove link ``name`` at cleanup too (one the code under test creates)."""
        self._links.append((netns, name))

    def delete_link(self, name: str, netns: str | None = None) -> None:
        self.run(netns, "ip", "link", "del", name)

    def has_link(self, name: str, netns: str | None = None) -> bool:
        return _run(netns, "ip", "link", "show", name, check=False).returncode == 0

    def cleanup(self) -> list[str]:
        """Delete every link, bridge and namespace made here; returns what could not be."""
        problems = []
        for netns, name in [*reversed(self._links), *reversed(self._bridges)]:
            if netns is not None and not os.path.exists(netns):
                continue
            if self.has_link(name, netns):
                proc = _run(netns, "ip", "link", "del", name, check=False)
                if proc.returncode != 0:
                    problems.append(f"ip link del {name}: {proc.stderr.strip()}")
        for name in reversed(self._netns):
            path = f"/run/netns/{name}"
            if not os.path.exists(path):
                continue
            for pid in pids_in_netns(path):  # only ever processes a test put there
                problems.append(f"killed {pid} still in {name}: {_cmdline(pid)}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc = _run(None, "ip", "netns", "del", name, check=False)
            if proc.returncode != 0:
                problems.append(f"ip netns del {name}: {proc.stderr.strip()}")
        self._links.clear()
        self._bridges.clear()
        self._netns.clear()
        return problems


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"
