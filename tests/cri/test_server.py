"""``pyrunc cri serve``'s socket: a live endpoint's is never taken over (serving itself is
integration-tested)."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest

from shim.cri._server import ServeConfig, serve


def test_a_socket_another_endpoint_serves_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "cri.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        other.listen(1)
        config = ServeConfig(listen=f"unix://{path}", containerd=f"unix://{tmp_path}/c.sock")
        with pytest.raises(OSError) as raised:
            serve(config)
        assert raised.value.errno == errno.EADDRINUSE
        assert path.is_socket()
