"""``google.protobuf.Any`` the way containerd 1.6 (typeurl v1) writes them.

Strategy: containerd registers types under their **bare** full name (no
``type.googleapis.com/`` prefix) and looks them up by exact match, so :func:`pack` sets
``type_url`` by hand. A few types are JSON in an Any (OCI spec structs); their URLs are here.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.any_pb2 import Any
from google.protobuf.message import DecodeError, Message

from shim.errors import InvalidArgument

__all__ = ["OCI_PROCESS", "OCI_RESOURCES", "OCI_SPEC", "pack", "type_name", "unpack"]

OCI_PROCESS = "types.containerd.io/opencontainers/runtime-spec/1/Process"
OCI_RESOURCES = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
OCI_SPEC = "types.containerd.io/opencontainers/runtime-spec/1/Spec"

M = TypeVar("M", bound=Message)


def pack(message: Message) -> Any:
    """Wrap ``message`` in an Any whose type URL is its bare full name."""
    return Any(type_url=message.DESCRIPTOR.full_name, value=message.SerializeToString())


def type_name(any_: Any) -> str:
    """The full message name of an Any, with or without a ``.../`` prefix."""
    url: str = any_.type_url
    return url.rsplit("/", 1)[-1]


def unpack(any_: Any, cls: type[M]) -> M | None:
    """Decode ``any_`` as ``cls`` if that is its type, else return None.

    Raises:
        InvalidArgument: the type matches but the bytes do not decode.
    """
    if not any_.type_url or type_name(any_) != cls.DESCRIPTOR.full_name:
        return None
    msg: M = cls()
    try:
        msg.ParseFromString(any_.value)
    except DecodeError as exc:
        raise InvalidArgument(f"cannot decode {any_.type_url}: {exc}") from exc
    return msg

