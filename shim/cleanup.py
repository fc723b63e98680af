"""The ``delete`` action: make a bundle safe to remove after its shim died or finished.

Strategy: mirrors the runc shim manager's ``Stop``/``Cleanup``: force-delete the container in
the runtime (errors only warned on stderr, which containerd logs as cleanup warnings), unmount
the rootfs, remove the shim socket if nothing serves it any more, and answer with the init pid
and exit status 137 (128 + SIGKILL). Idempotent and fast: containerd runs it after every task
delete too. This runs as a short-lived process, not in the daemon, so ``subprocess`` is fine.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from shim.mount import unmount_all

__all__ = ["cleanup", "read_runtime_options", "write_runtime_options"]

OPTIONS_FILE = "options.json"


def write_runtime_options(bundle: Path, options: dict[str, str | bool]) -> None:
    """Keep the runtime selection beside the bundle, for ``delete`` after a crash."""
    tmp = bundle / f".{OPTIONS_FILE}"
    tmp.write_text(json.dumps(options))
    tmp.rename(bundle / OPTIONS_FILE)


def read_runtime_options(bundle: Path) -> dict[str, str | bool]:
    try:
        data = json.loads((bundle / OPTIONS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remove_dead_socket(bundle: Path) -> None:
    try:
        path = (bundle / "address").read_text().strip().removeprefix("unix://")
    except OSError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
    finally:
        probe.close()


def cleanup(bundle: Path, namespace: str, cid: str) -> bytes:
    """Clean up ``cid``'s bundle and return the serialized DeleteResponse."""
    import subprocess  # this runs as the short-lived ``delete`` process, never in the daemon

    from shim.api.containerd.task.v2 import shim_pb2

    options = read_runtime_options(bundle)
    binary = str(options.get("binary") or "runc")
    root = str(options.get("root") or "/run/containerd/runc")
    argv = [binary, "--root", os.path.join(root, namespace)]
    if options.get("systemd_cgroup"):
        argv.append("--systemd-cgroup")
    try:
        proc = subprocess.run(
            [*argv, "delete", "--force", cid], capture_output=True, timeout=4, check=False
        )
        if proc.returncode != 0:
            sys.stderr.write(f"runc delete: {proc.stderr.decode(errors='replace').strip()}\n")
    except (OSError, subprocess.TimeoutExpired) as exc:
        sys.stderr.write(f"runc delete: {exc}\n")
    try:
        unmount_all(str(bundle / "rootfs"))
    except OSError as exc:
        sys.stderr.write(f"unmount rootfs: {exc}\n")
    _remove_dead_socket(bundle)
    try:
        pid = int((bundle / "init.pid").read_text())
    except (OSError, ValueError):
        pid = 0
    now = time.time()
    resp = shim_pb2.DeleteResponse(pid=pid, exit_status=137)
    resp.exited_at.seconds = int(now)
    resp.exited_at.nanos = int((now - int(now)) * 1e9)
    data: bytes = resp.SerializeToString()
    return data
