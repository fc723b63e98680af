# Strategy: the closed set of status codes a ttrpc call can end with.
#
# ttrpc reuses gRPC's google.rpc.Status and its code numbering (google.golang.org/grpc/codes,
# as used by containerd/ttrpc v1.1.1). Codes outside this set can still arrive on the wire;
# the codec keeps them as plain ints.
"""gRPC status codes used by ttrpc."""

from __future__ import annotations

import enum

__all__ = ["Code", "to_code"]


class Code(enum.IntEnum):
    """gRPC status codes (google.rpc.Code numbering)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


_BY_VALUE: dict[int, Code] = {c.value: c for c in Code}


def to_code(value: int) -> int:
    """Return the Code member for ``value`` if there is one, else ``value`` unchanged."""
    return _BY_VALUE.get(value, value)
