"""The one SIGCHLD reaper: every child exit goes through it to whoever watches that pid.

Strategy: mirrors containerd ``sys/reaper/reaper_unix.go``. The daemon is a child subreaper, so
container inits (reparented after ``runc create`` exits) and runc invocations are all our
children. This module is the **only** caller of ``waitpid``. On SIGCHLD it loops on
``waitpid(-1, WNOHANG)`` and hands each :class:`Exit` to the watcher of that pid. Watching is
race-free: a pid spawned by us is watched in the same loop step as the spawn (no ``await`` in
between), and an exit that arrives before anyone watches its pid (a reparented grandchild whose
pid we learn later from a pid file) is kept and handed over when the watch comes.
Exit status is 128 + signal for signalled processes, as containerd expects.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["Exit", "Reaper", "exit_status"]

# Exits nobody watched yet are kept for late watchers; bounded so a leak cannot grow forever.
_MAX_UNCLAIMED = 1024


@dataclass(frozen=True, slots=True)
class Exit:
    """A reaped child: its pid, exit status (128 + signal if signalled) and when it was seen."""

    pid: int
    status: int
    timestamp: float


def exit_status(wait_status: int) -> int:
    """Convert a raw ``waitpid`` status to a shell-style exit status (128 + signal)."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    if os.WIFEXITED(wait_status):
        return os.WEXITSTATUS(wait_status)
    return 255


class Reaper:
    """Reaps every child of the process and routes exits to per-pid futures."""

    def __init__(self) -> None:
        self._watchers: dict[int, asyncio.Future[Exit]] = {}
        self._unclaimed: OrderedDict[int, Exit] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start handling SIGCHLD on ``loop``; reap anything that exited before."""
        self._loop = loop
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()

    def watch(self, pid: int, *, spawned: bool = False) -> asyncio.Future[Exit]:
        """Return a future resolved with the exit of ``pid`` (at once if it already exited).

        Args:
            pid: the process to watch.
            spawned: ``pid`` was spawned by us in this loop step, so any exit kept for that
                number belongs to an earlier process that had the same pid and is dropped.
        Raises:
            RuntimeError: ``pid`` is already watched (one watcher per pid).
        """
        loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[Exit] = loop.create_future()
        early = self._unclaimed.pop(pid, None)
        if early is not None and not spawned:
            fut.set_result(early)
            return fut
        if pid in self._watchers and not self._watchers[pid].done():
            raise RuntimeError(f"pid {pid} is already watched")
        self._watchers[pid] = fut
        return fut

    def forget(self, pid: int) -> None:
        """Stop watching ``pid`` (its watcher lost interest); a later exit is kept unclaimed."""
        fut = self._watchers.pop(pid, None)
        if fut is not None and not fut.done():
            fut.cancel()

    def reap(self) -> None:
        """Collect every exited child without blocking and deliver each exit."""
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._deliver(Exit(pid, exit_status(wait_status), time.time()))

    def _deliver(self, ex: Exit) -> None:
        fut = self._watchers.pop(ex.pid, None)
        if fut is not None and not fut.done():
            fut.set_result(ex)
            return
        self._unclaimed[ex.pid] = ex
        while len(self._unclaimed) > _MAX_UNCLAIMED:
            self._unclaimed.popitem(last=False)
