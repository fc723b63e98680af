"""shim.cri._archive: a complete archive at location, or nothing."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from shim.cri._archive import check_location, write_archive
from shim.cri._errors import DeadlineExceeded, InvalidArgument


def _stage(tmp: Path) -> list[tuple[str, Path]]:
    images = tmp / "stage" / "checkpoint"
    images.mkdir(parents=True)
    (images / "inventory.img").write_bytes(b"inv")
    (images / "pages-1.img").write_bytes(b"p" * 5000)
    (tmp / "stage" / "spec.dump").write_text("{}")
    os.chmod(tmp / "stage" / "spec.dump", 0o644)
    return [("spec.dump", tmp / "stage" / "spec.dump"), ("checkpoint", images)]


def test_archive_names_modes_and_order(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    location = out / "checkpoint-p_ns-c-2026-11-30T04:18:56Z.tar"
    write_archive(location, _stage(tmp_path))
    assert stat.S_IMODE(location.stat().st_mode) == 0o600
    assert os.listdir(out) == [location.name]
    with tarfile.open(location) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["checkpoint", "checkpoint/inventory.img",
                                         "checkpoint/pages-1.img", "spec.dump"]
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    assert members[0].isdir() and members[3].mode == 0o644


def test_deadline_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    location = out / "c.tar"
    calls = iter([False, False, True])
    with pytest.raises(DeadlineExceeded):
        write_archive(location, _stage(tmp_path), lambda: next(calls, True))
    assert os.listdir(out) == []


def test_failure_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FileNotFoundError):
        write_archive(out / "c.tar", [("missing", tmp_path / "nope")])
    assert os.listdir(out) == []


@pytest.mark.parametrize("location", ["", "relative.tar", "/nonexistent-dir-xyz/c.tar"])
def test_bad_location(location: str) -> None:
    with pytest.raises(InvalidArgument):
        check_location(location)


def test_location_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="directory"):
        check_location(str(tmp_path))
