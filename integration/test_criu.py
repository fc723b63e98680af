"""The CRIU RPC client against the real ``criu swrk`` (root; no containerd needed).

What CRIU reports about the kernel is compared with independent probes done here: soft-dirty
via ``/proc/self/clear_refs`` + ``/proc/self/pagemap`` bit 55, non-cooperative userfaultfd via
the ``userfaultfd`` syscall and ``UFFDIO_API``. Tests that change ``fs.pipe-max-size`` restore
the original value in a ``finally`` and keep the low window as short as possible (capabilities
are probed before lowering it), since other tests on the host may use lazy pages.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import mmap
import os
import platform
import re
import signal
import struct
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from shim.api.criu import rpc_pb2
from shim.checkpoint.criu import (
    LAZY_PAGES_PIPE_SIZE,
    Criu,
    CriuExited,
    Notification,
    ReqType,
    Requirements,
    clear_capability_cache,
    criu_binary,
    ensure_capable,
    probe,
    read_host_facts,
)
from shim.errors import FailedPrecondition
from shim.reaper import Reaper
from shim.spawn import spawn

T = TypeVar("T")
PIPE_MAX = "/proc/sys/fs/pipe-max-size"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="CRIU needs root")


@pytest.fixture(scope="module")
def binary() -> str:
    try:
        return criu_binary("")
    except FailedPrecondition as exc:
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    clear_capability_cache()


def with_criu(binary: str, body: Callable[[Criu], Awaitable[T]], timeout: float = 60) -> T:
    """Run ``body`` with a Criu client on a fresh loop with an installed reaper; never hang."""

    async def main() -> T:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        async with asyncio.timeout(timeout):
            return await body(Criu(reaper, binary))

    return asyncio.run(main())


# --------------------------------------------------------------------------------------------
# Independent probes of the kernel


def kernel_has_soft_dirty() -> bool:
    """Clear soft-dirty bits, write a page, and see whether pagemap bit 55 came back."""
    page = mmap.PAGESIZE
    buf = mmap.mmap(-1, page)
    cell = ctypes.c_char.from_buffer(buf)
    try:
        addr = ctypes.addressof(cell)
        buf[0:1] = b"a"  # fault the page in
        with open("/proc/self/clear_refs", "w") as f:
            f.write("4")  # CLEAR_REFS_SOFT_DIRTY
        buf[0:1] = b"b"  # dirty it again
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(addr // page * 8)
            (entry,) = struct.unpack("<Q", f.read(8))
        assert entry >> 63 & 1, "probe page is not present"
        return bool(entry >> 55 & 1)
    finally:
        del cell
        buf.close()


_SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282}
_UFFDIO_API = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api) (3 x u64)
_UFFD_API = 0xAA
# what CRIU needs for lazy pages: EVENT_FORK | EVENT_REMAP | EVENT_REMOVE | EVENT_UNMAP
_UFFD_NONCOOPERATIVE = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 6)


def kernel_has_noncooperative_uffd() -> bool:
    nr = _SYS_USERFAULTFD.get(platform.machine())
    if nr is None:
        pytest.skip(f"no userfaultfd syscall number known for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(nr, os.O_CLOEXEC | os.O_NONBLOCK)
    if fd < 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM):
            return False
        raise OSError(err, os.strerror(err))
    try:
        api = (ctypes.c_uint64 * 3)(_UFFD_API, 0, 0)  # api, features (in: none), ioctls
        if libc.ioctl(fd, ctypes.c_ulong(_UFFDIO_API), api) != 0:
            return False
        return api[1] & _UFFD_NONCOOPERATIVE == _UFFD_NONCOOPERATIVE
    finally:
        os.close(fd)


@contextmanager
def pipe_max_size(value: int) -> Iterator[None]:
    original = Path(PIPE_MAX).read_text().strip()
    try:
        Path(PIPE_MAX).write_text(str(value))
        yield
    finally:
        Path(PIPE_MAX).write_text(original)


# --------------------------------------------------------------------------------------------
# Requests


def test_version_matches_criu_dash_v(binary: str) -> None:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    m = re.search(r"Version:\s*(\d+)\.(\d+)(?:\.(\d+))?", out.stdout)
    assert m, out.stdout
    version = with_criu(binary, lambda c: c.version())
    assert (version.major, version.minor, version.sublevel) == tuple(
        int(g or 0) for g in m.groups()
    )
    assert version.number >= 40100
    if not version.gitid:
        assert str(version) == m.group(0).split()[-1]


def test_features_match_independent_kernel_probes(binary: str) -> None:
    features = with_criu(binary, lambda c: c.features(pidfd_store=True))
    assert features.mem_track is kernel_has_soft_dirty()
    assert features.lazy_pages is kernel_has_noncooperative_uffd()
    assert features.pidfd_store is not None
    only_lazy = with_criu(binary, lambda c: c.features(mem_track=False))
    assert only_lazy.mem_track is None
    assert only_lazy.lazy_pages is features.lazy_pages


# --------------------------------------------------------------------------------------------
# Capability checks


def test_pre_dump_refused_exactly_when_soft_dirty_is_missing(binary: str) -> None:
    async def body(c: Criu) -> None:
        if kernel_has_soft_dirty():
            caps = await ensure_capable(c, Requirements(mem_track=True))
            assert caps.features.mem_track
            return
        with pytest.raises(FailedPrecondition) as info:
            await ensure_capable(c, Requirements(mem_track=True))
        assert str(info.value) == (
            "pre-dump needs memory dirty tracking (soft-dirty), which this kernel does not "
            "offer (CRIU FEATURE_CHECK mem_track=false)"
        )

    with_criu(binary, body)


def test_version_requirement(binary: str) -> None:
    async def body(c: Criu) -> None:
        caps = await ensure_capable(c, Requirements(min_version=40100))
        assert caps.version.number >= 40100
        with pytest.raises(FailedPrecondition, match=r"^CRIU .* is older than the 99\.0 "):
            await ensure_capable(c, Requirements(min_version=990000))

    with_criu(binary, body)


def test_lazy_pages_and_pipe_max_size(binary: str) -> None:
    if not kernel_has_noncooperative_uffd():
        pytest.skip("no non-cooperative userfaultfd on this kernel")

    async def body(c: Criu) -> None:
        await probe(c)  # ask CRIU before the sysctl changes: the low window stays short
        with pipe_max_size(LAZY_PAGES_PIPE_SIZE):
            caps = await ensure_capable(c, Requirements(lazy_pages=True))
            assert caps.features.lazy_pages
            assert caps.host.pipe_max_size == LAZY_PAGES_PIPE_SIZE
        if read_host_facts().cap_sys_resource:
            with pipe_max_size(1048576):
                await ensure_capable(c, Requirements(lazy_pages=True))
            return
        with pipe_max_size(1048576), pytest.raises(FailedPrecondition) as info:
            await ensure_capable(c, Requirements(lazy_pages=True))
        assert str(info.value) == (
            "fs.pipe-max-size is 1048576; CRIU's lazy page server needs 4194304 without "
            "CAP_SYS_RESOURCE: sysctl -w fs.pipe-max-size=4194304"
        )

    original = Path(PIPE_MAX).read_text()
    with_criu(binary, body)
    assert Path(PIPE_MAX).read_text() == original


# --------------------------------------------------------------------------------------------
# Whole conversations: a real dump, a criu killed mid-call, a timeout


def children() -> list[int]:
    me = os.getpid()
    return [int(pid) for pid in Path(f"/proc/{me}/task/{me}/children").read_text().split()]


def dump_opts(dir_fd: int, pid: int) -> rpc_pb2.criu_opts:
    return rpc_pb2.criu_opts(
        images_dir_fd=dir_fd,
        pid=pid,
        leave_running=True,
        notify_scripts=True,
        log_level=4,
        log_file="dump.log",
    )


async def dump_sleeper(
    c: Criu, images: Path, on_notify: Callable[[Notification], bool], timeout: float = 30
) -> tuple[bool, bool]:
    """Dump a ``sleep`` in its own session (left running); return (CRIU's answer was
    successful, the sleeper is still alive afterwards)."""
    target = spawn(c.reaper, ["sleep", "1000"], setsid=True)
    dir_fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
    try:
        opts = dump_opts(dir_fd, target.pid)
        resp = await c.call(
            ReqType.DUMP,
            opts,
            on_notify=on_notify,
            timeout=timeout,
            log_path=str(images / "dump.log"),
        )
        return resp.success, not target.exited.done()
    finally:
        os.close(dir_fd)
        alive = not target.exited.done()
        os.kill(target.pid, signal.SIGKILL)
        await target.exited
        assert alive, "the dumped process died"


def test_dump_with_notifications(binary: str, tmp_path: Path) -> None:
    scripts: list[str] = []

    def record(n: Notification) -> bool:
        scripts.append(n.script)
        return True

    ok, alive = with_criu(binary, lambda c: dump_sleeper(c, tmp_path, record))
    assert ok and alive
    assert scripts[0] == "pre-dump" and scripts[-1] == "post-dump"
    assert (tmp_path / "inventory.img").exists()


def test_criu_killed_mid_call_is_a_clear_error(binary: str, tmp_path: Path) -> None:
    killed: list[int] = []

    def kill_criu(n: Notification) -> bool:
        # pre-dump comes before CRIU seizes the task: killing it here is harmless
        assert n.script == "pre-dump"
        for pid in children():
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"criu: dump --rpc"):
                os.kill(pid, signal.SIGKILL)  # the criu swrk worker, retitled by CRIU
                killed.append(pid)
        return True

    with pytest.raises(CriuExited) as info:
        with_criu(binary, lambda c: dump_sleeper(c, tmp_path, kill_criu), timeout=30)
    assert len(killed) == 1
    assert info.value.status == 128 + signal.SIGKILL
    assert str(info.value) == (
        "criu swrk exited before answering (DUMP request, killed by SIGKILL)"
    )


def test_timeout_kills_criu(binary: str, tmp_path: Path) -> None:
    async def body(c: Criu) -> None:
        async def stall(n: Notification) -> bool:
            await asyncio.sleep(60)
            return True

        others = set(children())  # e.g. the harness's containerd, also our child
        target = spawn(c.reaper, ["sleep", "1000"], setsid=True)
        dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(TimeoutError, match=r"within 1\.0 s"):
                await c.call(
                    ReqType.DUMP,
                    dump_opts(dir_fd, target.pid),
                    on_notify=stall,
                    timeout=1.0,
                )
            assert set(children()) - others == {target.pid}  # criu is gone, the target not
        finally:
            os.close(dir_fd)
            os.kill(target.pid, signal.SIGKILL)
            await target.exited

    with_criu(binary, body)
