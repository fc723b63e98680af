#!/usr/bin/env python3
"""Side-by-side benchmark of containerd-shim-pyrunc and the reference runc shim.

The same ctr workload runs for ``io.containerd.pyrunc.v2`` and ``io.containerd.runc.v2`` in one
run, alternating between them so that machine noise hits both alike; results are medians and
ratios (absolute times on this machine are noisy, ratios much less). Memory is read from
``/proc/<shim pid>/status`` (VmRSS) and ``smaps_rollup`` (Pss: shared library pages split among
the processes that map them).

Usage (root, containerd running, test image imported by hack/install.sh):
    hack/bench.py [--address SOCK] [--runs N] [--out FILE] [--readme]
``--readme`` rewrites the table between the BENCH markers in README.md from the results.
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

    def timed(self, *args: str) -> float:
        start = time.perf_counter()
        self(*args)
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


def update_readme(text: str) -> None:
    readme = ROOT / "README.md"
    body = readme.read_text()
    start, end = "<!-- BENCH:START -->", "<!-- BENCH:END -->"
    block = f"{start}\n{text}\n{end}"
    if start in body and end in body:
        before, rest = body.split(start, 1)
        after = rest.split(end, 1)[1]
        body = before + block + after
    else:
        body = body.replace("## Benchmarks\n", f"## Benchmarks\n\n{block}\n", 1)
    readme.write_text(body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="/run/containerd/containerd.sock")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--group-size", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "build" / "bench-results.json"))
    parser.add_argument("--readme", action="store_true", help="update README.md's table")
    parser.add_argument("--skip-ttrpc", action="store_true")
    args = parser.parse_args()
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
        "lifecycle": bench_lifecycle(ctr, args.runs),
        "memory": bench_memory(ctr, args.group_size),
    }
    if not args.skip_ttrpc:
        results["ttrpc"] = bench_ttrpc()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    print(text)
    if args.readme:
        update_readme(text)
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
