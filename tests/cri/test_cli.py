"""``pyrunc cri serve``: parsing into CriServeCommand (the run itself is integration-tested)."""

from __future__ import annotations

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
