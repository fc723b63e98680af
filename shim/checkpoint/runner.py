"""Checkpointing and restoring one container with runc and CRIU, without ever losing it.

Strategy: mirrors containerd ``pkg/process/init.go`` (``checkpoint``, ``createCheckpointedState``)
and runc's own handling of ``org.criu.config``. The plan (:mod:`shim.checkpoint.plan`) says what
to do; this module does it in a fixed order:

1. ask CRIU (over its RPC) whether it can do what the plan needs, before the container is
   touched (:func:`shim.checkpoint.criu.ensure_capable`);
2. create the images and work directories 0700; refuse to overwrite a finished checkpoint;
3. write the CRIU configuration file for options runc has no flag for into the bundle; the
   container's ``org.criu.config`` annotation (set by :func:`shim.bundle.with_criu_config`
   before ``runc create``/``restore``) makes runc hand that file to CRIU;
4. run runc;
5. on success store the plan beside the images: its presence is what marks a complete
   checkpoint. On failure keep CRIU's log as ``<bundle>/criu-dump.log`` (or
   ``criu-restore.log``), remove what this dump wrote, and raise an error naming the log.

Whether a failed dump left the container frozen is the container's business (it knows whether
it was paused before); see ``Container.checkpoint``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import glob
import logging
import os
import shutil
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shim.bundle import CRIU_CONFIG, CRIU_CONFIG_ANNOTATION, CRIU_WORK_DIR, UNFINISHED_DUMP
from shim.cgroups import CGROUP_ROOT
from shim.checkpoint import netrestore
from shim.checkpoint.criu import Criu, Requirements, criu_binary, ensure_capable, log_reason
from shim.checkpoint.network import has_inet_sockets
from shim.checkpoint.plan import (
    STORED_PLAN,
    CheckpointPlan,
    RestoreSource,
    checkpoint_args,
    criu_config,
    dump_network_lock,
    dump_plan,
    plan_restore,
    restore_args,
    tls_args,
)
from shim.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    ShimError,
    with_context,
)
from shim.mount import unmount_under
from shim.reaper import Reaper
from shim.runtime import RestoreOpts, Runtime, Stdio, criu_timeout
from shim.spawn import Child, Result, spawn

__all__ = ["LazyDump", "Restored", "checkpoint", "restore"]

log = logging.getLogger(__name__)

RUNC_DEFAULT_CRIU_CONFIG = "/etc/criu/runc.conf"
DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
_LAZY_READY_TIMEOUT = 600.0
_LAZY_DAEMON_TIMEOUT = 10.0
_LOG_TAIL = 256 * 1024  # bytes of a kept CRIU log searched for the reason of a failure
LAZY_PAGES_SOCKET = "lazy-pages.socket"  # created by `criu lazy-pages` in its work dir
CGROUP_YARD = ".criu.cgyard.*"  # CRIU's cgroup mounts, in its work dir while it runs
_CGROUP_RMDIR_WAIT = 5.0
_UNPACKED_POLL_FIRST = 0.001  # s; doubled up to _UNPACKED_POLL_MAX while the lock is held
_UNPACKED_POLL_MAX = 0.01


def _write_criu_config(bundle: Path, annotations: Mapping[str, str], text: str) -> None:
    """Write the per-operation CRIU config. Since the annotation replaces runc's default
    file, that file's settings (if any) are kept in front of ours."""
    named = annotations.get(CRIU_CONFIG_ANNOTATION)
    ours = str(bundle / CRIU_CONFIG)
    if named != ours:
        if text:
            raise FailedPrecondition(
                f"the container names its own CRIU configuration ({CRIU_CONFIG_ANNOTATION}="
                f"{named!r}), so options runc has no flag for cannot be passed: {text.strip()!r}"
            )
        return
    try:
        base = Path(RUNC_DEFAULT_CRIU_CONFIG).read_text()
    except OSError:
        base = ""
    if base and not base.endswith("\n"):
        base += "\n"
    tmp = bundle / f".{CRIU_CONFIG}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600),
              "w") as f:
        f.write(base + text)
    tmp.rename(ours)


def _mkdir_private(path: str) -> bool:
    """Create ``path`` (and parents) 0700; True if it did not exist."""
    if os.path.isdir(path):
        return False
    os.makedirs(path, mode=0o700)
    os.chmod(path, 0o700)
    return True


def check_path(what: str, path: str) -> None:
    """Refuse an images or work path that is relative, has a ``..`` component, or whose
    existing components include a symlink (CRIU would follow it and write elsewhere: a work
    path linked to ``/etc`` had it write ``/etc/dump.log``).

    Raises:
        InvalidArgument: it does.
    """
    if not os.path.isabs(path) or ".." in path.split("/"):
        raise InvalidArgument(f"{what} {path!r} must be an absolute path without '..'")
    current = "/"
    for part in [p for p in path.split("/") if p and p != "."]:
        current = os.path.join(current, part)
        try:
            if os.path.islink(current):
                raise InvalidArgument(f"{what} {path} goes through the symlink {current}")
            if not os.path.exists(current):
                return  # made by the dump, as a directory
        except OSError as exc:
            raise InvalidArgument(f"{what} {path}: {exc.strerror}") from exc


def _check_work_path(work_dir: str, bundle: Path) -> None:
    """:func:`check_path` for a work path the request named; the default one in the bundle
    is the shim's choice (containerd makes the bundle's ``work`` a symlink to its own work
    directory)."""
    if work_dir != str(bundle / CRIU_WORK_DIR):
        check_path("work path", work_dir)


def make_private(path: str) -> None:
    """Make a directory tree private: directories 0700, files 0600 (CRIU's images hold the
    container's memory; its logs and stats what it did). Symlinks are left alone. File work:
    run it in a thread."""
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            with contextlib.suppress(OSError):
                if not os.path.islink(os.path.join(root, name)):
                    os.chmod(os.path.join(root, name), 0o700)
        for name in files:
            with contextlib.suppress(OSError):
                if not os.path.islink(os.path.join(root, name)):
                    os.chmod(os.path.join(root, name), 0o600)


def _make_private_dirs(*paths: str) -> None:
    """:func:`make_private` of each path, in one thread hand-off (each costs the event loop a
    wake-up, which under load waits for a core)."""
    for path in paths:
        make_private(path)


def _keep_log(work_dir: str, name: str, bundle: Path) -> str:
    """Copy CRIU's log out of the work dir into the bundle (0600); return the note for the
    error (:func:`_log_note`). File work: run it in a thread."""
    kept = bundle / f"criu-{name}"
    with contextlib.suppress(OSError), open(os.path.join(work_dir, name), "rb") as src:
        fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)
        with open(fd, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return _log_note(kept)


def _log_note(kept: Path) -> str:
    """``CRIU log kept at <kept>``, plus what CRIU gave as the reason, if it logged one."""
    try:
        with open(kept, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - _LOG_TAIL))
            reason = log_reason(f.read().decode("utf-8", "replace"))
    except OSError:
        reason = ""
    return f"CRIU log kept at {kept}" + (f"; CRIU says: {reason}" if reason else "")


def _discard_images(images_dir: str, *, created: bool) -> None:
    """Remove what a failed dump wrote, so nothing looks like a usable checkpoint. File
    work: run it in a thread."""
    if created:
        shutil.rmtree(images_dir, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        for entry in os.scandir(images_dir):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)


def _store_plan(plan: CheckpointPlan) -> None:
    tmp = os.path.join(plan.images_dir, f".{STORED_PLAN}")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600),
              "wb") as f:
        f.write(dump_plan(plan))
    os.rename(tmp, os.path.join(plan.images_dir, STORED_PLAN))


class _Steps:
    """Milliseconds per step of a restore or checkpoint, for the log."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._steps: list[str] = []

    def done(self, name: str) -> None:
        now = time.monotonic()
        self._steps.append(f"{name} {1000 * (now - self._last):.1f} ms")
        self._last = now

    def __str__(self) -> str:
        return ", ".join(self._steps)


@dataclass(slots=True)
class LazyDump:
    """A lazy-pages dump whose images are ready while runc still serves the memory."""

    child: Child
    plan: CheckpointPlan


async def _ensure_capable(runtime: Runtime, reaper: Reaper, req: Requirements) -> int:
    """Check that CRIU and the host can do what ``req`` says; return CRIU's version number."""
    criu = Criu(reaper, criu_binary(runtime.config.criu_path))
    return (await ensure_capable(criu, req)).version.number


def _inet_sockets(pid: int) -> bool:
    """Whether ``pid``'s network namespace has TCP, UDP or raw sockets; True when that
    cannot be read (the safe answer: CRIU then locks the network as it always did)."""
    try:
        return has_inet_sockets(pid)
    except (OSError, ValueError):
        return True


async def checkpoint(
    runtime: Runtime,
    reaper: Reaper,
    cid: str,
    pid: int,
    bundle: Path,
    annotations: Mapping[str, str],
    plan: CheckpointPlan,
) -> LazyDump | None:
    """Dump ``cid`` (init ``pid``, whose spec has ``annotations``) as ``plan`` says; with its
    own network namespace, record the container's network beside the images first
    (:func:`shim.checkpoint.netrestore.record`).

    Returns:
        None when the dump is complete; for lazy pages, the still running runc once the images
        are ready (its exit ends the page transfer).
    Raises:
        FailedPrecondition: CRIU or the host cannot do what the plan needs (nothing touched).
        AlreadyExists: the images directory already holds a checkpoint.
        FailedPrecondition: the images directory holds other files (a failed dump removes
            what it wrote, so it must not share the directory with anything).
        ShimError: runc or CRIU failed; the message names the kept CRIU log.
    """
    steps = _Steps()
    criu_version = await _ensure_capable(
        runtime,
        reaper,
        Requirements(
            min_version=plan.required_criu_version,
            mem_track=plan.track_mem,
            lazy_pages=plan.lazy_pages,
        ),
    )
    # no network lock where it protects nothing (it costs the dump and the restore ~60 ms each)
    plan = dump_network_lock(
        plan, criu_version=criu_version, inet_sockets=_inet_sockets(pid)
    )
    steps.done("criu probe")
    check_path("image path", plan.images_dir)
    _check_work_path(plan.work_dir, bundle)
    if os.path.exists(os.path.join(plan.images_dir, STORED_PLAN)):
        raise AlreadyExists(f"{plan.images_dir} already holds a checkpoint")
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        if os.listdir(plan.images_dir):  # a failed dump empties the directory again
            raise FailedPrecondition(
                f"image path {plan.images_dir} is not empty; checkpoint into a new or empty"
                " directory"
            )
    created = _mkdir_private(plan.images_dir)
    _mkdir_private(plan.work_dir)
    marker = _mark_unfinished(bundle, plan.images_dir, created)
    try:
        _write_criu_config(bundle, annotations, criu_config(plan, restore=False))
        steps.done("config")
        await netrestore.record(pid, plan.images_dir, bundle)
        steps.done("network record")
        if plan.lazy_pages:
            child = await _start_lazy_dump(runtime, cid, plan)
        else:
            await runtime.checkpoint(cid, checkpoint_args(plan))
        steps.done("runc checkpoint")
        await asyncio.to_thread(_make_private_dirs, plan.images_dir, plan.work_dir)
        steps.done("private")
    except BaseException as exc:  # a failure, a timeout, a cancelled request
        note = await asyncio.to_thread(_keep_log, plan.work_dir, DUMP_LOG, bundle)
        await asyncio.to_thread(_discard_images, plan.images_dir, created=created)
        marker.unlink(missing_ok=True)
        if not isinstance(exc, ShimError):
            raise
        raise with_context(exc, f"checkpoint failed: {exc} ({note})") from exc
    _store_plan(plan)
    marker.unlink(missing_ok=True)
    steps.done("plan stored")
    log.debug("checkpoint of %s: %s", cid, steps)
    return LazyDump(child, plan) if plan.lazy_pages else None


def _mark_unfinished(bundle: Path, images_dir: str, created: bool) -> Path:
    """Write the bundle's :data:`shim.bundle.UNFINISHED_DUMP` file for this dump."""
    marker = bundle / UNFINISHED_DUMP
    complete = os.path.join(images_dir, STORED_PLAN)
    text = f"{images_dir}\n{'created' if created else 'kept'}\n{complete}\n"
    tmp = bundle / f".{UNFINISHED_DUMP}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600),
              "w") as f:
        f.write(text)
    tmp.rename(marker)
    return marker


async def _start_lazy_dump(runtime: Runtime, cid: str, plan: CheckpointPlan) -> Child:
    """Start runc with a status pipe as fd 3; return once CRIU reports the images ready."""
    read_end, write_end = os.pipe()
    try:
        offset = runtime.log_offset()
        child = runtime.spawn_checkpoint(cid, checkpoint_args(plan), extra_fds=[write_end])
    finally:
        os.close(write_end)
    try:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(read_end, readable)
        child.exited.add_done_callback(lambda _: readable())  # runc gave up: pipe stays empty
        try:
            async with asyncio.timeout(_LAZY_READY_TIMEOUT):
                await ready
        finally:
            loop.remove_reader(read_end)
        os.set_blocking(read_end, False)
        try:
            status = os.read(read_end, 1)
        except BlockingIOError:
            status = b""
    finally:
        os.close(read_end)
    if status == b"\0":
        return child
    ex = await child.exited  # runc failed (or closed the pipe) before the images were ready
    runtime.raise_for("checkpoint", Result(tuple(checkpoint_args(plan)), ex.status), offset)


@dataclass(slots=True)
class Restored:
    """A restored container: its init pid and, for lazy pages, the ``criu lazy-pages``
    daemon that keeps fetching memory from the page server until it has all of it."""

    pid: int
    lazy_daemon: Child | None = None


async def _start_lazy_pages_daemon(runtime: Runtime, reaper: Reaper, plan: CheckpointPlan) -> Child:
    """``criu lazy-pages --page-server --address A --port P -D images -W work [--tls ...]``:
    it serves page faults of the restored process from the source's page server (over TLS
    when the restore gave the files: :func:`shim.checkpoint.plan.tls_args`). runc's restore
    finds it through ``lazy-pages.socket`` in the shared work dir, so wait for that
    socket."""
    assert plan.page_server is not None
    socket_path = os.path.join(plan.work_dir, LAZY_PAGES_SOCKET)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)  # a stale one would make runc connect to nobody
    argv = [
        criu_binary(runtime.config.criu_path),
        "lazy-pages",
        "--page-server",
        "--address",
        plan.page_server.address,
        "--port",
        str(plan.page_server.port),
        "--images-dir",
        plan.images_dir,
        "--work-dir",
        plan.work_dir,
        "--log-file",
        "lazy-pages.log",
        "-v4",
        *tls_args(plan),  # TLS to the page server, when the restore asked for it
    ]
    child = spawn(reaper, argv)
    try:
        async with asyncio.timeout(_LAZY_DAEMON_TIMEOUT):
            while not os.path.exists(socket_path):
                if child.exited.done():
                    raise FailedPrecondition(
                        f"criu lazy-pages exited with status {child.exited.result().status} "
                        f"(log: {plan.work_dir}/lazy-pages.log)"
                    )
                await asyncio.sleep(0.005)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, 9)
        raise
    return child


async def _undo_restore(runtime: Runtime, cid: str, work_dir: str, cgroups_path: str) -> None:
    """Remove what a failed restore left. runc and CRIU are gone by now (a timeout or
    cancellation kills their whole tree, :func:`shim.spawn.kill_tree`), but a CRIU killed on
    the way leaves its cgroup yard mounted in its work directory and runc's ``criu-root``
    mounted in runc's state directory; then runc's state (``runc delete --force``, bounded by
    its timeout) and the container's cgroups go."""
    state_dir = os.path.join(runtime.config.root, runtime.config.namespace, cid)
    yards = os.path.join(glob.escape(work_dir), CGROUP_YARD)
    await asyncio.to_thread(_unmount_leftovers, [state_dir, *glob.glob(yards)])
    with contextlib.suppress(ShimError, TimeoutError, OSError):
        await runtime.delete(cid, force=True)
    await asyncio.to_thread(_remove_leftovers, state_dir, glob.glob(yards), cgroups_path)


def _unmount_leftovers(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            unmount_under(path)


def _remove_leftovers(state_dir: str, yards: list[str], cgroups_path: str) -> None:
    """File work of :func:`_undo_restore`: run it in a thread."""
    for yard in yards:
        with contextlib.suppress(OSError):
            os.rmdir(yard)
    if not os.path.exists(os.path.join(state_dir, "state.json")):
        shutil.rmtree(state_dir, ignore_errors=True)  # runc never recorded the container
    if not cgroups_path or cgroups_path.count(":") == 2:  # none, or systemd's to remove
        return
    deadline = time.monotonic() + _CGROUP_RMDIR_WAIT
    # every hierarchy CRIU restores into, named ones (systemd) and the unified one too
    for path in sorted(CGROUP_ROOT.glob(f"*/{cgroups_path.strip('/')}")):
        while path.is_dir():
            try:
                path.rmdir()
            except OSError:  # the killed tasks are still leaving it
                if time.monotonic() > deadline:
                    log.warning("cannot remove cgroup %s of a failed restore", path)
                    break
                time.sleep(0.05)


def _open_unpacking(path: str) -> int | None:
    """Open the CRI endpoint's :data:`~shim.checkpoint.plan.UNPACKING` file at ``path``;
    None if there is none. Honoured only as the endpoint makes it: a regular file of the
    shim's own user (root), in a directory of that user that nobody else may write to (else
    anyone who may write there could plant a FIFO, a file they keep locked, or a symlink).
    Opened without following a link and non-blocking (a FIFO would block the open).

    Raises:
        InvalidArgument: it is there but not as the endpoint makes it, naming it and why.
        OSError: its directory cannot be read.
    """
    parent, name = os.path.split(path)
    dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        where = os.fstat(dir_fd)
        if where.st_uid != os.geteuid() or where.st_mode & 0o022:
            raise InvalidArgument(
                f"{path}: its directory is owned by uid {where.st_uid} with mode "
                f"{stat.S_IMODE(where.st_mode):04o}; not the CRI endpoint's, not trusted")
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"{path} is not a regular file; not trusted")
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)  # what was opened, not what was looked at
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise InvalidArgument(f"{path} is not a regular file of uid {os.geteuid()}; not trusted")
    return fd


async def _wait_unpacked(path: str) -> None:
    """Wait until the CRI endpoint has written all of a checkpoint's images: it holds an
    exclusive ``flock`` on ``path`` (:data:`shim.checkpoint.plan.UNPACKING`) while it writes
    them and then writes ``complete`` into it. No file: everything was written before the
    container was created. The lock is polled (``LOCK_NB``, a few ms apart: a wait is
    cancellable and holds no thread), for at most :func:`~shim.runtime.criu_timeout`
    (Start's own deadline, if shorter, cancels it first).

    Raises:
        FailedPrecondition: the endpoint stopped before it had written them all, or still
            holds the lock at the limit, or the file cannot be read (naming it).
        InvalidArgument: the file is not the endpoint's (:func:`_open_unpacking`).
    """
    limit = criu_timeout()
    try:
        fd = _open_unpacking(path)
        if fd is None:
            return
        try:
            async with asyncio.timeout(limit):
                delay = _UNPACKED_POLL_FIRST
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(delay)
                        delay = min(2 * delay, _UNPACKED_POLL_MAX)
            state = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        finally:
            os.close(fd)
    except TimeoutError as exc:  # an OSError too: first
        raise FailedPrecondition(
            f"the checkpoint's images were not unpacked within {limit:g} s ({path} still"
            " locked by the CRI endpoint)") from exc
    except OSError as exc:
        raise FailedPrecondition(
            f"the checkpoint's images cannot be waited for ({path}: {exc.strerror})") from exc
    if state != "complete":
        raise FailedPrecondition(
            f"the checkpoint's images were not all unpacked ({path}: {state or 'empty'})"
        )


async def restore(
    runtime: Runtime,
    reaper: Reaper,
    cid: str,
    bundle: Path,
    source: RestoreSource,
    annotations: Mapping[str, str],
    stdio: Stdio,
    *,
    console_socket: str | None,
    no_pivot: bool,
    cgroups_path: str = "",
) -> Restored:
    """Restore ``cid`` (whose spec has ``annotations``) from ``source``, with the plan its
    dump stored (:func:`shim.checkpoint.plan.plan_restore`). Its network's rebuild is the
    caller's (:class:`shim.checkpoint.netrestore.NetworkRestore`, entered before this).

    The restore is bounded (the caller's deadline, else the runtime's limit); a restore that
    fails, runs out of time or is cancelled leaves nothing behind (:func:`_undo_restore`).

    Raises:
        InvalidArgument: the stored plan, the annotations or the restore options are bad.
        FailedPrecondition: CRIU or the host cannot do it (nothing started).
        ShimError: runc or CRIU failed; the message names the kept CRIU log.
    """
    steps = _Steps()
    check_path("image path", source.images_dir)
    if source.unpacking:
        await _wait_unpacked(source.unpacking)
        steps.done("images unpacked")
    try:
        with open(os.path.join(source.images_dir, STORED_PLAN), "rb") as f:
            stored: bytes | None = f.read()
    except FileNotFoundError:
        stored = None  # a checkpoint made elsewhere: options from annotations alone
    plan = plan_restore(
        source, stored, annotations, default_work_dir=str(bundle / CRIU_WORK_DIR)
    )
    _check_work_path(plan.work_dir, bundle)
    steps.done("plan")
    await _ensure_capable(
        runtime,
        reaper,
        Requirements(min_version=plan.required_criu_version, lazy_pages=plan.lazy_pages),
    )
    steps.done("criu probe")
    _mkdir_private(plan.work_dir)
    pid_file = bundle / "init.pid"
    daemon: Child | None = None
    try:
        _write_criu_config(bundle, annotations, criu_config(plan, restore=True))
        if plan.lazy_pages:
            daemon = await _start_lazy_pages_daemon(runtime, reaper, plan)
        opts = RestoreOpts(
            bundle,
            pid_file,
            tuple(restore_args(plan)),
            console_socket=console_socket,
            no_pivot=no_pivot,
        )
        steps.done("config")
        await runtime.restore(cid, opts, stdio)
        steps.done("runc restore")
    except BaseException as exc:
        if daemon is not None and not daemon.exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon.pid, 9)
        note = await asyncio.to_thread(_keep_log, plan.work_dir, RESTORE_LOG, bundle)
        await _undo_restore(runtime, cid, plan.work_dir, cgroups_path)
        if not isinstance(exc, ShimError):
            raise
        raise with_context(exc, f"restore failed: {exc} ({note})") from exc
    # The default work dir is the shim's own, new for this restore: CRIU's log and stats, a
    # handful of files, so its chmods are bounded and done here (~20 us for a log and stats;
    # the thread hand-off costs ~80 us, and a daemon's first also starts the thread pool). A
    # work dir the request named may hold anything (even the images): on a thread.
    if plan.work_dir == str(bundle / CRIU_WORK_DIR):
        make_private(plan.work_dir)
    else:
        await asyncio.to_thread(make_private, plan.work_dir)
    steps.done("private")
    log.debug("restore of %s: %s", cid, steps)
    return Restored(int(pid_file.read_text()), daemon)
