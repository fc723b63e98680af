"""The checkpoint runner (shim.checkpoint.runner) against a fake runtime: what it writes, what
it hands runc, and that a failure keeps CRIU's log, removes what it wrote and keeps the error's
kind (CRIU errors included, whose constructors take more than a message)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
from fake_runtime import FakeRuntime

from shim.bundle import CRIU_CONFIG, CRIU_CONFIG_ANNOTATION
from shim.checkpoint import runner
from shim.checkpoint.criu import CriuRequestFailed, ReqType, Requirements
from shim.checkpoint.plan import (
    CRIU_VERSION_FLOOR,
    CRIU_VERSION_NETWORK_LOCK,
    STORED_PLAN,
    CheckpointPlan,
    NetworkLock,
    RestoreSource,
    dump_plan,
    load_plan,
)
from shim.errors import AlreadyExists, FailedPrecondition, Internal, InvalidArgument, NotFound
from shim.reaper import Reaper
from shim.runtime import Runtime, Stdio

T = TypeVar("T")
LOG = "(00.1) Error (criu/cr-dump.c:1): Dumping FAILED.\n(00.2) Error (criu/x.c:2): no veth\n"


@pytest.fixture(autouse=True)
def _no_criu(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Requirements]]:
    """CRIU is not asked (its own tests cover that); the requirements are recorded."""
    asked: list[Requirements] = []

    async def capable(runtime: Runtime, reaper: Reaper, req: Requirements) -> int:
        asked.append(req)
        return CRIU_VERSION_FLOOR  # too old for a network-lock line: plans run as given

    monkeypatch.setattr(runner, "_ensure_capable", capable)
    yield asked


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "bundle"
    path.mkdir()
    return path


def criu_conf(bundle: Path) -> dict[str, str]:
    return {CRIU_CONFIG_ANNOTATION: str(bundle / CRIU_CONFIG)}


def run(coro: Coroutine[object, object, T]) -> T:
    return asyncio.run(coro)


def checkpoint(rt: FakeRuntime, bundle: Path, plan: CheckpointPlan) -> None:
    """A dump of a container whose init is this process (no network of its own)."""
    result = run(
        runner.checkpoint(rt, Reaper(), "c1", os.getpid(), bundle, criu_conf(bundle), plan)
    )
    assert result is None


def test_checkpoint_runs_runc_and_stores_the_plan(tmp_path: Path, bundle: Path) -> None:
    rt = FakeRuntime()
    plan = CheckpointPlan(str(tmp_path / "img"), str(tmp_path / "work"), tcp_close=True)
    checkpoint(rt, bundle, plan)
    assert rt.calls == [
        ["checkpoint", "--image-path", plan.images_dir, "--work-path", plan.work_dir,
         "--leave-running", "c1"],
    ]  # fmt: skip
    assert load_plan((tmp_path / "img" / STORED_PLAN).read_bytes()) == plan
    assert (bundle / CRIU_CONFIG).read_text().endswith("tcp-close\n")
    for d in ("img", "work"):
        assert oct((tmp_path / d).stat().st_mode & 0o777) == "0o700"


def test_checkpoint_refuses_a_finished_or_foreign_image_dir(tmp_path: Path, bundle: Path) -> None:
    rt = FakeRuntime()
    plan = CheckpointPlan(str(tmp_path / "img"), str(tmp_path / "work"))
    checkpoint(rt, bundle, plan)
    with pytest.raises(AlreadyExists):
        checkpoint(rt, bundle, plan)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FailedPrecondition, match="not empty"):
        checkpoint(rt, bundle, CheckpointPlan(str(other), str(tmp_path / "work")))
    assert rt.calls[1:] == [] and (other / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("version", "sockets", "asked", "lock"),
    [
        (CRIU_VERSION_NETWORK_LOCK, False, {}, NetworkLock.SKIP),
        (CRIU_VERSION_NETWORK_LOCK, True, {}, None),
        (CRIU_VERSION_FLOOR, False, {}, None),
        (CRIU_VERSION_NETWORK_LOCK, False, {"network_lock": NetworkLock.IPTABLES},
         NetworkLock.IPTABLES),
        (CRIU_VERSION_NETWORK_LOCK, False, {"leave_running": False}, None),
    ],
    ids=["no-sockets", "sockets", "old-criu", "asked-iptables", "exit"],
)  # fmt: skip
def test_checkpoint_skips_the_network_lock_only_where_it_protects_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bundle: Path, version: int,
    sockets: bool, asked: dict[str, object], lock: NetworkLock | None,
) -> None:  # fmt: skip
    """The dump's CRIU config and the stored plan say ``network-lock skip`` for a namespace
    without inet sockets (read from the init's namespace), else the plan runs as asked."""
    seen: list[int] = []

    async def capable(runtime: Runtime, reaper: Reaper, req: Requirements) -> int:
        return version

    def inet_sockets(pid: int) -> bool:
        seen.append(pid)
        return sockets

    monkeypatch.setattr(runner, "_ensure_capable", capable)
    monkeypatch.setattr(runner, "has_inet_sockets", inet_sockets)
    plan = CheckpointPlan(str(tmp_path / "img"), str(tmp_path / "work"), **asked)  # type: ignore[arg-type]
    checkpoint(FakeRuntime(), bundle, plan)
    stored = load_plan((tmp_path / "img" / STORED_PLAN).read_bytes())
    assert stored.network_lock is lock
    config = (bundle / CRIU_CONFIG).read_text() if (bundle / CRIU_CONFIG).exists() else ""
    assert ("network-lock skip\n" in config) is (lock is NetworkLock.SKIP)
    assert seen == [os.getpid()]


def test_checkpoint_keeps_the_network_lock_when_the_sockets_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bundle: Path
) -> None:
    async def capable(runtime: Runtime, reaper: Reaper, req: Requirements) -> int:
        return CRIU_VERSION_NETWORK_LOCK

    def unreadable(pid: int) -> bool:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(runner, "_ensure_capable", capable)
    monkeypatch.setattr(runner, "has_inet_sockets", unreadable)
    checkpoint(FakeRuntime(), bundle, CheckpointPlan(str(tmp_path / "img"), str(tmp_path / "w")))
    assert load_plan((tmp_path / "img" / STORED_PLAN).read_bytes()).network_lock is None


def test_checkpoint_refuses_options_runc_cannot_pass_with_a_foreign_criu_config(
    tmp_path: Path, bundle: Path
) -> None:
    plan = CheckpointPlan(str(tmp_path / "img"), str(tmp_path / "work"), link_remap=True)
    with pytest.raises(FailedPrecondition, match="names its own CRIU configuration"):
        run(
            runner.checkpoint(
                FakeRuntime(), Reaper(), "c1", os.getpid(), bundle,
                {CRIU_CONFIG_ANNOTATION: "/etc/theirs.conf"}, plan,
            )
        )  # fmt: skip
    assert not (tmp_path / "img").exists()  # created by the dump, removed with it


@pytest.mark.parametrize(
    "error",
    [
        CriuRequestFailed(ReqType.DUMP, 3, "No such process", "/w/dump.log"),
        NotFound("container not running"),
    ],
    ids=["criu-error", "not-found"],
)
def test_a_failed_dump_keeps_the_log_removes_the_images_and_the_kind(
    tmp_path: Path, bundle: Path, error: Exception
) -> None:
    """``raise type(exc)(...)`` would fail with TypeError for CriuRequestFailed; the error
    keeps its kind (and so its wire code) and says where CRIU's log is and what it says."""
    rt = FakeRuntime()
    plan = CheckpointPlan(str(tmp_path / "img"), str(tmp_path / "work"))

    def crash(criu_args: Sequence[str]) -> None:
        (Path(plan.images_dir) / "pages-1.img").write_bytes(b"x")
        (Path(plan.work_dir) / runner.DUMP_LOG).write_text(LOG)

    rt.on_checkpoint = crash
    rt.fail["checkpoint"] = error
    with pytest.raises(Internal if isinstance(error, CriuRequestFailed) else NotFound) as info:
        checkpoint(rt, bundle, plan)
    kept = bundle / f"criu-{runner.DUMP_LOG}"
    assert info.value.__cause__ is error
    assert str(info.value) == (
        f"checkpoint failed: {error} (CRIU log kept at {kept}; CRIU says: no veth)"
    )
    assert kept.read_text() == LOG
    assert not (tmp_path / "img").exists()


def test_a_failed_dump_into_an_empty_existing_dir_empties_it_again(
    tmp_path: Path, bundle: Path
) -> None:
    images = tmp_path / "img"
    images.mkdir()
    rt = FakeRuntime()
    plan = CheckpointPlan(str(images), str(tmp_path / "work"))

    def crash(criu_args: Sequence[str]) -> None:
        (images / "sub").mkdir()
        (images / "sub" / "x.img").write_bytes(b"x")
        (images / "core.img").write_bytes(b"x")

    rt.on_checkpoint = crash
    rt.fail["checkpoint"] = InvalidArgument("bad")
    with pytest.raises(InvalidArgument, match="CRIU log kept at"):
        checkpoint(rt, bundle, plan)
    assert images.is_dir() and list(images.iterdir()) == []


def test_restore_uses_the_stored_plan_and_owns_runc_flags_in_the_runtime(
    tmp_path: Path, bundle: Path
) -> None:
    rt = FakeRuntime()
    dumped = CheckpointPlan("/elsewhere/img", "/elsewhere/work", tcp_established=True)
    images = tmp_path / "img"
    images.mkdir()
    (images / STORED_PLAN).write_bytes(dump_plan(dumped))
    restored = run(
        runner.restore(
            rt, Reaper(), "c1", bundle, RestoreSource(str(images), tcp_close=True),
            criu_conf(bundle), Stdio(), console_socket=None, no_pivot=True,
        )
    )  # fmt: skip
    try:
        work = bundle / "work" / "criu-work"
        assert restored.pid == rt.pids["c1"] and restored.lazy_daemon is None
        assert rt.calls == [
            ["restore", "--image-path", str(images), "--work-path", str(work),
             "--tcp-established", "--detach", "--pid-file", str(bundle / "init.pid"),
             "--bundle", str(bundle), "--no-pivot", "--no-subreaper", "c1"],
        ]  # fmt: skip
        assert (bundle / CRIU_CONFIG).read_text().endswith("tcp-close\n")
        assert work.is_dir()
    finally:
        run(rt.delete("c1"))
        os.waitpid(restored.pid, 0)


def test_a_failed_restore_keeps_the_log_and_the_kind(tmp_path: Path, bundle: Path) -> None:
    rt = FakeRuntime()
    images = tmp_path / "img"
    images.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    (work / runner.RESTORE_LOG).write_text(LOG)
    error = CriuRequestFailed(ReqType.RESTORE, 17, "File exists", None)
    rt.fail["restore"] = error
    source = RestoreSource(str(images), work_dir=str(work))
    with pytest.raises(Internal) as info:
        run(
            runner.restore(
                rt, Reaper(), "c1", bundle, source, criu_conf(bundle), Stdio(),
                console_socket=None, no_pivot=False,
            )
        )  # fmt: skip
    kept = bundle / f"criu-{runner.RESTORE_LOG}"
    assert str(info.value) == (
        f"restore failed: {error} (CRIU log kept at {kept}; CRIU says: no veth)"
    )
    assert info.value.__cause__ is error


def test_restore_refuses_a_bad_stored_plan_before_runc(tmp_path: Path, bundle: Path) -> None:
    rt = FakeRuntime()
    images = tmp_path / "img"
    images.mkdir()
    (images / STORED_PLAN).write_text(json.dumps({"version": 99}))
    with pytest.raises(InvalidArgument, match="stored plan"):
        run(
            runner.restore(
                rt, Reaper(), "c1", bundle, RestoreSource(str(images)), {}, Stdio(),
                console_socket=None, no_pivot=False,
            )
        )  # fmt: skip
    assert rt.calls == []


def test_the_restore_waits_for_the_endpoint_to_unpack_the_images(tmp_path: Path) -> None:
    """No UNPACKING file: on at once. Locked: the wait lasts until the endpoint lets go, then
    ``complete`` lets the restore go on; anything else fails it naming the file."""
    import fcntl
    import threading

    marker = tmp_path / "pyrunc-unpacking"
    run(runner._wait_unpacked(str(marker)))  # no file: everything was written before

    fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    released = threading.Event()

    def endpoint_done() -> None:
        os.pwrite(fd, b"complete\n", 0)
        released.set()
        os.close(fd)

    async def restore_side() -> bool:
        timer = threading.Timer(0.2, endpoint_done)
        timer.start()
        try:
            await runner._wait_unpacked(str(marker))
            return released.is_set()  # read before the timer thread is joined
        finally:
            timer.join()

    assert run(restore_side())  # it did not return before the endpoint let go

    marker.write_text("failed: disk full\n")
    with pytest.raises(FailedPrecondition, match="disk full") as info:
        run(runner._wait_unpacked(str(marker)))
    assert str(marker) in str(info.value)
    marker.write_text("")
    with pytest.raises(FailedPrecondition, match="empty"):
        run(runner._wait_unpacked(str(marker)))


def test_a_stalled_unpacking_fails_the_wait_at_the_limit_and_holds_no_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint that never lets go of the lock: the wait ends at the CRIU timeout with
    an error naming the file; cancelled before (Start's own deadline, an abort) it ends at
    once, with no thread left blocked on the lock."""
    import fcntl
    import time

    marker = tmp_path / "pyrunc-unpacking"
    fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        monkeypatch.setattr(runner, "criu_timeout", lambda: 0.3)
        begun = time.monotonic()
        error = _wait_in_a_thread(marker)
        assert isinstance(error, FailedPrecondition) and "still locked" in str(error), error
        assert str(marker) in str(error)
        assert 0.3 <= time.monotonic() - begun < 5

        monkeypatch.setattr(runner, "criu_timeout", lambda: 600.0)

        async def cancelled() -> None:
            task = asyncio.ensure_future(runner._wait_unpacked(str(marker)))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        # the loop's end joins its threads: it ends only if none is left on the lock
        assert _in_a_thread(cancelled) is None
    finally:
        os.close(fd)


def _in_a_thread(make: Callable[[], Coroutine[object, object, object]],
                 limit: float = 5.0) -> BaseException | None:
    """Run ``make()``'s coroutine (and its event loop's end) in a thread of its own, so one
    that blocks fails the test instead of hanging it; returns what it raised."""
    import threading

    raised: list[BaseException | None] = []

    def wait() -> None:
        try:
            run(make())
            raised.append(None)
        except BaseException as exc:  # handed to the test
            raised.append(exc)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    thread.join(limit)
    assert raised, "blocked"
    return raised[0]


def _wait_in_a_thread(path: Path) -> BaseException | None:
    return _in_a_thread(lambda: runner._wait_unpacked(str(path)))


def test_an_unpacking_file_not_made_by_the_endpoint_is_refused(tmp_path: Path) -> None:
    """Only a regular file of root in a directory nobody else may write to is waited on: a
    FIFO (an open would block the event loop), a symlink, a file of another user or one in
    a directory others may write to (anyone could have planted it there) is refused naming
    the file; a directory that cannot be read fails the wait as FailedPrecondition."""
    import fcntl

    private = tmp_path / "private"
    private.mkdir(mode=0o700)

    fifo = private / "pyrunc-unpacking"
    os.mkfifo(fifo, 0o600)
    error = _wait_in_a_thread(fifo)
    assert isinstance(error, InvalidArgument) and str(fifo) in str(error), error
    fifo.unlink()

    target = private / "elsewhere"
    target.write_text("complete\n")
    (private / "pyrunc-unpacking").symlink_to(target)
    error = _wait_in_a_thread(private / "pyrunc-unpacking")
    assert isinstance(error, InvalidArgument) and "pyrunc-unpacking" in str(error), error
    (private / "pyrunc-unpacking").unlink()

    theirs = private / "pyrunc-unpacking"
    theirs.write_text("complete\n")
    os.chown(theirs, 65534, 65534)
    with pytest.raises(InvalidArgument, match="not a regular file of uid"):
        run(runner._wait_unpacked(str(theirs)))
    theirs.unlink()

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp, or a systemd PrivateTmp's
    planted = shared / "pyrunc-unpacking"
    fd = os.open(planted, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # kept locked by whoever planted it
        error = _wait_in_a_thread(planted)
        assert isinstance(error, InvalidArgument) and "not trusted" in str(error), error
    finally:
        os.close(fd)
    planted.unlink()
    run(runner._wait_unpacked(str(planted)))  # none there: nothing to wait for

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(FailedPrecondition, match="cannot be waited for"):
        run(runner._wait_unpacked(str(not_a_dir / "pyrunc-unpacking")))
