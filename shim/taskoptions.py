"""A Create's task options, whatever message type containerd sent them in, as one typed value.

Strategy: containerd's client fills ``containerd.runc.v1.Options`` for runtimes whose name
starts with ``io.containerd.runc`` and the older ``containerd.linux.runc.CreateOptions`` for
every other name (``WithNoNewKeyring``, ``WithShimCgroup``, ``WithUIDOwner``,
``WithRestoreImagePath``... in containerd 1.6's ``task_opts*.go``), so a shim under its own
runtime name gets the older type. The project's ``pyrunc.v1.RestoreOptions`` carries either in
its ``runtime_options``. :func:`decode` reads all three into :class:`TaskOptions`, the one
value the ``start`` action (shim cgroup) and Create use. Field by field it does what the
reference does with them: containerd's runc shim (``runtime/v2/runc/container.go``
``newInit``, ``manager_linux.go``) for ``Options`` and the linux runtime's shim
(``runtime/v1/shim/service.go`` ``newInit``, ``runtime/v1/linux/runtime.go``) for
``CreateOptions``. ``CreateOptions``' checkpoint flags (``open_tcp``, ``external_unix_sockets``,
``terminal``, ``file_locks``, ``empty_namespaces``, ``cgroups_mode``) are read by neither
reference at Create (a restore uses the flags its dump stored); they are decoded and dropped.
Any other type is ignored, as both references do with what they do not know.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from google.protobuf.any_pb2 import Any
from google.protobuf.message import DecodeError

from shim.api.containerd.linux.runctypes import runc_pb2
from shim.api.containerd.runc.options import oci_pb2
from shim.errors import InvalidArgument
from shim.typeurl import type_name, unpack

__all__ = ["RESTORE_OPTIONS", "TaskOptions", "decode", "decode_bytes"]

log = logging.getLogger(__name__)

RESTORE_OPTIONS = "pyrunc.v1.RestoreOptions"


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """What a Create's options ask of the shim; the zero value is "nothing asked".

    Attributes:
        binary_name: the OCI runtime binary ("" = runc).
        root: the runtime's state root ("" = its default).
        criu_path: the CRIU binary the runtime is told to use ("" = its default).
        systemd_cgroup: the runtime manages cgroups through systemd.
        no_pivot_root: ``runc create/restore --no-pivot``.
        no_new_keyring: ``runc create --no-new-keyring``.
        shim_cgroup: a cgroup (path below each controller) the shim moves into at start.
        io_uid: owner of the pipes given to the container's processes.
        io_gid: group of those pipes.
        criu_image_path: restore from these CRIU images ("" = no restore asked here).
        criu_work_path: CRIU's work directory for a restore ("" = the shim's default).
    """

    binary_name: str = ""
    root: str = ""
    criu_path: str = ""
    systemd_cgroup: bool = False
    no_pivot_root: bool = False
    no_new_keyring: bool = False
    shim_cgroup: str = ""
    io_uid: int = 0
    io_gid: int = 0
    criu_image_path: str = ""
    criu_work_path: str = ""


def decode(options: Any) -> TaskOptions:
    """The task options in ``options`` (an empty Any gives the zero value).

    Raises:
        InvalidArgument: a known type whose bytes do not decode.
    """
    if type_name(options) == RESTORE_OPTIONS:
        from shim.api.pyrunc.v1 import checkpoint_pb2  # restores only

        restore = unpack(options, checkpoint_pb2.RestoreOptions)
        assert restore is not None
        options = restore.runtime_options
    runc = unpack(options, oci_pb2.Options)
    if runc is not None:
        return TaskOptions(
            binary_name=runc.binary_name,
            root=runc.root,
            criu_path=runc.criu_path,
            systemd_cgroup=runc.systemd_cgroup,
            no_pivot_root=runc.no_pivot_root,
            no_new_keyring=runc.no_new_keyring,
            shim_cgroup=runc.shim_cgroup,
            io_uid=runc.io_uid,
            io_gid=runc.io_gid,
            criu_image_path=runc.criu_image_path,
            criu_work_path=runc.criu_work_path,
        )
    linux = unpack(options, runc_pb2.CreateOptions)
    if linux is not None:
        return TaskOptions(
            no_pivot_root=linux.no_pivot_root,
            no_new_keyring=linux.no_new_keyring,
            shim_cgroup=linux.shim_cgroup,
            io_uid=linux.io_uid,
            io_gid=linux.io_gid,
            criu_image_path=linux.criu_image_path,
            criu_work_path=linux.criu_work_path,
        )
    if options.type_url:
        log.info("ignoring runtime options of type %s", options.type_url)
    return TaskOptions()


def decode_bytes(data: bytes) -> TaskOptions:
    """:func:`decode` of a serialized Any, as containerd writes the options to ``start``'s
    stdin.

    Raises:
        InvalidArgument: the bytes are not an Any, or a known type does not decode.
    """
    any_ = Any()
    try:
        any_.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidArgument(f"cannot decode the runtime options: {exc}") from exc
    return decode(any_)
