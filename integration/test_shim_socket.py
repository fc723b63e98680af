"""The shim's ttrpc socket as an attack surface, against real containerd, both runtimes.

Strategy: a ``sleep`` container is started through containerd; the test then talks to its shim
directly on the shim's socket (``/run/containerd/s/<sha256>``), as containerd does, and checks
that the shim defends the container it serves:

* a Create naming an empty, relative or missing bundle is refused with InvalidArgument before
  anything is touched (an empty bundle once resolved to the shim's working directory, the
  served container's bundle, and the failed Create unmounted that container's rootfs);
* a process of another uid that can reach the socket (the test lends it a hard link and a
  mode that let it connect) is dropped without an answer (``SO_PEERCRED``), as the
  reference does;
* the shim removes its socket file when it exits.

``io.containerd.runc.v2`` is the control in every test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from shim.api.containerd.task.v2 import shim_pb2 as api
from shim.ttrpc import Client, Code, Request, TtrpcError
from shim.ttrpc._frames import HEADER
from shim.ttrpc._wire import encode_request

from .harness import (
    PYRUNC,
    Containerd,
    Containers,
    Started,
    TaskStatus,
    mounts_under,
    pid_alive,
    shim_processes,
    shim_socket_path,
    wait_until,
)

SERVICE = "containerd.task.v2.Task"
NOBODY = 65534


def socket_of(containerd: Containerd, containers: Containers, started: Started) -> Path:
    path = shim_socket_path(containerd.address, containers.ctr.namespace, started.id)
    assert path.is_socket(), path
    return path


async def _call(path: Path, method: str, request: bytes) -> bytes:
    async with asyncio.timeout(20):
        client = await Client.connect(str(path))
        try:
            return await client.call(SERVICE, method, request)
        finally:
            await client.close()


def assert_untouched(containerd: Containerd, containers: Containers, started: Started) -> None:
    info = containers.ctr.task(started.id)
    assert info is not None and info.status is TaskStatus.RUNNING, info
    assert info.pid == started.pid and pid_alive(started.pid)
    rootfs = containerd.bundle(containers.ctr.namespace, started.id) / "rootfs"
    assert mounts_under(rootfs) == [str(rootfs)], "the served container's rootfs is not mounted"


@pytest.mark.parametrize("bundle", ["", "rel/ative", "/nonexistent/bundle", "/run/../run"])
def test_create_with_a_bad_bundle_is_refused_and_touches_nothing(
    containerd: Containerd, containers: Containers, runtime: str, bundle: str
) -> None:
    started = containers.start("sock-bundle", "sleep", "100000", log=False)
    path = socket_of(containerd, containers, started)
    bundle_dir = containerd.bundle(containers.ctr.namespace, started.id)
    before = sorted(p.name for p in bundle_dir.iterdir())
    request = api.CreateTaskRequest(id="ghost", bundle=bundle).SerializeToString()
    if runtime == PYRUNC:
        with pytest.raises(TtrpcError) as refused:
            asyncio.run(_call(path, "Create", request))
        assert refused.value.code == Code.INVALID_ARGUMENT, refused.value
        assert "bundle" in refused.value.message, refused.value
    else:  # the reference takes an empty bundle as its own directory and creates the ghost
        try:
            asyncio.run(_call(path, "Create", request))
        except TtrpcError:
            pass
        else:
            _remove_ghost(path)
    assert_untouched(containerd, containers, started)
    assert sorted(p.name for p in bundle_dir.iterdir()) == before
    containers.ctr("tasks", "kill", "-s", "SIGKILL", started.id)
    containers.ctr.wait_status(started.id, TaskStatus.STOPPED)
    containers.ctr.delete_task(started.id)
    containers.ctr("containers", "rm", started.id)
    wait_until(lambda: containerd.leftovers(containers.ctr.namespace, started.id).clean, 30,
               message=lambda: str(containerd.leftovers(containers.ctr.namespace, started.id)))


def _remove_ghost(path: Path) -> None:
    for method, req in (("Kill", api.KillRequest(id="ghost", signal=9)),
                        ("Delete", api.DeleteRequest(id="ghost"))):
        with contextlib.suppress(TtrpcError):
            asyncio.run(_call(path, method, req.SerializeToString()))


_OTHER_UID_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(sys.argv[1])
try:  # a shim that drops the peer may close before the request is even written (EPIPE)
    s.sendall(bytes.fromhex(sys.argv[2]))
    data = s.recv(65536)
except (socket.timeout, ConnectionError):
    data = b""
print("answered" if data else "dropped")
"""


def test_a_peer_of_another_uid_is_dropped(
    containerd: Containerd, containers: Containers, runtime: str
) -> None:
    """A process of uid 65534 (no CAP_DAC_OVERRIDE) that can reach the socket gets no
    answer to State: the shim compares SO_PEERCRED with its own uid."""
    started = containers.start("sock-peer", "sleep", "100000", log=False)
    path = socket_of(containerd, containers, started)
    state = api.StateRequest(id=started.id).SerializeToString()
    payload = encode_request(Request(SERVICE, "State", state, 0, ()))
    frame = HEADER.pack(len(payload), 1, 1, 0) + payload
    lent = Path(tempfile.mkdtemp(prefix="pyrunc-peer-", dir="/run"))
    mode = path.stat().st_mode & 0o777
    try:
        os.chmod(lent, 0o755)
        os.link(path, lent / "sock")  # the socket's own directory is 0700
        os.chmod(path, 0o666)
        client = subprocess.run(
            [sys.executable, "-c", _OTHER_UID_CLIENT, str(lent / "sock"), frame.hex()],
            user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, text=True,
            timeout=30, check=False, cwd="/",
        )
        # the same request from root (the shim's uid) is answered: the frame is good
        root = subprocess.run(
            [sys.executable, "-c", _OTHER_UID_CLIENT, str(lent / "sock"), frame.hex()],
            capture_output=True, text=True, timeout=30, check=False,
        )
    finally:
        os.chmod(path, mode)
        (lent / "sock").unlink(missing_ok=True)
        lent.rmdir()
    assert root.stdout.strip() == "answered", root
    assert client.returncode == 0, client.stderr
    assert client.stdout.strip() == "dropped", f"{runtime} answered uid {NOBODY}"
    assert_untouched(containerd, containers, started)


def test_the_shim_removes_its_socket_when_it_exits(
    containerd: Containerd, containers: Containers, runtime: str
) -> None:
    started = containers.start("sock-gone", "sleep", "100000", log=False)
    path = socket_of(containerd, containers, started)
    shims = shim_processes(containerd.address, started.id)
    assert shims, "no shim found"
    containers.ctr("tasks", "kill", "-s", "SIGKILL", started.id)
    containers.ctr.wait_status(started.id, TaskStatus.STOPPED)
    containers.ctr.delete_task(started.id)
    containers.ctr("containers", "rm", started.id)
    wait_until(lambda: not any(pid_alive(p) for p in shims), 30, message="the shim to exit")
    assert not os.path.lexists(path), f"{runtime} left its socket file {path}"


PARALLEL_RUNS = 12


def test_no_socket_file_is_left_by_shims_of_parallel_runs(
    containerd: Containerd, containers: Containers, runtime: str
) -> None:
    """``ctr run --rm`` of 12 containers at once: containerd removes each bundle as soon as
    its shim answers Shutdown, while the shim is still on its way out; every socket file
    must be gone all the same."""
    ids = [containers.new_id(f"sock-par{i}") for i in range(PARALLEL_RUNS)]
    runs = [containers.popen(*containers.run_args(cid, "true", rm=True, null_io=True))
            for cid in ids]
    for cid, run in zip(ids, runs, strict=True):
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, (cid, err)
    wait_until(lambda: not any(shim_processes(containerd.address, cid) for cid in ids), 30,
               message="the shims to exit")
    left = [cid for cid in ids
            if os.path.lexists(shim_socket_path(containerd.address, containers.ctr.namespace,
                                                cid))]
    assert left == [], f"{runtime} left the socket files of {left}"
