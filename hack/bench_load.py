#!/usr/bin/env python3
"""Under load: N containers started, checkpointed and restored at once through ``ctr``, for
``io.containerd.pyrunc.v2`` and the reference ``io.containerd.runc.v2`` in one run.

Usage (root; hack/install.sh has run): hack/bench_load.py [--n 50] [--rounds 3] [--settle 2]
[--trace] [--json]; also run by ``hack/bench.py --sections load`` (``--load-n``,
``--load-rounds``, ``--load-trace``).

What is timed, per runtime and round (the same ctr commands issue 14's table used):
* start: ``ctr run -d --null-io --runtime RT IMAGE ID sleep 100000``, N at once;
* checkpoint: ``ctr c checkpoint --task ID REF``, N at once (the task keeps running);
  then the originals are removed, untimed (as the one-container checkpoint section does);
* restore: ``ctr c restore --live NEWID REF``, N at once, into new containers, all verified
  RUNNING afterwards.
Each phase's figure is the wall clock from launching the N ctr processes (all at once) to
the last one's exit. Rounds alternate the runtimes' order (A/B, B/A, ...) so that machine load
hits both alike; the figures are medians over rounds, with ratios pyrunc/runc.

Memory: ``--settle`` seconds after the start phase (and after the restore phase), Rss and Pss
of each shim process from ``/proc/<pid>/smaps_rollup`` (Pss splits shared pages among the
processes that map them), summed over the N shims; pyrunc's fork server (one per place, shared
by all of its daemons) is reported apart.

CPU: containerd runs in a cpuacct cgroup of its own, so every process of its tree (containerd,
the shims' ``start``/``delete`` processes, shim daemons, the fork server, runc, CRIU; not the
containers, which runc moves to their own cgroups, nor the ctr clients) is counted. Per phase:
the cgroup's CPU seconds, split into containerd itself, its waited children (the short-lived
``shim start``/``shim delete`` processes), the shim daemons, their waited children (runc and
CRIU), pyrunc's fork server, and the rest (processes that were reaped by nobody we read). At
restore runc moves CRIU into the container's cgroups, so CRIU's restore work shows in "runc +
CRIU" (runc waits for CRIU, the shim for runc) but not in the cgroup's total: there "other"
can be negative.

``--trace``: one more round per runtime, not part of the medians, with the kernel's process
events (the proc connector) recorded: how long each ``shim start`` process, each ``runc``
subcommand and each ``criu`` ran, how long pyrunc's fork server took per request (fork of
its intermediate child to that child's exit) during each phase, and each container's
critical path: from its ``ctr`` command to its main runc command (containerd and the shim
before runc runs), runc itself, and from runc's exit to ctr's.

Everything is removed at the end, also on failure or Ctrl-C: containers, tasks, checkpoint
images, the private containerd (its root, state and mounts), stray shims, the fork server of
its place, the tracer and the cgroup. No test asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "pyrunc-bench-load"  # + a suffix per run: two runs at once stay apart
PYRUNC = "io.containerd.pyrunc.v2"
RUNC = "io.containerd.runc.v2"
RUNTIMES = (PYRUNC, RUNC)
SHIM_BINARIES = {"containerd-shim-pyrunc-v2": PYRUNC, "containerd-shim-runc-v2": RUNC}
PHASES = ("start", "checkpoint", "restore")
COMMANDS = {
    "start": "`ctr run -d --null-io` ... `sleep 100000`",
    "checkpoint": "`ctr c checkpoint --task`",
    "restore": "`ctr c restore --live` (originals removed before)",
}
RUNC_COMMANDS = frozenset({"create", "start", "delete", "kill", "state", "checkpoint", "restore",
                           "exec", "pause", "resume", "ps", "update", "events", "features"})
MAIN_RUNC = frozenset({"runc create", "runc checkpoint", "runc restore"})
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- pure parsing (unit-tested) ----------------------------------------------------------


def parse_smaps_rollup(text: str) -> dict[str, int]:
    """``rss_kib``, ``pss_kib`` and ``private_kib`` (Private_Clean + Private_Dirty) of a
    ``/proc/<pid>/smaps_rollup``."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        words = rest.split()
        if sep and len(words) == 2 and words[1] == "kB":
            fields[key.strip()] = int(words[0])
    return {
        "rss_kib": fields["Rss"],
        "pss_kib": fields["Pss"],
        "private_kib": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
    }


def parse_stat(text: str) -> tuple[int, float, float]:
    """From ``/proc/<pid>/stat``: the parent pid, the process's own CPU seconds (utime +
    stime) and those of its children it has waited for (cutime + cstime). The command name
    (field 2) may hold spaces and parentheses: fields are counted after its last ``)``."""
    rest = text.rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14-17
    ppid = int(rest[1])
    utime, stime, cutime, cstime = (int(v) for v in rest[11:15])
    return ppid, (utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK


def parse_session(text: str) -> int:
    """The session id (field 6) of a ``/proc/<pid>/stat``. A pyrunc daemon made by the fork
    server has a session of its own (the server's intermediate child calls setsid); one
    that ``start`` forked itself (no fork server, or a stale one) stays in containerd's."""
    return int(text.rsplit(")", 1)[1].split()[3])


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Per key, the median of the rounds' values (keys missing from a round are skipped)."""
    keys = {k for r in rounds for k in r}
    return {k: statistics.median(r[k] for r in rounds if k in r) for k in sorted(keys)}


def summary(values: Iterable[float]) -> dict[str, float]:
    """count, p50, max and sum of ``values`` (all 0 when there are none)."""
    vals = sorted(values)
    if not vals:
        return {"count": 0, "p50": 0.0, "max": 0.0, "sum": 0.0}
    return {"count": len(vals), "p50": statistics.median(vals), "max": vals[-1],
            "sum": sum(vals)}


# The proc connector (linux/cn_proc.h): a netlink message, a connector message, a proc_event.
NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_FORK = 0x1
PROC_EVENT_EXEC = 0x2
PROC_EVENT_EXIT = 0x80000000
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns (CLOCK_MONOTONIC)
_IDS = struct.Struct("=IIII")  # fork: parent pid, tgid, child pid, tgid; exec/exit: pid, tgid


def parse_proc_events(data: bytes) -> list[tuple[str, int, int, int]]:
    """The fork, exec and exit events of processes (not threads) in a datagram from the proc
    connector, as ``(kind, timestamp_ns, pid, parent)`` (``parent``: the forking process for
    a fork, else 0); other events are left out."""
    out: list[tuple[str, int, int, int]] = []
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length = _NLMSG.unpack_from(data, offset)[0]
        if length < _NLMSG.size or offset + length > len(data):
            break  # malformed or cut short
        body = offset + _NLMSG.size + _CN_MSG.size
        if body + _EVENT_HEAD.size + _IDS.size <= offset + length:
            what, _cpu, stamp = _EVENT_HEAD.unpack_from(data, body)
            a, b, c, d = _IDS.unpack_from(data, body + _EVENT_HEAD.size)
            if what == PROC_EVENT_FORK and c == d:  # a new process, not a thread
                out.append(("fork", stamp, d, b))
            elif what == PROC_EVENT_EXEC:
                out.append(("exec", stamp, b, 0))
            elif what == PROC_EVENT_EXIT and a == b:
                out.append(("exit", stamp, b, 0))
        offset += (length + 3) & ~3  # NLMSG_ALIGN
    return out


def _flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            return argv[i + 1]
    return None


def classify(argv: list[str], address: str, namespace: str) -> str | None:
    """What a traced program is, for this containerd: ``start <runtime>`` / ``delete
    <runtime>`` (a shim's short-lived action process), ``daemon <runtime>``, ``runc <sub>``
    (runc of this bench's ``namespace``: its state root is named after it), ``criu`` (any:
    the caller checks its parent), or None. ``argv[0]`` may be the interpreter of a script
    (the pyrunc shim), with its options (``python -S script ...``), so the first words up to
    the first flag of the shim's own are looked at."""
    head = list(itertools.takewhile(lambda a: a not in ("-namespace", "-id", "-address"), argv))
    names = [os.path.basename(a) for a in head[:4]]
    for binary, runtime in SHIM_BINARIES.items():
        if binary in names:
            if _flag(argv, "-address") != address:
                return None
            action = argv[-1] if argv[-1] in ("start", "delete") else "daemon"
            return f"{action} {runtime}"
    if names and names[0] == "runc":
        if not any(a.endswith(f"/{namespace}") for a in argv):
            return None
        sub = next((a for a in argv[1:] if a in RUNC_COMMANDS), "?")
        return f"runc {sub}"
    if names and names[0] == "criu":
        return "criu"
    return None


def is_forkserver_exec(argv: list[str]) -> bool:
    """A pyrunc fork server as it is exec'd (``python -m shim.forkserver ...``), before it
    names itself ``containerd-shim-pyrunc-v2 forkserver``."""
    return argv[1:3] == ["-m", "shim.forkserver"]


def trace_durations(
    records: list[dict[str, Any]], address: str, namespace: str, forkserver: int,
    window: tuple[int, int],
) -> dict[str, dict[str, float]]:
    """From the tracer's records, per kind of process (:func:`classify`) that started within
    ``window`` (monotonic ns), how long it ran (exec to exit, ms): count, p50, max, sum. CRIU
    counts when its parent is a runc of this bench. ``forkserver request``: pyrunc's fork
    server's intermediate children (fork to exit), one per daemon it made; a fork server
    exec'd during the trace in this containerd's place (``ours``) counts as well as
    ``forkserver`` (other places' fork servers, e.g. tests running meanwhile, do not).

    The critical path of each container, from the ``ctr`` command that names it to the main
    runc command for it (``create``, ``checkpoint``, ``restore``; its last argument is the
    id): ``path: 1 ctr to runc`` (containerd and the shim before runc runs: for start and
    restore the shim's ``start`` process and the daemon's work), ``path: 2 runc`` and
    ``path: 3 runc to ctr's exit`` (the shim answering, containerd's own work after it)."""
    started: dict[int, tuple[str, int]] = {}
    runcs: set[int] = set()
    forkservers = {forkserver}
    out: dict[str, list[float]] = {}
    ctr_argv: dict[int, list[str]] = {}
    ctrs: dict[str, tuple[int, int]] = {}  # container id -> its ctr's exec and exit
    mains: dict[str, tuple[int, int]] = {}  # container id -> its main runc's exec and exit
    lo, hi = window
    for rec in records:
        if "t" not in rec:
            continue
        kind, stamp, pid = rec["e"], rec["t"], rec["pid"]
        if kind == "exec":
            argv = rec.get("argv", [])
            if argv[:1] == ["ctr"] and address in argv and lo <= stamp <= hi:
                ctr_argv[pid] = argv
                started[pid] = ("ctr", stamp)
                continue
            if rec.get("ours") and is_forkserver_exec(argv):
                forkservers.add(pid)
            what = classify(argv, address, namespace)
            if what in MAIN_RUNC and lo <= stamp <= hi:
                ctr_argv[pid] = argv
            if what == "criu" and rec.get("ppid") not in runcs:
                what = None
            if what is not None and what.startswith("runc "):
                runcs.add(pid)
            if what is not None and not what.startswith("daemon ") and lo <= stamp <= hi:
                started[pid] = (what, stamp)
            else:
                started.pop(pid, None)
        elif kind == "fork" and rec.get("ppid") in forkservers and lo <= stamp <= hi:
            started[pid] = ("forkserver request", stamp)
        elif kind == "exit" and pid in started:
            what, begun = started.pop(pid)
            out.setdefault(what, []).append((stamp - begun) / 1e6)
            argv = ctr_argv.pop(pid, [])
            if what == "ctr":
                ctrs.update({a: (begun, stamp) for a in argv[5:]})
            elif what in MAIN_RUNC and argv:
                mains.setdefault(argv[-1], (begun, stamp))
    for cid, (run_begun, run_end) in mains.items():
        if cid in ctrs:
            ctr_begun, ctr_end = ctrs[cid]
            for what, ns in (("path: 1 ctr to runc", run_begun - ctr_begun),
                             ("path: 2 runc", run_end - run_begun),
                             ("path: 3 runc to ctr's exit", ctr_end - run_end)):
                out.setdefault(what, []).append(ns / 1e6)
    return {what: summary(values) for what, values in sorted(out.items())}


# -- the proc-event tracer (a child process: its work stays out of the bench's) -----------


def run_tracer(forkserver: int, containerd: int) -> int:
    """Subscribe to the proc connector and print one JSON line per exec (with argv and parent)
    and exit of every process, and per fork by ``forkserver`` or by a fork server exec'd in
    ``containerd``'s cgroups (its place; such an exec is marked ``ours``); ``ready`` first.
    Ends on SIGTERM."""
    place = Path(f"/proc/{containerd}/cgroup").read_text()
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: bursts of events
    sock.bind((os.getpid(), CN_IDX_PROC))
    op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
    sock.send(_NLMSG.pack(_NLMSG.size + len(cn), 3, 0, 0, os.getpid()) + cn)  # NLMSG_DONE
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    out = sys.stdout
    out.write('{"e": "ready"}\n')
    out.flush()
    lost = 0
    watched = {forkserver}  # and every fork server started meanwhile (a stale one is replaced)
    try:
        while True:
            try:
                data = sock.recv(65536)
            except OSError:  # ENOBUFS: the kernel dropped events
                lost += 1
                continue
            for kind, stamp, pid, parent in parse_proc_events(data):
                rec: dict[str, Any] = {"e": kind, "t": stamp, "pid": pid}
                if kind == "exec":
                    try:
                        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                        rec["ppid"] = parse_stat(Path(f"/proc/{pid}/stat").read_text())[0]
                    except (OSError, IndexError, ValueError):
                        continue
                    rec["argv"] = raw.decode(errors="replace").split("\0")[:-1]
                    if is_forkserver_exec(rec["argv"]):
                        with contextlib.suppress(OSError):
                            if Path(f"/proc/{pid}/cgroup").read_text() == place:
                                watched.add(pid)
                                rec["ours"] = True
                elif kind == "fork":
                    if parent not in watched:
                        continue
                    rec["ppid"] = parent
                out.write(json.dumps(rec) + "\n")
    finally:
        out.write(json.dumps({"e": "lost", "n": lost}) + "\n")
        out.flush()


# -- measurement ---------------------------------------------------------------------------


def run_all(argvs: list[list[str]], timeout: float = 600) -> dict[str, Any]:
    """Launch every argv at once; wait for all. Returns the wall time to the last exit, each
    one's time and the errors (stderr of those that failed). On any exception the ones
    still running are killed."""
    procs: list[subprocess.Popen[str]] = []
    ends: list[float] = [0.0] * len(argvs)
    errors: list[str] = []
    start = time.perf_counter()
    try:
        for argv in argvs:
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          text=True))

        def wait(i: int) -> None:
            try:
                _, err = procs[i].communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                procs[i].kill()
                _, err = procs[i].communicate()
                err = f"timed out after {timeout:g}s; {err}"
            ends[i] = time.perf_counter()
            if procs[i].returncode != 0:
                errors.append(f"{' '.join(argvs[i][5:])}: {err.strip()}")

        waiters = [threading.Thread(target=wait, args=(i,)) for i in range(len(procs))]
        for t in waiters:
            t.start()
        for t in waiters:
            t.join()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    each = [e - start for e in ends]
    return {"wall_s": max(each, default=0.0), "each_p50_s": statistics.median(each)
            if each else 0.0, "errors": errors}


def read_stat(pid: int) -> tuple[int, float, float] | None:
    try:
        return parse_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, IndexError, ValueError):
        return None


def cmdline(pid: int | str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def shim_daemons(address: str) -> dict[int, str]:
    """Live shim daemons of the containerd at ``address``: pid -> runtime."""
    out: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            what = classify(cmdline(entry.name), address, "")
            if what is not None and what.startswith("daemon "):
                out[int(entry.name)] = what.split()[1]
    return out


def forkservers_of(cgroup_text: str) -> list[int]:
    """pyrunc fork servers living in exactly these cgroups (``/proc/<pid>/cgroup`` text)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or cmdline(entry.name)[:2] != [
            "containerd-shim-pyrunc-v2", "forkserver"]:
            continue
        with contextlib.suppress(OSError):
            if (entry / "cgroup").read_text() == cgroup_text:
                out.append(int(entry.name))
    return out


def memory_sum(pids: Iterable[int]) -> dict[str, float]:
    """Sum of Rss, Pss and private memory (KiB) of ``pids``, their count and the per-process
    averages (MiB)."""
    total = {"rss_kib": 0, "pss_kib": 0, "private_kib": 0}
    n = 0
    for pid in pids:
        try:
            mem = parse_smaps_rollup(Path(f"/proc/{pid}/smaps_rollup").read_text())
        except (OSError, KeyError):
            continue
        n += 1
        for k in total:
            total[k] += mem[k]
    return {"shims": n, **total,
            **{f"{k[:-4]}_avg_mib": (v / n / 1024 if n else 0.0) for k, v in total.items()}}


class CpuGroup:
    """A cpuacct cgroup for containerd's tree; ``usage_s`` is its CPU seconds so far."""

    def __init__(self) -> None:
        self.path = CPUACCT / f"pyrunc-bench-cpu-{uuid.uuid4().hex[:8]}"
        self.path.mkdir()

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def usage_s(self) -> float:
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def remove(self) -> None:
        """Move whatever is left to the parent, then remove the cgroup."""
        for _ in range(50):
            pids = (self.path / "cgroup.procs").read_text().split()
            for pid in pids:
                with contextlib.suppress(OSError):
                    (CPUACCT / "cgroup.procs").write_text(pid)
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


class Cpu:
    """CPU seconds of containerd's tree over one phase, split by who spent them."""

    def __init__(self, group: CpuGroup, containerd: int, address: str, cgroups: str) -> None:
        self.group, self.containerd, self.address = group, containerd, address
        self.cgroups = cgroups

    def sample(self) -> dict[str, Any]:
        def stats(pids: Iterable[int]) -> dict[int, tuple[int, float, float]]:
            found = {pid: read_stat(pid) for pid in pids}
            return {pid: s for pid, s in found.items() if s is not None}

        return {
            "cgroup": self.group.usage_s(),
            "containerd": read_stat(self.containerd),
            "forkservers": stats(forkservers_of(self.cgroups)),  # a stale one is replaced
            "shims": stats(shim_daemons(self.address)),
        }

    @staticmethod
    def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
        def own(key: str) -> tuple[float, float]:
            a, b = after[key], before[key]
            if a is None or b is None:
                return 0.0, 0.0
            return a[1] - b[1], a[2] - b[2]

        def grown(key: str) -> tuple[float, float]:
            """Own and children's CPU of the processes alive at the end (those born in the
            phase from zero)."""
            own_s = children_s = 0.0
            for pid, (_, s, c) in after[key].items():
                _, s0, c0 = before[key].get(pid, (0, 0.0, 0.0))
                own_s += s - s0
                children_s += c - c0
            return own_s, children_s

        containerd_self, containerd_children = own("containerd")
        fs_self, fs_children = grown("forkservers")
        shims_self, shims_children = grown("shims")
        out = {
            "total_s": after["cgroup"] - before["cgroup"],
            "containerd_s": containerd_self,
            "shim_actions_s": containerd_children,  # shim start/delete, waited by containerd
            "shims_s": shims_self,
            "runc_criu_s": shims_children,  # waited by the shims
            "forkserver_s": fs_self + fs_children,
        }
        out["other_s"] = out["total_s"] - sum(v for k, v in out.items() if k != "total_s")
        return out


def remove_namespace_cgroups(namespace: str) -> None:
    """runc put each container in ``/<namespace>/<id>`` of every controller; the containers
    are gone, their namespace's directory stays: remove it (and any empty one below)."""
    for controller in Path("/sys/fs/cgroup").iterdir():
        top = controller / namespace
        if not top.is_dir():
            continue
        for sub in sorted(top.rglob("*"), key=lambda d: -len(d.parts)):
            if sub.is_dir():
                with contextlib.suppress(OSError):
                    sub.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


class Bench:
    """One private containerd, both runtimes, the rounds."""

    def __init__(self, n: int, settle: float) -> None:
        self.n, self.settle = n, settle
        self.namespace = f"{NAMESPACE}-{uuid.uuid4().hex[:6]}"
        self.stack = contextlib.ExitStack()
        self.forkserver = 0
        self.forkserver_changes = 0
        self.refs: set[str] = set()

    def __enter__(self) -> Bench:
        sys.path.insert(0, str(ROOT))
        from integration.harness import IMAGE_REF, Containerd, ensure_image_tar

        self.image = IMAGE_REF
        try:
            self.group = CpuGroup()
            self.stack.callback(self.group.remove)
            self.containerd = Containerd.start(prefix="/run/pyrunc-bl-")
            self.stack.callback(self.stop_containerd)
            self.group.add(self.containerd.pid)
            self.cgroups = Path(f"/proc/{self.containerd.pid}/cgroup").read_text()
            self.containerd.import_image(ensure_image_tar(), IMAGE_REF, self.namespace)
        except BaseException:
            self.stack.close()
            raise
        self.address = self.containerd.address
        self.base = ["ctr", "--address", self.address, "-n", self.namespace]
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def stop_containerd(self) -> None:
        if self.refs:
            self.ctr("images", "rm", *sorted(self.refs), check=False)
        for problem in self.containerd.stop():  # containers, tasks, shims, mounts, its root
            print(f"bench_load: teardown: {problem}", file=sys.stderr)
        for pid in forkservers_of(self.cgroups):  # the fork server of this place only
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        remove_namespace_cgroups(self.namespace)


    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        proc = subprocess.run([*self.base, *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def tasks(self) -> dict[str, str]:
        rows = [line.split() for line in self.ctr("t", "ls").splitlines()[1:]]
        return {r[0]: r[2] for r in rows if len(r) >= 3}

    def remove(self, ids: list[str]) -> None:
        """Kill and delete the tasks and containers ``ids``, all at once (untimed)."""
        for args in (("t", "rm", "-f"), ("c", "rm")):
            run_all([[*self.base, *args, cid] for cid in ids])
        left = set(ids) & (set(self.tasks()) | set(self.ctr("c", "ls", "-q").split()))
        if left:
            raise RuntimeError(f"not removed: {sorted(left)}")

    def warm_up(self) -> None:
        """Both shims' binaries, CRIU and runc's checkpoint paths, the fork server (pyrunc's
        first ``start`` spawns it: it must be up before N starts arrive at once)."""
        for rt in RUNTIMES:
            self.ctr("run", "--rm", "--null-io", "--runtime", rt, self.image,
                     f"warm-{uuid.uuid4().hex[:6]}", "/usr/bin/exitcode", "0")
            self.round(rt, 1, measure=False)
        self.find_forkserver(10)

    def find_forkserver(self, timeout: float = 0) -> None:
        """The fork server of this place: another helper's edit of the package makes it stale
        (the next ``start`` forks its daemon itself and spawns a new one); counted."""
        deadline = time.monotonic() + timeout
        while not (found := forkservers_of(self.cgroups)) and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = found[0] if found else 0
        if self.forkserver and pid != self.forkserver:
            self.forkserver_changes += 1
        self.forkserver = pid

    def phase(self, name: str, argvs: list[list[str]], cpu: Cpu | None,
              out: dict[str, Any]) -> None:
        before = cpu.sample() if cpu else None
        t0 = time.monotonic_ns()
        batch = run_all(argvs)
        out.setdefault("window_ns", {})[name] = (t0, time.monotonic_ns())
        if batch["errors"]:
            raise RuntimeError(f"{name}: {len(batch['errors'])} of {len(argvs)} failed; "
                               f"first: {batch['errors'][0]}")
        out[f"{name}_s"] = batch["wall_s"]
        out[f"{name}_each_p50_s"] = batch["each_p50_s"]
        if cpu and before:
            out["cpu"][name] = Cpu.delta(before, cpu.sample())

    def round(self, rt: str, n: int, *, measure: bool = True) -> dict[str, Any]:
        tag = uuid.uuid4().hex[:6]
        ids = [f"ld-{tag}-{i}" for i in range(n)]
        restored = [f"{cid}-r" for cid in ids]
        refs = [f"localhost/pyrunc-bench-load:{cid}" for cid in ids]
        self.refs.update(refs)
        if measure and rt == PYRUNC:
            self.find_forkserver()
        cpu = Cpu(self.group, self.containerd.pid, self.address, self.cgroups) \
            if measure else None
        out: dict[str, Any] = {"cpu": {}}
        try:
            self.phase("start", [[*self.base, "run", "-d", "--null-io", "--runtime", rt,
                                  self.image, cid, "sleep", "100000"] for cid in ids], cpu, out)
            if measure:
                time.sleep(self.settle)
                out["memory_start"] = self.memory(rt)
            self.phase("checkpoint", [[*self.base, "c", "checkpoint", "--task", cid, ref]
                                      for cid, ref in zip(ids, refs, strict=True)], cpu, out)
            self.remove(ids)  # as in a migration: the originals are gone before the restore
            self.phase("restore", [[*self.base, "c", "restore", "--live", rid, ref]
                                   for rid, ref in zip(restored, refs, strict=True)], cpu, out)
            tasks = self.tasks()
            lost = [rid for rid in restored if tasks.get(rid) != "RUNNING"]
            if lost:
                raise RuntimeError(f"{rt}: {len(lost)} restored tasks not running: {lost[:5]}")
            if measure:
                time.sleep(self.settle)
                out["memory_restore"] = self.memory(rt)
        finally:
            self.remove(ids + restored)
            self.ctr("images", "rm", *refs, check=False)
            self.refs.difference_update(refs)
        return out

    def memory(self, rt: str) -> dict[str, float]:
        pids = [pid for pid, r in shim_daemons(self.address).items() if r == rt]
        mem = memory_sum(pids)
        if rt == PYRUNC:  # how many came from the fork server (see parse_session)
            sessions = []
            for pid in pids:
                with contextlib.suppress(OSError, IndexError, ValueError):
                    sessions.append(parse_session(Path(f"/proc/{pid}/stat").read_text()))
            mem["from_forkserver"] = sum(s != self.containerd.pid for s in sessions)
        if rt == PYRUNC:
            self.find_forkserver()  # the one now: a stale one may have been replaced
        if rt == PYRUNC and self.forkserver:
            fs = memory_sum([self.forkserver])
            mem["forkserver_rss_kib"], mem["forkserver_pss_kib"] = fs["rss_kib"], fs["pss_kib"]
        return mem


def flat(out: dict[str, Any]) -> dict[str, float]:
    """A round's numbers as one flat mapping (for :func:`medians`)."""
    row: dict[str, float] = {}
    for key, value in out.items():
        if isinstance(value, int | float):
            row[key] = float(value)
        elif key.startswith("memory_"):
            row.update({f"{key[7:]}_{k}": float(v) for k, v in value.items()})
        elif key == "cpu":
            row.update({f"cpu_{phase}_{k}": v for phase, d in value.items() for k, v in d.items()})
    return row


def traced_round(bench: Bench, rt: str) -> dict[str, Any]:
    """One round of ``rt`` with the proc-event tracer running; per phase, the durations."""
    tracer = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--tracer", str(bench.forkserver),
         str(bench.containerd.pid)],
        stdout=subprocess.PIPE, text=True)
    records: list[dict[str, Any]] = []
    try:
        assert tracer.stdout is not None
        if json.loads(tracer.stdout.readline() or "{}").get("e") != "ready":
            raise RuntimeError("the proc-event tracer did not start")
        reader = threading.Thread(
            target=lambda: records.extend(json.loads(line) for line in tracer.stdout or ()))
        reader.start()
        out = bench.round(rt, bench.n, measure=False)
        time.sleep(0.5)  # the last exits
    finally:
        tracer.terminate()
        tracer.wait(timeout=10)
    reader.join(timeout=30)
    lost = sum(r.get("n", 0) for r in records if r["e"] == "lost")
    return {
        "lost_reads": lost,
        **{name: {"wall_s": out[f"{name}_s"],
                  "processes_ms": trace_durations(records, bench.address, bench.namespace,
                                                  bench.forkserver, out["window_ns"][name])}
           for name in PHASES},
    }


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bench_load(n: int, rounds: int, settle: float, trace: bool) -> dict[str, Any]:
    """The section: ``rounds`` A/B-interleaved rounds of N at once, plus the traced round."""
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "n": n,
                               "rounds": rounds, "settle_s": settle, "commands": COMMANDS,
                               "load_before": load_average()}
    per: dict[str, list[dict[str, float]]] = {rt: [] for rt in RUNTIMES}
    with Bench(n, settle) as bench:
        bench.warm_up()
        for i in range(rounds):
            for rt in (RUNTIMES if i % 2 == 0 else RUNTIMES[::-1]):
                per[rt].append(flat(bench.round(rt, n)))
                print(f"round {i + 1} {rt}: " + ", ".join(
                    f"{p} {per[rt][-1][f'{p}_s']:.2f} s" for p in PHASES)
                    + f" (load {load_average()})", file=sys.stderr, flush=True)
        results["load_after"] = load_average()
        results["forkserver_changes"] = bench.forkserver_changes
        if trace:
            results["trace"] = {rt: traced_round(bench, rt) for rt in RUNTIMES}
    results["all"] = per
    results["median"] = {rt: medians(rows) for rt, rows in per.items()}
    return results


# -- the report ------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    a, b = results["median"][PYRUNC], results["median"][RUNC]
    n = results["n"]
    rows = [
        f"Under load ({results['date']}, `hack/bench.py --sections load`, {n} containers at "
        f"once, median of {results['rounds']} rounds, runtimes interleaved A/B, B/A; load "
        f"average {results['load_before']} before, {results['load_after']} after): wall clock "
        f"from launching {n} ctr commands at once to the last one's exit. Start: "
        f"{COMMANDS['start']}; checkpoint: {COMMANDS['checkpoint']} (tasks keep running; "
        f"the originals are then removed, untimed); restore: `ctr c restore --live` into "
        f"new containers. Memory: the {n} shims' `smaps_rollup` {results['settle_s']:g} s "
        "after the start phase. CPU: the cgroup of containerd's whole tree (containers "
        "and ctr excluded).",
        "",
        f"| {n} at once (median) | pyrunc | runc shim | ratio |",
        "|---|---:|---:|---:|",
    ]

    def row(name: str, key: str, fmt: str, unit: str, scale: float = 1.0) -> None:
        if key in a and key in b:
            va, vb = a[key] * scale, b[key] * scale
            ratio = f"{va / vb:.2f}x" if vb else "-"
            rows.append(f"| {name} | {va:{fmt}} {unit} | {vb:{fmt}} {unit} | {ratio} |")

    for p in PHASES:
        row(f"{p}: {COMMANDS[p].split(' (')[0]}, all {n}", f"{p}_s", ".2f", "s")
    for p in PHASES:
        row(f"{p}: CPU time of containerd's tree", f"cpu_{p}_total_s", ".2f", "s")
    for key, name in (("pss", "PSS"), ("rss", "RSS")):
        row(f"{n} shims, sum of {name}", f"start_{key}_kib", ".0f", "MiB", 1 / 1024)
        row(f"per shim, {name}", f"start_{key}_avg_mib", ".1f", "MiB")
    row("per shim, private (Private_Clean + Private_Dirty)", "start_private_avg_mib", ".1f",
        "MiB")
    row(f"{n} restored shims, sum of PSS", "restore_pss_kib", ".0f", "MiB", 1 / 1024)
    if "start_from_forkserver" in a:
        rows.append(f"| pyrunc daemons made by the fork server (not by `start` itself), after "
                    f"start / restore | {a['start_from_forkserver']:.0f} / "
                    f"{a.get('restore_from_forkserver', 0):.0f} of {n} | - | - |")
    if a.get("start_forkserver_pss_kib"):
        fs_pss = a["start_forkserver_pss_kib"] / 1024
        rows.append(f"| pyrunc fork server (one per place), PSS / RSS | {fs_pss:.0f} / "
                    f"{a['start_forkserver_rss_kib'] / 1024:.0f} MiB | - | - |")
        with_fs = a["start_pss_kib"] / 1024 + fs_pss
        rows.append(f"| {n} shims + fork server, sum of PSS | {with_fs:.0f} MiB | "
                    f"{b['start_pss_kib'] / 1024:.0f} MiB | "
                    f"{with_fs * 1024 / b['start_pss_kib']:.2f}x |")
    rows += [
        "",
        "Where the CPU seconds went (median per phase; shim actions: the short-lived `shim "
        "start`/`delete` processes; runc + CRIU: children the shim daemons waited for; at "
        "restore runc moves CRIU into the container's cgroup, out of the total, so other "
        "can be negative):",
        "",
        "| phase | runtime | total | containerd | shim actions | shim daemons | runc + CRIU "
        "| fork server | other |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    parts = ("total_s", "containerd_s", "shim_actions_s", "shims_s", "runc_criu_s",
             "forkserver_s", "other_s")
    for p in PHASES:
        for rt, m in ((PYRUNC, a), (RUNC, b)):
            if f"cpu_{p}_total_s" in m:
                cells = " | ".join(f"{m[f'cpu_{p}_{k}']:.2f}" for k in parts)
                rows.append(f"| {p} | {rt.split('.')[2]} | {cells} |")
    trace = results.get("trace")
    if trace:
        rows += [
            "",
            "Process times in one traced round per runtime (kernel process events; exec to "
            "exit; not part of the medians), p50 / max ms (count):",
            "",
            "| phase | process | pyrunc | runc shim |",
            "|---|---|---:|---:|",
        ]
        for p in PHASES:
            by_rt = [{k.replace(rt, "shim"): v for k, v in trace[rt][p]["processes_ms"].items()}
                     for rt in RUNTIMES]
            for kind in sorted({k for t in by_rt for k in t}):
                texts = [f"{t[kind]['p50']:.0f} / {t[kind]['max']:.0f} ({t[kind]['count']:.0f})"
                         if kind in t else "-" for t in by_rt]
                rows.append(f"| {p} | {kind} | {texts[0]} | {texts[1]} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="containers at once")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds between a phase's end and the memory reading")
    parser.add_argument("--trace", action="store_true",
                        help="one more round per runtime with process times")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--tracer", type=int, nargs=2, metavar=("FORKSERVER", "CONTAINERD"),
                        help=argparse.SUPPRESS)  # the tracer child
    args = parser.parse_args()
    if args.tracer is not None:
        return run_tracer(*args.tracer)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on SIGTERM as on ^C
    results = bench_load(args.n, args.rounds, args.settle, args.trace)
    print(json.dumps(results, indent=1) if args.json else table(results))
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
