"""Checkpoint archives as untrusted input (shim.cri._extract): every bad entry is refused,
named, before anything is written; a good archive unpacks into a private directory."""

from __future__ import annotations

import gzip
import io
import os
import re
import stat
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from shim.cri._errors import InvalidArgument
from shim.cri._extract import Extraction, check_archive, extract_archive

GOOD = [("spec.dump", b'{"process":{}}'), ("config.dump", b"{}"),
        ("checkpoint/inventory.img", b"inv"), ("checkpoint/pages-1.img", b"p" * 5000),
        ("rootfs-diff.tar", b"")]


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def _special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, b""


def write_tar(path: Path, extra: list[tuple[tarfile.TarInfo, bytes]] = (),  # type: ignore[assignment]
              base: list[tuple[str, bytes]] = GOOD) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        d = tarfile.TarInfo("checkpoint")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(d)
        for name, data in base:
            info, body = _file(name, data)
            tar.addfile(info, io.BytesIO(body))
        for info, body in extra:
            tar.addfile(info, io.BytesIO(body) if body else None)
    return path


def test_good_archive_unpacks_private(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "a.tar", [
        _file("checkpoint/setuid", b"x", 0o4755),
        _special("checkpoint/link", tarfile.SYMTYPE, "pages-1.img"),
        _special("checkpoint/hard", tarfile.LNKTYPE, "checkpoint/inventory.img"),
    ])
    out = extract_archive(check_archive(archive), tmp_path / "work", "ck-")
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert (out / "checkpoint/pages-1.img").read_bytes() == b"p" * 5000
    assert os.readlink(out / "checkpoint/link") == "pages-1.img"
    assert (out / "checkpoint/hard").read_bytes() == b"inv"
    assert stat.S_IMODE((out / "checkpoint/setuid").stat().st_mode) == 0o755  # no set-id
    assert (out / "spec.dump").read_bytes() == b'{"process":{}}'


def test_dot_slash_prefix_and_gzip_accepted(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in GOOD:
            info, body = _file(f"./{name}", data)
            tar.addfile(info, io.BytesIO(body))
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress(raw.getvalue()))
    out = extract_archive(check_archive(tmp_path / "a.tar.gz"), tmp_path / "w", "ck-")
    assert (out / "checkpoint/inventory.img").read_bytes() == b"inv"


BAD: list[tuple[str, list[tuple[tarfile.TarInfo, bytes]], str]] = [
    ("dotdot", [_file("checkpoint/../../etc/x", b"x")], "checkpoint/../../etc/x"),
    ("absolute", [_file("/etc/evil", b"x")], "/etc/evil"),
    ("symlink out", [_special("checkpoint/out", tarfile.SYMTYPE, "../../etc")],
     "checkpoint/out"),
    ("symlink absolute", [_special("checkpoint/abs", tarfile.SYMTYPE, "/etc/passwd")],
     "checkpoint/abs"),
    ("below a symlink", [_special("checkpoint/d", tarfile.SYMTYPE, "."),
                         _file("checkpoint/d/x", b"x")], "checkpoint/d/x"),
    ("hard link out", [_special("checkpoint/h", tarfile.LNKTYPE, "/etc/shadow")],
     "checkpoint/h"),
    ("hard link to nothing", [_special("checkpoint/h", tarfile.LNKTYPE, "checkpoint/none")],
     "checkpoint/h"),
    ("char device", [_special("checkpoint/null", tarfile.CHRTYPE)], "checkpoint/null"),
    ("block device", [_special("checkpoint/sda", tarfile.BLKTYPE)], "checkpoint/sda"),
    ("fifo", [_special("checkpoint/fifo", tarfile.FIFOTYPE)], "checkpoint/fifo"),
    ("twice", [_file("spec.dump", b"{}")], "spec.dump"),
    # the endpoint's own file, which the restore trusts (a compressed archive would have it
    # written before anything else could claim the name)
    ("unpacking file", [_file("pyrunc-unpacking", b"complete\n")], "pyrunc-unpacking"),
    ("unpacking file ./", [_file("./pyrunc-unpacking", b"complete\n")], "./pyrunc-unpacking"),
    ("below the unpacking name", [_file("pyrunc-unpacking/x", b"x")], "pyrunc-unpacking/x"),
]


@pytest.mark.parametrize(("extra", "entry"), [(e, n) for _, e, n in BAD],
                         ids=[i for i, _, _ in BAD])
def test_bad_entry_refused_by_name_nothing_written(
        tmp_path: Path, extra: list[tuple[tarfile.TarInfo, bytes]], entry: str) -> None:
    archive = write_tar(tmp_path / "a.tar", extra)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(InvalidArgument, match=re.escape(f"'{entry}'")):
        check_archive(archive)
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("missing", ["spec.dump", "config.dump", "checkpoint/inventory.img"])
def test_missing_required_entry(tmp_path: Path, missing: str) -> None:
    archive = write_tar(tmp_path / "a.tar", base=[e for e in GOOD if e[0] != missing])
    with pytest.raises(InvalidArgument, match=re.escape(f"no {missing}")):
        check_archive(archive)


CUTS: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("truncated in data", lambda b: b[:1536 + 2048]),
    ("truncated in a header", lambda b: b[:512 * 7 + 100]),
    ("garbage", lambda b: b"\x07" * 3000),
    ("empty", lambda b: b""),
    ("bad checksum", lambda b: b[:512] + bytes([b[512] ^ 0xFF]) + b[513:]),
    ("gzip cut", lambda b: gzip.compress(b)[: len(gzip.compress(b)) // 2]),
]


@pytest.mark.parametrize("cut", [c for _, c in CUTS], ids=[i for i, _ in CUTS])
def test_truncated_or_corrupt_refused(tmp_path: Path, cut: Callable[[bytes], bytes]) -> None:
    whole = write_tar(tmp_path / "whole.tar").read_bytes()
    (tmp_path / "bad.tar").write_bytes(cut(whole))
    with pytest.raises(InvalidArgument, match=r"bad\.tar"):
        check_archive(tmp_path / "bad.tar")


def test_failed_unpack_leaves_nothing(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "a.tar")
    checked = check_archive(archive)
    archive.write_bytes(archive.read_bytes()[:2048])  # changed after the check
    work = tmp_path / "work"
    with pytest.raises((InvalidArgument, OSError)):
        extract_archive(checked, work, "ck-")
    assert os.listdir(work) == []


def test_extraction_writes_the_dumps_first_then_the_images(tmp_path: Path) -> None:
    """The dumps and rootfs-diff.tar are there when start() returns; CRIU's images once
    wait() returns; every directory ends 0700 whatever the archive says (0755 here)."""
    archive = write_tar(tmp_path / "a.tar")
    extraction = Extraction(check_archive(archive), tmp_path / "work", "ck-").start()
    assert (extraction.dest / "spec.dump").read_bytes() == b'{"process":{}}'
    assert (extraction.dest / "config.dump").read_bytes() == b"{}"
    assert (extraction.dest / "rootfs-diff.tar").exists()
    out = extraction.wait()
    assert out == extraction.dest
    assert (out / "checkpoint/pages-1.img").read_bytes() == b"p" * 5000
    assert stat.S_IMODE((out / "checkpoint").stat().st_mode) == 0o700
    assert stat.S_IMODE(out.stat().st_mode) == 0o700


def test_extraction_abort_removes_everything(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "a.tar")
    work = tmp_path / "work"
    extraction = Extraction(check_archive(archive), work, "ck-").start()
    extraction.abort()
    assert os.listdir(work) == []


def test_extraction_failure_on_the_thread_is_raised_by_wait(tmp_path: Path) -> None:
    """The archive cut after the check, inside CRIU's images: start() writes the dumps, the
    thread fails, wait() raises it and the directory is gone."""
    archive = write_tar(tmp_path / "a.tar")
    checked = check_archive(archive)
    pages = next(info for name, info in checked.members if name == "checkpoint/pages-1.img")
    with open(archive, "r+b") as f:
        f.truncate(pages.offset_data + 100)
    work = tmp_path / "work"
    extraction = Extraction(checked, work, "ck-").start()  # the dumps lie before the cut
    assert (extraction.dest / "spec.dump").exists()
    with pytest.raises(InvalidArgument, match="ends inside an entry"):
        extraction.wait()
    assert os.listdir(work) == []


def test_the_unpacking_file_is_locked_until_the_images_are_written(
    tmp_path: Path, held_unpacking: threading.Event
) -> None:
    """While the thread writes CRIU's images, UNPACKING is locked (the restore waits on it)
    and the ``checkpoint`` directory and the shim's stored plan are already there; then it
    says ``complete``, the lock is free and ``on_done`` was called without an error."""
    import fcntl

    from shim.checkpoint.plan import STORED_PLAN, UNPACKING

    archive = write_tar(tmp_path / "a.tar", base=[*GOOD, (f"checkpoint/{STORED_PLAN}", b"{}")])
    release = held_unpacking
    ended: list[BaseException | None] = []
    extraction = Extraction(check_archive(archive), tmp_path / "work", "ck-").start(ended.append)
    marker = extraction.dest / UNPACKING
    fd = os.open(marker, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        assert stat.S_IMODE((extraction.dest / "checkpoint").stat().st_mode) == 0o700
        assert (extraction.dest / "checkpoint" / STORED_PLAN).read_bytes() == b"{}"
        assert not (extraction.dest / "checkpoint/pages-1.img").exists()
        assert stat.S_IMODE(marker.stat().st_mode) == 0o600 and ended == []
        release.set()
        fcntl.flock(fd, fcntl.LOCK_SH)  # what the restore waits on
        assert marker.read_text() == "complete\n"
        done = extraction.wait()  # the thread has ended
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # still free
    finally:
        os.close(fd)
    assert ended == [None]
    assert (done / "checkpoint/pages-1.img").read_bytes() == b"p" * 5000


def test_the_unpacking_file_says_what_failed(tmp_path: Path) -> None:
    import fcntl

    from shim.checkpoint.plan import UNPACKING

    archive = write_tar(tmp_path / "a.tar")
    checked = check_archive(archive)
    pages = next(info for name, info in checked.members if name == "checkpoint/pages-1.img")
    with open(archive, "r+b") as f:
        f.truncate(pages.offset_data + 100)
    ended: list[BaseException | None] = []
    extraction = Extraction(checked, tmp_path / "work", "ck-").start(ended.append)
    fd = os.open(extraction.dest / UNPACKING, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # what the restore waits on
        text = os.pread(fd, 4096, 0).decode()
    finally:
        os.close(fd)
    assert text.startswith("failed: ") and "ends inside an entry" in text, text
    with pytest.raises(InvalidArgument):
        extraction.wait()
    assert len(ended) == 1 and isinstance(ended[0], InvalidArgument)
    assert not extraction.aborted


def test_images_on_another_filesystem_are_copied_by_sendfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """copy_file_range refuses two filesystems (EXDEV, Linux >= 5.19): the copy goes on with
    sendfile and the files are the same."""
    import errno

    calls: list[int] = []

    def cross_device(src: int, dst: int, count: int, offset: int) -> int:
        calls.append(count)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", cross_device)
    archive = write_tar(tmp_path / "a.tar")
    out = extract_archive(check_archive(archive), tmp_path / "work", "ck-")
    assert (out / "checkpoint/pages-1.img").read_bytes() == b"p" * 5000
    assert (out / "spec.dump").read_bytes() == b'{"process":{}}'
    assert calls  # it was tried first
