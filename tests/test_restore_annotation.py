"""The CRI endpoint's restore annotation (io.pyrunc.restore.checkpoint) is trusted only for
a real, root-owned (the shim's user), mode 0700 directory: whoever may set a container's
allow-listed annotations could otherwise hand CRIU images someone else wrote."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from shim.api.containerd.task.v2 import shim_pb2 as api
from shim.bundle import RESTORE_ANNOTATION
from shim.checkpoint.plan import UNPACKING, RestoreSource
from shim.errors import InvalidArgument
from shim.service import _restore_source


def _annotated(bundle: Path, images: Path | str) -> api.CreateTaskRequest:
    (bundle / "config.json").write_text(
        json.dumps({"annotations": {RESTORE_ANNOTATION: str(images)}}))
    return api.CreateTaskRequest(id="c1", bundle=str(bundle))


def test_annotated_checkpoint_of_root_mode_0700_is_used(tmp_path: Path) -> None:
    images = tmp_path / "ckpt" / "checkpoint"
    images.mkdir(parents=True)
    images.chmod(0o700)
    assert _restore_source(_annotated(tmp_path, images)) == RestoreSource(
        str(images), unpacking=str(tmp_path / "ckpt" / UNPACKING))


def _make_symlink(tmp: Path) -> Path:
    real = tmp / "real"
    real.mkdir(mode=0o700)
    (tmp / "link").symlink_to(real)
    return tmp / "link"


def _make_below_symlink(tmp: Path) -> Path:
    (tmp / "real" / "checkpoint").mkdir(parents=True, mode=0o700)
    (tmp / "real" / "checkpoint").chmod(0o700)
    (tmp / "via").symlink_to(tmp / "real")
    return tmp / "via" / "checkpoint"


def _make_mode(mode: int) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / "d").mkdir()
        (tmp / "d").chmod(mode)
        return tmp / "d"

    return make


def _make_foreign(tmp: Path) -> Path:
    (tmp / "d").mkdir(mode=0o700)
    (tmp / "d").chmod(0o700)
    os.chown(tmp / "d", 65534, 65534)
    return tmp / "d"


def _make_file(tmp: Path) -> Path:
    (tmp / "f").write_text("")
    return tmp / "f"


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (_make_symlink, "is a symlink"),
        (_make_below_symlink, "lies below a symlink"),
        (_make_mode(0o755), "has mode 0755, not 0700"),
        (_make_mode(0o770), "has mode 0770, not 0700"),
        (_make_file, "is not a directory"),
        (lambda tmp: tmp / "missing", "No such file"),
        pytest.param(_make_foreign, "owned by uid 65534", marks=pytest.mark.skipif(
            os.geteuid() != 0, reason="chown to another user needs root")),
    ],
    ids=["symlink", "below-symlink", "0755", "0770", "file", "missing", "other-owner"],
)
def test_annotated_checkpoint_not_private_is_refused(
    tmp_path: Path, make: Callable[[Path], Path], why: str
) -> None:
    """Whoever may set allow-listed annotations could name any directory in
    io.pyrunc.restore.checkpoint: only a real root-owned 0700 one (what the CRI endpoint
    makes) is restored from; the error names the path and why."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    scratch = tmp_path / "s"
    scratch.mkdir()
    images = make(scratch)
    with pytest.raises(InvalidArgument, match=re.escape(str(images)) + ".*" + re.escape(why)):
        _restore_source(_annotated(bundle, images))
