"""Faults around checkpoint and restore, and the shim's own defences, against real containerd,
runc and CRIU.

Strategy: each test makes one fault happen for real (images cut short, a restore killed in
flight, a request from the wrong place) and then checks what the issue of record promised:
the container that was meant to survive runs (memory verified where ``memfill`` is used), the
one meant to stop is cleanly stopped with its exit reported, and nothing is left behind: no
process, mount, cgroup, runc state or file outside the test's scratch directory. Images and
work directories live in the ``scratch`` fixture; the ``containers`` fixture removes every
container, also on failure. ``io.containerd.runc.v2`` is the control wherever the reference
shim can take the same fault.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._ckpt_tools import checkpoint_rpc, popen_pyrunc, run_pyrunc
from .harness import (
    IMAGE_REF,
    NAMESPACE,
    PYRUNC,
    Containerd,
    Containers,
    Started,
    container_processes,
    ensure_image_tar,
    mounts_under,
    shim_processes,
    wait_until,
)

pyrunc_only = pytest.mark.parametrize("runtime", [PYRUNC], ids=["pyrunc"], indirect=True)

RUNC_ROOT = Path("/run/containerd/runc")  # the runtime root containerd gives shims
CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMFILL_MIB = 16


# --- probes ----------------------------------------------------------------------------------


def _mentions(pid: int, needles: tuple[str, ...]) -> bool:
    """Whether process ``pid`` names one of ``needles`` in its command line, working
    directory or open files."""
    base = f"/proc/{pid}"
    try:
        texts = [Path(base, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")]
        texts.append(os.readlink(f"{base}/cwd"))
        for fd in os.listdir(f"{base}/fd"):
            try:
                texts.append(os.readlink(f"{base}/fd/{fd}"))
            except OSError:
                continue
    except OSError:
        return False
    return any(n in t for n in needles for t in texts)


def processes_of(cid: str, *paths: Path) -> list[int]:
    """Live processes of container ``cid`` or of CRIU/runc working on it: in its cgroup, or
    naming ``cid`` or one of ``paths`` (images, work dirs) in argv, cwd or open files."""
    needles = (cid, *(str(p) for p in paths))
    found = set(container_processes(NAMESPACE, cid))
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid() and _mentions(int(name), needles):
            found.add(int(name))
    return sorted(found)


def restore_residue(containerd: Containerd, cid: str, *paths: Path) -> list[str]:
    """Everything a finished (failed or aborted) restore of ``cid`` must not leave: processes,
    mounts (rootfs, ``criu-root``, CRIU's cgroup yard), runc state, cgroups, the bundle."""
    problems = []
    if procs := processes_of(cid, *paths):
        problems.append(f"processes {procs}")
    state = RUNC_ROOT / NAMESPACE / cid
    for where in (state, containerd.bundle(NAMESPACE, cid), *paths):
        if mounts := mounts_under(where):
            problems.append(f"mounts {mounts}")
    if state.exists():
        problems.append(f"runc state {state}")
    cgroups = [str(p) for p in CGROUP_ROOT.glob(f"*/{NAMESPACE}/{cid}")]
    if cgroups:
        problems.append(f"cgroups {cgroups}")
    yards = [str(y) for p in paths for y in p.glob(".criu.cgyard.*")]
    if yards:
        problems.append(f"cgroup yards {yards}")
    return problems


# --- helpers ---------------------------------------------------------------------------------


def start_memfill(containers: Containers, name: str) -> Started:
    started = containers.start(name, "/usr/bin/memfill", str(MEMFILL_MIB), "5")
    wait_until(lambda: started.output() == f"filled {MEMFILL_MIB} MiB\n", 60, interval=0.1)
    return started


def verify_memfill(containers: Containers, started: Started) -> None:
    containers.ctr("tasks", "kill", "-s", "SIGUSR1", started.id)
    want = f"filled {MEMFILL_MIB} MiB\nverify ok {MEMFILL_MIB} MiB\n"
    wait_until(lambda: started.output() == want, 30, interval=0.1,
               message=lambda: f"memfill to verify: {started.output()!r}")


def cut_pages_in_half(containerd: Containerd, containers: Containers, scratch: Path) -> Path:
    """A complete checkpoint of a running memfill whose ``pages-1.img`` is then cut in half
    (the restore of it hangs in CRIU); returns the images directory."""
    orig = start_memfill(containers, "fault-src")
    images = scratch / "images"
    proc = run_pyrunc(containerd, "checkpoint", "-q", orig.id, "--image-path", str(images),
                      "--work-path", str(scratch / "dump-work"))
    assert proc.returncode == 0, proc.stderr
    pages = images / "pages-1.img"
    os.truncate(pages, pages.stat().st_size // 2)
    verify_memfill(containers, orig)  # the checkpointed container goes on untouched
    return images


def new_record(containers: Containers, name: str) -> str:
    """``ctr c create`` a container record (no task) to restore into; returns its id."""
    cid = containers.new_id(name)
    containers.ctr("containers", "create", "--runtime", containers.runtime, containers.image,
                   cid, "sleep", "1")
    return cid


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    """Wait for a background tool; its status and stderr (killed if it outlives timeout)."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the tool did not return within {timeout} s: {err}")
    return proc.returncode, err


# --- defect 1: a restore that hangs is bounded and can be killed -------------------------------


@pyrunc_only
@pytest.mark.parametrize("how", ["kill", "delete"])
def test_restore_hanging_on_truncated_pages_is_aborted_by_kill_or_delete(
    containerd: Containerd, containers: Containers, scratch: Path, how: str
) -> None:
    """CRIU hangs restoring images whose pages are cut in half. A Kill (or a Delete) of the
    task while its restore is in flight ends it: the restore fails, the task is stopped with
    its exit reported, and CRIU's processes, mounts and cgroups are gone."""
    ctr = containers.ctr
    images = cut_pages_in_half(containerd, containers, scratch)
    cid = new_record(containers, "fault-hang")
    work = scratch / "restore-work"
    events = containers.popen("events")
    tool = popen_pyrunc(containerd, "restore", cid, "--image-path", str(images),
                        "--work-path", str(work), "--detach")
    try:
        # CRIU is in the middle of the restore once its cgroup yard is mounted
        wait_until(lambda: tool.poll() is not None or mounts_under(work), 60, interval=0.05,
                   message="CRIU to start restoring")
        assert tool.poll() is None, tool.communicate()
        time.sleep(2)  # let it get stuck: the abort must work on a hung CRIU, not a busy one
        assert tool.poll() is None, tool.communicate()
        started = time.monotonic()
        if how == "kill":
            ctr("tasks", "kill", "-s", "SIGKILL", cid, timeout=60)
        else:
            ctr("tasks", "rm", cid, timeout=60)
        status, err = finish(tool, 60)
        elapsed = time.monotonic() - started
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.communicate()
    assert status == 1, err
    assert f"restore of {cid} aborted by signal 9" in err, err
    assert elapsed < 30, f"the abort took {elapsed:.1f} s"
    wait_until(lambda: ctr.task(cid) is None, 30, message="the task to be deleted")
    assert_exit_reported(events, cid, 137)
    ctr("containers", "rm", cid)
    assert restore_residue(containerd, cid, images, work) == []


def assert_exit_reported(events: subprocess.Popen[str], cid: str, status: int) -> None:
    """``ctr events`` showed a ``/tasks/exit`` of ``cid`` with ``status``."""
    time.sleep(0.5)  # events travel asynchronously to ctr
    events.terminate()
    out, _ = events.communicate(timeout=10)
    exits = [line for line in out.splitlines() if "/tasks/exit" in line and cid in line]
    assert exits and f'"exit_status":{status}' in exits[-1], out


@pytest.fixture
def limited_containerd() -> Iterator[Containerd]:
    """A containerd of its own whose shims bound a dump or restore to 15 s
    (``PYRUNC_CRIU_TIMEOUT`` in containerd's environment, which its shims inherit)."""
    os.environ["PYRUNC_CRIU_TIMEOUT"] = "15"
    try:
        daemon = Containerd.start(prefix="/run/pyrunc-lim-")
    finally:
        del os.environ["PYRUNC_CRIU_TIMEOUT"]
    try:
        daemon.import_image(ensure_image_tar(), IMAGE_REF, NAMESPACE)
        yield daemon
    finally:
        problems = daemon.stop()
        assert not problems, problems


def test_restore_hanging_on_truncated_pages_ends_at_the_limit(
    limited_containerd: Containerd, scratch: Path, request: pytest.FixtureRequest
) -> None:
    """Without a deadline in the request, the configured limit bounds the restore: it
    fails, and the task ends stopped with its exit reported, nothing left behind."""
    containerd = limited_containerd
    box = Containers(containerd=containerd, ctr=containerd.ctr(NAMESPACE), runtime=PYRUNC,
                     image=IMAGE_REF, logdir=scratch / "logs")
    try:
        images = cut_pages_in_half(containerd, box, scratch)
        cid = new_record(box, "fault-limit")
        work = scratch / "restore-work"
        events = box.popen("events")
        started = time.monotonic()
        proc = run_pyrunc(containerd, "restore", cid, "--image-path", str(images),
                          "--work-path", str(work), "--detach", timeout=120)
        elapsed = time.monotonic() - started
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert 15 <= elapsed < 60, elapsed
        assert "did not finish within 15" in proc.stderr, proc.stderr
        wait_until(lambda: box.ctr.task(cid) is None, 30, message="the task to be deleted")
        assert_exit_reported(events, cid, 137)
        box.ctr("containers", "rm", cid)
        assert restore_residue(containerd, cid, images, work) == []
    finally:
        problems = box.cleanup()
        assert not problems, problems


# --- private images, no symlinks, an unfinished dump removed -----------------------------------


def modes(root: Path) -> dict[str, int]:
    """Every entry under ``root`` (and root itself) with its permission bits."""
    found = {".": root.stat().st_mode & 0o777}
    for path in root.rglob("*"):
        if not path.is_symlink():
            found[str(path.relative_to(root))] = path.stat().st_mode & 0o777
    return found


@pyrunc_only
def test_images_logs_and_plan_are_private(
    containerd: Containerd, containers: Containers, scratch: Path
) -> None:
    """Images (the container's memory), CRIU's logs and stats and the stored plan are 0600
    in 0700 directories, after a dump and after a restore."""
    orig = start_memfill(containers, "fault-private")
    images, work = scratch / "images", scratch / "work"
    proc = run_pyrunc(containerd, "checkpoint", "-q", orig.id, "--image-path", str(images),
                      "--work-path", str(work))
    assert proc.returncode == 0, proc.stderr
    restored = new_record(containers, "fault-private-r")
    rwork = scratch / "rwork"
    proc = run_pyrunc(containerd, "restore", restored, "--image-path", str(images),
                      "--work-path", str(rwork), "--detach")
    assert proc.returncode == 0, proc.stderr
    for root in (images, work, rwork):
        found = modes(root)
        assert len(found) > 1, root
        loose = {name: oct(mode) for name, mode in found.items()
                 if mode != (0o700 if (root / name).is_dir() else 0o600)}
        assert loose == {}, f"not private in {root}"
    assert (images / "pyrunc-checkpoint.json").is_file() and (work / "dump.log").is_file()
    verify_memfill(containers, orig)


@pyrunc_only
def test_symlinked_and_dotdot_paths_are_refused_by_the_shim(
    containerd: Containerd, containers: Containers, scratch: Path
) -> None:
    """A work or image path through a symlink (CRIU would write where it points) or with a
    ``..`` is refused with InvalidArgument by the shim itself (sent with the tool's client
    code, past the tool's own checks); nothing is written and the container runs on."""
    orig = containers.start("fault-paths", "sleep", "100000", log=False)
    elsewhere = scratch / "elsewhere"
    elsewhere.mkdir()
    (scratch / "link").symlink_to(elsewhere)
    cases = {
        "work_path": str(scratch / "link"),
        "image_path": str(scratch / "link" / "images"),
    }
    for field, path in cases.items():
        refusal = checkpoint_rpc(containerd.address, orig.id, **{field: path})
        assert refusal is not None and refusal.code == "INVALID_ARGUMENT", (field, refusal)
        assert "symlink" in refusal.message, refusal
    refusal = checkpoint_rpc(containerd.address, orig.id,
                             image_path=f"{scratch}/images/../elsewhere/images")
    assert refusal is not None and refusal.code == "INVALID_ARGUMENT", refusal
    assert "'..'" in refusal.message, refusal
    assert list(elsewhere.iterdir()) == []
    info = containers.ctr.task(orig.id)
    assert info is not None and info.pid == orig.pid and info.status.name == "RUNNING", info


@pyrunc_only
def test_shim_killed_mid_dump_leaves_no_images(
    containerd: Containerd, containers: Containers, scratch: Path
) -> None:
    """The shim is SIGKILLed while CRIU writes the images; containerd runs the ``delete``
    action, which removes what the unfinished dump wrote. The task is cleanly stopped (the
    fault takes its shim away) and nothing is left: no images, process, mount or cgroup."""
    orig = containers.start("fault-shimkill", "/usr/bin/memfill", "512", "3")
    wait_until(lambda: orig.output() == "filled 512 MiB\n", 60, interval=0.1)
    images = scratch / "images"
    shims = shim_processes(containerd.address, orig.id)
    assert len(shims) == 1, shims
    tool = popen_pyrunc(containerd, "checkpoint", orig.id, "--image-path", str(images))
    try:
        wait_until(lambda: tool.poll() is not None
                   or any(p.stat().st_size for p in images.glob("pages-*.img")),
                   60, interval=0.005, message="CRIU to write memory pages")
        assert tool.poll() is None, tool.communicate()
        os.kill(shims[0], signal.SIGKILL)
        status, err = finish(tool, 120)
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.communicate()
    assert status != 0, err
    ctr = containers.ctr
    wait_until(lambda: (info := ctr.task(orig.id)) is None
               or info.status.name == "STOPPED", 60, message="the task to stop")
    wait_until(lambda: not images.exists(), 60,
               message=lambda: f"the unfinished images to go: {sorted(images.glob('*'))}")
    wait_until(lambda: processes_of(orig.id, images) == [], 60,
               message=lambda: f"processes to go: {processes_of(orig.id, images)}")
    if ctr.task(orig.id) is not None:
        ctr("tasks", "rm", "-f", orig.id)
    ctr("containers", "rm", orig.id)
    assert restore_residue(containerd, orig.id, images) == []


# --- CRIU killed, disk full, bad images -------------------------------------------------------


def criu_pids_for(path: Path) -> list[int]:
    """CRIU processes working on ``path`` (images or work dir)."""
    return [pid for pid in processes_of("\0no-container\0", path)
            if Path(f"/proc/{pid}/comm").exists()
            and Path(f"/proc/{pid}/comm").read_text().strip() == "criu"]


def checkpoint_memfill(containerd: Containerd, containers: Containers, scratch: Path,
                       mib: int = MEMFILL_MIB) -> tuple[Started, Path]:
    """A running memfill of ``mib`` MiB and a complete checkpoint of it."""
    orig = containers.start("fault-src", "/usr/bin/memfill", str(mib), "5")
    wait_until(lambda: orig.output() == f"filled {mib} MiB\n", 60, interval=0.1)
    images = scratch / "images"
    proc = run_pyrunc(containerd, "checkpoint", "-q", orig.id, "--image-path", str(images),
                      "--work-path", str(scratch / "dump-work"))
    assert proc.returncode == 0, proc.stderr
    return orig, images


def verify(containers: Containers, started: Started, mib: int) -> None:
    containers.ctr("tasks", "kill", "-s", "SIGUSR1", started.id)
    wait_until(lambda: f"verify ok {mib} MiB\n" in started.output(), 60, interval=0.1,
               message=lambda: f"memfill to verify: {started.output()!r}")


@pyrunc_only
def test_criu_killed_during_restore_leaves_nothing(
    containerd: Containerd, containers: Containers, scratch: Path
) -> None:
    orig, images = checkpoint_memfill(containerd, containers, scratch, 256)
    cid = new_record(containers, "fault-criukill")
    work = scratch / "restore-work"
    tool = popen_pyrunc(containerd, "restore", cid, "--image-path", str(images),
                        "--work-path", str(work), "--detach")
    try:
        criu = wait_until(lambda: tool.poll() is not None or (mounts_under(work)
                                                              and criu_pids_for(images)),
                          60, interval=0.005, message="CRIU to restore")
        assert tool.poll() is None, tool.communicate()
        assert isinstance(criu, list)
        for pid in criu:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        status, err = finish(tool, 120)
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.communicate()
    assert status == 1 and "restore failed" in err, err
    wait_until(lambda: containers.ctr.task(cid) is None, 30, message="the task to be deleted")
    containers.ctr("containers", "rm", cid)
    assert restore_residue(containerd, cid, images, work) == []
    verify(containers, orig, 256)


@pyrunc_only
def test_dump_into_a_full_disk_leaves_the_container_running(
    containerd: Containerd, containers: Containers, scratch: Path
) -> None:
    """A dump of 64 MiB into an 8 MiB tmpfs fails; the container runs on, unfrozen, its
    memory intact, and no partial images are left."""
    orig = containers.start("fault-full", "/usr/bin/memfill", "64", "9")
    wait_until(lambda: orig.output() == "filled 64 MiB\n", 60, interval=0.1)
    small = scratch / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(small)],
                   check=True)
    try:
        images = small / "images"
        proc = run_pyrunc(containerd, "checkpoint", orig.id, "--image-path", str(images),
                          "--work-path", str(scratch / "work"))
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert "checkpoint failed" in proc.stderr, proc.stderr
        assert not images.exists() or list(images.iterdir()) == []
        assert processes_of("\0none\0", images) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
    info = containers.ctr.task(orig.id)
    assert info is not None and info.pid == orig.pid and info.status.name == "RUNNING", info
    verify(containers, orig, 64)


@pyrunc_only
@pytest.mark.parametrize("damage", ["garbage-inventory", "corrupt-plan", "missing-plan"])
def test_restore_from_damaged_images(
    containerd: Containerd, containers: Containers, scratch: Path, damage: str
) -> None:
    """A garbage inventory or a corrupt stored plan: the restore is refused or fails, the
    task is gone and nothing is left. A missing plan is a checkpoint made elsewhere: it
    restores from the annotations alone and the memory verifies."""
    orig, images = checkpoint_memfill(containerd, containers, scratch)
    plan = images / "pyrunc-checkpoint.json"
    if damage == "garbage-inventory":
        (images / "inventory.img").write_bytes(os.urandom(512))
    elif damage == "corrupt-plan":
        plan.write_text('{"version": 1, "leave_running": "perhaps", ')
    else:
        plan.unlink()
    cid = new_record(containers, f"fault-{damage}")
    work = scratch / "restore-work"
    log = scratch / "restored.log"
    proc = run_pyrunc(containerd, "restore", cid, "--image-path", str(images),
                      "--work-path", str(work), "--detach", "--log-uri", f"file://{log}")
    if damage == "missing-plan":
        assert proc.returncode == 0, proc.stderr
        restored = Started(cid, int(proc.stdout), log)
        verify(containers, restored, MEMFILL_MIB)
        return
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    if damage == "corrupt-plan":
        assert "InvalidArgument" in proc.stderr or "invalid" in proc.stderr.lower(), proc.stderr
    wait_until(lambda: containers.ctr.task(cid) is None, 30, message="the task to be deleted")
    containers.ctr("containers", "rm", cid)
    assert restore_residue(containerd, cid, images, work) == []
    verify(containers, orig, MEMFILL_MIB)


# --- containerd restarted in the middle -------------------------------------------------------


def wait_criu_done(path: Path) -> None:
    wait_until(lambda: criu_pids_for(path) == [], 120, interval=0.1,
               message=lambda: f"CRIU to finish with {path}: {criu_pids_for(path)}")


@pyrunc_only
def test_containerd_restarted_during_a_checkpoint(
    containerd: Containerd, containers: Containers, scratch: Path
) -> None:
    """containerd restarts while CRIU writes 256 MiB of images. The shim finishes the dump
    on its own: the images are complete (and restore, memory verified) or gone; the container
    runs on, its memory verified."""
    orig = containers.start("fault-cdck", "/usr/bin/memfill", "256", "4")
    wait_until(lambda: orig.output() == "filled 256 MiB\n", 60, interval=0.1)
    images = scratch / "images"
    tool = popen_pyrunc(containerd, "checkpoint", orig.id, "--image-path", str(images))
    try:
        wait_until(lambda: tool.poll() is not None
                   or any(p.stat().st_size for p in images.glob("pages-*.img")),
                   60, interval=0.005, message="CRIU to write memory pages")
        containerd.restart()
        finish(tool, 120)
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.communicate()
    wait_criu_done(images)
    ctr = containers.ctr
    info = ctr.task(orig.id)
    assert info is not None and info.pid == orig.pid and info.status.name == "RUNNING", info
    verify(containers, orig, 256)
    if (images / "pyrunc-checkpoint.json").exists():
        cid = new_record(containers, "fault-cdck-r")
        log = scratch / "restored.log"
        proc = run_pyrunc(containerd, "restore", cid, "--image-path", str(images),
                          "--detach", "--log-uri", f"file://{log}")
        assert proc.returncode == 0, proc.stderr
        verify(containers, Started(cid, int(proc.stdout), log), 256)
    else:
        assert not images.exists() or list(images.iterdir()) == []


@pyrunc_only
def test_containerd_restarted_during_a_restore(
    containerd: Containerd, containers: Containers, scratch: Path
) -> None:
    """containerd restarts while CRIU restores 256 MiB. The shim finishes the restore: the
    restored task runs with its memory verified, or it is gone with nothing left."""
    orig, images = checkpoint_memfill(containerd, containers, scratch, 256)
    cid = new_record(containers, "fault-cdrs")
    work = scratch / "restore-work"
    log = scratch / "restored.log"
    tool = popen_pyrunc(containerd, "restore", cid, "--image-path", str(images),
                        "--work-path", str(work), "--detach", "--log-uri", f"file://{log}")
    try:
        wait_until(lambda: tool.poll() is not None or mounts_under(work), 60, interval=0.005,
                   message="CRIU to restore")
        containerd.restart()
        finish(tool, 120)
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.communicate()
    wait_criu_done(images)
    ctr = containers.ctr
    wait_until(lambda: (i := ctr.task(cid)) is None or i.status.name != "CREATED", 60,
               message="the restore to settle")
    info = ctr.task(cid)
    if info is not None and info.status.name == "RUNNING":
        verify(containers, Started(cid, info.pid, log), 256)
    else:
        if info is not None:
            ctr("tasks", "rm", "-f", cid)
        ctr("containers", "rm", cid)
        assert restore_residue(containerd, cid, images, work) == []
    verify(containers, orig, 256)


# --- many at once -----------------------------------------------------------------------------

CONCURRENT = 50


@pyrunc_only
def test_50_containers_checkpointed_and_restored_concurrently(
    containerd: Containerd, containers: Containers, scratch: Path
) -> None:
    """50 ``sleep`` containers are checkpointed at once, then restored at once into 50 new
    containers: 0 errors, 0 containers lost (every original and every restored task runs)."""
    from concurrent.futures import ThreadPoolExecutor

    originals = [containers.start(f"fault-many{i}", "sleep", "100000", log=False)
                 for i in range(CONCURRENT)]

    def checkpoint(i: int) -> str:
        proc = run_pyrunc(containerd, "checkpoint", "-q", originals[i].id, "--image-path",
                          str(scratch / f"i{i}"), timeout=600)
        return "" if proc.returncode == 0 else f"{originals[i].id}: {proc.stderr.strip()}"

    records = [new_record(containers, f"fault-many-r{i}") for i in range(CONCURRENT)]

    def restore(i: int) -> str:
        proc = run_pyrunc(containerd, "restore", records[i], "--image-path",
                          str(scratch / f"i{i}"), "--detach", timeout=600)
        return "" if proc.returncode == 0 else f"{records[i]}: {proc.stderr.strip()}"

    with ThreadPoolExecutor(CONCURRENT) as pool:
        errors = [e for e in pool.map(checkpoint, range(CONCURRENT)) if e]
        assert errors == [], errors
        errors = [e for e in pool.map(restore, range(CONCURRENT)) if e]
        assert errors == [], errors
    tasks = containers.ctr.tasks()
    lost = [cid for cid in [s.id for s in originals] + records
            if cid not in tasks or tasks[cid].status.name != "RUNNING"]
    assert lost == [], lost
    assert all(tasks[s.id].pid == s.pid for s in originals)
