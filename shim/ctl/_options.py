"""Command values -> the shim's protobuf options, wrapped the way containerd forwards them.

Strategy: one function per message, one line per field, so the table test in
``tests/test_ctl.py`` reads like the mapping itself. The Any carries the bare full name as
its type URL (``pyrunc.v1.CheckpointOptions``, no ``type.googleapis.com/`` prefix), as
containerd's typeurl does (:func:`shim.typeurl.pack`).

Flag -> ``pyrunc.v1.CheckpointOptions`` field:

=====================  ======================  =====================  ==================
--exit                 exit                    --parent-path          parent_path
--tcp-established      open_tcp                --pre-dump             pre_dump
--ext-unix-sk          external_unix_sockets   --auto-dedup           auto_dedup
--shell-job            terminal                --lazy-pages           lazy_pages
--file-locks           file_locks              --page-server          page_server
--empty-ns (repeated)  empty_namespaces        --tcp-close            tcp_close
--manage-cgroups-mode  cgroups_mode            --tcp-skip-in-flight   tcp_skip_in_flight
--image-path           image_path              --link-remap           link_remap
--work-path            work_path               --ghost-limit          ghost_limit
                                               --network-lock         network_lock
=====================  ======================  =====================  ==================

``status_fd`` and ``track_mem`` are not set (a file descriptor of this process means
nothing to the shim; the shim implies ``track_mem`` from ``pre_dump``/``parent_path``).
"""

from __future__ import annotations

from google.protobuf.any_pb2 import Any

from shim.api.pyrunc.v1 import checkpoint_pb2
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
    return checkpoint_pb2.CheckpointOptions(
        exit=cmd.exit,
        open_tcp=cmd.tcp_established,
        external_unix_sockets=cmd.ext_unix_sk,
        terminal=cmd.shell_job,
        file_locks=cmd.file_locks,
        empty_namespaces=[ns.value for ns in cmd.empty_ns],
        cgroups_mode=cmd.manage_cgroups_mode.value if cmd.manage_cgroups_mode else "",
        image_path=cmd.image_path,
        work_path=cmd.work_path,
        parent_path=cmd.parent_path,
        pre_dump=cmd.pre_dump,
        auto_dedup=cmd.auto_dedup,
        lazy_pages=cmd.lazy_pages,
        page_server=cmd.page_server,
        tcp_close=cmd.tcp_close,
        tcp_skip_in_flight=cmd.tcp_skip_in_flight,
        link_remap=cmd.link_remap,
        ghost_limit=cmd.ghost_limit,
        network_lock=cmd.network_lock.value if cmd.network_lock else "",
    )


def restore_options(cmd: RestoreCommand) -> checkpoint_pb2.RestoreOptions:
    """The ``pyrunc.v1.RestoreOptions`` for ``pyrunc restore``."""
    return checkpoint_pb2.RestoreOptions(
        image_path=cmd.image_path,
        work_path=cmd.work_path,
        tcp_close=cmd.tcp_close,
        lazy_pages=cmd.lazy_pages,
        page_server=cmd.page_server,
    )


def checkpoint_any(cmd: CheckpointCommand) -> Any:
    """:func:`checkpoint_options` in an Any of type ``pyrunc.v1.CheckpointOptions``."""
    return pack(checkpoint_options(cmd))


def restore_any(cmd: RestoreCommand, runtime_options: Any = None) -> Any:
    """:func:`restore_options` in an Any of type ``pyrunc.v1.RestoreOptions``, carrying the
    container record's runtime options (if any) so the shim runs the same runtime binary."""
    options = restore_options(cmd)
    if runtime_options is not None:
        options.runtime_options.CopyFrom(runtime_options)
    return pack(options)
