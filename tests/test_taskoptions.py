"""Task options of every type containerd sends, decoded into one TaskOptions."""

from __future__ import annotations

import pytest
from google.protobuf.any_pb2 import Any

from shim.api.containerd.linux.runctypes import runc_pb2
from shim.api.containerd.runc.options import oci_pb2
from shim.api.pyrunc.v1 import checkpoint_pb2
from shim.errors import InvalidArgument
from shim.taskoptions import TaskOptions, decode, decode_bytes
from shim.typeurl import pack

RUNC = oci_pb2.Options(
    no_pivot_root=True,
    no_new_keyring=True,
    shim_cgroup="/s",
    io_uid=1,
    io_gid=2,
    binary_name="crun",
    root="/run/crun",
    criu_path="/usr/sbin/criu",
    systemd_cgroup=True,
    criu_image_path="/img",
    criu_work_path="/work",
)
RUNC_DECODED = TaskOptions(
    binary_name="crun",
    root="/run/crun",
    criu_path="/usr/sbin/criu",
    systemd_cgroup=True,
    no_pivot_root=True,
    no_new_keyring=True,
    shim_cgroup="/s",
    io_uid=1,
    io_gid=2,
    criu_image_path="/img",
    criu_work_path="/work",
)
LINUX = runc_pb2.CreateOptions(
    no_pivot_root=True,
    open_tcp=True,
    external_unix_sockets=True,
    terminal=True,
    file_locks=True,
    empty_namespaces=["network"],
    cgroups_mode="soft",
    no_new_keyring=True,
    shim_cgroup="/containerd/shim",
    io_uid=3,
    io_gid=4,
    criu_work_path="/w",
    criu_image_path="/i",
)
LINUX_DECODED = TaskOptions(
    no_pivot_root=True,
    no_new_keyring=True,
    shim_cgroup="/containerd/shim",
    io_uid=3,
    io_gid=4,
    criu_image_path="/i",
    criu_work_path="/w",
)


def _in_restore_options(inner: Any) -> Any:
    restore = checkpoint_pb2.RestoreOptions(image_path="/r")
    restore.runtime_options.CopyFrom(inner)
    return pack(restore)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (Any(), TaskOptions()),
        (pack(RUNC), RUNC_DECODED),
        (pack(LINUX), LINUX_DECODED),
        (_in_restore_options(pack(RUNC)), RUNC_DECODED),
        (_in_restore_options(pack(LINUX)), LINUX_DECODED),
        (_in_restore_options(Any()), TaskOptions()),
        (pack(checkpoint_pb2.CheckpointOptions(exit=True)), TaskOptions()),  # not task options
    ],
)
def test_decode(given: Any, expected: TaskOptions) -> None:
    assert decode(given) == expected


def test_every_field_of_both_types_is_read() -> None:
    """A field added to either message must be decided on: each one set is either in the
    decoded value or one of CreateOptions' checkpoint flags, which no reference reads at
    Create."""
    unused = {"open_tcp", "external_unix_sockets", "terminal", "file_locks",
              "empty_namespaces", "cgroups_mode"}
    decoded = set(TaskOptions.__slots__)
    assert {f.name for f in oci_pb2.Options.DESCRIPTOR.fields} == decoded
    assert {f.name for f in runc_pb2.CreateOptions.DESCRIPTOR.fields} - unused == (
        decoded - {"binary_name", "root", "criu_path", "systemd_cgroup"}
    )


def test_decode_bytes_as_on_start_stdin() -> None:
    assert decode_bytes(pack(LINUX).SerializeToString()).shim_cgroup == "/containerd/shim"
    with pytest.raises(InvalidArgument, match="cannot decode"):
        decode_bytes(b"\xff\xff")
    with pytest.raises(InvalidArgument, match="cannot decode"):
        decode_bytes(Any(type_url=LINUX.DESCRIPTOR.full_name, value=b"\x0a").SerializeToString())
