"""Mounting the rootfs containerd hands to Create, and unmounting it at delete.

Strategy: mirrors containerd ``mount/mount_linux.go``: each option is either a known mount
flag or part of the data string; bind mounts asked to be read-only are remounted, and
propagation flags are applied in a separate call, as the kernel requires. mount(2) and
umount2(2) come from libc through ctypes (no mount(8) process per container). No dataclasses
here: ``delete`` imports this module on the critical path of ``ctr run --rm``.
"""

from __future__ import annotations

import ctypes
import errno
import os

TYPE_CHECKING = False  # (importing typing would cost start-up time; see shim.cli)
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["mount", "mount_all", "mounts_under", "parse_options", "unmount_all", "unmount_under"]

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2
_PROPAGATION = MS_SHARED | MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE

# option -> (clear?, flag)
_FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, MS_SYNCHRONOUS),
    "atime": (True, MS_NOATIME),
    "bind": (False, MS_BIND),
    "defaults": (False, 0),
    "dev": (True, MS_NODEV),
    "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC),
    "exec": (True, MS_NOEXEC),
    "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME),
    "nodev": (False, MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME),
    "noexec": (False, MS_NOEXEC),
    "nomand": (True, MS_MANDLOCK),
    "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME),
    "nosuid": (False, MS_NOSUID),
    "rbind": (False, MS_BIND | MS_REC),
    "relatime": (False, MS_RELATIME),
    "remount": (False, MS_REMOUNT),
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "strictatime": (False, MS_STRICTATIME),
    "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
}
_PROPAGATION_FLAGS: dict[str, int] = {
    "private": MS_PRIVATE,
    "shared": MS_SHARED,
    "slave": MS_SLAVE,
    "unbindable": MS_UNBINDABLE,
    "rprivate": MS_PRIVATE | MS_REC,
    "rshared": MS_SHARED | MS_REC,
    "rslave": MS_SLAVE | MS_REC,
    "runbindable": MS_UNBINDABLE | MS_REC,
}


def parse_options(options: Iterable[str]) -> tuple[int, int, str]:
    """Split mount options into (flags, propagation flags, data string)."""
    flags = propagation = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAGS:
            clear, flag = _FLAGS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in _PROPAGATION_FLAGS:
            propagation |= _PROPAGATION_FLAGS[opt]
        else:
            data.append(opt)
    return flags, propagation, ",".join(data)


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)  # libc is already mapped into the process
    return _libc


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    rc = _lib().mount(
        source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target} ({fstype}): {os.strerror(err)}")


def mount(fstype: str, source: str, options: Iterable[str], target: str) -> None:
    """Mount one ``containerd.types.Mount`` (type, source, options) on ``target``."""
    flags, propagation, data = parse_options(options)
    _mount(source, target, fstype, flags, data)
    if flags & MS_BIND and flags & MS_RDONLY:
        _mount("", target, "", flags | MS_REMOUNT, data)
    if propagation:
        _mount("", target, "", propagation, "")


def mount_all(mounts: Sequence[tuple[str, str, Sequence[str]]], target: str) -> None:
    """Mount every (type, source, options) on ``target`` in order; on failure undo them."""
    try:
        for fstype, source, options in mounts:
            mount(fstype, source, options, target)
    except OSError:
        unmount_all(target)
        raise


def mounts_under(prefix: str) -> list[str]:
    """The mount points at ``prefix`` or below it (``/proc/self/mountinfo``), deepest first."""
    import re  # not at module level: ``delete`` imports this module and never needs it

    prefix = prefix.rstrip("/")
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            # mountinfo escapes space, tab, newline and backslash as octal
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(set(found), key=lambda m: m.count("/"), reverse=True)


def unmount_under(prefix: str) -> None:
    """Detach every mount at ``prefix`` or below it (what a killed CRIU left: its cgroup
    yard, runc's ``criu-root``)."""
    for point in mounts_under(prefix):
        unmount_all(point)


def unmount_all(target: str) -> None:
    """Unmount ``target`` until nothing is mounted there (EINVAL) or it does not exist."""
    umount2 = _lib().umount2
    while True:
        if umount2(target.encode(), 0) == 0:
            continue
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        if err == errno.EBUSY:
            if umount2(target.encode(), MNT_DETACH) == 0:
                continue
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):
                return
        raise OSError(err, f"unmount {target}: {os.strerror(err)}")
