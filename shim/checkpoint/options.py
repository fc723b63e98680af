"""The checkpoint options, one row each: every name an option has, in one table.

Strategy: an option is asked for in a request field, a container annotation or a ``pyrunc``
flag, lands in a :class:`~shim.checkpoint.plan.CheckpointPlan` field (named after CRIU's
``criu_opts``), is stored beside the images, and reaches runc as a flag or CRIU as a line of
its configuration file. :data:`OPTIONS` lists those names per option, with the option's
:class:`Kind` (how its values are written and parsed) and :class:`Side` (whether a restore
needs it too). The request and annotation parsers and the stored-plan reader and writer
(:mod:`shim.checkpoint.plan`) and the ``pyrunc checkpoint`` flags (:mod:`shim.ctl`) are made
from this table; the renderers (``checkpoint_args``, ``restore_args``, ``criu_config``) keep
their own fixed order and special cases and are checked against it by the tests, as is
``docs/checkpoint-options.md``.

Data only: no protobuf, no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = [
    "BY_PLAN",
    "BY_REQUEST",
    "OPTIONS",
    "CgroupMode",
    "Kind",
    "Namespace",
    "NetworkLock",
    "Option",
    "Side",
]


class CgroupMode(enum.Enum):
    """CRIU ``--manage-cgroups`` mode (``criu_opts.manage_cgroups_mode``)."""

    SOFT = "soft"
    FULL = "full"
    STRICT = "strict"
    IGNORE = "ignore"  # runc 1.1 has no flag value for it: rendered into the CRIU config


class NetworkLock(enum.Enum):
    """CRIU ``--network-lock`` method (``criu_opts.network_lock``)."""

    IPTABLES = "iptables"  # CRIU's default
    NFTABLES = "nftables"
    SKIP = "skip"


class Namespace(enum.Enum):
    """A namespace runc can leave empty on restore (``--empty-ns``): runc 1.1 knows only this."""

    NETWORK = "network"


class Kind(enum.Enum):
    """How an option's value is written (request, annotation, flag, stored plan)."""

    FLAG = "flag"  # a bool; on if any source sets it
    EXIT = "exit"  # a bool asking for the opposite of the plan's leave_running
    PATH = "path"  # an absolute path; "" = not given
    NAMESPACES = "namespaces"  # namespace names (repeated; comma-separated in an annotation)
    CGROUP_MODE = "cgroup-mode"  # a CgroupMode value
    NETWORK_LOCK = "network-lock"  # a NetworkLock value
    PAGE_SERVER = "page-server"  # HOST:PORT
    BYTES = "bytes"  # a uint32 size; 0 = CRIU's default


class Side(enum.Enum):
    """Which operations an option concerns."""

    DUMP = "dump"  # the dump only
    BOTH = "both"  # the dump, and the restore takes it from the stored plan


@dataclass(frozen=True, slots=True)
class Option:
    """Every name of one checkpoint option.

    ``request``: the field of ``pyrunc.v1.CheckpointOptions`` (and of containerd's own
    ``CheckpointOptions`` when ``containerd`` is set: its fields 1-9); ``plan``: the
    ``CheckpointPlan`` field and stored-plan key; ``annotation``: the name after
    ``io.pyrunc.checkpoint.`` ("" = none: the page server's TLS comes from the request
    only, never from what a pod's annotations say); ``flag``: the ``pyrunc checkpoint``
    flag ("" = none);
    ``runc``: the ``runc checkpoint`` flag ("" = runc has none: CRIU configuration file);
    ``criu``: CRIU's own option name; ``help``: the flag's help text.
    """

    request: str
    plan: str
    annotation: str
    flag: str
    runc: str
    criu: str
    kind: Kind
    side: Side
    containerd: bool
    help: str

    @property
    def dest(self) -> str:
        """The flag's name as a Python identifier (``--tcp-close`` -> ``tcp_close``)."""
        return self.flag.removeprefix("--").replace("-", "_")


def _o(
    request: str,
    plan: str,
    annotation: str,
    flag: str,
    runc: str,
    criu: str,
    kind: Kind,
    side: Side,
    containerd: bool,
    help: str,
) -> Option:
    return Option(request, plan, annotation, flag, runc, criu, kind, side, containerd, help)


F, X, P = Kind.FLAG, Kind.EXIT, Kind.PATH
D, B = Side.DUMP, Side.BOTH

# fmt: off
OPTIONS: Final[tuple[Option, ...]] = (
    _o("image_path", "images_dir", "image-path", "--image-path", "--image-path", "images-dir",
       P, B, True, "write the CRIU images to DIR (default: containerd's temporary dir)"),
    _o("work_path", "work_dir", "work-path", "--work-path", "--work-path", "work-dir",
       P, B, True, "CRIU work dir for logs (default: the shim's choice)"),
    _o("exit", "leave_running", "leave-running", "--exit", "--leave-running", "leave-running",
       X, D, True, "stop the task once it is dumped"),
    _o("open_tcp", "tcp_established", "tcp-established", "--tcp-established",
       "--tcp-established", "tcp-established", F, B, True, "dump established TCP connections"),
    _o("external_unix_sockets", "ext_unix_sk", "ext-unix-sk", "--ext-unix-sk", "--ext-unix-sk",
       "ext-unix-sk", F, B, True, "allow external unix sockets"),
    _o("terminal", "shell_job", "shell-job", "--shell-job", "--shell-job", "shell-job",
       F, B, True, "allow a task attached to a terminal (shell job)"),
    _o("file_locks", "file_locks", "file-locks", "--file-locks", "--file-locks", "file-locks",
       F, B, True, "dump file locks"),
    _o("empty_namespaces", "empty_ns", "empty-ns", "--empty-ns", "--empty-ns", "empty-ns",
       Kind.NAMESPACES, B, True,
       "do not dump namespace NS, it is recreated empty (repeatable; the shim supports "
       "'network')"),
    _o("cgroups_mode", "manage_cgroups_mode", "manage-cgroups-mode", "--manage-cgroups-mode",
       "--manage-cgroups-mode", "manage-cgroups", Kind.CGROUP_MODE, B, True,
       "CRIU's cgroup handling"),
    _o("auto_dedup", "auto_dedup", "auto-dedup", "--auto-dedup", "--auto-dedup", "auto-dedup",
       F, B, False, "punch holes in parent images for pages dumped again"),
    _o("pre_dump", "pre_dump", "pre-dump", "--pre-dump", "--pre-dump", "pre-dump",
       F, D, False, "dump memory only and leave the task running"),
    _o("parent_path", "parent_img", "parent-path", "--parent-path", "--parent-path",
       "prev-images-dir", P, D, False, "images of a previous pre-dump to build on"),
    _o("lazy_pages", "lazy_pages", "lazy-pages", "--lazy-pages", "--lazy-pages", "lazy-pages",
       F, B, False, "leave memory pages to be served on demand after the dump"),
    _o("page_server", "page_server", "page-server", "--page-server", "--page-server",
       "page-server", Kind.PAGE_SERVER, B, False,
       "send memory pages to the CRIU page server at HOST:PORT"),
    _o("tcp_close", "tcp_close", "tcp-close", "--tcp-close", "", "tcp-close",
       F, B, False, "restore established TCP connections closed"),
    _o("tcp_skip_in_flight", "tcp_skip_in_flight", "skip-in-flight", "--tcp-skip-in-flight", "",
       "skip-in-flight", F, D, False, "skip TCP connections not yet fully established"),
    _o("link_remap", "link_remap", "link-remap", "--link-remap", "", "link-remap",
       F, D, False, "dump open but unlinked files by linking them back"),
    _o("ghost_limit", "ghost_limit", "ghost-limit", "--ghost-limit", "", "ghost-limit",
       Kind.BYTES, D, False,
       "largest deleted file CRIU copies into the images (suffix K/M/G ok)"),
    _o("network_lock", "network_lock", "network-lock", "--network-lock", "", "network-lock",
       Kind.NETWORK_LOCK, D, False, "how CRIU locks the network during the dump"),
    _o("track_mem", "track_mem", "track-mem", "", "", "track-mem",
       F, D, False, "(the shim implies it for --pre-dump and --parent-path)"),
    _o("tls_cacert", "tls_cacert", "", "", "", "tls-cacert",
       P, D, False, "(TLS on the page server's connection: the CA)"),
    _o("tls_cert", "tls_cert", "", "", "", "tls-cert",
       P, D, False, "(TLS on the page server's connection: this side's certificate)"),
    _o("tls_key", "tls_key", "", "", "", "tls-key",
       P, D, False, "(TLS on the page server's connection: its private key)"),
    _o("tls_no_cn_verify", "tls_no_cn_verify", "", "", "", "tls-no-cn-verify",
       F, D, False, "(TLS: do not check that the peer's certificate names the address)"),
)
# fmt: on
"""Every checkpoint option, in the order ``pyrunc checkpoint --help`` lists the flags."""

BY_REQUEST: Final = {o.request: o for o in OPTIONS}
BY_PLAN: Final = {o.plan: o for o in OPTIONS}
