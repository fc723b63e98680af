"""The fork server's pure parts: the code stamp, and the command line a forked daemon shows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from shim.forkserver import code_stamp


def test_code_stamp_is_stable_and_sees_every_change(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("ignored")
    first = code_stamp(str(tmp_path))
    assert code_stamp(str(tmp_path)) == first
    (tmp_path / "notes.txt").write_text("still ignored")
    assert code_stamp(str(tmp_path)) == first
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")
    os.utime(tmp_path / "sub" / "b.py", ns=(0, time.time_ns() + 10**9))
    second = code_stamp(str(tmp_path))
    assert second != first
    (tmp_path / "c.py").write_text("")
    assert code_stamp(str(tmp_path)) != second


def test_set_cmdline_rewrites_proc_cmdline() -> None:
    """A process started with room on its command line shows the shim's argv instead."""
    script = (
        "import sys, time\n"
        "from shim.proctitle import set_cmdline\n"
        "set_cmdline(['containerd-shim-pyrunc-v2', '-namespace', 'ns', '-id', 'c1'])\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "-" * 200], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        raw = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        argv = [a.decode() for a in raw.split(b"\0") if a]
        assert argv == ["containerd-shim-pyrunc-v2", "-namespace", "ns", "-id", "c1"]
        assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == "containerd-shim"
    finally:
        proc.kill()
        proc.wait()
