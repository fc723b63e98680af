"""``pyrunc`` (shim.ctl) against the harness's containerd: gRPC plumbing and clean errors.

Strategy: run the tool as users do (a separate process, ``python -m shim.ctl`` with the
harness daemon's ``--address`` and namespace) next to ``ctr``, and compare what each sees.
What the shim does with the options (a real checkpoint and restore through
io.containerd.pyrunc.v2) is tested with the shim's checkpoint code; here: listing tasks with
both runtimes, and that every refusal (containerd cannot decode our options for a runc
runtime, a container that does not exist) is one line on stderr with exit status 1 and
leaves nothing behind.

Facts of containerd 1.6 this relies on: for runtimes named ``io.containerd.runc.*``
containerd decodes the checkpoint options Any itself (``getCheckpointPath``) and the
create options Any (``getRestorePath``) and fails on a type it has not registered, before
any shim is called; Containers/Get of an unknown id is NotFound.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from .harness import (
    NAMESPACE,
    RUNC,
    Containerd,
    Containers,
    Ctr,
    TaskStatus,
    pid_alive,
    run_pyrunc,
)

LOOP = "while :; do sleep 0.1; done"


def pyrunc(
    containerd: Containerd, *args: str, namespace: str = NAMESPACE
) -> subprocess.CompletedProcess[str]:
    """``pyrunc -a <harness socket> -n <namespace> args`` in a separate process."""
    return run_pyrunc(containerd, *args, namespace=namespace, timeout=60)


def assert_clean_failure(proc: subprocess.CompletedProcess[str]) -> str:
    """Exit status 1, nothing on stdout, one ``pyrunc: ...`` line on stderr; returns it."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyrunc: "), proc.stderr
    return lines[0]


def table(out: str) -> dict[str, tuple[int, str]]:
    """``pyrunc tasks`` output as id -> (pid, status)."""
    lines = out.splitlines()
    assert lines[0].split() == ["TASK", "PID", "STATUS"]
    return {cols[0]: (int(cols[1]), cols[2]) for cols in (line.split() for line in lines[1:])}


def test_tasks_lists_a_task_started_with_ctr(
    containerd: Containerd, containers: Containers
) -> None:
    started = containers.start("ctl-tasks", "sh", "-c", LOOP, log=False)
    proc = pyrunc(containerd, "tasks")
    assert proc.returncode == 0, proc.stderr
    rows = table(proc.stdout)
    assert rows[started.id] == (started.pid, "RUNNING")
    # the same view as ctr's
    assert {cid: (t.pid, t.status.name) for cid, t in containers.ctr.tasks().items()} == rows

    containers.ctr("tasks", "pause", started.id)
    containers.ctr.wait_status(started.id, TaskStatus.PAUSED)
    assert table(pyrunc(containerd, "tasks").stdout)[started.id] == (started.pid, "PAUSED")
    containers.ctr("tasks", "resume", started.id)

    quiet = pyrunc(containerd, "tasks", "-q")
    assert started.id in quiet.stdout.split()
    # the namespace header is honoured: another namespace does not see the task
    other = pyrunc(containerd, "tasks", "-q", namespace=f"ctl-empty-{uuid.uuid4().hex[:6]}")
    assert (other.returncode, other.stdout) == (0, "")


@pytest.mark.parametrize("runtime", [RUNC], ids=["runc"], indirect=True)
def test_checkpoint_of_a_runc_task_fails_cleanly(
    containerd: Containerd, containers: Containers, tmp_path: Path
) -> None:
    started = containers.start("ctl-ckpt-runc", "sh", "-c", LOOP, log=False)
    proc = pyrunc(
        containerd, "checkpoint", started.id, "--exit", "--image-path", str(tmp_path / "img")
    )
    line = assert_clean_failure(proc)
    # containerd decodes a runc runtime's checkpoint options itself and knows no such type
    assert "pyrunc.v1.CheckpointOptions" in line, line
    # nothing happened to the task
    info = containers.ctr.task(started.id)
    assert info is not None and info.status is TaskStatus.RUNNING and info.pid == started.pid
    assert pid_alive(started.pid)


def test_checkpoint_of_an_unknown_container_is_not_found(containerd: Containerd) -> None:
    line = assert_clean_failure(pyrunc(containerd, "checkpoint", "ctl-no-such-container"))
    assert "not found" in line, line


def test_restore_of_an_unknown_container_is_not_found(
    containerd: Containerd, ctr: Ctr, tmp_path: Path
) -> None:
    cid = f"ctl-nope-{uuid.uuid4().hex[:8]}"
    proc = pyrunc(containerd, "restore", cid, "--image-path", str(tmp_path))
    line = assert_clean_failure(proc)
    assert "not found" in line and cid in line, line
    assert cid not in ctr.tasks()


@pytest.mark.parametrize("runtime", [RUNC], ids=["runc"], indirect=True)
def test_restore_into_a_runc_container_fails_cleanly_and_leaves_no_task(
    containerd: Containerd, containers: Containers, tmp_path: Path
) -> None:
    # A container record without a task, as `ctr c create` (or a deleted task) leaves it.
    cid = containers.new_id("ctl-rst-runc")
    containers.ctr(
        "containers",
        "create",
        "--runtime",
        containers.runtime,
        containers.image,
        cid,
        "sleep",
        "1000",
    )
    proc = pyrunc(containerd, "restore", cid, "--image-path", str(tmp_path), "--detach")
    line = assert_clean_failure(proc)
    # Containers/Get and Snapshots/Mounts worked; containerd refused the create options
    assert "pyrunc.v1.RestoreOptions" in line, line
    assert cid not in containers.ctr.tasks()
    assert cid in containers.ctr.containers()
    assert containerd.leftovers(NAMESPACE, cid).clean
