"""The network snapshot (shim.checkpoint.network) and the hook protocol (shim.nethook).

Unprivileged: the stored JSON (round trips, the version check, malformed files refused before
any rebuild starts), the host checks against a fake netlink handle, and the hook <-> service
conversation over a real unix socket with the rebuild replaced by a recorder. Rebuilding a real
namespace is tested as root in ``integration/test_network.py``.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shim import nethook
from shim.checkpoint import network
from shim.checkpoint.network import (
    SNAPSHOT_VERSION,
    Address,
    Link,
    NetworkSnapshot,
    Route,
    VethPeer,
    dump_snapshot,
    has_own_netns,
    load_snapshot,
)
from shim.errors import FailedPrecondition, InvalidArgument
from shim.warm import socket_is_live, sweep

LO = Link("lo", "loopback", 65536, "00:00:00:00:00:00", True)
ETH0 = Link("eth0", "veth", 1500, "8e:0d:e3:9b:a2:56", True, VethPeer("pyt-vs0", "pyt-br0", 1500))
SNAP = NetworkSnapshot(
    links=(LO, ETH0),
    addresses=(
        Address("eth0", socket.AF_INET, "10.213.9.2", 24),
        Address("eth0", socket.AF_INET6, "fd00:213::2", 64),
    ),
    routes=(
        Route(socket.AF_INET, "", 0, "10.213.9.254", "eth0"),
        Route(socket.AF_INET, "10.214.0.0", 16, "10.213.9.1", "eth0", metric=100),
    ),
)


def doc(snap: NetworkSnapshot = SNAP) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(dump_snapshot(snap))
    return loaded


def encode(value: object) -> bytes:
    return json.dumps(value).encode()


# --- the stored file -----------------------------------------------------------------------


def test_round_trip() -> None:
    assert load_snapshot(dump_snapshot(SNAP)) == SNAP


def test_the_file_is_versioned_json_with_sorted_keys() -> None:
    data = dump_snapshot(SNAP)
    assert data == dump_snapshot(load_snapshot(data))  # stable bytes
    parsed = json.loads(data)
    assert parsed["version"] == SNAPSHOT_VERSION == 1
    assert list(parsed) == sorted(parsed)
    assert parsed["links"][1]["peer"] == {"name": "pyt-vs0", "bridge": "pyt-br0", "mtu": 1500}
    assert parsed["links"][0]["peer"] is None


def test_a_veth_on_no_bridge_and_an_empty_network_round_trip() -> None:
    alone = replace(ETH0, peer=VethPeer("pyt-vs1", "", 0))
    for snap in (NetworkSnapshot((LO, alone), (), ()), NetworkSnapshot((), (), ())):
        assert load_snapshot(dump_snapshot(snap)) == snap


names = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=15)
macs = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(
    lambda b: ":".join(f"{x:02x}" for x in b)
)


@st.composite
def snapshots(draw: st.DrawFn) -> NetworkSnapshot:
    link_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    links = tuple(
        Link(
            name,
            draw(st.sampled_from(["veth", "loopback", "dummy"])),
            draw(st.integers(0, 65536)),
            draw(macs),
            draw(st.booleans()),
            draw(st.none() | st.builds(VethPeer, names, st.just("") | names, st.integers(0, 9000))),
        )
        for name in link_names
    )
    families = st.sampled_from([socket.AF_INET, socket.AF_INET6])
    addresses = draw(
        st.lists(
            st.builds(
                Address,
                st.sampled_from(link_names),
                families,
                st.text(max_size=39),
                st.integers(0, 128),
            ),
            max_size=4,
        )
    )
    routes = draw(
        st.lists(
            st.builds(
                Route,
                families,
                st.text(max_size=39),
                st.integers(0, 128),
                st.text(max_size=39),
                st.sampled_from(link_names),
                st.integers(0, 2**32 - 1),
            ),
            max_size=4,
        )
    )
    return NetworkSnapshot(links, tuple(addresses), tuple(routes))


@given(snapshots())
def test_any_snapshot_round_trips(snap: NetworkSnapshot) -> None:
    assert load_snapshot(dump_snapshot(snap)) == snap


@pytest.mark.parametrize("version", [0, 2, "1", 1.5, True, None])
def test_an_unknown_version_is_refused(version: object) -> None:
    data = {**doc(), "version": version}
    if version is None:
        del data["version"]
    with pytest.raises(InvalidArgument, match=r"network snapshot version .* unknown"):
        load_snapshot(encode(data))


def _drop(key: str) -> dict[str, Any]:
    data = doc()
    del data[key]
    return data


def _edit_link(index: int, **fields: object) -> dict[str, Any]:
    data = doc()
    data["links"][index].update(fields)
    return data


MALFORMED: dict[str, bytes] = {
    "not json": b"{links",
    "empty": b"",
    "a list": encode([1, 2]),
    "a string": encode("snapshot"),
    "no links": encode(_drop("links")),
    "no addresses": encode(_drop("addresses")),
    "no routes": encode(_drop("routes")),
    "links not a list": encode({**doc(), "links": {"eth0": {}}}),
    "a link not an object": encode({**doc(), "links": ["eth0"]}),
    "a link without a name": encode(
        {**doc(), "links": [{k: v for k, v in doc()["links"][1].items() if k != "name"}]}
    ),
    "an unknown link field": encode(_edit_link(1, speed=1000)),
    "mtu a string": encode(_edit_link(1, mtu="1500")),
    "mtu a bool": encode(_edit_link(1, mtu=True)),
    "up an int": encode(_edit_link(1, up=1)),
    "peer a string": encode(_edit_link(1, peer="pyt-vs0")),
    "peer without a bridge": encode(_edit_link(1, peer={"name": "pyt-vs0", "mtu": 0})),
    "peer with a bad field": encode(
        _edit_link(1, peer={"name": "pyt-vs0", "bridge": None, "mtu": 0})
    ),
    "two links of one name": encode({**doc(), "links": [doc()["links"][1]] * 2}),
    "an address on an unknown link": encode(
        {**doc(), "addresses": [{**doc()["addresses"][0], "link": "eth1"}]}
    ),
    "a route on an unknown link": encode(
        {**doc(), "routes": [{**doc()["routes"][0], "link": "eth1"}]}
    ),
    "an address of family 17": encode(
        {**doc(), "addresses": [{**doc()["addresses"][0], "family": 17}]}
    ),
    "prefixlen a string": encode(
        {**doc(), "addresses": [{**doc()["addresses"][0], "prefixlen": "24"}]}
    ),
    "a route without a gateway": encode(
        {
            **doc(),
            "routes": [{k: v for k, v in doc()["routes"][0].items() if k != "gateway"}],
        }
    ),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_snapshots_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidArgument, match=r"network snapshot"):
        load_snapshot(data)


def test_a_route_may_leave_out_its_metric() -> None:
    data = doc()
    del data["routes"][0]["metric"]
    assert load_snapshot(encode(data)).routes[0].metric == 0


def test_only_veths_are_rebuildable() -> None:
    dummy = Link("dummy0", "dummy", 1500, "aa:bb:cc:dd:ee:ff", True)
    assert NetworkSnapshot((LO, ETH0, dummy), (), ()).rebuildable() == (ETH0,)


def test_this_process_has_no_netns_of_its_own() -> None:
    assert not has_own_netns(os.getpid())
    assert not has_own_netns(2**22 + 1)  # above pid_max: no such process


# --- the ARP probe ----------------------------------------------------------------------------


def test_the_probe_is_an_rfc5227_arp_probe() -> None:
    frame = network.arp_probe("8e:0d:e3:9b:a2:56", "10.213.9.2")
    mac = bytes.fromhex("8e0de39ba256")
    assert len(frame) == 42
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac  # broadcast, from our MAC
    assert frame[12:14] == b"\x08\x06"  # ARP
    assert frame[14:22] == bytes.fromhex("0001 0800 06 04 0001")  # Ethernet/IPv4, request
    assert frame[22:28] == mac and frame[28:32] == bytes(4)  # sender: us, IP 0.0.0.0
    assert frame[32:38] == bytes(6) and frame[38:42] == bytes([10, 213, 9, 2])


def reply(sender_ip: str, op: int = 2, ethertype: bytes = b"\x08\x06") -> bytes:
    """An ARP frame from aa:bb:cc:dd:ee:ff claiming ``sender_ip``, to 8e:0d:e3:9b:a2:56."""
    them, us = bytes.fromhex("aabbccddeeff"), bytes.fromhex("8e0de39ba256")
    arp = bytes.fromhex("0001 0800 06 04") + op.to_bytes(2, "big")
    return us + them + ethertype + arp + them + socket.inet_aton(sender_ip) + us + bytes(4)


def test_a_reply_from_the_holder_claims_the_address() -> None:
    assert network.claims(reply("10.213.9.2"), "10.213.9.2")
    assert network.claims(reply("10.213.9.2") + bytes(18), "10.213.9.2")  # padded to 60 bytes


@pytest.mark.parametrize(
    "frame",
    [
        reply("10.213.9.3"),
        reply("10.213.9.2", op=1),
        reply("10.213.9.2", ethertype=b"\x08\x00"),
        reply("10.213.9.2")[:41],
        network.arp_probe("8e:0d:e3:9b:a2:56", "10.213.9.2"),  # our own probe, seen going out
        b"",
    ],
    ids=["other address", "a request", "not ARP", "short", "own probe", "empty"],
)
def test_other_frames_claim_nothing(frame: bytes) -> None:
    assert not network.claims(frame, "10.213.9.2")


# --- host checks (before anything is created) ---------------------------------------------


class FakeHost:
    """The part of pyroute2's ``IPRoute`` the host checks use: ``link_lookup(ifname=)``."""

    def __init__(self, *names: str) -> None:
        self.names = list(names)

    def link_lookup(self, *, ifname: str) -> list[int]:
        return [self.names.index(ifname) + 1] if ifname in self.names else []


def test_host_checks_pass_when_the_bridge_is_there_and_the_name_free() -> None:
    network._check_host(FakeHost("lo", "eth0", "pyt-br0"), SNAP)


@pytest.mark.parametrize(
    ("host", "snap", "message"),
    [
        (FakeHost("lo"), SNAP, "bridge 'pyt-br0' is missing on this host"),
        (FakeHost("pyt-br0", "pyt-vs0"), SNAP, "host interface 'pyt-vs0' already exists"),
        (
            FakeHost("pyt-br0"),
            NetworkSnapshot((LO, replace(ETH0, peer=None)), (), ()),
            "cannot rebuild link 'eth0' of kind 'veth'",
        ),
        (
            FakeHost("pyt-br0"),
            NetworkSnapshot((Link("wg0", "wireguard", 1420, "", True),), (), ()),
            "cannot rebuild link 'wg0' of kind 'wireguard'",
        ),
    ],
    ids=["bridge missing", "name taken", "veth without peer", "unknown kind"],
)
def test_host_checks_refuse(host: FakeHost, snap: NetworkSnapshot, message: str) -> None:
    with pytest.raises(network.NetworkError, match=message) as info:
        network._check_host(host, snap)
    assert isinstance(info.value, FailedPrecondition)


# --- the hook and the service ---------------------------------------------------------------


def test_hook_argv_runs_the_module_file_isolated() -> None:
    argv = nethook.hook_argv("/run/x.sock")
    assert argv[0] == sys.executable
    assert argv[1:3] == ["-I", "-S"]
    assert argv[3] == os.path.abspath(nethook.__file__) and argv[3].endswith("shim/nethook.py")
    assert argv[4:] == ["hook", "/run/x.sock"]


def test_main_without_a_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert nethook.main([]) == 2
    assert "python -m shim.nethook serve SOCKET SNAPSHOT.json" in capsys.readouterr().err


class Rebuilds:
    """Replaces :func:`shim.checkpoint.network.rebuild`: records calls, fails if told to."""

    def __init__(self) -> None:
        self.calls: list[tuple[NetworkSnapshot, int]] = []
        self.error: Exception | None = None

    def __call__(
        self,
        snap: NetworkSnapshot,
        pid: int,
        *,
        release: object = None,
        probed: frozenset[str] = frozenset(),
    ) -> None:
        assert release is not None  # the service closes the probe sockets after answering
        assert probed == frozenset()  # the snapshot's bridge is not on this host: not probed
        self.calls.append((snap, pid))
        if self.error is not None:
            raise self.error


@pytest.fixture
def rebuilds(monkeypatch: pytest.MonkeyPatch) -> Rebuilds:
    fake = Rebuilds()
    monkeypatch.setattr(network, "rebuild", fake)
    return fake


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (unix socket paths end at 107 bytes)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nh-", dir="/tmp") as d:
        yield Path(d)


def run_hook(monkeypatch: pytest.MonkeyPatch, sock: Path, state: dict[str, object]) -> int:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(encode(state))))
    return nethook.hook(str(sock))


def serve_in_thread(sock: Path, snapshot: Path) -> threading.Thread:
    thread = threading.Thread(target=nethook.serve, args=(str(sock), str(snapshot)), daemon=True)
    thread.start()
    return thread


def test_hook_hands_the_pid_to_the_service_which_rebuilds(
    rebuilds: Rebuilds,
    short_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (short_dir / "net.json").write_bytes(dump_snapshot(SNAP))
    sock = short_dir / "s"
    server = serve_in_thread(sock, short_dir / "net.json")
    assert run_hook(monkeypatch, sock, {"ociVersion": "1.0.2", "id": "c", "pid": 4242}) == 0
    server.join(10)
    assert not server.is_alive()  # one rebuild, then it ends
    assert rebuilds.calls == [(SNAP, 4242)]
    assert capsys.readouterr().err == ""
    assert not sock.exists() or not socket_is_live(sock)


def test_a_connection_without_a_request_is_not_the_hook(
    rebuilds: Rebuilds,
    short_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """shim.warm.sweep connects to every socket in the run directory and closes: the
    service must not take that for its one hook (it did, ended, and the restore's hook found
    no service), nor a connection that stays silent."""
    monkeypatch.setattr(nethook, "_REQUEST_TIMEOUT", 0.2)
    (short_dir / "net.json").write_bytes(dump_snapshot(SNAP))
    sock = short_dir / "s.sock"
    server = serve_in_thread(sock, short_dir / "net.json")
    wait = time.monotonic() + 10
    while not socket_is_live(sock) and time.monotonic() < wait:  # (itself a probe)
        time.sleep(0.01)
    assert sweep(str(short_dir)) == []  # alive: kept
    with socket.socket(socket.AF_UNIX) as silent:
        silent.connect(str(sock))
        time.sleep(0.5)  # dropped after the timeout
    assert server.is_alive()
    assert run_hook(monkeypatch, sock, {"pid": 4242}) == 0
    server.join(10)
    assert not server.is_alive()
    assert rebuilds.calls == [(SNAP, 4242)]
    assert capsys.readouterr().err == ""


def test_stop_ends_the_service_without_a_rebuild(rebuilds: Rebuilds, short_dir: Path) -> None:
    (short_dir / "net.json").write_bytes(dump_snapshot(SNAP))
    sock = short_dir / "s"
    server = serve_in_thread(sock, short_dir / "net.json")
    wait = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < wait:
        time.sleep(0.01)
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(sock))
        conn.sendall(nethook.STOP)
    server.join(10)
    assert not server.is_alive()
    assert rebuilds.calls == []


def test_a_service_without_a_request_ends_at_its_deadline(
    rebuilds: Rebuilds, short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing else ends a service whose shim died between Create and Start: it removes its
    socket and ends once its deadline passes, a silent connection or not."""
    monkeypatch.setattr(nethook, "_REQUEST_TIMEOUT", 0.2)
    (short_dir / "net.json").write_bytes(dump_snapshot(SNAP))
    sock = short_dir / "s"
    server = threading.Thread(target=nethook.serve, args=(str(sock), str(short_dir / "net.json")),
                              kwargs={"deadline": 0.5}, daemon=True)
    started = time.monotonic()
    server.start()
    wait = started + 10
    while not sock.exists() and time.monotonic() < wait:
        time.sleep(0.01)
    assert sock.exists()
    with socket.socket(socket.AF_UNIX) as silent:
        silent.connect(str(sock))
        server.join(10)
    assert not server.is_alive()
    assert time.monotonic() - started >= 0.5
    assert not sock.exists() and os.listdir(short_dir) == ["net.json"]
    assert rebuilds.calls == []


def test_a_failed_rebuild_fails_the_hook_with_its_message(
    rebuilds: Rebuilds,
    short_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rebuilds.error = network.NetworkError("bridge 'pyt-br0' is missing on this host")
    (short_dir / "net.json").write_bytes(dump_snapshot(SNAP))
    sock = short_dir / "s"
    server = serve_in_thread(sock, short_dir / "net.json")
    assert run_hook(monkeypatch, sock, {"pid": 7}) == 1
    server.join(10)
    assert capsys.readouterr().err == (
        "rebuilding the network failed: bridge 'pyt-br0' is missing on this host\n"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No such file or directory"),
        (b'{"version": 9}', "network snapshot version 9 unknown"),
        (b"{", "bad network snapshot"),
    ],
    ids=["missing", "other version", "not json"],
)
def test_a_bad_snapshot_is_reported_through_the_hook_at_once(
    rebuilds: Rebuilds,
    short_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    content: bytes | None,
    message: str,
) -> None:
    if content is not None:
        (short_dir / "net.json").write_bytes(content)
    monkeypatch.setattr(nethook, "_HOOK_CONNECT_TIMEOUT", 0.5)  # it must not come to this
    sock = short_dir / "s"
    server = serve_in_thread(sock, short_dir / "net.json")
    assert run_hook(monkeypatch, sock, {"pid": 7}) == 1
    server.join(10)
    err = capsys.readouterr().err
    assert err.startswith("rebuilding the network failed: ") and message in err
    assert rebuilds.calls == []


def test_a_state_without_a_pid_fails_the_hook(
    rebuilds: Rebuilds,
    short_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (short_dir / "net.json").write_bytes(dump_snapshot(SNAP))
    sock = short_dir / "s"
    server = serve_in_thread(sock, short_dir / "net.json")
    assert run_hook(monkeypatch, sock, {"id": "c"}) == 1
    server.join(10)
    assert capsys.readouterr().err == (
        "rebuilding the network failed: the OCI state runc gave the hook names no pid\n"
    )
    assert rebuilds.calls == []


def test_the_hook_gives_up_when_no_service_comes(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(nethook, "_HOOK_CONNECT_TIMEOUT", 0.1)
    assert run_hook(monkeypatch, short_dir / "none", {"pid": 7}) == 1
    assert "did not come up" in capsys.readouterr().err


def test_a_service_that_dies_without_answering_fails_the_hook(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = short_dir / "s"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock))
    listener.listen(1)

    def die() -> None:
        conn, _ = listener.accept()
        conn.close()

    thread = threading.Thread(target=die, daemon=True)
    thread.start()
    try:
        assert run_hook(monkeypatch, sock, {"pid": 7}) == 1
    finally:
        thread.join(10)
        listener.close()
    err = capsys.readouterr().err  # no answer at all, or a reset: one line either way
    assert err.startswith("network rebuild service ") and err.count("\n") == 1, err


def test_loopback_only_snapshots() -> None:
    from shim.checkpoint.network import (
        LOOPBACK,
        NetworkSnapshot,
        interfaces,
        is_loopback_only,
        loopback_snapshot,
    )

    assert "lo" in interfaces(os.getpid())
    assert is_loopback_only(NetworkSnapshot((LOOPBACK,), (), ()))
    veth = Link("eth0", "veth", 1500, "02:00:00:00:00:01", True, VethPeer("v-h", "br", 1500))
    assert not is_loopback_only(NetworkSnapshot((LOOPBACK, veth), (), ()))
    own = loopback_snapshot(os.getpid())
    if interfaces(os.getpid()) == ["lo"]:  # a test run inside a fresh network namespace
        assert own == NetworkSnapshot((LOOPBACK,), (), ())
    else:
        assert own is None


def test_snapshot_records_whether_the_namespace_had_sockets() -> None:
    from shim.checkpoint.network import LOOPBACK, dump_snapshot, has_inet_sockets, load_snapshot

    for sockets in (True, False):
        snap = NetworkSnapshot((LOOPBACK,), (), (), sockets)
        assert load_snapshot(dump_snapshot(snap)).sockets is sockets
    # snapshots written before the field existed: assume sockets (the safe way: the hook)
    old = {"version": SNAPSHOT_VERSION, "links": [], "addresses": [], "routes": []}
    assert load_snapshot(json.dumps(old).encode()).sockets is True
    with pytest.raises(InvalidArgument, match="'sockets' is not a bool"):
        load_snapshot(json.dumps({**old, "sockets": 1}).encode())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        assert has_inet_sockets(os.getpid())


def test_probe_from_host_skips_what_it_cannot_probe() -> None:
    """Missing bridges and links without one are left to the rebuild (which names a missing
    bridge); nothing to probe means nothing probed."""
    from shim.checkpoint.network import probe_from_host

    veth = Link("eth0", "veth", 1500, "02:00:00:00:00:01", True, VethPeer("v-h", "no-br", 1500))
    loose = Link("eth1", "veth", 1500, "02:00:00:00:00:02", True, VethPeer("v-i", "", 1500))
    snap = NetworkSnapshot(
        (veth, loose),
        (Address("eth0", socket.AF_INET, "10.213.9.2", 24),
         Address("eth1", socket.AF_INET, "10.213.8.2", 24)),
        (),
    )
    import contextlib

    with contextlib.ExitStack() as release:
        assert probe_from_host(snap, release) == frozenset()


# -- a network namespace joined by path is not the container's ------------------------------


def _spec(*namespaces: dict[str, str]) -> dict[str, object]:
    return {"ociVersion": "1.0.2", "linux": {"namespaces": list(namespaces)}}


@pytest.mark.parametrize(
    ("spec", "joins"),
    [
        (_spec({"type": "network", "path": "/var/run/netns/cni-1"}), True),
        (_spec({"type": "pid"}, {"type": "network"}), False),
        (_spec({"type": "network", "path": ""}), False),
        (_spec({"type": "ipc", "path": "/proc/1/ns/ipc"}), False),
        (_spec(), False),  # no network entry: the host's namespace
        ({"linux": {"namespaces": "bogus"}}, False),
        ({}, False),
    ],
)
def test_joins_netns(spec: dict[str, object], joins: bool) -> None:
    assert network.joins_netns(spec) is joins


def _bundle(directory: Path, spec: dict[str, object]) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps(spec))
    return directory


def test_record_skips_a_namespace_joined_by_path(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a namespace the spec creates is recorded (lo only here: no pyroute2 child)."""
    import asyncio

    from shim.checkpoint import netrestore

    monkeypatch.setattr(netrestore, "has_own_netns", lambda pid: True)
    monkeypatch.setattr(netrestore, "loopback_snapshot", lambda pid: NetworkSnapshot(
        links=(network.LOOPBACK,), addresses=(), routes=(), sockets=False))
    images = tmp_path / "images"
    images.mkdir()
    joined = _bundle(tmp_path / "joined", _spec({"type": "network", "path": "/run/netns/c"}))
    asyncio.run(netrestore.record(1, str(images), joined))
    assert os.listdir(images) == []
    owned = _bundle(tmp_path / "owned", _spec({"type": "network"}))
    asyncio.run(netrestore.record(1, str(images), owned))
    assert os.listdir(images) == [network.SNAPSHOT]


def test_restore_ignores_a_record_when_the_spec_joins_by_path(tmp_path: Path) -> None:
    """An archive written before the fix holds a record of the pod's namespace: a restore into
    a pod (its spec joins the pod's namespace by path) names no hook of ours and starts no
    rebuild service; with a spec that creates its namespace the same record gets the hook."""
    import asyncio

    from shim.bundle import HOOK_MARK, read_spec, with_restore_hook
    from shim.checkpoint import netrestore

    images = tmp_path / "images"
    images.mkdir()
    snap = NetworkSnapshot(links=(network.LOOPBACK,), addresses=(), routes=(), sockets=True)
    (images / network.SNAPSHOT).write_bytes(dump_snapshot(snap))

    def hooks_after_entering(spec: dict[str, object], name: str) -> list[object]:
        bundle = _bundle(tmp_path / name, with_restore_hook(spec, ["/bin/true"]))

        async def enter() -> None:
            restore = netrestore.network_restore(
                None, bundle, spec, str(images))  # type: ignore[arg-type]
            async with restore:
                assert restore._service is None

        asyncio.run(enter())
        raw = read_spec(bundle).get("hooks")
        entries = raw.get("createRuntime", []) if isinstance(raw, dict) else []
        return [h for h in entries if HOOK_MARK in h.get("env", [])]

    assert hooks_after_entering(_spec({"type": "network", "path": "/run/netns/c"}), "pod") == []
    assert len(hooks_after_entering(_spec({"type": "network"}), "own")) == 1


# -- the life of a rebuild service a template forked ---------------------------------------


class Template:
    """Replaces the template's request in shim.checkpoint.netrestore: each request "forks"
    the next of the given commands (started here; the shim does not own them either)."""

    def __init__(self, *argvs: list[str]) -> None:
        self.argvs = list(argvs)
        self.forked: list[subprocess.Popen[bytes]] = []

    def __call__(self, path: str, fields: dict[str, object], *, what: str) -> int:
        argv = [str(fields["socket"]) if a == "{socket}" else a for a in self.argvs.pop(0)]
        self.forked.append(subprocess.Popen(argv))
        return self.forked[-1].pid

    def end(self) -> None:
        for proc in self.forked:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def template(monkeypatch: pytest.MonkeyPatch, short_dir: Path) -> Iterator[Template]:
    from shim.checkpoint import netrestore

    fake = Template()
    monkeypatch.setattr(netrestore, "request", fake)
    monkeypatch.setattr(netrestore, "RUN_DIR", str(short_dir / "run"))
    try:
        yield fake
    finally:
        fake.end()


def _restore_of(tmp_path: Path) -> Any:
    from shim.checkpoint import netrestore

    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    (images / network.SNAPSHOT).write_bytes(dump_snapshot(SNAP))
    spec = _spec({"type": "network"})
    return netrestore.network_restore(None, _bundle(tmp_path / "b", spec), spec,  # type: ignore[arg-type]
                                      str(images))


def _hook_socket(bundle: Path) -> str:
    from shim.bundle import HOOK_MARK, read_spec

    raw = read_spec(bundle).get("hooks")
    entries = raw.get("createRuntime", []) if isinstance(raw, dict) else []
    (hook,) = [h for h in entries if HOOK_MARK in h.get("env", [])]
    return str(hook["args"][-1])


def test_close_kills_a_forked_service_that_stop_cannot_reach(
    template: Template, tmp_path: Path, short_dir: Path
) -> None:
    """A template-forked service whose socket is not in place yet (or whose backlog is full)
    cannot be told STOP: close() kills it by its pidfd, and no socket file is left."""
    import asyncio

    template.argvs = [["sleep", "60"]]  # a service still starting: no socket yet

    async def create_and_delete() -> None:
        async with _restore_of(tmp_path):
            pass

    asyncio.run(create_and_delete())
    (proc,) = template.forked
    assert proc.wait(timeout=10) == -9
    assert os.listdir(short_dir / "run") == []


def test_close_tells_a_listening_forked_service_to_stop(
    template: Template, tmp_path: Path, short_dir: Path
) -> None:
    """One that listens gets STOP and ends by itself (it is not killed: it may be mid-way
    through a rebuild for a hook that did come)."""
    import asyncio

    serve = [sys.executable, "-m", "shim.nethook", "serve", "{socket}",
             str(tmp_path / "images" / network.SNAPSHOT)]
    template.argvs = [serve]
    restore = _restore_of(tmp_path)

    async def create_and_delete() -> None:
        async with restore:
            sock = Path(_hook_socket(tmp_path / "b"))
            wait = time.monotonic() + 30
            while not sock.exists() and time.monotonic() < wait:
                await asyncio.sleep(0.02)
            assert sock.exists()

    asyncio.run(create_and_delete())
    (proc,) = template.forked
    assert proc.wait(timeout=10) == 0
    assert os.listdir(short_dir / "run") == []


def test_start_replaces_a_service_that_ended_before_it(
    template: Template, tmp_path: Path, short_dir: Path
) -> None:
    """A service that ended since Create (its deadline passed: Start came late) is replaced
    when Start enters the restore again: the spec's hook names the new one's socket. One
    that lives on is kept."""
    import asyncio

    template.argvs = [["sleep", "60"], ["sleep", "60"], ["sleep", "60"]]

    async def create_start(restore: Any, end_first: bool) -> None:
        await restore.__aenter__()  # Create
        first = _hook_socket(tmp_path / "b")
        if end_first:
            template.forked[-1].kill()
            template.forked[-1].wait()  # (not the shim's child: only its pidfd sees it end)
        async with restore:  # Start
            assert (_hook_socket(tmp_path / "b") != first) is end_first

    asyncio.run(create_start(_restore_of(tmp_path), end_first=False))
    assert len(template.forked) == 1
    asyncio.run(create_start(_restore_of(tmp_path), end_first=True))
    assert len(template.forked) == 3
    assert [p.wait(timeout=10) for p in template.forked] == [-9, -9, -9]
    assert os.listdir(short_dir / "run") == []


# -- whether a namespace has inet sockets: its sockstat counters --------------------------------

_SOCKSTAT_EMPTY = (
    "sockets: used 3\n"
    "TCP: inuse 0 orphan 0 tw 0 alloc 5 mem 211\n"
    "UDP: inuse 0 mem 0\n"
    "UDPLITE: inuse 0\n"
    "RAW: inuse 0\n"
    "FRAG: inuse 2 memory 4096\n"
)
_SOCKSTAT6_EMPTY = (
    "TCP6: inuse 0\nUDP6: inuse 0\nUDPLITE6: inuse 0\nRAW6: inuse 0\nFRAG6: inuse 1 memory 8\n"
)


@pytest.mark.parametrize(("text", "expected"), [
    (_SOCKSTAT_EMPTY, False),  # unix sockets ("sockets: used") and FRAG queues are no sockets
    (_SOCKSTAT6_EMPTY, False),
    ("", False),
    (_SOCKSTAT_EMPTY.replace("TCP: inuse 0", "TCP: inuse 1"), True),
    (_SOCKSTAT_EMPTY.replace("tw 0", "tw 3"), True),  # TIME_WAIT: /proc/net/tcp lists it too
    (_SOCKSTAT_EMPTY.replace("UDP: inuse 0", "UDP: inuse 2"), True),
    (_SOCKSTAT_EMPTY.replace("UDPLITE: inuse 0", "UDPLITE: inuse 1"), True),
    (_SOCKSTAT_EMPTY.replace("RAW: inuse 0", "RAW: inuse 1"), True),
    (_SOCKSTAT6_EMPTY.replace("TCP6: inuse 0", "TCP6: inuse 4"), True),
    (_SOCKSTAT6_EMPTY.replace("UDP6: inuse 0", "UDP6: inuse 1"), True),
    (_SOCKSTAT6_EMPTY.replace("RAW6: inuse 0", "RAW6: inuse 1"), True),
    ("TCP: inuse x orphan 0\n", True),  # unreadable: assume sockets (the hook, the safe way)
])
def test_sockstat_counts_inet_sockets(text: str, expected: bool) -> None:
    assert network.sockstat_has_sockets(text) is expected


_IN_NEW_NETNS = r"""
import os, socket, sys
from shim.checkpoint.network import has_inet_sockets
me = os.getpid()
seen = [has_inet_sockets(me)]
kinds = [(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1"),
         (socket.AF_INET6, socket.SOCK_STREAM, "::1"),
         (socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1"),
         (socket.AF_INET6, socket.SOCK_DGRAM, "::1")]
os.system("ip link set lo up")
for family, kind, host in kinds:
    s = socket.socket(family, kind)
    s.bind((host, 0))
    if kind == socket.SOCK_STREAM:
        s.listen()
    seen.append(has_inet_sockets(me))
    s.close()
    seen.append(has_inet_sockets(me))
unix = socket.socket(socket.AF_UNIX)
unix.bind("\0pyrunc-test-" + str(me))
seen.append(has_inet_sockets(me))
print(" ".join(str(int(v)) for v in seen))
"""


def test_has_inet_sockets_in_a_new_network_namespace(
    in_new_netns: Callable[[str], str],
) -> None:
    """In a namespace of its own: none at first, each bound TCP/UDP socket of IPv4 and IPv6
    counts while it exists, a unix socket does not."""
    out = in_new_netns(_IN_NEW_NETNS)
    assert out.split() == ["0", "1", "0", "1", "0", "1", "0", "1", "0", "0"]
