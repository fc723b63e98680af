"""Moving directories and images as byte streams: tar out on one side, tar in on the other.

Strategy: GNU tar does the file work (it keeps owners, modes, device nodes - overlay
whiteouts are 0/0 character devices - and extended attributes, among them overlay's
``trusted.overlay.opaque``); this module runs it and cuts its output into chunks of
:data:`CHUNK` bytes (below gRPC's 4 MiB message limit). The rootfs diff of a container is
its snapshot's writable layer: the ``upperdir`` of the overlay mount containerd's
snapshotter hands out (:func:`upper_dir`; other snapshotters are refused).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from typing import IO, Any, Final

from ._errors import MigrateError

__all__ = ["CHUNK", "TarSink", "directory_size", "tar_chunks", "upper_dir"]

CHUNK: Final = 1 << 20
_TAR_FLAGS: Final = ("--xattrs", "--xattrs-include=*", "--numeric-owner", "--sparse")


def upper_dir(mounts: Sequence[Any]) -> str:
    """The writable directory of a snapshot's mounts (containerd.types.Mount messages).

    Raises:
        MigrateError: the snapshot is not an overlay with an upper dir.
    """
    for m in mounts:
        for option in m.options:
            if option.startswith("upperdir="):
                return str(option.removeprefix("upperdir="))
    kinds = ", ".join(sorted({str(m.type) for m in mounts})) or "none"
    raise MigrateError(f"the container's rootfs is not an overlay with an upper dir (mounts: "
                       f"{kinds}); only the overlayfs snapshotter is supported")


def directory_size(path: str) -> int:
    """Bytes of regular files under ``path`` (du -sb)."""
    proc = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=False,
                          timeout=120)
    try:
        return int(proc.stdout.split()[0])
    except (IndexError, ValueError):
        return 0


def tar_chunks(directory: str, paths: Sequence[str] | None = None) -> Iterator[bytes]:
    """The contents of ``directory`` as a tar stream, in chunks; with ``paths`` (relative to
    ``directory``), only those entries (a directory without what is in it).

    Raises:
        MigrateError: tar failed (its message is kept).
    """
    names = None
    what: list[str] = ["."]
    if paths is not None:
        names = tempfile.TemporaryFile()  # noqa: SIM115 (closed below)
        names.write(b"".join(os.fsencode(p) + b"\0" for p in paths))
        names.seek(0)
        what = ["--no-recursion", "--null", "-T", "-"]
    proc = subprocess.Popen(["tar", "-C", directory, *_TAR_FLAGS, "-cf", "-", *what],
                            stdin=names if names is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if names is not None:
        names.close()
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while chunk := proc.stdout.read(CHUNK):
            yield chunk
        status = proc.wait(timeout=60)
        if status != 0:
            raise MigrateError(f"tar of {directory} failed ({status}): "
                               f"{proc.stderr.read().decode(errors='replace').strip()}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


class TarSink:
    """A tar stream written into a directory, chunk by chunk (``tar -x``)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._proc = subprocess.Popen(
            ["tar", "-C", directory, *_TAR_FLAGS, "-xpf", "-"], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    @property
    def _stdin(self) -> IO[bytes]:
        assert self._proc.stdin is not None
        return self._proc.stdin

    def write(self, data: bytes) -> None:
        """Feed ``data``. Raises MigrateError when tar has given up."""
        try:
            self._stdin.write(data)
        except BrokenPipeError:
            self.close()  # raises with tar's reason

    def close(self) -> None:
        """End the stream and wait for tar. Raises MigrateError when it failed."""
        with contextlib.suppress(BrokenPipeError):
            self._stdin.close()
        status = self._proc.wait(timeout=300)
        assert self._proc.stderr is not None
        err = self._proc.stderr.read().decode(errors="replace").strip()
        self._proc.stderr.close()
        if status != 0:
            raise MigrateError(f"unpacking into {self.directory} failed ({status}): {err}")

    def abort(self) -> None:
        """Stop tar without waiting for the rest of the stream."""
        if self._proc.poll() is None:
            self._proc.kill()
        with contextlib.suppress(OSError, ValueError):
            self._stdin.close()
        self._proc.wait()
        if self._proc.stderr is not None:
            self._proc.stderr.close()
