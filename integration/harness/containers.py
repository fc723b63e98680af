"""The containers one test creates with one runtime, and the test image."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from shim.state import TaskStatus

from ._common import BUILD_SCRIPT, IMAGE_TAR, REPO, CtrError, HarnessError
from .containerd import Containerd, remove_container
from .ctr import Ctr
from .pty import PtySession


@dataclass(frozen=True, slots=True)
class Started:
    """A container started with ``ctr run -d``: its id, its task's host pid, its log file."""

    id: str
    pid: int
    log: Path | None

    def output(self) -> str:
        """What the container wrote to stdout/stderr so far ("" without a log)."""
        if self.log is None:
            return ""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def lines(self) -> list[str]:
        """Complete lines of :meth:`output`."""
        text = self.output()
        return text.split("\n")[:-1] if text else []


@dataclass
class Containers:
    """The containers one test runs with one runtime; the fixture calls :meth:`cleanup`.

    Attributes:
        containerd: the daemon.
        ctr: ``ctr`` bound to the daemon and the test namespace.
        runtime: the runtime type every ``run`` uses (``--runtime``).
        image: the image ref.
        logdir: where container logs go (inside the daemon's temp dir).
    """

    containerd: Containerd
    ctr: Ctr
    runtime: str
    image: str
    logdir: Path
    ids: list[str] = field(default_factory=list)
    _procs: list[subprocess.Popen[str]] = field(default_factory=list)
    _ptys: list[PtySession] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new_id(self, name: str) -> str:
        """A fresh container id ``<name>-<8 hex>``, registered for cleanup."""
        cid = f"{name}-{uuid.uuid4().hex[:8]}"
        with self._lock:
            self.ids.append(cid)
        self.containerd.known.add((self.ctr.namespace, cid))
        return cid

    def log_path(self, cid: str) -> Path:
        """The log file used for ``cid`` by ``run(..., log=True)``."""
        self.logdir.mkdir(parents=True, exist_ok=True)
        return self.logdir / f"{cid}.log"

    def run_args(
        self,
        cid: str,
        *command: str,
        rm: bool = False,
        detach: bool = False,
        tty: bool = False,
        null_io: bool = False,
        log: bool = False,
        extra: Iterable[str] = (),
    ) -> list[str]:
        """The ``ctr`` arguments for ``ctr run --runtime <runtime> [flags] IMAGE cid command``."""
        args = ["run", "--runtime", self.runtime, "--fifo-dir", str(self.fifo_dir)]
        args += ["--rm"] if rm else []
        args += ["-d"] if detach else []
        args += ["-t"] if tty else []
        args += ["--null-io"] if null_io else []
        args += ["--log-uri", f"file://{self.log_path(cid)}"] if log else []
        args += [*extra, self.image, cid, *command]
        return args

    @property
    def fifo_dir(self) -> Path:
        """Where ctr makes its stdio FIFOs (``--fifo-dir``): inside the daemon's temp dir,
        because ``ctr t exec -d`` never removes its FIFOs."""
        return self.containerd.dir / "fifo"

    def exec_args(
        self, cid: str, exec_id: str, *command: str, tty: bool = False, detach: bool = False
    ) -> list[str]:
        """The ``ctr`` arguments for ``ctr t exec [-t] [-d] --exec-id exec_id cid command``."""
        args = ["tasks", "exec", "--fifo-dir", str(self.fifo_dir), "--exec-id", exec_id]
        args += ["-t"] if tty else []
        args += ["-d"] if detach else []
        return [*args, cid, *command]

    def exec(
        self,
        cid: str,
        exec_id: str,
        *command: str,
        detach: bool = False,
        input: str | None = None,
        timeout: float = 60,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``ctr t exec`` to completion (see :meth:`exec_args`, :meth:`Ctr.__call__`)."""
        args = self.exec_args(cid, exec_id, *command, detach=detach)
        return self.ctr(*args, input=input, timeout=timeout, check=check)

    def run(
        self,
        cid: str,
        *command: str,
        rm: bool = False,
        detach: bool = False,
        null_io: bool = False,
        log: bool = False,
        extra: Iterable[str] = (),
        input: str | None = None,
        timeout: float = 60,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``ctr run`` to completion (see :meth:`run_args`, :meth:`Ctr.__call__`)."""
        args = self.run_args(
            cid, *command, rm=rm, detach=detach, null_io=null_io, log=log, extra=extra
        )
        return self.ctr(*args, input=input, timeout=timeout, check=check)

    def start(
        self, name: str, *command: str, log: bool = True, extra: Iterable[str] = ()
    ) -> Started:
        """``ctr run -d`` a new container (output to a log file, or /dev/null) until RUNNING."""
        cid = self.new_id(name)
        self.run(cid, *command, detach=True, log=log, null_io=not log, extra=extra)
        info = self.ctr.wait_status(cid, TaskStatus.RUNNING)
        return Started(cid, info.pid, self.log_path(cid) if log else None)

    def popen(self, *args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[str]:
        """A background ``ctr args``; SIGKILLed at cleanup if still running."""
        proc = self.ctr.popen(*args, stdin=stdin)
        with self._lock:
            self._procs.append(proc)
        return proc

    def pty(self, *args: str) -> PtySession:
        """``ctr args`` under a pseudo-terminal; closed at cleanup."""
        session = self.ctr.pty(*args)
        with self._lock:
            self._ptys.append(session)
        return session

    def cleanup(self) -> list[str]:
        """Kill leftover ``ctr`` processes, then remove every container of this test."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()  # SIGKILL: ctr run forwards catchable signals to the task
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
                proc.communicate(timeout=10)
        for session in self._ptys:
            session.close()
        problems = []
        try:
            tasks = self.ctr.tasks()
            existing = set(self.ctr.containers())
        except (CtrError, subprocess.TimeoutExpired) as exc:
            return [f"listing: {exc}"]
        for cid in self.ids:
            if cid in tasks or cid in existing:
                problems += remove_container(self.ctr, cid, tasks.get(cid))
            self.containerd.remove_stale_socket(self.ctr.namespace, cid)
        return problems


def ensure_image_tar(tarball: Path = IMAGE_TAR) -> Path:
    """The test image tarball, built with ``hack/image/build.sh`` if missing.

    Raises:
        HarnessError: it is missing and cannot be built.
    """
    if tarball.exists():
        return tarball
    if not BUILD_SCRIPT.exists():
        raise HarnessError(f"{tarball} is missing and {BUILD_SCRIPT} does not exist to build it")
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0 or not tarball.exists():
        raise HarnessError(
            f"{BUILD_SCRIPT} failed (status {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return tarball
