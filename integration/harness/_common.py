"""Constants, errors, the one polling wait of the harness and a free TCP port."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

REPO: Final = Path(__file__).resolve().parents[2]
IMAGE_REF: Final = "localhost/pyrunc-test:latest"
IMAGE_TAR: Final = REPO / "build" / "pyrunc-test-image.tar"
BUILD_SCRIPT: Final = REPO / "hack" / "image" / "build.sh"
NAMESPACE: Final = "pyrunc-it"
RUNC: Final = "io.containerd.runc.v2"
PYRUNC: Final = "io.containerd.pyrunc.v2"
RUNTIMES: Final = {"runc": RUNC, "pyrunc": PYRUNC}
SHIM_SOCKET_DIR: Final = Path("/run/containerd/s")
TASK_DIR: Final = "io.containerd.runtime.v2.task"
_PATH_DIRS: Final = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

T = TypeVar("T")


class HarnessError(Exception):
    """The harness itself could not do its job (containerd won't start, no image, ...)."""


class WaitTimeout(AssertionError):
    """:func:`wait_until` ran out of time; an assertion failure of the test."""


class CtrError(subprocess.CalledProcessError):
    """``ctr`` exited non-zero when it was expected to succeed; shows its output."""

    def __str__(self) -> str:
        return (
            f"{super().__str__()}\n--- stdout ---\n{self.stdout or ''}"
            f"--- stderr ---\n{self.stderr or ''}"
        )


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    *,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy.

    Args:
        predicate: called repeatedly; exceptions propagate.
        timeout: seconds before giving up.
        interval: seconds between calls.
        message: what was awaited (or a callable giving it, for late details).

    Returns:
        The first truthy value ``predicate`` returned.

    Raises:
        WaitTimeout: ``timeout`` passed; names ``message`` and the last value seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {text} (last: {value!r})")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
