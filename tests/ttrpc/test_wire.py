"""The protobuf envelope codec: golden bytes, cross-checks with protoc's code, malformed input."""

from __future__ import annotations

import contextlib

import pytest
from google.protobuf.message import DecodeError as PbDecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shim.api.google.rpc import status_pb2
from shim.api.ttrpc import ttrpc_pb2
from shim.ttrpc import Code, DecodeError, LocalProtocolError, Request, Response, Status
from shim.ttrpc._wire import (
    decode_request,
    decode_response,
    decode_status,
    encode_request,
    encode_response,
    encode_status,
    encode_varint,
)

# ---------------------------------------------------------------- golden messages (by hand)

# Request{service="containerd.task.v2.Task", method="State",
#         payload=StateRequest{id="redis"}, metadata=[{containerd-namespace-ttrpc: default}]}
STATE_REQUEST = bytes.fromhex(
    "0a17" + "636f6e7461696e6572642e7461736b2e76322e5461736b"  # 1: service (23 bytes)
    "1205" + "5374617465"  # 2: method "State"
    "1a07" + "0a05" + "7265646973"  # 3: payload = StateRequest{1: "redis"}
    "2a25"  # 5: metadata, one KeyValue of 37 bytes
    "0a1a" + "636f6e7461696e6572642d6e616d6573706163652d7474727063"  # key (26 bytes)
    "1207" + "64656661756c74"  # value "default"
)
STATE_REQUEST_VALUE = Request(
    service="containerd.task.v2.Task",
    method="State",
    payload=b"\x0a\x05redis",
    metadata=(("containerd-namespace-ttrpc", "default"),),
)
# Request{timeout_nano=2s}: 2_000_000_000 as a varint is 80 a8 d6 b9 07.
TIMEOUT_REQUEST = bytes.fromhex("2080a8d6b907")
# Request{timeout_nano=-1}: ten-byte two's complement.
NEGATIVE_TIMEOUT_REQUEST = bytes.fromhex("20ffffffffffffffffff01")
# Response{status={}, payload=StateResponse-ish bytes}: an OK status is present but empty.
OK_RESPONSE = bytes.fromhex("0a00" + "1207" + "0a05" + "7265646973")
# Response{status={code=NOT_FOUND, message="container not created"}}
NOT_FOUND_RESPONSE = bytes.fromhex(
    "0a19" + "0805" + "1215" + "636f6e7461696e6572206e6f742063726561746564"
)


def test_golden_state_request_encodes_and_decodes() -> None:
    assert encode_request(STATE_REQUEST_VALUE) == STATE_REQUEST
    assert decode_request(STATE_REQUEST) == STATE_REQUEST_VALUE


def test_golden_state_request_matches_protoc_code() -> None:
    pb = ttrpc_pb2.Request(
        service="containerd.task.v2.Task",
        method="State",
        payload=b"\x0a\x05redis",
        metadata=[ttrpc_pb2.KeyValue(key="containerd-namespace-ttrpc", value="default")],
    )
    assert pb.SerializeToString() == STATE_REQUEST


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (TIMEOUT_REQUEST, Request(timeout_nano=2_000_000_000)),
        (NEGATIVE_TIMEOUT_REQUEST, Request(timeout_nano=-1)),
        (b"", Request()),
    ],
)
def test_golden_requests(data: bytes, value: Request) -> None:
    assert encode_request(value) == data
    assert decode_request(data) == value
    assert ttrpc_pb2.Request.FromString(data).timeout_nano == value.timeout_nano


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (OK_RESPONSE, Response(Status(), b"\x0a\x05redis")),
        (NOT_FOUND_RESPONSE, Response(Status(Code.NOT_FOUND, "container not created"))),
        (b"", Response()),
        (bytes.fromhex("0a00"), Response(Status())),
    ],
)
def test_golden_responses(data: bytes, value: Response) -> None:
    assert encode_response(value) == data
    assert decode_response(data) == value
    pb = ttrpc_pb2.Response.FromString(data)
    assert pb.HasField("status") == (value.status is not None)
    assert pb.SerializeToString() == data


def test_decoded_codes_are_enum_members_when_known() -> None:
    assert decode_status(b"\x08\x05").code is Code.NOT_FOUND
    unknown = decode_status(b"\x08\x63").code
    assert unknown == 99
    assert not isinstance(unknown, Code)


def test_negative_status_code_round_trips() -> None:
    data = encode_status(Status(-5, "x"))
    assert data[:11] == b"\x08" + b"\xfb" + b"\xff" * 8 + b"\x01"
    assert decode_status(data).code == -5
    assert status_pb2.Status.FromString(data).code == -5


def test_int32_code_keeps_low_32_bits() -> None:
    # 2**32 + 7 on the wire as int32 is 7 (protobuf truncates); so does the generated code.
    data = b"\x08" + encode_varint((1 << 32) + 7)
    assert decode_status(data).code == 7
    assert status_pb2.Status.FromString(data).code == 7


def test_status_details_are_kept_as_serialized_any() -> None:
    any_bytes = b"\x0a\x03t/x" + b"\x12\x02hi"
    status = Status(Code.INTERNAL, "boom", (any_bytes, b""))
    data = encode_status(status)
    assert decode_status(data) == status
    pb = status_pb2.Status.FromString(data)
    assert [d.SerializeToString() for d in pb.details] == [any_bytes, b""]


# ---------------------------------------------------------------- protobuf rules


def test_unknown_fields_are_skipped() -> None:
    unknown = (
        b"\x30\x96\x01"  # field 6 varint
        + b"\x39"
        + b"\x00" * 8  # field 7 fixed64
        + b"\x45"
        + b"\x00" * 4  # field 8 fixed32
        + b"\x4a\x03abc"  # field 9 bytes
        + b"\x53"
        + b"\x08\x01"
        + b"\x5b\x5c"
        + b"\x54"  # field 10 group, nested group 11
        + b"\xf8\xff\xff\xff\x0f\x01"  # field 2**29-1, varint
    )
    data = STATE_REQUEST + unknown
    assert decode_request(data) == STATE_REQUEST_VALUE
    assert ttrpc_pb2.Request.FromString(data).service == STATE_REQUEST_VALUE.service


def test_known_field_with_wrong_wire_type_is_skipped() -> None:
    # service (1) sent as a varint, timeout (4) sent as bytes: both treated as unknown.
    data = b"\x08\x05" + b"\x22\x01x" + b"\x12\x01M"
    assert decode_request(data) == Request(method="M")
    pb = ttrpc_pb2.Request.FromString(data)
    assert (pb.service, pb.method, pb.timeout_nano) == ("", "M", 0)


def test_last_scalar_wins_and_repeated_fields_append() -> None:
    data = b"\x0a\x01a\x0a\x01b" + b"\x2a\x03\x0a\x01k" + b"\x2a\x03\x12\x01v"
    assert decode_request(data) == Request(service="b", metadata=(("k", ""), ("", "v")))


def test_status_seen_twice_is_merged() -> None:
    data = b"\x0a\x04\x08\x05\x12\x00" + b"\x0a\x03\x12\x01m" + b"\x12\x01p"
    expected = Response(Status(Code.NOT_FOUND, "m"), b"p")
    assert decode_response(data) == expected
    pb = ttrpc_pb2.Response.FromString(data)
    assert (pb.status.code, pb.status.message, pb.payload) == (5, "m", b"p")


MALFORMED = {
    "truncated tag varint": b"\x80",
    "truncated string": b"\x0a\x05abc",
    "truncated length": b"\x0a\x80",
    "varint of 11 bytes": b"\x20" + b"\x80" * 10 + b"\x01",
    "field number 0": b"\x00\x00",
    "wire type 6": b"\x0e",
    "wire type 7": b"\x0f",
    "stray end group": b"\x0c",
    "unterminated group": b"\x0b\x08\x01",
    "mismatched end group": b"\x0b\x14",
    "truncated fixed64": b"\x09\x00\x00",
    "truncated fixed32": b"\x0d\x00",
    "invalid utf-8 service": b"\x0a\x02\xc3\x28",
    "surrogate in method": b"\x12\x03\xed\xa0\x80",
    "bad metadata entry": b"\x2a\x02\x0a\x05",
    "invalid utf-8 metadata key": b"\x2a\x03\x0a\x01\xff",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_are_rejected(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_request(data)
    with pytest.raises(PbDecodeError):
        ttrpc_pb2.Request.FromString(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x02\x08",  # status: truncated code varint
        b"\x0a\x03\x12\x01\xff",  # status message not UTF-8
        b"\x0a\x04\x1a\x02\x0a\x05",  # details: malformed Any
        b"\x0a\x05\x1a\x03\x0a\x01\xff",  # details: Any type_url not UTF-8
        b"\x0a\x01\x0c" + b"\x0a\x01\x0b",  # two status parts, each broken alone
    ],
)
def test_malformed_responses_are_rejected(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_response(data)
    with pytest.raises(PbDecodeError):
        ttrpc_pb2.Response.FromString(data)


def test_deeply_nested_groups_are_rejected() -> None:
    data = b"\x0b" * 200 + b"\x0c" * 200
    with pytest.raises(DecodeError):
        decode_request(data)


def test_unencodable_text_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_request(Request(service="\udc80"))
    with pytest.raises(LocalProtocolError):
        encode_varint(1 << 64)


def test_values_check_their_ranges() -> None:
    with pytest.raises(ValueError):
        Request(timeout_nano=1 << 63)
    with pytest.raises(ValueError):
        Status(code=1 << 31)


# ---------------------------------------------------------------- properties

text = st.text(st.characters(codec="utf-8"), max_size=40)
int64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
int32 = st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1)
requests = st.builds(
    Request,
    service=text,
    method=text,
    payload=st.binary(max_size=64),
    timeout_nano=int64,
    metadata=st.lists(st.tuples(text, text), max_size=4).map(tuple),
)
any_messages = st.builds(
    lambda url, value: (
        (b"\x0a" + encode_varint(len(url.encode())) + url.encode() if url else b"")
        + (b"\x12" + encode_varint(len(value)) + value if value else b"")
    ),
    text,
    st.binary(max_size=16),
)
statuses = st.builds(
    Status, code=int32, message=text, details=st.lists(any_messages, max_size=3).map(tuple)
)
responses = st.builds(Response, status=st.none() | statuses, payload=st.binary(max_size=64))


def _pb_request(r: Request) -> ttrpc_pb2.Request:
    return ttrpc_pb2.Request(
        service=r.service,
        method=r.method,
        payload=r.payload,
        timeout_nano=r.timeout_nano,
        metadata=[ttrpc_pb2.KeyValue(key=k, value=v) for k, v in r.metadata],
    )


def _from_pb_request(pb: ttrpc_pb2.Request) -> Request:
    return Request(
        pb.service,
        pb.method,
        pb.payload,
        pb.timeout_nano,
        tuple((kv.key, kv.value) for kv in pb.metadata),
    )


def _from_pb_status(pb: status_pb2.Status) -> Status:
    return Status(pb.code, pb.message, tuple(d.SerializeToString() for d in pb.details))


def _from_pb_response(pb: ttrpc_pb2.Response) -> Response:
    status = _from_pb_status(pb.status) if pb.HasField("status") else None
    return Response(status, pb.payload)


@given(requests)
def test_request_round_trip_and_matches_protoc(request: Request) -> None:
    data = encode_request(request)
    assert decode_request(data) == request
    assert data == _pb_request(request).SerializeToString()
    assert _from_pb_request(ttrpc_pb2.Request.FromString(data)) == request


@given(responses)
def test_response_round_trip_and_matches_protoc(response: Response) -> None:
    data = encode_response(response)
    assert decode_response(data) == response
    pb = ttrpc_pb2.Response.FromString(data)
    assert _from_pb_response(pb) == response
    assert pb.SerializeToString() == data


# Byte soup that looks like protobuf: tags for small field numbers and every wire type,
# varints, lengths and short runs of bytes, so that parsers get past the first byte.
_tokens = st.one_of(
    st.integers(min_value=1, max_value=12).flatmap(
        lambda f: st.integers(min_value=0, max_value=7).map(lambda w: encode_varint(f << 3 | w))
    ),
    st.integers(min_value=0, max_value=(1 << 64) - 1).map(encode_varint),
    st.integers(min_value=0, max_value=20).map(lambda n: bytes((n,))),
    st.binary(max_size=6),
    st.sampled_from([b"\x0a\x00", b"\x2a\x02\x0a\x00", b"\x0b", b"\x0c", b"\xc3\x28", b"\x80"]),
)
protobuf_like = st.lists(_tokens, max_size=12).map(b"".join) | st.binary(max_size=64)


def _agree(
    data: bytes,
    ours: object,
    theirs: object,
) -> None:
    raise AssertionError(f"codecs disagree on {data.hex()}: ours={ours!r} protoc={theirs!r}")


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(protobuf_like)
def test_request_decoder_agrees_with_protoc(data: bytes) -> None:
    try:
        ours: Request | None = decode_request(data)
    except DecodeError:
        ours = None
    try:
        theirs: Request | None = _from_pb_request(ttrpc_pb2.Request.FromString(data))
    except PbDecodeError:
        theirs = None
    if ours != theirs:
        _agree(data, ours, theirs)


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(protobuf_like)
def test_response_decoder_agrees_with_protoc(data: bytes) -> None:
    try:
        ours: Response | None = decode_response(data)
    except DecodeError:
        ours = None
    try:
        theirs: Response | None = _from_pb_response(ttrpc_pb2.Response.FromString(data))
    except PbDecodeError:
        theirs = None
    if ours != theirs:
        _agree(data, ours, theirs)


@given(st.binary(max_size=256))
def test_decoders_raise_only_decode_error(data: bytes) -> None:
    for decode in (decode_request, decode_response, decode_status):
        with contextlib.suppress(DecodeError):
            decode(data)


def test_overlong_tag_is_refused_like_protoc() -> None:
    """A 6-byte tag varint (field 2, overlong) is malformed for protoc; found by hypothesis."""
    data = bytes.fromhex("90808080800000")
    with pytest.raises(PbDecodeError):
        ttrpc_pb2.Response.FromString(data)
    with pytest.raises(DecodeError):
        decode_response(data)
