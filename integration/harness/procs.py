"""Probes of ``/proc``: process state, command lines, parents, cgroup v1 freezer state, a
container's processes, its shim, unix sockets and the shim's socket (whether one is live:
:func:`shim.warm.socket_is_live`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ._common import SHIM_SOCKET_DIR


def proc_state(pid: int) -> str | None:
    """The ``State:`` line of ``/proc/<pid>/status`` (e.g. ``"S (sleeping)"``), None if gone.

    A task frozen by the cgroup v1 freezer shows ``"D (disk sleep)"``.
    """
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in text.splitlines():
        if line.startswith("State:"):
            return line.split(":", 1)[1].strip()
    return None


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    state = proc_state(pid)
    return state is not None and not state.startswith(("Z", "X"))


def _proc_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _read_or_empty(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def proc_cmdline(pid: int) -> list[str]:
    """The argv of ``pid`` (empty if gone or a kernel thread)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def parent_pid(pid: int) -> int | None:
    """The ``PPid`` of ``pid``, None if gone."""
    for line in _read_or_empty(f"/proc/{pid}/status").splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return None


def _cgroup_paths(pid: int) -> dict[str, str]:
    """Controller name -> cgroup path, from ``/proc/<pid>/cgroup`` (cgroup v1 and v2 lines)."""
    paths: dict[str, str] = {}
    for line in _read_or_empty(f"/proc/{pid}/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            paths[controller] = parts[2]
    return paths


def freezer_state(pid: int) -> str | None:
    """The cgroup v1 ``freezer.state`` (THAWED/FREEZING/FROZEN) of ``pid``'s cgroup, or None."""
    path = _cgroup_paths(pid).get("freezer")
    if path is None:
        return None
    text = _read_or_empty(f"/sys/fs/cgroup/freezer{path}/freezer.state").strip()
    return text or None


def container_processes(namespace: str, cid: str) -> list[int]:
    """Live processes in the cgroup ``ctr run`` gives a container (``/<namespace>/<cid>``)."""
    suffix = f"/{namespace}/{cid}"
    found = []
    for pid in _proc_pids():
        paths = _cgroup_paths(pid).values()
        if any(p == suffix or p.endswith(suffix) for p in paths) and pid_alive(pid):
            found.append(pid)
    return found


def shim_processes(address: str, cid: str) -> list[int]:
    """Live shim processes serving container ``cid`` for the containerd at ``address``."""
    found = []
    for pid in _proc_pids():
        argv = proc_cmdline(pid)
        if _flag(argv, "-id") == cid and _flag(argv, "-address") == address and pid_alive(pid):
            found.append(pid)
    return found


def stop_daemon(
    proc: subprocess.Popen[bytes], timeout: float = 20, *, name: str = "containerd"
) -> list[str]:
    """SIGTERM a daemon the tests started (a containerd, ``pyrunc cri serve``, a registry)
    and wait for it; SIGKILL it after ``timeout`` seconds. Returns the problem seen, naming
    it ``name`` (empty when it stopped on SIGTERM or was gone)."""
    if proc.poll() is not None:
        return []
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return [f"{name} ignored SIGTERM for {timeout:g}s; SIGKILLed"]
    return []


def shims_of(address: str) -> list[int]:
    """Live shims started for the containerd at ``address`` (``-address`` in their argv)."""
    return [
        pid for pid in _proc_pids()
        if _flag(proc_cmdline(pid), "-address") == address and pid_alive(pid)
    ]


def kill_stray_shims(address: str) -> list[str]:
    """SIGKILL the shims of the containerd at ``address`` that outlived it; one problem line
    each."""
    problems = []
    for pid in shims_of(address):
        problems.append(f"killed stray shim {pid} {proc_cmdline(pid)}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return problems


def _flag(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            return argv[i + 1]
    return None


def unix_socket_paths(pid: int) -> set[str]:
    """Filesystem paths of the unix sockets ``pid`` has open (abstract ones are left out)."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            inodes.add(m.group(1))
    paths = set()
    for line in _read_or_empty("/proc/net/unix").splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[6] in inodes and cols[7].startswith("/"):
            paths.add(cols[7])
    return paths


def shim_binary(runtime: str) -> str:
    """The shim binary containerd runs for ``runtime`` (``io.containerd.X.v2`` ->
    ``containerd-shim-X-v2``)."""
    parts = runtime.split(".")
    return f"containerd-shim-{'-'.join(parts[2:])}"


def shim_socket_path(address: str, namespace: str, cid: str) -> Path:
    """Where a 1.6 shim for ``cid`` puts its socket: ``/run/containerd/s/<sha256>``."""
    digest = hashlib.sha256(f"{address}/{namespace}/{cid}".encode()).hexdigest()
    return SHIM_SOCKET_DIR / digest
