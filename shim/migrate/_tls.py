"""Where the agent listens and how the two sides authenticate.

Strategy: an agent address is ``unix:///PATH`` (or ``/PATH``: local, file permissions guard
it) or ``HOST:PORT`` (TCP). TCP is mutual TLS: both sides present a certificate signed by
the configured CA (PEM files given by path, :class:`TlsFiles`); plaintext TCP exists only
behind ``--insecure-tcp``, and the agent says so in its log. One home for the channel and
server credentials, used by both sides, and for the same files as CRIU's TLS options
(:func:`criu_tls_args`): a move over TCP with mutual TLS secures CRIU's page-server
connection with them too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ._errors import MigrateError

__all__ = ["TlsFiles", "channel", "criu_tls_args", "grpc_target", "is_unix",
           "server_credentials"]

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

    def absolute(self) -> TlsFiles:
        """The same files by absolute paths (CRIU, another process, reads them)."""
        return TlsFiles(cert=os.path.abspath(self.cert), key=os.path.abspath(self.key),
                        ca=os.path.abspath(self.ca))

    def read(self) -> tuple[bytes, bytes, bytes]:
        try:
            return (Path(self.cert).read_bytes(), Path(self.key).read_bytes(),
                    Path(self.ca).read_bytes())
        except OSError as exc:
            raise MigrateError(f"cannot read TLS files: {exc}") from None


def criu_tls_args(tls: TlsFiles, *, verify_name: bool) -> list[str]:
    """CRIU's options for TLS on its page-server connection with ``tls`` (``--tls
    --tls-cacert --tls-cert --tls-key``, absolute paths; CRIU's TLS is mutual: each end checks
    that the other's certificate is signed by the CA). Without ``verify_name``,
    ``--tls-no-cn-verify``: CRIU does not check that the peer's certificate names the address
    (a server checks its own listening address, and a source's client certificate names no
    address at all)."""
    files = tls.absolute()
    argv = ["--tls", "--tls-cacert", files.ca, "--tls-cert", files.cert, "--tls-key", files.key]
    return argv if verify_name else [*argv, "--tls-no-cn-verify"]


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
