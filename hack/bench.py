#!/usr/bin/env python3
"""Side-by-side benchmark of containerd-shim-pyrunc and the reference runc shim.

The same ctr workload runs for ``io.containerd.pyrunc.v2`` and ``io.containerd.runc.v2`` in one
run, alternating between them so that machine noise hits both alike; results are medians and
ratios (absolute times on this machine are noisy, ratios much less). Memory is read from
``/proc/<shim pid>/status`` (VmRSS) and ``smaps_rollup`` (Pss: shared library pages split among
the processes that map them).

Usage (root, containerd running, test image imported by hack/install.sh):
    hack/bench.py [--address SOCK] [--runs N] [--out FILE] [--readme]
                  [--sections lifecycle,memory,ttrpc,checkpoint]
                  [--ckpt-sizes 0,64,512] [--ckpt-runs N] [--ckpt-runs-large N]
``--readme`` rewrites the tables between the BENCH markers (lifecycle, memory, ttrpc) and the
BENCH-CHECKPOINT markers in README.md from the results; a section that did not run leaves its
table as it was.

Section ``checkpoint``: a container runs ``memfill N`` (0 MiB: ``sleep``), then
``ctr c checkpoint --task`` and, once the original is removed, ``ctr c restore --live`` into
a new container are timed (wall clock of ctr, which includes containerd writing and reading
the checkpoint in its content store: the same work for both shims). Medians per size; large
sizes get fewer runs (``--ckpt-runs-large``, from 512 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
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
SECTIONS = ("lifecycle", "memory", "ttrpc", "checkpoint")


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
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"containerd-shim-pyrunc-v2", b"forkserver"]:
            return memory_kib(int(entry.name))["rss_kib"]
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


def bench_memory(ctr: Ctr, group_size: int) -> dict[str, dict[str, int]]:
    """One shim with one container; one shim serving ``group_size`` grouped containers."""
    out: dict[str, dict[str, int]] = {}
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
            **({"forkserver_rss_kib": forkserver_rss_kib()} if rt == PYRUNC else {}),
            "group_rss_kib": grouped["rss_kib"],
            "group_pss_kib": grouped["pss_kib"],
        }
    return out


def bench_ttrpc() -> dict[str, object] | None:
    script = ROOT / "hack" / "bench_ttrpc.py"
    if not script.exists():
        return None
    out = ROOT / "build" / "bench-ttrpc.json"
    out.parent.mkdir(exist_ok=True)
    subprocess.run([sys.executable, str(script), "--json", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    data: dict[str, object] = json.loads(out.read_text())
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
        checkpoint = ctr.timed("c", "checkpoint", "--task", cid, ref, timeout=600)
        ctr.remove(cid)  # as in a migration: the original is gone before the restore
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
    if mem[PYRUNC].get("forkserver_rss_kib"):
        rows.append(
            f"| pyrunc fork server RSS (one per host) | "
            f"{mib(mem[PYRUNC]['forkserver_rss_kib'])} | - | - |"
        )
    ttrpc = results.get("ttrpc")
    if isinstance(ttrpc, dict):
        rows.append("")
        rows.append(f"ttrpc round trip (in-repo client/server): `{json.dumps(ttrpc)[:400]}`")
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
    args = parser.parse_args()
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {','.join(SECTIONS)}")
    if args.skip_ttrpc and "ttrpc" in sections:
        sections.remove("ttrpc")
    ctr = Ctr(args.address)
    if IMAGE not in ctr("image", "ls", "-q").split():
        ctr("image", "import", str(ROOT / "build" / "pyrunc-test-image.tar"), timeout=120)
    # warm up both shims' binaries and the snapshotter's caches
    for rt in RUNTIMES:
        ctr("run", "--rm", "--runtime", rt, IMAGE, new_id("warm"), "/usr/bin/exitcode", "0")
    results: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": args.runs,
        "group_size": args.group_size,
    }
    if "lifecycle" in sections:
        results["lifecycle"] = bench_lifecycle(ctr, args.runs)
    if "memory" in sections:
        results["memory"] = bench_memory(ctr, args.group_size)
    if "ttrpc" in sections:
        results["ttrpc"] = bench_ttrpc()
    if "checkpoint" in sections:
        results["checkpoint"] = bench_checkpoint(
            ctr, [int(v) for v in args.ckpt_sizes.split(",")], args.ckpt_runs,
            args.ckpt_runs_large,
        )
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
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
