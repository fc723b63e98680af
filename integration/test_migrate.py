"""``pyrunc migrate`` between two containerd hosts (see ``_migrate_lab``).

Strategy: every test builds its own two hosts (network namespaces, a private containerd and
a ``pyrunc agent`` on TCP with mutual TLS in each, one L2 segment) and removes them. Each
move is checked on both sides: where the container runs, that it goes on from where it was
(a counter's next number is the one after its last on the source; memfill verifies every
byte of its random memory), and that nothing of it is left on the other host (no container
record, no task, no staging directory).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ._migrate_lab import AGENT_PORT, Host, World, in_netns, pyrunc_cli, start_in, two_hosts
from .harness import IMAGE_REF, PYRUNC, REPO, TaskStatus, pyrunc_env, wait_until

pytestmark = pytest.mark.parametrize("runtime", [PYRUNC], ids=["pyrunc"], indirect=True)

METHODS = ["stop-and-copy", "lazy"]


@pytest.fixture
def world(tmp_path: Path, runtime: str) -> Iterator[World]:
    with two_hosts(tmp_path) as w:
        yield w


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split() if x.isdigit()]


def assert_only_on(world: World, cid: str, host: Host) -> None:
    """``cid`` runs on ``host``, and the other host holds nothing of it."""
    assert host.status(cid) is TaskStatus.RUNNING, (host.name, host.status(cid))
    other = world.other(host)
    assert cid not in other.containers(), f"{cid} left on {other.name}"
    assert other.status(cid) is None
    wait_until(lambda: not other.staged(), 30, interval=0.2,
               message=lambda: f"{other.name}'s staging to go: {other.staged()}")


def counts_on(log: Callable[[], str]) -> Callable[[], bool]:
    return lambda: len(numbers(log())) >= 3


def log_of(host: Host, cid: str) -> Callable[[], str]:
    """What the task the agent of ``host`` restored has written so far."""
    return lambda: host.task_log(cid)


def verify_memfill(host: Host, cid: str, log: Callable[[], str], mib: int) -> None:
    """SIGUSR1 to memfill on ``host``: it checks every byte of its memory and prints
    ``verify ok``; wait for one more such line in ``log``."""
    ok = f"verify ok {mib} MiB"
    before = log().count(ok)
    host.ctr("tasks", "kill", "-s", "SIGUSR1", cid)
    wait_until(lambda: log().count(ok) > before or "FAILED" in log(), 60, interval=0.1,
               message=lambda: f"memfill on {host.name} to verify: {log()[-300:]!r}")
    assert "FAILED" not in log(), log()[-300:]


def start_memfill(world: World, host: Host, mib: int) -> tuple[str, Callable[[], str]]:
    cid, box = start_in(world, host, "mig-mem", "/usr/bin/memfill", str(mib), "7")
    path = box.log_path(cid)
    wait_until(lambda: f"filled {mib} MiB" in path.read_text(), 60, interval=0.1,
               message=f"memfill to fill {mib} MiB")
    return cid, lambda: path.read_text()


@pytest.mark.parametrize("method", METHODS)
def test_counter_moves_there_and_back(world: World, method: str) -> None:
    cid, box = start_in(world, world.a, "mig-count", "/usr/bin/counter", "20")
    first_log = box.log_path(cid)
    wait_until(lambda: len(numbers(first_log.read_text())) >= 5, 20, interval=0.1)
    src, dst = world.a, world.b
    log_before: Callable[[], str] = lambda: first_log.read_text()  # noqa: E731
    for _ in range(2):
        proc = world.migrate(cid, src, dst, method=method)
        report = world.report(proc)
        migration = report["migration"]
        assert isinstance(migration, dict)
        assert migration["outcome"] == "migrated" and migration["method"] == method
        assert int(migration["downtime_us"]) > 0 and int(migration["transfer_bytes"]) > 0
        before = numbers(log_before())
        assert_only_on(world, cid, dst)
        wait_until(counts_on(log_of(dst, cid)), 20, interval=0.1,
                   message="the moved counter to count on")
        after = numbers(dst.task_log(cid))
        # it goes on from where it stopped, not from 1. The first line may repeat the
        # source's last: a line still in the stdout pipe when CRIU dumped it is restored
        # into the new pipe, and the source's shim read it too.
        assert after[0] in (before[-1], before[-1] + 1), (before[-5:], after[:5])
        assert after == list(range(after[0], after[0] + len(after))), after[:20]
        log_before = log_of(dst, cid)
        src, dst = dst, src


@pytest.mark.parametrize("method", METHODS)
def test_memfill_memory_intact_after_each_move(world: World, method: str) -> None:
    mib = 64
    cid, log = start_memfill(world, world.a, mib)
    verify_memfill(world.a, cid, log, mib)
    src, dst = world.a, world.b
    for _ in range(2):
        report = world.report(world.migrate(cid, src, dst, method=method))
        stats = report["container_statistics"][0]["criu_statistics"]  # type: ignore[index]
        # the pages went over CRIU's TLS (its dump log says it completed the handshake)
        assert report["migration"]["page_server_tls"] is True, report  # type: ignore[index]
        if method == "lazy":
            moved = report["migration"]["transfer_bytes"]  # type: ignore[index]
            assert int(moved) > mib << 20, report
        else:
            assert stats["pages_written"] >= mib * 256, stats  # every random page was dumped
        assert_only_on(world, cid, dst)
        log = log_of(dst, cid)
        verify_memfill(dst, cid, log, mib)
        src, dst = dst, src


def test_twenty_moves_back_and_forth(world: World) -> None:
    mib = 16
    cid, log = start_memfill(world, world.a, mib)
    src, dst = world.a, world.b
    for move in range(20):
        method = METHODS[move % 2]
        proc = world.migrate(cid, src, dst, method=method)
        assert proc.returncode == 0, (move, method, proc.stdout, proc.stderr)
        assert dst.status(cid) is TaskStatus.RUNNING, (move, dst.status(cid))
        assert cid not in src.containers(), (move, src.containers())
        src, dst = dst, src
    log = log_of(src, cid)
    verify_memfill(src, cid, log, mib)
    assert_only_on(world, cid, src)


@pytest.mark.parametrize("method", METHODS)
def test_tcp_connection_survives_a_move(world: World, method: str) -> None:
    """net-seq in the container, the client in a third namespace: the same connection goes
    on after the container moved (both directions checked by net-seq's numbered, hashed
    records), and after it moved back."""
    from ._net_seq import SeqClient, established

    port = 7000
    cid, _ = start_in(world, world.a, "mig-tcp", "/usr/bin/net-seq", str(port), wired=True)
    client = SeqClient.connect(world.client_ns, f"{world.subnet}.2", port)
    try:
        client.exchange(50)
        endpoint = (client.local, client.peer)
        src, dst = world.a, world.b
        for _ in range(2):
            world.report(world.migrate(cid, src, dst, "--tcp-established", method=method))
            assert_only_on(world, cid, dst)
            client.exchange(50)
            assert (client.local, client.peer) == endpoint
            assert established(world.client_ns, port) == [
                (f"{client.local[0]}:{client.local[1]}", f"{world.subnet}.2:{port}")]
            src, dst = dst, src
        assert client.sent == 150
    finally:
        client.close()


# --- faults ----------------------------------------------------------------------------------


def wait_staging(host: Host, timeout: float = 60) -> None:
    wait_until(lambda: any((host.work_dir / s / "images").exists() and
                           any((host.work_dir / s / "images").iterdir())
                           for s in host.staged()),
               timeout, interval=0.01, message=f"a migration to arrive on {host.name}")


def test_destination_agent_killed_mid_transfer(world: World) -> None:
    mib = 512
    cid, log = start_memfill(world, world.a, mib)
    mig = world.migrate_popen(cid, world.a, world.b, method="stop-and-copy")
    wait_staging(world.b)
    world.b.stop_agent(signal.SIGKILL)
    out, err = mig.communicate(timeout=300)
    assert mig.returncode == 1, (out, err)
    assert "the source runs on (RUNNING)" in err, err
    assert world.a.status(cid) is TaskStatus.RUNNING
    verify_memfill(world.a, cid, log, mib)
    # the agent comes back (as its unit restarts it) and removes what the killed one staged
    world.b.start_agent(world.certs)
    assert_only_on(world, cid, world.a)


def test_page_server_connection_cut_during_post_copy(world: World) -> None:
    mib = 512
    cid, log = start_memfill(world, world.a, mib)
    mig = world.migrate_popen(cid, world.a, world.b, method="lazy")
    # the destination runs and fetches pages: cut its connection to the source's page server
    wait_until(lambda: world.b.status(cid) is TaskStatus.RUNNING, 120, interval=0.01,
               message="the destination to run")
    # only the page server's connection: not the agent's own (its local port is the agent's)
    cut = subprocess.run(["nsenter", f"--net={world.b.netns}", "ss", "-K", "dst", world.a.ip,
                          "and", "sport", "!=", f":{AGENT_PORT}"],
                         capture_output=True, text=True, timeout=30, check=False)
    out, err = mig.communicate(timeout=300)
    if mig.returncode == 0:
        pytest.fail(f"post-copy finished before the cut ({cut.stdout} {cut.stderr}): {out}")
    assert mig.returncode == 3, (out, err)
    report = json.loads(out)
    assert report["migration"]["outcome"] == "postcopy-failed", report
    assert "resumed the source" in report["migration"]["message"], report
    # the source resumed with all its memory; nothing of it is left on b
    assert_only_on(world, cid, world.a)
    verify_memfill(world.a, cid, log, mib)


def test_destination_restore_fails_when_its_base_image_goes(world: World) -> None:
    """The destination's base image is removed while the rootfs diff is on its way (the
    destination prepares the rootfs on it once the diff has arrived, before the source
    freezes; a 256 MiB file in the container's writable layer keeps the diff going for a
    while): the preparation fails, the source was never frozen and runs on."""
    mib = 64
    cid, box = start_in(world, world.a, "mig-mem", "sh", "-c",
                        f"head -c {256 << 20} /dev/urandom > /ballast && "
                        f"exec /usr/bin/memfill {mib} 7")
    path = box.log_path(cid)
    wait_until(lambda: f"filled {mib} MiB" in path.read_text(), 120, interval=0.1,
               message=f"memfill to fill {mib} MiB")

    def log() -> str:
        return path.read_text()

    mig = world.migrate_popen(cid, world.a, world.b, method="stop-and-copy")
    wait_until(lambda: bool(world.b.staged()), 60, interval=0.01,
               message="the migration to arrive on b")
    world.b.ctr("images", "rm", "--sync", IMAGE_REF)
    out, err = mig.communicate(timeout=300)
    assert mig.returncode == 1, (out, err)
    assert "preparing the rootfs" in err and "the source runs on (RUNNING)" in err, err
    assert "before the freeze" in err, err
    verify_memfill(world.a, cid, log, mib)
    assert_only_on(world, cid, world.a)


def _freezer_state(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "freezer" in controllers.split(","):
            return Path(f"/sys/fs/cgroup/freezer{path}/freezer.state").read_text().strip()
    return "no freezer cgroup"


def test_sigterm_in_the_frozen_window_puts_the_source_back(world: World) -> None:
    """``pyrunc migrate`` stopped by SIGTERM (``timeout``, a CI's kill) once the source is
    dumped, frozen, its TCP input locked, while the destination restores: it takes the way
    back as on Ctrl-C: the source runs on, thawed, without the TCP lock, its connection
    intact, and the destination holds nothing."""
    from ._net_seq import SeqClient

    port = 7000
    # 256 MiB beside net-seq: the dump and restore take long enough to be caught frozen
    cid, _ = start_in(world, world.a, "mig-term", "sh", "-c",
                      f"/usr/bin/memfill 256 7 & exec /usr/bin/net-seq {port}", wired=True)
    client = SeqClient.connect(world.client_ns, f"{world.subnet}.2", port)
    try:
        client.exchange(5)
        source = world.a.ctr.task(cid)
        assert source is not None
        mig = world.migrate_popen(cid, world.a, world.b, "--tcp-established",
                                  method="stop-and-copy")
        out_dir = world.a.work_dir / "out"

        def dumped() -> bool:
            if mig.poll() is not None:
                return True
            return any("Dumping finished successfully" in log.read_text(errors="replace")
                       for log in out_dir.glob(f"{cid}-*/work/dump.log"))

        wait_until(dumped, 120, interval=0.005, message="the source's dump to finish")
        frozen = _freezer_state(source.pid)
        mig.send_signal(signal.SIGTERM)
        out, err = mig.communicate(timeout=300)
        if mig.returncode == 0:
            pytest.fail(f"the move committed before the signal: {out}")
        assert mig.returncode == 130 and "interrupted" in err, (mig.returncode, out, err)
        assert frozen == "FROZEN", frozen  # the signal came in the frozen window
        task = world.a.ctr.task(cid)
        assert task is not None and task.status is TaskStatus.RUNNING, task
        assert _freezer_state(task.pid) == "THAWED"
        tables = subprocess.run(["nsenter", "-t", str(task.pid), "-n", "nft", "list", "tables"],
                                capture_output=True, text=True, check=True, timeout=30).stdout
        assert "pyrunc_restore_lock" not in tables, tables
        client.exchange(5)  # the same connection, on the source
        assert client.sent == 10
        # the agent rolls back once the cancelled stream's end reaches it
        wait_until(lambda: cid not in world.b.containers(), 60, interval=0.2,
                   message=lambda: f"b to roll back: {world.b.containers()}")
        assert_only_on(world, cid, world.a)
        assert not list(out_dir.glob(f"{cid}-*")), "the source's staging was left"
    finally:
        client.close()


def _serving_lazily(cid: str) -> bool:
    """The source's ``runc checkpoint --lazy-pages`` of ``cid`` (its CRIU serves pages) runs."""
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                argv = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"checkpoint" in argv and b"--lazy-pages" in argv and cid.encode() in argv:
                return True
    return False


def test_an_interrupt_in_post_copy_does_not_lose_the_move(world: World) -> None:
    """SIGTERM once the lazy move is committed, while the source's CRIU still serves pages:
    the command says the move is committed, waits for post-copy to end and removes the
    source as any completion does; the container runs on at the destination, all its memory
    there, and nothing of it is left on the source (it was left PAUSED, with a SIGKILL
    pending, before)."""
    mib = 512
    cid, _ = start_memfill(world, world.a, mib)
    mig = world.migrate_popen(cid, world.a, world.b, method="lazy")
    wait_until(lambda: f"{cid} committed" in world.b.agent_log.read_text() or
               mig.poll() is not None, 120, interval=0.005, message="the commit")
    serving = _serving_lazily(cid)
    mig.send_signal(signal.SIGTERM)
    out, err = mig.communicate(timeout=300)
    if not serving:
        pytest.fail(f"post-copy was over before the signal: {mig.returncode} {err}")
    assert mig.returncode == 0, (mig.returncode, out, err)
    assert "interrupted, but the move is committed" in err, err
    report = json.loads(out)
    assert report["migration"]["outcome"] == "migrated", report
    assert int(report["migration"]["postcopy_complete_us"]) > 0, report
    assert_only_on(world, cid, world.b)
    assert not _serving_lazily(cid)
    verify_memfill(world.b, cid, log_of(world.b, cid), mib)


def test_refused_checks_touch_nothing(world: World) -> None:
    cid, box = start_in(world, world.a, "mig-ref", "/usr/bin/counter", "20")
    path = box.log_path(cid)
    wait_until(lambda: len(numbers(path.read_text())) >= 3, 20, interval=0.1)
    proc = world.migrate(cid, world.a, world.b, method="pre-copy")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "refused, nothing touched" in proc.stderr, proc.stderr
    assert "no soft-dirty memory tracking" in proc.stderr, proc.stderr
    # the destination already has a container of that name
    world.b.ctr("containers", "create", IMAGE_REF, cid, "true")
    try:
        proc = world.migrate(cid, world.a, world.b, method="lazy")
        assert proc.returncode == 1 and "already has a container" in proc.stderr, proc.stderr
    finally:
        world.b.ctr("containers", "rm", cid)
    before = numbers(path.read_text())[-1]
    wait_until(lambda: numbers(path.read_text())[-1] > before, 10, interval=0.1,
               message="the counter to go on")
    assert_only_on(world, cid, world.a)


@pytest.mark.parametrize("method", METHODS)
def test_a_container_with_its_own_criu_configuration_is_refused_untouched(
        world: World, method: str) -> None:
    """A container that names its own CRIU configuration file (``org.criu.config``) cannot
    take the options a move passes CRIU in the shim's own file (the nftables lock, TLS):
    refused before anything is touched, naming the annotation and its value; the container
    runs on, never paused, and the destination holds nothing."""
    conf = world.a.work_dir.parent / "own-criu.conf"
    conf.write_text("tcp-established\n")
    cid, box = start_in(world, world.a, "mig-own", "/usr/bin/counter", "20",
                        extra=("--annotation", f"org.criu.config={conf}"))
    path = box.log_path(cid)
    wait_until(lambda: len(numbers(path.read_text())) >= 3, 20, interval=0.1)
    source = world.a.ctr.task(cid)
    assert source is not None
    proc = world.migrate(cid, world.a, world.b, method=method)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "refused, nothing touched" in proc.stderr, proc.stderr
    assert f"org.criu.config='{conf}'" in proc.stderr, proc.stderr
    assert _freezer_state(source.pid) == "THAWED"
    task = world.a.ctr.task(cid)
    assert task is not None and task.status is TaskStatus.RUNNING and task.pid == source.pid
    before = numbers(path.read_text())[-1]
    wait_until(lambda: numbers(path.read_text())[-1] > before, 10, interval=0.1,
               message="the counter to go on")
    assert not list((world.a.work_dir / "out").glob(f"{cid}-*")), "the source staged"
    assert_only_on(world, cid, world.a)


# --- mutual TLS ------------------------------------------------------------------------------


PROBE = """
import sys, grpc
from shim.api.pyrunc.migrate.v1 import agent_pb2, agent_pb2_grpc
address, ca, key, cert = sys.argv[1:5]
creds = grpc.ssl_channel_credentials(
    root_certificates=open(ca, "rb").read(),
    private_key=open(key, "rb").read() if key else None,
    certificate_chain=open(cert, "rb").read() if cert else None)
with grpc.secure_channel(address, creds) as ch:
    try:
        agent_pb2_grpc.AgentStub(ch).Probe(agent_pb2.ProbeRequest(), timeout=10)
        print("OK")
    except grpc.RpcError as exc:
        print(exc.code().name)
"""


def test_agent_refuses_clients_without_a_certificate_of_its_ca(world: World) -> None:
    def probe(key: str, cert: str) -> str:
        argv = [*in_netns(world.a.netns), sys.executable, "-c", PROBE, world.b.agent_address,
                str(world.certs / "ca.pem"), key, cert]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True,
                              cwd=REPO, env=pyrunc_env()).stdout.strip()

    c = world.certs
    assert probe("", "") == "UNAVAILABLE"  # no client certificate
    assert probe(str(c / "rogue.key"), str(c / "rogue.pem")) == "UNAVAILABLE"  # other CA
    assert probe(str(c / "client.key"), str(c / "client.pem")) == "OK"
    # and the command line with the other CA's certificate: refused before anything moves
    cid, _ = start_in(world, world.a, "mig-tls", "/usr/bin/counter", "20")
    rogue_files = (str(world.certs / "rogue.pem"), str(world.certs / "rogue.key"),
                   str(world.certs / "ca.pem"))
    proc = world.migrate(cid, world.a, world.b, tls=rogue_files)
    assert proc.returncode == 1 and "UNAVAILABLE" in proc.stderr, proc.stderr
    assert_only_on(world, cid, world.a)
    # plaintext TCP is refused unless asked for
    agent = subprocess.run([*in_netns(world.b.netns), *pyrunc_cli(), "-a",
                            world.b.containerd.address, "agent", "--listen", "127.0.0.1:7444",
                            "--work-dir", str(world.b.work_dir)], capture_output=True, text=True,
                           timeout=60, cwd=REPO, env=pyrunc_env(), check=False)
    assert agent.returncode == 1 and "refusing plaintext TCP" in agent.stderr, agent.stderr



# A foreign client of the source's lazy page server: asks for one page of the container's
# memory as the destination's `criu lazy-pages` would (PS_IOV_GET of CRIU's page-xfer.c:
# struct page_server_iov {u32 cmd; u64 nr_pages; u64 vaddr; u64 dst_id}, the task by its
# virtual pid), plainly or over TLS with a certificate, and prints what came back. A page
# server without TLS answers with a header and the page's 4096 bytes.
FOREIGN = """
import json, socket, ssl, struct, sys
host, port, mode, vaddr, cert, key = sys.argv[1:7]
port, vaddr = int(port), int(vaddr)
got, error = b"", ""
try:
    s = socket.create_connection((host, port), timeout=20)
    if mode == "tls":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(cert, key)
        s = ctx.wrap_socket(s)
    s.sendall(struct.pack("@IQQQ", 7, 1, vaddr, 1))
    while len(got) < 8192:
        data = s.recv(65536)
        if not data:
            break
        got += data
except (OSError, ssl.SSLError) as exc:
    error = f"{type(exc).__name__}: {exc}"
print(json.dumps({"received": got.hex(), "error": error}))
"""


def _largest_anonymous_mapping(pid: int) -> tuple[int, int]:
    """Start and end of ``pid``'s largest anonymous writable mapping (memfill's memory)."""
    best = (0, 0)
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if "w" in fields[1] and (len(fields) < 6 or fields[5] == "[heap]") and \
                end - start > best[1] - best[0]:
            best = (start, end)
    return best


def _page_server_port(host: Host) -> int | None:
    """The port of a TCP listener of a ``criu`` process in ``host``'s namespace."""
    out = subprocess.run([*in_netns(host.netns), "ss", "-Hltnp"], capture_output=True,
                         text=True, timeout=10, check=False).stdout
    for line in out.splitlines():
        if '"criu"' in line:
            return int(line.split()[3].rsplit(":", 1)[1])
    return None


HOLD = "pyrunc_test_hold"


@pytest.mark.parametrize("foreign", ["plain", "other-ca"])
def test_a_foreign_client_of_the_lazy_page_server_reads_no_memory(
        world: World, foreign: str) -> None:
    """The source's lazy page server speaks CRIU's TLS with the move's certificates: a client
    that connects first (the destination's own connection is held back until it is done)
    plainly, or over TLS with a certificate of another CA, gets no byte of the container's
    memory. CRIU's lazy page server takes one connection; the foreign one fails its
    handshake, so post-copy fails and the move is undone: the container runs on at the
    source with all its memory, and the destination holds nothing."""
    mib = 64
    cid, log = start_memfill(world, world.a, mib)
    source = world.a.ctr.task(cid)
    assert source is not None
    start, _ = _largest_anonymous_mapping(source.pid)
    with open(f"/proc/{source.pid}/mem", "rb") as mem:
        mem.seek(start)
        page = mem.read(4096)
    assert len(page) == 4096 and page != bytes(4096)
    # the destination's connections to the source (but the agent's answers) wait
    rule = (f"table inet {HOLD} {{\n chain out {{\n  type filter hook output priority 0;\n"
            f"  ip daddr {world.a.ip} tcp dport != {AGENT_PORT} "
            "tcp flags & (syn | ack) == syn drop\n }\n}\n")
    subprocess.run([*in_netns(world.b.netns), "nft", "-f", "-"], input=rule, text=True,
                   check=True, timeout=30)
    mig = world.migrate_popen(cid, world.a, world.b, method="lazy")
    try:
        wait_until(lambda: _page_server_port(world.a) is not None or mig.poll() is not None,
                   120, interval=0.01, message="the source's lazy page server to listen")
        port = _page_server_port(world.a)
        assert port is not None, mig.communicate(timeout=60)
        c = world.certs
        argv = [*in_netns(world.client_ns), sys.executable, "-c", FOREIGN, world.a.ip,
                str(port), "tls" if foreign == "other-ca" else "plain", str(start),
                str(c / "rogue.pem"), str(c / "rogue.key")]
        answer = json.loads(subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                           check=True).stdout)
    finally:
        subprocess.run([*in_netns(world.b.netns), "nft", "delete", "table", "inet", HOLD],
                       check=False, timeout=30)
    received = bytes.fromhex(answer["received"])
    assert page not in received, answer
    if foreign == "plain":
        # a TLS alert at most, never the page server's answer
        assert not received or received[0] == 0x15, answer
    else:
        assert received == b"", answer  # no application data: the handshake failed
    out, err = mig.communicate(timeout=300)
    assert mig.returncode in (1, 3), (mig.returncode, out, err)
    assert_only_on(world, cid, world.a)
    verify_memfill(world.a, cid, log, mib)


@pytest.mark.parametrize("method", METHODS)
def test_tls_moves_with_a_client_certificate_that_names_no_address(
        world: World, method: str) -> None:
    """The source's certificate, as a real client's, names no address (the lab's others
    name both hosts): CRIU's page-server TLS does not look for one in it (neither the
    destination dialling the source's lazy page server, nor a page server checking its own
    address), and the moves go, over TLS, memory verified."""
    mib = 16
    cid, _ = start_memfill(world, world.a, mib)
    bare = (str(world.certs / "bare.pem"), str(world.certs / "bare.key"),
            str(world.certs / "ca.pem"))
    src, dst = world.a, world.b
    for _ in range(2):
        report = world.report(world.migrate(cid, src, dst, method=method, tls=bare))
        assert report["migration"]["page_server_tls"] is True, report  # type: ignore[index]
        assert_only_on(world, cid, dst)
        verify_memfill(dst, cid, log_of(dst, cid), mib)
        src, dst = dst, src


def test_a_plain_page_server_is_an_explicit_logged_opt_out(world: World) -> None:
    """``--plain-page-server``: the move works without CRIU's TLS, and both sides say so."""
    mib = 16
    cid, _ = start_memfill(world, world.a, mib)
    proc = world.migrate(cid, world.a, world.b, "--plain-page-server", method="stop-and-copy")
    report = world.report(proc)
    assert report["migration"]["page_server_tls"] is False, report  # type: ignore[index]
    assert "page server speaks plain TCP" in proc.stderr, proc.stderr
    assert "page server WITHOUT TLS" in world.b.agent_log.read_text()
    assert_only_on(world, cid, world.b)
    verify_memfill(world.b, cid, log_of(world.b, cid), mib)


@pytest.mark.parametrize("method", METHODS)
def test_rootfs_written_after_the_diff_arrives(world: World, method: str) -> None:
    """The rootfs diff goes before the freeze; the container keeps writing its rootfs (every
    20 ms a line appended to /appended and printed, and /gone-<n-1> replaced by /gone-<n>),
    so what it did between the diff and the freeze reaches the destination only through the
    frozen second pass (what changed, and what each changed directory still holds): the file
    there has every line, none missing and none twice, and at most one /gone-* is left."""
    cid, box = start_in(world, world.a, "mig-fs", "sh", "-c",
                        "i=0; while :; do i=$((i+1)); echo $i >> /appended; "
                        "rm -f /gone-$((i-1)); : > /gone-$i; echo $i; sleep 0.02; done")
    path = box.log_path(cid)
    wait_until(lambda: len(numbers(path.read_text())) >= 10, 20, interval=0.1)
    report = world.report(world.migrate(cid, world.a, world.b, method=method))
    phases = report["migration"]["phases"]  # type: ignore[index]
    assert "frozen:send-rootfs-changes" in phases, phases  # the second pass was taken
    assert_only_on(world, cid, world.b)
    printed = log_of(world.b, cid)
    wait_until(lambda: len(numbers(printed())) >= 10, 20, interval=0.1,
               message="the container to go on on b")
    lines = numbers(world.b.ctr("tasks", "exec", "--exec-id", "cat", cid, "cat",
                                "/appended").stdout)
    assert lines == list(range(1, len(lines) + 1)), lines
    assert lines[-1] >= numbers(printed())[0], (lines[-5:], numbers(printed())[:5])
    # (ls exits 1 when the /gone-* it read is removed before it looks at it: the container
    # goes on renaming; what it printed is what there was)
    listing = world.b.ctr("tasks", "exec", "--exec-id", "ls", cid, "ls", "/",
                          check=False).stdout.split()
    assert len([n for n in listing if n.startswith("gone-")]) <= 1, listing


@pytest.mark.parametrize("method", METHODS)
def test_destination_restore_fails_and_the_source_runs_on(world: World, method: str) -> None:
    """The destination cannot rebuild the container's network (the host-side veth name is
    taken there): its restore fails after CRIU started; the source runs on from where it was
    (for lazy: its CRIU ended and the task thawed) and the destination holds nothing."""
    cid, box = start_in(world, world.a, "mig-fail", "/usr/bin/counter", "20", wired=True)
    path = box.log_path(cid)
    wait_until(lambda: len(numbers(path.read_text())) >= 3, 20, interval=0.1)
    squatter = world.lab.netns("sq")
    world.lab.veth(world.lab.name("vs"), squatter, netns=world.b.netns)  # the name, taken on b
    # with --tcp-established stop-and-copy locks the source's TCP input: undone on the way back
    proc = world.migrate(cid, world.a, world.b, "--tcp-established", method=method)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "already exists" in proc.stderr and "the source runs on (RUNNING)" in proc.stderr, (
        proc.stderr)
    assert "unlocking" not in proc.stderr, proc.stderr
    task = world.a.ctr.task(cid)
    assert task is not None
    tables = subprocess.run(["nsenter", "-t", str(task.pid), "-n", "nft", "list", "tables"],
                            capture_output=True, text=True, check=True, timeout=30).stdout
    assert "pyrunc_restore_lock" not in tables, tables
    before = numbers(path.read_text())[-1]
    wait_until(lambda: numbers(path.read_text())[-1] > before + 3, 20, interval=0.1,
               message="the source's counter to go on")
    assert_only_on(world, cid, world.a)


_PROBE_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
except TimeoutError:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
else:
    print("connected")
"""

_REBUILD = """
import sys
import time
from shim.checkpoint.network import load_snapshot, rebuild
rebuild(load_snapshot(sys.stdin.buffer.read()), int(sys.argv[1]))
"""


def test_rebuilt_namespace_drops_tcp_until_the_restore_is_over(world: World) -> None:
    """The cause of the lazy + ``--tcp-established`` moves that lost the container under
    load, shown without timing: the destination's network rebuild (at CRIU's setup-namespaces
    step, before CRIU restores any socket) announces the container's MAC, so the peer's next
    retransmission reaches the new namespace; there, without a lock, the segment finds no
    socket and is answered with a reset, the peer drops the connection, and the restored
    socket gets ECONNRESET at once (net-seq exited 4; post-copy then "completed" because the
    tasks were gone). Here a namespace is rebuilt from a record with inet sockets, as the
    hook does, and a segment is sent to a port with no socket: it is dropped (the connect
    times out instead of being refused) until the shim's unlock after the restore; then the
    same connect is refused, so the address was reachable all along."""
    from shim.checkpoint.network import (
        Address,
        Link,
        NetworkSnapshot,
        VethPeer,
        dump_snapshot,
        tcp_unlock_argv,
    )

    holder = subprocess.Popen(["unshare", "--net", "sleep", "300"])
    try:
        address = f"{world.subnet}.40"
        snap = NetworkSnapshot(
            links=(Link("lo", "loopback", 65536, "00:00:00:00:00:00", True),
                   Link("eth0", "veth", 1500, "02:42:0a:d6:01:28", True,
                        VethPeer(world.lab.name("vk"), world.lab.name("br"), 1500))),
            addresses=(Address("eth0", 2, address, 24),), routes=(), sockets=True)
        wait_until(lambda: os.readlink(f"/proc/{holder.pid}/ns/net") !=
                   os.readlink("/proc/self/ns/net"), 10, interval=0.05,
                   message="the holder's own namespace")
        subprocess.run([*in_netns(world.a.netns), sys.executable, "-c", _REBUILD,
                        str(holder.pid)], input=dump_snapshot(snap), check=True, cwd=REPO,
                       env=pyrunc_env(), timeout=60)

        def connect() -> str:
            return subprocess.run(
                [*in_netns(world.client_ns), sys.executable, "-c", _PROBE_CONNECT, address,
                 "7999", "1.5"], capture_output=True, text=True, check=True,
                timeout=60).stdout.strip()

        assert connect() == "timeout"  # locked: dropped, no reset
        subprocess.run(tcp_unlock_argv(holder.pid), check=True, timeout=60)
        assert connect() == "refused"  # unlocked: the stack answers for itself again
    finally:
        holder.kill()
        holder.wait()


def _unacked(sock: socket.socket) -> int:
    """Bytes ``sock`` (a TCP socket) sent that its peer has not acknowledged yet."""
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", raw)[0])


def test_a_paused_source_takes_no_tcp_data_after_its_dump(world: World) -> None:
    """Why stop-and-copy locks the source's TCP input itself, shown without timing: CRIU
    unlocks the network at the end of a dump that leaves the tasks alive, and the paused
    source's kernel then acknowledges what a peer sends, data the dumped sockets never had
    (lost for the destination, which the peer's path reaches only once its rebuild announces
    the container's MAC). Dumped as a stop-and-copy move dumps it, a record the client sends
    is acknowledged at once by the paused source; with the source's lock
    (:class:`shim.migrate._source._SourceTcpLock`, taken within CRIU's lock as the move takes
    it) it stays unacknowledged, is acknowledged once the lock is undone (the rollback's way)
    and answered when the source resumes: the stream is intact."""
    import threading

    from shim.api.pyrunc.v1 import checkpoint_pb2
    from shim.migrate._containerd import connect
    from shim.migrate._source import NETWORK_LOCK, _SourceTcpLock
    from shim.typeurl import pack

    from ._migrate_lab import NAMESPACE
    from ._net_seq import SeqClient

    port = 7000
    cid, _ = start_in(world, world.a, "mig-lock", "/usr/bin/net-seq", str(port), wired=True)
    client = SeqClient.connect(world.client_ns, f"{world.subnet}.2", port)
    try:
        client.exchange(5)
        with connect(world.a.containerd.address, NAMESPACE) as cd:
            task = cd.task(cid)
            assert task is not None
            for n, locked in enumerate((False, True)):
                stage = world.a.work_dir / f"dump-{n}"
                lock = _SourceTcpLock(task.pid, stage / "work" / "dump.log")
                cd.pause(cid)
                if locked:
                    lock.start()  # as the move does: it locks within CRIU's lock
                options = checkpoint_pb2.CheckpointOptions(
                    exit=False, open_tcp=True, image_path=str(stage / "images"),
                    work_path=str(stage / "work"), empty_namespaces=["network"],
                    network_lock=NETWORK_LOCK)
                cd.checkpoint(cid, pack(options))  # leave-running; CRIU unlocks at its end
                if locked:
                    lock.finish()
                    assert lock.locked and not lock.problem, lock.problem
                assert cd.task(cid).status == "PAUSED"  # type: ignore[union-attr]
                failed: list[BaseException] = []

                def exchange_one(failed: list[BaseException] = failed) -> None:
                    try:
                        client.exchange(1, 60)
                    except BaseException as exc:  # reported by the test's thread
                        failed.append(exc)

                answered = threading.Thread(target=exchange_one)
                answered.start()
                if locked:
                    wait_until(lambda: _unacked(client.sock) > 0, 10, interval=0.01,
                               message="the record to be sent")
                    for _ in range(20):  # 2 s: several of the client's retransmissions
                        assert _unacked(client.sock) > 0, "the locked source acknowledged"
                        time.sleep(0.1)
                    assert lock.undo() == ""
                # unlocked: the paused source's kernel takes it (once undone: at the
                # client's next retransmission)
                wait_until(lambda: _unacked(client.sock) == 0, 30, interval=0.01,
                           message="the paused source to acknowledge the record")
                assert answered.is_alive()  # acknowledged, not answered: it is paused
                cd.resume(cid)
                answered.join(60)
                assert not answered.is_alive() and not failed, failed
        client.exchange(5)
        assert client.sent == 12
    finally:
        client.close()
