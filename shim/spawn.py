"""Spawning helper processes (runc, criu, logging binaries) through the one reaper.

Strategy: ``os.posix_spawn`` only forks and execs; nobody but :mod:`shim.reaper` waits. The
child's pid is watched in the same loop step as the spawn, so its exit cannot be missed.
Output to capture is read from non-blocking pipes on the event loop; nothing here blocks it.
No ``subprocess`` in the daemon: its ``wait``/``__del__`` would race the reaper for exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shim.reaper import Exit, Reaper

__all__ = ["CAPTURE", "Child", "Result", "kill_tree", "run", "spawn"]

CAPTURE = -1
"""Pass as ``stdout``/``stderr`` to collect that stream into :class:`Result`."""

_DEVNULL_PATH = "/dev/null"


@dataclass(frozen=True, slots=True)
class Result:
    """A finished child: its exit status (128 + signal) and captured output."""

    argv: tuple[str, ...]
    status: int
    stdout: bytes = b""
    stderr: bytes = b""


@dataclass(slots=True)
class Child:
    """A spawned child process and the future of its exit."""

    pid: int
    exited: asyncio.Future[Exit]
    _captures: list[asyncio.Future[bytes]] = field(default_factory=list)


async def read_all(fd: int) -> bytes:
    """Read a non-blocking fd to EOF on the event loop, then close it."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    done: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                loop.remove_reader(fd)
                if not done.done():
                    done.set_exception(exc)
                return
            if not data:
                loop.remove_reader(fd)
                if not done.done():
                    done.set_result(None)
                return
            chunks.append(data)

    os.set_blocking(fd, False)
    loop.add_reader(fd, on_readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return b"".join(chunks)


def spawn(
    reaper: Reaper,
    argv: Sequence[str],
    *,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    extra_fds: Sequence[int] = (),
    env: Mapping[str, str] | None = None,
    setsid: bool = False,
) -> Child:
    """Start ``argv`` with the given fds as its 0, 1, 2 (``None`` = /dev/null, ``CAPTURE`` =
    a pipe read into the result) and ``extra_fds`` as 3, 4, ...

    Returns:
        The child; its exit arrives on ``child.exited``.
    Raises:
        OSError: the program could not be started.
    """
    loop = asyncio.get_running_loop()
    owned: list[int] = []
    captures: list[asyncio.Future[bytes]] = []
    actions: list[tuple[int, int, int] | tuple[int, int, str, int, int]] = []
    try:
        sources = [stdin, stdout, stderr, *extra_fds]
        for target, src in enumerate(sources):
            if src is None:
                actions.append((os.POSIX_SPAWN_OPEN, target, _DEVNULL_PATH, os.O_RDWR, 0))
                continue
            if src == CAPTURE:
                r, w = os.pipe()
                owned.append(w)
                captures.append(loop.create_task(read_all(r)))
                src = w
            # dup first so that a source already numbered like a target keeps its value
            # and loses FD_CLOEXEC only in the child.
            tmp = os.dup(src)
            owned.append(tmp)
            actions.append((os.POSIX_SPAWN_DUP2, tmp, target))
        pid = os.posix_spawnp(
            argv[0],
            list(argv),
            dict(os.environ if env is None else env),
            file_actions=actions,
            setsid=setsid,
            setsigdef=(signal.SIGPIPE, signal.SIGCHLD, signal.SIGTERM, signal.SIGINT),
            setsigmask=(),
        )
        exited = reaper.watch(pid, spawned=True)
    except BaseException:
        for task in captures:
            task.cancel()
        raise
    finally:
        for fd in owned:
            os.close(fd)
    return Child(pid, exited, captures)


async def run(
    reaper: Reaper,
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    stdin: int | None = None,
    stdout: int | None = CAPTURE,
    stderr: int | None = CAPTURE,
    extra_fds: Sequence[int] = (),
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Result:
    """Run ``argv`` to completion; see :func:`spawn` for the fd arguments.

    Args:
        input: bytes written to the child's stdin (then closed); excludes ``stdin``.
        timeout: seconds before the child is killed and ``TimeoutError`` raised.
    Returns:
        The exit status and captured output (empty for streams not captured).
    """
    in_r = in_w = -1
    if input is not None:
        in_r, in_w = os.pipe()
        stdin = in_r
    try:
        child = spawn(
            reaper, argv, stdin=stdin, stdout=stdout, stderr=stderr, extra_fds=extra_fds, env=env
        )
    finally:
        if in_r >= 0:
            os.close(in_r)
    writer: asyncio.Task[None] | None = None
    if in_w >= 0:
        assert input is not None
        writer = asyncio.get_running_loop().create_task(_write_all(in_w, input))
    try:
        async with asyncio.timeout(timeout):
            ex = await asyncio.shield(child.exited)
            outputs = [await c for c in child._captures]
            if writer is not None:
                await writer
    except TimeoutError:
        kill_tree(child.pid)
        raise TimeoutError(f"{argv[0]} did not finish within {timeout} s") from None
    except asyncio.CancelledError:  # the caller gave up (a ttrpc deadline): stop the child too
        kill_tree(child.pid)
        raise
    out = outputs[0] if stdout == CAPTURE else b""
    err = outputs[-1] if stderr == CAPTURE and outputs else b""
    return Result(tuple(argv), ex.status, out, err)


async def _write_all(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    view = memoryview(data)
    try:
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_writer(fd, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(fd)
                continue
            except BrokenPipeError:
                return
            view = view[n:]
    finally:
        os.close(fd)


def _children(pids: set[int]) -> set[int]:
    """The processes whose parent is in ``pids`` (from ``/proc/<pid>/stat``)."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) in pids:
            found.add(int(entry))
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant of it (a runc and the CRIU it runs, with the
    tasks CRIU is restoring, which CRIU clones as runc's children).

    The tree is stopped top down first (SIGSTOP), so nobody forks a child this walk misses,
    then killed: a killed process's children would go to the subreaper and no longer be
    found as descendants. Reading ``/proc`` is cheap; it runs on the loop.
    """
    tree: set[int] = set()
    level = {pid}
    while level:
        for p in level:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        tree |= level
        level = _children(level) - tree
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
