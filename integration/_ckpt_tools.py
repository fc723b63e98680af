"""Helpers of ``test_checkpoint.py``: the ``pyrunc`` tool, direct gRPC checkpoints, probes.

Strategy: the tests drive checkpoints the way users do - ``ctr c checkpoint``/``restore`` and
the ``pyrunc`` tool as a separate process - and, where the tool cannot express a request (it
makes paths absolute and normalises ``..`` away, and accepts only known namespace names),
they send ``pyrunc.v1.CheckpointOptions`` with the tool's own client code
(:mod:`shim.ctl._client`) straight to containerd's Tasks/Checkpoint, to see the shim's own
refusal and its gRPC status code.

Observing processes: a process restored by ``ctr c restore --live`` writes its stdout to
ctr's FIFOs, which nobody reads once ctr has exited. So the programs here write into a file
on the container's ``/dev/shm`` (a tmpfs in ctr's default spec, whose contents CRIU dumps
and restores) and the tests read that file with ``ctr t exec`` (:func:`read_in_container`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import os
import signal
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shim.api.pyrunc.v1 import checkpoint_pb2
from shim.checkpoint.criu import Criu, CriuFeatures, criu_binary, probe
from shim.ctl._client import connect
from shim.ctl._errors import CtlError
from shim.reaper import Reaper
from shim.typeurl import pack

from .harness import (
    NAMESPACE,
    REPO,
    Containerd,
    Ctr,
    parent_pid,
    proc_cmdline,
    pyrunc_argv,
    pyrunc_env,
    run_pyrunc,
)

__all__ = [
    "FileInfo",
    "Refusal",
    "checkpoint_rpc",
    "counter_values",
    "criu_features",
    "freezer_state_file",
    "kill_at_write",
    "popen_pyrunc",
    "read_in_container",
    "refusal_line",
    "run_pyrunc",
    "runc_criu_pids",
    "tree_snapshot",
]


def popen_pyrunc(
    containerd: Containerd, *args: str, namespace: str = NAMESPACE
) -> subprocess.Popen[str]:
    """:func:`run_pyrunc` in the background (the caller communicates and reaps it)."""
    return subprocess.Popen(
        pyrunc_argv(containerd, *args, namespace=namespace),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=pyrunc_env(),
    )


def refusal_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The tool refused cleanly: status 1, no stdout, one ``pyrunc: ...`` line; returns it."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "", proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyrunc: "), proc.stderr
    return lines[0]


@dataclass(frozen=True, slots=True)
class Refusal:
    """What containerd answered a Tasks/Checkpoint with: gRPC status name and message."""

    code: str
    message: str


def checkpoint_rpc(
    address: str, container_id: str, namespace: str = NAMESPACE, **fields: Any
) -> Refusal | None:
    """Tasks/Checkpoint with ``pyrunc.v1.CheckpointOptions(**fields)``, sent with the tool's
    client code; None on success, else the :class:`Refusal`."""
    options = pack(checkpoint_pb2.CheckpointOptions(**fields))
    try:
        with connect(address, namespace) as client:
            client.checkpoint(container_id, options)
    except CtlError as exc:
        return Refusal(exc.code, exc.details)
    return None


_features: list[CriuFeatures] = []


def criu_features() -> CriuFeatures:
    """CRIU's FEATURE_CHECK answer on this host (asked once per test session)."""
    if not _features:

        async def ask() -> CriuFeatures:
            reaper = Reaper()
            reaper.install(asyncio.get_running_loop())
            async with asyncio.timeout(60):
                _, features = await probe(Criu(reaper, criu_binary("")))
            return features

        _features.append(asyncio.run(ask()))
    return _features[0]


def runc_criu_pids(container_id: str, images_dir: str | os.PathLike[str] = "") -> list[int]:
    """The ``criu`` processes that ``runc checkpoint ... container_id`` started.

    runc starts CRIU twice, first to ask its version, then for the dump; only the dump gets
    the images directory as an open descriptor, so with ``images_dir`` only that one is
    returned. Processes are matched by ``comm`` (while CRIU dumps, reading its ``cmdline``
    can come back empty), their parent by its command line.
    """
    found = []
    target = os.fspath(images_dir)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "criu":
                continue
            opened = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:
            continue
        if target and target not in opened:
            continue
        ppid = parent_pid(pid)
        runc = proc_cmdline(ppid) if ppid else []
        if (
            runc
            and os.path.basename(runc[0]) == "runc"
            and "checkpoint" in runc
            and container_id in runc
        ):
            found.append(pid)
    return found


def freezer_state_file(pid: int) -> Path:
    """The cgroup v1 ``freezer.state`` file of ``pid``'s cgroup (to poll it cheaply)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "freezer" in controllers.split(","):
            return Path(f"/sys/fs/cgroup/freezer{path}/freezer.state")
    raise AssertionError(f"process {pid} is in no freezer cgroup")


# ptrace(2), x86_64 (linux/ptrace.h)
_PTRACE_SYSCALL: Final = 24
_PTRACE_SEIZE: Final = 0x4206
_PTRACE_INTERRUPT: Final = 0x4207
_PTRACE_GET_SYSCALL_INFO: Final = 0x420E
_PTRACE_O_TRACESYSGOOD: Final = 1
_PTRACE_EVENT_STOP: Final = 128
_PTRACE_SYSCALL_INFO_ENTRY: Final = 1
_SYS_WRITE: Final = 1  # x86_64
_WALL: Final = 0x40000000


class _SyscallInfo(ctypes.Structure):
    _fields_ = [
        ("op", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("stack_pointer", ctypes.c_uint64),
        ("nr", ctypes.c_uint64),
        ("args", ctypes.c_uint64 * 6),
        ("ret_data", ctypes.c_uint32),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def _ptrace(request: int, pid: int, addr: int = 0, data: int | ctypes.c_void_p = 0) -> int:
    result = int(
        _libc.ptrace(
            request,
            pid,
            ctypes.c_void_p(addr),
            data if isinstance(data, ctypes.c_void_p) else ctypes.c_void_p(data),
        )
    )
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request:#x}, {pid}): {os.strerror(err)}")
    return result


def _is_write_of(pid: int, info: _SyscallInfo, path: str, prefix: bytes) -> bool:
    if info.op != _PTRACE_SYSCALL_INFO_ENTRY or info.nr != _SYS_WRITE:
        return False
    fd, buf, count = info.args[0], info.args[1], info.args[2]
    try:
        if os.readlink(f"/proc/{pid}/fd/{fd}") != path:
            return False
        with open(f"/proc/{pid}/mem", "rb") as mem:
            mem.seek(buf)
            return mem.read(min(count, len(prefix))) == prefix
    except OSError:
        return False


def kill_at_write(pid: int, path: str, prefix: bytes) -> bool:
    """Follow ``pid``'s system calls (ptrace) and SIGKILL it as it enters a ``write()`` of
    ``prefix`` to the file ``path``, so that this write never happens.

    Returns:
        True if it was killed there; False if it ended (or could not be traced) first.
    """
    try:
        _ptrace(_PTRACE_SEIZE, pid, 0, _PTRACE_O_TRACESYSGOOD)
        _ptrace(_PTRACE_INTERRUPT, pid)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return False
        raise
    info = _SyscallInfo()
    while True:
        try:
            _, status = os.waitpid(pid, _WALL)
        except ChildProcessError:
            return False
        if not os.WIFSTOPPED(status):
            return False  # exited or killed
        sig = os.WSTOPSIG(status)
        deliver = 0
        if sig == signal.SIGTRAP | 0x80:  # a system call stop
            _ptrace(
                _PTRACE_GET_SYSCALL_INFO,
                pid,
                ctypes.sizeof(info),
                ctypes.c_void_p(ctypes.addressof(info)),
            )
            if _is_write_of(pid, info, path, prefix):
                os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, _WALL)
                return True
        elif status >> 16 != _PTRACE_EVENT_STOP:
            deliver = sig  # a signal for the tracee: hand it over
        try:
            _ptrace(_PTRACE_SYSCALL, pid, 0, deliver)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return False
            raise


@dataclass(frozen=True, slots=True)
class FileInfo:
    """Size, mode, mtime and content hash of one file (to show it was not touched)."""

    size: int
    mode: int
    mtime_ns: int
    sha256: str


def tree_snapshot(root: Path) -> Mapping[str, FileInfo]:
    """Every file under ``root`` (relative path -> :class:`FileInfo`)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path.relative_to(root))] = FileInfo(
                st.st_size, st.st_mode, st.st_mtime_ns, digest
            )
    return out


def read_in_container(ctr: Ctr, container_id: str, path: str, *, fifo_dir: Path) -> str:
    """``cat path`` inside the container (``ctr t exec``, a fresh exec id each time)."""
    exec_id = f"cat-{uuid.uuid4().hex[:8]}"
    proc = ctr(
        "tasks",
        "exec",
        "--fifo-dir",
        str(fifo_dir),
        "--exec-id",
        exec_id,
        container_id,
        "cat",
        path,
        timeout=30,
    )
    return proc.stdout


def counter_values(text: str) -> list[int]:
    """The numbers ``counter`` wrote, complete lines only."""
    lines = text.split("\n")[:-1]
    return [int(line) for line in lines]
