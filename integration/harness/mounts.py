"""Mounts under a directory (``/proc/self/mountinfo``) and their removal, deepest first."""

from __future__ import annotations

import ctypes
import errno
import os
import re
from typing import Final

from .procs import _read_or_empty

_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field_text: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field_text)


def mounts_under(prefix: str | os.PathLike[str]) -> list[str]:
    """Mount points at or under ``prefix``, in ``/proc/self/mountinfo`` order."""
    base = os.fspath(prefix).rstrip("/")
    found = []
    for line in _read_or_empty("/proc/self/mountinfo").splitlines():
        cols = line.split(" ")
        if len(cols) > 4:
            point = _unescape(cols[4])
            if point == base or point.startswith(base + "/"):
                found.append(point)
    return found


_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH: Final = 2


def _umount(path: str, flags: int) -> int:
    if _libc.umount2(path.encode(), flags) == 0:
        return 0
    return ctypes.get_errno()


def unmount_all_under(prefix: str | os.PathLike[str]) -> list[str]:
    """Unmount everything at or under ``prefix``: deepest (and latest) first, lazily if busy.

    Returns:
        The mount points that could not be unmounted (empty on success).
    """
    for _ in range(20):
        points = mounts_under(prefix)
        if not points:
            return []
        ordered = sorted(enumerate(points), key=lambda ip: (ip[1].count("/"), ip[0]), reverse=True)
        for _, point in ordered:
            err = _umount(point, 0)
            if err == errno.EBUSY:
                err = _umount(point, _MNT_DETACH)
            # EINVAL: already gone (a parent went first); anything else shows up next round
    return mounts_under(prefix)
