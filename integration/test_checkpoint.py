"""Checkpoint and restore against real containerd, runc and CRIU.

Strategy: two groups.

* ``ctr`` flows, with both runtimes (the runc shim is the control): ``ctr c checkpoint
  --task`` of a running task, then ``ctr c restore --live`` of the checkpoint into a new
  container. A counter goes on from where it was, 64 MiB of memory verify intact, the
  checkpointed task keeps running, and checkpointing a paused task fails and leaves it
  paused.
* The ``pyrunc`` tool against the harness's containerd (pyrunc runtime only: ctr cannot
  express these options): a paused task stays paused, ``--exit`` stops the task only after a
  successful dump, ``--image-path``/``--work-path``, refusals of bad or impossible option
  combinations (with the gRPC status code, sent with the tool's client code where the tool
  itself cannot express the request), pre-dump on this kernel (what CRIU's FEATURE_CHECK
  measures decides what is expected), and CRIU killed in the middle of a dump.

How processes are observed: see :mod:`integration._ckpt_tools` (files on the container's
``/dev/shm`` tmpfs, which CRIU dumps and restores, read with ``ctr t exec``); the task state
from ``ctr t ls``; the cgroup v1 freezer from ``/sys/fs/cgroup/freezer``. A "complete"
checkpoint is one whose images directory holds the shim's stored plan
(``pyrunc-checkpoint.json``, written only after CRIU succeeded).

Every test removes its containers (the ``containers`` fixture), its checkpoint images
(``ctr i rm``) and its scratch directories, even when it fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shim.checkpoint import STORED_PLAN

from ._ckpt_tools import (
    checkpoint_rpc,
    counter_values,
    criu_features,
    freezer_state_file,
    kill_at_write,
    popen_pyrunc,
    read_in_container,
    refusal_line,
    run_pyrunc,
    runc_criu_pids,
    tree_snapshot,
)
from .harness import (
    NAMESPACE,
    PYRUNC,
    Containerd,
    Containers,
    Ctr,
    Started,
    TaskStatus,
    freezer_state,
    pid_alive,
    wait_until,
)

COUNTER_MS = 100
COUNT_FILE = "/dev/shm/count"
MEMFILL_LOG = "/dev/shm/memfill.log"
DUMP_LOG = "criu-dump.log"  # the shim keeps CRIU's log of a failed dump in the bundle
THAW_WARNING = "was left frozen after a checkpoint; thawing it"
# init keeps a 2 MiB file open after deleting it
GHOST_SCRIPT = ("exec 3>/tmp/ck.ghost; head -c 2097152 /dev/zero >&3; rm /tmp/ck.ghost; "
                "exec sleep 100000")

pyrunc_only = pytest.mark.parametrize("runtime", [PYRUNC], ids=["pyrunc"], indirect=True)


# --- fixtures and small helpers ------------------------------------------------------------


@pytest.fixture
def checkpoint_ref(ctr: Ctr) -> Iterator[Callable[[str], str]]:
    """Makes unique image refs for ``ctr c checkpoint``; removes those images afterwards."""
    refs: list[str] = []

    def new(name: str) -> str:
        ref = f"localhost/ck-{name}:{uuid.uuid4().hex[:8]}"
        refs.append(ref)
        return ref

    yield new
    for ref in refs:
        ctr("images", "rm", ref, check=False)
    left = set(refs) & set(ctr("images", "ls", "-q").stdout.split())
    assert not left, f"checkpoint images left behind: {left}"


def shm(containers: Containers, cid: str, path: str) -> str:
    """The contents of ``path`` inside container ``cid``."""
    return read_in_container(containers.ctr, cid, path, fifo_dir=containers.fifo_dir)


def last_count(containers: Containers, cid: str) -> int:
    """The last number the counter in ``cid`` wrote (0 before the first)."""
    values = counter_values(shm(containers, cid, COUNT_FILE))
    return values[-1] if values else 0


def start_counter(containers: Containers, name: str) -> Started:
    """A container whose init is ``counter`` writing into ``COUNT_FILE``."""
    return containers.start(
        name, "sh", "-c", f"exec /usr/bin/counter {COUNTER_MS} >{COUNT_FILE}", log=False
    )


def start_sleeper(containers: Containers, name: str) -> Started:
    return containers.start(name, "sleep", "100000", log=False)


def assert_running_untouched(ctr: Ctr, started: Started) -> None:
    """The task still runs as the same process and its cgroup is not frozen."""
    info = ctr.task(started.id)
    assert info is not None and info.status is TaskStatus.RUNNING, info
    assert info.pid == started.pid and pid_alive(started.pid)
    assert freezer_state(started.pid) == "THAWED"


def runtime_of(ctr: Ctr, cid: str) -> str:
    info: dict[str, Any] = json.loads(ctr("containers", "info", cid).stdout)
    name: str = info["Runtime"]["Name"]
    return name


def signal_task(ctr: Ctr, cid: str, sig: str) -> None:
    ctr("tasks", "kill", "-s", sig, cid)


# --- ctr checkpoint / restore, both runtimes -----------------------------------------------


def test_ctr_checkpoint_keeps_running_and_restore_continues_the_count(
    containers: Containers, checkpoint_ref: Callable[[str], str], runtime: str
) -> None:
    ctr = containers.ctr
    orig = start_counter(containers, "ck-count")
    # long enough that a counter started afresh could not catch up during a restore
    seen = wait_until(lambda: (n := last_count(containers, orig.id)) >= 30 and n, 30,
                      interval=0.2, message="the counter to reach 30")
    ref = checkpoint_ref("count")
    ctr("containers", "checkpoint", "--task", orig.id, ref)
    after = last_count(containers, orig.id)

    # the checkpointed task kept running: same process, thawed, still counting
    assert_running_untouched(ctr, orig)
    wait_until(lambda: last_count(containers, orig.id) > after, 10, interval=0.1,
               message=f"the checkpointed counter to go past {after}")

    restored = containers.new_id("ck-count-restored")
    t0 = time.monotonic()
    ctr("containers", "restore", "--live", restored, ref)
    info = ctr.wait_status(restored, TaskStatus.RUNNING)
    values = counter_values(shm(containers, restored, COUNT_FILE))
    elapsed = time.monotonic() - t0
    assert runtime_of(ctr, restored) == runtime
    assert info.pid != orig.pid and pid_alive(info.pid)
    # One unbroken run 1..n, reaching at least where it was before the checkpoint. A counter
    # started afresh would have truncated the file and could have written at most
    # elapsed/interval + 1 numbers since the restore began.
    assert values == list(range(1, len(values) + 1)), values
    assert values[-1] >= seen
    fresh_max = int(elapsed * 1000 / COUNTER_MS) + 1
    assert values[-1] > fresh_max, (
        f"restore took {elapsed:.1f}s: cannot tell a restored counter ({values[-1]}) from a new"
        f" one (<= {fresh_max})"
    )
    # and it goes on counting from there
    wait_until(lambda: last_count(containers, restored) > values[-1], 10, interval=0.1,
               message=f"the restored counter to go past {values[-1]}")
    assert_running_untouched(ctr, orig)


@pyrunc_only
def test_ctr_live_restore_brings_loopback_back_up(
    containers: Containers, checkpoint_ref: Callable[[str], str], runtime: str
) -> None:
    """runc always has CRIU leave the network namespace out, so a restored container starts
    in an empty one: with the runc shim even ``lo`` is down afterwards (a server on 127.0.0.1
    is unreachable). Our shim records the namespace and its hook brings ``lo`` back up."""
    ctr = containers.ctr
    orig = containers.start("ck-lo", "sleep", "1000", log=False)
    ref = checkpoint_ref("lo")
    ctr("containers", "checkpoint", "--task", orig.id, ref)
    restored = containers.new_id("ck-lo-restored")
    ctr("containers", "restore", "--live", restored, ref)
    info = ctr.wait_status(restored, TaskStatus.RUNNING)
    with open(f"/proc/{info.pid}/net/dev") as f:
        assert [ln.split(":")[0].strip() for ln in f.read().splitlines()[2:]] == ["lo"]
    out = ctr("tasks", "exec", "--exec-id", "lo", restored, "cat", "/sys/class/net/lo/flags")
    assert int(out.stdout, 16) & 0x1, f"lo is down in the restored container: {out.stdout}"


def test_ctr_live_restore_keeps_64mib_intact(
    containers: Containers, checkpoint_ref: Callable[[str], str], runtime: str
) -> None:
    ctr = containers.ctr
    orig = containers.start(
        "ck-mem", "sh", "-c", f"exec /usr/bin/memfill 64 7 >{MEMFILL_LOG}", log=False
    )

    def log_is(cid: str, text: str) -> Callable[[], bool]:
        return lambda: shm(containers, cid, MEMFILL_LOG) == text

    filled = "filled 64 MiB\n"
    ok = "verify ok 64 MiB\n"
    wait_until(log_is(orig.id, filled), 30, interval=0.1, message="memfill to fill 64 MiB")
    signal_task(ctr, orig.id, "SIGUSR1")
    wait_until(log_is(orig.id, filled + ok), 30, interval=0.1, message="the first verify")

    ref = checkpoint_ref("mem")
    ctr("containers", "checkpoint", "--task", orig.id, ref)
    assert_running_untouched(ctr, orig)
    signal_task(ctr, orig.id, "SIGUSR1")
    wait_until(log_is(orig.id, filled + 2 * ok), 30, interval=0.1,
               message="the checkpointed original to verify again")

    restored = containers.new_id("ck-mem-restored")
    ctr("containers", "restore", "--live", restored, ref)
    info = ctr.wait_status(restored, TaskStatus.RUNNING)
    assert runtime_of(ctr, restored) == runtime
    # the log as it was at the dump (one verify): the process was restored, not started anew
    assert shm(containers, restored, MEMFILL_LOG) == filled + ok
    signal_task(ctr, restored, "SIGUSR1")
    wait_until(log_is(restored, filled + 2 * ok), 30, interval=0.1,
               message="the restored memfill to verify its 64 MiB")
    assert pid_alive(info.pid)


def test_ctr_checkpoint_of_a_paused_task_fails_and_leaves_it_paused(
    containers: Containers, checkpoint_ref: Callable[[str], str], runtime: str
) -> None:
    ctr = containers.ctr
    orig = start_counter(containers, "ck-paused")
    wait_until(lambda: last_count(containers, orig.id) >= 2, 10, interval=0.1)
    ctr("tasks", "pause", orig.id)
    ctr.wait_status(orig.id, TaskStatus.PAUSED)

    ref = checkpoint_ref("paused")
    proc = ctr("containers", "checkpoint", "--task", orig.id, ref, check=False)
    # ctr pauses the task before checkpointing it; a paused task cannot be paused again
    assert proc.returncode != 0, proc.stdout
    assert "cannot pause a paused" in proc.stderr, proc.stderr
    info = ctr.task(orig.id)
    assert info is not None and info.status is TaskStatus.PAUSED and info.pid == orig.pid
    assert freezer_state(orig.pid) == "FROZEN"
    assert ref not in ctr("images", "ls", "-q").stdout.split()

    ctr("tasks", "resume", orig.id)
    ctr.wait_status(orig.id, TaskStatus.RUNNING)
    before = last_count(containers, orig.id)
    wait_until(lambda: last_count(containers, orig.id) > before, 10, interval=0.1,
               message="the resumed counter to go on")


# --- pyrunc tool, pyrunc runtime -------------------------------------------------------------


@pyrunc_only
def test_pyrunc_checkpoint_of_a_paused_task_leaves_it_paused(
    containerd: Containerd, containers: Containers, scratch: Path
) -> None:
    ctr = containers.ctr
    orig = start_counter(containers, "ck-p-paused")
    wait_until(lambda: last_count(containers, orig.id) >= 2, 10, interval=0.1)
    ctr("tasks", "pause", orig.id)
    ctr.wait_status(orig.id, TaskStatus.PAUSED)

    images = scratch / "images"
    proc = run_pyrunc(containerd, "checkpoint", orig.id, "--image-path", str(images), "-q")
    assert proc.returncode == 0, proc.stderr
    info = ctr.task(orig.id)
    assert info is not None and info.status is TaskStatus.PAUSED and info.pid == orig.pid
    assert freezer_state(orig.pid) == "FROZEN"
    assert (images / STORED_PLAN).is_file()
    assert (images / "inventory.img").is_file() and list(images.glob("pages-*.img"))

    ctr("tasks", "resume", orig.id)
    ctr.wait_status(orig.id, TaskStatus.RUNNING)
    before = last_count(containers, orig.id)
    wait_until(lambda: last_count(containers, orig.id) > before, 10, interval=0.1,
               message="the resumed counter to go on")


@pyrunc_only
def test_pyrunc_checkpoint_exit_stops_the_task_after_a_complete_dump(
    containerd: Containerd, containers: Containers, scratch: Path
) -> None:
    ctr = containers.ctr
    orig = containers.start("ck-exit", "/usr/bin/memfill", "64", "11")
    wait_until(lambda: orig.output() == "filled 64 MiB\n", 30, interval=0.1)
    images = scratch / "images"
    proc = run_pyrunc(containerd, "checkpoint", orig.id, "--exit", "--image-path", str(images))
    assert proc.returncode == 0, proc.stderr
    ctr.wait_status(orig.id, TaskStatus.STOPPED)
    assert not pid_alive(orig.pid)
    assert ctr.delete_task(orig.id) == 128 + signal.SIGKILL
    assert (images / STORED_PLAN).is_file()

    # complete: a new container restored from those images verifies the memory
    restored = containers.new_id("ck-exit-restored")
    ctr("containers", "create", "--runtime", PYRUNC, containers.image, restored,
        "/usr/bin/memfill", "64", "11")
    log = containers.log_path(restored)
    proc = run_pyrunc(containerd, "restore", restored, "--image-path", str(images),
                      "--log-uri", f"file://{log}", "--detach")
    assert proc.returncode == 0, proc.stderr
    info = ctr.wait_status(restored, TaskStatus.RUNNING)
    assert info.pid == int(proc.stdout.split()[-1])
    signal_task(ctr, restored, "SIGUSR1")
    wait_until(lambda: log.exists() and "verify ok 64 MiB\n" in log.read_text(), 30,
               interval=0.1, message="the restored memfill to verify")


@pyrunc_only
def test_pyrunc_checkpoint_exit_that_fails_does_not_kill_the_task(
    containerd: Containerd, containers: Containers, scratch: Path
) -> None:
    # CRIU refuses to copy a deleted file larger than its ghost limit (1 MiB by default)
    orig = containers.start("ck-ghost", "sh", "-c", GHOST_SCRIPT, log=False)
    wait_until(lambda: any(os.readlink(f"/proc/{orig.pid}/fd/{fd}").endswith(" (deleted)")
                           for fd in os.listdir(f"/proc/{orig.pid}/fd")),
               10, interval=0.05, message="the container to hold its deleted file")
    images = scratch / "images"
    proc = run_pyrunc(containerd, "checkpoint", orig.id, "--exit", "--image-path", str(images))
    line = refusal_line(proc)
    kept = containerd.bundle(NAMESPACE, orig.id) / DUMP_LOG
    assert f"CRIU log kept at {kept}" in line, line
    reason = "Can't dump ghost file /tmp/ck.ghost"
    assert reason in kept.read_text() and reason in line  # CRIU's own reason, kept and named
    assert_running_untouched(containers.ctr, orig)
    assert not images.exists()


@pyrunc_only
def test_pyrunc_image_and_work_path(
    containerd: Containerd, containers: Containers, scratch: Path
) -> None:
    orig = start_sleeper(containers, "ck-paths")
    images = scratch / "new" / "images"
    work = scratch / "other" / "work"
    proc = run_pyrunc(containerd, "checkpoint", orig.id, "--image-path", str(images),
                      "--work-path", str(work), "-q")
    assert proc.returncode == 0, proc.stderr
    assert_running_untouched(containers.ctr, orig)
    for path in (images, work):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert (images / STORED_PLAN).is_file() and (images / "inventory.img").is_file()
    assert "Dumping finished successfully" in (work / "dump.log").read_text()
    assert not (images / "dump.log").exists()

    # a second checkpoint into the same images is refused, the first one untouched
    before = tree_snapshot(images)
    line = refusal_line(run_pyrunc(containerd, "checkpoint", orig.id, "--image-path",
                                   str(images)))
    assert f"{images} already holds a checkpoint" in line, line
    refusal = checkpoint_rpc(containerd.address, orig.id, image_path=str(images))
    assert refusal is not None and refusal.code == "ALREADY_EXISTS", refusal
    assert tree_snapshot(images) == before
    assert_running_untouched(containers.ctr, orig)


@pyrunc_only
def test_pyrunc_refuses_an_image_path_holding_other_files(
    containerd: Containerd, containers: Containers, scratch: Path
) -> None:
    """A failed dump removes what it wrote from the images directory, so the directory must
    not hold anything else: a non-empty one is refused before the container is touched."""
    orig = start_sleeper(containers, "ck-notempty")
    images = scratch / "busy"
    images.mkdir()
    (images / "precious.txt").write_text("not a checkpoint")
    before = tree_snapshot(images)
    refusal = checkpoint_rpc(containerd.address, orig.id, image_path=str(images))
    assert refusal is not None and refusal.code == "FAILED_PRECONDITION", refusal
    assert f"image path {images} is not empty" in refusal.message
    assert tree_snapshot(images) == before
    assert_running_untouched(containers.ctr, orig)


# Refusals: (test id, CheckpointOptions fields, the same as pyrunc flags or None when the tool
# cannot send it, gRPC status, what the message says). "{s}" is the scratch directory.
REFUSALS = [
    ("pre-dump-with-exit", {"pre_dump": True, "exit": True}, ["--pre-dump", "--exit"],
     "INVALID_ARGUMENT", "pre_dump cannot be combined with exit"),
    ("lazy-pages-without-page-server", {"lazy_pages": True}, ["--lazy-pages"],
     "INVALID_ARGUMENT", "lazy_pages needs page_server"),
    ("empty-ns-unknown-name", {"empty_namespaces": ["bogus"]}, None,
     "INVALID_ARGUMENT", "empty_namespaces: unknown namespace 'bogus'"),
    ("empty-ns-pid", {"empty_namespaces": ["network", "pid"]}, ["--empty-ns", "pid"],
     "INVALID_ARGUMENT", "empty_namespaces: runc cannot leave the pid namespace empty"),
    ("relative-image-path", {"image_path": "ck-images"}, None,
     "INVALID_ARGUMENT", "image_path: path 'ck-images' is not absolute"),
    ("image-path-with-dotdot", {"image_path": "{s}/x/../../../etc/ck"}, None,
     "INVALID_ARGUMENT", "image_path: path '{s}/x/../../../etc/ck' contains '..'"),
    ("relative-work-path", {"work_path": "ck-work"}, None,
     "INVALID_ARGUMENT", "work_path: path 'ck-work' is not absolute"),
    ("work-path-with-dotdot", {"work_path": "{s}/../../tmp/ck"}, None,
     "INVALID_ARGUMENT", "work_path: path '{s}/../../tmp/ck' contains '..'"),
    ("parent-path-with-dotdot", {"parent_path": "{s}/images/../../p"}, None,
     "INVALID_ARGUMENT", "parent_path: path '{s}/images/../../p' contains '..'"),
]


@pyrunc_only
@pytest.mark.parametrize(("fields", "flags", "code", "message"),
                         [pytest.param(*case[1:], id=case[0]) for case in REFUSALS])
def test_pyrunc_checkpoint_refusals_leave_the_container_untouched(
    containerd: Containerd,
    containers: Containers,
    scratch: Path,
    fields: dict[str, Any],
    flags: list[str] | None,
    code: str,
    message: str,
) -> None:
    orig = start_sleeper(containers, "ck-refuse")
    bundle = containerd.bundle(NAMESPACE, orig.id)
    images = scratch / "images"
    options = {"image_path": str(images)}
    options.update({k: v.format(s=scratch) if isinstance(v, str) else v
                    for k, v in fields.items()})
    expected = message.format(s=scratch)

    refusal = checkpoint_rpc(containerd.address, orig.id, **options)
    assert refusal is not None and refusal.code == code, refusal
    assert expected in refusal.message, refusal.message
    if flags is not None:
        line = refusal_line(run_pyrunc(containerd, "checkpoint", orig.id, *flags,
                                       "--image-path", str(images)))
        assert expected in line, line

    assert_running_untouched(containers.ctr, orig)
    assert list(scratch.iterdir()) == []  # no images (nor work) directory was created
    for leftover in ("ck-images", "ck-work", "work/criu-work", DUMP_LOG):
        assert not (bundle / leftover).exists(), leftover  # runc and CRIU never ran


@pyrunc_only
def test_pyrunc_pre_dump_does_what_this_kernel_allows(
    containerd: Containerd, containers: Containers, scratch: Path
) -> None:
    features = criu_features()  # measured: CRIU's FEATURE_CHECK on this host
    orig = start_sleeper(containers, "ck-predump")
    images = scratch / "pre"
    proc = run_pyrunc(containerd, "checkpoint", orig.id, "--pre-dump", "--image-path",
                      str(images))
    if not features.mem_track:
        print(f"CRIU FEATURE_CHECK: mem_track={features.mem_track}: expecting the refusal")
        line = refusal_line(proc)
        assert "soft-dirty" in line and "mem_track=false" in line, line
        refusal = checkpoint_rpc(containerd.address, orig.id, pre_dump=True,
                                 image_path=str(images))
        assert refusal is not None and refusal.code == "FAILED_PRECONDITION", refusal
        assert not images.exists()
        assert not (containerd.bundle(NAMESPACE, orig.id) / "work" / "criu-work").exists()
    else:
        print(f"CRIU FEATURE_CHECK: mem_track={features.mem_track}: expecting a pre-dump")
        assert proc.returncode == 0, proc.stderr
        assert list(images.glob("pages-*.img"))
        assert json.loads((images / STORED_PLAN).read_text())["pre_dump"] is True
    assert_running_untouched(containers.ctr, orig)


@pyrunc_only
@pytest.mark.parametrize("phase", ["starting", "frozen", "copying-memory"])
def test_pyrunc_checkpoint_survives_criu_killed_mid_dump(
    containerd: Containerd, containers: Containers, scratch: Path, phase: str
) -> None:
    """CRIU killed at three points of a dump of 512 MiB: as soon as it starts; while the
    container's cgroup is frozen (CRIU freezes it to seize the tasks with ptrace, then
    thaws it: it is killed as it is about to write THAWED, so it leaves the container
    frozen and the shim must thaw it); and while it copies the memory of the seized tasks
    (~1-2 s for 512 MiB)."""
    ctr = containers.ctr
    orig = containers.start("ck-killed", "/usr/bin/memfill", "512", "3")
    wait_until(lambda: orig.output() == "filled 512 MiB\n", 60, interval=0.1)
    state_file = freezer_state_file(orig.pid)
    images = scratch / "images"
    log_offset = containerd.log_size()
    tool = popen_pyrunc(containerd, "checkpoint", orig.id, "--image-path", str(images))
    try:
        if phase == "copying-memory":
            wait_until(lambda: tool.poll() is not None
                       or any(p.stat().st_size for p in images.glob("pages-*.img")),
                       30, interval=0.005, message="CRIU to write memory pages")
        criu = wait_until(lambda: tool.poll() is not None or runc_criu_pids(orig.id, images),
                          30, interval=0.001, message="runc to start CRIU's dump")
        if tool.poll() is not None:
            out, err = tool.communicate()
            pytest.fail(f"the dump ended before CRIU could be killed: {tool.returncode} "
                        f"{out} {err}")
        assert isinstance(criu, list) and len(criu) == 1, criu
        if phase == "frozen":
            assert kill_at_write(criu[0], str(state_file), b"THAWED"), (
                "CRIU ended before it was seen thawing the cgroup (found too late?)")
            assert state_file.read_text().strip() == "FROZEN"  # as CRIU left it
        else:
            os.kill(criu[0], signal.SIGKILL)
        _, err = tool.communicate(timeout=120)
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.communicate()
    assert tool.returncode == 1, err
    kept = containerd.bundle(NAMESPACE, orig.id) / DUMP_LOG
    assert re.search(rf"checkpoint failed: .*\(CRIU log kept at {re.escape(str(kept))}[;)]",
                     err), err
    assert kept.is_file()

    assert_running_untouched(ctr, orig)
    if phase == "frozen":  # CRIU left it frozen: the shim thawed it
        assert THAW_WARNING in containerd.log_tail(400, since=log_offset)
    # nothing that looks like a checkpoint is left
    assert not images.exists()
    signal_task(ctr, orig.id, "SIGUSR1")
    wait_until(lambda: orig.output() == "filled 512 MiB\nverify ok 512 MiB\n", 30,
               interval=0.1, message="memfill to verify its 512 MiB")
