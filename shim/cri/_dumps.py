"""The metadata documents of a checkpoint archive, in containerd 2.x's formats.

Strategy: pure functions from what CRI and containerd report to bytes:

* ``config.dump`` - checkpointctl's ContainerConfig: ``id, name, rootfsImage, rootfsImageRef,
  rootfsImageName, runtime, createdTime, checkpointedTime, restoredTime, restored``, times in
  Go's RFC3339Nano (UTC, trailing zeros of the fraction dropped, zero time
  ``0001-01-01T00:00:00Z``), compact JSON in that field order;
* ``status.dump`` - the CRI ContainerStatus as Go's encoding/json writes the generated struct:
  proto field names, enums as numbers, 64-bit integers as numbers, empty values left out;
* ``status`` - containerd's CRI container status record (``Version, Pid, CreatedAt,
  StartedAt, FinishedAt, ExitCode, Reason, Message, Resources, Restore``);
* ``spec.dump`` is the spec as containerd stores it, unchanged (not built here).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

__all__ = ["ZERO_TIME", "config_dump", "container_name", "go_json", "rfc3339nano",
           "status_dump", "status_record"]

ZERO_TIME: Final = "0001-01-01T00:00:00Z"
_INT64: Final = frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64,
                           FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED64,
                           FieldDescriptor.TYPE_SFIXED64})


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def rfc3339nano(ns: int) -> str:
    """Go's ``time.RFC3339Nano`` of a Unix time in nanoseconds, in UTC."""
    import datetime

    if ns <= 0:
        return ZERO_TIME
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    text = stamp.strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac:09d}".rstrip("0")
    return f"{text}.{digits}Z" if digits else f"{text}Z"


def _fix_ints(msg: Message, value: dict[str, Any]) -> dict[str, Any]:
    """json_format writes 64-bit integers as strings; Go writes numbers."""
    for field in msg.DESCRIPTOR.fields:
        name = field.name
        if name not in value:
            continue
        is_map = (field.type == FieldDescriptor.TYPE_MESSAGE
                  and field.message_type.GetOptions().map_entry)
        if field.type in _INT64:
            if field.is_repeated:
                value[name] = [int(v) for v in value[name]]
            else:
                value[name] = int(value[name])
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not is_map:
            sub = getattr(msg, name)
            if field.is_repeated:
                value[name] = [_fix_ints(m, v) for m, v in zip(sub, value[name], strict=True)]
            else:
                value[name] = _fix_ints(sub, value[name])
    return value


def go_json(msg: Message) -> dict[str, Any]:
    """``msg`` as Go's encoding/json writes the generated struct (see the module doc)."""
    value = json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                      use_integers_for_enums=True)
    return _fix_ints(msg, value)


def container_name(status: Any, pod: Any) -> str:
    """containerd CRI's internal container name: ``<name>_<pod>_<namespace>_<uid>_<attempt>``."""
    m, p = status.metadata, pod.metadata
    return f"{m.name}_{p.name}_{p.namespace}_{p.uid}_{m.attempt}"


def config_dump(*, status: Any, pod: Any, runtime: str, checkpointed_ns: int) -> bytes:
    """``config.dump`` for container ``status`` (CRI ContainerStatus) of ``pod``."""
    return _compact({
        "id": status.id,
        "name": container_name(status, pod),
        "rootfsImage": status.image.image,
        "rootfsImageRef": status.image_ref,
        "rootfsImageName": status.image.image,
        "runtime": runtime,
        "createdTime": rfc3339nano(int(status.created_at)),
        "checkpointedTime": rfc3339nano(checkpointed_ns),
        "restoredTime": ZERO_TIME,
        "restored": False,
    })


def status_dump(status: Message) -> bytes:
    """``status.dump``: the CRI ContainerStatus."""
    return _compact(go_json(status))


def status_record(status: Any, pid: int) -> bytes:
    """``status``: containerd's CRI status record of a running container."""
    resources: Mapping[str, Any] = (go_json(status.resources)
                                    if status.HasField("resources") else {})
    return _compact({
        "Version": "v1",
        "Pid": pid,
        "CreatedAt": int(status.created_at),
        "StartedAt": int(status.started_at),
        "FinishedAt": int(status.finished_at),
        "ExitCode": int(status.exit_code),
        "Reason": status.reason,
        "Message": status.message,
        "Resources": resources,
        "Restore": False,
    })
