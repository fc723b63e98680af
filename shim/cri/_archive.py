"""Writing a checkpoint archive: a plain tar, as containerd 2.x writes it, at ``location``.

Strategy: entries are given as (name in the archive, file or directory on disk); they are
written in name order, directories walked in name order, with no ``./`` prefix, POSIX ustar
headers, owner 0:0 without names, each file's own mode and mtime. The tar goes to a temporary
file beside ``location`` (mode 0600, a dot name that is not ``*.tar``, so kubelet's and
checkpointctl's listings skip it), is fsynced and renamed onto ``location``. Whatever fails
before the rename (an error, the caller's deadline) removes the temporary file: no file ever
appears at ``location`` unless it is complete.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ._errors import DeadlineExceeded, InvalidArgument

__all__ = ["check_location", "write_archive"]


def check_location(location: str) -> Path:
    """kubelet's ``location``: an absolute path whose directory exists.

    Raises:
        InvalidArgument: empty, relative, a directory, or its directory is missing.
    """
    if not location:
        raise InvalidArgument("location: empty; give the path of the archive to write")
    path = Path(location)
    if not path.is_absolute():
        raise InvalidArgument(f"location {location!r}: not an absolute path")
    if not path.parent.is_dir():
        raise InvalidArgument(f"location {location!r}: directory {path.parent} does not exist")
    if path.is_dir():
        raise InvalidArgument(f"location {location!r}: is a directory")
    return path


def _walk(name: str, source: Path) -> Iterator[tuple[str, Path]]:
    yield name, source
    if source.is_dir() and not source.is_symlink():
        for child in sorted(os.listdir(source)):
            yield from _walk(f"{name}/{child}", source / child)


def _member(name: str, source: Path) -> tarfile.TarInfo:
    st = source.lstat()
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISREG(st.st_mode):
        info.size = st.st_size
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(source)
    else:
        raise InvalidArgument(f"{source}: neither a file, a directory nor a symlink")
    return info


def write_archive(location: Path, entries: Sequence[tuple[str, Path]],
                  deadline: Callable[[], bool] = lambda: False) -> None:
    """Write ``entries`` as the tar ``location`` (temporary file, then rename).

    Args:
        location: the final path (checked by :func:`check_location`).
        entries: top-level names and what they hold.
        deadline: true once the caller's time is up; checked between files.

    Raises:
        DeadlineExceeded: the deadline passed before the archive was complete.
        OSError: writing failed.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{location.name}.", suffix=".partial",
                               dir=location.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for top, source in sorted(entries):
                    for name, path in _walk(top, source):
                        if deadline():
                            raise DeadlineExceeded(
                                f"deadline reached while writing {location}; nothing written")
                        info = _member(name, path)
                        if info.isreg():
                            with open(path, "rb") as src:
                                tar.addfile(info, src)
                        else:
                            tar.addfile(info)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        if deadline():
            raise DeadlineExceeded(f"deadline reached before {location} was in place")
        os.replace(tmp, location)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(location.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
