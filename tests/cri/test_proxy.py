"""shim.cri._proxy: which CRI methods stream, and that the shim daemon never loads grpc."""

from __future__ import annotations

import subprocess
import sys

from shim.cri._proxy import FORWARDED_SERVICES, streaming_methods
from shim.cri._server import CHECKPOINT_METHOD


def test_streaming_methods_from_the_descriptor() -> None:
    found = streaming_methods()
    assert "/runtime.v1.RuntimeService/GetContainerEvents" in found
    assert "/runtime.v1.RuntimeService/Version" not in found
    assert all(m.split("/")[1] in FORWARDED_SERVICES for m in found)


def test_checkpoint_method_exists_in_cri() -> None:
    from shim.api.k8s.cri.runtime.v1 import api_pb2

    service = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"]
    assert f"/{service.full_name}/CheckpointContainer" == CHECKPOINT_METHOD


def test_daemon_modules_do_not_import_grpc_or_cri() -> None:
    code = ("import sys, shim.daemon, shim.service, shim.cli; "
            "print(sorted(m for m in sys.modules if m == 'grpc' or m.startswith('shim.cri')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
