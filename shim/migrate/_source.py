"""``pyrunc migrate``: the source side of a migration, through the source's containerd.

Strategy: one function, :func:`migrate`, in phases, each with its own way back:

1. **check** (nothing touched): the container is running on an overlay snapshot; this host's
   and the agent's facts (:func:`shim.migrate._checks.refusals`), the CPU (the agent runs
   ``criu cpuinfo check`` on this host's cpuinfo image), no container of that id there.
   Any reason -> :class:`Refused`.
2. **prepare** (the container runs on): the Migrate stream opens; the base image when the
   agent lacks its snapshot, the rootfs diff and the network record go; the agent prepares
   everything that does not depend on the frozen state (image, snapshot, rootfs, container
   record, the task that restores at Start, for stop-and-copy a ``criu page-server``) and
   answers Prepared. Way back: nothing to undo here; the agent rolls its side back when the
   stream ends without Commit.
3. **freeze, dump, restore** (the downtime): stop-and-copy pauses the task and dumps it with
   leave-running (it stays paused), its pages going straight to the destination's page
   server; lazy dumps with ``--lazy-pages`` and a page server on this host, and CRIU keeps
   the task frozen while it serves pages. Then what changed in the rootfs since the diff
   (:func:`_rootfs_changes`), the other CRIU images, End; the agent starts the task. Way
   back: resume the task (stop-and-copy) or end the dump and thaw it (lazy:
   :func:`_abort_lazy_dump`); the agent rolls back.
4. **commit**: the destination runs (downtime ends here); Commit; then the source goes
   (stop-and-copy: its links are deleted and its TCP sockets destroyed first, so that
   nothing reaches the peers, then it is killed) - for lazy only after its CRIU has served
   the last page (the task exits then). A destination that dies during post-copy is reported
   (:attr:`Outcome.POSTCOPY_FAILED`) with what the source had not yet sent.

The source's container record and snapshot are removed at the end unless ``keep_source``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import grpc

from shim.api.pyrunc.migrate.v1 import agent_pb2, agent_pb2_grpc
from shim.api.pyrunc.v1 import checkpoint_pb2
from shim.checkpoint.network import cut_off
from shim.typeurl import pack

from ._agent import PROVISIONAL
from ._checks import (
    HostFacts,
    Method,
    cpuinfo_dump,
    criu_config_refusal,
    criu_log_refusal,
    host_facts,
    refusals,
)
from ._containerd import Containerd, connect, ctr
from ._errors import ContainerdError, MigrateError, Refused, TransferFailed
from ._stats import (
    DumpStats,
    Outcome,
    Report,
    RestoreStats,
    StatsError,
    count_lazy_pages,
    parse_stats,
)
from ._tls import TlsFiles, channel, is_unix
from ._transfer import CHUNK, directory_size, tar_chunks, upper_dir

__all__ = ["MigrateOptions", "Progress", "migrate"]

PAGE: Final = 4096
DUMP_STATS: Final = "stats-dump"
_CTIME_SLACK: Final = 0.1
_NET_NS = "network"
NETWORK_LOCK: Final = "nftables"
"""How CRIU locks the container's network while it dumps and restores it: with nftables
(CRIU links libnftables and the kernel has set concatenation: both sides' pre-flight asks
``criu check --feature network_lock_nftables``, :attr:`HostFacts.nftables_lock`) instead of
its default,
iptables, whose unlock runs ``iptables-restore`` inside the frozen window: 54-63 ms at the
end of each of the dump and the restore against 7-15 ms (CRIU's logs, 512 MiB moves)."""


@dataclass(frozen=True, slots=True)
class MigrateOptions:
    """What ``pyrunc migrate`` was asked to do."""

    containerd: str
    namespace: str
    container_id: str
    to: str
    method: Method = Method.LAZY
    tcp_established: bool = False
    keep_source: bool = False
    tls: TlsFiles | None = None
    insecure_tcp: bool = False
    work_dir: str = "/var/lib/containerd-shim-pyrunc/migrate"
    criu: str = "criu"
    page_server_address: str = ""
    postcopy_timeout: float = 600.0
    # CRIU's page server without TLS although the agent is reached with mutual TLS (the
    # explicit opt-out of pyrunc migrate --plain-page-server: anyone who reaches it can
    # read or write the container's memory)
    plain_page_server: bool = False


@dataclass
class Progress:
    """Phase and bytes moved; ``show`` is called on every change (a terminal line);
    ``notice`` is given what the user must be told while the move goes on (an interrupt
    that cannot stop it)."""

    show: Callable[[Progress], None] = lambda _: None
    notice: Callable[[str], None] = lambda _: None
    phase: str = "check"
    sent: int = 0
    pages: int = 0
    started: float = field(default_factory=time.monotonic)
    phase_started: float = field(default_factory=time.monotonic)

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.phase_started = time.monotonic()
        self.show(self)

    @property
    def rate(self) -> float:
        """Bytes per second in this phase."""
        took = time.monotonic() - self.phase_started
        return self.sent / took if took > 0 else 0.0


def _us(seconds: float) -> int:
    return int(seconds * 1e6)


def _facts_of(reply: Any) -> HostFacts:
    f = reply.facts
    return HostFacts(kernel=f.kernel, machine=f.machine, criu_version=f.criu_version,
                     lazy_pages=f.lazy_pages, mem_dirty_track=f.mem_dirty_track,
                     pipe_max_size=f.pipe_max_size, free_bytes=f.free_bytes,
                     hostname=f.hostname,
                     nftables_lock=f.nftables_lock if f.HasField("nftables_lock") else None,
                     criu_tls=f.criu_tls if f.HasField("criu_tls") else None)


def _own_netns(spec: dict[str, Any]) -> bool:
    for ns in spec.get("linux", {}).get("namespaces", []):
        if ns.get("type") == _NET_NS:
            return not ns.get("path")
    return False


def _memory_bytes(pid: int) -> int:
    """The container's memory use (cgroup v1 memory controller of ``pid``), 0 if unknown."""
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(","):
                with open(f"/sys/fs/cgroup/memory{path}/memory.usage_in_bytes") as u:
                    return int(u.read())
    return 0


def _page_server_host(opts: MigrateOptions) -> str:
    """The address of this host the destination reaches: given, or the local end of a route
    to the agent (loopback for a local agent)."""
    if opts.page_server_address:
        return opts.page_server_address
    if is_unix(opts.to):
        return "127.0.0.1"
    host = opts.to.rsplit(":", 1)[0].strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))
        return str(s.getsockname()[0])


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError), \
                    open(f"/proc/{name}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(name))
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _freezer_state_file(pid: int) -> str | None:
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "freezer" in controllers.split(","):
                return f"/sys/fs/cgroup/freezer{path}/freezer.state"
    return None


def _abort_lazy_dump(cid: str) -> None:
    """End the lazy dump of ``cid`` (CRIU serving its pages): runc and its CRIU are killed.
    CRIU killed before the destination ran leaves the task as it was, only frozen (the
    caller resumes it)."""
    for p in _lazy_dumps(cid):
        for child in _children(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _set_freezer(pid: int, state: str) -> None:
    """Put ``pid``'s v1 freezer cgroup in ``state`` (FROZEN or THAWED) and wait until it is
    there (at most 10 s; quiet if there is no such cgroup)."""
    path = _freezer_state_file(pid)
    if path is None:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with open(path) as f:
                if f.read().strip() == state:
                    return
            with open(path, "w") as f:
                f.write(state)
        time.sleep(0.01)


def _resume(cd: Containerd, cid: str, pid: int) -> None:
    """Resume the source, paused before its dump. Once CRIU has let go of the tasks (a lazy
    dump whose transfer failed, or that was killed) the cgroup may be thawed already while
    the source's shim still holds it paused, and runc refuses to resume a container that is
    not frozen (measured: "container not paused"); so it is frozen again first, and thawed
    by the resume, which the shim then records. The freezer is thawed directly as a last
    resort."""
    t = cd.task(cid)
    if t is not None and t.status == "PAUSED":
        _set_freezer(pid, "FROZEN")
        with contextlib.suppress(ContainerdError):
            cd.resume(cid)
    _set_freezer(pid, "THAWED")


def _run_nft(argv: list[str], rules: str = "") -> str:
    """Run an nft command (``argv`` from shim.checkpoint.network); "" or what went wrong."""
    from shim.checkpoint.network import nft_path

    try:
        proc = subprocess.run(argv, input=rules.encode(), capture_output=True, timeout=30,
                              check=False, env={**os.environ, "PATH": nft_path()})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc) or type(exc).__name__
    if proc.returncode != 0:
        return proc.stderr.decode(errors="replace").strip() or f"exit {proc.returncode}"
    return ""


CRIU_LOCKED: Final = "net: Lock network"
CRIU_UNLOCKED: Final = "net: Unlock network"


class _SourceTcpLock:
    """Drop the TCP input of ``pid``'s network namespace (the table the destination's
    rebuild uses, :data:`shim.checkpoint.network.TCP_LOCK_TABLE`) before CRIU lifts its own
    lock at the end of a dump that leaves the tasks alive, and about when CRIU takes it: a
    thread follows CRIU's dump log (``dump_log``) and commits its rules once CRIU wrote
    :data:`CRIU_LOCKED`, which CRIU logs (info level) just before it applies its own lock
    (criu/net.c), so the two land within a few milliseconds of each other. The log must be
    where runc names it, at info level: the pre-flight refuses a CRIU configuration that
    moves or quiets it (:func:`shim.migrate._checks.criu_log_refusal`). A peer's segment
    that reaches the paused source before the locks is acknowledged and queued, and dumped
    with the socket (a lock taken at the pause cost a lockstep client its retransmission
    back-off, 0.5-0.8 s more gap than downtime); one after them is dropped and sent again,
    and reaches the destination. The lock is known to have been in time when the log did
    not say :data:`CRIU_UNLOCKED` yet once it was in place; :attr:`problem` says why it
    failed or came late (then the move is undone: the paused source may have taken data the
    dump lacks)."""

    def __init__(self, pid: int, dump_log: Path) -> None:
        self.pid = pid
        self.dump_log = dump_log
        self.problem = ""
        self.locked = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="source-tcp-lock", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        """The dump has returned (or the move is undone): stop following its log;
        :attr:`locked` and :attr:`problem` are final."""
        self._done.set()
        if self._thread.ident is not None:
            self._thread.join()

    def _run(self) -> None:
        from shim.checkpoint.network import nft_path, tcp_lock_rules

        # nft is started at once and waits for its rules on stdin: once CRIU has locked,
        # only their commit is left (~2 ms, not a process start's ~10 ms)
        argv = ["nsenter", f"--net=/proc/{self.pid}/ns/net", "nft", "-f", "-"]
        try:
            nft = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, env={**os.environ,
                                                                "PATH": nft_path()})
        except OSError as exc:
            self.problem = f"nft: {exc}"
            return
        log = _Tail(self.dump_log)
        try:
            while CRIU_LOCKED not in log.read():
                if self._done.is_set():
                    if CRIU_LOCKED not in log.read():
                        self.problem = (f"CRIU's dump log {self.dump_log} never said "
                                        f"{CRIU_LOCKED!r}: cannot tell when to lock")
                        return
                    break
                time.sleep(0.002)
            _, err = nft.communicate(tcp_lock_rules().encode(), timeout=30)
        except subprocess.TimeoutExpired:
            self.problem = "nft did not finish in 30 s"
            return
        finally:
            if nft.poll() is None:
                nft.kill()
                nft.communicate()
        if nft.returncode != 0:
            self.problem = err.decode(errors="replace").strip() or f"nft exit {nft.returncode}"
            return
        self.locked = True
        if CRIU_UNLOCKED in log.read():
            self.problem = "CRIU had unlocked the network before the lock was in place"

    def undo(self) -> str:
        """Delete the lock again (the source is put back); "" or what went wrong."""
        from shim.checkpoint.network import tcp_unlock_argv

        problem = _run_nft(tcp_unlock_argv(self.pid))
        self.locked = bool(problem)
        return problem


class _Tail:
    """A growing text file read as it grows (all of it so far on each :meth:`read`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._text = ""
        self._offset = 0

    def read(self) -> str:
        with contextlib.suppress(OSError), open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
            self._offset += len(data)
            self._text += data.decode(errors="replace")
        return self._text


def _lazy_dump_stats(images: Path, measured_us: int) -> DumpStats:
    """Statistics of a lazy dump. CRIU 4.2 writes none that can be used for it (measured:
    every counter 0, ``frozen_time`` holding a clock value), so ``pages_lazy`` is counted from
    the page maps (entries flagged lazy) and ``frozen_time`` is the freeze this side measured
    (source frozen until its last page was served)."""
    lazy = 0
    for pagemap in images.glob("pagemap-*.img"):
        with contextlib.suppress(OSError, StatsError):
            lazy += count_lazy_pages(pagemap.read_bytes())
    return DumpStats(frozen_time=measured_us, pages_lazy=lazy)


def _dump_stats(work: Path) -> DumpStats | None:
    try:
        dump, _ = parse_stats((work / DUMP_STATS).read_bytes())
    except (OSError, StatsError):
        return None
    return dump


class _Stream:
    """The request side of the Migrate stream: this thread puts requests, grpc's thread takes
    them (a bounded queue: at most a few chunks in flight). A put fails, instead of blocking,
    once the call has ended (the agent failed or went)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.sent = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=8)
        self._ended = threading.Event()

    def __iter__(self) -> Iterator[Any]:
        while not self._ended.is_set():
            try:
                request = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if request is None:
                return
            yield request

    def watch(self, call: Any) -> None:
        call.add_done_callback(lambda _: self._ended.set())

    def put(self, request: Any) -> None:
        while True:
            if self._ended.is_set():
                raise _CallEnded
            with contextlib.suppress(queue.Full):
                self._queue.put(request, timeout=0.2)
                return

    def send(self, part: Any, chunks: Iterator[bytes]) -> None:
        """One part, chunk by chunk."""
        for data in chunks:
            for i in range(0, len(data), CHUNK):
                piece = data[i:i + CHUNK]
                self.put(agent_pb2.MigrateRequest(chunk=agent_pb2.Chunk(part=part, data=piece)))
                self.sent += len(piece)
                self.progress.sent = self.sent
                self.progress.show(self.progress)

    def close(self) -> None:
        """No more requests (the stream's end: the agent sees it after what was put)."""
        with contextlib.suppress(_CallEnded):
            self.put(None)


class _CallEnded(Exception):
    """The Migrate call ended while the source still had requests to send."""


def _reply(call: Any, kind: str) -> Any:
    """The next reply of ``kind`` (progress replies skipped).

    Raises:
        grpc.RpcError: the call failed.
        MigrateError: the stream ended without one (the caller puts the source back).
    """
    for reply in call:
        if reply.WhichOneof("kind") == kind:
            return getattr(reply, kind)
    raise MigrateError(f"the agent ended the stream without {kind}")


def _inodes(directory: str) -> dict[str, int]:
    """Every path under ``directory`` (relative, "." for itself) and its inode number."""
    found = {".": os.lstat(directory).st_ino}
    for root, dirs, files in os.walk(directory):
        for name in (*dirs, *files):
            path = os.path.join(root, name)
            with contextlib.suppress(FileNotFoundError):
                found[os.path.relpath(path, directory)] = os.lstat(path).st_ino
    return found


def _rootfs_changes(directory: str, before: dict[str, int], since: float
                    ) -> tuple[dict[str, list[str]], list[str]] | None:
    """What changed under ``directory`` at or after ``since`` (wall clock, seconds), when
    ``before`` (:func:`_inodes`) was taken just before the first diff; None if nothing.

    Returns the names every changed directory holds now (the destination removes the others
    there: entries removed after the diff) and the paths to send again. Judged by ctime: a
    write, a new entry, a chmod, an xattr change a file's ctime; a removal, a new entry or a
    rename its directory's; no one sets a ctime by hand. The kernel stamps ctime from a
    clock that may lag by a tick, hence the margin (a change just before ``since`` is sent
    twice). A directory that is not the one that was there (a new inode: made, or moved in,
    after the diff) goes again whole, children included, whatever their ctime. Measured:
    CRIU's dump itself makes a temporary directory in the container's /tmp (so /tmp and the
    root change on every dump), which is why this sends only what changed."""
    limit = since - _CTIME_SLACK
    kept: dict[str, list[str]] = {}
    paths: list[str] = []
    whole: list[str] = []  # new directories: everything under them goes
    for root, dirs, files in os.walk(directory):
        rel_root = os.path.relpath(root, directory)
        dirs.sort()
        if any(rel_root == w or rel_root.startswith(w + "/") for w in whole):
            paths.extend(os.path.join(rel_root, n) for n in (*dirs, *files))
            continue
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(root)
            if st.st_ctime >= limit or before.get(rel_root) != st.st_ino:
                kept[rel_root] = sorted((*dirs, *files))
                if rel_root != ".":
                    paths.append(rel_root)
                if before.get(rel_root) != st.st_ino and rel_root != ".":
                    whole.append(rel_root)
                    paths.extend(os.path.join(rel_root, n) for n in (*dirs, *files))
                    continue
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        for name in (*files, *links):
            rel = os.path.join(rel_root, name) if rel_root != "." else name
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(os.path.join(root, name))
                if st.st_ctime >= limit or before.get(rel) != st.st_ino:
                    paths.append(rel)
    if not kept and not paths:
        return None
    return kept, paths


def _image_export(address: str, namespace: str, image: str) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        with tempfile.TemporaryFile() as f:
            proc = ctr(address, namespace, "images", "export", "-", image, stdout=f)
            if proc.returncode != 0:
                raise MigrateError(f"ctr images export {image} failed: "
                                   f"{proc.stderr.decode(errors='replace').strip()}")
            f.seek(0)
            while data := f.read(CHUNK):
                yield data
    return chunks


_TERMINATING: Final = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _handled(signals: tuple[signal.Signals, ...],
             handler: Callable[[int, object], None]) -> Iterator[None]:
    """``handler`` for ``signals`` while this lasts, the handlers before put back at the end.
    Off the main thread (where Python cannot set handlers) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, before in old.items():
            signal.signal(s, before if before is not None else signal.SIG_DFL)


def _terminate_as_interrupt() -> contextlib.AbstractContextManager[None]:
    """SIGTERM and SIGHUP (``timeout``, a CI's kill, a closed terminal) raise
    KeyboardInterrupt while this lasts, as Ctrl-C does, so that a move stopped in the frozen
    window takes its way back (the source resumed and unlocked) instead of dying with the
    source paused. The first one only: further ones are ignored so that they cannot cut the
    way back short."""

    def interrupt(signum: int, _frame: object) -> None:
        for s in _TERMINATING:
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    return _handled(_TERMINATING, interrupt)


def migrate(opts: MigrateOptions, progress: Progress | None = None) -> Report:
    """Move ``opts.container_id`` to the agent at ``opts.to``. SIGTERM and SIGHUP interrupt
    it as Ctrl-C does (KeyboardInterrupt, after the way back: :func:`_terminate_as_interrupt`),
    except once committed: in a lazy move's post-copy the first interrupt is told to
    ``progress.notice`` and the move goes on, a second one leaves
    (:func:`_postcopy_through_interrupts`).

    Returns:
        The report (outcome MIGRATED, KEPT_SOURCE or POSTCOPY_FAILED).
    Raises:
        Refused: a check failed; nothing was touched.
        TransferFailed: the move failed before the destination ran; the source runs on.
        MigrateError: anything else, with where the container is.
    """
    with _terminate_as_interrupt():
        return _migrate(opts, progress)


def _migrate(opts: MigrateOptions, progress: Progress | None) -> Report:
    prog = progress or Progress()
    t0 = time.monotonic()
    cid = opts.container_id
    if opts.method is Method.LAZY and opts.keep_source:
        raise Refused("--keep-source does not go with --method lazy: the lazy dump ends the "
                      "source task when the last page is served")
    with connect(opts.containerd, opts.namespace) as cd, \
            contextlib.closing(channel(opts.to, opts.tls, insecure_tcp=opts.insecure_tcp)) as ch:
        agent = agent_pb2_grpc.AgentStub(ch)
        record = cd.container(cid)
        task = cd.task(cid)
        if task is None or task.status != "RUNNING":
            raise Refused(f"container {cid} has no running task "
                          f"({task.status if task else 'no task'})")
        spec = json.loads(record.spec.value) if record.HasField("spec") else {}
        if own_config := criu_config_refusal(spec.get("annotations") or {}):
            # before the agent is asked anything: nothing of the move can go
            raise Refused(f"refused, nothing touched: {own_config}")
        parent = cd.snapshot_parent(record.snapshotter, record.snapshot_key)
        upper = upper_dir(cd.mounts(record.snapshotter, record.snapshot_key))
        needed = directory_size(upper)
        if opts.method is not Method.LAZY:
            needed += _memory_bytes(task.pid)
        local = host_facts(opts.criu, opts.work_dir)
        try:
            probe = agent.Probe(agent_pb2.ProbeRequest(
                cpuinfo=cpuinfo_dump(opts.criu), snapshotter=record.snapshotter,
                parent_snapshot=parent, namespace=opts.namespace, container_id=cid,
                bytes_needed=needed), timeout=120)
        except grpc.RpcError as exc:
            raise Refused(f"agent {opts.to}: {exc.code().name}: {exc.details()}") from None
        reasons = refusals(local, _facts_of(probe), opts.method, needed,
                           page_server_tls=_page_server_tls(opts))
        if probe.cpu_problem:
            reasons.append(probe.cpu_problem)
        if probe.container_exists:
            reasons.append(f"the destination already has a container {cid}")
        if needs := _dump_log_needs(opts, spec):
            from shim.checkpoint.runner import RUNC_DEFAULT_CRIU_CONFIG

            with contextlib.suppress(OSError):
                config = Path(RUNC_DEFAULT_CRIU_CONFIG).read_text(errors="replace")
                if why := criu_log_refusal(config, needs):
                    reasons.append(f"{why} ({RUNC_DEFAULT_CRIU_CONFIG})")
        if opts.method is Method.PRE_COPY and not reasons:
            reasons.append("pre-copy rounds are not implemented; use --method lazy")
        if reasons:
            raise Refused("refused, nothing touched: " + "; ".join(reasons))

        os.makedirs(opts.work_dir, mode=0o700, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f"{cid}-", dir=opts.work_dir))
        try:
            return _move(opts, cd, agent, record, task.pid, spec, parent, upper,
                         probe.has_parent_snapshot, stage, prog, t0)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _page_server_tls(opts: MigrateOptions) -> bool:
    """CRIU's page-server connection uses TLS: whenever the agent is reached over TCP with
    mutual TLS (the same certificates; not over a unix socket, not with --insecure-tcp),
    unless ``plain_page_server`` opts out."""
    return opts.tls is not None and not is_unix(opts.to) and not opts.plain_page_server


TLS_DONE: Final = "TLS handshake completed"  # CRIU's tls.c, info level


#: What CRIU's tls.c logs when the peer's certificate fails the check that follows the
#: handshake (so "handshake completed" alone does not mean a verified peer).
_TLS_PEER_REFUSED: Final = ("Invalid certificate", "Unable to verify TLS peer")


def _tls_seen(work: Path) -> bool:
    """The source's CRIU says (its dump log) that it completed a TLS handshake with the
    page server's peer and did not then refuse the peer's certificate."""
    try:
        text = (work / "dump.log").read_text(errors="replace")
    except OSError:
        return False
    done = text.rfind(TLS_DONE)
    return done >= 0 and not any(bad in text[done:] for bad in _TLS_PEER_REFUSED)


def _dump_log_needs(opts: MigrateOptions, spec: dict[str, Any]) -> str:
    """What this move reads CRIU's dump log for ("" = nothing): a lazy move its verdict on
    the transfer, a stop-and-copy of TCP connections when to lock (:class:`_SourceTcpLock`)."""
    if opts.method is Method.LAZY:
        return "its verdict on the lazy transfer"
    if opts.tcp_established and _own_netns(spec):
        return f"when to lock the source's TCP input ({CRIU_LOCKED!r})"
    return ""


def _network_record(pid: int) -> bytes | None:
    """The container's network as the shim's dump records it (the same functions:
    :func:`shim.checkpoint.netrestore.record`), taken now, before the freeze, so that the
    destination can create the task in advance; None when it cannot be taken (the
    destination then creates the task after the dump). Marked moving
    (:func:`_moving_record`)."""
    from shim.checkpoint.network import dump_snapshot, loopback_snapshot, take_snapshot

    try:
        if (loopback := loopback_snapshot(pid)) is not None:
            return dump_snapshot(loopback)
        return dump_snapshot(replace(take_snapshot(pid), moving=True))
    except (OSError, ValueError, struct.error):
        return None


def _moving_record(images: Path) -> None:
    """Mark the network record the dump wrote beside the images moving, as the early one
    is: the destination must neither ask who holds the addresses (this container does, until
    it is frozen: the restore failed with "already in use") nor wait for answers, whichever
    record it restores from (:attr:`shim.checkpoint.network.NetworkSnapshot.moving`)."""
    from shim.checkpoint.network import SNAPSHOT, as_moving

    with contextlib.suppress(FileNotFoundError):
        record = images / SNAPSHOT
        record.write_bytes(as_moving(record.read_bytes()))


def _announce_again(network: bytes, pid: int) -> None:
    """Announce the source's addresses from its namespace once it runs again: the
    destination's rebuild may have announced them there, and bridges would send the
    container's frames to the destination until the source sends one itself."""
    from shim.checkpoint import network as net
    from shim.checkpoint import rtnl
    from shim.errors import ShimError

    with contextlib.suppress(OSError, ValueError, ShimError):
        snap = net.load_snapshot(network)
        with rtnl.in_netns(f"/proc/{pid}/ns/net"):
            net.announce(snap)


def _agent_host(opts: MigrateOptions) -> str:
    """The address the destination's page server listens on: the agent's, as dialled."""
    if is_unix(opts.to):
        return "127.0.0.1"
    return opts.to.rsplit(":", 1)[0].strip("[]")


class _Clock:
    """Phase timings: each :meth:`lap` ends a phase (name, microseconds since the last)."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, int]] = []
        self._last = time.monotonic()

    def lap(self, name: str) -> float:
        now = time.monotonic()
        self.phases.append((name, _us(now - self._last)))
        self._last = now
        return now

    def add(self, prefix: str, phases: Any) -> None:
        """The agent's own phases (a map name -> us), as they came."""
        self.phases.extend((f"{prefix}{name}", int(us)) for name, us in phases.items())


def _move(opts: MigrateOptions, cd: Containerd, agent: Any, record: Any, pid: int,
          spec: dict[str, Any], parent: str, upper: str, has_parent: bool, stage: Path,
          prog: Progress, t0: float) -> Report:
    """Phase 2-4 of :func:`migrate`. Before the freeze: the stream opens, the image (if
    needed) and the rootfs diff go, the agent prepares (image, snapshot, rootfs, record; for
    stop-and-copy a ``criu page-server``). Frozen: the dump (stop-and-copy: its pages go
    straight to the destination's page server), the rootfs again if it changed after the
    diff, the CRIU images, the restore."""
    cid = opts.container_id
    lazy = opts.method is Method.LAZY
    images, work = stage / "images", stage / "work"
    clock = _Clock()
    begin = agent_pb2.Begin(
        namespace=opts.namespace, container_id=cid, image=record.image,
        labels=dict(record.labels), runtime=record.runtime.name, spec=record.spec,
        snapshotter=record.snapshotter, snapshot_key=record.snapshot_key,
        parent_snapshot=parent,
        method=agent_pb2.LAZY if lazy else agent_pb2.STOP_AND_COPY,
        tcp_established=opts.tcp_established, page_server_tls=_page_server_tls(opts))
    if record.runtime.HasField("options"):
        begin.runtime_options.CopyFrom(record.runtime.options)
    page_server = ""
    if lazy:
        host = _page_server_host(opts)
        page_server = begin.page_server = f"{host}:{_free_port(host)}"
    stream = _Stream(prog)
    call = agent.Migrate(iter(stream))
    stream.watch(call)

    def failed(exc: BaseException) -> str:
        if isinstance(exc, grpc.RpcError):
            return f"{exc.code().name}: {exc.details()}"
        if isinstance(exc, _CallEnded):
            code = call.code()
            return f"{code.name if code else 'ended'}: {call.details()}"
        return str(exc)

    # -- before the freeze: nothing here touches the container ---------------------------
    prog.enter("prepare")
    try:
        stream.put(agent_pb2.MigrateRequest(begin=begin))
        if not has_parent:
            stream.send(agent_pb2.IMAGE,
                        _image_export(cd.address, opts.namespace, record.image)())
        diff_taken = time.time()
        before = _inodes(upper)
        stream.send(agent_pb2.ROOTFS_DIFF, tar_chunks(upper))
        clock.lap("send-rootfs")
        network = _network_record(pid) if _own_netns(spec) else b""
        if network is not None and network:
            stream.send(agent_pb2.NETWORK, iter([network]))
        clock.lap("network-record")
        stream.put(agent_pb2.MigrateRequest(prepare=agent_pb2.Prepare(
            page_server_host="" if lazy else _agent_host(opts),
            create_task=network is not None)))
        prepared = _reply(call, "prepared")
    except (grpc.RpcError, _CallEnded, MigrateError) as exc:
        call.cancel()
        stream.close()
        t = cd.task(cid)
        raise TransferFailed(
            f"migration of {cid} failed before the freeze: destination {opts.to}: "
            f"{failed(exc)}; the source runs on ({t.status if t else 'no task!'}), untouched, "
            "the destination was rolled back") from None
    except BaseException:
        call.cancel()
        stream.close()
        raise
    clock.add("agent:", prepared.phases_us)
    clock.lap("prepare-wait")
    if not lazy:
        page_server = prepared.page_server
    # Both methods leave the tasks alive (paused): what becomes of the source is decided
    # here, not by CRIU. A lazy dump that ends them once its transfer is over cannot tell a
    # finished transfer from a destination whose restore failed: the destination's
    # `criu lazy-pages` sends its close to the page server whatever happened, and CRIU then
    # ended the source of a move that had failed (the container lost).
    options = checkpoint_pb2.CheckpointOptions(
        exit=False, open_tcp=opts.tcp_established, image_path=str(images), work_path=str(work),
        empty_namespaces=[_NET_NS] if _own_netns(spec) else [], lazy_pages=lazy,
        page_server=page_server, network_lock=NETWORK_LOCK)
    if _page_server_tls(opts) and opts.tls is not None:
        # TLS on the page server's connection, with this side's certificate: the source's
        # CRIU is the server of a lazy move (which would check its own address in the
        # destination's certificate: not checked) and dials the agent's address in a
        # stop-and-copy one (the agent's certificate names it: gRPC checked that already)
        files = opts.tls.absolute()
        options.tls_cacert, options.tls_cert, options.tls_key = files.ca, files.cert, files.key
        options.tls_no_cn_verify = lazy

    # CRIU unlocks the network at the end of a dump that leaves the tasks alive (a lazy one
    # before it serves any page), and then the paused source's kernel would take
    # (acknowledge) TCP data its peers send until the destination's rebuild moves their
    # path: data the dumped sockets never had, lost. So the source's TCP input is dropped
    # here, from within CRIU's lock until the source is cut off after the commit (lazy:
    # after post-copy), or undone when the source is put back.
    source_lock = (_SourceTcpLock(pid, work / "dump.log") if opts.tcp_established and
                   _own_netns(spec) else None)

    def put_back() -> str:
        """The source runs on: resumed (paused before the dump, both methods), its TCP input
        taken again (the lock undone), its addresses announced (the destination's rebuild
        may have announced them there). "" or what went wrong, for the report."""
        problem = ""
        if source_lock is not None:
            source_lock.finish()
            if source_lock.locked and (failed := source_lock.undo()):
                problem = f"; unlocking the source's TCP input failed ({failed}): it drops TCP"
        _resume(cd, cid, pid)
        if network:
            _announce_again(network, pid)
        return problem

    def back(reason: str) -> TransferFailed:
        """Undo the freeze; the source runs on."""
        call.cancel()
        stream.close()
        if lazy:
            _abort_lazy_dump(cid)
        reason += put_back()
        t = cd.task(cid)
        where = f"the source runs on ({t.status if t else 'no task!'})"
        return TransferFailed(f"migration of {cid} failed: {reason}; {where}, the destination "
                              "was rolled back")

    # -- frozen: the downtime runs from here until the destination runs ------------------
    prog.enter("freeze+dump")
    t_freeze = clock.lap("ready")
    restored = None
    commit_sent = interrupted = False
    try:
        # Paused first, by both methods: CRIU then finds the cgroup frozen and dumps at
        # once (freezing it itself, CRIU polls the v1 freezer every 100 ms and so waits at
        # least that long), and the shim's network record is of a container that no longer
        # runs.
        cd.pause(cid)
        clock.lap("frozen:pause")
        if source_lock is not None:
            source_lock.start()  # locks the source's TCP input within CRIU's lock
        try:
            cd.checkpoint(cid, pack(options))
        except ContainerdError as exc:
            if source_lock is not None:
                source_lock.finish()
            raise back(f"the dump failed: {exc}") from None
        if source_lock is not None:
            source_lock.finish()
            if source_lock.problem:
                raise back(f"locking the source's TCP input: {source_lock.problem}")
        t_dumped = clock.lap("frozen:dump")
        dump = _lazy_dump_stats(images, 0) if lazy else _dump_stats(work)
        if dump is not None:
            prog.pages = dump.pages_written
        prog.enter("transfer")
        redo = _rootfs_changes(upper, before, diff_taken)
        if redo is not None:
            # written after the diff was taken: what changed goes again, frozen
            kept, paths = redo
            stream.send(agent_pb2.ROOTFS_KEEP, iter([json.dumps(kept).encode()]))
            if paths:
                stream.send(agent_pb2.ROOTFS_REDO, tar_chunks(upper, paths))
            clock.lap("frozen:send-rootfs-changes")
        _moving_record(images)
        stream.send(agent_pb2.CRIU_IMAGES, tar_chunks(str(images)))
        stream.put(agent_pb2.MigrateRequest(end=agent_pb2.End()))
        clock.lap("frozen:send-images")
        restored = _reply(call, "restored")
        t_running = time.monotonic()  # the task runs there: the downtime ends
        clock.add("frozen:agent:", restored.phases_us)
        clock.lap("after-restore")
        prog.enter("commit")
        commit_sent = True
        stream.put(agent_pb2.MigrateRequest(commit=agent_pb2.Commit()))
        stream.close()
        for _ in call:  # the agent ends the stream once it has the commit
            pass
    except TransferFailed:
        raise
    except (grpc.RpcError, _CallEnded, MigrateError) as exc:
        if restored is None:
            raise back(f"destination {opts.to}: {failed(exc)}") from None
        # restored but the commit was not confirmed: did it arrive? (the agent rolls back
        # without it; with it the destination's copy is the container, and putting the
        # source back would run two)
        there = _committed(agent, opts) if commit_sent else "not committed"
        if there != "committed":
            raise back(f"destination {opts.to} ran the container but did not confirm the "
                       f"commit ({failed(exc)}; there: {there})") from None
    except KeyboardInterrupt:
        # interrupted: the agent rolls back without a commit. Once it was sent, it may have
        # arrived: then the destination's copy is the container, and putting the source
        # back would run two; the move goes on as after an interrupt in post-copy
        if restored is None or not commit_sent or _committed(agent, opts) != "committed":
            back("interrupted")
            raise
        interrupted = True
    except BaseException:
        back("interrupted")
        raise
    clock.lap("commit")
    downtime = _us(t_running - t_freeze)
    outcome = Outcome.KEPT_SOURCE if opts.keep_source else Outcome.MIGRATED
    message = ""
    postcopy_us = 0
    if lazy:
        prog.enter("post-copy")
        dump, outcome, message = _postcopy_through_interrupts(
            opts, agent, work, dump, outcome, pid, prog, put_back, interrupted)
        postcopy_us = _us(time.monotonic() - t_running)
        dump = _lazy_dump_stats(images, _us(time.monotonic() - t_freeze))
        clock.lap("post-copy")
        if outcome is Outcome.POSTCOPY_FAILED and _alive(pid):
            # the source resumed (it is the container), or CRIU still serves pages and
            # it waits, frozen (the message says what to do): nothing to clean here
            return Report(
                container_id=cid, method=opts.method.value, outcome=outcome, dump=dump,
                restore=_restore_stats(restored), checkpoint_us=_us(t_dumped - t_freeze),
                restore_us=int(restored.restore_us), downtime_us=downtime,
                transfer_bytes=stream.sent, postcopy_complete_us=postcopy_us,
                total_us=_us(time.monotonic() - t0), message=message,
                phases=tuple(clock.phases), page_server_tls=_tls_seen(work))
    elif interrupted:
        prog.notice(f"interrupted, but the move is committed: {cid} runs on {opts.to}; "
                    "removing the source")
    cut_off(pid)  # before it goes: it cannot reset the moved connections
    prog.enter("cleanup")
    cd.remove_task(cid)
    if not opts.keep_source:
        with contextlib.suppress(ContainerdError):
            cd.delete_container(cid)
        with contextlib.suppress(ContainerdError):
            cd.remove_snapshot(record.snapshotter, record.snapshot_key)
    clock.lap("cleanup")
    prog.enter("done")
    # what went outside the stream: lazy pages, or the pages the dump wrote to the page server
    pages = (dump.pages_lazy if lazy else dump.pages_written) if dump else 0
    transfer = stream.sent + (pages * PAGE if lazy or page_server else 0)
    return Report(
        container_id=cid, method=opts.method.value, outcome=outcome, dump=dump,
        restore=_restore_stats(restored),
        checkpoint_us=_us(t_dumped - t_freeze), restore_us=int(restored.restore_us),
        downtime_us=downtime, transfer_bytes=transfer, postcopy_complete_us=postcopy_us,
        total_us=_us(time.monotonic() - t0), message=message, phases=tuple(clock.phases),
        page_server_tls=_tls_seen(work))


def _committed(agent: Any, opts: MigrateOptions, wait: float = 60.0) -> str:
    """After a Commit whose confirmation was lost: ask the agent what became of the
    container there: ``"committed"`` (it runs there, no migration of it pending), ``"rolled
    back"`` (nothing there), that it is there but not running, or why it cannot be told
    within ``wait`` seconds (the agent unreachable, or the migration still pending: the
    agent rolls it back when the stream's end reaches it, or when it starts again)."""
    request = agent_pb2.StatusRequest(namespace=opts.namespace, container_id=opts.container_id)
    deadline = time.monotonic() + wait
    why = "no answer"
    while True:
        try:
            status = agent.Status(request, timeout=max(1.0, deadline - time.monotonic())).status
        except grpc.RpcError as exc:
            why = f"unknown: {exc.code().name} asking the agent"
        else:
            if status == PROVISIONAL:
                why = "unknown: still pending there"
            elif status == "RUNNING":
                return "committed"
            elif status:  # committed, but not running: the source is the copy to keep
                return f"committed, but its task is {status}"
            else:
                return "rolled back"
        if time.monotonic() >= deadline:
            return why
        time.sleep(0.2)


def _lazy_dumps(cid: str) -> list[int]:
    """Pids of the runc ``checkpoint --lazy-pages`` of ``cid`` (it ends with the transfer)."""
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            argv = _cmdline(int(p))
            if "checkpoint" in argv and "--lazy-pages" in argv and argv[-1] == cid:
                found.append(int(p))
    return found


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _interrupts_again() -> contextlib.AbstractContextManager[None]:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt again while this lasts (after
    :func:`_terminate_as_interrupt` took the first one and ignores the others)."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    return _handled((signal.SIGINT, *_TERMINATING), interrupt)


def _postcopy_through_interrupts(opts: MigrateOptions, agent: Any, work: Path,
                                 dump: DumpStats | None, outcome: Outcome, pid: int,
                                 prog: Progress, put_back: Callable[[], str],
                                 interrupted: bool = False
                                 ) -> tuple[DumpStats | None, Outcome, str]:
    """:func:`_finish_postcopy`, through an interrupt. The move is committed by now: the
    destination runs and takes the pages it lacks from the source's CRIU, while the source
    waits, frozen, whole. So a first interrupt (Ctrl-C,
    SIGTERM, SIGHUP) does not stop the move: the command says so and goes on waiting, and
    the source is removed as at any completion. A second one leaves at once, after saying
    exactly what is left on this host and how to remove it. ``interrupted``: the first one
    came while the destination was confirming the commit."""
    try:
        if not interrupted:
            return _finish_postcopy(opts, agent, work, dump, outcome, pid, put_back)
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        prog.notice(
            f"interrupted, but the move is committed: {opts.container_id} runs on {opts.to} "
            "and takes the pages it still lacks from this host's CRIU; waiting for that to "
            "end, then the source is removed (interrupt again to leave now and remove it "
            "yourself)")
    with _interrupts_again():
        try:
            return _finish_postcopy(opts, agent, work, dump, outcome, pid, put_back)
        except KeyboardInterrupt:
            prog.notice(_left_behind(opts, pid, work))
            raise


def _left_behind(opts: MigrateOptions, pid: int, work: Path) -> str:
    """What a lazy move left on the source when it was interrupted in post-copy, and how to
    settle it (the source's CRIU log, the only place that says whether every page was
    served, is kept: the staging directory goes when the command ends)."""
    cid = opts.container_id
    if serving := _lazy_dumps(cid):
        return (f"left now: the source task of {cid} stays PAUSED, holding all its memory, "
                f"while its CRIU (runc checkpoint, pid {serving[0]}) serves the pages "
                f"{opts.to} still lacks (removing the task before that pid has exited would "
                f"lose them). Then: {_settle(opts, pid, work)}")
    state = "still there, PAUSED" if _alive(pid) else "ended"
    return f"left now: the source task of {cid} ({state}). {_settle(opts, pid, work)}"


def _finish_postcopy(opts: MigrateOptions, agent: Any, work: Path,
                     dump: DumpStats | None, outcome: Outcome, pid: int,
                     put_back: Callable[[], str]
                     ) -> tuple[DumpStats | None, Outcome, str]:
    """Wait until the source's CRIU has served its last page, then judge. The source task
    is whole and paused whatever happened (the dump leaves it alive: see :func:`_move`).
    CRIU reports a complete transfer and the destination runs = migrated (the caller cuts
    the source off and removes it); the transfer failed, or the destination's task is no
    longer running = the destination's copy is discarded and the source is put back
    (``put_back``: resumed from the freeze), and the report says what is lost (what the
    container did on the destination). Never two copies: the source is put back only once
    the destination's copy is known gone or discarded; while that is unknown (the agent
    unreachable), or the transfer completed but the destination's state is unknown, the
    source stays paused and the report says how to settle it either way."""
    cid = opts.container_id
    deadline = time.monotonic() + opts.postcopy_timeout
    while _lazy_dumps(cid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if serving := _lazy_dumps(cid):
        return dump, Outcome.POSTCOPY_FAILED, (
            f"post-copy did not finish in {opts.postcopy_timeout:.0f} s: the destination runs "
            f"and still takes pages from the source's CRIU (runc checkpoint, pid {serving[0]}), "
            "while the source task waits, frozen (PAUSED, all its memory held); once the "
            "transfer has ended, remove that task (ctr -n "
            f"{opts.namespace} task rm -f {cid}) and its container record; ending that CRIU "
            "before would lose the pages the destination lacks")
    lazy_pages = dump.pages_lazy if dump else 0
    unknown = ""
    try:
        dest = agent.Status(agent_pb2.StatusRequest(namespace=opts.namespace,
                                                    container_id=cid), timeout=60)
    except grpc.RpcError as exc:  # e.g. the agent restarted after the commit
        dest = None
        unknown = f"unknown ({exc.code().name} asking the agent: {exc.details()})"
    verdict = _lazy_verdict(work)
    dest_died = dest is not None and dest.status != "RUNNING"
    if _alive(pid) and verdict == LAZY_DONE and dest is None:
        return dump, Outcome.POSTCOPY_FAILED, (
            f"the source's CRIU served every page, but the destination's task is {unknown}: "
            f"the source stays PAUSED with all its memory. {_settle(opts, pid, work)}")
    if _alive(pid) and (verdict != LAZY_DONE or dest_died):
        there = (dest.status or "no task") if dest else unknown
        kept = _keep_dump_log(opts, work)
        discarded = dest_died
        try:
            agent.Discard(agent_pb2.StatusRequest(namespace=opts.namespace, container_id=cid),
                          timeout=120)
            discarded = True
        except grpc.RpcError as exc:
            if not discarded:
                return dump, Outcome.POSTCOPY_FAILED, (
                    f"post-copy failed (the source's CRIU said: {verdict}; its log kept at "
                    f"{kept}) and the destination's copy ({there}) could not be discarded "
                    f"({exc.code().name}: {exc.details()}): the source stays PAUSED with all "
                    f"its memory, so that two copies never run. {_settle(opts, pid, work)}")
        problem = put_back()
        if verdict != LAZY_DONE:
            return dump, Outcome.POSTCOPY_FAILED, (
                f"post-copy failed: the source's CRIU could not serve every page (of "
                f"{lazy_pages} lazy pages; it said: {verdict}; its log kept at {kept}); this "
                f"side resumed the source, which runs on with all its memory{problem}; the "
                f"destination's incomplete copy ({there}) was discarded; what it did while it "
                "ran there is lost")
        return dump, Outcome.POSTCOPY_FAILED, (
            f"the destination's task is {there} (exit {dest.exit_status if dest else '?'}) "
            f"after post-copy: it was discarded and the source resumed from the freeze with "
            f"all its memory{problem}; what the container did on the destination is lost (up "
            f"to {lazy_pages} pages, {lazy_pages * PAGE} bytes, were served lazily; the "
            "destination agent keeps CRIU's lazy-pages log in its logs directory)")
    # the source task is gone (ended by someone else): nothing to put back
    if dest_died or verdict != LAZY_DONE:
        return dump, Outcome.POSTCOPY_FAILED, (
            f"the destination's task is {(dest.status or 'gone') if dest else unknown} and "
            f"the source task has ended: the container is lost (the source's CRIU said: "
            f"{verdict}; its log kept at {_keep_dump_log(opts, work)})")
    if dest is None:
        return dump, outcome, (
            f"the source's CRIU said: {verdict}; the destination's task is {unknown}: check "
            "it there")
    return dump, outcome, ""


def _settle(opts: MigrateOptions, pid: int, work: Path) -> str:
    """How to settle a lazy move whose outcome this side could not tell: the commands for
    either way, and where the source's CRIU log is kept."""
    from shim.checkpoint.network import tcp_unlock_argv

    cid, ns = opts.container_id, opts.namespace
    unlock = " ".join(tcp_unlock_argv(pid))
    return (f"If the container runs on {opts.to} with all its memory (the source's CRIU log, "
            f"kept at {_keep_dump_log(opts, work)}, ends with '{LAZY_DONE}'), remove the "
            f"source: ctr -n {ns} task rm -f {cid}; ctr -n {ns} containers rm {cid}. If not, "
            f"remove it there and resume the source: ctr -n {ns} task resume {cid} (and, if "
            f"it was moved with --tcp-established, let it take TCP again: {unlock})")


LAZY_DONE: Final = "Lazy pages transfer finished successfully"
_LAZY_FAILED: Final = "Lazy pages transfer FAILED"


def _lazy_verdict(work: Path) -> str:
    """What the source's CRIU said of its lazy transfer (its dump log in ``work``):
    :data:`LAZY_DONE`, the failure line, or why there is no verdict."""
    try:
        text = (work / "dump.log").read_text(errors="replace")
    except OSError as exc:
        return f"no dump log ({exc.strerror})"
    for line in reversed(text.splitlines()):
        if LAZY_DONE in line:
            return LAZY_DONE
        if _LAZY_FAILED in line:
            return _LAZY_FAILED
    return "no verdict in its dump log"


def _keep_dump_log(opts: MigrateOptions, work: Path) -> str:
    """Copy the source's CRIU dump log out of the staging directory (removed at the end)
    into ``<work dir>/logs``; returns where, or why not."""
    target = Path(opts.work_dir) / "logs" / f"{opts.container_id}-criu-dump.log"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / "dump.log", target)
    except OSError as exc:
        return f"nowhere ({exc.strerror})"
    return str(target)


def _restore_stats(r: Any) -> RestoreStats:
    return RestoreStats(pages_compared=int(r.pages_compared),
                        pages_skipped_cow=int(r.pages_skipped_cow),
                        forking_time=int(r.forking_time), restore_time=int(r.restore_time),
                        pages_restored=int(r.pages_restored))

