"""The OCI runtime (runc, crun) driven through its command line."""

from shim.runtime._runc import Runc, RuntimeConfig, Stdio, classify_error, last_log_error

__all__ = ["Runc", "RuntimeConfig", "Stdio", "classify_error", "last_log_error"]
