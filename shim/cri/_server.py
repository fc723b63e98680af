"""``pyrunc cri serve``: the CRI endpoint kubelet talks to, in front of containerd's CRI.

Strategy: one grpcio server on a unix socket. Its first handler serves the methods the endpoint
implements itself (CheckpointContainer) and maps :class:`~shim.cri._errors.CriError` to a
status here, once; everything else of RuntimeService and ImageService goes to the
:class:`~shim.cri._proxy.Forwarder`, byte for byte. SIGTERM or SIGINT stop it (calls in flight
get a few seconds), and the socket file is removed.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError

from shim.api.k8s.cri.runtime.v1 import api_pb2
from shim.warm import socket_is_live

from ._checkpoint import Checkpointer, CheckpointSettings
from ._containerd import Containerd
from ._errors import CriError
from ._proxy import Forwarder
from ._restore import Restorer

__all__ = ["CHECKPOINT_METHOD", "CREATE_METHOD", "REMOVE_METHOD", "ServeConfig", "serve"]

CHECKPOINT_METHOD: Final = "/runtime.v1.RuntimeService/CheckpointContainer"
CREATE_METHOD: Final = "/runtime.v1.RuntimeService/CreateContainer"
REMOVE_METHOD: Final = "/runtime.v1.RuntimeService/RemoveContainer"
_WORKERS: Final = 64
_GRACE: Final = 5.0
_MAX_MESSAGE: Final = 16 << 20  # kubelet's CRI client limit

log = logging.getLogger("pyrunc.cri")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """``pyrunc cri serve`` options."""

    listen: str  # unix:///path
    containerd: str  # unix:///path of containerd's gRPC socket (its CRI is served there)
    namespace: str = "k8s.io"
    work_dir: Path = Path("/var/lib/containerd-shim-pyrunc/cri")
    criu: str = "criu"


class _Own(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The methods the endpoint answers itself: CheckpointContainer; CreateContainer from a
    checkpoint (any other is forwarded as the bytes it came as); RemoveContainer (forwarded,
    then the container's unpacked checkpoint goes)."""

    def __init__(self, checkpointer: Checkpointer, restorer: Restorer,
                 forwarder: Forwarder) -> None:
        self._checkpointer = checkpointer
        self._restorer = restorer
        self._create_upstream = forwarder.unary(CREATE_METHOD)
        self._remove_upstream = forwarder.unary(REMOVE_METHOD)

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method == CREATE_METHOD:
            return grpc.unary_unary_rpc_method_handler(self._create)
        if method == REMOVE_METHOD:
            return grpc.unary_unary_rpc_method_handler(self._remove)
        if method != CHECKPOINT_METHOD:
            return None
        return grpc.unary_unary_rpc_method_handler(
            self._checkpoint,
            request_deserializer=api_pb2.CheckpointContainerRequest.FromString,
            response_serializer=api_pb2.CheckpointContainerResponse.SerializeToString,
        )

    def _create(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            request = api_pb2.CreateContainerRequest.FromString(raw)
        except DecodeError:
            return self._create_upstream(raw, context)  # containerd says what is wrong
        try:
            response = self._restorer.create(request, context.time_remaining())
        except CriError as exc:
            log.warning("CreateContainer from %s: %s", request.config.image.image, exc)
            context.abort(exc.code, str(exc))
        except Exception as exc:
            log.exception("CreateContainer from %s failed", request.config.image.image)
            context.abort(grpc.StatusCode.UNKNOWN, f"restore failed: {exc}")
        if response is None:
            return self._create_upstream(raw, context)
        data: bytes = response.SerializeToString()
        return data

    def _remove(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            cid = api_pb2.RemoveContainerRequest.FromString(raw).container_id
        except DecodeError:
            cid = ""
        unpacked = self._restorer.checkpoint_dir(cid) if cid else None
        answer = self._remove_upstream(raw, context)  # raises (aborts) if containerd refused
        self._restorer.removed(unpacked)
        return answer

    def _checkpoint(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            self._checkpointer.checkpoint(request, context.time_remaining())
        except CriError as exc:
            log.warning("CheckpointContainer %s: %s", request.container_id, exc)
            context.abort(exc.code, str(exc))
        except Exception as exc:
            log.exception("CheckpointContainer %s failed", request.container_id)
            context.abort(grpc.StatusCode.UNKNOWN, f"checkpoint failed: {exc}")
        return api_pb2.CheckpointContainerResponse()


def _socket_path(listen: str) -> Path:
    if not listen.startswith("unix://"):
        raise ValueError(f"--listen {listen!r}: only unix:///path is supported")
    return Path(listen.removeprefix("unix://"))


def serve(config: ServeConfig, ready: threading.Event | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status."""
    path = _socket_path(config.listen)
    path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    if path.is_socket():
        if socket_is_live(path):
            raise OSError(errno.EADDRINUSE, f"{path}: another endpoint is serving there")
        path.unlink(missing_ok=True)  # left by an endpoint that is gone
    options = [("grpc.max_receive_message_length", _MAX_MESSAGE),
               ("grpc.max_send_message_length", _MAX_MESSAGE)]
    upstream = grpc.insecure_channel(config.containerd, options=options)
    containerd = Containerd(upstream, config.namespace)
    checkpointer = Checkpointer(containerd,
                                CheckpointSettings(work_dir=config.work_dir, criu=config.criu))
    forwarder = Forwarder(upstream)
    own = _Own(checkpointer, Restorer(containerd, config.work_dir), forwarder)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=_WORKERS), options=options,
                         handlers=[own, forwarder])
    old_umask = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix://{path}")
        server.start()
    finally:
        os.umask(old_umask)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    log.info("serving CRI on %s, forwarding to %s", config.listen, config.containerd)
    if ready is not None:
        ready.set()
    try:
        stop.wait()
    finally:
        server.stop(_GRACE).wait()
        upstream.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
        path.unlink(missing_ok=True)
    return 0
