"""CRIU's RPC interface (``criu swrk``) and what CRIU and the host can do.

Strategy: mirrors runc ``libcontainer/container_linux.go`` (``criuSwrk``, ``checkCriuFeatures``,
``checkCriuVersion``) and go-criu ``main.go``. One module per concept, top to bottom:

* ``_capabilities``: :func:`ensure_capable` / :func:`probe` (VERSION and FEATURE_CHECK, cached
  per binary) against :class:`Requirements`, with the host's facts; the rules are the pure
  :func:`unmet_requirements`;
* ``_client``: :class:`Criu`, one ``criu swrk`` per call through the one reaper;
* ``_codec``: the messages, sans-IO (requests to bytes, bytes to :class:`CriuResponse`) and the
  typed errors of a conversation;
* ``_log``: :func:`log_reason`, what CRIU's log says went wrong.

This package re-exports their public names; the rest is private.
"""

from shim.checkpoint.criu._capabilities import (
    LAZY_PAGES_PIPE_SIZE,
    CriuCapabilities,
    HostFacts,
    Requirements,
    clear_capability_cache,
    criu_binary,
    ensure_capable,
    parse_cap_eff,
    probe,
    read_host_facts,
    unmet_requirements,
)
from shim.checkpoint.criu._client import (
    DEFAULT_TIMEOUT,
    Criu,
    NotifyHandler,
)
from shim.checkpoint.criu._codec import (
    MAX_PACKET,
    CriuError,
    CriuExited,
    CriuFeatures,
    CriuProtocolError,
    CriuRequestFailed,
    CriuResponse,
    CriuVersion,
    Notification,
    ReqType,
    check_response,
    decode_response,
    encode_notify_reply,
    encode_request,
    format_version,
)
from shim.checkpoint.criu._log import (
    log_reason,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "LAZY_PAGES_PIPE_SIZE",
    "MAX_PACKET",
    "Criu",
    "CriuCapabilities",
    "CriuError",
    "CriuExited",
    "CriuFeatures",
    "CriuProtocolError",
    "CriuRequestFailed",
    "CriuResponse",
    "CriuVersion",
    "HostFacts",
    "Notification",
    "NotifyHandler",
    "ReqType",
    "Requirements",
    "check_response",
    "clear_capability_cache",
    "criu_binary",
    "decode_response",
    "encode_notify_reply",
    "encode_request",
    "ensure_capable",
    "format_version",
    "log_reason",
    "parse_cap_eff",
    "probe",
    "read_host_facts",
    "unmet_requirements",
]
