"""Checkpoint options, translated in one place: request + annotations -> CheckpointPlan -> argv.

Strategy (house rule 10): every way of asking for a checkpoint option ends up in **one** frozen
value, :class:`CheckpointPlan`, whose field names are CRIU's own (``criu_opts`` in CRIU's
``rpc.proto``). Everything the shim runs is rendered from that value and nothing else:

* :func:`plan_checkpoint` reads ``CheckpointTaskRequest.path`` and ``.options`` (one of three
  message types, or none) plus the container's ``io.pyrunc.checkpoint.*`` annotations, and
  refuses bad or contradictory options with :class:`~shim.errors.InvalidArgument` before
  anything runs;
* :func:`restore_source` and :func:`plan_restore` are the one restore translation: what Create
  asked, the stored plan (or the annotations) and the default work dir become one plan;
* :func:`checkpoint_args` / :func:`restore_args` give the CRIU-related ``runc`` flags, one per
  plan field in a fixed order (runc's own flags are :mod:`shim.runtime`'s);
* :func:`criu_config` gives a CRIU configuration file for what runc 1.1 has no flag for;
* :attr:`CheckpointPlan.required_criu_version` is the oldest CRIU that can carry the plan out;
* :func:`dump_plan` / :func:`load_plan` store the plan beside the images (:data:`STORED_PLAN`)
  so that :func:`plan_restore` restores with the options the dump used.

Rules: pure functions, no I/O (callers read and write files); absolute, normalised paths only;
the defaults are containerd's (leave the container running unless ``exit``). Mirrors
containerd v1.6 ``pkg/process/init.go`` (CheckpointConfig -> go-runc ``CheckpointOpts.args()``)
and runc 1.1 ``checkpoint.go``/``restore.go`` (which flags exist and what values they accept).
The option table with every source and target is ``docs/checkpoint-options.md``.
"""

from __future__ import annotations

import enum
import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar

from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import Message

from shim.api.containerd.linux.runctypes import runc_pb2
from shim.api.containerd.runc.options import oci_pb2
from shim.api.pyrunc.v1 import checkpoint_pb2
from shim.bundle import RESTORE_ANNOTATION
from shim.checkpoint.options import (
    BY_PLAN,
    OPTIONS,
    CgroupMode,
    Kind,
    Namespace,
    NetworkLock,
    Option,
)
from shim.errors import InvalidArgument
from shim.typeurl import type_name, unpack

__all__ = [
    "ANNOTATIONS",
    "ANNOTATION_PREFIX",
    "CRIU_VERSION_FLOOR",
    "CRIU_VERSION_NETWORK_LOCK",
    "GHOST_LIMIT_MAX",
    "OPTION_TYPES",
    "STATUS_FD",
    "STORED_PLAN",
    "STORED_PLAN_VERSION",
    "TLS_OPTIONS",
    "UNPACKING",
    "CgroupMode",
    "CheckpointPlan",
    "Namespace",
    "NetworkLock",
    "PageServer",
    "RestoreSource",
    "checkpoint_args",
    "criu_config",
    "dump_network_lock",
    "dump_plan",
    "load_plan",
    "plan_checkpoint",
    "plan_restore",
    "restore_args",
    "restore_source",
    "tls_args",
]

ANNOTATION_PREFIX: Final = "io.pyrunc.checkpoint."
"""Container annotations ``<prefix><name>`` give checkpoint defaults; see :data:`ANNOTATIONS`."""

STORED_PLAN: Final = "pyrunc-checkpoint.json"
"""File name of the stored plan inside the images directory (travels with containerd's tar)."""

STORED_PLAN_VERSION: Final = 1

UNPACKING: Final = "pyrunc-unpacking"
"""A file the CRI endpoint keeps beside an unpacked checkpoint's images (in the directory
that holds ``checkpoint/``) while it still writes them: it holds an exclusive ``flock`` on
it until they are all written and then writes ``complete`` into it (anything else there says
why not). CreateContainer answers before CRIU's images are all written, so that their
writing overlaps StartContainer's start of the shim; the restore waits on this file
(:attr:`RestoreSource.unpacking`, for at most the CRIU timeout) before it reads them. The
file is honoured only as the endpoint makes it: a regular file of the shim's user in a
directory no one else may write to (a checkpoint archive may not hold one either)."""

STATUS_FD: Final = 3
"""With lazy pages runc gets ``--status-fd 3``: the runner passes a pipe as runc's fd 3 and
runc writes one NUL byte to it when CRIU's lazy page server is ready."""

GHOST_LIMIT_MAX: Final = 2**32 - 1
"""``criu_opts.ghost_limit`` is a uint32."""

CRIU_VERSION_FLOOR: Final = 30000
"""go-criu version integer (major*10000 + minor*100 + sublevel) of CRIU 3.0, runc 1.1's own
floor: what a plan needs unless it uses an option listed below."""

CRIU_VERSION_NETWORK_LOCK: Final = 40201
"""CRIU 4.2.1: the first release that reads ``network-lock`` from the configuration file runc
hands over RPC. Up to 4.2.0 (checked in the v4.2 sources, and seen crash with 4.1.1) CRIU
dereferences the NULL ``argv`` of the RPC configuration parse in ``parse_options`` whenever
that option is in the file, and ``criu swrk`` dies (fixed by checkpoint-restore/criu#3051,
released in 4.2.1). runc 1.1 has no flag for the method, so the file is the only way."""

OPTION_TYPES: Final[frozenset[str]] = frozenset(
    {
        oci_pb2.CheckpointOptions.DESCRIPTOR.full_name,
        runc_pb2.CheckpointOptions.DESCRIPTOR.full_name,
        checkpoint_pb2.CheckpointOptions.DESCRIPTOR.full_name,
    }
)
"""Full names of the option messages :func:`plan_checkpoint` accepts in the request's Any."""


TLS_OPTIONS: Final = ("tls_cacert", "tls_cert", "tls_key", "tls_no_cn_verify")
"""The plan's TLS fields (CRIU ``--tls-cacert --tls-cert --tls-key --tls-no-cn-verify``): the
credentials of one dump's page-server connection, paths on the dumping host. Not stored with
the plan (a restore has its own, :class:`RestoreSource`)."""

_OTHER_NAMESPACES: Final = frozenset({"pid", "mount", "ipc", "uts", "user", "cgroup", "time"})

_PORT = re.compile(r"[0-9]{1,5}")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PageServer:
    """Where pages go (``criu page-server`` listening there) or, with lazy pages, where the
    dumping CRIU serves them. ``str()`` gives runc's ``ADDRESS:PORT`` form."""

    address: str
    port: int

    def __post_init__(self) -> None:
        if not self.address or any(c.isspace() or c in "\0[]/" for c in self.address):
            raise InvalidArgument(f"page_server: bad address {self.address!r}")
        if ":" in self.address and self.address.count(":") < 2:
            raise InvalidArgument(f"page_server: bad address {self.address!r}")
        if isinstance(self.port, bool) or not 1 <= self.port <= 65535:
            raise InvalidArgument(f"page_server: port {self.port!r} is not in 1..65535")

    @classmethod
    def parse(cls, text: str, *, option: str = "page_server") -> PageServer:
        """Parse ``host:port`` (``[v6addr]:port`` for IPv6), as runc's ``net.SplitHostPort``.

        Raises:
            InvalidArgument: not ``host:port``, or the port is not in 1..65535; the message
                starts with ``option``.
        """
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            if not sep or ":" not in host:
                raise InvalidArgument(f"{option}: {text!r} is not host:port or [ipv6]:port")
        else:
            host, sep, port = text.rpartition(":")
            if not sep or ":" in host:
                raise InvalidArgument(
                    f"{option}: {text!r} is not host:port (write IPv6 as [addr]:port)"
                )
        if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
            raise InvalidArgument(f"{option}: port {port!r} of {text!r} is not in 1..65535")
        try:
            return cls(host, int(port))
        except InvalidArgument as exc:
            raise InvalidArgument(f"{option}: {text!r} is not host:port ({exc})") from exc

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RestoreSource:
    """A checkpoint to create the container from (restored at Start, as runc-v2 does).

    ``images_dir`` is containerd's unpacked checkpoint (``CreateTaskRequest.checkpoint``) or
    the ``image_path`` of ``pyrunc.v1.RestoreOptions``; the rest come from those options.
    ``unpacking``: for the CRI endpoint's checkpoint (the annotation), its :data:`UNPACKING`
    file, to wait on before the images are read ("" for every other source).
    """

    images_dir: str
    work_dir: str = ""
    tcp_close: bool = False
    lazy_pages: bool = False
    page_server: str = ""
    unpacking: str = ""
    tls_cacert: str = ""  # TLS of the lazy-pages daemon's connection (RestoreOptions 7-10)
    tls_cert: str = ""
    tls_key: str = ""
    tls_no_cn_verify: bool = False


@dataclass(frozen=True, slots=True)
class CheckpointPlan:
    """One validated checkpoint (and matching restore), named after CRIU's ``criu_opts``.

    Constructing one validates it (the same rules as :func:`plan_checkpoint`), normalises the
    paths, and turns ``track_mem`` on where CRIU needs it (pre-dump, or a parent image).

    Raises:
        InvalidArgument: contradictory or malformed fields (the message names the option).
    """

    images_dir: str  # absolute
    work_dir: str  # absolute
    leave_running: bool = True  # containerd's default: leave running unless exit
    tcp_established: bool = False
    ext_unix_sk: bool = False
    shell_job: bool = False
    file_locks: bool = False
    empty_ns: frozenset[Namespace] = frozenset()
    manage_cgroups_mode: CgroupMode | None = None
    auto_dedup: bool = False
    pre_dump: bool = False
    track_mem: bool = False
    parent_img: str = ""  # absolute path of the parent images dir ("" = none)
    lazy_pages: bool = False
    page_server: PageServer | None = None
    tcp_close: bool = False
    tcp_skip_in_flight: bool = False
    link_remap: bool = False
    ghost_limit: int | None = None
    network_lock: NetworkLock | None = None
    tls_cacert: str = ""  # absolute; the three TLS paths go together ("" = no TLS)
    tls_cert: str = ""
    tls_key: str = ""
    tls_no_cn_verify: bool = False

    def __post_init__(self) -> None:
        images = _abs_path(self.images_dir, "image_path")
        object.__setattr__(self, "images_dir", images)
        object.__setattr__(self, "work_dir", _abs_path(self.work_dir, "work_path"))
        object.__setattr__(self, "empty_ns", frozenset(self.empty_ns))
        if self.parent_img:
            parent = _abs_path(self.parent_img, "parent_path")
            if parent == images:
                raise InvalidArgument(
                    f"parent_path: {parent!r} is the images directory itself; the parent must "
                    "be the images directory of an earlier (pre-)dump"
                )
            object.__setattr__(self, "parent_img", parent)
        if self.pre_dump and not self.leave_running:
            raise InvalidArgument(
                "pre_dump cannot be combined with exit: a pre-dump only copies memory and "
                "always leaves the container running"
            )
        if self.lazy_pages and self.page_server is None:
            raise InvalidArgument(
                "lazy_pages needs page_server (host:port where the dumping CRIU serves the "
                "pages to the restoring side)"
            )
        if self.lazy_pages and self.pre_dump:
            raise InvalidArgument("lazy_pages cannot be combined with pre_dump")
        if self.ghost_limit is not None and (
            isinstance(self.ghost_limit, bool) or not 1 <= self.ghost_limit <= GHOST_LIMIT_MAX
        ):
            raise InvalidArgument(
                f"ghost_limit: {self.ghost_limit!r} is not in 1..{GHOST_LIMIT_MAX} "
                "(criu_opts.ghost_limit is a uint32; 0 means CRIU's default)"
            )
        if (self.pre_dump or self.parent_img) and not self.track_mem:
            object.__setattr__(self, "track_mem", True)
        self._check_tls()

    def _check_tls(self) -> None:
        paths = {name: getattr(self, name) for name in TLS_OPTIONS[:3]}
        if any(paths.values()):
            if not all(paths.values()):
                missing = ", ".join(n for n, v in paths.items() if not v)
                raise InvalidArgument(
                    f"tls_cacert, tls_cert and tls_key go together (CRIU's TLS is mutual: "
                    f"the CA and this side's certificate and key); missing: {missing}"
                )
            for name, path in paths.items():
                object.__setattr__(self, name, _config_path(path, name))
            if self.page_server is None:
                raise InvalidArgument(
                    "tls_cacert/tls_cert/tls_key secure the page server's connection: they "
                    "need page_server"
                )
        elif self.tls_no_cn_verify:
            raise InvalidArgument("tls_no_cn_verify needs tls_cacert, tls_cert and tls_key")

    @property
    def tls(self) -> bool:
        """CRIU's page-server connection uses TLS (``--tls``)."""
        return bool(self.tls_cacert)

    @property
    def required_criu_version(self) -> int:
        """The oldest CRIU (go-criu version integer) that can carry this plan out.

        :data:`CRIU_VERSION_NETWORK_LOCK` (4.2.1) when ``network_lock`` is ``nftables`` or
        ``skip``: they reach CRIU only as a ``network-lock`` line of the configuration file,
        which crashes older CRIU. Otherwise :data:`CRIU_VERSION_FLOOR` (3.0; ``iptables`` is
        CRIU's default and renders nothing). The same number holds for the restore of the
        plan: its images were written by CRIU >= 4.2.1 and record the method, which the
        restoring CRIU must know (``skip`` appeared in 3.19).
        """
        if self.network_lock in (NetworkLock.NFTABLES, NetworkLock.SKIP):
            return CRIU_VERSION_NETWORK_LOCK
        return CRIU_VERSION_FLOOR

    @property
    def parent_path(self) -> str:
        """``parent_img`` relative to ``images_dir``, as runc 1.1's ``--parent-path`` wants it."""
        if not self.parent_img:
            return ""
        return posixpath.relpath(self.parent_img, self.images_dir)


# --------------------------------------------------------------------------------------------
# Inputs: one typed record per source (request options, annotations), then merged.


@dataclass(frozen=True, slots=True)
class _Asked:
    """What one source asked for; None / False = not set (the option's default)."""

    exit: bool = False
    open_tcp: bool = False
    external_unix_sockets: bool = False
    terminal: bool = False
    file_locks: bool = False
    empty_namespaces: frozenset[Namespace] | None = None
    cgroups_mode: CgroupMode | None = None
    image_path: str | None = None
    work_path: str | None = None
    parent_path: str | None = None
    pre_dump: bool = False
    auto_dedup: bool = False
    lazy_pages: bool = False
    page_server: PageServer | None = None
    tcp_close: bool = False
    tcp_skip_in_flight: bool = False
    link_remap: bool = False
    ghost_limit: int | None = None
    network_lock: NetworkLock | None = None
    track_mem: bool = False
    tls_cacert: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_no_cn_verify: bool = False


def _merge(req: _Asked, ann: _Asked) -> _Asked:
    """The request wins where it sets a non-default value; a bool set in either is on."""
    merged: dict[str, Any] = {}
    for o in OPTIONS:
        a, b = getattr(req, o.request), getattr(ann, o.request)
        merged[o.request] = (a or b) if o.kind in _BOOLS else _first(a, b)
    return _Asked(**merged)


_BOOLS: Final = frozenset({Kind.FLAG, Kind.EXIT})


def _first(a: T | None, b: T | None) -> T | None:
    return a if a is not None else b


def _abs_path(value: str, option: str) -> str:
    """``value`` as a normalised absolute path; refuses relative, ``..`` and NUL."""
    if "\0" in value:
        raise InvalidArgument(f"{option}: path {value!r} contains NUL")
    if not value.startswith("/"):
        raise InvalidArgument(f"{option}: path {value!r} is not absolute")
    if ".." in value.split("/"):
        raise InvalidArgument(f"{option}: path {value!r} contains '..'")
    return posixpath.normpath("/" + value.lstrip("/"))


_CONFIG_UNSAFE: Final = frozenset(" \t\n\r\"'\\#")


def _config_path(value: str, option: str) -> str:
    """``value`` as an absolute path that can stand as the argument of a line of CRIU's
    configuration file (which splits at spaces and reads quotes and ``#``)."""
    path = _abs_path(value, option)
    if any(c in _CONFIG_UNSAFE for c in path):
        raise InvalidArgument(
            f"{option}: path {value!r} has a space, a quote, a backslash or '#', which a "
            "line of CRIU's configuration file cannot carry"
        )
    return path


def _namespaces(names: list[str], option: str) -> frozenset[Namespace] | None:
    if not names:
        return None
    out: set[Namespace] = set()
    for name in names:
        if name == Namespace.NETWORK.value:
            out.add(Namespace.NETWORK)
        elif name in _OTHER_NAMESPACES:
            raise InvalidArgument(
                f"{option}: runc cannot leave the {name} namespace empty; "
                "runc accepts only 'network'"
            )
        else:
            raise InvalidArgument(
                f"{option}: unknown namespace {name!r}; runc accepts only 'network'"
            )
    return frozenset(out)


def _cgroup_mode(text: str, option: str) -> CgroupMode | None:
    if not text:
        return None
    try:
        return CgroupMode(text)
    except ValueError:
        raise InvalidArgument(
            f"{option}: {text!r} is not one of soft, full, strict, ignore (or empty)"
        ) from None


def _network_lock(text: str, option: str) -> NetworkLock | None:
    if not text:
        return None
    try:
        return NetworkLock(text)
    except ValueError:
        raise InvalidArgument(
            f"{option}: unknown method {text!r}; one of iptables, nftables, skip (or empty)"
        ) from None


def _ghost_limit(value: int, option: str) -> int | None:
    if value == 0:
        return None
    if not 0 < value <= GHOST_LIMIT_MAX:
        raise InvalidArgument(
            f"{option}: {value} is not in 0..{GHOST_LIMIT_MAX} (criu_opts.ghost_limit is a "
            "uint32; 0 = CRIU's default)"
        )
    return value


def _from_message(msg: Any) -> _Asked:
    """Read one of the three CheckpointOptions messages (containerd's fields 1-9 by name, the
    rest from ``pyrunc.v1.CheckpointOptions`` only)."""
    extended = msg.DESCRIPTOR.full_name == checkpoint_pb2.CheckpointOptions.DESCRIPTOR.full_name
    if extended:
        status_fd = int(msg.status_fd)
        if status_fd not in (0, -1):
            raise InvalidArgument(
                f"status_fd: {status_fd} names a descriptor of the caller, which cannot cross "
                "ttrpc; leave it 0 (the shim passes runc its own pipe when lazy_pages is set)"
            )
    return _Asked(
        **{
            o.request: _from_request_field(o, getattr(msg, o.request))
            for o in OPTIONS
            if extended or o.containerd
        }
    )


def _from_request_field(o: Option, raw: Any) -> Any:
    """One request field's value as :class:`_Asked` holds it (None / False: not set)."""
    name = o.request
    if o.kind in _BOOLS:
        return bool(raw)
    if o.kind is Kind.PATH:
        return _abs_path(raw, name) if raw else None
    if o.kind is Kind.NAMESPACES:
        return _namespaces(list(raw), name)
    if o.kind is Kind.CGROUP_MODE:
        return _cgroup_mode(str(raw), name)
    if o.kind is Kind.NETWORK_LOCK:
        return _network_lock(str(raw), name)
    if o.kind is Kind.PAGE_SERVER:
        return PageServer.parse(raw, option=name) if raw else None
    return _ghost_limit(int(raw), name)  # Kind.BYTES


def _from_any(options: AnyMessage | None) -> _Asked:
    if options is None or (not options.type_url and not options.value):
        return _Asked()
    for cls in (
        oci_pb2.CheckpointOptions,
        runc_pb2.CheckpointOptions,
        checkpoint_pb2.CheckpointOptions,
    ):
        msg: Message | None = unpack(options, cls)
        if msg is not None:
            return _from_message(msg)
    raise InvalidArgument(
        f"options: unsupported checkpoint options type {type_name(options)!r}; expected one "
        f"of {', '.join(sorted(OPTION_TYPES))}"
    )


# Annotation name (after ANNOTATION_PREFIX) -> option; named like the runc flag, or like the
# CRIU option where runc has none. "leave-running: false" asks for exit.
_BY_ANNOTATION: Final[Mapping[str, Option]] = {o.annotation: o for o in OPTIONS if o.annotation}

ANNOTATIONS: Final[frozenset[str]] = frozenset(ANNOTATION_PREFIX + n for n in _BY_ANNOTATION)
"""Every annotation :func:`plan_checkpoint` understands (others under the prefix are refused)."""

_INT = re.compile(r"[0-9]+")


def _bool(text: str, key: str) -> bool:
    if text == "true":
        return True
    if text == "false":
        return False
    raise InvalidArgument(f"annotation {key}: {text!r} is not true or false")


def _from_annotations(annotations: Mapping[str, str]) -> _Asked:
    values: dict[str, Any] = {}
    for key in sorted(annotations):
        if not key.startswith(ANNOTATION_PREFIX):
            continue
        o = _BY_ANNOTATION.get(key.removeprefix(ANNOTATION_PREFIX))
        if o is None:
            raise InvalidArgument(
                f"annotation {key}: unknown checkpoint option; known: "
                + ", ".join(sorted(_BY_ANNOTATION))
            )
        values[o.request] = _from_annotation(o, key, annotations[key])
    return _Asked(**values)


def _from_annotation(o: Option, key: str, text: str) -> Any:
    """One annotation's value as :class:`_Asked` holds it."""
    where = f"annotation {key}"
    if o.kind is Kind.EXIT:
        return not _bool(text, key)
    if o.kind is Kind.FLAG:
        return _bool(text, key)
    if o.kind is Kind.PATH:
        return _abs_path(text, where) if text else None
    if o.kind is Kind.NAMESPACES:
        return _namespaces([n.strip() for n in text.split(",") if n.strip()], where)
    if o.kind is Kind.CGROUP_MODE:
        return _cgroup_mode(text, where)
    if o.kind is Kind.NETWORK_LOCK:
        return _network_lock(text, where)
    if o.kind is Kind.PAGE_SERVER:
        return PageServer.parse(text, option=where) if text else None
    if not _INT.fullmatch(text):  # Kind.BYTES
        raise InvalidArgument(f"{where}: {text!r} is not a number of bytes")
    return _ghost_limit(int(text), where)


def plan_checkpoint(
    path: str,
    options: AnyMessage | None,
    annotations: Mapping[str, str],
    *,
    default_work_dir: str,
) -> CheckpointPlan:
    """Translate a Checkpoint request into a validated plan.

    Args:
        path: ``CheckpointTaskRequest.path`` (containerd's temporary directory); the images go
            there unless the options or annotations give ``image_path``.
        options: ``CheckpointTaskRequest.options``: ``containerd.runc.v1.CheckpointOptions``
            (what ``ctr`` sends), ``containerd.linux.runc.CheckpointOptions`` (older),
            ``pyrunc.v1.CheckpointOptions`` (the superset), or None / an empty Any.
        annotations: the container's OCI annotations; ``io.pyrunc.checkpoint.<runc-flag>``
            entries are defaults. The request overrides an annotation only where it sets a
            non-default value; a bool set in either place is on (for ``exit`` that means
            ``exit=true`` or ``leave-running: "false"``).
        default_work_dir: CRIU's work directory when neither source gives ``work_path``.

    Returns:
        The plan; ``track_mem`` is on for pre-dumps and dumps with a parent.

    Raises:
        InvalidArgument: unknown options type, undecodable options, malformed or
            contradictory values, unknown or unparsable annotations (the message names the
            option or annotation).
    """
    asked = _merge(_from_any(options), _from_annotations(annotations))
    images_dir = asked.image_path or (_abs_path(path, "path") if path else None)
    if images_dir is None:
        raise InvalidArgument("path: empty, and no image_path given")
    fields: dict[str, Any] = {o.plan: _to_plan(o, getattr(asked, o.request)) for o in OPTIONS}
    fields["images_dir"] = images_dir
    fields["work_dir"] = asked.work_path or _abs_path(default_work_dir, "default_work_dir")
    return CheckpointPlan(**fields)


def _to_plan(o: Option, value: Any) -> Any:
    """What was asked for, as the plan's field holds it."""
    if o.kind is Kind.EXIT:
        return not value
    if o.kind is Kind.PATH:
        return value or ""
    if o.kind is Kind.NAMESPACES:
        return value or frozenset()
    return value


def restore_source(
    checkpoint: str,
    options: AnyMessage | None,
    annotations: Mapping[str, str] | None = None,
    *,
    work_dir: str = "",
) -> RestoreSource | None:
    """What a Create asks to restore from: containerd's unpacked checkpoint
    (``CreateTaskRequest.checkpoint``, ``ctr c restore --live``, or the task options'
    ``criu_image_path``), ``pyrunc.v1.RestoreOptions`` in its options (the ``pyrunc restore``
    tool), or the spec annotation :data:`~shim.bundle.RESTORE_ANNOTATION` (the CRI endpoint's
    restore); None for a fresh container. ``work_dir`` (the task options' ``criu_work_path``)
    is CRIU's work directory unless RestoreOptions name one.

    Raises:
        InvalidArgument: two of them given, no image path, or a relative path.
    """
    opts = None if options is None else unpack(options, checkpoint_pb2.RestoreOptions)
    annotated = (annotations or {}).get(RESTORE_ANNOTATION, "")
    if annotated:
        if checkpoint or opts is not None:
            raise InvalidArgument(
                f"annotation {RESTORE_ANNOTATION} and a checkpoint in the request were both given")
        images = _abs_path(annotated, RESTORE_ANNOTATION)
        return RestoreSource(images, work_dir=work_dir,
                             unpacking=posixpath.join(posixpath.dirname(images), UNPACKING))
    if opts is None:
        return RestoreSource(checkpoint, work_dir=work_dir) if checkpoint else None
    if checkpoint and opts.image_path:
        raise InvalidArgument("both a checkpoint and RestoreOptions.image_path were given")
    images = checkpoint or opts.image_path
    if not images:
        raise InvalidArgument("RestoreOptions without image_path")
    for name, path in (("image_path", images), ("work_path", opts.work_path)):
        if path and not posixpath.isabs(path):
            raise InvalidArgument(f"{name} must be absolute: {path!r}")
    return RestoreSource(
        images_dir=images,
        work_dir=opts.work_path or work_dir,
        tcp_close=opts.tcp_close,
        lazy_pages=opts.lazy_pages,
        page_server=opts.page_server,
        tls_cacert=opts.tls_cacert,
        tls_cert=opts.tls_cert,
        tls_key=opts.tls_key,
        tls_no_cn_verify=opts.tls_no_cn_verify,
    )


def plan_restore(
    source: RestoreSource,
    stored: bytes | None,
    annotations: Mapping[str, str],
    *,
    default_work_dir: str,
) -> CheckpointPlan:
    """The one restore translation: the plan to restore ``source`` with, from the plan its
    dump stored (or the annotations), the restore's own options and the default work dir.

    Args:
        source: what Create asked to restore (:func:`restore_source`).
        stored: the bytes of ``<images_dir>/STORED_PLAN``, or None if there is none (a
            checkpoint made by another shim): then the plan comes from ``annotations`` alone,
            as for a checkpoint request without options.
        annotations: the restored container's annotations (ignored when ``stored`` is given:
            restore uses the options the dump used).
        default_work_dir: CRIU's work directory unless ``source`` names one.

    Returns:
        The plan rebased on the images and the work dir (no parent: CRIU follows the images'
        own ``parent`` link), with ``tcp_close`` if the dump or the restore asks for it and
        lazy pages (and their page server, and its TLS) as the restore asks.

    Raises:
        InvalidArgument: bad stored plan, bad annotations, options or paths, or a pre-dump
            image (it holds only memory and cannot be restored).
    """
    checkpoint_dir = _abs_path(source.images_dir, "checkpoint")
    work_dir = _abs_path(source.work_dir or default_work_dir, "work_dir")
    if stored is None:
        plan = plan_checkpoint(checkpoint_dir, None, annotations, default_work_dir=work_dir)
    else:
        plan = load_plan(stored)
    if plan.pre_dump:
        raise InvalidArgument(
            f"checkpoint: {source.images_dir!r} holds a pre-dump (memory only); restore from "
            "the final dump that names it as its parent"
        )
    page_server = plan.page_server
    if source.page_server:
        page_server = PageServer.parse(source.page_server)
    return replace(
        plan,
        images_dir=checkpoint_dir,
        work_dir=work_dir,
        parent_img="",
        tcp_close=plan.tcp_close or source.tcp_close,
        lazy_pages=source.lazy_pages,
        page_server=page_server if source.lazy_pages else None,
        tls_cacert=source.tls_cacert,
        tls_cert=source.tls_cert,
        tls_key=source.tls_key,
        tls_no_cn_verify=source.tls_no_cn_verify,
    )


# --------------------------------------------------------------------------------------------
# Outputs.


def checkpoint_args(plan: CheckpointPlan) -> list[str]:
    """The CRIU-related flags of ``runc checkpoint`` (the runtime adds the command and id).

    One flag per plan field, in this fixed order: ``--image-path --work-path [--parent-path
    REL] [--leave-running] [--tcp-established] [--ext-unix-sk] [--shell-job] [--file-locks]
    [--empty-ns network] [--manage-cgroups-mode M] [--auto-dedup] [--pre-dump] [--lazy-pages]
    [--page-server HOST:PORT] [--status-fd 3]``. ``--parent-path`` is relative to the images
    directory (runc 1.1 refuses absolute ones); ``--status-fd 3`` comes with lazy pages and
    the runner must pass a pipe as runc's fd 3. ``manage_cgroups_mode`` ``ignore`` and the
    options runc has no flag for are in :func:`criu_config` instead.
    """
    argv = ["--image-path", plan.images_dir, "--work-path", plan.work_dir]
    if plan.parent_img:
        argv += ["--parent-path", plan.parent_path]
    if plan.leave_running:
        argv.append("--leave-running")
    argv += _shared_flags(plan)
    if plan.pre_dump:
        argv.append("--pre-dump")
    if plan.lazy_pages:
        argv.append("--lazy-pages")
    if plan.page_server is not None:
        argv += ["--page-server", str(plan.page_server)]
    if plan.lazy_pages:
        argv += ["--status-fd", str(STATUS_FD)]
    return argv


def _shared_flags(plan: CheckpointPlan) -> list[str]:
    """Flags both ``runc checkpoint`` and ``runc restore`` take, in their fixed order
    (``--lazy-pages`` is placed by the callers)."""
    argv: list[str] = []
    if plan.tcp_established:
        argv.append("--tcp-established")
    if plan.ext_unix_sk:
        argv.append("--ext-unix-sk")
    if plan.shell_job:
        argv.append("--shell-job")
    if plan.file_locks:
        argv.append("--file-locks")
    for ns in sorted(plan.empty_ns, key=lambda n: n.value):
        argv += ["--empty-ns", ns.value]
    mode = plan.manage_cgroups_mode
    if mode is not None and mode is not CgroupMode.IGNORE:
        argv += ["--manage-cgroups-mode", mode.value]
    if plan.auto_dedup:
        argv.append("--auto-dedup")
    return argv


def restore_args(plan: CheckpointPlan) -> list[str]:
    """The CRIU-related flags of ``runc restore`` (the runtime adds its own flags, the
    command and the id: :class:`shim.runtime.RestoreOpts`).

    ``--image-path <images_dir> --work-path <work_dir>``, then what the dump used that
    restore needs (``--tcp-established --ext-unix-sk --shell-job --file-locks --empty-ns
    --manage-cgroups-mode --auto-dedup --lazy-pages``).
    """
    argv = ["--image-path", plan.images_dir, "--work-path", plan.work_dir]
    argv += _shared_flags(plan)
    if plan.lazy_pages:
        argv.append("--lazy-pages")
    return argv


def criu_config(plan: CheckpointPlan, *, restore: bool) -> str:
    """CRIU configuration-file text for what runc 1.1 has no flag for; "" if nothing.

    One long option per line without the dashes, in this order: ``tcp-close`` (dump and
    restore: CRIU records it in the images and refuses to restore them without it),
    ``skip-in-flight``, ``link-remap``, ``ghost-limit N``, ``track-mem`` (dump only; the latter
    only when runc does not already set it for ``--pre-dump``/``--parent-path``),
    ``network-lock nftables|skip`` (dump only: CRIU records the method in the images'
    inventory and a restore always uses that one, whatever its own options say; ``iptables``
    is CRIU's default and renders nothing; needs :data:`CRIU_VERSION_NETWORK_LOCK`),
    ``tls``, ``tls-cacert F``, ``tls-cert F``, ``tls-key F``, ``tls-no-cn-verify`` (dump
    only, :func:`tls_args`: runc 1.1 fills none of ``criu_opts``' TLS fields; a restore's
    CRIU connects to no page server, its ``criu lazy-pages`` daemon gets them as arguments),
    ``manage-cgroups=ignore`` (dump and restore; ``=`` because the argument is optional), and
    on restore ``manage-cgroups=<mode>`` for the other modes too: runc 1.1 accepts
    ``restore --manage-cgroups-mode`` but never passes it on to CRIU (fixed in runc 1.2,
    opencontainers/runc ff3b4f3), so CRIU would restore in its default mode, soft.
    CRIU reads this file after runc's RPC options, so its lines win. runc hands it to CRIU
    through the container annotation ``org.criu.config`` (which replaces runc's default
    ``/etc/criu/runc.conf``).
    """
    lines: list[str] = []
    if plan.tcp_close:
        lines.append("tcp-close")
    if not restore:
        if plan.tcp_skip_in_flight:
            lines.append("skip-in-flight")
        if plan.link_remap:
            lines.append("link-remap")
        if plan.ghost_limit is not None:
            lines.append(f"ghost-limit {plan.ghost_limit}")
        if plan.track_mem and not (plan.pre_dump or plan.parent_img):
            lines.append("track-mem")
        lock = plan.network_lock
        if lock is not None and lock is not NetworkLock.IPTABLES:
            lines.append(f"network-lock {lock.value}")
        lines += [" ".join(pair) for pair in _tls_options(plan)]
    mode = plan.manage_cgroups_mode
    if mode is CgroupMode.IGNORE or (restore and mode is not None):
        lines.append(f"manage-cgroups={mode.value}")
    return "".join(line + "\n" for line in lines)


def _tls_options(plan: CheckpointPlan) -> list[tuple[str, ...]]:
    if not plan.tls:
        return []
    out: list[tuple[str, ...]] = [
        ("tls",),
        ("tls-cacert", plan.tls_cacert),
        ("tls-cert", plan.tls_cert),
        ("tls-key", plan.tls_key),
    ]
    if plan.tls_no_cn_verify:
        out.append(("tls-no-cn-verify",))
    return out


def tls_args(plan: CheckpointPlan) -> list[str]:
    """CRIU's command-line TLS options for ``plan`` (``--tls --tls-cacert F --tls-cert F
    --tls-key F [--tls-no-cn-verify]``; [] without TLS): what a restore's ``criu
    lazy-pages`` daemon is started with. The same options as :func:`criu_config`'s lines."""
    return [f"--{word}" if i == 0 else word
            for pair in _tls_options(plan) for i, word in enumerate(pair)]


def dump_network_lock(
    plan: CheckpointPlan, *, criu_version: int, inet_sockets: bool
) -> CheckpointPlan:
    """The plan a dump runs with: ``network_lock`` ``skip`` when CRIU's lock would protect
    nothing, else ``plan`` unchanged.

    CRIU locks a container's network namespace for the dump (its default method, iptables:
    ``iptables-restore`` and ``ip6tables-restore`` to lock, ``iptables -C`` and both again to
    unlock; 60-75 ms measured on Linux 6.18, mostly the kernel replacing the rules) and
    records the method in the images, so the restore locks and unlocks again (~60 ms). The
    lock keeps packets from sockets CRIU has in repair mode or is restoring; a namespace with
    no TCP, UDP or raw socket (``inet_sockets`` False: its sockstat counters, read by the
    caller) has nothing it protects. The lock is kept whenever it may matter: the request or
    an annotation named a method, TCP connections are dumped (``tcp_established``), the
    container does not keep running (``exit``: a socket made after the counters were read
    would be dumped unlocked and its peers answered by a process about to go), a pre-dump
    (CRIU does not lock for one), or CRIU older than :data:`CRIU_VERSION_NETWORK_LOCK` (the
    method reaches CRIU only through the configuration file).
    """
    if (
        plan.network_lock is not None
        or inet_sockets
        or plan.tcp_established
        or not plan.leave_running
        or plan.pre_dump
        or criu_version < CRIU_VERSION_NETWORK_LOCK
    ):
        return plan
    return replace(plan, network_lock=NetworkLock.SKIP)


# --------------------------------------------------------------------------------------------
# The stored plan.

_STORED_KEYS: Final = frozenset({"version"} | set(BY_PLAN)) - set(TLS_OPTIONS)


def dump_plan(plan: CheckpointPlan) -> bytes:
    """The plan as versioned JSON (``{"version": 1, ...}``): sorted keys, same bytes for
    equal plans. Without its TLS fields (:data:`TLS_OPTIONS`)."""
    doc: dict[str, object] = {"version": STORED_PLAN_VERSION}
    for o in OPTIONS:
        if o.plan in TLS_OPTIONS:
            continue
        value = getattr(plan, o.plan)
        if o.kind is Kind.NAMESPACES:
            value = sorted(ns.value for ns in value)
        elif o.kind in (Kind.CGROUP_MODE, Kind.NETWORK_LOCK):
            value = _enum_value(value)
        elif o.kind is Kind.PAGE_SERVER:
            value = None if value is None else str(value)
        doc[o.plan] = value
    return (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()


def _enum_value(value: enum.Enum | None) -> str | None:
    return None if value is None else str(value.value)


def load_plan(data: bytes) -> CheckpointPlan:
    """Read a plan written by :func:`dump_plan`.

    Raises:
        InvalidArgument: not JSON, an unknown version, missing/unknown keys, wrong types or a
            plan that fails validation (the message starts with ``stored plan``).
    """
    try:
        return _plan_from_json(data)
    except InvalidArgument as exc:
        raise InvalidArgument(f"stored plan {STORED_PLAN}: {exc}") from exc


def _plan_from_json(data: bytes) -> CheckpointPlan:
    try:
        doc = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidArgument("not a JSON object")
    version = doc.get("version")
    if type(version) is not int or version != STORED_PLAN_VERSION:
        raise InvalidArgument(
            f"unknown version {version!r} (this shim reads {STORED_PLAN_VERSION})"
        )
    keys = set(doc)
    if keys != _STORED_KEYS:
        missing, unknown = sorted(_STORED_KEYS - keys), sorted(keys - _STORED_KEYS)
        raise InvalidArgument(f"missing keys {missing}, unknown keys {unknown}")

    def get(key: str, kind: type[T]) -> T:
        value = doc[key]
        if type(value) is not kind:
            raise InvalidArgument(f"{key} is not a {kind.__name__}: {value!r}")
        return value

    def opt_str(key: str) -> str | None:
        if doc[key] is None:
            return None
        value = get(key, str)
        if not value:
            raise InvalidArgument(f"{key} is empty (write null for none)")
        return value

    fields: dict[str, Any] = {}
    for o in OPTIONS:
        key = o.plan
        if key in TLS_OPTIONS:
            continue
        if o.kind in _BOOLS:
            fields[key] = get(key, bool)
        elif o.kind is Kind.PATH:
            fields[key] = get(key, str)
        elif o.kind is Kind.NAMESPACES:
            names = doc[key]
            if not isinstance(names, list) or not all(type(n) is str for n in names):
                raise InvalidArgument(f"{key} is not a list of names: {names!r}")
            fields[key] = _namespaces(names, key) or frozenset()
        elif o.kind is Kind.BYTES:
            if doc[key] is not None and type(doc[key]) is not int:
                raise InvalidArgument(f"{key} is not a number: {doc[key]!r}")
            fields[key] = doc[key]
        else:
            text = opt_str(key)
            if text is None:
                fields[key] = None
            elif o.kind is Kind.CGROUP_MODE:
                fields[key] = _cgroup_mode(text, key)
            elif o.kind is Kind.NETWORK_LOCK:
                fields[key] = _network_lock(text, key)
            else:  # Kind.PAGE_SERVER
                fields[key] = PageServer.parse(text)
    return CheckpointPlan(**fields)
