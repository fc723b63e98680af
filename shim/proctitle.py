"""Make a forked daemon show up in ``ps`` as the shim it is.

Strategy: a daemon forked from ``start`` or from the fork server (:mod:`shim.forkserver`)
still carries that process's command line. As ``setproctitle`` does, the original argv area
(``arg_start``..``arg_end`` in ``/proc/self/stat``) is overwritten in place with the shim's
argv (what the runc shim's re-exec'd daemon shows: ``-namespace N -id ID -address A``), and
the thread name becomes ``containerd-shim`` like Go shims'. The area cannot grow (moving it
needs CAP_SYS_RESOURCE), so the fork server is started with a padded command line.
"""

from __future__ import annotations

import ctypes

__all__ = ["set_cmdline"]

PR_SET_NAME = 15
COMM = b"containerd-shim"
# Loaded once, where this module is imported (the fork server): a CDLL made per call makes a
# class of its own each time (ctypes' function pointer type), in every daemon.
_LIBC = ctypes.CDLL(None)
_prctl = _LIBC.prctl


def _arg_area() -> tuple[int, int]:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[45]), int(fields[46])  # fields 48 and 49: arg_start, arg_end


def set_cmdline(argv: list[str]) -> None:
    """Show ``argv`` as this process's command line (truncated to the space there is)."""
    start, end = _arg_area()
    size = end - start
    data = b"\0".join(a.encode() for a in argv) + b"\0"
    data = data[:size].ljust(size, b"\0")
    ctypes.memmove(start, data, size)
    _prctl(PR_SET_NAME, ctypes.c_char_p(COMM), 0, 0, 0)
