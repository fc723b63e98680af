"""A fake OCI runtime for unit tests: implements :class:`shim.runtime.Runtime` (mypy checks it
with the assignment at the bottom) without runc, CRIU or root.

``create``/``restore`` start a real ``sleep`` (not through the reaper, as runc's container
process is not the shim's child by spawn either) and write its pid where runc would; ``kill``
signals it; every call is recorded with the argv the real runtime would get after its global
flags. ``fail`` makes the named command raise the given error; ``on_checkpoint`` runs inside a
checkpoint (e.g. to write a CRIU log into the work dir).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from shim.errors import NotFound, ShimError
from shim.runtime import CreateOpts, RestoreOpts, Runtime, RuntimeConfig, Stdio
from shim.spawn import Child, Result

__all__ = ["FakeRuntime"]


class FakeRuntime:
    """Records calls; runs ``sleep`` as the container's init."""

    def __init__(self) -> None:
        self.config = RuntimeConfig()
        self.calls: list[list[str]] = []
        self.fail: dict[str, BaseException] = {}
        self.on_checkpoint: Callable[[Sequence[str]], None] | None = None
        self.pids: dict[str, int] = {}

    def _call(self, argv: list[str]) -> None:
        self.calls.append(argv)
        if argv[0] in self.fail:
            raise self.fail[argv[0]]

    def _start_init(self, cid: str, pid_file: Path) -> None:
        pid = os.posix_spawn("/bin/sleep", ["sleep", "60"], {})
        self.pids[cid] = pid
        pid_file.write_text(str(pid))

    def log_offset(self) -> int:
        return 0

    def raise_for(self, command: str, result: Result, log_offset: int) -> NoReturn:
        raise ShimError(f"fake {command} failed: exit status {result.status}")

    async def create(self, cid: str, opts: CreateOpts, stdio: Stdio) -> None:
        self._call(["create", *opts.args(), cid])
        self._start_init(cid, opts.pid_file)

    async def start(self, cid: str) -> None:
        self._call(["start", cid])

    async def exec(
        self,
        cid: str,
        process_json: Path,
        pid_file: Path,
        stdio: Stdio,
        *,
        console_socket: str | None = None,
    ) -> None:
        self._call(["exec", "--pid-file", str(pid_file), "--process", str(process_json), cid])
        self._start_init(f"{cid}/exec", pid_file)

    async def kill(self, cid: str, signal: int, *, all: bool = False) -> None:
        self._call(["kill", *(["--all"] if all else []), cid, str(signal)])
        try:
            os.kill(self.pids[cid], signal)
        except (KeyError, ProcessLookupError) as exc:
            raise NotFound("container not running") from exc

    async def delete(self, cid: str, *, force: bool = False) -> None:
        self._call(["delete", *(["--force"] if force else []), cid])
        pid = self.pids.pop(cid, 0)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)

    async def pause(self, cid: str) -> None:
        self._call(["pause", cid])

    async def resume(self, cid: str) -> None:
        self._call(["resume", cid])

    async def update(self, cid: str, resources_json: bytes) -> None:
        self._call(["update", "--resources", "-", cid])

    async def checkpoint(
        self, cid: str, criu_args: Sequence[str], *, extra_fds: Sequence[int] = ()
    ) -> None:
        if self.on_checkpoint is not None:
            self.on_checkpoint(criu_args)
        self._call(["checkpoint", *criu_args, cid])

    def spawn_checkpoint(
        self, cid: str, criu_args: Sequence[str], *, extra_fds: Sequence[int] = ()
    ) -> Child:
        raise NotImplementedError("lazy dumps need runc")

    async def restore(self, cid: str, opts: RestoreOpts, stdio: Stdio) -> None:
        self._call(["restore", *opts.args(), cid])
        self._start_init(cid, opts.pid_file)

    async def ps(self, cid: str) -> list[int]:
        self._call(["ps", "--format", "json", cid])
        return [self.pids[cid]] if cid in self.pids else []


_FAKE_IS_A_RUNTIME: type[Runtime] = FakeRuntime  # mypy holds the fake to the protocol
