"""shim.checkpoint.rtnl: rtnetlink messages parsed with the standard library, and the
network record taken with it equal to pyroute2's reading of the same namespaces."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable

import pytest

from shim.checkpoint import rtnl


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((-length) % 4)


def test_a_link_message_is_parsed() -> None:
    nested = _attr(rtnl.IFLA_INFO_KIND, b"veth\0")
    body = (
        struct.pack("=BxHiII", socket.AF_UNSPEC, 1, 7, 0x1003, 0)
        + _attr(rtnl.IFLA_IFNAME, b"eth0\0")
        + _attr(rtnl.IFLA_MTU, struct.pack("=I", 1400))
        + _attr(rtnl.IFLA_ADDRESS, bytes.fromhex("0211223344aa"))
        + _attr(rtnl.IFLA_LINK, struct.pack("=I", 12))
        + _attr(99, b"x")  # unknown: skipped (and its padding)
        + _attr(rtnl.IFLA_LINKINFO | 0x8000, nested)  # NLA_F_NESTED, as the kernel sets it
    )
    m = rtnl.parse_link(body)
    assert m == rtnl.LinkMessage(index=7, flags=0x1003, name="eth0", kind="veth", mtu=1400,
                                 mac="02:11:22:33:44:aa", link=12, master=0)


def test_a_link_without_attributes_has_empty_fields() -> None:
    m = rtnl.parse_link(struct.pack("=BxHiII", 0, 0, 3, 0, 0))
    assert (m.name, m.kind, m.mtu, m.mac, m.link, m.master) == ("", "", 0, "", 0, 0)


def test_address_messages_of_both_families() -> None:
    v4 = struct.pack("=BBBBI", socket.AF_INET, 24, 0, 0, 5) + _attr(
        rtnl.IFA_ADDRESS, socket.inet_pton(socket.AF_INET, "10.1.2.3"))
    v6 = struct.pack("=BBBBI", socket.AF_INET6, 64, 0, 0, 5) + _attr(
        rtnl.IFA_ADDRESS, socket.inet_pton(socket.AF_INET6, "fd00::3"))
    assert rtnl.parse_addr(v4) == rtnl.AddrMessage(socket.AF_INET, 24, 5, "10.1.2.3")
    assert rtnl.parse_addr(v6) == rtnl.AddrMessage(socket.AF_INET6, 64, 5, "fd00::3")


def test_a_route_takes_its_table_from_rta_table_when_there() -> None:
    header = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 252, 3, 0, 1, 0)
    body = (header + _attr(rtnl.RTA_TABLE, struct.pack("=I", 1000))
            + _attr(rtnl.RTA_GATEWAY, socket.inet_pton(socket.AF_INET, "10.0.0.1"))
            + _attr(rtnl.RTA_OIF, struct.pack("=I", 4))
            + _attr(rtnl.RTA_PRIORITY, struct.pack("=I", 7)))
    r = rtnl.parse_route(body)
    assert r == rtnl.RouteMessage(family=socket.AF_INET, dst_len=0, table=1000, protocol=3,
                                  dst="", gateway="10.0.0.1", oif=4, priority=7)
    plain = struct.pack("=BBBBBBBBI", socket.AF_INET6, 64, 0, 0, 254, 2, 0, 1, 0) + _attr(
        rtnl.RTA_DST, socket.inet_pton(socket.AF_INET6, "fd01::"))
    r = rtnl.parse_route(plain)
    assert (r.table, r.protocol, r.dst, r.dst_len, r.oif) == (254, 2, "fd01::", 64, 0)


def test_a_truncated_attribute_ends_the_parse() -> None:
    body = struct.pack("=BxHiII", 0, 0, 1, 0, 0) + _attr(rtnl.IFLA_IFNAME, b"lo\0") + \
        struct.pack("=HH", 40, rtnl.IFLA_MTU) + b"\0" * 4
    m = rtnl.parse_link(body)
    assert (m.name, m.mtu) == ("lo", 0)


# In a network namespace of its own ("the host"): a bridge, two veth pairs whose other ends
# go into a child's namespace ("the container") with addresses of both families, routes in
# the main table and in another, a link of another kind. The record taken over rtnetlink
# must equal what pyroute2 reads of the same namespaces.
_IN_NEW_NETNS = r"""
import json, os, subprocess, sys, time
from dataclasses import asdict
from pyroute2 import IPRoute
from shim.checkpoint.network import take_snapshot

def ip(*args, pid=None):
    pre = ["nsenter", "-t", str(pid), "-n"] if pid else []
    subprocess.run([*pre, "ip", *args], check=True)

child = subprocess.Popen(["unshare", "--net", "sleep", "60"])
try:
    me = os.readlink("/proc/self/ns/net")
    for _ in range(500):
        try:
            if os.readlink(f"/proc/{child.pid}/ns/net") != me:
                break
        except OSError:
            pass
        time.sleep(0.01)
    pid = child.pid
    ip("link", "add", "br0", "type", "bridge"); ip("link", "set", "br0", "up")
    ip("link", "add", "vh0", "mtu", "1400", "type", "veth", "peer", "name", "eth0")
    ip("link", "set", "vh0", "master", "br0", "up")
    ip("link", "add", "vh1", "type", "veth", "peer", "name", "eth1")
    ip("link", "set", "eth0", "netns", str(pid)); ip("link", "set", "eth1", "netns", str(pid))
    ip("link", "set", "lo", "up", pid=pid)
    ip("link", "set", "eth0", "address", "02:11:22:33:44:55", "up", pid=pid)
    ip("addr", "add", "10.9.0.5/24", "dev", "eth0", pid=pid)
    ip("addr", "add", "10.9.1.5/16", "dev", "eth0", pid=pid)
    ip("addr", "add", "fd00::5/64", "dev", "eth0", "nodad", pid=pid)
    ip("route", "add", "default", "via", "10.9.0.1", "dev", "eth0", "metric", "7", pid=pid)
    ip("route", "add", "192.168.7.0/24", "via", "10.9.0.2", "dev", "eth0", pid=pid)
    ip("-6", "route", "add", "fd01::/64", "via", "fd00::1", "dev", "eth0", pid=pid)
    ip("route", "add", "172.16.0.0/12", "dev", "eth0", "table", "100", pid=pid)
    ip("link", "add", "br9", "type", "bridge", pid=pid)

    got = asdict(take_snapshot(pid))

    def attr(m, name):
        return m.get_attr(name)

    with IPRoute() as host, IPRoute(netns=f"/proc/{pid}/ns/net") as ns:
        names = {m["index"]: attr(m, "IFLA_IFNAME") for m in ns.get_links()}
        links = []
        for m in ns.get_links():
            name = attr(m, "IFLA_IFNAME")
            kind = m.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or (
                "loopback" if name == "lo" else "unknown")
            peer = None
            if kind == "veth" and attr(m, "IFLA_LINK"):
                (p,) = host.get_links(attr(m, "IFLA_LINK"))
                bridge = ""
                if master := attr(p, "IFLA_MASTER"):
                    (br,) = host.get_links(master)
                    bridge = attr(br, "IFLA_IFNAME")
                peer = {"name": attr(p, "IFLA_IFNAME"), "bridge": bridge,
                        "mtu": attr(p, "IFLA_MTU")}
            links.append({"name": name, "kind": kind, "mtu": attr(m, "IFLA_MTU") or 0,
                          "mac": attr(m, "IFLA_ADDRESS") or "", "up": bool(m["flags"] & 1),
                          "peer": peer})
        addresses = [
            {"link": names[a["index"]], "family": a["family"],
             "address": attr(a, "IFA_ADDRESS"), "prefixlen": a["prefixlen"]}
            for a in ns.get_addr()
            if names[a["index"]] != "lo" and not attr(a, "IFA_ADDRESS").startswith("fe80:")]
        routes = [
            {"family": r["family"], "dst": attr(r, "RTA_DST") or "", "dst_len": r["dst_len"],
             "gateway": attr(r, "RTA_GATEWAY") or "", "link": names[attr(r, "RTA_OIF")],
             "metric": attr(r, "RTA_PRIORITY") or 0}
            for r in ns.get_routes(table=254)
            if r["proto"] != 2 and attr(r, "RTA_OIF") in names
            and names[attr(r, "RTA_OIF")] != "lo"]
    want = {"links": links, "addresses": addresses, "routes": routes, "sockets": True,
            "moving": False}
    got = json.loads(json.dumps(got))
    print(json.dumps({"got": got, "want": want}))
finally:
    child.kill()
    child.wait()
"""


def test_the_record_equals_pyroute2s_reading_in_new_namespaces(
    in_new_netns: Callable[[str], str],
) -> None:
    import json

    result = json.loads(in_new_netns(_IN_NEW_NETNS))
    got, want = result["got"], result["want"]
    assert got == want
    # what this namespace holds, so that equality is not of two empty readings
    links = {link["name"]: link for link in got["links"]}
    assert sorted(links) == ["br9", "eth0", "eth1", "lo"]
    assert links["eth0"]["peer"] == {"name": "vh0", "bridge": "br0", "mtu": 1400}
    assert links["eth0"]["mac"] == "02:11:22:33:44:55" and links["eth0"]["up"]
    assert links["eth1"]["peer"] == {"name": "vh1", "bridge": "", "mtu": 1500}
    assert links["br9"]["kind"] == "bridge" and links["br9"]["peer"] is None
    assert len(got["addresses"]) == 3 and len(got["routes"]) == 3


# The answers of a dump, crafted: Rtnl is given one end of a datagram socket pair and reads
# what the test queued on the other (one datagram per recv, like a netlink socket).

def _msg(mtype: int, seq: int, body: bytes, flags: int = rtnl.NLM_F_MULTI) -> bytes:
    length = 16 + len(body)
    return struct.pack("=IHHII", length, mtype, flags, seq, 0) + body + b"\0" * ((-length) % 4)


def _link_msg(seq: int, index: int, name: bytes, flags: int = rtnl.NLM_F_MULTI) -> bytes:
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 1, index, 0, 0) + _attr(
        rtnl.IFLA_IFNAME, name + b"\0")
    return _msg(rtnl.RTM_NEWLINK, seq, body, flags)


def _done(seq: int, code: int = 0, flags: int = rtnl.NLM_F_MULTI) -> bytes:
    return _msg(rtnl.NLMSG_DONE, seq, struct.pack("=i", code), flags)


def _rtnl_answering(*datagrams: bytes) -> tuple[rtnl.Rtnl, socket.socket]:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for d in datagrams:
        kernel.send(d)
    return rtnl.Rtnl(ours), kernel


def _requests(kernel: socket.socket) -> list[tuple[int, int, int]]:
    """(type, flags, seq) of each request Rtnl sent."""
    kernel.setblocking(False)
    out = []
    while True:
        try:
            data = kernel.recv(65536)
        except BlockingIOError:
            return out
        _len, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", data)
        out.append((mtype, flags, seq))


def test_a_dump_interrupted_by_a_change_is_taken_again() -> None:
    intr = rtnl.NLM_F_MULTI | rtnl.NLM_F_DUMP_INTR
    first = _link_msg(1, 1, b"lo") + _link_msg(1, 2, b"eth0", intr)  # the change came here
    nl, kernel = _rtnl_answering(
        first, _done(1, flags=intr),
        _link_msg(2, 1, b"lo") + _link_msg(2, 3, b"eth1"), _link_msg(2, 4, b"eth2"), _done(2),
    )
    with nl, kernel:
        assert [m.name for m in nl.links()] == ["lo", "eth1", "eth2"]
        dump = rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP
        assert _requests(kernel) == [(rtnl.RTM_GETLINK, dump, 1), (rtnl.RTM_GETLINK, dump, 2)]


def test_a_dump_interrupted_every_time_is_an_error_not_a_partial_record() -> None:
    intr = rtnl.NLM_F_MULTI | rtnl.NLM_F_DUMP_INTR
    answers = []
    for seq in range(1, rtnl._DUMP_TRIES + 1):
        answers += [_link_msg(seq, 1, b"lo", intr), _done(seq, flags=intr)]
    nl, kernel = _rtnl_answering(*answers)
    with nl, kernel:
        with pytest.raises(OSError) as err:
            nl.links()
        assert err.value.errno == errno.EAGAIN
        assert len(_requests(kernel)) == rtnl._DUMP_TRIES


def test_a_dump_that_ends_with_an_error_raises_it() -> None:
    nl, kernel = _rtnl_answering(_link_msg(1, 1, b"lo"), _done(1, -errno.EMSGSIZE))
    with nl, kernel, pytest.raises(OSError) as err:
        nl.links()
    assert err.value.errno == errno.EMSGSIZE


def test_an_error_message_midway_through_a_dump_raises_it() -> None:
    error = _msg(rtnl.NLMSG_ERROR, 1, struct.pack("=i", -errno.ENOBUFS) + b"\0" * 16, 0)
    nl, kernel = _rtnl_answering(_link_msg(1, 1, b"lo") + error)
    with nl, kernel, pytest.raises(OSError) as err:
        nl.addresses()
    assert err.value.errno == errno.ENOBUFS


def test_a_done_without_a_payload_ends_the_dump_cleanly() -> None:
    """Older kernels' NLMSG_DONE, and answers to an earlier request, skipped."""
    stale = _link_msg(7, 9, b"old")
    nl, kernel = _rtnl_answering(stale + _link_msg(1, 1, b"lo"),
                                 _msg(rtnl.NLMSG_DONE, 1, b""))
    with nl, kernel:
        assert [m.name for m in nl.links()] == ["lo"]


_SOCKET_IN = r"""
import fcntl, os, socket, subprocess, threading, time
from shim.checkpoint import rtnl

SIOCGSKNS = 0x894C  # a socket's network namespace, as an fd

def ns_of(sock):
    fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)

child = subprocess.Popen(["unshare", "--net", "sleep", "60"])
try:
    me = os.readlink("/proc/self/ns/net")
    for _ in range(500):
        if os.readlink(f"/proc/{child.pid}/ns/net") != me:
            break
        time.sleep(0.01)
    theirs = os.readlink(f"/proc/{child.pid}/ns/net")
    unix = rtnl.socket_in(f"/proc/{child.pid}/ns/net", socket.AF_UNIX, socket.SOCK_DGRAM)
    with unix, rtnl.open_in(f"/proc/{child.pid}/ns/net") as r:
        names = [link.name for link in r.links()]
        print(ns_of(unix) == theirs != me, names == ["lo"],
              os.readlink("/proc/thread-self/ns/net") == me, threading.active_count())
    try:
        rtnl.socket_in("/proc/self/ns/nothing", socket.AF_UNIX, socket.SOCK_DGRAM)
    except OSError as exc:
        print(type(exc).__name__)
finally:
    child.kill()
    child.wait()
"""


def test_socket_in_makes_the_socket_in_that_namespace_and_no_thread_stays(
    in_new_netns: Callable[[str], str],
) -> None:
    """The socket lives in the other namespace, the caller's thread never left its own, the
    thread that entered is gone; a namespace that cannot be entered is an OSError."""
    assert in_new_netns(_SOCKET_IN).split() == ["True", "True", "True", "1", "FileNotFoundError"]
