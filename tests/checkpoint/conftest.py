"""Fixtures shared by the checkpoint package's unit tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def in_new_netns() -> Callable[[str], str]:
    """Run Python code (``python -c``, from the checkout) in a network namespace of its own
    and return what it printed; fail the test with its stderr if it fails. Root makes the
    namespace itself; anyone else through a user namespace (which a chrooted process cannot
    make: the unit tests also run as root in hack/fresh-check.sh's chroot)."""
    unshare = shutil.which("unshare")
    assert unshare is not None, "util-linux's unshare is needed"
    as_user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]

    def run(code: str) -> str:
        proc = subprocess.run(
            [unshare, *as_user, "--net", sys.executable, "-c", code],
            capture_output=True, text=True, timeout=60, check=False,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    return run
