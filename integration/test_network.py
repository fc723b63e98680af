"""A container's network namespace rebuilt at restore: TCP connections carry on, on this host
and on another; a host that cannot take the network is left exactly as it was.

Strategy: every test builds its own small network (``_net_lab.NetLab``: a bridge ``pyt-br*``,
veths, namespaces, addresses in 10.213.x.0/24 only inside namespaces the test made) and removes
it afterwards, even on failure. A container is started with ctr (pyrunc runtime; runc makes it
a fresh network namespace with only ``lo``) and wired from the host the way a CNI plugin would:
a veth ``pyt-vs*`` on the bridge, ``eth0`` inside with an address and a default route. It is
checkpointed with ``pyrunc checkpoint --empty-ns network``: CRIU leaves the network namespace
out and the shim records its links, addresses and routes beside the images
(``pyrunc-network.json``); at restore the shim's createRuntime hook rebuilds them in the new
empty namespace at CRIU's setup-namespaces step, before the TCP sockets come back.

Only io.containerd.pyrunc.v2 is tested: ctr cannot ask for ``--empty-ns network`` and the runc
shim has nothing that would rebuild a network, so there is no control to run.

Keeping the client's connection alive while the container is gone (measured here): the client
is a socket of the test process made in another test namespace on the same bridge, and it is
idle during the downtime - the stream is lockstep, every record is answered before the
checkpoint starts. Then nothing can reset it: during the dump CRIU's network lock (iptables
rules in the container's namespace) drops what arrives; after ``--exit`` the sockets were
closed in repair mode, which sends nothing; once the task is deleted its namespace and veth are
gone and nobody owns the address, so a packet would find no one to answer it (no RST, only
ARP silence); at restore CRIU locks the new namespace right after the hook and unlocks it when
the sockets are back. The pause can be as long as one likes (no keepalive). A client that does
send during the downtime was seen to work too (its segment was retransmitted and answered
0.8 s, or 3.3 s after a 2 s pause, later), but it is not safe: between the hook adding the
address and CRIU's lock of the new namespace (CRIU runs iptables-restore there) a retransmitted
segment would meet an address without its socket yet and get a RST. So the test keeps the
client idle.

Restoring on "another host": a second containerd started inside a network namespace of its
own (``Containerd.start(netns=...)``) with a bridge of the same name there; the images are just
a directory that is moved; a veth pair between the two bridges joins the two L2 segments, so
the client reaches the container at its new place.

CRIU must be able to dump TCP sockets on this kernel: CRIU 4.1.1 cannot on Linux 6.16 and later
(``getsockopt(SO_PASSCRED)`` on an INET socket fails with EOPNOTSUPP there; fixed in CRIU 4.2).
The TCP tests check what the CRIU in PATH does and skip with the line from its dump log when it
cannot; put a newer ``criu`` first in PATH to run them. The failure tests use no socket and run
with any CRIU.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shim.checkpoint.network import SNAPSHOT, NetworkSnapshot, load_snapshot, take_snapshot

from ._net_lab import NetLab, NetState, netns_id
from ._net_seq import SeqClient, connect_in, established
from .harness import (
    IMAGE_REF,
    NAMESPACE,
    PYRUNC,
    REPO,
    Containerd,
    Containers,
    Ctr,
    TaskStatus,
    ensure_image_tar,
    proc_cmdline,
    run_pyrunc,
    shim_processes,
    wait_until,
)

pytestmark = pytest.mark.parametrize("runtime", [PYRUNC], ids=["pyrunc"], indirect=True)

PORT = 7000
HOOK_SOCKET_DIR = Path("/run/containerd-shim-pyrunc")
_criu_cannot: list[str] = []  # why CRIU cannot dump TCP here, once measured


# --- helpers -----------------------------------------------------------------------------------


def pyrunc(
    containerd: Containerd, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``pyrunc -a <daemon socket> -n pyrunc-it args`` as a separate process (this checkout)."""
    return run_pyrunc(containerd, *args, timeout=timeout)


def one_line_failure(proc: subprocess.CompletedProcess[str]) -> str:
    """pyrunc failed cleanly: status 1, one ``pyrunc: ...`` line, no traceback; returns it."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyrunc: "), proc.stderr
    return lines[0]


_PASSCRED = "Can't get 1:16 opt: Operation not supported"


def skip_unless_tcp_dumped(proc: subprocess.CompletedProcess[str]) -> None:
    """Skip (with the measured reason) if the checkpoint failed because this CRIU cannot dump
    an INET socket on this kernel; any other outcome is the test's business."""
    if proc.returncode == 0:
        return
    m = re.search(r"CRIU log kept at (/[^\s;)]+)", proc.stderr)
    log = Path(m.group(1)).read_text(errors="replace") if m else ""
    if _PASSCRED in log + proc.stderr:
        criu = shutil.which("criu") or "criu"
        version = subprocess.run([criu, "--version"], capture_output=True, text=True).stdout
        _criu_cannot.append(
            f"{criu} ({' '.join(version.split())}) cannot dump TCP sockets on Linux "
            f"{platform.release()}: its dump log says {_PASSCRED!r} (SO_PASSCRED is refused on "
            "INET sockets since Linux 6.16; fixed in CRIU 4.2 - put a newer criu first in PATH)"
        )
    if _criu_cannot:
        pytest.skip(_criu_cannot[0])


def skip_if_known_unable() -> None:
    if _criu_cannot:
        pytest.skip(_criu_cannot[0])


@dataclass(frozen=True, slots=True)
class Wired:
    """A container wired to a bridge: its id, init pid, host-side veth, address."""

    id: str
    pid: int
    veth: str
    ip: str


def start_wired(
    containers: Containers, lab: NetLab, bridge: str, subnet: str, *command: str
) -> Wired:
    """Start ``command`` in a container and give it ``eth0`` = <subnet>.2/24 on ``bridge``
    (host side ``pyt-vs<tag>``) with a default route via <subnet>.254."""
    started = containers.start("net", *command, log=False)
    ip = f"{subnet}.2"
    veth = lab.veth(
        lab.name("vs"),
        f"/proc/{started.pid}/ns/net",
        bridge=bridge,
        address=f"{ip}/24",
        gateway=f"{subnet}.254",
    )
    return Wired(started.id, started.pid, veth, ip)


def checkpoint(
    containerd: Containerd, cid: str, images: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """``pyrunc checkpoint --empty-ns network --exit`` into ``images`` (plus ``extra``)."""
    args = ["--image-path", str(images), "--empty-ns", "network", "--exit", "-q", *extra]
    return pyrunc(containerd, "checkpoint", cid, *args)


def remove_task(ctr: Ctr, cid: str) -> None:
    """After ``--exit``: wait for the task to stop and delete it (its namespace goes with it)."""
    ctr.wait_status(cid, TaskStatus.STOPPED)
    ctr.delete_task(cid)


def bridge_ports(netns: str | None = None) -> dict[str, str]:
    """Port name -> bridge it is attached to (``bridge -j link``)."""
    argv = [*(["nsenter", f"--net={netns}"] if netns else []), "bridge", "-j", "link", "show"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return {p["ifname"]: p.get("master", "") for p in json.loads(out or "[]")}


def check_rebuilt(
    pid: int, recorded: NetworkSnapshot, bridge: str, netns: str | None = None
) -> None:
    """The restored container's namespace holds exactly what was recorded, and the host side
    of its veth is back on ``bridge`` (in the host namespace ``netns``)."""
    assert take_snapshot_in(pid, netns) == recorded
    (veth,) = [link.peer.name for link in recorded.links if link.peer is not None]
    assert bridge_ports(netns).get(veth) == bridge


def take_snapshot_in(pid: int, netns: str | None) -> NetworkSnapshot:
    """:func:`take_snapshot` of ``pid`` as seen from the host namespace ``netns`` (where the
    veth peers are); run in a child entering ``netns`` when it is not ours."""
    if netns is None:
        return take_snapshot(pid)
    code = (
        "import sys; from shim.checkpoint.network import take_snapshot, dump_snapshot; "
        f"sys.stdout.buffer.write(dump_snapshot(take_snapshot({pid})))"
    )
    out = subprocess.run(
        ["nsenter", f"--net={netns}", sys.executable, "-c", code],
        capture_output=True,
        check=True,
        cwd=REPO,
        timeout=60,
    ).stdout
    return load_snapshot(out)


def no_new_hook_leftovers(before: set[str]) -> None:
    """Wait until every rebuild service started since ``before`` has ended and removed its
    socket (the set is host-wide: other restores may be running at the same time)."""
    wait_until(
        lambda: not (hook_leftovers() - before),
        10,
        message=lambda: f"rebuild services to end: {hook_leftovers() - before}",
    )


def hook_leftovers() -> set[str]:
    """Rebuild-service sockets and processes that exist now."""
    found = {str(p) for p in HOOK_SOCKET_DIR.glob("net-*.sock*")}
    for name in os.listdir("/proc"):
        if name.isdigit():
            argv = proc_cmdline(int(name))
            if argv[1:4] == ["-m", "shim.nethook", "serve"]:
                found.add(f"pid {name}: {' '.join(argv)}")
    return found


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def lab() -> Iterator[NetLab]:
    """The test's own bridges, veths and namespaces, removed afterwards."""
    net = NetLab()
    try:
        yield net
    finally:
        problems = net.cleanup()
        if problems:
            print("\nnetwork cleanup:", *problems, sep="\n  ")


@dataclass
class OtherHost:
    """A second containerd in a network namespace of its own: another host."""

    netns: str
    containerd: Containerd
    ctr: Ctr
    containers: Containers


@pytest.fixture
def other_host(lab: NetLab, request: pytest.FixtureRequest) -> Iterator[OtherHost]:
    netns = lab.netns("hb")
    daemon = Containerd.start(netns=netns)
    box = None
    try:
        daemon.import_image(ensure_image_tar(), IMAGE_REF, NAMESPACE)
        ctr = daemon.ctr(NAMESPACE)
        logdir = daemon.dir / "logs"
        box = Containers(containerd=daemon, ctr=ctr, runtime=PYRUNC, image=IMAGE_REF, logdir=logdir)
        yield OtherHost(netns, daemon, ctr, box)
    finally:
        problems = box.cleanup() if box is not None else []
        problems += daemon.stop()
        if problems:
            print("\nsecond host teardown:", *problems, sep="\n  ")
        # lab.cleanup() then ends anything the second host left in its namespace (e.g. a
        # pyrunc fork server its first shim started there) and deletes the namespace


# --- 1. the connection carries on, same host ---------------------------------------------------


def test_tcp_connection_carries_on_after_restore_with_the_network_rebuilt(
    containerd: Containerd, ctr: Ctr, containers: Containers, lab: NetLab, tmp_path: Path
) -> None:
    """Checkpoint with ``--tcp-established --empty-ns network --exit``, delete the task,
    restore: twice in a row, and the client's one connection goes on, both directions intact."""
    bridge = lab.bridge(lab.name("br"))
    client_ns = lab.netns("cl")
    lab.veth(lab.name("vc"), client_ns, bridge=bridge, address="10.213.1.3/24")
    server = start_wired(containers, lab, bridge, "10.213.1", "/usr/bin/net-seq", str(PORT))
    hooks_before = hook_leftovers()
    client = SeqClient.connect(client_ns, server.ip, PORT)
    try:
        client.exchange(100)
        endpoint = (client.sock.fileno(), client.local, client.peer)
        for cycle in range(2):
            images = tmp_path / f"images-{cycle}"
            proc = checkpoint(containerd, server.id, images, "--tcp-established")
            skip_unless_tcp_dumped(proc)
            assert proc.returncode == 0, proc.stderr
            remove_task(ctr, server.id)
            assert not lab.has_link(server.veth), "the old namespace's veth outlived the task"
            recorded = load_snapshot((images / SNAPSHOT).read_bytes())
            eth0 = next(link for link in recorded.links if link.name == "eth0")
            assert eth0.peer is not None and (eth0.peer.name, eth0.peer.bridge) == (
                server.veth,
                bridge,
            )
            assert [(a.address, a.prefixlen) for a in recorded.addresses] == [(server.ip, 24)]
            assert [(r.dst, r.gateway) for r in recorded.routes] == [("", "10.213.1.254")]

            proc = pyrunc(containerd, "restore", server.id, "--image-path", str(images), "--detach")
            assert proc.returncode == 0, proc.stderr
            pid = ctr.wait_status(server.id, TaskStatus.RUNNING).pid
            check_rebuilt(pid, recorded, bridge)

            client.exchange(100)  # the same socket: numbering and hashes go on
            assert (client.sock.fileno(), client.local, client.peer) == endpoint
            assert established(client_ns, PORT) == [
                (f"{client.local[0]}:{client.local[1]}", f"{server.ip}:{PORT}")
            ]
        # no reconnect was possible: the restored server still has no listener
        with pytest.raises(ConnectionRefusedError):
            connect_in(client_ns, server.ip, PORT, timeout=0)
        client.exchange(10)
        assert client.sent == 310
    finally:
        client.close()
    no_new_hook_leftovers(hooks_before)


# --- 2. the connection carries on, restored on another host ------------------------------------


def test_tcp_connection_carries_on_after_restore_on_another_host(
    containerd: Containerd,
    ctr: Ctr,
    containers: Containers,
    lab: NetLab,
    other_host: OtherHost,
    tmp_path: Path,
) -> None:
    """Checkpoint on this host, move the images to a containerd in another network namespace
    with its own bridge of the same name, restore there: the connection carries on, and the
    shim serving the restored task lives in that other host's network namespace."""
    skip_if_known_unable()
    bridge = lab.bridge(lab.name("br"))
    lab.bridge(bridge, netns=other_host.netns)
    client_ns = lab.netns("cl")
    lab.veth(lab.name("vc"), client_ns, bridge=bridge, address="10.213.2.3/24")
    server = start_wired(containers, lab, bridge, "10.213.2", "/usr/bin/net-seq", str(PORT))
    hooks_before = hook_leftovers()
    client = SeqClient.connect(client_ns, server.ip, PORT)
    try:
        client.exchange(100)
        endpoint = (client.sock.fileno(), client.local, client.peer)
        images = tmp_path / "here" / "images"
        proc = checkpoint(containerd, server.id, images, "--tcp-established")
        skip_unless_tcp_dumped(proc)
        assert proc.returncode == 0, proc.stderr
        remove_task(ctr, server.id)
        ctr("containers", "rm", server.id)  # it lives on the other host from now on

        moved = tmp_path / "there" / "images"
        moved.parent.mkdir()
        shutil.move(images, moved)
        link = lab.name("lk")  # join the two hosts' L2 segments: a veth between the bridges
        lab.veth(link, other_host.netns, link, bridge=bridge)
        lab.run(other_host.netns, "ip", "link", "set", link, "master", bridge)

        before_here = NetState.settled()
        other = other_host.containers
        other.ids.append(server.id)
        other_host.containerd.known.add((NAMESPACE, server.id))
        other_host.ctr(
            "containers",
            "create",
            "--runtime",
            PYRUNC,
            IMAGE_REF,
            server.id,
            "/usr/bin/net-seq",
            str(PORT),
        )
        proc = pyrunc(
            other_host.containerd, "restore", server.id, "--image-path", str(moved), "--detach"
        )
        assert proc.returncode == 0, proc.stderr
        pid = other_host.ctr.wait_status(server.id, TaskStatus.RUNNING).pid
        lab.adopt(server.veth, other_host.netns)

        recorded = load_snapshot((moved / SNAPSHOT).read_bytes())
        check_rebuilt(pid, recorded, bridge, netns=other_host.netns)
        assert not lab.has_link(server.veth), "the veth was made on this host, not the other"
        assert NetState.settled() == before_here

        (shim,) = shim_processes(other_host.containerd.address, server.id)
        assert os.readlink(f"/proc/{shim}/ns/net") == netns_id(other_host.netns), (
            f"shim {shim} {proc_cmdline(shim)} is not in the other host's network namespace"
        )
        assert os.readlink(f"/proc/{shim}/ns/net") != os.readlink("/proc/self/ns/net")

        client.exchange(100)
        assert (client.sock.fileno(), client.local, client.peer) == endpoint
        with pytest.raises(ConnectionRefusedError):
            connect_in(client_ns, server.ip, PORT, timeout=0)
        client.exchange(10)
    finally:
        client.close()
    no_new_hook_leftovers(hooks_before)


# --- 3. a host that cannot take the network is left as it was ----------------------------------


@dataclass(frozen=True, slots=True)
class Obstacle:
    """What stands in a restore's way, and the message the restore must fail with."""

    name: str
    message: str


OBSTACLES = [
    Obstacle("bridge missing", "bridge '{bridge}' is missing on this host"),
    Obstacle("address taken", "address {ip} is already in use on the network"),
    Obstacle("veth name taken", "host interface '{veth}' already exists"),
]


@pytest.mark.parametrize("obstacle", OBSTACLES, ids=[o.name for o in OBSTACLES])
def test_a_network_that_cannot_be_rebuilt_fails_the_restore_and_changes_nothing(
    containerd: Containerd,
    ctr: Ctr,
    containers: Containers,
    lab: NetLab,
    tmp_path: Path,
    obstacle: Obstacle,
) -> None:
    """The restore fails with a clear one-line message; the host's links, addresses and bridge
    ports are exactly as before; nothing of the hook is left; once the obstacle is gone the
    same images restore fine."""
    bridge = lab.bridge(lab.name("br"))
    server = start_wired(containers, lab, bridge, "10.213.3", "sleep", "100000")
    images = tmp_path / "images"
    proc = checkpoint(containerd, server.id, images)
    assert proc.returncode == 0, proc.stderr
    remove_task(ctr, server.id)
    recorded = load_snapshot((images / SNAPSHOT).read_bytes())

    if obstacle.name == "bridge missing":
        lab.delete_link(bridge)
    elif obstacle.name == "address taken":
        squatter = lab.netns("sq")
        lab.veth(lab.name("vq"), squatter, bridge=bridge, address=f"{server.ip}/24")
    else:
        lab.veth(server.veth, lab.netns("sq"))  # a veth of that name, elsewhere
    before = NetState.settled()
    hooks_before = hook_leftovers()

    proc = pyrunc(containerd, "restore", server.id, "--image-path", str(images), "--detach")
    line = one_line_failure(proc)
    expected = obstacle.message.format(bridge=bridge, ip=server.ip, veth=server.veth)
    assert f"rebuilding the network failed: {expected}" in line, line

    after = NetState.settled()
    assert after == before, "the failed restore changed the host:\n" + before.diff(after)
    no_new_hook_leftovers(hooks_before)
    task = ctr.task(server.id)
    assert task is None or task.status is TaskStatus.STOPPED, task

    # the images were fine: without the obstacle they restore
    if task is not None:
        ctr.delete_task(server.id, force=True)
    if obstacle.name == "bridge missing":
        lab.bridge(bridge)
    elif obstacle.name == "address taken":
        lab.delete_link(lab.name("vq"))
    else:
        lab.delete_link(server.veth)
    proc = pyrunc(containerd, "restore", server.id, "--image-path", str(images), "--detach")
    assert proc.returncode == 0, proc.stderr
    pid = ctr.wait_status(server.id, TaskStatus.RUNNING).pid
    check_rebuilt(pid, recorded, bridge)
