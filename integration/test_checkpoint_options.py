"""Every checkpoint option end to end: ``pyrunc checkpoint`` / ``pyrunc restore`` through the
harness's containerd with the io.containerd.pyrunc.v2 runtime, real runc 1.1 and real CRIU.

Strategy: one test (or two) per option. Each starts a small program of the test image in a
container, checkpoints it with the tool (a separate process, as a user runs it), restores it
with ``ctr c create`` + ``pyrunc restore`` (into the same container where files of its
rootfs must still be there), and observes the result from the host (:mod:`._opt_tools`):
the restored process's own output, ``/proc/<pid>/net/tcp``, ``/proc/<pid>/ns/net``,
``/proc/locks``, ``st_blocks`` of image files, and the CRIU logs runc writes into
``--work-path`` (``dump.log``, ``restore.log``). Where an option exists to let CRIU do
something it refuses by default, the refusal is shown too: the tool fails with one line that
names the kept CRIU log and quotes CRIU's reason, and the container keeps running untouched.

Facts of runc 1.1 that shape these tests (measured with runc 1.1.5 and CRIU 4.1.1/4.2):

* runc always adds the network namespace to CRIU's ``empty_ns`` (it "doesn't manage network
  devices"): a restored container gets a fresh network namespace whatever the options. The
  shim records and rebuilds the container's network only for ``--empty-ns network``, so a
  TCP connection over loopback is checkpointed with ``--tcp-established --empty-ns
  network`` (without it, CRIU's restore says "Can't connect inet socket back: Network is
  unreachable").
* runc 1.1 ignores ``restore --manage-cgroups-mode`` (fixed in runc 1.2); the shim passes
  the mode in the CRIU configuration file instead, which is what makes the restore lines
  below differ per mode.
* CRIU finds the peer of a unix socket with socket diagnostics of the dumped network
  namespace, so "outside the container" must still be inside that namespace for
  ``--ext-unix-sk``; and an external peer is reconnected by its bound name, which must be
  the same path inside the container (the bind mount uses the same path on both sides).
* CRIU 4.1.1 cannot dump any TCP socket on Linux >= 6.16 (getsockopt SO_PASSCRED on an
  inet socket fails; fixed in CRIU 4.2): the established-connection test skips with CRIU's
  own log line when that is what stops it.

The test image must contain the ``opt-*`` programs (``hack/image/build.sh``, which
``hack/install.sh`` runs). Every test removes its containers (``containers`` fixture), its
scratch directory and its sockets; pyrunc checkpoints create no image records.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ._opt_tools import (
    DatagramSink,
    Tcp,
    blocks,
    criu_facts,
    flock_holders,
    free_port,
    held_netns,
    log_lines,
    netns,
    pyrunc,
    socket_in_netns,
    tcp_connections,
    tcp_sockets_on_port,
)
from .harness import (
    NAMESPACE,
    PYRUNC,
    Containerd,
    Containers,
    Started,
    TaskStatus,
    freezer_state,
    pid_alive,
    wait_until,
)

pytestmark = pytest.mark.parametrize("runtime", [PYRUNC], ids=["pyrunc"], indirect=True)

STORED_PLAN = "pyrunc-checkpoint.json"
MIB = 1 << 20
_NOTE = re.compile(r"pyrunc: note: \S+ was checkpointed; containerd stored no new blob \(.*\)")


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def hold_netns() -> Iterator[Callable[[int], str]]:
    """``hold_netns(pid)``: keep ``pid``'s network namespace alive until the test ends (its
    inode number could be reused for a new namespace otherwise); returns its name."""
    with contextlib.ExitStack() as stack:
        yield lambda pid: stack.enter_context(held_netns(pid))


def checkpoint(containers: Containers, cid: str, images: Path, work: Path,
               *flags: str) -> subprocess.CompletedProcess[str]:
    """``pyrunc checkpoint -q cid --image-path images --work-path work flags``."""
    return pyrunc(containers.containerd, "checkpoint", "-q", cid, "--image-path", str(images),
                  "--work-path", str(work), *flags)


def assert_done(proc: subprocess.CompletedProcess[str]) -> None:
    """The tool succeeded (at most containerd 1.6's duplicate-blob note on stderr)."""
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" or proc.stdout.strip().isdigit(), proc.stdout
    assert proc.stderr == "" or _NOTE.fullmatch(proc.stderr.strip()), proc.stderr


def refused(proc: subprocess.CompletedProcess[str]) -> str:
    """The tool failed cleanly: status 1, one ``pyrunc: ...`` line on stderr; returns it."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyrunc: "), proc.stderr
    return lines[0]


def assert_running_untouched(containers: Containers, started: Started) -> None:
    """Still RUNNING with the same pid, and not left frozen."""
    info = containers.ctr.task(started.id)
    assert info is not None and info.status is TaskStatus.RUNNING, info
    assert info.pid == started.pid and pid_alive(started.pid)
    assert freezer_state(started.pid) == "THAWED"


def create(containers: Containers, name: str, *command: str, extra: tuple[str, ...] = (),
           tty: bool = False) -> str:
    """``ctr c create`` a container record (no task) for a restore; returns its id."""
    cid = containers.new_id(name)
    containers.ctr("containers", "create", "--runtime", containers.runtime,
                   *(("-t",) if tty else ()), *extra, containers.image, cid, *command)
    return cid


def restore(containers: Containers, cid: str, images: Path, work: Path,
            *flags: str) -> Started:
    """``pyrunc restore cid --detach`` from ``images``, output to a new log file."""
    log = containers.logdir / f"{cid}.restored.log"
    containers.logdir.mkdir(parents=True, exist_ok=True)
    proc = pyrunc(containers.containerd, "restore", cid, "--image-path", str(images),
                  "--work-path", str(work), "--detach", "--log-uri", f"file://{log}", *flags)
    assert_done(proc)
    return Started(cid, int(proc.stdout), log)


def wait_output(started: Started, pattern: str, timeout: float = 20) -> re.Match[str]:
    """Wait for ``pattern`` in what ``started`` wrote; returns the first match."""
    regex = re.compile(pattern, re.MULTILINE)
    return wait_until(lambda: regex.search(started.output()), timeout,
                      message=lambda: f"{pattern!r} from {started.id}: "
                      f"{started.output()[-300:]!r}")


def numbers(lines: list[str], prefix: str) -> list[int]:
    """The numbers of the lines ``<prefix> <n>``, in order."""
    return [int(line[len(prefix):]) for line in lines if line.startswith(prefix)
            and line[len(prefix):].isdigit()]


def plan_of(images: Path) -> dict[str, object]:
    stored: dict[str, object] = json.loads((images / STORED_PLAN).read_text())
    return stored


def kept_log(containerd: Containerd, cid: str, name: str) -> Path:
    return containerd.bundle(NAMESPACE, cid) / f"criu-{name}"


def count_lines(started: Started, prefix: str) -> int:
    return len(numbers(started.lines(), prefix))


# --- 1. TCP: --tcp-established ----------------------------------------------------------------

PORT = "5000"  # inside the container's own network namespace
_TCP_LINE = r"Error \(criu/sk-inet\.c:\d+\): inet: Connected TCP socket, consider using " \
            r"--tcp-established option\."
_PASSCRED = r"Error \(criu/sockets\.c:\d+\): sockets: Can't get 1:16 opt: Operation not supported"


def test_tcp_connection_refused_without_tcp_established(containers: Containers,
                                                        scratch: Path) -> None:
    src = containers.start("opt-tcp-no", "/usr/bin/opt-tcp", PORT, "50")
    wait_until(lambda: min(count_lines(src, "server got "), count_lines(src, "client got ")) >= 5,
               message="the exchange to start")
    images, work = scratch / "img", scratch / "work"

    line = refused(checkpoint(containers, src.id, images, work))

    kept = kept_log(containers.containerd, src.id, "dump.log")
    assert f"CRIU log kept at {kept}" in line, line
    assert "CRIU says: inet: Connected TCP socket, consider using --tcp-established option." \
        in line, line
    assert log_lines(work / "dump.log", _TCP_LINE)
    assert not images.exists()  # nothing that looks like a checkpoint
    assert_running_untouched(containers, src)
    seen = count_lines(src, "client got ")
    wait_until(lambda: min(count_lines(src, "server got "), count_lines(src, "client got "))
               >= seen + 5, message="the exchange to go on")
    assert not [x for x in src.lines() if re.search(r"GAP|EOF|ERROR", x)], src.output()


def test_tcp_established_connection_survives(containers: Containers, scratch: Path,
                                             hold_netns: Callable[[int], str]) -> None:
    src = containers.start("opt-tcp", "/usr/bin/opt-tcp", PORT, "50")
    wait_until(lambda: min(count_lines(src, "server got "), count_lines(src, "client got "))
               >= 10, message="the exchange to start")
    before = tcp_connections(src.pid)
    assert len(before) == 2 and {t.local for t in before} == {t.remote for t in before}
    assert ("127.0.0.1", int(PORT)) in {t.local for t in before}, before
    source_ns = hold_netns(src.pid)
    images, work = scratch / "img", scratch / "work"

    proc = checkpoint(containers, src.id, images, work,
                      "--tcp-established", "--empty-ns", "network", "--exit")
    if proc.returncode != 0 and (hit := log_lines(work / "dump.log", _PASSCRED)):
        version, _ = criu_facts()
        pytest.skip(
            f"CRIU {version} cannot dump a TCP socket on Linux {platform.release()}: its "
            f"dump.log says {hit[0].split(')', 1)[1].strip()!r} (getsockopt SO_PASSCRED on an "
            "inet socket fails since Linux 6.16; CRIU 4.2 has the fix)")
    assert_done(proc)
    containers.ctr.wait_status(src.id, TaskStatus.STOPPED)
    dumped = src.lines()

    dst_id = create(containers, "opt-tcp-restored", "/usr/bin/opt-tcp", PORT, "50")
    dst = restore(containers, dst_id, images, scratch / "rwork")

    # the same connection (same addresses and ports) in a new network namespace
    assert tcp_connections(dst.pid) == before
    assert netns(dst.pid) != source_ns
    wait_until(lambda: min(count_lines(dst, "server got "), count_lines(dst, "client got "))
               >= 20, message=lambda: f"the restored exchange: {dst.output()[-300:]!r}")
    restored = dst.lines()
    for side in ("server got ", "client got "):
        a, b = numbers(dumped, side), numbers(restored, side)
        assert a == list(range(1, len(a) + 1)), (side, a)
        assert b == list(range(len(a) + 1, len(a) + 1 + len(b))), (side, len(a), b)
    # no reconnect: the program connects once and ends on any error; neither happened
    assert not [x for x in restored if re.search(r"accepted|connected|GAP|EOF|ERROR", x)]
    assert tcp_connections(dst.pid) == before


# --- 2. external unix sockets: --ext-unix-sk -------------------------------------------------


def _bind(path: Path) -> tuple[str, ...]:
    return ("--mount", f"type=bind,src={path},dst={path},options=rbind:rw")


def test_ext_unix_sk_peer_in_the_host_netns_is_out_of_reach(containers: Containers,
                                                            scratch: Path) -> None:
    ext = scratch / "ext"
    ext.mkdir()
    path = ext / "d.sock"
    host = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink = DatagramSink(host)
    try:
        host.bind(str(path))
        sink.start()
        src = containers.start("opt-unix-host", "/usr/bin/opt-unix", "dgram", str(path), "50",
                               extra=_bind(ext))
        wait_until(lambda: len(sink.numbers) >= 5, message="datagrams from the container")

        line = refused(checkpoint(containers, src.id, scratch / "img", scratch / "work",
                                  "--ext-unix-sk"))

        # the peer CRIU cannot find is the host's socket: it is in another network namespace
        m = re.search(r"CRIU says: unix: Unix socket \d+ without peer (\d+)", line)
        assert m and int(m.group(1)) == os.fstat(host.fileno()).st_ino, line
        assert log_lines(scratch / "work" / "dump.log",
                         r"Error \(criu/sk-unix\.c:\d+\): unix: Unix socket \d+ without peer")
        assert_running_untouched(containers, src)
        seen = len(sink.numbers)
        wait_until(lambda: len(sink.numbers) >= seen + 5, message="datagrams to go on")
    finally:
        sink.close()


def test_ext_unix_sk_datagram_peer_outside_the_container(containers: Containers,
                                                         scratch: Path) -> None:
    ext = scratch / "ext"
    ext.mkdir()
    path = ext / "d.sock"
    src = containers.start("opt-unix", "/usr/bin/opt-unix", "dgram", str(path), "50",
                           extra=_bind(ext))
    # the listener: this process, outside the container, in the container's network namespace
    listener = socket_in_netns(src.pid, socket.SOCK_DGRAM)
    sink = DatagramSink(listener)
    try:
        listener.bind(str(path))
        sink.start()
        wait_until(lambda: len(sink.numbers) >= 10, message="datagrams from the container")

        line = refused(checkpoint(containers, src.id, scratch / "img0", scratch / "work0"))
        assert "CRIU says: unix: External socket is used. Consider using --ext-unix-sk " \
               "option." in line, line
        assert_running_untouched(containers, src)

        images, work = scratch / "img", scratch / "work"
        assert_done(checkpoint(containers, src.id, images, work, "--ext-unix-sk", "--exit"))
        extern = rf"unix: \tDumping extern: ino \d+ .* type +2 .* name {re.escape(str(path))}$"
        assert log_lines(work / "dump.log", extern)  # SOCK_DGRAM = 2
        containers.ctr.wait_status(src.id, TaskStatus.STOPPED)
        last_sent = numbers(src.lines(), "sent ")[-1]
        received = len(sink.numbers)

        dst_id = create(containers, "opt-unix-restored", "/usr/bin/opt-unix", "dgram",
                        str(path), "50", extra=_bind(ext))
        dst = restore(containers, dst_id, images, scratch / "rwork")

        wait_until(lambda: len(sink.numbers) >= received + 10,
                   message=lambda: f"datagrams from the restored process: {dst.output()!r}")
        got = list(sink.numbers)
        assert got == list(range(1, len(got) + 1)), got  # none lost, none twice
        sent = numbers(dst.lines(), "sent ")
        assert sent and sent[0] == last_sent + 1, (last_sent, sent[:3])
        assert "connected" not in dst.output()  # CRIU reconnected the socket by its name
    finally:
        sink.close()


def test_ext_unix_sk_stream_connection_cannot_be_dumped(containers: Containers,
                                                        scratch: Path) -> None:
    ext = scratch / "ext"
    ext.mkdir()
    path = ext / "s.sock"
    src = containers.start("opt-unix-stream", "/usr/bin/opt-unix", "stream", str(path), "50",
                           extra=_bind(ext))
    listener = socket_in_netns(src.pid, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        listener.listen(1)
        listener.settimeout(20)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(20)
            assert conn.recv(64).startswith(b"1\n")

            line = refused(checkpoint(containers, src.id, scratch / "img", scratch / "work",
                                      "--ext-unix-sk"))

            assert "CRIU says: unix: Can't dump half of stream unix connection." in line, line
            assert log_lines(scratch / "work" / "dump.log",
                             r"Error \(criu/sk-unix\.c:\d+\): unix: Can't dump half of stream")
            assert_running_untouched(containers, src)
            assert conn.recv(4096)  # the connection still carries data
    finally:
        listener.close()


# --- 3. a shell with a terminal: --shell-job, pyrunc restore --tty ---------------------------


def test_shell_job_restored_with_a_terminal(containers: Containers, scratch: Path) -> None:
    cid = containers.new_id("opt-shell")
    term = containers.pty(*containers.run_args(cid, "sh", tty=True))
    term.send("X=abc; cd /tmp; echo ready-$((6*7))\n")
    term.expect("ready-42")
    images, work = scratch / "img", scratch / "work"

    assert_done(checkpoint(containers, cid, images, work, "--shell-job", "--exit"))
    assert term.wait(30) == 128 + signal.SIGKILL  # CRIU ended the shell after the dump
    assert plan_of(images)["shell_job"] is True

    dst_id = create(containers, "opt-shell-restored", "sh", tty=True)
    # the container asks for a terminal: without --tty the shim has no console socket to give
    line = refused(pyrunc(containers.containerd, "restore", dst_id, "--image-path",
                          str(images), "--work-path", str(scratch / "rwork0"), "--detach"))
    assert "cannot allocate tty if runc will detach without setting console socket" in line, line
    assert dst_id not in containers.ctr.tasks()

    proc = pyrunc(containers.containerd, "restore", dst_id, "--image-path", str(images),
                  "--work-path", str(scratch / "rwork"), "--detach", "--tty",
                  "--fifo-dir", str(containers.fifo_dir))
    assert proc.returncode == 0 and proc.stdout.strip().isdigit(), proc.stderr
    assert f"t attach {dst_id}" in proc.stderr
    attach = containers.pty("tasks", "attach", dst_id)
    attach.send("[ -t 0 ] && echo tty-$((6*7)); echo back-$X in $(pwd)\n")
    attach.expect("tty-42")  # its stdin is a terminal
    attach.expect("back-abc in /tmp")  # and it is the same shell
    attach.send("exit 3\n")
    assert attach.wait(30) == 3


# --- 4. file locks: --file-locks ---------------------------------------------------------------


def test_file_lock_held_across_checkpoint_and_restore(containers: Containers,
                                                      scratch: Path) -> None:
    src = containers.start("opt-flock", "/usr/bin/opt-flock", "hold", "/tmp/lk")
    inode = int(wait_output(src, r"^locked /tmp/lk inode (\d+)$").group(1))
    assert flock_holders(inode) == [src.pid]

    def try_lock(exec_id: str) -> str:
        proc = containers.exec(src.id, exec_id, "/usr/bin/opt-flock", "try", "/tmp/lk",
                               check=False)
        return proc.stdout.strip()

    assert try_lock("try1") == "held"
    images, work = scratch / "img", scratch / "work"

    line = refused(checkpoint(containers, src.id, images, work))
    assert "CRIU says: Some file locks are hold by dumping tasks! You can try --file-locks to " \
           "dump them." in line, line
    assert_running_untouched(containers, src)
    assert flock_holders(inode) == [src.pid]

    assert_done(checkpoint(containers, src.id, images, work, "--file-locks", "--exit"))
    containers.ctr.wait_status(src.id, TaskStatus.STOPPED)
    assert flock_holders(inode) == []  # the lock ended with the dumped process
    containers.ctr.delete_task(src.id)

    # restored into the same container: /tmp/lk is in its root filesystem
    dst = restore(containers, src.id, images, scratch / "rwork")
    assert dst.pid != src.pid
    assert flock_holders(inode) == [dst.pid]
    assert try_lock("try2") == "held"
    containers.ctr("tasks", "kill", "-s", "SIGUSR1", dst.id)
    wait_output(dst, r"^still holding$")


# --- 5. cgroups: --manage-cgroups-mode ---------------------------------------------------------

_YARD = r"cg: Preparing cgroups yard \(cgroups restore mode (0x[0-9a-f]+)\)"


def test_manage_cgroups_mode_reaches_criu(containers: Containers, scratch: Path) -> None:
    src = containers.start("opt-cg", "/usr/bin/counter", "50")
    wait_until(lambda: len(src.lines()) >= 3, message="the counter to count")
    config = containers.containerd.bundle(NAMESPACE, src.id) / "criu.conf"
    modes = ("soft", "full", "strict", "ignore")
    for mode in modes:
        images, work = scratch / f"img-{mode}", scratch / f"work-{mode}"
        assert_done(checkpoint(containers, src.id, images, work, "--manage-cgroups-mode", mode))
        assert plan_of(images)["manage_cgroups_mode"] == mode
        dump_log = work / "dump.log"
        # CRIU read the shim's configuration file (org.criu.config) ...
        assert log_lines(dump_log, rf"Parsing config file {re.escape(str(config))}$")
        # ... and with "ignore" collected no cgroup properties; the dump of the other modes
        # is the same (CRIU logs the mode only on restore)
        properties = log_lines(dump_log, r"cg: Dumping value .* from ")
        assert bool(properties) == (mode != "ignore"), (mode, len(properties))
    assert_running_untouched(containers, src)

    expected = {"soft": "0x4", "full": "0x8", "strict": "0x10"}  # CRIU's CG_MODE_* bits
    for mode in modes:
        images, work = scratch / f"img-{mode}", scratch / f"rwork-{mode}"
        cid = create(containers, f"opt-cg-{mode}", "/usr/bin/counter", "50")
        if mode == "strict":
            # runc creates the container's cgroups before CRIU runs; strict refuses them
            line = refused(pyrunc(containers.containerd, "restore", cid, "--image-path",
                                  str(images), "--work-path", str(work), "--detach"))
            assert "CRIU says: cg: Abort restore of existing cgroups" in line, line
            assert cid not in containers.ctr.tasks()
        else:
            dst = restore(containers, cid, images, work)
            wait_output(dst, r"(?:^\d+\n){3}")
            values = [int(x) for x in dst.lines()]
            assert values[0] > 1 and values == list(range(values[0], values[0] + len(values)))
        yard = [m[1] for m in map(re.compile(_YARD).search, log_lines(work / "restore.log", _YARD))
                if m]
        assert yard == ([] if mode == "ignore" else [expected[mode]]), (mode, yard)


# --- 6. the network namespace: --empty-ns network --------------------------------------------


def test_empty_ns_network_restores_into_a_fresh_namespace(
    containers: Containers, scratch: Path, hold_netns: Callable[[int], str]
) -> None:
    src = containers.start("opt-emptyns", "/usr/bin/counter", "50")
    wait_until(lambda: len(src.lines()) >= 3, message="the counter to count")
    source_ns = hold_netns(src.pid)
    assert source_ns != netns(os.getpid())
    images, work = scratch / "img", scratch / "work"

    assert_done(checkpoint(containers, src.id, images, work, "--empty-ns", "network", "--exit"))
    containers.ctr.wait_status(src.id, TaskStatus.STOPPED)
    assert plan_of(images)["empty_ns"] == ["network"]
    assert not list(images.glob("netns-*.img"))  # CRIU left the namespace out
    dumped = [int(x) for x in src.lines()]

    dst_id = create(containers, "opt-emptyns-restored", "/usr/bin/counter", "50")
    dst = restore(containers, dst_id, images, scratch / "rwork")

    assert netns(dst.pid) not in (source_ns, netns(os.getpid()))
    wait_until(lambda: len(dst.lines()) >= 5, message="the restored counter")
    values = [int(x) for x in dst.lines()]
    assert values == list(range(dumped[-1] + 1, dumped[-1] + 1 + len(values)))


# --- 7. --auto-dedup with a parent chain ---------------------------------------------------------


def test_auto_dedup_punches_rewritten_pages_out_of_the_parent(containers: Containers,
                                                              scratch: Path) -> None:
    version, features = criu_facts()
    if not features.mem_track:
        pytest.skip(
            f"CRIU {version} FEATURE_CHECK: mem_track=false on Linux {platform.release()} (no "
            "soft-dirty page tracking), so no pre-dump and no parent images for --auto-dedup "
            "to deduplicate")
    src = containers.start("opt-dedup", "/usr/bin/opt-dirty", "64")
    wait_output(src, r"^filled 64 MiB gen 1$")
    parent, images = scratch / "p1", scratch / "p2"

    assert_done(checkpoint(containers, src.id, parent, scratch / "w1", "--pre-dump"))
    assert_running_untouched(containers, src)
    before = blocks(parent, "pages-*.img")
    assert before >= 60 * MIB, before
    containers.ctr("tasks", "kill", "-s", "SIGUSR1", src.id)
    wait_output(src, r"^rewritten gen 2$")

    assert_done(checkpoint(containers, src.id, images, scratch / "w2", "--parent-path",
                           str(parent), "--auto-dedup", "--exit"))
    containers.ctr.wait_status(src.id, TaskStatus.STOPPED)
    after = blocks(parent, "pages-*.img")
    assert after < before // 4, (before, after)  # the rewritten pages were punched out
    assert blocks(images, "pages-*.img") >= 60 * MIB

    dst_id = create(containers, "opt-dedup-restored", "/usr/bin/opt-dirty", "64")
    dst = restore(containers, dst_id, images, scratch / "rwork")
    containers.ctr("tasks", "kill", "-s", "SIGUSR2", dst.id)
    wait_output(dst, r"^verify ok gen 2$", timeout=60)


# --- 8. lazy pages -----------------------------------------------------------------------------


def test_lazy_pages_restore_runs_while_the_source_serves(containers: Containers,
                                                         scratch: Path) -> None:
    src = containers.start("opt-lazy", "/usr/bin/memfill", "256", "7")
    wait_output(src, r"^filled 256 MiB$", timeout=60)
    server = f"127.0.0.1:{free_port()}"
    port = int(server.rsplit(":", 1)[1])
    images, work = scratch / "img", scratch / "work"

    assert_done(checkpoint(containers, src.id, images, work, "--lazy-pages",
                           "--page-server", server, "--exit"))
    # the images are ready without the memory: the source keeps it and serves it
    assert blocks(images, "pages-*.img") < 16 * MIB
    assert [t for t in tcp_sockets_on_port(port) if t.state == Tcp.LISTEN]

    dst_id = create(containers, "opt-lazy-restored", "/usr/bin/memfill", "256", "7")
    dst = restore(containers, dst_id, images, scratch / "rwork", "--lazy-pages",
                  "--page-server", server)
    serving = [t for t in tcp_sockets_on_port(port) if t.state == Tcp.ESTABLISHED]
    source = containers.ctr.task(src.id)
    assert serving, "the source's page server was gone when the restore returned"
    assert source is not None and source.status is not TaskStatus.STOPPED, source

    containers.ctr("tasks", "kill", "-s", "SIGUSR1", dst.id)
    wait_output(dst, r"^verify ok 256 MiB$", timeout=120)
    containers.ctr.wait_status(src.id, TaskStatus.STOPPED, timeout=60)
    wait_until(lambda: not [t for t in tcp_sockets_on_port(port)
                            if t.state in (Tcp.LISTEN, Tcp.ESTABLISHED)],
               10, message="the page server to close")
