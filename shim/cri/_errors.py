"""The CRI endpoint's errors: typed once here, mapped to gRPC status codes once (``code``).

Strategy: deep code raises one of these with context; :mod:`shim.cri._server` turns it into
the status kubelet sees (``context.abort(err.code, str(err))``). An error containerd returned
is carried as :class:`Upstream`, which keeps containerd's own code and message.
"""

from __future__ import annotations

import grpc

__all__ = [
    "CRIU_UNSUPPORTED",
    "CriError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "Unsupported",
    "Upstream",
]

CRIU_UNSUPPORTED = "CRIU binary not found or too old (<31600). Failed to checkpoint container"
"""The text kubelet's e2e test treats as "checkpointing not supported" (with code Unknown)."""


class CriError(Exception):
    """Base class; ``code`` is the gRPC status the caller gets."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class NotFound(CriError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(CriError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class InvalidArgument(CriError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(CriError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(CriError):
    code = grpc.StatusCode.INTERNAL


class Unsupported(CriError):
    """Checkpointing is not possible on this node (CRIU missing or too old)."""

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, reason: str = "") -> None:
        super().__init__(CRIU_UNSUPPORTED + (f" ({reason})" if reason else ""))


class Upstream(CriError):
    """containerd (or its CRI) refused; its code and message are kept verbatim."""

    def __init__(self, code: grpc.StatusCode, details: str, what: str = "") -> None:
        super().__init__(f"{what}: {details}" if what else details)
        self.code = code
        self.details = details

    @classmethod
    def from_rpc(cls, exc: grpc.RpcError, what: str = "") -> Upstream:
        """Wrap a ``grpc.RpcError`` from a call to containerd."""
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return cls(code or grpc.StatusCode.UNKNOWN, str(details or ""), what)
