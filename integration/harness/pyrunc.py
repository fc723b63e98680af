"""The ``pyrunc`` tool run against the harness's containerd."""

from __future__ import annotations

import os
import subprocess
import sys

from ._common import NAMESPACE, REPO
from .containerd import Containerd


def pyrunc_argv(containerd: Containerd, *args: str, namespace: str = NAMESPACE) -> list[str]:
    """``pyrunc -a <containerd's socket> -n <namespace> args``, as this checkout's
    ``shim.ctl`` run by the test's interpreter."""
    return [sys.executable, "-m", "shim.ctl", "-a", containerd.address, "-n", namespace, *args]


def pyrunc_env() -> dict[str, str]:
    """The environment for :func:`pyrunc_argv`: this checkout first on the path, and no
    CONTAINERD_* variables that could point the tool elsewhere."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CONTAINERD_ADDRESS", None)
    env.pop("CONTAINERD_NAMESPACE", None)
    return env


def run_pyrunc(
    containerd: Containerd, *args: str, namespace: str = NAMESPACE, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the ``pyrunc`` tool against ``containerd`` to completion (output captured)."""
    return subprocess.run(
        pyrunc_argv(containerd, *args, namespace=namespace),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
        env=pyrunc_env(),
    )
