"""The pure parts of hack/bench_load.py: /proc parsing, medians, proc-connector datagrams,
what a traced process is, durations per phase window, the CPU split and the report.

Strategy: hack/ is not a package, so the script is loaded from its path. Inputs are built
by hand in the kernel's formats (smaps_rollup, stat, cn_proc datagrams); nothing touches a
live process or containerd.
"""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "hack" / "bench_load.py"
ADDRESS = "/run/pyrunc-bl-x/c.sock"
NS = "pyrunc-bench-load-abc123"


@pytest.fixture(scope="module")
def bl() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_load", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_load"] = module
    spec.loader.exec_module(module)
    return module


SMAPS_ROLLUP = """\
55d0c0a4b000-7ffc3c1f0000 ---p 00000000 00:00 0                          [rollup]
Rss:               20812 kB
Pss:                8601 kB
Pss_Dirty:          5790 kB
Pss_Anon:           5710 kB
Pss_File:           2891 kB
Pss_Shmem:             0 kB
Shared_Clean:      13120 kB
Shared_Dirty:       1800 kB
Private_Clean:       120 kB
Private_Dirty:      5772 kB
Referenced:        20812 kB
Anonymous:          7512 kB
Swap:                  0 kB
"""


def test_smaps_rollup(bl: ModuleType) -> None:
    assert bl.parse_smaps_rollup(SMAPS_ROLLUP) == {
        "rss_kib": 20812, "pss_kib": 8601, "private_kib": 120 + 5772}


def test_smaps_rollup_without_pss_is_an_error(bl: ModuleType) -> None:
    with pytest.raises(KeyError):
        bl.parse_smaps_rollup("Rss: 10 kB\n")


def test_stat_counts_fields_after_the_last_parenthesis(bl: ModuleType) -> None:
    tck = bl.CLK_TCK
    # a command name with spaces and a ") (" inside; utime 150, stime 50, cutime 30, cstime 10
    fields = ["S", "4242", "7", "7", "0", "-1", "4194560", "100", "0", "0", "0",
              str(150), str(50), str(30), str(10), "20", "0", "1", "0", "12345"]
    text = "1234 (a) (b c) " + " ".join(fields) + "\n"
    ppid, own, children = bl.parse_stat(text)
    assert ppid == 4242
    assert own == pytest.approx(200 / tck)
    assert children == pytest.approx(40 / tck)


def test_session(bl: ModuleType) -> None:
    assert bl.parse_session("77 (x) y) S 1 77 4321 0 -1\n") == 4321


def test_medians_per_key_skip_missing(bl: ModuleType) -> None:
    rounds = [{"a": 3.0, "b": 1.0}, {"a": 1.0}, {"a": 2.0, "b": 5.0}]
    assert bl.medians(rounds) == {"a": 2.0, "b": 3.0}


def test_summary(bl: ModuleType) -> None:
    assert bl.summary([5.0, 1.0, 3.0]) == {"count": 3, "p50": 3.0, "max": 5.0, "sum": 9.0}
    assert bl.summary([]) == {"count": 0, "p50": 0.0, "max": 0.0, "sum": 0.0}


def _event(what: int, stamp: int, ids: tuple[int, ...]) -> bytes:
    """A datagram as the kernel sends it: the proc_event's union is always its full 24 bytes
    (the largest members: exit and comm events)."""
    union = struct.pack(f"={len(ids)}I", *ids)
    body = struct.pack("=IIQ", what, 0, stamp) + union + b"\0" * (24 - len(union))
    cn = struct.pack("=IIIIHH", 1, 1, 0, 0, len(body), 0) + body
    msg = struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, 0) + cn
    return msg + b"\0" * (-len(msg) % 4)


def test_proc_events(bl: ModuleType) -> None:
    data = b"".join([
        _event(bl.PROC_EVENT_FORK, 10, (100, 100, 200, 200)),  # a process
        _event(bl.PROC_EVENT_FORK, 11, (100, 100, 201, 100)),  # a thread: left out
        _event(bl.PROC_EVENT_EXEC, 12, (200, 200)),
        _event(0x4, 13, (200, 200, 0, 0)),  # uid change: left out
        _event(bl.PROC_EVENT_EXIT, 14, (201, 100, 0, 0, 100, 100)),  # a thread's exit
        _event(bl.PROC_EVENT_EXIT, 15, (200, 200, 0, 17, 100, 100)),
    ])
    assert bl.parse_proc_events(data) == [
        ("fork", 10, 200, 100), ("exec", 12, 200, 0), ("exit", 15, 200, 0)]


def test_proc_events_truncated_datagram(bl: ModuleType) -> None:
    whole = _event(bl.PROC_EVENT_EXEC, 12, (200, 200))
    assert bl.parse_proc_events(whole[:-8]) == []
    assert bl.parse_proc_events(b"") == []


PY = "/opt/venv/bin/python"
PYRUNC_START = [PY, "/usr/local/bin/containerd-shim-pyrunc-v2", "-namespace", "pyrunc-bench-load",
                "-address", ADDRESS, "-publish-binary", "/usr/bin/containerd", "-id", "c1",
                "start"]
RUNC_START = ["/usr/bin/containerd-shim-runc-v2", "-namespace", "pyrunc-bench-load", "-address",
              ADDRESS, "-publish-binary", "/usr/bin/containerd", "-id", "c1", "start"]
RUNC_CREATE = ["runc", "--root", f"/run/containerd/runc/{NS}", "--log",
               "/run/x/log.json", "--log-format", "json", "create", "--bundle", "/b", "c1"]


@pytest.mark.parametrize(("argv", "what"), [
    (PYRUNC_START, "start io.containerd.pyrunc.v2"),
    (RUNC_START, "start io.containerd.runc.v2"),
    ([PY, "-S", *PYRUNC_START[1:]], "start io.containerd.pyrunc.v2"),  # a launcher with options
    ([PY, "-I", "-S", *PYRUNC_START[1:]], "start io.containerd.pyrunc.v2"),
    ([*RUNC_START[:-1], "delete"], "delete io.containerd.runc.v2"),
    (RUNC_START[:-1], "daemon io.containerd.runc.v2"),
    (["containerd-shim-pyrunc-v2", "-namespace", "n", "-id", "c", "-address", ADDRESS, "", ""],
     "daemon io.containerd.pyrunc.v2"),  # a daemon's rewritten command line
    ([*PYRUNC_START[:5], "/run/other/c.sock", *PYRUNC_START[6:]], None),  # another containerd
    (["containerd-shim-pyrunc-v2", "forkserver"], None),
    (RUNC_CREATE, "runc create"),
    ([*RUNC_CREATE[:2], "/run/containerd/runc/k8s.io", *RUNC_CREATE[3:]], None),
    ([*RUNC_CREATE[:2], f"/run/containerd/runc/{NS}0", *RUNC_CREATE[3:]], None),  # another run
    (["runc", "--root", f"/run/containerd/runc/{NS}", "delete", "--force", "c1"], "runc delete"),
    (["runc", "init"], None),
    (["criu", "swrk", "3"], "criu"),
    (["sleep", "100000"], None),
    ([], None),
])
def test_classify(bl: ModuleType, argv: list[str], what: str | None) -> None:
    assert bl.classify(argv, ADDRESS, NS) == what


def test_trace_durations(bl: ModuleType) -> None:
    ms = 1_000_000
    records: list[dict[str, Any]] = [
        {"e": "ready"},
        {"e": "exec", "t": 100 * ms, "pid": 10, "ppid": 1, "argv": PYRUNC_START},
        {"e": "exec", "t": 101 * ms, "pid": 11, "ppid": 1, "argv": PYRUNC_START},
        {"e": "fork", "t": 110 * ms, "pid": 20, "ppid": 7},  # by the fork server
        {"e": "fork", "t": 111 * ms, "pid": 21, "ppid": 8},  # by someone else
        {"e": "exit", "t": 113 * ms, "pid": 20},
        # a new fork server of this place (the first went stale) and one request to it
        {"e": "exec", "t": 114 * ms, "pid": 9, "ppid": 1,
         "argv": [PY, "-m", "shim.forkserver", "----"], "ours": True},
        {"e": "fork", "t": 120 * ms, "pid": 22, "ppid": 9},
        {"e": "exit", "t": 125 * ms, "pid": 22},
        # another place's fork server (a test's containerd) and a request to it
        {"e": "exec", "t": 115 * ms, "pid": 6, "ppid": 1,
         "argv": [PY, "-m", "shim.forkserver", "----"]},
        {"e": "fork", "t": 121 * ms, "pid": 23, "ppid": 6},
        {"e": "exit", "t": 130 * ms, "pid": 23},
        {"e": "exit", "t": 140 * ms, "pid": 10},
        {"e": "exit", "t": 161 * ms, "pid": 11},
        {"e": "exec", "t": 150 * ms, "pid": 30, "ppid": 12, "argv": RUNC_CREATE},
        {"e": "exec", "t": 151 * ms, "pid": 31, "ppid": 30, "argv": ["criu", "swrk", "3"]},
        {"e": "exec", "t": 152 * ms, "pid": 32, "ppid": 99, "argv": ["criu", "swrk", "3"]},
        {"e": "exit", "t": 171 * ms, "pid": 31},
        {"e": "exit", "t": 172 * ms, "pid": 32},
        {"e": "exit", "t": 180 * ms, "pid": 30},
        # outside the window: not counted
        {"e": "exec", "t": 900 * ms, "pid": 40, "ppid": 1, "argv": PYRUNC_START},
        {"e": "exit", "t": 950 * ms, "pid": 40},
        {"e": "lost", "n": 0},
    ]
    got = bl.trace_durations(records, ADDRESS, NS, 7, (0, 500 * ms))
    assert got == {
        "criu": {"count": 1, "p50": 20.0, "max": 20.0, "sum": 20.0},
        "forkserver request": {"count": 2, "p50": 4.0, "max": 5.0, "sum": 8.0},
        "runc create": {"count": 1, "p50": 30.0, "max": 30.0, "sum": 30.0},
        "start io.containerd.pyrunc.v2": {"count": 2, "p50": 50.0, "max": 60.0, "sum": 100.0},
    }


def test_trace_critical_path(bl: ModuleType) -> None:
    ms = 1_000_000
    ctr = ["ctr", "--address", ADDRESS, "-n", NS, "c", "restore", "--live", "c1-r", "ref"]
    restore = ["runc", "--root", f"/run/containerd/runc/{NS}", "restore", "--bundle", "/b",
               "c1-r"]
    records: list[dict[str, Any]] = [
        {"e": "exec", "t": 10 * ms, "pid": 5, "ppid": 1, "argv": ctr},
        {"e": "exec", "t": 12 * ms, "pid": 6, "ppid": 1, "argv": PYRUNC_START},
        {"e": "exit", "t": 40 * ms, "pid": 6},
        {"e": "exec", "t": 70 * ms, "pid": 7, "ppid": 3, "argv": restore},
        {"e": "exit", "t": 270 * ms, "pid": 7},
        {"e": "exit", "t": 280 * ms, "pid": 5},
        # another containerd's ctr and a runc of another namespace: not on the path
        {"e": "exec", "t": 11 * ms, "pid": 8, "ppid": 1,
         "argv": ["ctr", "--address", "/other.sock", "-n", NS, "c", "restore", "x", "c2"]},
        {"e": "exit", "t": 15 * ms, "pid": 8},
    ]
    got = bl.trace_durations(records, ADDRESS, NS, 0, (0, 500 * ms))
    assert got["path: 1 ctr to runc"]["p50"] == 60.0
    assert got["path: 2 runc"]["p50"] == 200.0
    assert got["path: 3 runc to ctr's exit"]["p50"] == 10.0
    assert got["ctr"]["count"] == 1
    assert got["runc restore"]["p50"] == 200.0
    assert got["start io.containerd.pyrunc.v2"]["p50"] == 28.0


def test_cpu_delta_splits_the_cgroup(bl: ModuleType) -> None:
    before = {"cgroup": 10.0, "containerd": (1, 2.0, 1.0), "forkservers": {7: (1, 0.5, 0.0)},
              "shims": {50: (1, 0.2, 0.1)}}
    after = {"cgroup": 13.0, "containerd": (1, 2.5, 1.5),
             "forkservers": {8: (1, 0.1, 0.1)},  # 7 went stale, 8 replaced it
             "shims": {50: (1, 0.3, 0.4), 60: (1, 0.4, 0.5)}}  # 60: born in the phase
    got = bl.Cpu.delta(before, after)
    assert got == pytest.approx({
        "total_s": 3.0, "containerd_s": 0.5, "shim_actions_s": 0.5, "shims_s": 0.5,
        "runc_criu_s": 0.8, "forkserver_s": 0.2, "other_s": 0.5})


def test_cpu_delta_without_a_fork_server(bl: ModuleType) -> None:
    sample = {"cgroup": 1.0, "containerd": (1, 0.0, 0.0), "forkservers": {}, "shims": {}}
    got = bl.Cpu.delta(sample, {**sample, "cgroup": 2.0})
    assert got["forkserver_s"] == 0.0
    assert got["other_s"] == 1.0


def _results(bl: ModuleType) -> dict[str, Any]:
    def one(scale: float) -> dict[str, float]:
        row = {"start_s": 2.0 * scale, "checkpoint_s": 4.0 * scale, "restore_s": 3.0 * scale,
               "start_pss_kib": 100 * 1024 * scale, "start_pss_avg_mib": 2.0 * scale,
               "start_rss_kib": 200 * 1024 * scale, "start_rss_avg_mib": 4.0 * scale,
               "start_private_avg_mib": 1.0 * scale, "restore_pss_kib": 120 * 1024 * scale}
        for p in bl.PHASES:
            row.update({f"cpu_{p}_{k}": scale for k in (
                "total_s", "containerd_s", "shim_actions_s", "shims_s", "runc_criu_s",
                "forkserver_s", "other_s")})
        return row

    pyrunc = {**one(1.5), "start_forkserver_pss_kib": 10 * 1024.0,
              "start_forkserver_rss_kib": 25 * 1024.0}
    return {"date": "D", "n": 50, "rounds": 3, "settle_s": 2.0, "load_before": "1 2 3",
            "load_after": "4 5 6", "median": {bl.PYRUNC: pyrunc, bl.RUNC: one(1.0)}}


def test_table_ratios(bl: ModuleType) -> None:
    text = bl.table(_results(bl))
    lines = text.splitlines()
    start = next(line for line in lines if line.startswith("| start: `ctr run -d"))
    assert start.endswith("| 3.00 s | 2.00 s | 1.50x |")
    pss = next(line for line in lines if line.startswith("| 50 shims, sum of PSS"))
    assert pss.endswith("| 150 MiB | 100 MiB | 1.50x |")
    with_fs = next(line for line in lines if "shims + fork server" in line)
    assert with_fs.endswith("| 160 MiB | 100 MiB | 1.60x |")
    assert "load average 1 2 3 before, 4 5 6 after" in text
    cpu_rows = [line for line in lines if line.startswith(("| start | ", "| restore | "))]
    assert len(cpu_rows) == 4


def test_table_with_a_trace(bl: ModuleType) -> None:
    results = _results(bl)
    s = {"count": 50, "p50": 46.0, "max": 300.0, "sum": 2500.0}
    results["trace"] = {
        bl.PYRUNC: {p: {"wall_s": 1.0, "processes_ms": {"start io.containerd.pyrunc.v2": s}}
                    for p in bl.PHASES},
        bl.RUNC: {p: {"wall_s": 1.0, "processes_ms": {"runc create": s}} for p in bl.PHASES},
    }
    lines = bl.table(results).splitlines()
    assert "| start | start shim | 46 / 300 (50) | - |" in lines
    assert "| restore | runc create | - | 46 / 300 (50) |" in lines
