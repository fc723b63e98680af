#!/usr/bin/env python3
"""Side-by-side benchmark of containerd-shim-pyrunc and the reference runc shim.

The same ctr workload runs for ``io.containerd.pyrunc.v2`` and ``io.containerd.runc.v2`` in one
run, alternating between them so that machine noise hits both alike; results are medians and
ratios (absolute times on this machine are noisy, ratios much less). Memory is read from
``/proc/<shim pid>/status`` (VmRSS) and ``smaps_rollup`` (Pss: shared library pages split among
the processes that map them).

Usage (root, containerd running, test image imported by hack/install.sh):
    hack/bench.py [--address SOCK] [--runs N] [--out FILE] [--readme]
                  [--sections lifecycle,memory,ttrpc,checkpoint,network,cri,migration,load]
                  [--ckpt-sizes 0,64,512] [--ckpt-runs N] [--ckpt-runs-large N] [--net-runs N]
                  [--load-n N] [--load-rounds R] [--load-trace]
``--readme`` rewrites the tables between the BENCH markers (lifecycle, memory, ttrpc) and the
BENCH-CHECKPOINT markers in README.md from the results; a section that did not run leaves its
table as it was.

Section ``memory``: one shim with one container, one with ``--group-size`` grouped containers,
and ``--shims`` one-container shims per runtime (sums of their PSS and RSS, mean private dirty
memory per shim; hack/shim_pages.py breaks a shim's memory down further). ``--ksm on|off``
runs it with the kernel's same-page merging on or off (the fork server offers its pages to
KSM; the host's setting is given back afterwards).

Section ``checkpoint``: a container runs ``memfill N`` (0 MiB: ``sleep``), then
``ctr c checkpoint --task`` and, once the original is removed, ``ctr c restore --live`` into
a new container are timed (wall clock of ctr, which includes containerd writing and reading
the checkpoint in its content store: the same work for both shims). Medians per size; large
sizes get fewer runs (``--ckpt-runs-large``, from 512 MiB).

Section ``cri``: ``hack/bench_cri.py`` (CRI CheckpointContainer of a 64 MiB container through
``pyrunc cri serve`` on containerd 1.6 vs containerd 2.1.9's own CRI with runc; needs
hack/install-k8s.sh).

Section ``migration`` (BENCH-MIGRATION markers): ``hack/bench_migrate.py`` (``pyrunc migrate``
between two containerd hosts, post-copy vs stop-and-copy, 256 MiB to 2 GiB).

Section ``load`` (BENCH-LOAD markers): ``hack/bench_load.py`` on a private containerd of its
own: ``--load-n`` containers (default 50) started (``ctr run -d``), checkpointed (``ctr c
checkpoint --task``) and restored (``ctr c restore --live``) at once, per runtime, the
runtimes interleaved over ``--load-rounds`` rounds (default 3; medians): wall time of each
phase, the sum of the shims' PSS and RSS after the start, CPU seconds of containerd's tree per
phase and where they went; ``--load-trace`` adds a round per runtime with process times (shim
``start``, runc, CRIU, fork-server requests) from the kernel's process events.

Section ``network`` (pyrunc only, BENCH-NETWORK markers): what rebuilding a container's network
at restore costs. One ``sleep`` container per variant is checkpointed once with ``pyrunc
checkpoint --exit`` and restored ``--net-runs`` times from the same images (``pyrunc restore
--detach``, wall clock; the task is deleted between runs): ``criu`` - only ``lo``, CRIU dumps
and restores the namespace itself; ``lo-hook`` - only ``lo`` with ``--empty-ns network`` (the
hook runs, nothing to build); ``veth-hook`` - a veth on a bridge ``pyb-br*`` with an address
in 10.213.250.0/24 and a default route, ``--empty-ns network`` (the hook rebuilds it). Also
from CRIU's restore log: how long CRIU waited at setup-namespaces, where runc runs the hook,
and at network-unlock (CRIU's own iptables lock of the new namespace, ``--empty-ns`` only).
Then the hook's parts, measured alone: the hook's interpreter, the rebuild service's start
until it listens (imports, pyroute2 included), ``rebuild()`` into a fresh namespace and the
ARP probe wait inside it. Bridge, veths and containers are removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

IMAGE = "localhost/pyrunc-test:latest"
PYRUNC = "io.containerd.pyrunc.v2"
RUNC = "io.containerd.runc.v2"
RUNTIMES = (PYRUNC, RUNC)
NAMESPACE = "pyrunc-bench"
ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("lifecycle", "memory", "ttrpc", "checkpoint", "network", "cri", "migration", "load")
# Sections that start their own containerd (the others use the one at --address).
OWN_CONTAINERD = ("ttrpc", "cri", "migration", "load")


class Ctr:
    def __init__(self, address: str) -> None:
        self.base = ["ctr", "--address", address, "-n", NAMESPACE]

    def __call__(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        proc = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def timed(self, *args: str, timeout: float = 60) -> float:
        start = time.perf_counter()
        self(*args, timeout=timeout)
        return time.perf_counter() - start

    def task_pid(self, cid: str) -> int:
        for line in self("t", "ls").splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == cid:
                return int(fields[1])
        raise RuntimeError(f"no task {cid}")

    def remove(self, cid: str) -> None:
        self("t", "kill", "-s", "SIGKILL", cid, check=False)
        for _ in range(100):
            if "STOPPED" in self("t", "ls", check=False) or cid not in self("t", "ls", check=False):
                break
            time.sleep(0.05)
        self("t", "delete", cid, check=False)
        self("c", "rm", cid, check=False)


def shim_pid(task_pid: int) -> int:
    """The shim is the task's parent: init processes are reparented to their shim."""
    stat = Path(f"/proc/{task_pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def memory_kib(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(status.split("VmRSS:")[1].split()[0])
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    pss = int(rollup.split("\nPss:")[1].split()[0])
    return {"rss_kib": rss, "pss_kib": pss}


def forkserver_rss_kib() -> int:
    """RSS of pyrunc's fork server (one per host, shared by every shim it forked)."""
    server = _forkserver_pid()
    return memory_kib(server)["rss_kib"] if server else 0


def spare_private_kib() -> int:
    """Private dirty memory of that fork server's spare (a daemon forked ahead of the next
    ``start``, one per fork server; not a shim until a ``start`` takes it), or 0."""
    server = _forkserver_pid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv[:2] == [b"containerd-shim-pyrunc-v2", b"spare"] and shim_pid(
                    int(entry.name)) == server:
                rollup = (entry / "smaps_rollup").read_text()
                return int(rollup.split("\nPrivate_Dirty:")[1].split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return 0


def _forkserver_pid() -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"containerd-shim-pyrunc-v2", b"forkserver"]:
            return int(entry.name)
    return 0


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def bench_lifecycle(ctr: Ctr, runs: int) -> dict[str, dict[str, float]]:
    """``ctr run -d`` (create + start) and a whole ``ctr run --rm`` of a program that exits."""
    timings: dict[str, dict[str, list[float]]] = {
        rt: {"run_d": [], "run_rm": []} for rt in RUNTIMES
    }
    for i in range(runs):
        order = RUNTIMES if i % 2 == 0 else RUNTIMES[::-1]
        for rt in order:
            cid = new_id("bench")
            timings[rt]["run_d"].append(
                ctr.timed("run", "-d", "--runtime", rt, IMAGE, cid, "sleep", "1000")
            )
            ctr.remove(cid)
            cid = new_id("benchrm")
            timings[rt]["run_rm"].append(
                ctr.timed("run", "--rm", "--runtime", rt, IMAGE, cid, "/usr/bin/exitcode", "0")
            )
    return {
        rt: {name: statistics.median(values) for name, values in per.items()}
        for rt, per in timings.items()
    }


def ksm_running() -> bool:
    """Whether the kernel's same-page merging runs (the fork server offers its pages to it;
    with it, what every pyrunc daemon copied alike is merged back: see hack/shim_pages.py)."""
    try:
        return Path("/sys/kernel/mm/ksm/run").read_text().strip() == "1"
    except OSError:
        return False


def bench_shims(ctr: Ctr, n: int, settle: float) -> dict[str, dict[str, float]]:
    """``n`` containers per runtime, each with a shim of its own (started interleaved), left
    ``settle`` seconds: the sums of the shims' PSS and RSS, and per pyrunc shim the mean
    private dirty memory by kind of mapping (hack/shim_pages.py)."""
    from shim_pages import breakdown  # hack/ is this script's directory

    ids: dict[str, list[str]] = {rt: [] for rt in RUNTIMES}
    out: dict[str, dict[str, float]] = {}
    try:
        for i in range(n):
            for rt in RUNTIMES if i % 2 == 0 else RUNTIMES[::-1]:
                cid = new_id("shims")
                ids[rt].append(cid)
                ctr("run", "-d", "--runtime", rt, IMAGE, cid, "sleep", "1000")
        time.sleep(settle)
        for rt, cids in ids.items():
            pids = {shim_pid(ctr.task_pid(cid)) for cid in cids}
            if len(pids) != n:
                raise RuntimeError(f"{rt}: {n} containers are served by {len(pids)} shims")
            each = [breakdown(pid) for pid in pids]
            out[rt] = {
                "pss_kib": sum(b["total"]["pss"] for b in each),
                "rss_kib": sum(b["total"]["rss"] for b in each),
                **{f"private_{kind}_kib": sum(b.get(kind, {}).get("private_dirty", 0)
                                              for b in each) / n
                   for kind in ("anon", "heap", "exe", "lib", "stack", "total")},
            }
    finally:
        for cids in ids.values():
            for cid in cids:
                ctr.remove(cid)
    return out


def bench_memory(ctr: Ctr, group_size: int, shims: int = 10,
                 settle: float = 3.0) -> dict[str, dict[str, float]]:
    """One shim with one container; one shim serving ``group_size`` grouped containers;
    ``shims`` shims of one container each (:func:`bench_shims`)."""
    out: dict[str, dict[str, float]] = {}
    for rt in RUNTIMES:
        cid = new_id("mem")
        ctr("run", "-d", "--runtime", rt, IMAGE, cid, "sleep", "1000")
        try:
            time.sleep(0.5)
            single = memory_kib(shim_pid(ctr.task_pid(cid)))
        finally:
            ctr.remove(cid)
        group = new_id("group")
        ids = [new_id("grp") for _ in range(group_size)]
        try:
            for cid in ids:
                ctr("run", "-d", "--runtime", rt, "--annotation",
                    f"io.containerd.runc.v2.group={group}", IMAGE, cid, "sleep", "1000")
            time.sleep(0.5)
            pids = {shim_pid(ctr.task_pid(cid)) for cid in ids}
            if len(pids) != 1:
                raise RuntimeError(f"{rt}: grouped containers are served by {len(pids)} shims")
            grouped = memory_kib(pids.pop())
        finally:
            for cid in ids:
                ctr.remove(cid)
        out[rt] = {
            **single,
            **({"forkserver_rss_kib": forkserver_rss_kib(),
                "spare_private_kib": spare_private_kib()} if rt == PYRUNC else {}),
            "group_rss_kib": grouped["rss_kib"],
            "group_pss_kib": grouped["pss_kib"],
        }
    if shims:
        for rt, sums in bench_shims(ctr, shims, settle).items():
            out[rt].update({f"shims_{key}": value for key, value in sums.items()})
        out[PYRUNC]["ksm_running"] = float(ksm_running())
    return out


def with_ksm(wanted: str, run: Callable[[], dict[str, dict[str, float]]]
             ) -> dict[str, dict[str, float]]:
    """Run ``run`` with KSM as ``wanted`` ("on", "off"; "host": as the host has it), and
    give the host its setting back afterwards."""
    knob = Path("/sys/kernel/mm/ksm/run")
    if wanted == "host" or not knob.exists():
        return run()
    before = knob.read_text().strip()
    knob.write_text("1" if wanted == "on" else "0")
    try:
        return run()
    finally:
        knob.write_text(before)


def bench_ttrpc() -> dict[str, object] | None:
    """``hack/bench_ttrpc.py`` as is (client and server wherever the scheduler puts them) and
    with both pinned to one CPU (no cross-CPU wake-ups, which dominate on small VMs)."""
    script = ROOT / "hack" / "bench_ttrpc.py"
    if not script.exists():
        return None
    out = ROOT / "build" / "bench-ttrpc.json"
    out.parent.mkdir(exist_ok=True)
    data: dict[str, object] = {}
    for name, extra in (("", []), ("pinned ", ["--pin", "0"])):
        subprocess.run([sys.executable, str(script), "--json", str(out), *extra], check=True,
                       stdout=subprocess.DEVNULL)
        for key, value in json.loads(out.read_text()).items():
            data[name + key] = value
    return data


CKPT_LARGE_MIB = 512


def rss_kib(pid: int) -> int:
    return memory_kib(pid)["rss_kib"]


def wait_rss(pid: int, mib: int, timeout: float = 120) -> None:
    """Wait until ``pid`` has ``mib`` MiB resident (memfill touched every page)."""
    deadline = time.monotonic() + timeout
    while rss_kib(pid) < mib * 1024:
        if time.monotonic() > deadline:
            raise RuntimeError(f"pid {pid}: {rss_kib(pid)} KiB resident, expected {mib} MiB")
        time.sleep(0.02)


def checkpoint_restore_once(ctr: Ctr, rt: str, mib: int, seed: int) -> tuple[float, float]:
    """One ``ctr c checkpoint --task`` and one ``ctr c restore --live``; returns their times."""
    cid = new_id("ckpt")
    restored = f"{cid}-r"
    ref = f"localhost/pyrunc-bench-ckpt:{cid}"
    command = ["sleep", "100000"] if mib == 0 else ["/usr/bin/memfill", str(mib), str(seed)]
    try:
        ctr("run", "-d", "--null-io", "--runtime", rt, IMAGE, cid, *command)
        wait_rss(ctr.task_pid(cid), mib)
        # each timed command starts with no dirty pages waiting to be written back: the last
        # run's hundreds of MiB of images (this host's /tmp and containerd's root are on a
        # disk) would otherwise slow whichever runtime comes next
        os.sync()
        checkpoint = ctr.timed("c", "checkpoint", "--task", cid, ref, timeout=600)
        ctr.remove(cid)  # as in a migration: the original is gone before the restore
        os.sync()
        restore = ctr.timed("c", "restore", "--live", restored, ref, timeout=600)
        # the restore brought the memory back (CRIU restores every page before it returns)
        if mib and rss_kib(ctr.task_pid(restored)) < mib * 1024:
            raise RuntimeError(f"{rt}: restored task has less than {mib} MiB resident")
        return checkpoint, restore
    finally:
        ctr.remove(restored)
        ctr.remove(cid)
        ctr("images", "rm", ref, check=False)


def bench_checkpoint(
    ctr: Ctr, sizes: list[int], runs: int, runs_large: int
) -> dict[str, dict[str, dict[str, object]]]:
    """Checkpoint and restore times per memfill size and runtime: medians and every run."""
    for rt in RUNTIMES:  # warm up CRIU, runc and both shims' checkpoint paths
        checkpoint_restore_once(ctr, rt, 0, 0)
    out: dict[str, dict[str, dict[str, object]]] = {}
    for mib in sizes:
        n = runs_large if mib >= CKPT_LARGE_MIB else runs
        times: dict[str, dict[str, list[float]]] = {
            rt: {"checkpoint": [], "restore": []} for rt in RUNTIMES
        }
        for i in range(n):
            order = RUNTIMES if i % 2 == 0 else RUNTIMES[::-1]
            for rt in order:
                checkpoint, restore = checkpoint_restore_once(ctr, rt, mib, i + 1)
                times[rt]["checkpoint"].append(checkpoint)
                times[rt]["restore"].append(restore)
        out[str(mib)] = {
            rt: {
                "runs": n,
                "checkpoint_s": statistics.median(per["checkpoint"]),
                "restore_s": statistics.median(per["restore"]),
                "checkpoint_all_s": per["checkpoint"],
                "restore_all_s": per["restore"],
            }
            for rt, per in times.items()
        }
    return out


def checkpoint_table(results: dict[str, object]) -> str:
    data = results["checkpoint"]
    assert isinstance(data, dict)
    rows = [
        f"Checkpoint and restore ({results['date']}, `hack/bench.py --sections checkpoint`): "
        "wall clock of the ctr command, which includes containerd archiving the checkpoint in "
        "its content store (checkpoint) and unpacking it (restore); the original container is "
        "removed before the restore.",
        "",
        "| checkpoint/restore (median) | pyrunc | runc shim | ratio |",
        "|---|---:|---:|---:|",
    ]
    for mib, per in data.items():
        a, b = per[PYRUNC], per[RUNC]
        what = "`sleep`" if mib == "0" else f"`memfill {mib}`"
        for key, name in (("checkpoint_s", "`ctr c checkpoint --task`"),
                          ("restore_s", "`ctr c restore --live`")):
            rows.append(
                f"| {name}, {what} ({a['runs']} runs) | {a[key] * 1000:.0f} ms "
                f"| {b[key] * 1000:.0f} ms | {a[key] / b[key]:.2f}x |"
            )
    return "\n".join(rows)


VENV_PYTHON = Path("/opt/containerd-shim-pyrunc/venv/bin/python")
NET_SUBNET = "10.213.250"
NET_VARIANTS = ("criu", "lo-hook", "veth-hook")


def project_python() -> str:
    """An interpreter that can import the shim package and pyroute2 (the project venv's)."""
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def run_quiet(argv: list[str], timeout: float = 120) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def pyrunc(address: str, *args: str) -> str:
    tool = shutil.which("pyrunc")
    base = [tool] if tool else [project_python(), "-m", "shim.ctl"]
    return run_quiet([*base, "-a", address, "-n", NAMESPACE, *args])


def restore_log_gaps_ms(restore_log: Path) -> tuple[float, float]:
    """Two waits in CRIU's restore log (relative timestamps): at setup-namespaces (runc runs
    the createRuntime hooks there), from that line to the next line of a restored task (they
    wait for the step; lines of CRIU's own process carry no pid and may come meanwhile); and
    at network-unlock (with ``--empty-ns network`` CRIU locks the new namespace with
    iptables-restore after the hook and unlocks it at the end), to the next line."""
    lines = restore_log.read_text(errors="replace").splitlines()
    stamps = []
    for line in lines:
        head, _, rest = line.partition(")")
        try:
            stamps.append((float(head[1:]), rest.split()))
        except ValueError:
            continue
    hook = unlock = 0.0
    for i, (start, words) in enumerate(stamps):
        text = " ".join(words)
        if text == "Running setup-namespaces scripts":
            later = [t for t, w in stamps[i + 1 :] if w and w[0].rstrip(":").isdigit()]
            hook = (later[0] - start) * 1000 if later else 0.0
        elif text == "Running network-unlock scripts":
            later = [t for t, w in stamps[i + 1 :] if w and w != ["RPC"]]
            unlock = (later[0] - start) * 1000 if later else 0.0
    return hook, unlock


def delete_task(ctr: Ctr, cid: str, timeout: float = 30) -> None:
    """Wait until the task has stopped (``--exit``, a kill), then delete it; the container
    stays for the next restore."""
    deadline = time.monotonic() + timeout
    while not any(line.split()[:1] == [cid] and "STOPPED" in line.split()
                  for line in ctr("t", "ls").splitlines()[1:]):
        if time.monotonic() > deadline:
            raise RuntimeError(f"task {cid} did not stop within {timeout}s")
        time.sleep(0.02)
    ctr("t", "rm", cid)


def wait_gone(ifname: str, timeout: float = 10) -> None:
    """A deleted task's namespace (and its veth) is torn down asynchronously."""
    deadline = time.monotonic() + timeout
    while subprocess.run(["ip", "link", "show", ifname], capture_output=True).returncode == 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ifname} still exists {timeout}s after its task was deleted")
        time.sleep(0.02)


def bench_network(ctr: Ctr, address: str, runs: int) -> dict[str, object]:
    """Restore times with and without the network hook, and the hook's parts."""
    tag = uuid.uuid4().hex[:4]
    bridge, veth = f"pyb-br{tag}", f"pyb-vs{tag}"
    work = Path(tempfile.mkdtemp(prefix="pyrunc-bench-net-"))
    ids = {variant: new_id(f"net-{variant}") for variant in NET_VARIANTS}
    try:
        run_quiet(["ip", "link", "add", bridge, "type", "bridge"])
        run_quiet(["sysctl", "-q", "-w", f"net.ipv6.conf.{bridge}.disable_ipv6=1"])
        run_quiet(["ip", "link", "set", bridge, "up"])
        for variant, cid in ids.items():
            ctr("run", "-d", "--null-io", "--runtime", PYRUNC, IMAGE, cid, "sleep", "100000")
            pid = ctr.task_pid(cid)
            ns = f"--net=/proc/{pid}/ns/net"
            if variant == "veth-hook":
                run_quiet(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                           "netns", f"/proc/{pid}/ns/net"])
                run_quiet(["ip", "link", "set", veth, "master", bridge, "up"])
                for cmd in (["addr", "add", f"{NET_SUBNET}.2/24", "dev", "eth0"],
                            ["link", "set", "eth0", "up"],
                            ["route", "add", "default", "via", f"{NET_SUBNET}.254"]):
                    run_quiet(["nsenter", ns, "ip", *cmd])
            empty = [] if variant == "criu" else ["--empty-ns", "network"]
            pyrunc(address, "checkpoint", cid, "--image-path", str(work / cid), "--exit", "-q",
                   *empty)
            delete_task(ctr, cid)
        times: dict[str, list[float]] = {v: [] for v in NET_VARIANTS}
        hook: dict[str, list[float]] = {v: [] for v in NET_VARIANTS}
        unlock: dict[str, list[float]] = {v: [] for v in NET_VARIANTS}
        for i in range(runs + 1):  # the first round warms up and is not counted
            order = NET_VARIANTS if i % 2 == 0 else NET_VARIANTS[::-1]
            for variant in order:
                cid = ids[variant]
                logs = work / f"{cid}-restore-{i}"
                start = time.perf_counter()
                pyrunc(address, "restore", cid, "--image-path", str(work / cid),
                       "--work-path", str(logs), "--detach")
                elapsed = time.perf_counter() - start
                if i:
                    times[variant].append(elapsed)
                    waits = restore_log_gaps_ms(logs / "restore.log")
                    hook[variant].append(waits[0])
                    unlock[variant].append(waits[1])
                ctr("t", "kill", "-s", "SIGKILL", cid)
                delete_task(ctr, cid)
                if variant == "veth-hook":
                    wait_gone(veth)
        parts = json.loads(run_quiet([project_python(), str(Path(__file__).resolve()),
                                      "--net-parts", bridge, veth, str(runs)]))
        med = {v: statistics.median(t) for v, t in times.items()}
        return {
            "runs": runs,
            "restore_s": med,
            "restore_all_s": times,
            "setup_namespaces_ms": {v: statistics.median(t) for v, t in hook.items()},
            "setup_namespaces_all_ms": hook,
            "network_unlock_ms": {v: statistics.median(t) for v, t in unlock.items()},
            "added_ms": {v: (med[v] - med["criu"]) * 1000 for v in NET_VARIANTS[1:]},
            "parts_ms": parts,
        }
    finally:
        for cid in ids.values():
            ctr.remove(cid)
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def net_parts(bridge: str, veth: str, runs: int) -> dict[str, float]:
    """The hook's parts, each alone (runs in the project venv: needs shim and pyroute2)."""
    import contextlib
    import inspect
    import socket
    import threading

    sys.path.insert(0, str(ROOT))
    from shim import nethook
    from shim.checkpoint import network as net

    def median_ms(samples: list[float]) -> float:
        return statistics.median(samples) * 1000

    tmp = Path(tempfile.mkdtemp(prefix="pyb-", dir="/tmp"))
    out: dict[str, float] = {"dad_wait_ms": net._DAD_WAIT * 1000}
    try:
        # 1. the hook alone: interpreter start, read state, connect, wait for "ok"
        sock_path = str(tmp / "hook.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(sock_path)
        listener.listen(8)

        def answer() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    while conn.recv(65536):
                        pass
                    conn.sendall(b"ok")

        threading.Thread(target=answer, daemon=True).start()
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(nethook.hook_argv(sock_path), input=b'{"pid": 1}', check=True)
            samples.append(time.perf_counter() - start)
        listener.close()
        out["hook_process_ms"] = median_ms(samples)
        # 2. the rebuild service: spawned until it listens (its imports, pyroute2 included)
        snap_path = tmp / "lo.json"
        lo = net.Link("lo", "loopback", 65536, "00:00:00:00:00:00", True)
        snap_path.write_bytes(net.dump_snapshot(net.NetworkSnapshot((lo,), (), ())))
        samples = []
        for i in range(runs):
            path = tmp / f"s{i}.sock"
            start = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "shim.nethook", "serve", str(path),
                                     str(snap_path)], cwd=ROOT)
            while not path.exists():
                time.sleep(0.0005)
            samples.append(time.perf_counter() - start)
            proc.kill()
            proc.wait()
        out["serve_ready_ms"] = median_ms(samples)
        # 3. rebuild(): a veth on the bridge, address, default route, ARP probe
        eth0 = net.Link("eth0", "veth", 1500, "02:00:00:00:fa:02", True,
                        net.VethPeer(veth, bridge, 1500))
        snap = net.NetworkSnapshot(
            (lo, eth0),
            (net.Address("eth0", socket.AF_INET, f"{NET_SUBNET}.2", 24),),
            (net.Route(socket.AF_INET, "", 0, f"{NET_SUBNET}.254", "eth0"),),
        )
        # (a checkout from before rebuild() took ``release`` closes its probe socket inside)
        takes_release = "release" in inspect.signature(net.rebuild).parameters
        samples = []
        for _ in range(runs):
            holder = subprocess.Popen(["unshare", "--net", "sleep", "60"])
            try:
                ns = f"/proc/{holder.pid}/ns/net"
                while os.readlink(ns) == os.readlink("/proc/self/ns/net"):
                    time.sleep(0.001)
                with contextlib.ExitStack() as late:
                    start = time.perf_counter()
                    net.rebuild(snap, holder.pid, **({"release": late} if takes_release else {}))
                    samples.append(time.perf_counter() - start)
            finally:
                holder.kill()
                holder.wait()
                subprocess.run(["ip", "link", "del", veth], capture_output=True)
        out["rebuild_ms"] = median_ms(samples)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def network_table(results: dict[str, object]) -> str:
    data = results["network"]
    assert isinstance(data, dict)
    med, hook, parts = data["restore_s"], data["setup_namespaces_ms"], data["parts_ms"]
    names = {
        "criu": "`lo` only, CRIU restores the namespace",
        "lo-hook": "`lo` only, `--empty-ns network` (hook, nothing to build)",
        "veth-hook": "veth on a bridge + address + route, `--empty-ns network`",
    }
    rows = [
        f"Network rebuilt at restore ({results['date']}, `hack/bench.py --sections network`, "
        f"pyrunc, {data['runs']} runs): wall clock of `pyrunc restore --detach` of a `sleep` "
        "container; from CRIU's restore log, how long CRIU waited at setup-namespaces (where "
        "runc runs the hook) and at network-unlock (with `--empty-ns network` CRIU locks the "
        "new namespace with iptables after the hook and unlocks it at the end).",
        "",
        "| restore (median) | `pyrunc restore` | added vs. CRIU | CRIU at setup-namespaces "
        "(the hook) | CRIU at network-unlock |",
        "|---|---:|---:|---:|---:|",
    ]
    unlock = data["network_unlock_ms"]
    for variant in NET_VARIANTS:
        added = "-" if variant == "criu" else f"{data['added_ms'][variant]:+.0f} ms"
        rows.append(f"| {names[variant]} | {med[variant] * 1000:.0f} ms | {added} "
                    f"| {hook[variant]:.0f} ms | {unlock[variant]:.0f} ms |")
    rows += [
        "",
        "| hook part, alone (median) | time |",
        "|---|---:|",
        f"| hook process (`python -I -S nethook.py hook`, connect, answer) "
        f"| {parts['hook_process_ms']:.0f} ms |",
        f"| rebuild service from spawn to listening (imports incl. pyroute2) "
        f"| {parts['serve_ready_ms']:.0f} ms |",
        f"| `rebuild()`: veth, bridge port, MAC, address, route, ARP probe "
        f"| {parts['rebuild_ms']:.0f} ms |",
        f"| of which the ARP probe's wait for answers | {parts['dad_wait_ms']:.0f} ms |",
    ]
    return "\n".join(rows)


def table(results: dict[str, object]) -> str:
    life = results["lifecycle"]
    mem = results["memory"]
    assert isinstance(life, dict) and isinstance(mem, dict)
    rows = ["| measure | pyrunc | runc shim | ratio |", "|---|---:|---:|---:|"]

    def row(name: str, a: float, b: float, fmt: Callable[[float], str]) -> None:
        rows.append(f"| {name} | {fmt(a)} | {fmt(b)} | {a / b:.2f}x |")

    ms = lambda v: f"{v * 1000:.0f} ms"  # noqa: E731
    mib = lambda v: f"{v / 1024:.1f} MiB"  # noqa: E731
    row("`ctr run -d` (median)", life[PYRUNC]["run_d"], life[RUNC]["run_d"], ms)
    row("`ctr run --rm` exit 0 (median)", life[PYRUNC]["run_rm"], life[RUNC]["run_rm"], ms)
    row("shim RSS, 1 container", mem[PYRUNC]["rss_kib"], mem[RUNC]["rss_kib"], mib)
    row("shim PSS, 1 container", mem[PYRUNC]["pss_kib"], mem[RUNC]["pss_kib"], mib)
    n = results["group_size"]
    row(f"shim RSS, {n} containers in one group", mem[PYRUNC]["group_rss_kib"],
        mem[RUNC]["group_rss_kib"], mib)
    if "shims_pss_kib" in mem[PYRUNC]:
        shims = results.get("shims", 10)
        ksm = "KSM on" if mem[PYRUNC].get("ksm_running") else "KSM off"
        row(f"{shims} shims, sum of PSS ({ksm})", mem[PYRUNC]["shims_pss_kib"],
            mem[RUNC]["shims_pss_kib"], mib)
        row(f"{shims} shims, sum of RSS", mem[PYRUNC]["shims_rss_kib"],
            mem[RUNC]["shims_rss_kib"], mib)
        row("private dirty per shim (mean)", mem[PYRUNC]["shims_private_total_kib"],
            mem[RUNC]["shims_private_total_kib"], mib)
    if mem[PYRUNC].get("forkserver_rss_kib"):
        rows.append(
            f"| pyrunc fork server RSS (one per host) | "
            f"{mib(mem[PYRUNC]['forkserver_rss_kib'])} | - | - |"
        )
    if mem[PYRUNC].get("spare_private_kib"):
        rows.append(
            f"| pyrunc spare daemon, private dirty (one per fork server) | "
            f"{mib(mem[PYRUNC]['spare_private_kib'])} | - | - |"
        )
    ttrpc = results.get("ttrpc")
    if isinstance(ttrpc, dict):
        rows += [
            "",
            "ttrpc round trips, 10k empty requests to a server in another process "
            "(`hack/bench_ttrpc.py`; target: median < 100 µs):",
            "",
            "| ttrpc | median | p99 | requests/s |",
            "|---|---:|---:|---:|",
        ]
        names = {
            "sequential": "sequential, 1 client",
            "concurrent": "8 concurrent clients",
            "floor": "bare asyncio echo on the same socket (floor)",
            "pinned sequential": "sequential, both pinned to one CPU",
            "pinned floor": "bare asyncio echo, both pinned to one CPU (floor)",
        }
        for key, name in names.items():
            r = ttrpc.get(key)
            if isinstance(r, dict):
                rows.append(
                    f"| {name} | {r['median_us']:.0f} µs | {r['p99_us']:.0f} µs "
                    f"| {r['requests_per_s']:.0f} |"
                )
    return "\n".join(rows)


README_PLACEHOLDER = "(filled by hack/bench.py)\n"


def update_readme(text: str, marker: str = "BENCH") -> None:
    """Replace the README block between ``<!-- marker:START/END -->`` with ``text``. A new
    BENCH block goes right under the Benchmarks heading, any other at the section's end."""
    readme = ROOT / "README.md"
    body = readme.read_text()
    start, end = f"<!-- {marker}:START -->", f"<!-- {marker}:END -->"
    block = f"{start}\n{text}\n{end}"
    if start in body and end in body:
        before, rest = body.split(start, 1)
        after = rest.split(end, 1)[1]
        body = before + block + after
    elif README_PLACEHOLDER in body:
        body = body.replace(README_PLACEHOLDER, f"{block}\n", 1)
    elif marker == "BENCH":
        body = body.replace("## Benchmarks\n", f"## Benchmarks\n\n{block}\n", 1)
    else:
        head, sep, rest = body.partition("## Benchmarks\n")
        section, nxt, tail = rest.partition("\n## ")
        body = f"{head}{sep}{section.rstrip()}\n\n{block}\n{nxt}{tail}"
    readme.write_text(body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="/run/containerd/containerd.sock")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--group-size", type=int, default=10)
    parser.add_argument("--shims", type=int, default=10,
                        help="memory section: this many one-container shims per runtime")
    parser.add_argument("--shims-settle", type=float, default=3.0,
                        help="memory section: seconds the shims are left before measuring "
                             "(with --ksm on: at least 60, KSM's scans take that long)")
    parser.add_argument("--ksm", choices=("host", "on", "off"), default="host",
                        help="memory section: run it with the kernel's same-page merging on "
                             "or off (the host's setting is restored afterwards)")
    parser.add_argument("--out", default=str(ROOT / "build" / "bench-results.json"))
    parser.add_argument("--readme", action="store_true", help="update README.md's table")
    parser.add_argument("--skip-ttrpc", action="store_true")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--ckpt-sizes", default="0,64,512",
                        help="memfill sizes in MiB for the checkpoint section")
    parser.add_argument("--ckpt-runs", type=int, default=5)
    parser.add_argument("--ckpt-runs-large", type=int, default=3,
                        help=f"runs for sizes from {CKPT_LARGE_MIB} MiB")
    parser.add_argument("--net-runs", type=int, default=9,
                        help="restores per variant in the network section")
    parser.add_argument("--load-n", type=int, default=50,
                        help="containers at once in the load section")
    parser.add_argument("--load-rounds", type=int, default=3,
                        help="rounds per runtime in the load section (interleaved; medians)")
    parser.add_argument("--load-trace", action="store_true",
                        help="load section: one more round per runtime with process times")
    parser.add_argument("--net-parts", nargs=3, metavar=("BRIDGE", "VETH", "RUNS"),
                        help=argparse.SUPPRESS)  # the network section's child
    args = parser.parse_args()
    if args.net_parts:
        bridge, veth, runs = args.net_parts
        print(json.dumps(net_parts(bridge, veth, int(runs))))
        return 0
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {','.join(SECTIONS)}")
    if args.skip_ttrpc and "ttrpc" in sections:
        sections.remove("ttrpc")
    ctr = Ctr(args.address)
    # Bytecode for the package as it is now: containerd's environment may carry
    # PYTHONDONTWRITEBYTECODE, and then every shim start after an edit compiles the edited
    # modules again (~1.5 ms for one module), which is not what an install runs.
    subprocess.run([project_python(), "-m", "compileall", "-q", str(ROOT / "shim")],
                   check=True, stdout=subprocess.DEVNULL)
    if set(sections) - set(OWN_CONTAINERD):
        if IMAGE not in ctr("image", "ls", "-q").split():
            ctr("image", "import", str(ROOT / "build" / "pyrunc-test-image.tar"), timeout=120)
        # warm up both shims' binaries and the snapshotter's caches
        for rt in RUNTIMES:
            ctr("run", "--rm", "--runtime", rt, IMAGE, new_id("warm"), "/usr/bin/exitcode", "0")
    results: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": args.runs,
        "group_size": args.group_size,
        "shims": args.shims,
    }
    if "lifecycle" in sections:
        results["lifecycle"] = bench_lifecycle(ctr, args.runs)
    if "memory" in sections:
        settle = max(args.shims_settle, 60.0) if args.ksm == "on" else args.shims_settle
        results["memory"] = with_ksm(
            args.ksm, lambda: bench_memory(ctr, args.group_size, args.shims, settle))
    if "ttrpc" in sections:
        results["ttrpc"] = bench_ttrpc()
    if "checkpoint" in sections:
        results["checkpoint"] = bench_checkpoint(
            ctr, [int(v) for v in args.ckpt_sizes.split(",")], args.ckpt_runs,
            args.ckpt_runs_large,
        )
    if "network" in sections:
        results["network"] = bench_network(ctr, args.address, args.net_runs)
    if "cri" in sections:  # hack/bench_cri.py: CRI CheckpointContainer, ours vs containerd 2.1.9
        cri = subprocess.run([sys.executable, str(ROOT / "hack" / "bench_cri.py"), "--json"],
                             check=True, capture_output=True, text=True)
        results["cri"] = json.loads(cri.stdout)
        print(f"CRI CheckpointContainer ratio ours/reference: {results['cri']['ratio']:.2f}")
        if "restore" in results["cri"]:
            print("CRI restore (CreateContainer + StartContainer) ratio ours/reference: "
                  f"{results['cri']['restore']['ratio']:.2f}")
    if "migration" in sections:  # hack/bench_migrate.py: pyrunc migrate between two hosts
        mig = subprocess.run([sys.executable, str(ROOT / "hack" / "bench_migrate.py"), "--json"],
                             check=True, stdout=subprocess.PIPE, text=True)
        results["migration"] = json.loads(mig.stdout)
    if "load" in sections:  # hack/bench_load.py: N at once, both shims, its own containerd
        load = subprocess.run(
            [sys.executable, str(ROOT / "hack" / "bench_load.py"), "--json", "--n",
             str(args.load_n), "--rounds", str(args.load_rounds),
             *(["--trace"] if args.load_trace else [])],
            check=True, stdout=subprocess.PIPE, text=True)
        results["load"] = json.loads(load.stdout)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    if "lifecycle" in results and "memory" in results:
        text = table(results)
        print(text)
        if args.readme:
            update_readme(text)
    if "checkpoint" in results:
        text = checkpoint_table(results)
        print(text)
        if args.readme:
            update_readme(text, "BENCH-CHECKPOINT")
    if "migration" in results:
        from bench_migrate import table as migration_table  # hack/ is this script's directory

        text = migration_table(results["migration"])  # type: ignore[arg-type]
        print(text)
        if args.readme:
            update_readme(text, "BENCH-MIGRATION")
    if "load" in results:
        from bench_load import table as load_table  # hack/ is this script's directory

        text = load_table(results["load"])  # type: ignore[arg-type]
        print(text)
        if args.readme:
            update_readme(text, "BENCH-LOAD")
    if "network" in results:
        text = network_table(results)
        print(text)
        if args.readme:
            update_readme(text, "BENCH-NETWORK")
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
