"""What each ``pyrunc`` command does, in terms of containerd API calls.

Strategy: each ``run_*`` takes a command value (``_args``), an :class:`API` (the real
``_client.Client`` or a fake in tests) and the output stream, and returns the exit status.
Failures propagate as :class:`~shim.ctl._errors.CtlError`; ``main`` prints them. The only
clean-up done here is the one containerd's own client does: a restored task that was
created but could not be started is deleted again, and without ``--detach`` the task is
deleted after it exited (as ``ctr run`` does), so the container can be restored again.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, Protocol, TextIO

from google.protobuf import any_pb2

from ._args import CheckpointCommand, RestoreCommand, TasksCommand
from ._client import ContainerInfo, Descriptor, TaskInfo
from ._errors import CtlError
from ._options import checkpoint_any, restore_any

__all__ = ["API", "make_fifos", "run_checkpoint", "run_restore", "run_tasks"]


class API(Protocol):
    """The containerd calls the commands make (see ``shim.ctl._client.Client``)."""

    def list_tasks(self) -> list[TaskInfo]: ...

    def checkpoint(self, container_id: str, options: any_pb2.Any) -> list[Descriptor]: ...

    def get_container(self, container_id: str) -> ContainerInfo: ...

    def mounts(self, snapshotter: str, key: str) -> list[Any]: ...

    def create_task(
        self,
        container_id: str,
        *,
        rootfs: Sequence[Any],
        stdout: str,
        stderr: str,
        options: any_pb2.Any,
        stdin: str = "",
        terminal: bool = False,
    ) -> int: ...

    def start(self, container_id: str) -> int: ...

    def wait(self, container_id: str) -> int: ...

    def delete_task(self, container_id: str) -> int: ...


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("    ".join(cells).rstrip(), file=out)


def run_tasks(cmd: TasksCommand, api: API, out: TextIO) -> int:
    """``pyrunc tasks``: ``TASK PID STATUS`` table (like ``ctr t ls``), or ids with -q."""
    tasks = sorted(api.list_tasks(), key=lambda t: t.id)
    if cmd.quiet:
        for t in tasks:
            print(t.id, file=out)
        return 0
    _table([("TASK", "PID", "STATUS"), *((t.id, str(t.pid), t.status.name) for t in tasks)], out)
    return 0


# containerd's content store refusing a blob it already holds ("content <digest>: already
# exists"); the shim's own AlreadyExists errors read differently. containerd 1.6 returns that
# error unconverted, so it arrives as UNKNOWN.
_DUPLICATE_BLOB = re.compile(r"content sha256:[0-9a-f]{64}: already exists")
_DUPLICATE_BLOB_CODES = frozenset({"UNKNOWN", "ALREADY_EXISTS"})


def run_checkpoint(
    cmd: CheckpointCommand, api: API, out: TextIO, err: TextIO | None = None
) -> int:
    """``pyrunc checkpoint``: Tasks/Checkpoint; prints ``MEDIA TYPE DIGEST SIZE`` rows.

    containerd 1.6 archives the checkpoint (its own temporary directory, empty when
    ``--image-path`` sends the images elsewhere) and the container's spec into its content
    store only after the shim's checkpoint succeeded, and fails with AlreadyExists when an
    identical blob is already there (the same empty archive every time, the same spec when a
    container is checkpointed again). That error means the checkpoint itself is done: a note
    goes to ``err`` (default stderr) and the status is 0, with no descriptors to print.
    """
    try:
        descriptors = api.checkpoint(cmd.container_id, checkpoint_any(cmd))
    except CtlError as exc:
        if exc.code not in _DUPLICATE_BLOB_CODES or not _DUPLICATE_BLOB.fullmatch(
            exc.details.strip()
        ):
            raise
        print(f"pyrunc: note: {cmd.container_id} was checkpointed; containerd stored no new "
              f"blob ({exc.details.strip()})", file=sys.stderr if err is None else err)
        return 0
    if not cmd.quiet and descriptors:
        rows = [(d.media_type, d.digest, str(d.size)) for d in descriptors]
        _table([("MEDIA TYPE", "DIGEST", "SIZE"), *rows], out)
    return 0


def exit_code(status: int) -> int:
    """A task exit status as a process exit code (0..255; larger values become 255)."""
    return status if 0 <= status <= 255 else 255


def make_fifos(fifo_dir: str, container_id: str) -> tuple[str, str, str]:
    """A new 0700 directory under ``fifo_dir`` (created if missing) holding the FIFOs
    ``<id>-stdin`` and ``<id>-stdout``, as ctr makes them; returns (directory, stdin, stdout).

    Raises:
        CtlError: the directory or the FIFOs cannot be made.
    """
    try:
        os.makedirs(fifo_dir, mode=0o700, exist_ok=True)
        directory = tempfile.mkdtemp(prefix=f"{container_id}-", dir=fifo_dir)
        paths = [os.path.join(directory, f"{container_id}-{name}") for name in ("stdin", "stdout")]
        for path in paths:
            os.mkfifo(path, 0o600)
    except OSError as exc:
        raise CtlError("UNKNOWN", str(exc), f"cannot make FIFOs under {fifo_dir}") from None
    return directory, paths[0], paths[1]


def run_restore(cmd: RestoreCommand, api: API, out: TextIO, err: TextIO | None = None) -> int:
    """``pyrunc restore``: Containers/Get, Snapshots/Mounts, Tasks/Create, Tasks/Start.

    Prints the pid. Without ``--detach`` then waits (Tasks/Wait), deletes the task and
    returns its exit status; a KeyboardInterrupt stops the waiting only (the task runs on).
    With ``--tty`` (always detached) the task is created with a terminal and FIFOs made by
    :func:`make_fifos`, which stay for ``ctr t attach`` (a note on ``err`` says where);
    they are removed again if the task cannot be created or started.
    """
    container = api.get_container(cmd.container_id)
    rootfs: list[Any] = []
    if container.snapshot_key:
        rootfs = api.mounts(container.snapshotter, container.snapshot_key)
    stdin, stdout, stderr, fifos = "", cmd.stdout, cmd.stderr, ""
    if cmd.tty:
        fifos, stdin, stdout = make_fifos(cmd.fifo_dir, cmd.container_id)
        stderr = ""  # a terminal has one output
    try:
        api.create_task(
            cmd.container_id, rootfs=rootfs, stdin=stdin, stdout=stdout, stderr=stderr,
            terminal=cmd.tty, options=restore_any(cmd, container.runtime_options),
        )
        try:
            pid = api.start(cmd.container_id)
        except CtlError:
            with contextlib.suppress(CtlError):  # the start error is the one to report
                api.delete_task(cmd.container_id)
            raise
    except CtlError:
        if fifos:
            shutil.rmtree(fifos, ignore_errors=True)
        raise
    print(pid, file=out, flush=True)
    if fifos:
        attach = (f"ctr -a {cmd.globals.address} -n {cmd.globals.namespace} t attach "
                  f"{cmd.container_id}")
        print(f"pyrunc: {cmd.container_id} has a terminal: attach with `{attach}` (FIFOs in "
              f"{fifos})", file=sys.stderr if err is None else err)
    if cmd.detach:
        return 0
    status = api.wait(cmd.container_id)
    api.delete_task(cmd.container_id)
    return exit_code(status)
