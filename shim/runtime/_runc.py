"""argv building and running of the OCI runtime CLI (runc by default, crun alike).

Strategy: mirrors go-runc ``runc.go``: one method per runtime command, each renders its argv
from typed arguments in a fixed order and runs it through :mod:`shim.spawn` (so the one reaper
sees it). The commands with many options take them as a frozen value whose ``args()`` renders
them (go-runc's ``CreateOpts``/``RestoreOpts``); runc's own flags (``--bundle``,
``--pid-file``, ``--console-socket``, ``--detach``, ``--no-pivot``, ...) are rendered here and
nowhere else, while the CRIU-related flags of ``checkpoint``/``restore`` come rendered from the
checkpoint plan (:func:`shim.checkpoint.plan.checkpoint_args`/``restore_args``). Global flags
(``--root <root>/<ns> --log <bundle>/log.json --log-format json
[--criu P] [--systemd-cgroup]``) come from :class:`RuntimeConfig`. Failures raise typed shim
errors carrying the runtime's own last log line; the runtime's error text is matched only in
:func:`classify_error`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Protocol

from shim.errors import FailedPrecondition, NotFound, ShimError
from shim.reaper import Reaper
from shim.spawn import Child, Result, run, spawn

__all__ = [
    "CreateOpts",
    "RestoreOpts",
    "Runc",
    "Runtime",
    "RuntimeConfig",
    "Stdio",
    "classify_error",
    "last_log_error",
]

DEFAULT_ROOT = "/run/containerd/runc"
_TIMEOUT = 60.0
CRIU_TIMEOUT_ENV = "PYRUNC_CRIU_TIMEOUT"
_CRIU_TIMEOUT = 600.0  # a dump or restore of a large container takes a while


def criu_timeout() -> float:
    """How long a dump or restore may take when the request brings no deadline of its own:
    ``PYRUNC_CRIU_TIMEOUT`` seconds from the shim's environment (containerd's), else 600."""
    try:
        value = float(os.environ.get(CRIU_TIMEOUT_ENV, ""))
    except ValueError:
        return _CRIU_TIMEOUT
    return value if value > 0 else _CRIU_TIMEOUT


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """What selects and configures the runtime binary (from ``containerd.runc.v1.Options``)."""

    binary: str = "runc"
    root: str = DEFAULT_ROOT
    namespace: str = "default"
    criu_path: str = ""
    systemd_cgroup: bool = False


@dataclass(frozen=True, slots=True)
class Stdio:
    """The fds a runtime call hands to the container process as 0, 1, 2 (None = /dev/null)."""

    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None


@dataclass(frozen=True, slots=True)
class CreateOpts:
    """``runc create``'s options (go-runc ``CreateOpts``)."""

    bundle: Path
    pid_file: Path
    console_socket: str | None = None
    no_pivot: bool = False
    no_new_keyring: bool = False

    def args(self) -> list[str]:
        """``--bundle B --pid-file P [--console-socket S] [--no-pivot] [--no-new-keyring]``."""
        argv = ["--bundle", str(self.bundle), "--pid-file", str(self.pid_file)]
        if self.console_socket:
            argv += ["--console-socket", self.console_socket]
        if self.no_pivot:
            argv.append("--no-pivot")
        if self.no_new_keyring:
            argv.append("--no-new-keyring")
        return argv


@dataclass(frozen=True, slots=True)
class RestoreOpts:
    """``runc restore``'s options (go-runc ``RestoreOpts``): the CRIU-related flags as the
    checkpoint plan rendered them, and runc's own. A restore always detaches and never makes
    runc a subreaper (the shim is the restored init's subreaper)."""

    bundle: Path
    pid_file: Path
    criu_args: tuple[str, ...] = ()
    console_socket: str | None = None
    no_pivot: bool = False

    def args(self) -> list[str]:
        """``<criu args> --detach --pid-file P --bundle B [--console-socket S] [--no-pivot]
        --no-subreaper``."""
        argv = [*self.criu_args, "--detach", "--pid-file", str(self.pid_file)]
        argv += ["--bundle", str(self.bundle)]
        if self.console_socket is not None:
            argv += ["--console-socket", self.console_socket]
        if self.no_pivot:
            argv.append("--no-pivot")
        argv.append("--no-subreaper")
        return argv


def last_log_error(log_path: Path, offset: int = 0) -> str:
    """Return the message of the last error line of a runtime's JSON log after byte
    ``offset`` (so an old failure is never reported for a new one), or ""."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            lines = f.read().splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            return str(entry.get("msg", ""))
    return ""


def classify_error(message: str) -> type[ShimError]:
    """Pick the error class for a runtime failure message (the one place runc text is read)."""
    lowered = message.lower()
    if (
        "container not running" in lowered
        or "process already finished" in lowered
        or "does not exist" in lowered
        or "no such process" in lowered
    ):
        return NotFound
    if "container is paused" in lowered or "not paused" in lowered:
        return FailedPrecondition
    return ShimError


class Runtime(Protocol):
    """What the shim asks of an OCI runtime: :class:`Runc` (runc, crun), or a test's fake.
    One method per runtime command, as go-runc's ``Runc``."""

    config: RuntimeConfig

    def log_offset(self) -> int: ...
    def raise_for(self, command: str, result: Result, log_offset: int) -> NoReturn: ...
    async def create(self, cid: str, opts: CreateOpts, stdio: Stdio) -> None: ...
    async def start(self, cid: str) -> None: ...
    async def exec(
        self,
        cid: str,
        process_json: Path,
        pid_file: Path,
        stdio: Stdio,
        *,
        console_socket: str | None = None,
    ) -> None: ...
    async def kill(self, cid: str, signal: int, *, all: bool = False) -> None: ...
    async def delete(self, cid: str, *, force: bool = False) -> None: ...
    async def pause(self, cid: str) -> None: ...
    async def resume(self, cid: str) -> None: ...
    async def update(self, cid: str, resources_json: bytes) -> None: ...
    async def checkpoint(
        self, cid: str, criu_args: Sequence[str], *, extra_fds: Sequence[int] = ()
    ) -> None: ...
    def spawn_checkpoint(
        self, cid: str, criu_args: Sequence[str], *, extra_fds: Sequence[int] = ()
    ) -> Child: ...
    async def restore(self, cid: str, opts: RestoreOpts, stdio: Stdio) -> None: ...
    async def ps(self, cid: str) -> list[int]: ...


class Runc:
    """One runtime binary with its global flags, bound to one bundle's log file."""

    def __init__(self, reaper: Reaper, config: RuntimeConfig, bundle: Path) -> None:
        self._reaper = reaper
        self.config = config
        self.log_path = bundle / "log.json"

    @property
    def state_root(self) -> str:
        return os.path.join(self.config.root, self.config.namespace)

    def globals(self) -> list[str]:
        argv = [
            self.config.binary,
            "--root",
            self.state_root,
            "--log",
            str(self.log_path),
            "--log-format",
            "json",
        ]
        if self.config.criu_path:
            argv += ["--criu", self.config.criu_path]
        if self.config.systemd_cgroup:
            argv.append("--systemd-cgroup")
        return argv

    async def _run(
        self,
        args: Sequence[str],
        *,
        stdio: Stdio | None = None,
        input: bytes | None = None,
        extra_fds: Sequence[int] = (),
        timeout: float = _TIMEOUT,
    ) -> Result:
        argv = [*self.globals(), *args]
        offset = self.log_offset()
        if stdio is None:
            result = await run(
                self._reaper, argv, input=input, extra_fds=extra_fds, timeout=timeout
            )
        else:
            # The container process inherits these fds; nothing of ours to capture.
            result = await run(
                self._reaper,
                argv,
                stdin=stdio.stdin,
                stdout=stdio.stdout,
                stderr=stdio.stderr,
                extra_fds=extra_fds,
                timeout=timeout,
            )
        if result.status != 0:
            self.raise_for(args[0], result, offset)
        return result

    def log_offset(self) -> int:
        """Where the runtime's log ends now; errors are read from there after a call."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def raise_for(self, command: str, result: Result, log_offset: int) -> NoReturn:
        """Raise the typed error for a failed runtime call (see :func:`classify_error`),
        with the runtime's own last error from its log after ``log_offset``."""
        message = last_log_error(self.log_path, log_offset) or (
            result.stderr.decode(errors="replace").strip().splitlines() or [""]
        )[-1]
        message = message or f"exit status {result.status}"
        cls = classify_error(message)
        raise cls(f"{self.config.binary} {command} failed: {message}")

    async def create(self, cid: str, opts: CreateOpts, stdio: Stdio) -> None:
        await self._run(["create", *opts.args(), cid], stdio=stdio)

    async def start(self, cid: str) -> None:
        await self._run(["start", cid])

    async def exec(
        self,
        cid: str,
        process_json: Path,
        pid_file: Path,
        stdio: Stdio,
        *,
        console_socket: str | None = None,
    ) -> None:
        args = ["exec", "--detach", "--pid-file", str(pid_file), "--process", str(process_json)]
        if console_socket:
            args += ["--console-socket", console_socket]
        await self._run([*args, cid], stdio=stdio)

    async def kill(self, cid: str, signal: int, *, all: bool = False) -> None:
        args = ["kill", *(["--all"] if all else []), cid, str(signal)]
        await self._run(args)

    async def delete(self, cid: str, *, force: bool = False) -> None:
        await self._run(["delete", *(["--force"] if force else []), cid])

    async def pause(self, cid: str) -> None:
        await self._run(["pause", cid])

    async def resume(self, cid: str) -> None:
        await self._run(["resume", cid])

    async def update(self, cid: str, resources_json: bytes) -> None:
        await self._run(["update", "--resources", "-", cid], input=resources_json)

    async def checkpoint(
        self, cid: str, criu_args: Sequence[str], *, extra_fds: Sequence[int] = ()
    ) -> None:
        """``runc checkpoint``: ``criu_args`` as rendered by the checkpoint plan;
        ``extra_fds`` become fds 3, 4, ..."""
        args = ["checkpoint", *criu_args, cid]
        await self._run(args, extra_fds=extra_fds, timeout=criu_timeout())

    def spawn_checkpoint(
        self, cid: str, criu_args: Sequence[str], *, extra_fds: Sequence[int] = ()
    ) -> Child:
        """Start ``runc checkpoint`` without waiting: a lazy-pages dump serves memory until
        the restoring side has fetched it all, long after the dump is ready."""
        argv = [*self.globals(), "checkpoint", *criu_args, cid]
        return spawn(self._reaper, argv, extra_fds=extra_fds)

    async def restore(self, cid: str, opts: RestoreOpts, stdio: Stdio) -> None:
        """``runc restore``; ``stdio`` is re-attached by CRIU to the restored process in
        place of the pipes it had at dump time."""
        await self._run(["restore", *opts.args(), cid], stdio=stdio, timeout=criu_timeout())

    async def ps(self, cid: str) -> list[int]:
        result = await self._run(["ps", "--format", "json", cid])
        pids = json.loads(result.stdout or b"[]")
        return [int(p) for p in pids or []]


_RUNC_IS_A_RUNTIME: type[Runtime] = Runc  # mypy holds Runc to the protocol
