"""Errors of the ``pyrunc`` tool: one class, carrying the gRPC status it came from.

Strategy: every failed call to containerd becomes a :class:`CtlError` at the one place that
makes calls (``_client``); ``main`` prints it as one line and exits 1. The status details
(containerd's message, which includes the shim's message for errors the shim reported) are
kept verbatim; only line breaks are folded so the message stays on one line.
"""

from __future__ import annotations

__all__ = ["CtlError", "one_line"]


def one_line(text: str) -> str:
    """``text`` on one line: its non-blank lines, stripped, joined with ``"; "``."""
    lines = [line.strip() for line in text.splitlines()]
    return "; ".join(line for line in lines if line)


class CtlError(Exception):
    """A request to containerd failed (or could not be made).

    Attributes:
        code: the gRPC status code name (``"NOT_FOUND"``, ``"FAILED_PRECONDITION"``, ...), or
            ``"UNKNOWN"`` when no status is known.
        details: the status message, verbatim.
        context: what was being done, e.g. ``"cannot reach containerd at /run/x.sock"``; ""
            when the details speak for themselves.
    """

    def __init__(self, code: str, details: str, context: str = "") -> None:
        super().__init__(code, details, context)
        self.code = code
        self.details = details
        self.context = context

    def __str__(self) -> str:
        text = one_line(self.details) or self.code.lower().replace("_", " ")
        return f"{self.context}: {text}" if self.context else text
