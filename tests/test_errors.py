"""shim.errors: every error kind maps to its wire code once (to_status), and context wraps an
error in its kind whatever its class's constructor takes (with_context)."""

from __future__ import annotations

import asyncio

import pytest

from shim.checkpoint.criu import CriuExited, CriuProtocolError, CriuRequestFailed, ReqType
from shim.checkpoint.network import NetworkError
from shim.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ShimError,
    Unimplemented,
    to_status,
    with_context,
)
from shim.state import TransitionError
from shim.ttrpc import Code

# -- to_status ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NotFound("x"), Code.NOT_FOUND),
        (AlreadyExists("x"), Code.ALREADY_EXISTS),
        (FailedPrecondition("x"), Code.FAILED_PRECONDITION),
        (InvalidArgument("x"), Code.INVALID_ARGUMENT),
        (Unimplemented("x"), Code.UNIMPLEMENTED),
        (Internal("x"), Code.INTERNAL),
        (TransitionError("x"), Code.INTERNAL),
        (ShimError("x"), Code.UNKNOWN),
    ],
)
def test_to_status_of_typed_errors(exc: ShimError, code: Code) -> None:
    status = to_status(exc)
    assert (status.code, status.message) == (code, "x")


def test_to_status_of_other_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    assert to_status(TimeoutError()).code == Code.DEADLINE_EXCEEDED
    assert to_status(TimeoutError()).message == "deadline exceeded"
    assert to_status(TimeoutError("runc took too long")).message == "runc took too long"
    assert to_status(asyncio.CancelledError()).code == Code.CANCELLED
    assert caplog.records == []
    status = to_status(ValueError("boom"))
    assert (status.code, status.message) == (Code.UNKNOWN, "ValueError: boom")
    assert [r.exc_info is not None for r in caplog.records] == [True]  # logged with traceback



# -- with_context ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (NotFound("gone"), NotFound),
        (AlreadyExists("there"), AlreadyExists),
        (InvalidArgument("bad"), InvalidArgument),
        (Unimplemented("no"), Unimplemented),
        (ShimError("runc checkpoint failed: x"), ShimError),
        (TransitionError("bug"), Internal),
        (NetworkError("veth taken"), FailedPrecondition),
        (CriuRequestFailed(ReqType.DUMP, 3, "No such process", "/b/dump.log"), Internal),
        (CriuExited(ReqType.RESTORE, 9, "killed"), Internal),
        (CriuProtocolError("short packet"), Internal),
    ],
)
def test_with_context_keeps_the_kind_and_the_code(exc: ShimError, kind: type[ShimError]) -> None:
    """type(exc)(message) would need each class's own arguments (CriuRequestFailed takes the
    request, errno, message and log); the kind takes a message and has the same code."""
    try:
        try:
            raise exc
        except ShimError as inner:
            raise with_context(inner, f"restore failed: {inner} (log kept)") from inner
    except ShimError as outer:
        assert type(outer) is kind
        assert outer.__cause__ is exc
        assert str(outer) == f"restore failed: {exc} (log kept)"
        assert to_status(outer).code == to_status(exc).code
