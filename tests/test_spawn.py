"""shim.spawn.kill_tree: a process and every descendant of it are killed."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from shim.spawn import kill_tree


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_tree_kills_children_and_grandchildren(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # sh -> (sh -> sleep) and sleep: two levels below the root, each writing its pid
    script = (f"sleep 100 & echo $! >> {pids}; "
              f"sh -c 'sleep 100 & echo $! >> {pids}; wait' & echo $! >> {pids}; wait")
    root = subprocess.Popen(["sh", "-c", script])
    try:
        deadline = time.monotonic() + 10
        while (not pids.exists() or len(pids.read_text().split()) < 3) and (
                time.monotonic() < deadline):
            time.sleep(0.01)
        tree = [int(p) for p in pids.read_text().split()]
        assert len(tree) == 3 and all(_alive(p) for p in tree)
        kill_tree(root.pid)
        assert root.wait(timeout=10) == -9
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not any(_alive(p) for p in tree), [p for p in tree if _alive(p)]
    finally:
        if root.poll() is None:
            root.kill()
            root.wait()


def test_kill_tree_of_a_gone_process_is_quiet() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    kill_tree(proc.pid)  # no such process: nothing raised
    assert not _alive(proc.pid) or os.getpid() == proc.pid
