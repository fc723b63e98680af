"""The reaper with real children: status conversion, early exits, pid watching."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from shim.reaper import Reaper, exit_status
from shim.spawn import run, spawn


def test_exit_status_conventions() -> None:
    assert exit_status(7 << 8) == 7
    assert exit_status(signal.SIGKILL) == 128 + 9


def test_run_reports_status_and_output() -> None:
    async def main() -> None:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        result = await run(reaper, ["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (result.status, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
        result = await run(reaper, ["cat"], input=b"x" * 200_000)
        assert result.stdout == b"x" * 200_000
        result = await run(reaper, ["sh", "-c", "kill -TERM $$"])
        assert result.status == 128 + 15

    asyncio.run(main())


def test_exit_before_watch_is_kept_for_a_late_watcher() -> None:
    async def main() -> None:
        reaper = Reaper()
        loop = asyncio.get_running_loop()
        reaper.install(loop)
        # A grandchild-like pid we learn late: spawn, forget, let it exit, then watch.
        child = spawn(reaper, ["sh", "-c", "exit 5"])
        reaper.forget(child.pid)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if child.pid in reaper._unclaimed:
                break
        ex = await asyncio.wait_for(reaper.watch(child.pid), 5)
        assert ex.status == 5

    asyncio.run(main())


def test_timeout_kills_child() -> None:
    async def main() -> None:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        with pytest.raises(TimeoutError):
            await run(reaper, ["sleep", "10"], timeout=0.2)

    asyncio.run(main())
    assert os.getpid() > 0
