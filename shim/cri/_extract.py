"""Reading a checkpoint archive someone else wrote: checked entry by entry, then unpacked.

Strategy: archives are untrusted input. :func:`check_archive` reads every header first and
refuses, with :class:`~shim.cri._errors.InvalidArgument` naming the entry, before anything is
written: a tar that does not read to its end (truncated, corrupt, a compressed stream cut
short), names that are absolute or hold ``..``, entries below a symlink, symlinks whose target
is absolute or leads out of the archive, hard links to anything but an earlier regular file of
the archive, device nodes, FIFOs and every other type but file, directory and symlink, a second
entry with a name already used, an entry named (or below) :data:`UNPACKING` (the endpoint's
own file, which the restore trusts), and an archive without ``spec.dump``, ``config.dump`` or
``checkpoint/inventory.img``. :class:`Extraction` (or :func:`extract_archive`, all at once)
then writes the entries into a new private (0700) directory by hand, never following a link
(``O_NOFOLLOW``/``O_EXCL``), file modes without set-id bits, every directory 0700 (the shim
restores only from a root-owned 0700 ``checkpoint`` directory); the small files a restore
reads first are written at once, CRIU's images on a thread while the caller talks to
containerd; whatever fails, the directory is removed again. A leading ``./`` is
accepted (CRI-O and Podman write one) and dropped.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import fcntl
import gzip
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from shim.checkpoint.network import SNAPSHOT
from shim.checkpoint.plan import STORED_PLAN, UNPACKING

from ._errors import InvalidArgument

__all__ = ["REQUIRED_ENTRIES", "CheckedArchive", "Extraction", "check_archive",
           "extract_archive", "remove_tree"]

REQUIRED_ENTRIES: Final = ("spec.dump", "config.dump", "checkpoint/inventory.img")
_CHUNK: Final = 1 << 20
_COMPRESSED: Final = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz magic


@dataclass(frozen=True, slots=True)
class CheckedArchive:
    """An archive whose headers passed :func:`check_archive`: normalised names in order."""

    path: Path
    members: tuple[tuple[str, tarfile.TarInfo], ...]
    compressed: bool = False


def _name(info: tarfile.TarInfo, what: str) -> str:
    raw = info.name
    name = raw[2:] if raw.startswith("./") else raw
    name = name.rstrip("/")
    if not name or name == ".":
        raise InvalidArgument(f"{what}: entry {raw!r} has no name")
    if "\0" in name or name.startswith("/"):
        raise InvalidArgument(f"{what}: entry {raw!r} is an absolute path")
    if ".." in name.split("/") or "" in name.split("/"):
        raise InvalidArgument(f"{what}: entry {raw!r} leaves the archive ('..' or '//')")
    return name


def _inside(base: str, target: str) -> str | None:
    """``target`` (relative to directory ``base``) normalised, or None if it leaves."""
    joined = posixpath.normpath(posixpath.join(base, target))
    if joined == ".." or joined.startswith("../") or joined.startswith("/"):
        return None
    return joined


def _read_members(tar: tarfile.TarFile, what: str) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    while True:
        try:
            info = tar.next()
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            after = f" after entry {members[-1].name!r}" if members else " at its first entry"
            raise InvalidArgument(f"{what}: not a readable tar{after}: {exc}") from exc
        if info is None:
            return members
        members.append(info)


def _has_end_marker(path: Path, offset: int) -> bool:
    """Whether a zero block follows the last entry (tarfile stops silently at a cut)."""
    with open(path, "rb") as raw:
        magic = raw.read(6)
    opener = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ": lzma.open}.get(
        next((m for m in (b"\x1f\x8b", b"BZh", b"\xfd7zXZ") if magic.startswith(m)), b""))
    with (opener(path, "rb") if opener else open(path, "rb")) as f:  # type: ignore[operator]
        f.seek(offset)
        block = f.read(tarfile.BLOCKSIZE)
    return len(block) == tarfile.BLOCKSIZE and not any(block)


def check_archive(path: Path, what: str = "") -> CheckedArchive:
    """Read and check every entry of the tar at ``path`` (see the module doc).

    Raises:
        InvalidArgument: the first fault found, naming the entry.
    """
    what = what or str(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            compressed = f.read(6).startswith(_COMPRESSED)
        with tarfile.open(path, mode="r:*") as tar:
            infos = _read_members(tar, what)
            end = tar.offset
        ended = _has_end_marker(path, end)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidArgument(f"{what}: not a readable tar archive: {exc}") from exc
    if not ended:
        after = f" after entry {infos[-1].name!r}" if infos else ""
        raise InvalidArgument(f"{what}: the tar is cut short{after} (no end-of-archive block)")
    checked: list[tuple[str, tarfile.TarInfo]] = []
    kinds: dict[str, str] = {}
    for info in infos:
        name = _name(info, what)
        if name in kinds:
            raise InvalidArgument(f"{what}: entry {info.name!r} appears twice")
        if name.split("/")[0] == UNPACKING:  # the endpoint's own, which the restore trusts
            raise InvalidArgument(f"{what}: entry {info.name!r} has a reserved name")
        parent = posixpath.dirname(name)
        while parent:
            if kinds.get(parent) == "symlink":
                raise InvalidArgument(f"{what}: entry {info.name!r} lies below a symlink")
            if kinds.get(parent) == "file":
                raise InvalidArgument(f"{what}: entry {info.name!r} lies below a file")
            parent = posixpath.dirname(parent)
        if info.isreg():
            if not compressed and info.offset_data + info.size > size:
                raise InvalidArgument(f"{what}: entry {info.name!r} is truncated")
            kinds[name] = "file"
        elif info.isdir():
            kinds[name] = "dir"
        elif info.issym():
            target = info.linkname
            if not target or target.startswith("/") or \
                    _inside(posixpath.dirname(name), target) is None:
                raise InvalidArgument(
                    f"{what}: symlink {info.name!r} -> {target!r} points outside the archive")
            kinds[name] = "symlink"
        elif info.islnk():
            target = info.linkname[2:] if info.linkname.startswith("./") else info.linkname
            if target.startswith("/") or _inside("", target) != target or \
                    kinds.get(target) != "file":
                raise InvalidArgument(
                    f"{what}: hard link {info.name!r} -> {info.linkname!r} points outside "
                    "the archive's earlier files")
            kinds[name] = "file"
        else:
            kind = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
                    tarfile.FIFOTYPE: "a FIFO"}.get(info.type, f"of type {info.type!r}")
            raise InvalidArgument(f"{what}: entry {info.name!r} is {kind}; not allowed")
        checked.append((name, info))
    for required in REQUIRED_ENTRIES:
        if kinds.get(required) != "file":
            raise InvalidArgument(f"{what}: no {required} in the archive; not a checkpoint")
    return CheckedArchive(path, tuple(checked), compressed)


def _copy(src: IO[bytes], fd: int, size: int) -> None:
    left = size
    while left > 0:
        chunk = src.read(min(_CHUNK, left))
        if not chunk:
            raise InvalidArgument("archive ends inside an entry")
        os.write(fd, chunk)
        left -= len(chunk)


_NO_COPY_RANGE: Final = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})


def _copy_range(src: int, dst: int, offset: int, size: int) -> None:
    """``size`` bytes at ``offset`` of ``src`` into ``dst``, copied by the kernel:
    ``copy_file_range``, or ``sendfile`` where that cannot (since Linux 5.19 it refuses two
    filesystems with EXDEV: an archive on another filesystem than the work dir)."""
    done = 0
    copy: Callable[[int, int, int, int], int] = os.copy_file_range
    while done < size:
        try:
            n = copy(src, dst, size - done, offset + done)
        except OSError as exc:
            if done or copy is not os.copy_file_range or exc.errno not in _NO_COPY_RANGE:
                raise
            copy = _sendfile
            continue
        if n == 0:
            raise InvalidArgument("archive ends inside an entry")
        done += n


def _sendfile(src: int, dst: int, count: int, offset: int) -> int:
    """``copy_file_range``'s arguments, by ``sendfile`` (appends to ``dst``)."""
    return os.sendfile(dst, src, offset, count)


def _write_member(dest: Path, name: str, info: tarfile.TarInfo, plain: int | None,
                  tar: tarfile.TarFile) -> None:
    target = dest / name
    if info.isdir():
        os.makedirs(target, mode=0o700, exist_ok=True)
        return
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if info.issym():
        os.symlink(info.linkname, target)
    elif info.islnk():
        link = info.linkname[2:] if info.linkname.startswith("./") else info.linkname
        os.link(dest / link, target, follow_symlinks=False)
    else:
        mode = stat.S_IMODE(info.mode) & 0o777
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                     mode or 0o600)
        try:
            if plain is not None and not info.sparse:  # in-kernel copy
                _copy_range(plain, fd, info.offset_data, info.size)
            else:
                src = tar.extractfile(info)
                if src is None:
                    raise InvalidArgument(f"entry {info.name!r} cannot be read")
                _copy(src, fd, info.size)
        finally:
            os.close(fd)


def _write_members(archive: CheckedArchive, dest: Path,
                   members: Sequence[tuple[str, tarfile.TarInfo]],
                   stop: threading.Event | None = None) -> None:
    """Write ``members`` (in archive order) below ``dest``; every directory ends 0700.

    Raises:
        InvalidArgument: the archive changed or ends early; ``stop`` was set.
        OSError: writing failed.
    """
    plain = None if archive.compressed else os.open(archive.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with tarfile.open(archive.path, mode="r:*") as tar:
            for name, info in members:
                if stop is not None and stop.is_set():
                    raise InvalidArgument(f"{archive.path}: unpacking stopped")
                _write_member(dest, name, info, plain, tar)
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidArgument(f"{archive.path}: unpacking failed: {exc}") from exc
    finally:
        if plain is not None:
            os.close(plain)
    for name, info in members:  # whatever the archive says: private (made 0700 to write)
        if info.isdir():
            os.chmod(dest / name, 0o700)


class Extraction:
    """A checked archive being unpacked into a new private (0700) directory, :attr:`dest`.

    :meth:`start` writes the small files a restore reads first (``FIRST``: the ``*.dump``
    files, ``rootfs-diff.tar`` and the shim's own files among CRIU's images) and makes the
    ``checkpoint`` directory at once, then writes the rest (CRIU's images: the bulk of the
    bytes) on a thread of its own, so the caller can work with containerd meanwhile, and the
    restore can even begin: while the thread writes, it holds an exclusive ``flock`` on
    :data:`~shim.checkpoint.plan.UNPACKING` in :attr:`dest` and then writes ``complete``
    (or what failed) into it, which the shim's restore waits on. :meth:`wait` returns once
    everything is written (or raises what failed); :meth:`abort` stops the thread and
    removes the directory; ``on_done`` (if given) is called on the thread when it ends, with
    what failed or None. A compressed archive is read in one pass in :meth:`start` (seeking
    back in a compressed stream reads it again), without the file.
    """

    FIRST: Final = frozenset({"config.dump", "spec.dump", "status.dump", "rootfs-diff.tar",
                              f"checkpoint/{STORED_PLAN}", f"checkpoint/{SNAPSHOT}"})

    def __init__(self, archive: CheckedArchive, parent: Path, prefix: str) -> None:
        self.archive = archive
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dest = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock_fd = -1

    def start(self, on_done: Callable[[BaseException | None], None] | None = None
              ) -> Extraction:
        """Write the first files; start the rest. On failure the directory is gone again.

        Raises:
            InvalidArgument: the archive changed or ends early.
            OSError: writing failed.
        """
        try:
            if self.archive.compressed:
                _write_members(self.archive, self.dest, self.archive.members)
                if on_done is not None:
                    on_done(None)
                return self
            first = [(n, i) for n, i in self.archive.members if n in self.FIRST and i.isreg()]
            rest = [(n, i) for n, i in self.archive.members
                    if not (n in self.FIRST and i.isreg())]
            os.mkdir(self.dest / "checkpoint", 0o700)  # named by the restore from the start
            _write_members(self.archive, self.dest, first)
            self._lock_fd = os.open(
                self.dest / UNPACKING,
                os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except BaseException:
            self._unlock("")
            shutil.rmtree(self.dest, ignore_errors=True)
            raise
        self._thread = threading.Thread(target=self._run, args=(rest, on_done),
                                        name=f"unpack {self.dest.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self, rest: list[tuple[str, tarfile.TarInfo]],
             on_done: Callable[[BaseException | None], None] | None) -> None:
        try:
            _write_members(self.archive, self.dest, rest, self._stop)
        except BaseException as exc:  # handed to wait()
            self._error = exc
        self._unlock("complete" if self._error is None else f"failed: {self._error}")
        if on_done is not None:
            on_done(self._error)

    def _unlock(self, state: str) -> None:
        """Say how the unpacking ended in :data:`UNPACKING` and let the restore go on."""
        fd, self._lock_fd = self._lock_fd, -1
        if fd < 0:
            return
        try:
            if state:
                with contextlib.suppress(OSError):  # unreadable = not complete
                    os.pwrite(fd, f"{state}\n".encode(), 0)
        finally:
            os.close(fd)

    def wait(self) -> Path:
        """Block until every entry is written; returns :attr:`dest` (0700).

        Raises:
            InvalidArgument, OSError: what the unpacking thread met (the directory is gone).
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            shutil.rmtree(self.dest, ignore_errors=True)
            raise self._error
        os.chmod(self.dest, 0o700)
        return self.dest

    @property
    def aborted(self) -> bool:
        """Whether :meth:`abort` was called."""
        return self._stop.is_set()

    def abort(self) -> None:
        """Stop unpacking (at the next entry) and remove the directory."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        shutil.rmtree(self.dest, ignore_errors=True)


def extract_archive(archive: CheckedArchive, parent: Path, prefix: str) -> Path:
    """Unpack a checked archive into a new 0700 directory under ``parent``; returns it.

    Raises:
        InvalidArgument: the archive changed or ends early while unpacking.
        OSError: writing failed (the directory is gone again either way).
    """
    return Extraction(archive, parent, prefix).start().wait()


def remove_tree(path: Path) -> None:
    """Remove an unpacked checkpoint (missing is fine)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
