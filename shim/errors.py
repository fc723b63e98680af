"""Typed errors of the shim, raised deep with context and mapped to ttrpc status codes once.

Strategy: mirrors containerd's ``errdefs`` (errors.go / grpc.go). Deep code raises one of the
classes below (``raise NotFound(...) from exc``); only :func:`to_status` at the ttrpc boundary
turns any exception into a wire status. Matching on a tool's error text happens in one tested
helper per tool (see ``shim.runtime``), never here.

There is no ``Unavailable`` here: nothing the shim does answers UNAVAILABLE. A warm process
that cannot serve (:class:`shim.warm.Unavailable`) only makes the caller do the work itself
and never reaches containerd.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

from shim.ttrpc import Code, Status

__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "ShimError",
    "Unimplemented",
    "to_status",
    "with_context",
]

log = logging.getLogger(__name__)


class ShimError(Exception):
    """Base of every error the shim reports to containerd; ``code`` is its wire status."""

    code: ClassVar[Code] = Code.UNKNOWN


class NotFound(ShimError):
    code = Code.NOT_FOUND


class AlreadyExists(ShimError):
    code = Code.ALREADY_EXISTS


class FailedPrecondition(ShimError):
    code = Code.FAILED_PRECONDITION


class InvalidArgument(ShimError):
    code = Code.INVALID_ARGUMENT


class Unimplemented(ShimError):
    code = Code.UNIMPLEMENTED


class Internal(ShimError):
    code = Code.INTERNAL


_KINDS: tuple[type[ShimError], ...] = (
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    Unimplemented,
    Internal,
)


def with_context(exc: ShimError, message: str) -> ShimError:
    """A new error of ``exc``'s kind (the errdefs class it derives from, so the same wire
    code) saying ``message``; raise it ``from exc``. Unlike ``type(exc)(message)`` it works
    for every subclass, whatever its constructor takes.
    """
    kind = next((k for k in _KINDS if isinstance(exc, k)), ShimError)
    return kind(message)


def to_status(exc: BaseException) -> Status:
    """Map any exception raised by a handler to the status sent to containerd.

    Args:
        exc: what the handler raised.
    Returns:
        The status: a typed error's own code, DEADLINE_EXCEEDED for timeouts, CANCELLED for
        cancellation, UNKNOWN (logged with its traceback) for anything unexpected.
    """
    if isinstance(exc, ShimError):
        return Status(code=exc.code, message=str(exc))
    if isinstance(exc, TimeoutError):
        return Status(code=Code.DEADLINE_EXCEEDED, message=str(exc) or "deadline exceeded")
    if isinstance(exc, asyncio.CancelledError):
        return Status(code=Code.CANCELLED, message="cancelled")
    log.error("unexpected error in handler", exc_info=exc)
    return Status(code=Code.UNKNOWN, message=f"{type(exc).__name__}: {exc}")
