"""The ``pyrunc`` command line: argparse in, frozen command values out.

Strategy: :func:`parse_args` is pure apart from argparse's own printing: it takes the argv,
the environment and the working directory, refuses malformed input the way argparse does
(usage on stderr, ``SystemExit(2)``), and returns one of :class:`CheckpointCommand`,
:class:`RestoreCommand` or :class:`TasksCommand`. Everything the shim will read as a path
is made absolute here, against ``cwd``, because the shim runs elsewhere (its cwd is the
bundle) and refuses relative paths. Option *semantics* (which combinations CRIU allows) are
the shim's to judge; this module checks form only (choices, HOST:PORT, sizes, URIs), plus
the one pairing the restore synopsis fixes (``--lazy-pages`` with ``--page-server``).
"""

from __future__ import annotations

import argparse
import enum
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from shim.checkpoint.options import OPTIONS, CgroupMode, Kind, NetworkLock, Option

from ._cri import (
    CheckpointImageCommand,
    CriServeCommand,
    add_checkpoint_image_parser,
    add_cri_parser,
    checkpoint_image_command,
    cri_command,
)
from ._migrate import AgentCommand, MigrateCommand, add_migrate_parsers, migrate_command

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_FIFO_DIR",
    "DEFAULT_NAMESPACE",
    "CgroupMode",
    "CheckpointCommand",
    "Command",
    "Globals",
    "LinuxNamespace",
    "NetworkLock",
    "RestoreCommand",
    "TasksCommand",
    "build_parser",
    "parse_args",
    "parse_host_port",
    "parse_size",
]

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "default"
DEFAULT_FIFO_DIR = "/run/containerd/fifo"
ENV_ADDRESS = "CONTAINERD_ADDRESS"
ENV_NAMESPACE = "CONTAINERD_NAMESPACE"
_UINT64_MAX = (1 << 64) - 1


class LinuxNamespace(enum.Enum):
    """Namespace names ``--empty-ns`` accepts (the shim decides which it supports)."""

    CGROUP = "cgroup"
    IPC = "ipc"
    MOUNT = "mount"
    NETWORK = "network"
    PID = "pid"
    USER = "user"
    UTS = "uts"


@dataclass(frozen=True, slots=True)
class Globals:
    """Where containerd is and which namespace to use."""

    address: str = DEFAULT_ADDRESS
    namespace: str = DEFAULT_NAMESPACE


@dataclass(frozen=True, slots=True)
class CheckpointCommand:
    """``pyrunc checkpoint``: fields named after the flags of
    :data:`shim.checkpoint.options.OPTIONS` (made from that table; a test holds the two
    together); paths are absolute or ""."""

    globals: Globals
    container_id: str
    image_path: str = ""
    work_path: str = ""
    exit: bool = False
    tcp_established: bool = False
    ext_unix_sk: bool = False
    shell_job: bool = False
    file_locks: bool = False
    empty_ns: tuple[LinuxNamespace, ...] = ()
    manage_cgroups_mode: CgroupMode | None = None
    auto_dedup: bool = False
    pre_dump: bool = False
    parent_path: str = ""
    lazy_pages: bool = False
    page_server: str = ""
    tcp_close: bool = False
    tcp_skip_in_flight: bool = False
    link_remap: bool = False
    ghost_limit: int = 0
    network_lock: NetworkLock | None = None
    quiet: bool = False


@dataclass(frozen=True, slots=True)
class RestoreCommand:
    """``pyrunc restore``. ``stdout``/``stderr`` are what the task's Create gets ("" = none);
    with ``tty`` the task gets a terminal and stdin/stdout FIFOs made under ``fifo_dir``."""

    globals: Globals
    container_id: str
    image_path: str
    work_path: str = ""
    tcp_close: bool = False
    lazy_pages: bool = False
    page_server: str = ""
    stdout: str = ""
    stderr: str = ""
    detach: bool = False
    tty: bool = False
    fifo_dir: str = ""


@dataclass(frozen=True, slots=True)
class TasksCommand:
    """``pyrunc tasks``: list the namespace's tasks (ids only with ``quiet``)."""

    globals: Globals
    quiet: bool = False


Command = (CheckpointCommand | RestoreCommand | TasksCommand | CriServeCommand
           | CheckpointImageCommand
           | MigrateCommand | AgentCommand)


# --- argument types (argparse calls them; ValueError/ArgumentTypeError = usage error) ------


def _nonempty(value: str) -> str:
    if not value:
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def _path(value: str) -> str:
    if not value:
        raise argparse.ArgumentTypeError("path must not be empty")
    if "\0" in value:
        raise argparse.ArgumentTypeError("path must not contain NUL")
    return value


_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)$")


def parse_host_port(value: str) -> str:
    """Check ``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) and return it unchanged.

    Raises:
        argparse.ArgumentTypeError: no port, a port outside 1..65535, or a malformed host.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not _HOST.match(host):
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: port must be a number in 1..65535")
    return value


_SIZE = re.compile(r"^(\d+)\s*(?:([KMGT])(?:i?B)?|B)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: str) -> int:
    """A byte count: a number, optionally with a binary suffix (``512K``, ``1M``, ``2GiB``).

    Raises:
        argparse.ArgumentTypeError: not of that form, or over 2**64 - 1.
    """
    m = _SIZE.match(value.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not a size in bytes (e.g. 1048576, 1M)")
    size = int(m[1]) * _UNITS[(m[2] or "").upper()]
    if size > _UINT64_MAX:
        raise argparse.ArgumentTypeError(f"{value!r} is too large")
    return size


def _log_uri(value: str) -> str:
    parts = urlsplit(value)
    if not parts.scheme or "://" not in value:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a URI (e.g. file:///var/log/c.log or binary:///usr/bin/logger)"
        )
    if parts.scheme == "file" and (parts.netloc or not parts.path.startswith("/")):
        raise argparse.ArgumentTypeError(
            f"{value!r}: a file URI needs an absolute path and no host: file:///PATH"
        )
    return value


# --- the parser ----------------------------------------------------------------------------

_DESCRIPTION = """\
Checkpoint and restore containers run by containerd with the io.containerd.pyrunc.v2
runtime, through containerd's gRPC API (which `ctr` cannot do: it drops checkpoint options
for runtimes other than runc's and cannot send our options at all).
"""

_EPILOG = """\
Relative paths given on the command line (--image-path, --work-path, --parent-path,
--stdout, --stderr) are made absolute against the current directory before they are sent:
the shim runs in another directory and accepts absolute paths only.

environment:
  CONTAINERD_ADDRESS    default for --address
  CONTAINERD_NAMESPACE  default for --namespace
"""


def _add_globals(parser: argparse.ArgumentParser, environ: Mapping[str, str], top: bool) -> None:
    # On subcommands the defaults are SUPPRESS so a global given before the command is kept.
    address = environ.get(ENV_ADDRESS) or DEFAULT_ADDRESS
    namespace = environ.get(ENV_NAMESPACE) or DEFAULT_NAMESPACE
    parser.add_argument(
        "-a", "--address", type=_nonempty, metavar="PATH",
        default=address if top else argparse.SUPPRESS,
        help=f"containerd's gRPC socket (default: ${ENV_ADDRESS} or {DEFAULT_ADDRESS})"
        if top else argparse.SUPPRESS,
    )
    parser.add_argument(
        "-n", "--namespace", type=_nonempty, metavar="NS",
        default=namespace if top else argparse.SUPPRESS,
        help=f"containerd namespace (default: ${ENV_NAMESPACE} or {DEFAULT_NAMESPACE})"
        if top else argparse.SUPPRESS,
    )


def _checkpoint_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                       environ: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "checkpoint",
        help="checkpoint a running task (Tasks/Checkpoint with pyrunc.v1.CheckpointOptions)",
        description="Checkpoint the task of container ID with CRIU, through containerd and "
        "the pyrunc shim. By default the task keeps running (--exit stops it). containerd "
        "archives the checkpoint into its content store and returns the blobs it wrote; "
        "they are printed unless --quiet.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_globals(p, environ, top=False)
    p.add_argument("container_id", metavar="ID", type=_nonempty, help="container id")
    for o in OPTIONS:
        if o.flag:
            _add_option_flag(p, o)
    p.add_argument("-q", "--quiet", action="store_true",
                   help="do not print the checkpoint's content-store descriptors")


_FLAG_FORMS: Mapping[Kind, dict[str, object]] = {
    Kind.FLAG: {"action": "store_true"},
    Kind.EXIT: {"action": "store_true"},
    Kind.PATH: {"type": _path, "metavar": "DIR"},
    Kind.NAMESPACES: {"action": "append", "default": [], "metavar": "NS",
                      "choices": [ns.value for ns in LinuxNamespace]},
    Kind.CGROUP_MODE: {"choices": [m.value for m in CgroupMode]},
    Kind.NETWORK_LOCK: {"choices": [m.value for m in NetworkLock]},
    Kind.PAGE_SERVER: {"type": parse_host_port, "metavar": "HOST:PORT"},
    Kind.BYTES: {"type": parse_size, "metavar": "BYTES"},
}


def _add_option_flag(p: argparse.ArgumentParser, o: Option) -> None:
    """The ``pyrunc checkpoint`` flag of one checkpoint option, by its kind."""
    p.add_argument(o.flag, help=o.help, **_FLAG_FORMS[o.kind])  # type: ignore[arg-type]


def _option_value(o: Option, value: Any, here: str) -> Any:
    """A parsed flag as :class:`CheckpointCommand` holds it."""
    if o.kind is Kind.PATH:
        return _absolute(str(value) if value else None, here)
    if o.kind is Kind.NAMESPACES:
        assert isinstance(value, list)
        return tuple(LinuxNamespace(v) for v in value)
    if o.kind is Kind.CGROUP_MODE:
        return CgroupMode(value) if value else None
    if o.kind is Kind.NETWORK_LOCK:
        return NetworkLock(value) if value else None
    if o.kind is Kind.PAGE_SERVER:
        return value or ""
    if o.kind is Kind.BYTES:
        return value or 0
    return bool(value)


def _restore_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                    environ: Mapping[str, str]) -> None:
    p = sub.add_parser(
        "restore",
        help="restore a task from CRIU images on disk (Tasks/Create with "
        "pyrunc.v1.RestoreOptions, then Tasks/Start)",
        description="Create and start the task of an existing container ID from the CRIU "
        "images in --image-path (written by `pyrunc checkpoint --image-path`). The "
        "container record must exist (`ctr c create --runtime io.containerd.pyrunc.v2 "
        "IMAGE ID`, or left over after the task was deleted); its snapshot is the root "
        "filesystem. Prints the restored pid; without --detach, waits for the task to "
        "exit, deletes the task and exits with its status.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_globals(p, environ, top=False)
    p.add_argument("container_id", metavar="ID", type=_nonempty, help="container id")
    p.add_argument("--image-path", type=_path, metavar="DIR", required=True,
                   help="directory holding the CRIU images")
    p.add_argument("--work-path", type=_path, metavar="DIR",
                   help="CRIU work dir for logs (default: the shim's choice)")
    p.add_argument("--tcp-close", action="store_true",
                   help="restore established TCP connections closed")
    p.add_argument("--lazy-pages", action="store_true",
                   help="fetch memory pages on demand (needs --page-server)")
    p.add_argument("--page-server", type=parse_host_port, metavar="HOST:PORT",
                   help="the source's page server (with --lazy-pages)")
    io = p.add_mutually_exclusive_group()
    io.add_argument("--log-uri", type=_log_uri, metavar="URI",
                    help="send stdout and stderr to URI (file:///PATH, binary:///PATH?ARGS)")
    io.add_argument("--stdout", type=_path, metavar="PATH",
                    help="append the task's stdout to file PATH (sent as a file:// URI)")
    p.add_argument("--stderr", type=_path, metavar="PATH",
                   help="append the task's stderr to file PATH (sent as a file:// URI)")
    p.add_argument("-d", "--detach", action="store_true",
                   help="do not wait for the task to exit")
    p.add_argument("-t", "--tty", action="store_true",
                   help="give the restored task a terminal (for a checkpoint of a task that had "
                   "one, taken with --shell-job); its input and output are FIFOs in a new "
                   "directory under --fifo-dir, left there for `ctr t attach ID`; needs "
                   "--detach")
    p.add_argument("--fifo-dir", type=_path, metavar="DIR",
                   help=f"where --tty makes the FIFOs (default: {DEFAULT_FIFO_DIR}, as ctr)")


def _tasks_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                  environ: Mapping[str, str]) -> None:
    p = sub.add_parser("tasks", help="list tasks (id, pid, status)",
                       description="List the tasks of the namespace (Tasks/List).")
    _add_globals(p, environ, top=False)
    p.add_argument("-q", "--quiet", action="store_true", help="print task ids only")


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``pyrunc`` parser; global defaults come from ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="pyrunc",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_globals(parser, env, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _checkpoint_parser(sub, env)
    _restore_parser(sub, env)
    _tasks_parser(sub, env)
    add_cri_parser(sub)
    add_migrate_parsers(sub)
    add_checkpoint_image_parser(sub)
    return parser


def _absolute(path: str | None, cwd: str) -> str:
    if not path:
        return ""
    return os.path.normpath(os.path.join(cwd, path))


def _file_uri(path: str | None, cwd: str) -> str:
    if not path:
        return ""
    return PurePosixPath(_absolute(path, cwd)).as_uri()


def parse_args(
    argv: Sequence[str],
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Command:
    """Parse ``argv`` (without the program name) into a command value.

    Args:
        argv: the arguments.
        environ: where ``CONTAINERD_ADDRESS``/``CONTAINERD_NAMESPACE`` are read
            (default ``os.environ``).
        cwd: the directory relative paths are taken against (default ``os.getcwd()``).

    Returns:
        The command, with absolute paths.

    Raises:
        SystemExit: usage error (status 2, message on stderr) or ``--help`` (status 0).
    """
    parser = build_parser(environ)
    ns = parser.parse_args(list(argv))
    here = os.getcwd() if cwd is None else cwd
    glob = Globals(address=_absolute(ns.address, here) if "://" not in ns.address
                   else ns.address, namespace=ns.namespace)
    if ns.command == "cri":
        return cri_command(ns)
    if ns.command in ("migrate", "agent"):
        return migrate_command(ns, glob.address, glob.namespace)
    if ns.command == "checkpoint-image":
        return checkpoint_image_command(ns, here)
    if ns.command == "checkpoint":
        options: dict[str, Any] = {
            o.dest: _option_value(o, getattr(ns, o.dest), here) for o in OPTIONS if o.flag
        }
        return CheckpointCommand(
            globals=glob, container_id=ns.container_id, quiet=ns.quiet, **options
        )
    if ns.command == "restore":
        if ns.lazy_pages != bool(ns.page_server):
            parser.error("restore: --lazy-pages and --page-server go together")
        if ns.log_uri and ns.stderr:
            parser.error("restore: argument --stderr: not allowed with argument --log-uri")
        if ns.tty and not ns.detach:
            parser.error("restore: --tty needs --detach (then attach with `ctr t attach ID`)")
        if ns.tty and (ns.log_uri or ns.stdout or ns.stderr):
            parser.error("restore: --tty: the terminal is the output; no --log-uri, --stdout "
                         "or --stderr")
        if ns.fifo_dir and not ns.tty:
            parser.error("restore: --fifo-dir goes with --tty")
        return RestoreCommand(
            globals=glob,
            container_id=ns.container_id,
            image_path=_absolute(ns.image_path, here),
            work_path=_absolute(ns.work_path, here),
            tcp_close=ns.tcp_close,
            lazy_pages=ns.lazy_pages,
            page_server=ns.page_server or "",
            stdout=ns.log_uri or _file_uri(ns.stdout, here),
            stderr=ns.log_uri or _file_uri(ns.stderr, here),
            detach=ns.detach,
            tty=ns.tty,
            fifo_dir=_absolute(ns.fifo_dir or DEFAULT_FIFO_DIR, here) if ns.tty else "",
        )
    return TasksCommand(globals=glob, quiet=ns.quiet)
