"""``ctr --address <sock> -n <namespace> ...`` with captured output, and parsers for ``ctr t
ls``/``ps``/``metrics``."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from shim.state import TaskStatus  # the one task status enum (containerd.v1.types.Status)

from ._common import NAMESPACE, CtrError, wait_until
from .pty import PtySession


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """One row of ``ctr t ls``."""

    id: str
    pid: int
    status: TaskStatus


@dataclass(frozen=True, slots=True)
class PsEntry:
    """One row of ``ctr t ps``: a host pid and, for exec processes, the exec id."""

    pid: int
    exec_id: str | None
    info: str


_EXIT_WARNING = re.compile(r"exit with non-zero exit code (\d+)")


class Ctr:
    """``ctr --address <address> -n <namespace>``; every call captures stdout and stderr."""

    def __init__(self, address: str, namespace: str = NAMESPACE) -> None:
        self.address = address
        self.namespace = namespace

    def argv(self, *args: str) -> list[str]:
        """The full command line for ``ctr ... args``."""
        return ["ctr", "--address", self.address, "-n", self.namespace, *args]

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = 60,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ctr args`` to completion.

        Args:
            args: the ctr subcommand and its arguments.
            input: text for its stdin (else stdin is /dev/null).
            timeout: seconds; on expiry ctr is SIGKILLed and ``TimeoutExpired`` raised.
            check: raise :class:`CtrError` on a non-zero exit status.

        Returns:
            The completed process, ``stdout``/``stderr`` as text.
        """
        argv = self.argv(*args)
        proc = subprocess.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise CtrError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def popen(self, *args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[str]:
        """Start ``ctr args`` in the background, stdout/stderr piped (use ``communicate``)."""
        return subprocess.Popen(
            self.argv(*args),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def pty(self, *args: str) -> PtySession:
        """Start ``ctr args`` with a pseudo-terminal as its stdin/stdout/stderr."""
        return PtySession(self.argv(*args))

    # parsers ---------------------------------------------------------------------------

    def tasks(self) -> dict[str, TaskInfo]:
        """``ctr t ls`` as id -> :class:`TaskInfo`."""
        out = self("tasks", "ls").stdout
        tasks = {}
        for line in out.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 3:
                tasks[cols[0]] = TaskInfo(cols[0], int(cols[1]), TaskStatus[cols[2]])
        return tasks

    def task(self, cid: str) -> TaskInfo | None:
        """The task of ``cid`` or None."""
        return self.tasks().get(cid)

    def containers(self) -> list[str]:
        """``ctr c ls -q``."""
        return self("containers", "ls", "-q").stdout.split()

    def ps(self, cid: str) -> list[PsEntry]:
        """``ctr t ps cid``: init and exec processes (exec ids parsed from INFO)."""
        out = self("tasks", "ps", cid).stdout
        entries = []
        for line in out.splitlines()[1:]:
            cols = line.split(None, 1)
            if not cols or not cols[0].isdigit():
                continue
            info = cols[1].strip() if len(cols) > 1 else ""
            m = re.search(r"ExecID:([^,}\s]+)", info)
            entries.append(PsEntry(int(cols[0]), m.group(1) if m else None, info))
        return entries

    def metrics(self, cid: str) -> dict[str, str]:
        """``ctr t metrics cid`` (table format) as metric name -> value text."""
        out = self("tasks", "metrics", cid).stdout
        values = {}
        in_table = False
        for line in out.splitlines():
            cols = line.split(None, 1)
            if cols[:1] == ["METRIC"]:
                in_table = True
            elif in_table and len(cols) == 2:
                values[cols[0]] = cols[1].strip()
        return values

    def wait_status(self, cid: str, status: TaskStatus, timeout: float = 20) -> TaskInfo:
        """Poll ``ctr t ls`` until the task of ``cid`` has ``status``."""

        def reached() -> TaskInfo | None:
            info = self.task(cid)
            return info if info is not None and info.status is status else None

        return wait_until(
            reached,
            timeout,
            interval=0.1,
            message=lambda: f"task {cid} to be {status.name} (now {self.task(cid)})",
        )

    def delete_task(self, cid: str, *, force: bool = False, timeout: float = 60) -> int:
        """``ctr t rm [-f] cid``; returns the task's exit status.

        ctr 1.6 reports a non-zero status only as a warning on stderr
        (``task <id> exit with non-zero exit code <n>``); no warning means 0.
        """
        args = ("tasks", "rm", *(("-f",) if force else ()), cid)
        proc = self(*args, timeout=timeout)
        m = _EXIT_WARNING.search(proc.stderr)
        return int(m.group(1)) if m else 0
