"""Command values -> the shim's protobuf options, wrapped the way containerd forwards them.

Strategy: one function per message. The checkpoint options are mapped by the option table
(:data:`shim.checkpoint.options.OPTIONS`: each flag's request field and kind); the table test
in ``tests/test_ctl.py`` spells the mapping out. ``status_fd`` and ``track_mem`` are not set
(a file descriptor of this process means nothing to the shim; the shim implies ``track_mem``
from ``pre_dump``/``parent_path``).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.any_pb2 import Any as AnyMessage

from shim.api.pyrunc.v1 import checkpoint_pb2
from shim.checkpoint.options import OPTIONS, Kind, Option
from shim.typeurl import pack

from ._args import CheckpointCommand, RestoreCommand

__all__ = [
    "CHECKPOINT_OPTIONS_TYPE",
    "RESTORE_OPTIONS_TYPE",
    "checkpoint_any",
    "checkpoint_options",
    "restore_any",
    "restore_options",
]

CHECKPOINT_OPTIONS_TYPE = "pyrunc.v1.CheckpointOptions"
RESTORE_OPTIONS_TYPE = "pyrunc.v1.RestoreOptions"


def checkpoint_options(cmd: CheckpointCommand) -> checkpoint_pb2.CheckpointOptions:
    """The ``pyrunc.v1.CheckpointOptions`` for ``pyrunc checkpoint``."""
    fields = {o.request: _field(o, getattr(cmd, o.dest)) for o in OPTIONS if o.flag}
    return checkpoint_pb2.CheckpointOptions(**fields)


def _field(o: Option, value: Any) -> Any:
    """A command's value as the request field carries it."""
    if o.kind is Kind.NAMESPACES:
        return [ns.value for ns in value]
    if o.kind in (Kind.CGROUP_MODE, Kind.NETWORK_LOCK):
        return value.value if value else ""
    return value


def restore_options(cmd: RestoreCommand) -> checkpoint_pb2.RestoreOptions:
    """The ``pyrunc.v1.RestoreOptions`` for ``pyrunc restore``."""
    return checkpoint_pb2.RestoreOptions(
        image_path=cmd.image_path,
        work_path=cmd.work_path,
        tcp_close=cmd.tcp_close,
        lazy_pages=cmd.lazy_pages,
        page_server=cmd.page_server,
    )


def checkpoint_any(cmd: CheckpointCommand) -> AnyMessage:
    """:func:`checkpoint_options` in an Any of type ``pyrunc.v1.CheckpointOptions``."""
    return pack(checkpoint_options(cmd))


def restore_any(cmd: RestoreCommand, runtime_options: AnyMessage | None = None) -> AnyMessage:
    """:func:`restore_options` in an Any of type ``pyrunc.v1.RestoreOptions``, carrying the
    container record's runtime options (if any) so the shim runs the same runtime binary."""
    options = restore_options(cmd)
    if runtime_options is not None:
        options.runtime_options.CopyFrom(runtime_options)
    return pack(options)
