"""A container's network namespace, recorded at checkpoint and rebuilt at restore.

Strategy: with ``--empty-ns network`` CRIU neither dumps nor restores the network namespace, so
restored TCP sockets would find no addresses. At checkpoint the container's links, addresses
and routes (and, for a veth, its host-side peer and the bridge that peer is attached to) are
recorded as a versioned JSON file beside the images (:data:`SNAPSHOT`); at restore a hook
(:mod:`shim.nethook`) rebuilds them in the new namespace before CRIU restores the
sockets. The model here is plain frozen data. The record is read over rtnetlink with the
standard library (:mod:`shim.checkpoint.rtnl`, in the shim: a few ms); the rebuild uses
pyroute2, imported only inside :func:`rebuild` (it costs ~12 MiB and ~100 ms to import), which
runs in the rebuild service (:mod:`shim.nethook`).

Rebuilding is all or nothing on the host: everything is checked before anything is created
(the bridge exists, the host-side name is free, no one on the segment answers for an
address), and whatever was created is deleted again if a later step fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from shim.errors import FailedPrecondition, InvalidArgument

__all__ = [
    "LOOPBACK",
    "SNAPSHOT",
    "SNAPSHOT_VERSION",
    "Address",
    "Link",
    "NetworkSnapshot",
    "Route",
    "VethPeer",
    "announce",
    "arp_announcement",
    "arp_probe",
    "as_moving",
    "claims",
    "cut_off",
    "dump_snapshot",
    "has_inet_sockets",
    "has_own_netns",
    "interfaces",
    "is_loopback_only",
    "joins_netns",
    "link_mac",
    "load_snapshot",
    "loopback_snapshot",
    "probe_from_host",
    "rebuild",
    "sockstat_has_sockets",
    "take_snapshot",
]

SNAPSHOT = "pyrunc-network.json"
SNAPSHOT_VERSION = 1
IFF_UP = 0x1
RTPROT_KERNEL = 2
RT_TABLE_MAIN = 254
_DAD_WAIT = 0.03  # seconds to wait for an ARP answer on a local bridge
_DAD_INTERVAL = 0.005  # probes are sent again this often while waiting


class NetworkError(FailedPrecondition):
    """The recorded network cannot be rebuilt here (missing bridge, name or address taken)."""


TCP_LOCK_TABLE = "pyrunc_restore_lock"
"""The nftables table (family inet) that drops every TCP segment arriving in a rebuilt
namespace until the restore is over (:func:`tcp_lock_rules`). Without it a peer's
retransmission that arrives after the links are up but before CRIU has restored the socket
finds no socket and is answered with a reset, which kills the connection the restore is
about to bring back (measured: a migrated net-seq's restored socket got ECONNRESET at once)."""


def tcp_lock_rules() -> str:
    """``nft -f`` input that creates :data:`TCP_LOCK_TABLE`."""
    return (
        f"table inet {TCP_LOCK_TABLE} {{\n"
        "  chain input { type filter hook input priority -300; policy accept;"
        " meta l4proto tcp drop; }\n"
        "}\n"
    )


def nft_path() -> str:
    """``PATH`` with the sbin directories, where ``nft`` lives, last."""
    return f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"


def _nft() -> str:
    import shutil

    return shutil.which("nft", path=nft_path()) or "nft"


def cut_off(pid: int) -> None:
    """Cut ``pid``'s network namespace off before its task is killed, so that its TCP
    sockets cannot reset or close connections a copy elsewhere now holds (the source of a
    move, or a destination's copy discarded after a failed post-copy): delete every link but
    lo (a veth takes its host-side peer with it, whose name the container's next move back
    needs), then destroy its TCP sockets (``ss -K``; with no link left nothing reaches the
    peers, and no orphaned socket keeps the namespace alive retransmitting a FIN)."""
    import subprocess

    enter = ["nsenter", "-t", str(pid), "-n"]
    out = subprocess.run([*enter, "ip", "-j", "link", "show"], capture_output=True, text=True,
                         timeout=30, check=False).stdout
    with contextlib.suppress(ValueError):
        for link in json.loads(out or "[]"):
            name = link.get("ifname", "") if isinstance(link, dict) else ""
            if name and name != "lo":
                subprocess.run([*enter, "ip", "link", "del", name], capture_output=True,
                               timeout=30, check=False)
    subprocess.run([*enter, "ss", "-K", "-t", "state", "all"], capture_output=True, timeout=30,
                   check=False)


def tcp_unlock_argv(pid: int) -> list[str]:
    """The command that deletes :data:`TCP_LOCK_TABLE` in ``pid``'s network namespace (run
    it with ``PATH`` = :func:`nft_path`)."""
    return ["nsenter", f"--net=/proc/{pid}/ns/net", "nft", "delete", "table", "inet",
            TCP_LOCK_TABLE]


def _lock_tcp() -> None:
    """Install :data:`TCP_LOCK_TABLE` in this thread's network namespace (a child started
    from this thread is in it).

    Raises:
        NetworkError: ``nft`` failed or is missing.
    """
    import subprocess

    try:
        proc = subprocess.run([_nft(), "-f", "-"], input=tcp_lock_rules().encode(),
                              capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"locking TCP in the restored namespace: nft: {exc}") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise NetworkError(f"locking TCP in the restored namespace: nft: {err}")


@dataclass(frozen=True, slots=True)
class VethPeer:
    """The host side of a container's veth: its name and the bridge it is attached to."""

    name: str
    bridge: str  # "" = attached to no bridge
    mtu: int


@dataclass(frozen=True, slots=True)
class Link:
    name: str
    kind: str  # "loopback", "veth", ...
    mtu: int
    mac: str
    up: bool
    peer: VethPeer | None = None


@dataclass(frozen=True, slots=True)
class Address:
    link: str
    family: int  # socket.AF_INET / AF_INET6
    address: str
    prefixlen: int


@dataclass(frozen=True, slots=True)
class Route:
    family: int
    dst: str  # "" = default
    dst_len: int
    gateway: str
    link: str
    metric: int = 0


@dataclass(frozen=True, slots=True)
class NetworkSnapshot:
    links: tuple[Link, ...]
    addresses: tuple[Address, ...]
    routes: tuple[Route, ...]
    # The namespace held inet sockets at checkpoint: CRIU restores them into the new
    # namespace, which must then be rebuilt first (by the hook). Without any, the shim may
    # bring the namespace up after the restore instead, which is cheaper.
    sockets: bool = True
    # Recorded for a move to another host (``pyrunc migrate``): the addresses stay the
    # source's until it is frozen, so the rebuild does not ask who holds them (the source
    # would answer) but announces them once they are in place (:func:`_announce`).
    moving: bool = False

    def rebuildable(self) -> tuple[Link, ...]:
        """The links the hook knows how to recreate (veth pairs); others are refused."""
        return tuple(link for link in self.links if link.kind == "veth")


def dump_snapshot(snap: NetworkSnapshot) -> bytes:
    doc = {"version": SNAPSHOT_VERSION, **asdict(snap)}
    return json.dumps(doc, sort_keys=True, indent=1).encode()


def load_snapshot(data: bytes) -> NetworkSnapshot:
    """Parse a stored snapshot, checking every field's type and that every address and route
    names a recorded link (so a rebuild never stops half way on a malformed file).

    Raises:
        InvalidArgument: not a snapshot of a version this code knows, or malformed.
    """
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise InvalidArgument(f"bad network snapshot: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidArgument("bad network snapshot: not a JSON object")
    version = doc.get("version")
    if type(version) is not int or version != SNAPSHOT_VERSION:
        raise InvalidArgument(f"network snapshot version {version!r} unknown")
    try:
        links = tuple(
            _record(Link, {**link, "peer": _record(VethPeer, link["peer"])})
            if isinstance(link, dict) and link.get("peer") is not None
            else _record(Link, link)
            for link in _list(doc, "links")
        )
        sockets, moving = doc.get("sockets", True), doc.get("moving", False)
        for name, value in (("sockets", sockets), ("moving", moving)):
            if type(value) is not bool:
                raise TypeError(f"{name!r} is not a bool: {value!r}")
        snap = NetworkSnapshot(
            links,
            tuple(_record(Address, a) for a in _list(doc, "addresses")),
            tuple(_record(Route, r) for r in _list(doc, "routes")),
            sockets,
            moving,
        )
        _check_references(snap)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"bad network snapshot: {exc}") from exc
    return snap


def as_moving(data: bytes) -> bytes:
    """The stored snapshot ``data`` marked :attr:`NetworkSnapshot.moving` (what a destination
    of a move restores from); ``data`` itself if it is no valid snapshot (the restore then
    says why)."""
    try:
        snap = load_snapshot(data)
    except InvalidArgument:
        return data
    return dump_snapshot(replace(snap, moving=True))


_FIELD_TYPES: dict[type, dict[str, type]] = {
    VethPeer: {"name": str, "bridge": str, "mtu": int},
    Link: {"name": str, "kind": str, "mtu": int, "mac": str, "up": bool, "peer": VethPeer},
    Address: {"link": str, "family": int, "address": str, "prefixlen": int},
    Route: {"family": int, "dst": str, "dst_len": int, "gateway": str, "link": str, "metric": int},
}


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc[key]
    if not isinstance(value, list):
        raise TypeError(f"{key!r} is not a list")
    return value


def _record(cls: type[Any], raw: object) -> Any:
    """``cls(**raw)`` for a JSON object whose fields all have ``cls``'s types (an int is no
    bool here; ``peer`` may be null)."""
    if not isinstance(raw, dict):
        raise TypeError(f"a {cls.__name__} is not an object: {raw!r}")
    types = _FIELD_TYPES[cls]
    for key, value in raw.items():
        want = types.get(key)
        if want is None:
            raise TypeError(f"{cls.__name__} has no field {key!r}")
        if value is None and want is VethPeer:
            continue
        if type(value) is not want:
            raise TypeError(f"{cls.__name__}.{key} is not a {want.__name__}: {value!r}")
    return cls(**raw)


def _check_references(snap: NetworkSnapshot) -> None:
    names = [link.name for link in snap.links]
    if len(set(names)) != len(names):
        raise ValueError(f"link names repeat: {names}")
    items: list[Address | Route] = [*snap.addresses, *snap.routes]
    for item in items:
        if item.link not in names:
            raise ValueError(f"{type(item).__name__.lower()} on unknown link {item.link!r}")
        if item.family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"address family {item.family} is neither IPv4 nor IPv6")


def has_own_netns(pid: int) -> bool:
    """True if ``pid`` lives in another network namespace than this process."""
    try:
        return os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    except OSError:
        return False


def joins_netns(spec: Mapping[str, object]) -> bool:
    """True if the OCI ``spec`` joins an existing network namespace by ``path`` (a CNI pod's,
    say): the container does not own it, so its network is neither recorded at a checkpoint
    nor rebuilt at a restore (whoever made the namespace sets it up again)."""
    linux = spec.get("linux")
    namespaces = linux.get("namespaces") if isinstance(linux, dict) else None
    if not isinstance(namespaces, list):
        return False
    return any(isinstance(ns, dict) and ns.get("type") == "network" and bool(ns.get("path"))
               for ns in namespaces)


LOOPBACK = Link(name="lo", kind="loopback", mtu=65536, mac="00:00:00:00:00:00", up=True)


def interfaces(pid: int) -> list[str]:
    """The interface names in ``pid``'s network namespace (``/proc/<pid>/net/dev``)."""
    with open(f"/proc/{pid}/net/dev") as f:
        lines = f.read().splitlines()[2:]
    return [line.split(":", 1)[0].strip() for line in lines if ":" in line]


# Per-namespace socket counts (``/proc/<pid>/net/sockstat`` and ``sockstat6``): a socket of
# these protocols is counted while it is in the protocol's tables, i.e. exactly while
# ``/proc/<pid>/net/{tcp,udp,raw}[6]`` would list it; ``tw`` counts TIME_WAIT entries, which
# those tables list too. FRAG's ``inuse`` is reassembly queues, not sockets.
_SOCKSTAT_PROTOCOLS = frozenset(
    {"TCP", "UDP", "UDPLITE", "RAW", "TCP6", "UDP6", "UDPLITE6", "RAW6"}
)
_SOCKSTAT_COUNTS = frozenset({"inuse", "tw"})


def sockstat_has_sockets(text: str) -> bool:
    """True if a ``sockstat``/``sockstat6`` text counts any TCP, UDP, UDP-Lite or raw IP
    socket (or TIME_WAIT entry). A line it cannot read counts as sockets (the safe way)."""
    for line in text.splitlines():
        proto, _, rest = line.partition(":")
        if proto not in _SOCKSTAT_PROTOCOLS:
            continue
        fields = rest.split()
        for name, value in zip(fields[::2], fields[1::2], strict=False):
            if name in _SOCKSTAT_COUNTS:
                try:
                    if int(value) != 0:
                        return True
                except ValueError:
                    return True
    return False


def has_inet_sockets(pid: int) -> bool:
    """True if ``pid``'s network namespace has any TCP, UDP or raw IP socket.

    Read from the namespace's counters, not from ``/proc/<pid>/net/tcp`` and the like: those
    walk the kernel's whole (host-wide) socket hash tables: 9-22 ms measured for an empty
    namespace on a Linux 6.18 VM; the counters take ~0.1 ms."""
    for table in ("sockstat", "sockstat6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                if sockstat_has_sockets(f.read()):
                    return True
        except FileNotFoundError:
            continue  # e.g. no IPv6 in this kernel
    return False


def loopback_snapshot(pid: int) -> NetworkSnapshot | None:
    """The snapshot of a namespace that holds nothing but ``lo`` (most containers), read
    without netlink; None when there is more to record (then :func:`take_snapshot`)."""
    if interfaces(pid) != ["lo"]:
        return None
    try:  # the container's own /sys shows its namespace's devices; lo is up unless told
        with open(f"/proc/{pid}/root/sys/class/net/lo/flags") as f:
            up = bool(int(f.read(), 16) & IFF_UP)
    except (OSError, ValueError):
        up = True
    return NetworkSnapshot((replace(LOOPBACK, up=up),), (), (), has_inet_sockets(pid))


def is_loopback_only(snap: NetworkSnapshot) -> bool:
    return all(link.kind == "loopback" for link in snap.links) and not snap.routes


# -- talking to the kernel ----------------------------------------------------------------


def take_snapshot(pid: int) -> NetworkSnapshot:
    """Record the network of ``pid``'s namespace (host-side peers from this namespace), over
    rtnetlink with the standard library (:mod:`shim.checkpoint.rtnl`: a few ms, no child, no
    pyroute2).

    Raises:
        OSError: the namespace cannot be entered or read.
    """
    from shim.checkpoint import rtnl

    with rtnl.Rtnl() as host, rtnl.open_in(f"/proc/{pid}/ns/net") as ns:
        found = ns.links()
        names = {m.index: m.name for m in found}
        links = []
        for m in found:
            kind = m.kind or ("loopback" if m.name == "lo" else "unknown")
            peer = _host_peer(host, m.link) if kind == "veth" and m.link else None
            links.append(Link(name=m.name, kind=kind, mtu=m.mtu, mac=m.mac,
                              up=bool(m.flags & IFF_UP), peer=peer))
        addresses = []
        for a in ns.addresses():
            if a.family == socket.AF_INET6 and a.address.startswith("fe80:"):
                continue  # link-local: the kernel makes it again
            if names.get(a.index) == "lo" or a.index not in names:
                continue  # loopback addresses come with the link
            addresses.append(Address(names[a.index], a.family, a.address, a.prefixlen))
        routes = []
        for r in ns.routes():
            if r.table != RT_TABLE_MAIN or r.protocol == RTPROT_KERNEL:
                continue  # other tables; made by the kernel when the address is added
            if r.oif not in names or names[r.oif] == "lo":
                continue
            routes.append(Route(family=r.family, dst=r.dst, dst_len=r.dst_len,
                                gateway=r.gateway, link=names[r.oif], metric=r.priority))
    return NetworkSnapshot(tuple(links), tuple(addresses), tuple(routes))


def _host_peer(host: Any, index: int) -> VethPeer | None:
    """The host side of a veth whose peer has ``index`` here: its name, its bridge, its MTU;
    None if there is no link of that index."""
    try:
        peer = host.link(index)
    except OSError:
        return None
    if peer is None:
        return None
    bridge = ""
    if peer.master and (br := host.link(peer.master)) is not None:
        bridge = br.name
    return VethPeer(peer.name, bridge, peer.mtu)


ETH_P_ARP = 0x0806
_ARP = struct.Struct("!6s6sHHHBBH6s4s6s4s")  # Ethernet header + ARP for IPv4 over Ethernet


def arp_announcement(mac: str, address: str) -> bytes:
    """The RFC 5227 ARP announcement that ``mac`` holds ``address`` now: broadcast, sender and
    target IP both ``address``; neighbours update their caches and bridges learn the port."""
    hw = bytes.fromhex(mac.replace(":", ""))
    ip = socket.inet_aton(address)
    arp = (1, 0x0800, 6, 4, 1, hw, ip, bytes(6), ip)
    return _ARP.pack(b"\xff" * 6, hw, ETH_P_ARP, *arp)


def arp_probe(mac: str, address: str) -> bytes:
    """The RFC 5227 ARP probe asking who holds ``address``: broadcast, sender ``mac`` with
    sender IP 0.0.0.0 (so no one's cache learns anything from it)."""
    hw = bytes.fromhex(mac.replace(":", ""))
    # htype Ethernet, ptype IPv4, hlen, plen, op request, sha, spa, tha, tpa
    arp = (1, 0x0800, 6, 4, 1, hw, bytes(4), bytes(6), socket.inet_aton(address))
    return _ARP.pack(b"\xff" * 6, hw, ETH_P_ARP, *arp)


def claims(frame: bytes, address: str) -> bool:
    """True if ``frame`` is an ARP reply from someone who holds ``address``."""
    if len(frame) < _ARP.size:
        return False
    fields = _ARP.unpack_from(frame)
    return bool(
        fields[2] == ETH_P_ARP and fields[7] == 2 and fields[9] == socket.inet_aton(address)
    )


def _addresses_in_use(
    probes: list[tuple[str, str, str]], release: contextlib.ExitStack
) -> list[str]:
    """Duplicate address detection: ARP probes for every (link, mac, IPv4 address) from this
    thread's namespace, sent at once and again every :data:`_DAD_INTERVAL` for
    :data:`_DAD_WAIT`; the addresses someone answered for.

    The probes are repeated because the first frames through a link that just came up are
    often late or lost (answers measured 0.1 to 25 ms after a first probe on a 2-vCPU VM,
    some never came; answers to a second probe within 0.3 ms), as RFC 5227 sends several. The
    packet sockets are created with protocol 0 and bound to ARP afterwards (a socket created
    for ARP would be unhooked again at bind, waiting for an RCU grace period), and their
    closing - another grace period, ~10 ms each - goes onto ``release``."""
    socks: dict[str, socket.socket] = {}
    for ifname, _, _ in probes:
        if ifname not in socks:
            sock = socks[ifname] = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            release.enter_context(sock)
            sock.bind((ifname, ETH_P_ARP))
            sock.setblocking(False)
    names = {sock: name for name, sock in socks.items()}
    wanted = {(ifname, address) for ifname, _, address in probes}
    taken: list[str] = []
    start = time.monotonic()
    deadline, next_send = start + _DAD_WAIT, start
    while wanted and (now := time.monotonic()) < deadline:
        if now >= next_send:
            for ifname, mac, address in probes:
                if (ifname, address) in wanted:
                    socks[ifname].send(arp_probe(mac, address))
            next_send = now + _DAD_INTERVAL
        ready, _, _ = select.select(list(socks.values()), [], [], min(deadline, next_send) - now)
        for sock in ready:
            with contextlib.suppress(BlockingIOError):
                while frame := sock.recv(128):
                    for name, address in sorted(wanted):
                        if name == names[sock] and claims(frame, address):
                            wanted.discard((name, address))
                            taken.append(address)
    return taken


_SIOCGIFHWADDR = 0x8927
_IFREQ = struct.Struct("16sH14s")  # struct ifreq: the name, then a sockaddr (family, data)


def link_mac(name: str) -> str | None:
    """The hardware address of the link ``name`` in this thread's network namespace, as
    ``aa:bb:..``; None if there is no such link.

    Asked of the kernel (SIOCGIFHWADDR on a socket made here), not read from
    ``/sys/class/net``: sysfs shows the namespace it was mounted in, which is not this one
    for a process entered into a namespace with ``nsenter --net`` or setns (a containerd
    started that way, and its shims: the bridge was not found there, and the duplicate
    address detection moved from before the restore into its frozen window, +30 ms).
    """
    import errno
    import fcntl

    encoded = name.encode()
    if not 0 < len(encoded) < 16:  # IFNAMSIZ, its NUL included: no link has such a name
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            raw = fcntl.ioctl(sock, _SIOCGIFHWADDR, _IFREQ.pack(encoded, 0, b""))
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
    hw: bytes = _IFREQ.unpack(raw)[2]
    return hw[:6].hex(":")


def probe_from_host(snap: NetworkSnapshot, release: contextlib.ExitStack) -> frozenset[str]:
    """Duplicate address detection done early, from this (the host's) namespace: ARP probes
    for the IPv4 addresses of every veth attached to a bridge, sent on that bridge with its
    own MAC - the segment the rebuilt link will join. The rebuild service does this while
    CRIU is still busy, so the hook does not wait for answers.

    A moving snapshot (:attr:`NetworkSnapshot.moving`) is not probed: its addresses are the
    source's until the source is frozen.

    Returns:
        The addresses probed (the rebuild need not probe them again).
    Raises:
        NetworkError: someone on the segment answered for an address.
    """
    if snap.moving:
        return frozenset()
    links = {link.name: link for link in snap.links}
    probes: list[tuple[str, str, str]] = []
    for addr in snap.addresses:
        link = links[addr.link]
        if addr.family != socket.AF_INET or link.peer is None or not link.peer.bridge:
            continue
        mac = link_mac(link.peer.bridge)
        if mac is None:
            continue  # no such bridge: the rebuild's host check says so
        probes.append((link.peer.bridge, mac, addr.address))
    try:
        taken = _addresses_in_use(probes, release) if probes else []
    except PermissionError:
        return frozenset()  # no packet sockets here: the rebuild probes from the namespace
    if taken:
        raise NetworkError(f"address {', '.join(taken)} is already in use on the network")
    return frozenset(address for _, _, address in probes)


def _check_host(host: Any, snap: NetworkSnapshot) -> None:
    for link in snap.links:
        if link.kind in ("loopback",):
            continue
        if link.kind != "veth" or link.peer is None:
            raise NetworkError(f"cannot rebuild link {link.name!r} of kind {link.kind!r}")
        if host.link_lookup(ifname=link.peer.name):
            raise NetworkError(f"host interface {link.peer.name!r} already exists")
        if link.peer.bridge and not host.link_lookup(ifname=link.peer.bridge):
            raise NetworkError(f"bridge {link.peer.bridge!r} is missing on this host")


def rebuild(
    snap: NetworkSnapshot,
    pid: int,
    *,
    release: contextlib.ExitStack | None = None,
    probed: frozenset[str] = frozenset(),
) -> None:
    """Recreate ``snap`` in ``pid``'s (new, empty) network namespace.

    Host side first (veth pairs, each host end on its bridge), then, with this thread in the
    namespace, the container side: MACs, MTUs, links up, one ARP probe round for every IPv4
    address, addresses, routes.

    Args:
        snap: what to build.
        pid: a process in the namespace.
        release: takes what may be closed late: the ARP probe sockets, whose closing waits
            for RCU grace periods. The rebuild service closes them after answering the hook;
            without it they are closed before this returns.
        probed: addresses already checked by :func:`probe_from_host`; not probed again.

    Raises:
        NetworkError: the host cannot take it (nothing was changed on the host then).
    """
    from pyroute2 import IPRoute

    from shim.checkpoint import rtnl

    netns = f"/proc/{pid}/ns/net"
    created: list[str] = []
    with contextlib.ExitStack() as own, IPRoute() as host:
        _check_host(host, snap)
        try:
            fd = os.open(netns, os.O_RDONLY)
            try:
                _add_host_links(host, snap, fd, created)
            finally:
                os.close(fd)
            # made inside the namespace: IPRoute(netns=...) would fork a helper (~7 ms)
            with rtnl.in_netns(netns), IPRoute() as ns:
                _configure(ns, snap, release if release is not None else own, probed)
        except BaseException:
            for name in created:
                with contextlib.suppress(Exception):
                    host.link("del", index=host.link_lookup(ifname=name)[0])
            raise


def _add_host_links(host: Any, snap: NetworkSnapshot, fd: int, created: list[str]) -> None:
    for link in snap.links:
        if link.kind != "veth" or link.peer is None:
            continue
        host.link(
            "add", ifname=link.peer.name, kind="veth", peer={"ifname": link.name, "net_ns_fd": fd}
        )
        created.append(link.peer.name)
        (index,) = host.link_lookup(ifname=link.peer.name)
        settings: dict[str, Any] = {"state": "up"}
        if link.peer.mtu:
            settings["mtu"] = link.peer.mtu
        if link.peer.bridge:
            settings["master"] = host.link_lookup(ifname=link.peer.bridge)[0]
        host.link("set", index=index, **settings)


def _configure(
    ns: Any, snap: NetworkSnapshot, release: contextlib.ExitStack, probed: frozenset[str]
) -> None:
    """The namespace side of :func:`rebuild`; this thread is in the namespace. With inet
    sockets to restore, TCP is locked before any link comes up (:data:`TCP_LOCK_TABLE`;
    the shim unlocks it after the restore)."""
    if snap.sockets:
        _lock_tcp()
    index_of = {}
    for link in snap.links:
        (index,) = ns.link_lookup(ifname=link.name)
        index_of[link.name] = index
        if link.kind == "veth":
            ns.link("set", index=index, address=link.mac, mtu=link.mtu)
        if link.up:
            ns.link("set", index=index, state="up")
    ipv4 = _ipv4(snap)
    probes = [] if snap.moving else [p for p in ipv4 if p[2] not in probed]
    if probes and (taken := _addresses_in_use(probes, release)):
        raise NetworkError(f"address {', '.join(taken)} is already in use on the network")
    for addr in snap.addresses:
        ns.addr("add", index=index_of[addr.link], address=addr.address, prefixlen=addr.prefixlen)
    for route in snap.routes:
        spec: dict[str, Any] = {"family": route.family, "oif": index_of[route.link]}
        spec["dst"] = (
            f"{route.dst}/{route.dst_len}"
            if route.dst
            else ("0.0.0.0/0" if route.family == socket.AF_INET else "::/0")
        )
        if route.gateway:
            spec["gateway"] = route.gateway
        if route.metric:
            spec["priority"] = route.metric
        ns.route("add", **spec)
    if snap.moving and ipv4:
        _announce(ipv4, release)


def _ipv4(snap: NetworkSnapshot) -> list[tuple[str, str, str]]:
    """(link, mac, address) of every IPv4 address on an up veth of ``snap``."""
    links = {link.name: link for link in snap.links}
    return [
        (addr.link, links[addr.link].mac, addr.address)
        for addr in snap.addresses
        if addr.family == socket.AF_INET
        and links[addr.link].up
        and links[addr.link].kind == "veth"
    ]


def announce(snap: NetworkSnapshot) -> None:
    """Announce ``snap``'s IPv4 addresses from this thread's namespace (now, and again
    :data:`_ANNOUNCE_AGAIN` later, before this returns): a source put back after its
    destination announced them takes its neighbours' and bridges' path back."""
    with contextlib.ExitStack() as stack:
        _announce(_ipv4(snap), stack)


_ANNOUNCE_AGAIN = (0.01, 0.05)  # s after the first: the first frames on a new link get lost


def _announce(addresses: list[tuple[str, str, str]], release: contextlib.ExitStack) -> None:
    """Announce each (link, mac, IPv4 address) from this thread's namespace: once now, and
    again from ``release`` (once the hook has its answer), :data:`_ANNOUNCE_AGAIN` later."""
    socks: dict[str, socket.socket | None] = {}
    frames = []
    for ifname, mac, address in addresses:
        if ifname not in socks:
            socks[ifname] = None
            with contextlib.suppress(OSError):  # a lost announcement costs time, not the move
                made = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
                release.enter_context(made)  # (closed last: after the sends below)
                made.bind((ifname, ETH_P_ARP))
                socks[ifname] = made
        if (sock := socks[ifname]) is not None:
            frames.append((sock, arp_announcement(mac, address)))

    def send() -> None:
        for sock, frame in frames:
            with contextlib.suppress(OSError):  # a lost announcement costs time, not the move
                sock.send(frame)

    def again() -> None:
        start = time.monotonic()
        for delay in _ANNOUNCE_AGAIN:
            time.sleep(max(0.0, start + delay - time.monotonic()))
            send()

    send()
    release.callback(again)
