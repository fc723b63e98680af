"""Integration harness: an isolated containerd, ``ctr`` helpers, polling waits, leak probes.

Strategy: the tests drive containerd exactly as users do, with the ``ctr`` binary. This module
owns everything that touches the host for them:

* :class:`Containerd` - a private containerd daemon (``Containerd.start()`` is the factory)
  with ``root``, ``state`` and both sockets in a short temporary directory under ``/run``
  (unix socket paths must stay under 108 bytes). It never touches the system containerd.
  ``stop()`` tears it down completely: tasks and containers in every namespace, the daemon
  (SIGTERM by pid, then SIGKILL), stray shims of this daemon (by pid), every mount under its
  directory (deepest first, lazily when busy), stale shim sockets, and the directory.
* :class:`Ctr` - ``ctr --address <sock> -n <namespace> ...`` with captured output, plus
  parsers for ``ctr t ls``/``ps``/``metrics`` and a pseudo-terminal runner (:class:`PtySession`).
* :class:`Containers` - the containers one test creates with one runtime; ``cleanup()`` removes
  all of them (and kills the ``ctr`` processes the test left running), even after a failure.
* :func:`wait_until` - poll a predicate with a timeout; tests never sleep to synchronise.
* Probes of ``/proc`` and ``/proc/self/mountinfo``: task pids, process state, cgroup v1
  freezer state, a container's processes, its shim, mounts and shim socket
  (:meth:`Containerd.leftovers`).

Facts this relies on (containerd 1.6, checked against ``io.containerd.runc.v2``): shims are
started with cwd = bundle = ``<state>/io.containerd.runtime.v2.task/<ns>/<id>``, with
``-namespace <ns> -id <id> -address <grpc socket>`` on their command line; their socket is
``/run/containerd/s/<sha256 of "<grpc socket>/<ns>/<id>">`` whatever the daemon's state dir
is; ``ctr run`` puts a container in the cgroup ``/<ns>/<id>``; ``ctr t rm`` reports a non-zero
exit status only as a warning on stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import fcntl
import hashlib
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

__all__ = [
    "BUILD_SCRIPT",
    "IMAGE_REF",
    "IMAGE_TAR",
    "NAMESPACE",
    "PYRUNC",
    "RUNC",
    "RUNTIMES",
    "Containerd",
    "Containers",
    "Ctr",
    "CtrError",
    "HarnessError",
    "Leftovers",
    "PsEntry",
    "PtySession",
    "Started",
    "TaskInfo",
    "TaskStatus",
    "WaitTimeout",
    "container_processes",
    "ensure_image_tar",
    "freezer_state",
    "mounts_under",
    "parent_pid",
    "pid_alive",
    "proc_cmdline",
    "proc_state",
    "pyrunc_argv",
    "pyrunc_env",
    "remove_container",
    "run_pyrunc",
    "shim_binary",
    "shim_processes",
    "shim_socket_path",
    "socket_is_live",
    "unix_socket_paths",
    "unmount_all_under",
    "wait_until",
]

REPO: Final = Path(__file__).resolve().parent.parent
IMAGE_REF: Final = "localhost/pyrunc-test:latest"
IMAGE_TAR: Final = REPO / "build" / "pyrunc-test-image.tar"
BUILD_SCRIPT: Final = REPO / "hack" / "image" / "build.sh"
NAMESPACE: Final = "pyrunc-it"
RUNC: Final = "io.containerd.runc.v2"
PYRUNC: Final = "io.containerd.pyrunc.v2"
RUNTIMES: Final = {"runc": RUNC, "pyrunc": PYRUNC}
SHIM_SOCKET_DIR: Final = Path("/run/containerd/s")
TASK_DIR: Final = "io.containerd.runtime.v2.task"
_PATH_DIRS: Final = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

T = TypeVar("T")


class HarnessError(Exception):
    """The harness itself could not do its job (containerd won't start, no image, ...)."""


class WaitTimeout(AssertionError):
    """:func:`wait_until` ran out of time; an assertion failure of the test."""


class CtrError(subprocess.CalledProcessError):
    """``ctr`` exited non-zero when it was expected to succeed; shows its output."""

    def __str__(self) -> str:
        return (
            f"{super().__str__()}\n--- stdout ---\n{self.stdout or ''}"
            f"--- stderr ---\n{self.stderr or ''}"
        )


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    *,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy.

    Args:
        predicate: called repeatedly; exceptions propagate.
        timeout: seconds before giving up.
        interval: seconds between calls.
        message: what was awaited (or a callable giving it, for late details).

    Returns:
        The first truthy value ``predicate`` returned.

    Raises:
        WaitTimeout: ``timeout`` passed; names ``message`` and the last value seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {text} (last: {value!r})")
        time.sleep(interval)


# --- /proc probes ------------------------------------------------------------------------------


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


def socket_is_live(path: str | os.PathLike[str]) -> bool:
    """True if something accepts connections on the unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(os.fspath(path))
        except OSError:
            return False
        return True


# --- mounts ------------------------------------------------------------------------------------

_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field_text: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field_text)


def mounts_under(prefix: str | os.PathLike[str]) -> list[str]:
    """Mount points at or under ``prefix``, in ``/proc/self/mountinfo`` order."""
    base = os.fspath(prefix).rstrip("/")
    found = []
    for line in _read_or_empty("/proc/self/mountinfo").splitlines():
        cols = line.split(" ")
        if len(cols) > 4:
            point = _unescape(cols[4])
            if point == base or point.startswith(base + "/"):
                found.append(point)
    return found


_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH: Final = 2


def _umount(path: str, flags: int) -> int:
    if _libc.umount2(path.encode(), flags) == 0:
        return 0
    return ctypes.get_errno()


def unmount_all_under(prefix: str | os.PathLike[str]) -> list[str]:
    """Unmount everything at or under ``prefix``: deepest (and latest) first, lazily if busy.

    Returns:
        The mount points that could not be unmounted (empty on success).
    """
    for _ in range(20):
        points = mounts_under(prefix)
        if not points:
            return []
        ordered = sorted(enumerate(points), key=lambda ip: (ip[1].count("/"), ip[0]), reverse=True)
        for _, point in ordered:
            err = _umount(point, 0)
            if err == errno.EBUSY:
                err = _umount(point, _MNT_DETACH)
            # EINVAL: already gone (a parent went first); anything else shows up next round
    return mounts_under(prefix)


# --- ctr -------------------------------------------------------------------------------------


class TaskStatus(enum.Enum):
    """Task states as ``ctr t ls`` prints them."""

    CREATED = "CREATED"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    PAUSED = "PAUSED"
    PAUSING = "PAUSING"
    UNKNOWN = "UNKNOWN"


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
                tasks[cols[0]] = TaskInfo(cols[0], int(cols[1]), TaskStatus(cols[2]))
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
            message=lambda: f"task {cid} to be {status.value} (now {self.task(cid)})",
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


# --- pseudo-terminal -------------------------------------------------------------------------


class PtySession:
    """A command running with a new pseudo-terminal as stdin, stdout and stderr.

    The process is in its own session with the pty as controlling terminal. Output is read
    only while :meth:`expect` or :meth:`wait` run, so call one of them regularly.
    """

    def __init__(self, argv: Sequence[str], *, rows: int = 40, cols: int = 120) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        try:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
                close_fds=True,
                preexec_fn=_set_controlling_tty,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.argv = list(argv)
        self._master: int | None = master
        self._buf = bytearray()
        self._pos = 0
        self._eof = False

    @property
    def output(self) -> str:
        """Everything read so far (decoded, undecodable bytes replaced)."""
        return self._buf.decode(errors="replace")

    def _read(self, timeout: float) -> bool:
        """Read what is available within ``timeout``; False once the terminal hit EOF."""
        if self._master is None or self._eof:
            return False
        ready, _, _ = select.select([self._master], [], [], max(timeout, 0))
        if not ready:
            return True
        try:
            data = os.read(self._master, 65536)
        except OSError as exc:  # EIO: every slave fd is closed
            if exc.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def send(self, text: str) -> None:
        """Type ``text`` into the terminal."""
        assert self._master is not None, "session closed"
        os.write(self._master, text.encode())

    def expect(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """Wait for ``pattern`` (a regex) in output that no earlier ``expect`` consumed.

        Returns:
            The match; output up to its end counts as consumed.

        Raises:
            WaitTimeout: not seen within ``timeout`` (or the terminal closed first).
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self._buf.decode(errors="replace")
            m = regex.search(text, self._pos)
            if m:
                self._pos = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0 or (not self._read(min(left, 0.2)) and self._eof):
                raise WaitTimeout(
                    f"{pattern!r} not seen within {timeout:g}s from {self.argv}; "
                    f"unconsumed output: {text[self._pos :]!r}"
                )

    def wait(self, timeout: float = 30) -> int:
        """Wait for the process to exit, reading its output meanwhile; returns its status."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(
                    f"{self.argv} still running after {timeout:g}s; output: {self.output!r}"
                )
            if not self._read(min(left, 0.1)):
                time.sleep(0.02)
        while self._read(0):  # drain what is left
            pass
        return self.proc.returncode

    def close(self) -> None:
        """SIGKILL the process if it still runs, reap it and close the terminal."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self._master is not None:
            os.close(self._master)
            self._master = None


def _set_controlling_tty() -> None:
    # runs in the child after setsid(): make stdin (the pty slave) the controlling terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


# --- the daemon --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Leftovers:
    """What a removed container must not leave behind (all empty when clean)."""

    processes: tuple[int, ...] = ()
    shims: tuple[int, ...] = ()
    mounts: tuple[str, ...] = ()
    bundle: str | None = None
    live_socket: str | None = None

    @property
    def clean(self) -> bool:
        """True if nothing was left."""
        return self == Leftovers()


_CONFIG_TEMPLATE: Final = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""
"""


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PATH", "").split(":")
    env["PATH"] = ":".join([*path, *(d for d in _PATH_DIRS if d not in path)])
    return env


class Containerd:
    """A private containerd daemon; make one with :meth:`start`, end it with :meth:`stop`."""

    def __init__(self, directory: Path, proc: subprocess.Popen[bytes]) -> None:
        self.dir = directory
        self.root = directory / "root"
        self.state = directory / "state"
        self.address = str(directory / "c.sock")
        self.log_path = directory / "containerd.log"
        self.proc = proc
        self.known: set[tuple[str, str]] = set()  # (namespace, id) of every container seen
        self._stopped = False

    @property
    def pid(self) -> int:
        """The daemon's pid."""
        return self.proc.pid

    @classmethod
    def start(
        cls, *, prefix: str = "/run/pyrunc-it-", timeout: float = 30, netns: str | None = None
    ) -> Containerd:
        """Start an isolated containerd in a fresh ``<prefix>XXXX`` directory.

        Args:
            prefix: where the directory goes (socket paths must stay short).
            timeout: seconds to wait for it to answer.
            netns: run it in the network namespace at this path (``nsenter --net``; only
                the network namespace changes): a containerd standing for another host.

        Returns:
            The running daemon, answering ``ctr version``.

        Raises:
            HarnessError: it did not come up within ``timeout``; the message holds its log.
        """
        if shutil.which("containerd") is None or shutil.which("ctr") is None:
            raise HarnessError("containerd and ctr must be installed (run hack/install.sh)")
        parent, base = os.path.split(prefix)
        directory = Path(tempfile.mkdtemp(prefix=base, dir=parent or None))
        config = directory / "config.toml"
        config.write_text(
            _CONFIG_TEMPLATE.format(
                root=directory / "root", state=directory / "state", address=directory / "c.sock"
            )
        )
        enter = ["nsenter", f"--net={netns}"] if netns else []
        with open(directory / "containerd.log", "wb") as log:
            proc = subprocess.Popen(
                [*enter, "containerd", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
                env=_environment(),
                start_new_session=True,
            )
        daemon = cls(directory, proc)
        try:
            daemon._wait_ready(timeout)
        except BaseException:
            tail = daemon.log_tail()
            daemon.stop()
            raise HarnessError(f"containerd did not start; log tail:\n{tail}") from None
        return daemon

    def restart(self, timeout: float = 30) -> None:
        """Stop containerd (SIGTERM, its shims keep running) and start it again on the same
        root, state and sockets, as an upgrade or a crash-restart of containerd does."""
        argv = [str(a) for a in self.proc.args]  # type: ignore[union-attr]
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=_environment(),
                start_new_session=True,
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise HarnessError(f"containerd exited with status {self.proc.returncode}")
            probe = subprocess.run(
                ["ctr", "--address", self.address, "version"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=10,
                check=False,
            )
            return probe.returncode == 0

        wait_until(ready, timeout, interval=0.1, message="containerd to answer `ctr version`")

    def __enter__(self) -> Containerd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ctr(self, namespace: str = NAMESPACE) -> Ctr:
        """A :class:`Ctr` bound to this daemon and ``namespace``."""
        return Ctr(self.address, namespace)

    def log_size(self) -> int:
        """Current size of the daemon log (an offset for :meth:`log_tail`)."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_tail(self, lines: int = 60, *, since: int = 0) -> str:
        """The last ``lines`` lines of the daemon log written after byte offset ``since``."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                data = f.read()
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    def bundle(self, namespace: str, cid: str) -> Path:
        """The bundle directory (the shim's cwd) of ``cid``."""
        return self.state / TASK_DIR / namespace / cid

    def import_image(self, tarball: Path, ref: str = IMAGE_REF, namespace: str = NAMESPACE) -> str:
        """``ctr images import`` ``tarball`` into ``namespace`` and check ``ref`` arrived."""
        ctr = self.ctr(namespace)
        ctr("images", "import", str(tarball), timeout=180)
        refs = ctr("images", "ls", "-q").stdout.split()
        if ref not in refs:
            raise HarnessError(f"importing {tarball} gave {refs}, not {ref}")
        return ref

    def leftovers(self, namespace: str, cid: str) -> Leftovers:
        """What container ``cid`` left behind: processes, shim, mounts, bundle, live socket."""
        bundle = self.bundle(namespace, cid)
        sock = shim_socket_path(self.address, namespace, cid)
        return Leftovers(
            processes=tuple(container_processes(namespace, cid)),
            shims=tuple(shim_processes(self.address, cid)),
            mounts=tuple(mounts_under(bundle)),
            bundle=str(bundle) if bundle.exists() else None,
            live_socket=str(sock) if sock.exists() and socket_is_live(sock) else None,
        )

    def remove_stale_socket(self, namespace: str, cid: str) -> bool:
        """Unlink ``cid``'s shim socket file if nothing listens on it; True if removed."""
        sock = shim_socket_path(self.address, namespace, cid)
        if sock.exists() and not socket_is_live(sock):
            sock.unlink(missing_ok=True)
            return True
        return False

    def namespaces(self) -> list[str]:
        """``ctr namespaces ls -q``."""
        proc = subprocess.run(
            ["ctr", "--address", self.address, "namespaces", "ls", "-q"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return proc.stdout.split()

    def purge(self, namespace: str) -> list[str]:
        """Kill and delete every task and container in ``namespace``; returns problems."""
        problems = []
        ctr = self.ctr(namespace)
        try:
            ids = set(ctr.containers())
            tasks = ctr.tasks()
        except (CtrError, subprocess.TimeoutExpired) as exc:
            return [f"listing {namespace}: {exc}"]
        ids |= set(tasks)
        self.known |= {(namespace, cid) for cid in ids}
        for cid in sorted(ids):
            problems += remove_container(ctr, cid, tasks.get(cid))
        return problems

    def stop(self) -> list[str]:
        """Tear everything down (idempotent); returns what could not be cleaned."""
        if self._stopped:
            return []
        self._stopped = True
        problems: list[str] = []
        if self.proc.poll() is None:
            try:
                for ns in self.namespaces():
                    problems += self.purge(ns)
            except (OSError, subprocess.SubprocessError) as exc:  # a hung daemon: go on
                problems.append(f"purging containers: {exc!r}")
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                problems.append("containerd ignored SIGTERM for 20s; SIGKILLed")
                self.proc.kill()
                self.proc.wait(timeout=10)
        # shims of this daemon that outlived it (their cwd is a bundle under our state dir)
        for pid in self._own_shims():
            problems.append(f"killed stray shim {pid} {proc_cmdline(pid)}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stuck = unmount_all_under(self.dir)
        if stuck:
            problems.append(f"could not unmount {stuck}")
        for ns, cid in self.known:
            sock = shim_socket_path(self.address, ns, cid)
            if sock.exists() and not socket_is_live(sock):
                sock.unlink(missing_ok=True)
        if not stuck:
            shutil.rmtree(self.dir, ignore_errors=True)
        return problems

    def _own_shims(self) -> list[int]:
        found = []
        for pid in _proc_pids():
            argv = proc_cmdline(pid)
            if _flag(argv, "-address") == self.address and pid_alive(pid):
                found.append(pid)
        return found


def remove_container(ctr: Ctr, cid: str, task: TaskInfo | None = None) -> list[str]:
    """Best-effort removal of ``cid`` and its task: resume, SIGKILL all, delete both.

    Returns:
        Problems seen (empty when the container and task are gone).
    """
    problems = []

    def attempt(*args: str, timeout: float) -> subprocess.CompletedProcess[str] | None:
        try:
            return ctr(*args, check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            problems.append(f"{cid}: `ctr {' '.join(args)}` timed out")
            return None

    if task is None:
        try:
            task = ctr.task(cid)
        except (CtrError, subprocess.TimeoutExpired) as exc:
            problems.append(f"{cid}: listing tasks: {exc}")
    if task is not None:
        if task.status in (TaskStatus.PAUSED, TaskStatus.PAUSING):
            attempt("tasks", "resume", cid, timeout=30)
        if task.status is not TaskStatus.STOPPED:
            attempt("tasks", "kill", "-a", "-s", "SIGKILL", cid, timeout=30)
        attempt("tasks", "rm", "-f", cid, timeout=60)
    proc = attempt("containers", "rm", cid, timeout=60)
    if proc is not None and proc.returncode != 0 and "not found" not in proc.stderr:
        problems.append(f"{cid}: `ctr c rm` failed: {proc.stderr.strip()}")
    return problems


# --- the containers of one test --------------------------------------------------------------


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


def pyrunc_argv(containerd: Containerd, *args: str, namespace: str = NAMESPACE) -> list[str]:
    """``pyrunc -a <containerd's socket> -n <namespace> args``, as this checkout's
    ``shim.ctl`` run by the test's interpreter."""
    return [sys.executable, "-m", "shim.ctl", "-a", containerd.address, "-n", namespace, *args]


def pyrunc_env() -> dict[str, str]:
    """The environment for :func:`pyrunc_argv`: this checkout first on the path, and no
    CONTAINERD_* variables that could point the tool elsewhere."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CONTAINERD_ADDRESS", None)
    env.pop("CONTAINERD_NAMESPACE", None)
    return env


def run_pyrunc(
    containerd: Containerd, *args: str, namespace: str = NAMESPACE, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the ``pyrunc`` tool against ``containerd`` to completion (output captured)."""
    return subprocess.run(
        pyrunc_argv(containerd, *args, namespace=namespace),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
        env=pyrunc_env(),
    )
