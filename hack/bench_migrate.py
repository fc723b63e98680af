#!/usr/bin/env python3
"""Migration benchmark: downtime and total time of post-copy (lazy) vs stop-and-copy.

Usage (root; hack/install.sh has run): hack/bench_migrate.py [--sizes 256,512,1024,2048]
[--runs 5] [--methods lazy,stop-and-copy] [--json]; also run by ``hack/bench.py --sections
migration``.

Strategy: the integration tests' world (``integration/_migrate_lab.py``): two containerd hosts,
each in its own network namespace with a ``pyrunc agent`` on TCP with mutual TLS, one L2
segment, a client namespace. Per size, one container holds ``memfill <MiB>`` of random data
(as a child of ``net-seq``, which answers the client) and moves back and forth ``--runs``
times per method with ``pyrunc migrate --tcp-established --json``; the figures are the
report's ``downtime_us`` (source frozen -> destination running) and ``total_us``, and, from a
client thread that exchanges one checked record with net-seq every 10 ms over one TCP
connection, the longest gap between two answers around each move (what a client sees,
retransmission back-off included), and where the downtime went (the report's ``phases``).
p50 of the runs. memfill verifies its memory at the end
(SIGUSR1 -> ``verify ok``), so a figure of an untouched or damaged memory cannot pass.
No test asserts a time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from integration._migrate_lab import Host, World, start_in, two_hosts  # noqa: E402
from integration._net_seq import SeqClient  # noqa: E402
from integration.harness import wait_until  # noqa: E402

METHODS = ("lazy", "stop-and-copy")
PORT = 7000
POLL_S = 0.010


class Poller:
    """One record every 10 ms over one connection; answer times kept."""

    def __init__(self, client: SeqClient) -> None:
        self.client = client
        self.times: list[float] = []
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.client.exchange(1, timeout=120)
            except (AssertionError, OSError) as exc:
                self.error = str(exc)
                return
            self.times.append(time.monotonic())
            time.sleep(POLL_S)

    def gap(self, start: float, end: float) -> float:
        """The longest time without an answer between ``start`` and ``end`` (seconds)."""
        ts = [start, *[t for t in self.times if start < t <= end], end]
        return max(b - a for a, b in itertools.pairwise(ts))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=150)


def one_size(world: World, mib: int, runs: int, index: int,
             methods: tuple[str, ...] = METHODS) -> dict[str, Any]:
    script = f"/usr/bin/memfill {mib} 7 & exec /usr/bin/net-seq {PORT}"
    ip = f"{world.subnet}.{10 + index}"  # a new address and veth per size
    cid, box = start_in(world, world.a, f"bench-{mib}", "sh", "-c", script, wired=True,
                        octet=10 + index, veth=f"v{index}")
    holder: Host = world.a
    first_log = box.log_path(cid)

    def log() -> str:
        return first_log.read_text() if holder is world.a and not moved else holder.task_log(cid)

    def memfill_pid() -> int:
        init = holder.ctr.task(cid)
        assert init is not None
        (pid,) = [p.pid for p in holder.ctr.ps(cid) if p.pid != init.pid]
        return pid

    moved = False

    wait_until(lambda: f"filled {mib} MiB" in log(), 300, interval=0.5,
               message=f"memfill to fill {mib} MiB")
    client = SeqClient.connect(world.client_ns, ip, PORT)
    client.exchange(10)
    poller = Poller(client)
    out: dict[str, Any] = {}
    try:
        for method in methods:
            rows = []
            for _ in range(runs):
                dst = world.other(holder)
                time.sleep(0.5)
                start = time.monotonic()
                proc = world.migrate(cid, holder, dst, "--tcp-established", method=method,
                                     timeout=900)
                end = time.monotonic()
                if proc.returncode != 0:
                    time.sleep(2)  # the agent keeps CRIU's logs once post-copy has ended
                    kept = tempfile.mkdtemp(prefix=f"bench-migrate-failed-{mib}-")
                    for host in (world.a, world.b):
                        (Path(kept) / host.name).mkdir()
                        # the agent's logs, and those pyrunc migrate kept there as a source
                        for logs in (host.work_dir / "logs", host.work_dir / "out" / "logs"):
                            if logs.is_dir():
                                shutil.copytree(logs, Path(kept) / host.name,
                                                dirs_exist_ok=True)
                        if host.agent_log.is_file():
                            shutil.copy(host.agent_log, Path(kept) / host.name)
                    raise SystemExit(f"{method} {mib} MiB failed (exit {proc.returncode}; "
                                     f"logs kept in {kept}): {proc.stderr}{proc.stdout}")
                report = json.loads(proc.stdout)
                m = report["migration"]
                criu = report["container_statistics"][0]["criu_statistics"]
                holder, moved = dst, True
                time.sleep(0.5)  # let the poller's next answer arrive
                rows.append({"downtime_s": m["downtime_us"] / 1e6, "total_s": m["total_us"] / 1e6,
                             "postcopy_s": m["postcopy_complete_us"] / 1e6,
                             "transfer_mib": m["transfer_bytes"] / 2**20,
                             "client_gap_s": poller.gap(start, end + 0.5),
                             "wall_s": end - start, "phases_us": m.get("phases", {}),
                             "criu_frozen_ms": criu["frozen_time"] / 1e3 if method != "lazy"
                             else None,
                             "criu_restore_ms": criu["restore_time"] / 1e3})
                if poller.error:
                    raise SystemExit(f"the client's connection broke: {poller.error}")
            out[method] = {
                "runs": rows,
                **{f"{k}_p50": statistics.median(r[k] for r in rows)
                   for k in ("downtime_s", "total_s", "client_gap_s", "transfer_mib")},
            }
            print(f"{mib:5d} MiB {method:14s} downtime p50 {out[method]['downtime_s_p50']:.3f} s"
                  f"  total p50 {out[method]['total_s_p50']:.3f} s  client gap p50 "
                  f"{out[method]['client_gap_s_p50']:.3f} s", file=sys.stderr, flush=True)
            print("      frozen window, p50 per phase (ms): " + "  ".join(
                f"{name.removeprefix('frozen:')} {ms:.0f}"
                for name, ms in frozen_phases(rows).items()), file=sys.stderr, flush=True)
        before = log().count("verify ok")
        os.kill(memfill_pid(), signal.SIGUSR1)
        wait_until(lambda: log().count("verify ok") > before or "FAILED" in log(), 300,
                   interval=0.5, message="memfill to verify")
        out["memory_verified"] = "FAILED" not in log()
    finally:
        poller.stop()
        client.close()
        for host in (world.a, world.b):  # wherever it is, also after a failed move
            host.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
            host.ctr("tasks", "rm", "-f", cid, check=False)
            host.ctr("containers", "rm", cid, check=False)
    return out


def criu_can_cache() -> bool:
    """Whether CRIU (as root) keeps what it probed of the kernel: it writes ``criu.kdat``
    only on a tmpfs, in the directory it was built with (``/run``, or ``/run/criu`` as
    hack/install.sh builds it and mounts a tmpfs there). Without it every CRIU run probes
    again, which runs iptables, ip6tables and a shell: ~30 ms per run measured here
    (``criu check`` 0.04-0.05 s without, 0.01-0.03 s with the cache), and a lazy move's
    window holds four CRIU runs (runc's lazy-pages feature check, the dump, ``criu
    lazy-pages``, the restore)."""
    return any(os.path.exists(os.path.join(d, "criu.kdat")) for d in ("/run/criu", "/run"))


def _p50(rows: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def _load(avg: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in avg)


def frozen_phases(rows: list[dict[str, Any]]) -> dict[str, float]:
    """p50 over the runs of each phase inside the frozen window (milliseconds)."""
    names = [n for n in rows[0]["phases_us"] if n.startswith("frozen:")]
    return {n: statistics.median(r["phases_us"].get(n, 0) for r in rows) / 1e3 for n in names}


def table(results: dict[str, Any]) -> str:
    rows = [
        f"Live migration ({results['date']}, `hack/bench.py --sections migration`, "
        f"p50 of {results['runs']} moves each, memfill of random data, two containerd hosts "
        "in network namespaces on one machine, agent over mutual TLS, `--tcp-established`"
        + (f"; load average {_load(results['load_before'])} before, "
           f"{_load(results['load_after'])} after" if "load_before" in results else "")
        + ("" if results.get("criu_kdat_cache", True) else
           "; CRIU has no cache of its kernel probes here (criu.kdat: kept only on a tmpfs), so "
           "every CRIU run probes again")
        + "):",
        "",
        "| memory | method | downtime | total | client gap (TCP, 10 ms polls) | moved |",
        "|---|---|---|---|---|---|",
    ]
    for mib, r in results["sizes"].items():
        if "error" in r:
            rows.append(f"| {mib} MiB | FAILED: {r['error'].splitlines()[0][:200]} | | | | |")
            continue
        for method in METHODS:
            if method not in r:
                continue
            m = r[method]
            rows.append(f"| {mib} MiB | {method} | {m['downtime_s_p50']:.3f} s | "
                        f"{m['total_s_p50']:.3f} s | {m['client_gap_s_p50']:.3f} s | "
                        f"{m['transfer_mib_p50']:.0f} MiB |")
    rows += ["", "Inside the downtime, p50 per phase in ms (the report's `migration.phases`; "
             "`agent:` = the destination's agent):", ""]
    for mib, r in results["sizes"].items():
        for method in METHODS:
            if method not in r:
                continue
            runs = r[method]["runs"]
            phases = frozen_phases(runs)
            criu = [f"restore_time {_p50(runs, 'criu_restore_ms'):.0f}"]
            if method != "lazy":  # CRIU writes no usable dump statistics for a lazy dump
                criu.insert(0, f"dump frozen_time {_p50(runs, 'criu_frozen_ms'):.0f}")
            rows.append(f"- {mib} MiB {method}: " + ", ".join(
                f"{name.removeprefix('frozen:')} {ms:.0f}" for name, ms in phases.items())
                + f" (CRIU's own statistics: {', '.join(criu)})")
    verified = all(r.get("memory_verified") for r in results["sizes"].values()
                   if "error" not in r)
    rows += ["", "memfill verified its memory after the moves: "
             + ("yes, every size" if verified else "NO (see the JSON)")]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512,1024,2048")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated, of: " + ", ".join(METHODS))
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": args.runs,
                               "load_before": list(os.getloadavg()),
                               "criu_kdat_cache": criu_can_cache(), "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as tmp, two_hosts(Path(tmp)) as w:
        for index, mib in enumerate(int(s) for s in args.sizes.split(",")):
            try:
                results["sizes"][str(mib)] = one_size(w, mib, args.runs, index,
                                                      tuple(args.methods.split(",")))
            except SystemExit as exc:  # a failed move: reported, the other sizes still run
                print(exc, file=sys.stderr, flush=True)
                results["sizes"][str(mib)] = {"error": str(exc)[:2000]}
    results["load_after"] = list(os.getloadavg())
    print(json.dumps(results, indent=1) if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
