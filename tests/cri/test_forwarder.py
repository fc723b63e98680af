"""shim.cri._proxy.Forwarder against an in-process fake containerd CRI (grpcio, loopback).

The fake answers with bytes no encoder would write for the request it got (a field the CRI
proto lacks, fields out of order), so a forwarder that decoded and re-encoded would change them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from shim.cri._proxy import Forwarder

UNKNOWN_FIELD_BYTES = b"\xfa\x3e\x03abc"  # field 999, length-delimited: unknown to CRI
REVERSED = b"\x12\x05v1234\x0a\x020x"  # VersionResponse fields 2 then 1: out of order


class _Fake(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes, dict[str, str], float | None]] = []

    def service(self, details: Any) -> grpc.RpcMethodHandler | None:
        method = details.method
        if method.endswith("/GetContainerEvents"):
            return grpc.unary_stream_rpc_method_handler(self._events)
        return grpc.unary_unary_rpc_method_handler(lambda req, ctx: self._unary(method, req, ctx))

    def _unary(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.seen.append((method, request, md, context.time_remaining()))
        if method.endswith("/ContainerStatus"):
            context.set_trailing_metadata((("x-why", "gone"),))
            context.abort(grpc.StatusCode.NOT_FOUND, "an error occurred when try to find "
                          "container \"nope\": not found")
        if method.endswith("/Version"):
            return REVERSED
        return request + UNKNOWN_FIELD_BYTES

    def _events(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"\x0a\x01a"
        yield b"\x0a\x01b"
        context.abort(grpc.StatusCode.UNAVAILABLE, "stream over")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[str, _Fake]]:
    fake = _Fake()
    upstream = grpc.server(futures.ThreadPoolExecutor(4), handlers=[fake])
    upstream.add_insecure_port(f"unix://{tmp_path}/up.sock")
    upstream.start()
    channel = grpc.insecure_channel(f"unix://{tmp_path}/up.sock")
    proxy = grpc.server(futures.ThreadPoolExecutor(4), handlers=[Forwarder(channel)])
    proxy.add_insecure_port(f"unix://{tmp_path}/proxy.sock")
    proxy.start()
    try:
        yield f"unix://{tmp_path}/proxy.sock", fake
    finally:
        proxy.stop(0).wait()
        channel.close()
        upstream.stop(0).wait()


def test_bytes_metadata_and_deadline_pass(pair: tuple[str, _Fake]) -> None:
    uri, fake = pair
    with grpc.insecure_channel(uri) as ch:
        request = b"\x0a\x04abcd" + UNKNOWN_FIELD_BYTES
        answer = ch.unary_unary("/runtime.v1.RuntimeService/ListContainers")(
            request, timeout=7, metadata=(("x-trace", "42"),))
        version = ch.unary_unary("/runtime.v1.RuntimeService/Version")(b"", timeout=5)
    assert answer == request + UNKNOWN_FIELD_BYTES
    assert version == REVERSED
    method, seen, md, remaining = fake.seen[0]
    assert method == "/runtime.v1.RuntimeService/ListContainers"
    assert seen == request
    assert md.get("x-trace") == "42"
    assert remaining is not None and 5 < remaining <= 7.5  # grpc rounds the timeout up


def test_status_details_and_trailers_come_back(pair: tuple[str, _Fake]) -> None:
    uri, _ = pair
    with grpc.insecure_channel(uri) as ch, pytest.raises(grpc.RpcError) as info:
        ch.unary_unary("/runtime.v1.RuntimeService/ContainerStatus")(b"", timeout=5)
    err = info.value
    assert err.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert err.details() == 'an error occurred when try to find container "nope": not found'  # type: ignore[attr-defined]
    assert ("x-why", "gone") in tuple(err.trailing_metadata())  # type: ignore[attr-defined]


def test_server_streaming_passes(pair: tuple[str, _Fake]) -> None:
    uri, _ = pair
    got: list[bytes] = []
    with grpc.insecure_channel(uri) as ch:
        stream = ch.unary_stream("/runtime.v1.RuntimeService/GetContainerEvents")(b"", timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            for item in stream:
                got.append(item)
    assert got == [b"\x0a\x01a", b"\x0a\x01b"]
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_other_services_are_not_forwarded(pair: tuple[str, _Fake]) -> None:
    uri, fake = pair
    with grpc.insecure_channel(uri) as ch, pytest.raises(grpc.RpcError) as info:
        ch.unary_unary("/containerd.services.tasks.v1.Tasks/List")(b"", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    assert fake.seen == []


def test_caller_cancel_reaches_upstream(tmp_path: Path) -> None:
    started, cancelled = threading.Event(), threading.Event()

    class Slow(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> grpc.RpcMethodHandler:
            def handle(req: bytes, ctx: grpc.ServicerContext) -> bytes:
                ctx.add_callback(cancelled.set)
                started.set()
                cancelled.wait(10)
                return b""
            return grpc.unary_unary_rpc_method_handler(handle)

    upstream = grpc.server(futures.ThreadPoolExecutor(2), handlers=[Slow()])
    upstream.add_insecure_port(f"unix://{tmp_path}/up.sock")
    upstream.start()
    channel = grpc.insecure_channel(f"unix://{tmp_path}/up.sock")
    proxy = grpc.server(futures.ThreadPoolExecutor(2), handlers=[Forwarder(channel)])
    proxy.add_insecure_port(f"unix://{tmp_path}/proxy.sock")
    proxy.start()
    try:
        with grpc.insecure_channel(f"unix://{tmp_path}/proxy.sock") as ch:
            future = ch.unary_unary("/runtime.v1.ImageService/PullImage").future(b"", timeout=30)
            assert started.wait(10)
            future.cancel()
            assert cancelled.wait(10)
    finally:
        proxy.stop(0).wait()
        channel.close()
        upstream.stop(0).wait()
