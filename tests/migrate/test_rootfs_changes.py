"""The rootfs's second pass: what changed after the first diff, sent again while frozen.

The source takes the diff of a directory, the directory changes (a file written, one removed,
one made, a directory moved in with old children, a symlink replaced), the source works out
what changed (:func:`shim.migrate._source._rootfs_changes`), the destination applies it
(:func:`shim.migrate._agent._keep_only`, then the tar of the changed paths): the two trees must
then be the same.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from shim.migrate._agent import _keep_only
from shim.migrate._errors import MigrateError
from shim.migrate._source import _inodes, _rootfs_changes
from shim.migrate._transfer import TarSink, tar_chunks


def tree(root: Path) -> dict[str, tuple[str, bytes]]:
    """Every entry under ``root``: its kind and content (file data, link target)."""
    out: dict[str, tuple[str, bytes]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p).encode())
            elif p.is_dir():
                out[rel] = ("dir", b"")
            else:
                out[rel] = ("file", p.read_bytes())
    return out


def unpack(chunks: object, directory: Path) -> None:
    sink = TarSink(str(directory))
    for data in chunks:  # type: ignore[attr-defined]
        sink.write(data)
    sink.close()


def first_diff(src: Path, dst: Path) -> tuple[dict[str, int], float]:
    time.sleep(0.25)  # older than the ctime margin
    since = time.time()
    before = _inodes(str(src))
    dst.mkdir()
    unpack(tar_chunks(str(src)), dst)
    return before, since


@pytest.fixture
def src(tmp_path: Path) -> Path:
    s = tmp_path / "src"
    (s / "etc" / "deep").mkdir(parents=True)
    (s / "etc" / "kept").write_text("kept\n")
    (s / "etc" / "deep" / "old").write_text("old\n")
    (s / "log").write_text("1\n")
    (s / "removed").write_text("bye\n")
    (s / "link").symlink_to("etc/kept")
    return s


def test_nothing_changed_is_none(src: Path, tmp_path: Path) -> None:
    before, since = first_diff(src, tmp_path / "dst")
    assert _rootfs_changes(str(src), before, since) is None


def test_after_the_second_pass_both_trees_are_the_same(src: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "child").write_text("an old child\n")  # older than the diff
    dst = tmp_path / "dst"
    before, since = first_diff(src, dst)
    with open(src / "log", "a") as f:
        f.write("2\n")
    (src / "removed").unlink()
    (src / "etc" / "deep" / "new").write_text("new\n")
    os.rename(outside, src / "moved-in")  # a directory that is new here, children included
    (src / "link").unlink()
    (src / "link").symlink_to("log")
    (src / "tmpdir").mkdir()  # made and removed after the diff: nothing to send
    (src / "tmpdir").rmdir()

    changes = _rootfs_changes(str(src), before, since)
    assert changes is not None
    kept, paths = changes
    assert "etc/kept" not in paths and "etc/deep/old" not in paths  # only what changed
    assert "moved-in/sub/child" in paths
    assert sorted(kept["."]) == sorted(os.listdir(src))
    _keep_only(str(dst), kept)
    unpack(tar_chunks(str(src), paths), dst)
    assert tree(dst) == tree(src)


def test_keep_refuses_names_outside_the_tree(tmp_path: Path) -> None:
    top = tmp_path / "top"
    top.mkdir()
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "file").write_text("x")
    for bad in ("../victim", "/etc"):
        with pytest.raises(MigrateError):
            _keep_only(str(top), {bad: []})
    (top / "escape").symlink_to(tmp_path / "victim")
    with pytest.raises(MigrateError):
        _keep_only(str(top), {"escape": []})
    assert (tmp_path / "victim" / "file").exists()


def test_tar_of_paths_holds_those_entries_only(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "only"
    out.mkdir()
    unpack(tar_chunks(str(src), ["etc", "log"]), out)
    assert sorted(tree(out)) == ["etc", "log"]  # etc without what is in it
