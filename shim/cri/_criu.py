"""Is there a CRIU the checkpoint can use? (``criu --version`` >= 3.16, cached per binary.)

Strategy: containerd 2.x refuses a CRI checkpoint up front when CRIU is missing or older than
3.16 (version 31600), with the text kubelet's e2e test treats as "unsupported"; the endpoint
does the same before touching the container. The answer is cached per binary path and file
identity (a CRIU installed later is seen).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from typing import Final

from ._errors import Unsupported

__all__ = ["MIN_CRIU_VERSION", "check_criu", "criu_version"]

MIN_CRIU_VERSION: Final = 31600
_VERSION: Final = re.compile(r"^Version:\s*(\d+)\.(\d+)(?:\.(\d+))?", re.MULTILINE)
_cache: dict[tuple[str, int, int], int] = {}
_lock = threading.Lock()


def criu_version(binary: str) -> int:
    """CRIU's version as major*10000 + minor*100 + sublevel.

    Raises:
        Unsupported: not found, does not run, or says no version.
    """
    path = binary if os.sep in binary else shutil.which(binary)
    if path is None or not os.access(path, os.X_OK):
        raise Unsupported(f"{binary}: not found")
    st = os.stat(path)
    key = (path, st.st_ino, int(st.st_mtime_ns))
    with _lock:
        if key in _cache:
            return _cache[key]
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL, check=False).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unsupported(f"{path}: {exc}") from exc
    m = _VERSION.search(out)
    if m is None:
        raise Unsupported(f"{path} --version printed no version")
    version = int(m[1]) * 10000 + int(m[2]) * 100 + int(m[3] or 0)
    with _lock:
        _cache[key] = version
    return version


def check_criu(binary: str) -> int:
    """:func:`criu_version`, refusing one older than :data:`MIN_CRIU_VERSION`."""
    version = criu_version(binary)
    if version < MIN_CRIU_VERSION:
        raise Unsupported(f"{binary} is version {version}")
    return version
