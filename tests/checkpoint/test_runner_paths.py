"""shim.checkpoint.runner: image and work paths checked, checkpoint files made private."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shim.checkpoint.runner import check_path, make_private
from shim.errors import InvalidArgument
from shim.runtime._runc import CRIU_TIMEOUT_ENV, criu_timeout


def test_a_plain_new_path_is_accepted(tmp_path: Path) -> None:
    check_path("image path", str(tmp_path / "new" / "images"))


@pytest.mark.parametrize("path", ["", "rel/images", "/var/tmp/../etc/images", "/a/./../b"])
def test_relative_and_dotdot_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidArgument, match=r"absolute path without '\.\.'"):
        check_path("image path", path)


def test_a_path_through_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    for path in (tmp_path / "link", tmp_path / "link" / "images"):
        with pytest.raises(InvalidArgument, match=f"symlink {tmp_path / 'link'}"):
            check_path("work path", str(path))


def test_make_private(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True, mode=0o755)
    os.chmod(root, 0o755)
    (root / "pages-1.img").write_bytes(b"x")
    os.chmod(root / "pages-1.img", 0o644)
    (root / "sub" / "log").write_text("x")
    target = tmp_path / "outside"
    target.write_text("x")
    os.chmod(target, 0o644)
    (root / "link").symlink_to(target)
    make_private(str(root))
    assert root.stat().st_mode & 0o777 == 0o700
    assert (root / "sub").stat().st_mode & 0o777 == 0o700
    assert (root / "pages-1.img").stat().st_mode & 0o777 == 0o600
    assert (root / "sub" / "log").stat().st_mode & 0o777 == 0o600
    assert target.stat().st_mode & 0o777 == 0o644  # a symlink is never followed


@pytest.mark.parametrize(("value", "expected"), [(None, 600.0), ("15", 15.0), ("0", 600.0),
                                                 ("-3", 600.0), ("soon", 600.0)])
def test_criu_timeout(monkeypatch: pytest.MonkeyPatch, value: str | None,
                      expected: float) -> None:
    if value is None:
        monkeypatch.delenv(CRIU_TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(CRIU_TIMEOUT_ENV, value)
    assert criu_timeout() == expected
