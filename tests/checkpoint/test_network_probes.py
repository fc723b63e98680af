"""Duplicate address detection and announcements of a rebuilt network: the host-side probe
finds its bridge in the namespace it runs in, also where sysfs shows another (a process
entered with ``nsenter --net``, as the migration lab's containerd and its shims are); a
network moved from another host is announced, not probed (its source holds the addresses
until it is frozen)."""

from __future__ import annotations

import json
from collections.abc import Callable

from shim.checkpoint.network import link_mac

_CODE = r"""
import contextlib, json, os, subprocess
from dataclasses import replace
from shim.checkpoint.network import (Address, Link, NetworkSnapshot, VethPeer, link_mac,
                                     probe_from_host)

subprocess.run(["ip", "link", "add", "pyrbr9", "type", "bridge"], check=True)
subprocess.run(["ip", "link", "set", "pyrbr9", "address", "02:aa:bb:cc:dd:ee", "up"],
               check=True)
snap = NetworkSnapshot(
    links=(Link("eth0", "veth", 1500, "02:11:22:33:44:55", True,
                VethPeer("vh0", "pyrbr9", 1500)),),
    addresses=(Address("eth0", 2, "10.9.0.5", 24),), routes=())
with contextlib.ExitStack() as late:
    probed = sorted(probe_from_host(snap, late))
    probed_moving = sorted(probe_from_host(replace(snap, moving=True), late))
print(json.dumps({
    "in_sysfs": os.path.exists("/sys/class/net/pyrbr9"),
    "mac": link_mac("pyrbr9"),
    "missing": link_mac("pyrbr-none"),
    "probed": probed,
    "probed_moving": probed_moving,
}))
"""


def test_the_bridge_is_found_where_sysfs_shows_another_namespace(
    in_new_netns: Callable[[str], str],
) -> None:
    out = json.loads(in_new_netns(_CODE))
    # unshare --net keeps the mount namespace: /sys is still the old namespace's
    assert out["in_sysfs"] is False
    assert out["mac"] == "02:aa:bb:cc:dd:ee"
    assert out["missing"] is None
    assert out["probed"] == ["10.9.0.5"]  # probed early, not left to the frozen window
    # the same network recorded for a move: its source holds the address, nothing is probed
    assert out["probed_moving"] == []


def test_names_no_link_can_have() -> None:
    assert link_mac("") is None
    assert link_mac("x" * 16) is None
    assert link_mac("lo") == "00:00:00:00:00:00"


_ANNOUNCE = r"""
import contextlib, json, select, socket, subprocess, time
from shim.checkpoint import network

for args in (["link", "add", "va", "type", "veth", "peer", "name", "vb"],
             ["link", "set", "va", "address", "02:11:22:33:44:55", "up"],
             ["link", "set", "vb", "up"]):
    subprocess.run(["ip", *args], check=True)
time.sleep(0.05)
watch = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(network.ETH_P_ARP))
watch.bind(("vb", 0))
frames = []
with contextlib.ExitStack() as late:
    network._announce([("va", "02:11:22:33:44:55", "10.9.0.5")], late)
    frames.append(watch.recv(128)[:42])  # sent before the hook is answered
deadline = time.monotonic() + 1
while time.monotonic() < deadline and select.select([watch], [], [], 0.2)[0]:
    frames.append(watch.recv(128)[:42])  # and again, once it was
print(json.dumps([f.hex() for f in frames]))
"""


def test_a_moved_address_is_announced_not_probed(in_new_netns: Callable[[str], str]) -> None:
    from shim.checkpoint.network import arp_announcement

    frames = json.loads(in_new_netns(_ANNOUNCE))
    want = arp_announcement("02:11:22:33:44:55", "10.9.0.5").hex()
    assert frames[0] == want
    assert frames.count(want) == 1 + 2  # once at once, twice from the release stack


def test_moving_is_read_back_and_typed() -> None:
    import pytest

    from shim.checkpoint.network import (
        Address,
        Link,
        NetworkSnapshot,
        dump_snapshot,
        load_snapshot,
    )
    from shim.errors import InvalidArgument

    snap = NetworkSnapshot(
        links=(Link("eth0", "veth", 1500, "02:11:22:33:44:55", True),),
        addresses=(Address("eth0", 2, "10.9.0.5", 24),), routes=(), moving=True)
    assert load_snapshot(dump_snapshot(snap)) == snap
    old = json.loads(dump_snapshot(snap))
    del old["moving"]  # a record from before the field: not moving
    assert load_snapshot(json.dumps(old).encode()).moving is False
    with pytest.raises(InvalidArgument, match="'moving' is not a bool"):
        load_snapshot(json.dumps({**old, "moving": 1}).encode())


def test_a_destination_marks_the_record_it_received_moving() -> None:
    from shim.checkpoint.network import (
        Link,
        NetworkSnapshot,
        as_moving,
        dump_snapshot,
        load_snapshot,
    )

    snap = NetworkSnapshot(links=(Link("eth0", "veth", 1500, "02:11:22:33:44:55", True),),
                           addresses=(), routes=())
    assert load_snapshot(as_moving(dump_snapshot(snap))).moving is True
    assert as_moving(b"not a record") == b"not a record"  # the restore says what is wrong
