"""A private containerd daemon per test session, and its complete teardown."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shim.state import TaskStatus
from shim.warm import socket_is_live

from ._common import _PATH_DIRS, IMAGE_REF, NAMESPACE, TASK_DIR, CtrError, HarnessError, wait_until
from .ctr import Ctr, TaskInfo
from .mounts import mounts_under, unmount_all_under
from .procs import (
    container_processes,
    kill_stray_shims,
    shim_processes,
    shim_socket_path,
    stop_daemon,
)


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


_PRIVATE: Final = """\
root = "{root}"
state = "{state}"

[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""
"""


def private_config(directory: Path) -> str:
    """What makes the containerd living in ``directory`` private, as its configuration says
    it (every starter's: this one's, the CRI tests'): root, state and its gRPC and ttrpc
    sockets (``c.sock``, ``c.sock.ttrpc``) in ``directory``, no debug or metrics socket. Its
    first lines are top-level keys: a configuration puts its own (``version``, ...) before it,
    its tables after it."""
    return _PRIVATE.format(
        root=directory / "root", state=directory / "state", address=directory / "c.sock"
    )


_CONFIG: Final = """\
version = 2
disabled_plugins = ["io.containerd.grpc.v1.cri"]
{private}"""


def containerd_environment(directory: Path, *, first: Path | None = None) -> dict[str, str]:
    """The environment of the private containerd living in ``directory`` (every starter's:
    this one's, the CRI tests'): this process's, with PATH completed by the usual binary
    directories (runc, CRIU and the shims are found through containerd's PATH) and ``first``
    ahead of them all (a containerd's own ``usr/bin``: its runc shim and ctr), and TMPDIR at
    :func:`scratch_tmp` (which the starter creates)."""
    env = dict(os.environ)
    path = [d for d in env.get("PATH", "").split(":") if d]
    path += [d for d in _PATH_DIRS if d not in path]
    if first is not None:
        path.insert(0, str(first))
    env["PATH"] = ":".join(path)
    env["TMPDIR"] = str(scratch_tmp(directory))
    return env


def wait_for_containerd(
    proc: subprocess.Popen[bytes], address: str, timeout: float, *, ctr: str = "ctr"
) -> None:
    """Wait until the containerd ``proc`` answers ``ctr version`` on ``address``.

    Raises:
        HarnessError: it exited meanwhile.
        WaitTimeout: it did not answer within ``timeout`` seconds.
    """

    def ready() -> bool:
        if proc.poll() is not None:
            raise HarnessError(f"containerd exited with status {proc.returncode}")
        probe = subprocess.run(
            [ctr, "--address", address, "version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
            check=False,
        )
        return probe.returncode == 0

    wait_until(ready, timeout, interval=0.1, message="containerd to answer `ctr version`")


def scratch_tmp(directory: Path) -> Path:
    """The temporary directory of the containerd living in ``directory``, on disk (its
    ``directory`` is on /run, a tmpfs): containerd 1.6 unpacks every checkpoint it restores
    into a ``ctrd-checkpoint*`` directory under $TMPDIR and never removes it (thousands of
    them, ~15 GiB, had piled up in /tmp); the daemon's :meth:`Containerd.stop` removes this
    one, and with it whatever containerd left there."""
    return Path("/var/tmp") / f"{directory.name}.tmp"


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
        config.write_text(_CONFIG.format(private=private_config(directory)))
        enter = ["nsenter", f"--net={netns}"] if netns else []
        scratch_tmp(directory).mkdir(mode=0o700)
        with open(directory / "containerd.log", "wb") as log:
            proc = subprocess.Popen(
                [*enter, "containerd", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
                env=containerd_environment(directory),
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
                env=containerd_environment(self.dir),
                start_new_session=True,
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        wait_for_containerd(self.proc, self.address, timeout)

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
        problems += stop_daemon(self.proc)
        problems += kill_stray_shims(self.address)  # shims of this daemon that outlived it
        stuck = unmount_all_under(self.dir)
        if stuck:
            problems.append(f"could not unmount {stuck}")
        for ns, cid in self.known:
            sock = shim_socket_path(self.address, ns, cid)
            if sock.exists() and not socket_is_live(sock):
                sock.unlink(missing_ok=True)
        if not stuck:
            shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(scratch_tmp(self.dir), ignore_errors=True)
        return problems


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
