"""The migration's errors, typed once.

Strategy: every failure of ``pyrunc migrate`` and ``pyrunc agent`` is one of these, raised
with context where it happens; the command line prints ``str(exc)`` on one line, the agent
maps them to a gRPC status in one place (:func:`shim.migrate._agent.status_of`).
"""

from __future__ import annotations

__all__ = ["ContainerdError", "MigrateError", "Refused", "TransferFailed"]


class MigrateError(Exception):
    """A migration failed; the message says where the container is."""


class Refused(MigrateError):
    """A check said no before anything was touched."""


class TransferFailed(MigrateError):
    """The destination could not take the container (the source runs on)."""


class ContainerdError(MigrateError):
    """A containerd call failed; ``code`` is the gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"containerd: {code}: {message}")
        self.code = code
