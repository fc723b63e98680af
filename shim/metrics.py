"""cgroup v1 statistics of a container as ``io.containerd.cgroups.v1.Metrics``.

Strategy: mirrors containerd/cgroups ``stats/v1`` as the runc shim fills it. The container's
cgroup directories come from :mod:`shim.cgroups`. Files that a kernel does not offer are
skipped, never guessed.
"""

from __future__ import annotations

from pathlib import Path

from shim.api.cgroups.v1 import metrics_pb2 as m
from shim.cgroups import controller_paths
from shim.errors import NotFound

__all__ = ["collect"]

def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _int(path: Path) -> int:
    text = _read(path)
    if text is None:
        return 0
    text = text.strip()
    if text == "max":
        return 0
    try:
        return int(text)
    except ValueError:
        return 0


def _kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def collect(cgroups_path: str, pid: int) -> m.Metrics:
    """Read the container's cgroup v1 statistics.

    Raises:
        NotFound: the container's cgroup does not exist (any more).
    """
    paths = controller_paths(cgroups_path, pid)
    memory = paths.get("memory")
    if memory is None or not memory.is_dir():
        raise NotFound("cgroup does not exist")
    metrics = m.Metrics()
    if (pids := paths.get("pids")) is not None and pids.is_dir():
        metrics.pids.current = _int(pids / "pids.current")
        metrics.pids.limit = _int(pids / "pids.max")
    if (cpuacct := paths.get("cpuacct")) is not None and cpuacct.is_dir():
        usage = metrics.cpu.usage
        usage.total = _int(cpuacct / "cpuacct.usage")
        per_cpu = _read(cpuacct / "cpuacct.usage_percpu") or ""
        usage.per_cpu.extend(int(v) for v in per_cpu.split())
        stat = _kv(cpuacct / "cpuacct.stat")
        ns_per_tick = 10_000_000  # USER_HZ = 100
        usage.user = stat.get("user", 0) * ns_per_tick
        usage.kernel = stat.get("system", 0) * ns_per_tick
    if (cpu := paths.get("cpu")) is not None and cpu.is_dir():
        stat = _kv(cpu / "cpu.stat")
        metrics.cpu.throttling.periods = stat.get("nr_periods", 0)
        metrics.cpu.throttling.throttled_periods = stat.get("nr_throttled", 0)
        metrics.cpu.throttling.throttled_time = stat.get("throttled_time", 0)
    _memory(metrics.memory, memory)
    oom = _kv(memory / "memory.oom_control")
    metrics.memory_oom_control.oom_kill_disable = oom.get("oom_kill_disable", 0)
    metrics.memory_oom_control.under_oom = oom.get("under_oom", 0)
    metrics.memory_oom_control.oom_kill = oom.get("oom_kill", 0)
    return metrics


def _memory(stat: m.MemoryStat, path: Path) -> None:
    values = _kv(path / "memory.stat")
    renames = {"pgpgin": "pg_pg_in", "pgpgout": "pg_pg_out", "pgfault": "pg_fault",
               "pgmajfault": "pg_maj_fault"}
    for key, value in values.items():
        prefix = "total_" if key.startswith("total_") else ""
        base = key.removeprefix("total_")
        name = prefix + renames.get(base, base)
        if name in m.MemoryStat.DESCRIPTOR.fields_by_name and name not in (
            "usage", "swap", "kernel", "kernel_tcp"
        ):
            setattr(stat, name, value)
    for entry, prefix in (
        (stat.usage, "memory"),
        (stat.swap, "memory.memsw"),
        (stat.kernel, "memory.kmem"),
        (stat.kernel_tcp, "memory.kmem.tcp"),
    ):
        entry.usage = _int(path / f"{prefix}.usage_in_bytes")
        entry.limit = _int(path / f"{prefix}.limit_in_bytes")
        entry.max = _int(path / f"{prefix}.max_usage_in_bytes")
        entry.failcnt = _int(path / f"{prefix}.failcnt")
