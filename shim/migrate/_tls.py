"""Where the agent listens and how the two sides authenticate.

Strategy: an agent address is ``unix:///PATH`` (or ``/PATH``: local, file permissions guard
it) or ``HOST:PORT`` (TCP). TCP is mutual TLS: both sides present a certificate signed by
the configured CA (PEM files given by path, :class:`TlsFiles`); plaintext TCP exists only
behind ``--insecure-tcp``, and the agent says so in its log. One home for the channel and
server credentials, used by both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ._errors import MigrateError

__all__ = ["TlsFiles", "channel", "grpc_target", "is_unix", "server_credentials"]

_OPTIONS = [
    ("grpc.max_send_message_length", 8 << 20),
    ("grpc.max_receive_message_length", 8 << 20),
]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: this side's certificate and key, and the CA that signs the peer's."""

    cert: str
    key: str
    ca: str

    def read(self) -> tuple[bytes, bytes, bytes]:
        try:
            return (Path(self.cert).read_bytes(), Path(self.key).read_bytes(),
                    Path(self.ca).read_bytes())
        except OSError as exc:
            raise MigrateError(f"cannot read TLS files: {exc}") from None


def is_unix(address: str) -> bool:
    return address.startswith(("unix://", "/"))


def grpc_target(address: str) -> str:
    if address.startswith("/"):
        return f"unix://{address}"
    return address


def server_credentials(tls: TlsFiles) -> Any:
    """Server credentials that require a client certificate signed by ``tls.ca``."""
    cert, key, ca = tls.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=True)


def channel(address: str, tls: TlsFiles | None, *, insecure_tcp: bool = False) -> Any:
    """A channel to the agent at ``address``.

    Raises:
        MigrateError: TCP without TLS files and without ``insecure_tcp``.
    """
    if is_unix(address):
        return grpc.insecure_channel(grpc_target(address), options=_OPTIONS)
    if tls is None:
        if not insecure_tcp:
            raise MigrateError(f"{address} is TCP: give --tls-cert, --tls-key and --tls-ca "
                               "(mutual TLS), or --insecure-tcp")
        return grpc.insecure_channel(address, options=_OPTIONS)
    cert, key, ca = tls.read()
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                         certificate_chain=cert)
    return grpc.secure_channel(address, creds, options=_OPTIONS)
