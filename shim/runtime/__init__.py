"""The OCI runtime (runc, crun) driven through its command line."""

from shim.runtime._runc import (
    CreateOpts,
    RestoreOpts,
    Runc,
    Runtime,
    RuntimeConfig,
    Stdio,
    classify_error,
    criu_timeout,
    last_log_error,
)

__all__ = [
    "CreateOpts",
    "RestoreOpts",
    "Runc",
    "Runtime",
    "RuntimeConfig",
    "Stdio",
    "classify_error",
    "criu_timeout",
    "last_log_error",
]
