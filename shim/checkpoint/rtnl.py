"""Reading links, addresses and routes over rtnetlink with the standard library alone.

Strategy: the network record of a checkpoint (:func:`shim.checkpoint.network.take_snapshot`)
needs three dumps (``RTM_GETLINK``, ``RTM_GETADDR``, ``RTM_GETROUTE``) in the container's
namespace and a few link lookups in the caller's. pyroute2 costs ~100-200 ms to import, which
the shim never pays itself: the record was taken by a child process, inside a migration's
frozen window. Here a netlink socket is opened in the container's namespace by a thread of
its own that enters the namespace, makes the socket and ends (the socket stays in the
namespace it was made in; no thread of the caller changes namespace), and the messages are
parsed with :mod:`struct`: a few ms, no child. Only what the record uses is decoded.
Messages: ``rtnetlink(7)``, ``netlink(7)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "AddrMessage", "LinkMessage", "RouteMessage", "Rtnl", "in_netns", "open_in", "socket_in",
]

NETLINK_ROUTE = 0
CLONE_NEWNET = 0x40000000
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_DUMP_INTR, NLM_F_DUMP = 0x1, 0x2, 0x10, 0x300
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER, IFLA_LINKINFO = 1, 3, 4, 5, 10, 18
IFLA_INFO_KIND = 1
IFA_ADDRESS = 1
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope,
#                                       type, flags
_RTATTR = struct.Struct("=HH")  # len, type
_RECV = 1 << 20
_DUMP_TRIES = 5  # an interrupted dump is taken again (a running container's tables change)

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True, slots=True)
class LinkMessage:
    index: int
    flags: int
    name: str
    kind: str  # IFLA_INFO_KIND, "" if none
    mtu: int
    mac: str  # IFLA_ADDRESS as aa:bb:..., "" if none
    link: int  # IFLA_LINK (a veth's peer index), 0 if none
    master: int  # IFLA_MASTER, 0 if none


@dataclass(frozen=True, slots=True)
class AddrMessage:
    family: int
    prefixlen: int
    index: int
    address: str  # IFA_ADDRESS, "" if none


@dataclass(frozen=True, slots=True)
class RouteMessage:
    family: int
    dst_len: int
    table: int  # RTA_TABLE, else the header's
    protocol: int
    dst: str  # "" = none (a default route)
    gateway: str
    oif: int  # 0 = none (e.g. a multipath route)
    priority: int


def _attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """The attributes in ``data`` from ``offset`` (type -> payload; the last one of a type
    wins)."""
    out: dict[int, bytes] = {}
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size or offset + length > len(data):
            break
        out[kind & _NLA_TYPE_MASK] = data[offset + _RTATTR.size:offset + length]
        offset += (length + 3) & ~3
    return out


def _text(raw: bytes | None) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace") if raw else ""


def _u32(raw: bytes | None) -> int:
    return int(struct.unpack("=I", raw[:4])[0]) if raw and len(raw) >= 4 else 0


def _ip(family: int, raw: bytes | None) -> str:
    return socket.inet_ntop(family, raw) if raw else ""


def parse_link(body: bytes) -> LinkMessage:
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(body)
    a = _attrs(body, _IFINFOMSG.size)
    info = _attrs(a[IFLA_LINKINFO]) if IFLA_LINKINFO in a else {}
    mac = a.get(IFLA_ADDRESS)
    return LinkMessage(
        index=index,
        flags=flags,
        name=_text(a.get(IFLA_IFNAME)),
        kind=_text(info.get(IFLA_INFO_KIND)),
        mtu=_u32(a.get(IFLA_MTU)),
        mac=":".join(f"{b:02x}" for b in mac) if mac else "",
        link=_u32(a.get(IFLA_LINK)),
        master=_u32(a.get(IFLA_MASTER)),
    )


def parse_addr(body: bytes) -> AddrMessage:
    family, prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(body)
    a = _attrs(body, _IFADDRMSG.size)
    return AddrMessage(family, prefixlen, index, _ip(family, a.get(IFA_ADDRESS)))


def parse_route(body: bytes) -> RouteMessage:
    family, dst_len, _src_len, _tos, table, protocol, _scope, _type, _flags = (
        _RTMSG.unpack_from(body)
    )
    a = _attrs(body, _RTMSG.size)
    return RouteMessage(
        family=family,
        dst_len=dst_len,
        table=_u32(a[RTA_TABLE]) if RTA_TABLE in a else table,
        protocol=protocol,
        dst=_ip(family, a.get(RTA_DST)),
        gateway=_ip(family, a.get(RTA_GATEWAY)),
        oif=_u32(a.get(RTA_OIF)),
        priority=_u32(a.get(RTA_PRIORITY)),
    )


class Rtnl:
    """Requests on one ``NETLINK_ROUTE`` socket (closed with the object)."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self._sock = sock or socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE
        )
        self._seq = 0

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _request(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request; the (type, body) of each answer. A dump that a change of the
        tables interrupted (``NLM_F_DUMP_INTR`` on a message: it may lack entries or hold
        stale ones) is taken again, up to :data:`_DUMP_TRIES` times in all.

        Raises:
            OSError: the kernel answered with an error (its errno), a dump ended with one
                (a non-zero ``NLMSG_DONE``), or every try was interrupted (``EAGAIN``).
        """
        for _ in range(_DUMP_TRIES):
            answers, interrupted = self._exchange(kind, flags, body)
            if not interrupted:
                return answers
        raise OSError(errno.EAGAIN, f"netlink: the dump was interrupted by changes"
                                    f" {_DUMP_TRIES} times in a row")

    def _exchange(
        self, kind: int, flags: int, body: bytes
    ) -> tuple[list[tuple[int, bytes]], bool]:
        """One request and all its answers up to the last; whether any said
        ``NLM_F_DUMP_INTR`` (the dump is read to its end all the same: nothing of it is left
        on the socket for the next request)."""
        self._seq += 1
        seq = self._seq
        self._sock.send(
            _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0)
            + body
        )
        answers: list[tuple[int, bytes]] = []
        interrupted = False
        while True:
            data = self._sock.recv(_RECV)
            if not data:
                raise OSError(errno.EPROTO, "netlink: the answer ended before its last message")
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, mtype, mflags, mseq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    raise OSError(errno.EPROTO, "netlink: malformed message")
                msg = data[offset + _NLMSGHDR.size:offset + length]
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue  # an answer to an earlier request
                interrupted = interrupted or bool(mflags & NLM_F_DUMP_INTR)
                if mtype in (NLMSG_DONE, NLMSG_ERROR):
                    # NLMSG_ERROR: an errno (0: an acknowledgement); NLMSG_DONE of a dump:
                    # the errno it ended with (0, or none at all from older kernels)
                    code = struct.unpack_from("=i", msg)[0] if len(msg) >= 4 else 0
                    if code:
                        raise OSError(-code, f"netlink: {os.strerror(-code)}")
                    return answers, interrupted
                answers.append((mtype, msg))
                if not mflags & NLM_F_MULTI and not flags & NLM_F_DUMP:  # one answer
                    return answers, interrupted

    def links(self) -> list[LinkMessage]:
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        return [parse_link(m) for t, m in self._request(RTM_GETLINK, NLM_F_DUMP, body)
                if t == RTM_NEWLINK]

    def link(self, index: int) -> LinkMessage | None:
        """The link of ``index`` in this socket's namespace; None if there is none."""
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0)
        try:
            for t, m in self._request(RTM_GETLINK, 0, body):
                if t == RTM_NEWLINK:
                    return parse_link(m)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
        return None

    def addresses(self) -> list[AddrMessage]:
        body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        return [parse_addr(m) for t, m in self._request(RTM_GETADDR, NLM_F_DUMP, body)
                if t == RTM_NEWADDR]

    def routes(self) -> list[RouteMessage]:
        """IPv4 and IPv6 routes of every table (the kernel answers a dump of family
        AF_UNSPEC with IPv4's only)."""
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
            out += [parse_route(m) for t, m in self._request(RTM_GETROUTE, NLM_F_DUMP, body)
                    if t == RTM_NEWROUTE]
        return out


@contextlib.contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run the block with the calling thread in the network namespace at ``path`` (e.g.
    ``/proc/<pid>/ns/net``), and bring it back to its own afterwards.

    Raises:
        OSError: the namespace cannot be entered, or the thread cannot go back.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


def socket_in(netns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A new socket (``socket.socket(family, kind, proto)``) that lives in the network
    namespace at ``netns`` (e.g. ``/proc/<pid>/ns/net``). A thread of its own enters the
    namespace (:func:`in_netns`), makes the socket and ends, so no thread of the caller ever
    changes namespace.

    Raises:
        OSError: the namespace cannot be entered or the socket made.
    """
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            with in_netns(netns):
                made.append(socket.socket(family, kind, proto))
        except BaseException as exc:  # handed to the caller's thread
            made.append(exc)

    thread = threading.Thread(target=make, name="netns-socket", daemon=True)
    thread.start()
    thread.join()
    result = made[0]
    if isinstance(result, BaseException):
        raise result
    return result


def open_in(netns: str) -> Rtnl:
    """An :class:`Rtnl` whose socket lives in the network namespace at ``netns`` (e.g.
    ``/proc/<pid>/ns/net``; made by :func:`socket_in`).

    Raises:
        OSError: the namespace cannot be entered or the socket made.
    """
    return Rtnl(socket_in(netns, socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                          NETLINK_ROUTE))
