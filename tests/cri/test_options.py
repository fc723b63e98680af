"""shim.cri._options: pod annotations -> checkpoint options, per runtime and containerd."""

from __future__ import annotations

import pytest

from shim.api.containerd.runc.options import oci_pb2
from shim.api.pyrunc.v1 import checkpoint_pb2
from shim.cri._errors import FailedPrecondition, InvalidArgument
from shim.cri._options import checkpoint_options
from shim.typeurl import unpack

P = "io.pyrunc.checkpoint."
PATHS = {"image_path": "/w/s/checkpoint", "work_path": "/w/s/work"}


def test_pyrunc_on_containerd_1_gets_our_options() -> None:
    ann = {P + "tcp-established": "true", P + "file-locks": "false", P + "ghost-limit": "4096",
           P + "empty-ns": "network", P + "network-lock": "skip", "other": "x"}
    any_ = checkpoint_options("io.containerd.pyrunc.v2", ann, containerd_major=1, **PATHS)
    msg = unpack(any_, checkpoint_pb2.CheckpointOptions)
    assert msg is not None
    assert msg.open_tcp and not msg.file_locks and not msg.exit
    assert msg.ghost_limit == 4096 and list(msg.empty_namespaces) == ["network"]
    assert msg.network_lock == "skip"
    assert (msg.image_path, msg.work_path) == ("/w/s/checkpoint", "/w/s/work")


@pytest.mark.parametrize(("runtime", "major"), [("io.containerd.pyrunc.v2", 2),
                                                ("io.containerd.runc.v2", 1),
                                                ("io.containerd.runc.v2", 2)])
def test_runc_options_where_containerd_reads_them(runtime: str, major: int) -> None:
    any_ = checkpoint_options(runtime, {P + "tcp-established": "true"}, containerd_major=major,
                              **PATHS)
    assert any_.type_url == "containerd.runc.v1.CheckpointOptions"
    msg = unpack(any_, oci_pb2.CheckpointOptions)
    assert msg is not None and msg.open_tcp and not msg.exit
    assert msg.image_path == "/w/s/checkpoint" and msg.work_path == "/w/s/work"


def test_pyrunc_only_flag_on_containerd_2_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match="tcp_close"):
        checkpoint_options("io.containerd.pyrunc.v2", {P + "tcp-close": "true"},
                           containerd_major=2, **PATHS)


@pytest.mark.parametrize("ann", [{P + "no-such": "true"}, {P + "tcp-established": "yes"},
                                 {P + "ghost-limit": "1M"}, {P + "image-path": "/x"},
                                 {P + "leave-running": "false"}])
def test_bad_annotations_are_invalid_argument(ann: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument):
        checkpoint_options("io.containerd.pyrunc.v2", ann, containerd_major=1, **PATHS)


def test_unknown_runtime_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match=r"io\.containerd\.kata\.v2"):
        checkpoint_options("io.containerd.kata.v2", {}, containerd_major=2, **PATHS)
