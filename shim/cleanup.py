"""The ``delete`` action: make a bundle safe to remove after its shim died or finished.

Strategy: mirrors the runc shim manager's ``Stop``/``Cleanup``: force-delete the container in
the runtime (errors only warned on stderr, which containerd logs as cleanup warnings), unmount
the rootfs, remove the shim socket if nothing serves it any more, remove what a dump the dead
shim left unfinished wrote (:data:`shim.bundle.UNFINISHED_DUMP`), and answer with the init pid
and exit status 137 (128 + SIGKILL). Idempotent and fast: containerd runs it after every task
delete too, on the critical path of ``ctr run --rm``, so it imports no protobuf (only
``shim.bundle``, for the name of the unfinished-dump file): the three-field DeleteResponse is
encoded here (a unit test checks it against the generated message) and the runtime selection
is kept as ``key=value`` lines.
This runs as a short-lived process, not in the daemon, so it may wait for its own child.
"""

from __future__ import annotations

import os
import sys
import time

from shim.bundle import UNFINISHED_DUMP
from shim.mount import unmount_all

__all__ = [
    "cleanup",
    "discard_unfinished_dump",
    "encode_delete_response",
    "read_runtime_options",
    "write_runtime_options",
]

OPTIONS_FILE = "runtime-options"
_RUNC_DELETE_TIMEOUT = 4.0


def write_runtime_options(bundle: str, options: dict[str, str]) -> None:
    """Keep the runtime selection beside the bundle, for ``delete`` after a crash."""
    tmp = os.path.join(bundle, f".{OPTIONS_FILE}")
    with open(tmp, "w") as f:
        f.writelines(f"{key}={value}\n" for key, value in sorted(options.items()))
    os.rename(tmp, os.path.join(bundle, OPTIONS_FILE))


def read_runtime_options(bundle: str) -> dict[str, str]:
    try:
        with open(os.path.join(bundle, OPTIONS_FILE)) as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values are sent as 10-byte two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_delete_response(pid: int, exit_status: int, exited_at: float) -> bytes:
    """``containerd.task.v2.DeleteResponse{pid=1, exit_status=2, exited_at=3 Timestamp}``."""
    seconds = int(exited_at)
    nanos = int((exited_at - seconds) * 1e9)
    timestamp = b"\x08" + _varint(seconds) + (b"\x10" + _varint(nanos) if nanos else b"")
    out = b""
    if pid:
        out += b"\x08" + _varint(pid)
    if exit_status:
        out += b"\x10" + _varint(exit_status)
    return out + b"\x1a" + _varint(len(timestamp)) + timestamp


def _remove_dead_socket(bundle: str) -> None:
    try:
        with open(os.path.join(bundle, "address")) as f:
            path = f.read().strip().removeprefix("unix://")
    except OSError:
        return
    if not os.path.lexists(path):
        return  # removed by the shim at its exit: the usual case
    from shim.warm import socket_is_live  # only here: ~0.6 ms of every delete's start-up

    if socket_is_live(path):
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        return  # (no contextlib: it imports collections and functools, ~2 ms of start-up)


def _runtime_delete(argv: list[str]) -> None:
    """Run ``runc delete --force`` with a deadline; warn on failure."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        pid = os.posix_spawnp(
            argv[0], argv, dict(os.environ), file_actions=[(os.POSIX_SPAWN_DUP2, null, 1)]
        )
    except OSError as exc:
        sys.stderr.write(f"{argv[0]} delete: {exc}\n")
        return
    finally:
        os.close(null)
    deadline = time.monotonic() + _RUNC_DELETE_TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if status != 0:
                sys.stderr.write(f"{argv[0]} delete failed: wait status {status}\n")
            return
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            sys.stderr.write(f"{argv[0]} delete timed out\n")
            return
        time.sleep(0.002)


def discard_unfinished_dump(bundle: str) -> None:
    """If the shim died during a dump (the bundle still holds :data:`UNFINISHED_DUMP`),
    remove what that dump wrote, as the dump itself does when it fails: the images directory
    if the dump made it, else its contents. A dump that got as far as storing its plan is
    complete and kept."""
    marker = os.path.join(bundle, UNFINISHED_DUMP)
    try:
        with open(marker) as f:
            images_dir, how, complete = f.read().splitlines()[:3]
    except (OSError, ValueError):
        return
    if (
        os.path.isabs(images_dir)
        and os.path.dirname(complete) == images_dir
        and not os.path.lexists(complete)
        and os.path.isdir(images_dir)
        and not os.path.islink(images_dir)
    ):
        import contextlib
        import shutil  # only here: ~4 ms of every delete's start-up otherwise (fnmatch, re)

        if how == "created":
            shutil.rmtree(images_dir, ignore_errors=True)
        else:
            with os.scandir(images_dir) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):
                        if entry.is_dir(follow_symlinks=False):
                            shutil.rmtree(entry.path, ignore_errors=True)
                        else:
                            os.unlink(entry.path)
    try:
        os.unlink(marker)
    except OSError:
        return


def cleanup(bundle: str, namespace: str, cid: str) -> bytes:
    """Clean up ``cid``'s bundle and return the serialized DeleteResponse."""
    options = read_runtime_options(bundle)
    binary = options.get("binary") or "runc"
    root = options.get("root") or "/run/containerd/runc"
    argv = [binary, "--root", os.path.join(root, namespace)]
    if options.get("systemd_cgroup") == "true":
        argv.append("--systemd-cgroup")
    # runc keeps all it knows of a container in <root>/<namespace>/<id>: without it, there
    # is nothing for ``delete --force`` to do (it removes that directory, if any, and ends),
    # and after a task delete the daemon has run it already: ~5 ms of ``ctr run --rm``.
    if os.path.basename(binary) != "runc" or os.path.lexists(os.path.join(root, namespace, cid)):
        _runtime_delete([*argv, "delete", "--force", cid])
    try:
        unmount_all(os.path.join(bundle, "rootfs"))
    except OSError as exc:
        sys.stderr.write(f"unmount rootfs: {exc}\n")
    _remove_dead_socket(bundle)
    discard_unfinished_dump(bundle)
    try:
        with open(os.path.join(bundle, "init.pid")) as f:
            pid = int(f.read())
    except (OSError, ValueError):
        pid = 0
    return encode_delete_response(pid, 137, time.time())
