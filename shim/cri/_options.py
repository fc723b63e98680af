"""Pod annotations -> the checkpoint options sent with Tasks/Checkpoint.

Strategy: kubelet's CheckpointContainer carries no options, so a pod says what it needs with
annotations ``io.pyrunc.checkpoint.<flag>`` (the shim's own annotation prefix and flag names,
:data:`shim.checkpoint.plan.ANNOTATION_PREFIX`), read from the sandbox through CRI
PodSandboxStatus. The endpoint owns where the images go and that the container keeps running,
so flags about those (image-path, work-path, leave-running, pre-dump, lazy pages, parent path,
page server, track-mem) are refused with InvalidArgument, as are unknown flags and malformed
values. The message depends on the container's runtime:

* ``io.containerd.pyrunc.v2`` on containerd 1.x: ``pyrunc.v1.CheckpointOptions`` (every flag
  below; containerd 1.x forwards options of a type it does not know to the shim untouched);
* ``io.containerd.pyrunc.v2`` on containerd 2.x, and ``io.containerd.runc.*`` (containerd's
  runc shim, or ours registered with ``runtime_path``) everywhere:
  ``containerd.runc.v1.CheckpointOptions``, which containerd itself also reads for the image
  path (fields 1-9 only; a flag beyond them is refused with FailedPrecondition). containerd 2.x
  decodes the options of every Tasks/Checkpoint and refuses types it does not know ("type with
  url pyrunc.v1.CheckpointOptions: not found"), so our own type cannot pass there;
* any other runtime: FailedPrecondition (its options type is unknown).

==================== ======================== ===========
annotation flag      field                    runc shim
==================== ======================== ===========
tcp-established      open_tcp                 yes
ext-unix-sk          external_unix_sockets    yes
shell-job            terminal                 yes
file-locks           file_locks               yes
empty-ns             empty_namespaces (a,b)   yes
manage-cgroups-mode  cgroups_mode             yes
auto-dedup           auto_dedup               no
tcp-close            tcp_close                no
skip-in-flight       tcp_skip_in_flight       no
link-remap           link_remap               no
ghost-limit          ghost_limit (bytes)      no
network-lock         network_lock             no
==================== ======================== ===========
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from google.protobuf.any_pb2 import Any as AnyMessage

from shim.api.containerd.runc.options import oci_pb2
from shim.api.pyrunc.v1 import checkpoint_pb2
from shim.checkpoint.plan import ANNOTATION_PREFIX
from shim.typeurl import pack

from ._errors import FailedPrecondition, InvalidArgument

__all__ = ["PYRUNC_RUNTIME", "checkpoint_options"]

PYRUNC_RUNTIME: Final = "io.containerd.pyrunc.v2"
_RUNC_PREFIX: Final = "io.containerd.runc."

_BOOL: Final = frozenset({"open_tcp", "external_unix_sockets", "terminal", "file_locks",
                          "auto_dedup", "tcp_close", "tcp_skip_in_flight", "link_remap"})
_FIELDS: Final[Mapping[str, str]] = {
    "tcp-established": "open_tcp",
    "ext-unix-sk": "external_unix_sockets",
    "shell-job": "terminal",
    "file-locks": "file_locks",
    "empty-ns": "empty_namespaces",
    "manage-cgroups-mode": "cgroups_mode",
    "auto-dedup": "auto_dedup",
    "tcp-close": "tcp_close",
    "skip-in-flight": "tcp_skip_in_flight",
    "link-remap": "link_remap",
    "ghost-limit": "ghost_limit",
    "network-lock": "network_lock",
}
_RUNC_FIELDS: Final = frozenset({"open_tcp", "external_unix_sockets", "terminal", "file_locks",
                                 "empty_namespaces", "cgroups_mode"})
_ENDPOINT_OWNED: Final = frozenset({"image-path", "work-path", "leave-running", "pre-dump",
                                    "lazy-pages", "parent-path", "page-server", "track-mem"})
_INT: Final = re.compile(r"[0-9]+")


def _values(annotations: Mapping[str, str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for key in sorted(annotations):
        if not key.startswith(ANNOTATION_PREFIX):
            continue
        flag, text = key.removeprefix(ANNOTATION_PREFIX), annotations[key]
        if flag in _ENDPOINT_OWNED:
            raise InvalidArgument(f"pod annotation {key}: set by the CRI endpoint, not by pods")
        field = _FIELDS.get(flag)
        if field is None:
            raise InvalidArgument(f"pod annotation {key}: unknown checkpoint option; known: "
                                  + ", ".join(sorted(_FIELDS)))
        if field in _BOOL:
            if text not in ("true", "false"):
                raise InvalidArgument(f"pod annotation {key}: {text!r} is not true or false")
            if text == "true":
                values[field] = True
        elif field == "empty_namespaces":
            values[field] = [n.strip() for n in text.split(",") if n.strip()]
        elif field == "ghost_limit":
            if not _INT.fullmatch(text):
                raise InvalidArgument(f"pod annotation {key}: {text!r} is not a number of bytes")
            values[field] = int(text)
        else:
            values[field] = text
    return values


def checkpoint_options(runtime: str, annotations: Mapping[str, str], *, image_path: str,
                       work_path: str, containerd_major: int) -> AnyMessage:
    """The options Any for a leave-running dump into ``image_path`` (CRIU's logs and
    statistics into ``work_path``) of a container of ``runtime`` run by containerd
    ``containerd_major``.x, with the pod's flags.

    Raises:
        InvalidArgument: a malformed, unknown or endpoint-owned annotation.
        FailedPrecondition: the runtime cannot take the options asked for.
    """
    values = _values(annotations)
    if runtime == PYRUNC_RUNTIME and containerd_major < 2:
        return pack(checkpoint_pb2.CheckpointOptions(
            exit=False, image_path=image_path, work_path=work_path, **values))  # type: ignore[arg-type]
    if runtime == PYRUNC_RUNTIME or runtime.startswith(_RUNC_PREFIX):
        extra = sorted(set(values) - _RUNC_FIELDS)
        if extra:
            why = (f"containerd {containerd_major}.x passes only containerd.runc.v1."
                   "CheckpointOptions" if runtime == PYRUNC_RUNTIME else
                   f"runtime {runtime} takes containerd.runc.v1.CheckpointOptions")
            raise FailedPrecondition(
                f"{why}, which has no {', '.join(extra)}; asked for by the pod's "
                f"{ANNOTATION_PREFIX}* annotations")
        return pack(oci_pb2.CheckpointOptions(
            exit=False, image_path=image_path, work_path=work_path, **values))  # type: ignore[arg-type]
    raise FailedPrecondition(f"runtime {runtime}: unknown checkpoint options type; the CRI "
                             f"endpoint checkpoints io.containerd.pyrunc.v2 and "
                             f"io.containerd.runc.* containers")
