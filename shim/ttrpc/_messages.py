# Strategy: the ttrpc envelope messages as plain values.
#
# These mirror package `ttrpc` (request.proto in containerd/ttrpc) and google.rpc.Status:
#   Request  {service=1 string, method=2 string, payload=3 bytes, timeout_nano=4 int64,
#             metadata=5 repeated KeyValue{key=1 string, value=2 string}}
#   Response {status=1 google.rpc.Status, payload=2 bytes}
#   Status   {code=1 int32, message=2 string, details=3 repeated google.protobuf.Any}
# They are frozen, slotted dataclasses that check their own integer ranges. Metadata is a
# tuple of (key, value) pairs (a key may repeat); Status details stay serialized Any bytes.
# Converting to and from bytes is _wire.py's job.
"""ttrpc envelope messages: Request, Response, Status."""

from __future__ import annotations

from dataclasses import dataclass

from ._status import Code

__all__ = ["Metadata", "Request", "Response", "Status"]

#: Request metadata as (key, value) pairs, in wire order; keys may repeat.
Metadata = tuple[tuple[str, str], ...]

_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Status:
    """google.rpc.Status.

    Attributes:
        code: the status code; a Code member when known, any int32 otherwise.
        message: human-readable error text.
        details: serialized google.protobuf.Any messages, kept opaque.
    """

    code: int = Code.OK
    message: str = ""
    details: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if not _INT32_MIN <= self.code <= _INT32_MAX:
            raise ValueError(f"status code {self.code} does not fit in int32")

    @property
    def ok(self) -> bool:
        """True when the code is OK."""
        return self.code == 0


@dataclass(frozen=True, slots=True)
class Request:
    """ttrpc.Request: one call.

    Attributes:
        service: fully qualified service name, e.g. ``containerd.task.v2.Task``.
        method: method name, e.g. ``State``.
        payload: the serialized request message.
        timeout_nano: the caller's remaining time in nanoseconds; 0 means no deadline.
        metadata: (key, value) pairs; keys may repeat.
    """

    service: str = ""
    method: str = ""
    payload: bytes = b""
    timeout_nano: int = 0
    metadata: Metadata = ()

    def __post_init__(self) -> None:
        if not _INT64_MIN <= self.timeout_nano <= _INT64_MAX:
            raise ValueError(f"timeout_nano {self.timeout_nano} does not fit in int64")


@dataclass(frozen=True, slots=True)
class Response:
    """ttrpc.Response: the answer to one call.

    Attributes:
        status: the call's status; None when the field is absent on the wire (which a
            client reads as OK). A Go server always sends it, with code 0 on success.
        payload: the serialized response message (empty on error).
    """

    status: Status | None = None
    payload: bytes = b""
