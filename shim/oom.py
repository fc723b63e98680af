"""OOM notifications of cgroup v1 memory controllers, turned into ``/tasks/oom`` events.

Strategy: mirrors containerd ``pkg/oom/v1``: an eventfd is registered for the container's
``memory.oom_control`` through ``cgroup.event_control``; the kernel bumps it on every OOM in
that cgroup, and the event loop reads it (no thread, no polling). A watch is made by
:func:`watch` and ended by ``close()`` (also when the cgroup disappears: the eventfd then
reports readable and reading the control file fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["OomWatch", "watch"]

log = logging.getLogger(__name__)


class OomWatch:
    """An eventfd registered for one memory cgroup's OOM notifications."""

    def __init__(self, efd: int, control: int, memory_dir: Path, on_oom: Callable[[], None]):
        self._efd = efd
        self._control = control
        self._memory_dir = memory_dir
        self._on_oom = on_oom
        asyncio.get_running_loop().add_reader(efd, self._readable)

    def _readable(self) -> None:
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            return
        if not (self._memory_dir / "memory.oom_control").exists():
            self.close()  # the cgroup went away: the kernel signals that too
            return
        self._on_oom()

    def close(self) -> None:
        if self._efd < 0:
            return
        asyncio.get_running_loop().remove_reader(self._efd)
        for fd in (self._efd, self._control):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._efd = self._control = -1


def watch(memory_dir: Path, on_oom: Callable[[], None]) -> OomWatch | None:
    """Watch ``memory_dir`` (a cgroup v1 memory directory) for OOMs; None if that cannot be
    done (no such cgroup, a cgroup v2 host): OOM events are then simply not reported."""
    try:
        control = os.open(memory_dir / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        (memory_dir / "cgroup.event_control").write_text(f"{efd} {control}")
    except OSError as exc:
        log.warning("cannot watch %s for OOM: %s", memory_dir, exc)
        os.close(efd)
        os.close(control)
        return None
    return OomWatch(efd, control, memory_dir, on_oom)
