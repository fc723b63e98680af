"""Forwarding of every CRI method the endpoint does not implement to containerd's CRI.

Strategy: one :class:`grpc.GenericRpcHandler` answers any method of ``runtime.v1``'s
RuntimeService and ImageService with identity (de)serializers, so requests and responses pass
as the bytes they are: nothing is decoded or re-encoded, and fields this build does not know
survive. Whether a method streams its responses is read from the compiled CRI descriptor
(GetContainerEvents, and whatever a newer api.proto adds); a method the descriptor does not
know is forwarded as unary. The caller's metadata (less transport headers) and its remaining
deadline go with the call; containerd's status code, details and trailing metadata (with
``grpc-status-details-bin``) come back; a caller that goes away cancels the forwarded call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

import grpc

from shim.api.k8s.cri.runtime.v1 import api_pb2

__all__ = ["FORWARDED_SERVICES", "NO_DEADLINE", "Forwarder", "streaming_methods"]

FORWARDED_SERVICES = ("runtime.v1.RuntimeService", "runtime.v1.ImageService")
NO_DEADLINE: Final = 365 * 86400.0
"""Seconds: grpcio reports a call without a deadline as a huge time remaining, which, passed on
as a timeout, expires at once; more than this left counts as no deadline."""
_DROP_HEADERS = frozenset({"user-agent", "te", "content-type", "grpc-timeout",
                           "grpc-accept-encoding", "grpc-encoding"})


def streaming_methods() -> frozenset[str]:
    """``/service/Method`` of every server-streaming CRI method in the compiled descriptor."""
    found = set()
    for name in FORWARDED_SERVICES:
        service = api_pb2.DESCRIPTOR.services_by_name[name.rsplit(".", 1)[-1]]
        for m in service.methods:
            if m.client_streaming:
                raise AssertionError(f"{name}/{m.name} streams requests; not forwarded")
            if m.server_streaming:
                found.add(f"/{name}/{m.name}")
    return frozenset(found)


def _metadata(context: grpc.ServicerContext) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in context.invocation_metadata()
            if k not in _DROP_HEADERS and not k.startswith(":")]


def _timeout(context: grpc.ServicerContext) -> float | None:
    remaining: float | None = context.time_remaining()
    if remaining is None or remaining > NO_DEADLINE:  # the caller set no deadline
        return None
    return max(remaining, 0.0)


def _abort(context: grpc.ServicerContext, exc: grpc.RpcError) -> None:
    trailing = exc.trailing_metadata() if isinstance(exc, grpc.Call) else None
    if trailing:
        context.set_trailing_metadata(tuple(trailing))
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    context.abort(code, details or "")


class Forwarder(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Forwards CRI calls to ``channel`` (containerd's socket), byte for byte."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self._streaming = streaming_methods()

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        service = method[1:].split("/", 1)[0] if method.startswith("/") else ""
        if service not in FORWARDED_SERVICES:
            return None
        if method in self._streaming:
            return grpc.unary_stream_rpc_method_handler(self._stream(method))
        return grpc.unary_unary_rpc_method_handler(self.unary(method))

    def unary(self, method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        """The forwarding handler of unary ``method`` (also for a handler that forwards only
        some of its calls)."""
        call = self._channel.unary_unary(method)

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            future = call.future(request, timeout=_timeout(context), metadata=_metadata(context))
            if not context.add_callback(future.cancel):  # the caller is already gone
                future.cancel()
            try:
                response: bytes = future.result()
            except grpc.RpcError as exc:
                _abort(context, exc)
                raise  # not reached: abort raises
            except grpc.FutureCancelledError:
                context.abort(grpc.StatusCode.CANCELLED, "cancelled by the caller")
            initial = future.initial_metadata()
            if initial:
                context.send_initial_metadata(tuple(initial))
            trailing = future.trailing_metadata()
            if trailing:
                context.set_trailing_metadata(tuple(trailing))
            return response

        return forward

    def _stream(self, method: str) -> Callable[[bytes, grpc.ServicerContext], Iterator[bytes]]:
        call = self._channel.unary_stream(method)

        def forward(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            responses = call(request, timeout=_timeout(context), metadata=_metadata(context))
            if not context.add_callback(responses.cancel):  # the caller is already gone
                responses.cancel()
            try:
                yield from responses
            except grpc.RpcError as exc:
                if context.is_active():
                    _abort(context, exc)
                return
            trailing = responses.trailing_metadata()
            if trailing:
                context.set_trailing_metadata(tuple(trailing))

        return forward
