"""The daemon's rehearsal in the fork server: it really serves calls and forwards events, and
leaves nothing behind. It runs in a fresh interpreter (it changes the root logger's level
and asyncio's policy, process-wide)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_rehearsal_serves_calls_and_events_and_leaves_nothing_behind() -> None:
    code = textwrap.dedent("""
        import asyncio, logging, os, signal
        import shim.daemon

        fds = sorted(os.listdir("/proc/self/fd"))
        handlers = [signal.getsignal(s) for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)]
        print(*shim.daemon.rehearse(3))
        print(sorted(os.listdir("/proc/self/fd")) == fds,
              [signal.getsignal(s) for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)]
              == handlers,
              signal.set_wakeup_fd(-1),
              asyncio.get_event_loop_policy()._local._loop is None,
              logging.getLogger().level == logging.INFO)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    counts, state = proc.stdout.splitlines()
    # 4 calls a round answered (Connect, and Create, State, Delete with their errors), one
    # event a round forwarded to the stand-in for containerd
    assert counts == "12 3"
    # no descriptor, signal handler, wake-up fd or event loop left; the daemons' log level
    assert state == "True True -1 True True"
