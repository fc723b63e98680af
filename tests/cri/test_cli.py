"""``pyrunc cri serve``: parsing into CriServeCommand (the run itself is integration-tested)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shim.ctl._args import parse_args
from shim.ctl._cri import DEFAULT_CRI_CONTAINERD, DEFAULT_CRI_LISTEN, CriServeCommand


def test_defaults() -> None:
    cmd = parse_args(["cri", "serve"], environ={}, cwd="/")
    assert cmd == CriServeCommand()
    assert cmd.listen == DEFAULT_CRI_LISTEN == "unix:///run/containerd-shim-pyrunc/cri.sock"
    assert cmd.containerd == DEFAULT_CRI_CONTAINERD == "unix:///run/containerd/containerd.sock"
    assert cmd.namespace == "k8s.io"


def test_paths_become_unix_uris() -> None:
    cmd = parse_args(["cri", "serve", "--listen", "/run/x/cri.sock", "--containerd",
                      "unix:///run/c.sock", "--criu", "/usr/local/sbin/criu", "--work-dir",
                      "/var/tmp/w", "--cri-namespace", "k8s.io", "-v"], environ={}, cwd="/")
    assert cmd == CriServeCommand(listen="unix:///run/x/cri.sock",
                                  containerd="unix:///run/c.sock", work_dir="/var/tmp/w",
                                  criu="/usr/local/sbin/criu", verbose=True)


@pytest.mark.parametrize("argv", [["cri"], ["cri", "serve", "--listen", "tcp://0:1"],
                                  ["cri", "serve", "--containerd", "relative.sock"]])
def test_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv, environ={}, cwd="/")
    assert info.value.code == 2


# --- pyrunc checkpoint-image build ---------------------------------------------------------


def test_checkpoint_image_build_parsing() -> None:
    from shim.ctl._cri import CheckpointImageCommand

    cmd = parse_args(["checkpoint-image", "build", "ck.tar", "localhost/ck:1"], environ={},
                     cwd="/w")
    assert cmd == CheckpointImageCommand(archive="/w/ck.tar", ref="localhost/ck:1")
    cmd = parse_args(["checkpoint-image", "build", "/a/ck.tar", "x:1", "-o", "out/oci.tar",
                      "--containerd", "/run/c.sock", "--cri-namespace", "ns", "--ctr", "/c"],
                     environ={}, cwd="/w")
    assert cmd == CheckpointImageCommand(archive="/a/ck.tar", ref="x:1",
                                         output="/w/out/oci.tar",
                                         address="unix:///run/c.sock", namespace="ns",
                                         ctr="/c")


@pytest.mark.parametrize("argv", [
    ["checkpoint-image"], ["checkpoint-image", "build", "a.tar"],
    ["checkpoint-image", "build", "a.tar", "r:1", "--import", "-o", "x.tar"],
])
def test_checkpoint_image_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv, environ={}, cwd="/")
    assert info.value.code == 2


def test_checkpoint_image_build_output(tmp_path: Path) -> None:
    """``--output`` writes the layout and prints REF@DIGEST; a bad archive: exit 1, one line."""
    import io
    import json
    import tarfile

    from shim.ctl._cri import CheckpointImageCommand, run_checkpoint_image

    base = tmp_path
    archive = base / "ck.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in [("config.dump", b'{"rootfsImageName": "b:1"}'),
                           ("spec.dump", json.dumps({"process": {}}).encode()),
                           ("checkpoint/inventory.img", b"i")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert run_checkpoint_image(CheckpointImageCommand(
        archive=str(archive), ref="localhost/ck:1", output=str(base / "oci.tar"))) == 0
    assert (base / "oci.tar").is_file()
    assert run_checkpoint_image(CheckpointImageCommand(
        archive=str(base / "oci.tar"), ref="localhost/ck:2", output=str(base / "o2.tar"))) == 1
    assert not (base / "o2.tar").exists()
