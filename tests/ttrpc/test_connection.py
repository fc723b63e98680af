"""Sans-IO connections: every split point, golden Go frames, malformed input of each kind."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim.ttrpc import (
    MAX_DATA,
    NEED_DATA,
    ClientConnection,
    Code,
    ConnectionClosed,
    ConnectionState,
    LocalProtocolError,
    MessageTooLargeError,
    RemoteProtocolError,
    Request,
    RequestReceived,
    Response,
    ResponseReceived,
    ServerConnection,
    Status,
    StreamRejected,
)
from shim.ttrpc._events import Event
from shim.ttrpc._wire import MAX_REQUEST_FIELDS, encode_varint

from .helpers import ConnectionPair, drain, frame
from .test_wire import STATE_REQUEST, STATE_REQUEST_VALUE

REQ, RESP, DATA = 1, 2, 3

# Request{service="x.Y", method="Z"}, built by hand: 0a 03 "x.Y" 12 01 "Z".
XY_REQUEST = bytes.fromhex("0a03782e5912015a")

# ------------------------------------------------------------------ golden frames from Go
# Captured from containerd 1.6.20's ttrpc server (Go ttrpc v1.1.1) by sending it the
# frames described; each is the exact response frame it wrote back.
GO_UNKNOWN_SERVICE = bytes.fromhex(  # stream 1, request x.Y/Z
    "000000110000000102000a0f080c120b7365727669636520782e59"
)
GO_EVEN_ID = bytes.fromhex(  # stream 4, request x.Y/Z
    "000000370000000402000a350803123153747265616d4944206d757374206265206f646420666f7220"
    "636c69656e7420696e697469617465642073747265616d73"
)
GO_OVERSIZE = bytes.fromhex(  # stream 11, header declaring 4 MiB + 1 bytes
    "000000430000000b02000a410808123d6d657373616765206c656e67746820343139343330352065786365"
    "6564206d6178696d756d206d6573736167652073697a65206f662034313934333034"
)
GO_UNDECODABLE = bytes.fromhex(  # stream 5, data 0a 05 "ab" (truncated string)
    "0000002d0000000502000a2b08031227756e6d61727368616c2072657175657374206572726f723a2075"
    "6e657870656374656420454f46"
)


def _answer(conn: ServerConnection, event: Event) -> bytes:
    assert isinstance(event, StreamRejected)
    return conn.send(event.stream_id, Response(Status(event.code, event.message)))


def test_go_golden_even_stream_id() -> None:
    conn = ServerConnection()
    conn.receive_data(frame(4, REQ, XY_REQUEST))
    [event] = drain(conn)
    assert event == StreamRejected(
        4, Code.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams"
    )
    assert _answer(conn, event) == GO_EVEN_ID


def test_go_golden_oversize() -> None:
    conn = ServerConnection()
    conn.receive_data(bytes.fromhex("004000010000000b0100"))  # header only
    [event] = drain(conn)
    assert event.code == Code.RESOURCE_EXHAUSTED  # type: ignore[union-attr]
    assert _answer(conn, event) == GO_OVERSIZE


def test_go_golden_unknown_service_response() -> None:
    conn = ServerConnection()
    conn.receive_data(frame(1, REQ, XY_REQUEST))
    assert drain(conn) == [RequestReceived(1, Request("x.Y", "Z"))]
    answer = conn.send(1, Response(Status(Code.UNIMPLEMENTED, "service x.Y")))
    assert answer == GO_UNKNOWN_SERVICE


def test_go_golden_undecodable_request() -> None:
    conn = ServerConnection()
    conn.receive_data(frame(5, REQ, b"\x0a\x05ab"))
    [event] = drain(conn)
    assert isinstance(event, StreamRejected)
    assert event.code == Code.INVALID_ARGUMENT
    assert event.message.startswith("unmarshal request error: ")
    # Same status as Go's; only the decoder's own error text differs.
    go_status = _decode_response_frame(GO_UNDECODABLE)
    assert go_status.code == event.code
    assert go_status.message.startswith("unmarshal request error: ")


def _decode_response_frame(data: bytes) -> Status:
    from shim.ttrpc._wire import decode_response

    response = decode_response(data[10:])
    assert response.status is not None
    return response.status


@pytest.mark.parametrize("golden", [GO_UNKNOWN_SERVICE, GO_OVERSIZE, GO_UNDECODABLE])
def test_client_reads_go_frames(golden: bytes) -> None:
    client = ClientConnection()
    wanted = int.from_bytes(golden[4:8], "big")
    while client.send(Request("x.Y", "Z"))[0] < wanted:
        pass
    client.receive_data(golden)
    [event] = drain(client)
    assert isinstance(event, ResponseReceived)
    assert event.stream_id == wanted
    assert event.response.status == _decode_response_frame(golden)
    assert event.response.status.code != Code.OK


def test_client_drops_go_answer_on_an_even_id() -> None:
    client = ClientConnection()
    client.send(Request("x.Y", "Z"))
    client.receive_data(GO_EVEN_ID)  # no call of ours can be on stream 4
    assert drain(client) == []


def test_golden_request_frame() -> None:
    # Header (length 0x50 = 80, stream 1, type 1, flags 0) + the hand-made Request bytes.
    golden = bytes.fromhex("00000050000000010100") + STATE_REQUEST
    client = ClientConnection()
    assert client.send(STATE_REQUEST_VALUE) == (1, golden)
    server = ServerConnection()
    server.receive_data(golden)
    assert drain(server) == [RequestReceived(1, STATE_REQUEST_VALUE)]


# ------------------------------------------------------------------ every split point

# A stream with one frame of each kind; the events it must produce, in order.
STREAM = b"".join(
    [
        frame(1, REQ, STATE_REQUEST),  # fine
        frame(3, 7, b"future"),  # unknown type: skipped
        frame(4, REQ, XY_REQUEST),  # even id
        frame(5, REQ, bytes.fromhex("2080a8d6b907")),  # fine, timeout 2 s
        frame(7, REQ, b"\x0a\x05ab"),  # undecodable
        frame(5, REQ, XY_REQUEST),  # re-used id
        frame(9, DATA, b"x"),  # data: no stream is active for it
        frame(9, RESP, b""),  # a response sent to a server: skipped
        frame(3, REQ, XY_REQUEST),  # not increasing
        frame(11, REQ, b""),  # fine, empty request
    ]
)
EXPECTED: list[Event] = [
    RequestReceived(1, STATE_REQUEST_VALUE),
    StreamRejected(4, Code.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams"),
    RequestReceived(5, Request(timeout_nano=2_000_000_000)),
    StreamRejected(
        7, Code.INVALID_ARGUMENT, "unmarshal request error: truncated length-delimited field"
    ),
    StreamRejected(5, Code.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment"),
    StreamRejected(9, Code.INVALID_ARGUMENT, "StreamID is no longer active"),
    StreamRejected(3, Code.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment"),
    RequestReceived(11, Request()),
    ConnectionClosed(),
]


def _feed(chunks: list[bytes]) -> tuple[list[Event], ServerConnection]:
    conn = ServerConnection()
    events: list[Event] = []
    for chunk in [*(c for c in chunks if c), b""]:  # b"" is EOF
        conn.receive_data(chunk)
        events.extend(drain(conn))
    return events, conn


def test_whole_stream() -> None:
    events, conn = _feed([STREAM])
    assert events == EXPECTED
    assert conn.frames_ignored == 2
    assert conn.state is ConnectionState.CLOSED


@pytest.mark.parametrize("split", range(1, len(STREAM)))
def test_every_split_point(split: int) -> None:
    events, _ = _feed([STREAM[:split], STREAM[split:]])
    assert events == EXPECTED


def test_one_byte_at_a_time() -> None:
    events, _ = _feed([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert events == EXPECTED


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_random_chunking(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    events, _ = _feed([STREAM[a:b] for a, b in itertools.pairwise(points)])
    assert events == EXPECTED


def test_answers_for_the_whole_stream() -> None:
    events, conn = _feed([STREAM])
    answered = []
    for event in events:
        if isinstance(event, RequestReceived):
            conn.send(event.stream_id, Response(Status(), b"ok"))
            answered.append(event.stream_id)
        elif isinstance(event, StreamRejected):
            _answer(conn, event)
            answered.append(event.stream_id)
    assert answered == [1, 4, 5, 7, 5, 9, 3, 11]
    assert conn.awaiting_response == 0


# ------------------------------------------------------------------ oversize frames

OVERSIZE = MAX_DATA + 1


def _oversize_frame(stream_id: int) -> bytes:
    return frame(stream_id, REQ, b"\0" * OVERSIZE)


def test_oversize_rejected_as_soon_as_header_arrives() -> None:
    conn = ServerConnection()
    conn.receive_data(_oversize_frame(1)[:10])
    assert drain(conn) == [
        StreamRejected(
            1,
            Code.RESOURCE_EXHAUSTED,
            f"message length {OVERSIZE} exceed maximum message size of {MAX_DATA}",
        )
    ]


def test_oversize_body_is_discarded_without_buffering() -> None:
    conn = ServerConnection()
    conn.receive_data(frame(1, REQ, b"\0" * OVERSIZE)[:10])
    [rejected] = drain(conn)
    body = b"\0" * OVERSIZE
    for start in range(0, OVERSIZE, 65536):
        conn.receive_data(body[start : start + 65536])
        assert conn.buffered == 0
        assert conn.next_event() is NEED_DATA
    conn.receive_data(frame(3, REQ, XY_REQUEST))
    assert drain(conn) == [RequestReceived(3, Request("x.Y", "Z"))]
    assert _answer(conn, rejected)


@pytest.mark.parametrize(
    "split",
    [*range(1, 24), OVERSIZE // 2, *range(OVERSIZE - 2, OVERSIZE + 22)],
)
def test_oversize_then_request_at_split_points(split: int) -> None:
    data = _oversize_frame(1) + frame(3, REQ, XY_REQUEST)
    events, _ = _feed([data[:split], data[split:]])
    assert [type(e) for e in events] == [StreamRejected, RequestReceived, ConnectionClosed]
    assert events[1] == RequestReceived(3, Request("x.Y", "Z"))


def test_exactly_max_data_is_accepted() -> None:
    request = Request(payload=b"\1" * (MAX_DATA - 5))  # 1 tag + 4 length bytes + payload
    stream_id, data = ClientConnection().send(request)
    assert len(data) == 10 + MAX_DATA
    conn = ServerConnection()
    conn.receive_data(data)
    assert drain(conn) == [RequestReceived(stream_id, request)]


def test_oversize_request_is_not_sent() -> None:
    client = ClientConnection()
    with pytest.raises(MessageTooLargeError):
        client.send(Request(payload=b"\1" * MAX_DATA))
    assert client.send(Request())[0] == 1  # nothing was recorded


def test_eof_while_discarding_is_a_connection_error() -> None:
    conn = ServerConnection()
    conn.receive_data(_oversize_frame(1)[: 10 + 1000])
    assert len(drain(conn)) == 1
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="oversized"):
        conn.next_event()
    assert conn.state is ConnectionState.ERROR


# ------------------------------------------------------------------ EOF and ERROR state


@pytest.mark.parametrize("cut", range(1, len(frame(1, REQ, XY_REQUEST))))
def test_eof_inside_a_frame(cut: int) -> None:
    data = frame(1, REQ, STATE_REQUEST) + frame(3, REQ, XY_REQUEST)
    conn = ServerConnection()
    first = len(frame(1, REQ, STATE_REQUEST))
    conn.receive_data(data[: first + cut])
    conn.receive_data(b"")
    assert conn.next_event() == RequestReceived(1, STATE_REQUEST_VALUE)
    with pytest.raises(RemoteProtocolError, match="EOF inside a frame"):
        conn.next_event()
    assert conn.state is ConnectionState.ERROR
    # Fails fast from now on, on both sides of the API.
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"more")
    with pytest.raises(LocalProtocolError):
        conn.send(1, Response(Status()))


def test_eof_at_boundary_keeps_sending_possible() -> None:
    conn = ServerConnection()
    conn.receive_data(frame(1, REQ, XY_REQUEST))
    conn.receive_data(b"")
    assert drain(conn) == [RequestReceived(1, Request("x.Y", "Z")), ConnectionClosed()]
    assert conn.next_event() == ConnectionClosed()
    assert conn.state is ConnectionState.CLOSED
    assert conn.send(1, Response(Status()))
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"late")


def test_server_refuses_to_answer_what_was_not_asked() -> None:
    conn = ServerConnection()
    with pytest.raises(LocalProtocolError, match="stream 1"):
        conn.send(1, Response(Status()))
    conn.receive_data(frame(1, REQ, XY_REQUEST))
    drain(conn)
    conn.send(1, Response(Status()))
    with pytest.raises(LocalProtocolError):
        conn.send(1, Response(Status()))


def test_server_too_large_response_leaves_stream_open() -> None:
    conn = ServerConnection()
    conn.receive_data(frame(1, REQ, XY_REQUEST))
    drain(conn)
    with pytest.raises(MessageTooLargeError):
        conn.send(1, Response(Status(), b"\0" * MAX_DATA))
    assert conn.awaiting_response == 1
    conn.send(1, Response(Status(Code.RESOURCE_EXHAUSTED, "too large")))
    assert conn.awaiting_response == 0


# ------------------------------------------------------------------ client side


def test_pair_round_trip_out_of_order() -> None:
    pair = ConnectionPair()
    ids = [pair.call(Request("s", f"m{i}", bytes([i]))) for i in range(3)]
    assert ids == [1, 3, 5]
    received = pair.server_events()
    assert [e.request.method for e in received if isinstance(e, RequestReceived)] == [
        "m0",
        "m1",
        "m2",
    ]
    for stream_id in reversed(ids):
        pair.respond(stream_id, Response(Status(), b"r%d" % stream_id))
    assert pair.client_events() == [
        ResponseReceived(5, Response(Status(), b"r5")),
        ResponseReceived(3, Response(Status(), b"r3")),
        ResponseReceived(1, Response(Status(), b"r1")),
    ]
    assert pair.client.pending == frozenset()


def test_client_drops_responses_nobody_waits_for() -> None:
    client = ClientConnection()
    stream_id, _ = client.send(Request())
    client.receive_data(frame(7, RESP, b"\x0a\x00"))  # never sent
    client.receive_data(frame(stream_id, REQ, b""))  # wrong type
    client.receive_data(frame(stream_id, 9, b""))  # unknown type
    assert drain(client) == []
    assert client.frames_ignored == 3
    client.abandon(stream_id)
    client.receive_data(frame(stream_id, RESP, b"\x0a\x00"))  # late answer
    assert drain(client) == []
    assert client.frames_ignored == 4


def test_client_reports_unreadable_answers() -> None:
    client = ClientConnection()
    first, _ = client.send(Request())
    second, _ = client.send(Request())
    client.receive_data(frame(first, RESP, b"\x0a\x05"))
    client.receive_data(frame(second, RESP, b"\0" * OVERSIZE)[:10])
    assert drain(client) == [
        StreamRejected(
            first, Code.INTERNAL, "unmarshal response error: truncated length-delimited field"
        ),
        StreamRejected(
            second,
            Code.RESOURCE_EXHAUSTED,
            f"message length {OVERSIZE} exceed maximum message size of {MAX_DATA}",
        ),
    ]
    assert client.pending == frozenset()


# ------------------------------------------------------------------ fuzz


@settings(max_examples=500)
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=8), st.booleans())
def test_random_bytes_raise_only_remote_protocol_error(chunks: list[bytes], eof: bool) -> None:
    for conn in (ServerConnection(), ClientConnection()):
        if isinstance(conn, ClientConnection):
            for _ in range(4):
                conn.send(Request())
        try:
            for chunk in [*chunks, b""] if eof else chunks:
                conn.receive_data(chunk)
                for event in drain(conn):
                    if isinstance(conn, ServerConnection) and isinstance(
                        event, RequestReceived | StreamRejected
                    ):
                        conn.send(event.stream_id, Response(Status()))
        except RemoteProtocolError:
            assert conn.state is ConnectionState.ERROR


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=12),
            st.integers(min_value=0, max_value=4),
            st.binary(max_size=24),
        ),
        max_size=10,
    )
)
def test_random_frames_are_each_answered_or_skipped(
    frames: list[tuple[int, int, bytes]],
) -> None:
    conn = ServerConnection()
    conn.receive_data(b"".join(frame(sid, mtype, data) for sid, mtype, data in frames))
    conn.receive_data(b"")
    events = drain(conn)
    assert events[-1] == ConnectionClosed()
    answered = [e for e in events if isinstance(e, RequestReceived | StreamRejected)]
    assert len(answered) + conn.frames_ignored == len(frames)
    for event in answered:
        conn.send(event.stream_id, Response(Status()))  # each owed exactly once
    assert conn.awaiting_response == 0


# ------------------------------------------------------------------ decoding work is bounded
# A Request envelope holds at most MAX_REQUEST_FIELDS field tags in all (its own fields, each
# metadata entry's fields, the contents of skipped groups): past that the stream is refused
# RESOURCE_EXHAUSTED at once instead of the decoder walking millions of two-byte fields.

EMPTY_ENTRY = b"\x2a\x00"  # field 5 (metadata), an empty KeyValue


def _with_entries(n: int, entry: bytes = EMPTY_ENTRY) -> bytes:
    return XY_REQUEST + entry * n


def test_envelope_at_the_field_bound_is_accepted() -> None:
    conn = ServerConnection()
    conn.receive_data(frame(1, REQ, _with_entries(MAX_REQUEST_FIELDS - 2)))
    [event] = drain(conn)
    assert isinstance(event, RequestReceived)
    assert len(event.request.metadata) == MAX_REQUEST_FIELDS - 2


def test_envelope_over_the_field_bound_is_refused_and_the_connection_goes_on() -> None:
    conn = ServerConnection()
    conn.receive_data(frame(1, REQ, _with_entries(MAX_REQUEST_FIELDS - 1)))
    conn.receive_data(frame(3, REQ, XY_REQUEST))
    rejected, received = drain(conn)
    assert isinstance(rejected, StreamRejected)
    assert (rejected.stream_id, rejected.code) == (1, Code.RESOURCE_EXHAUSTED)
    assert f"more than {MAX_REQUEST_FIELDS} fields" in rejected.message
    assert received == RequestReceived(3, Request("x.Y", "Z"))
    assert _answer(conn, rejected)


def test_a_full_frame_of_empty_metadata_is_refused() -> None:
    data = _with_entries((MAX_DATA - len(XY_REQUEST)) // len(EMPTY_ENTRY))
    assert len(data) > MAX_DATA - 2
    conn = ServerConnection()
    conn.receive_data(frame(1, REQ, data))
    [rejected] = drain(conn)
    assert isinstance(rejected, StreamRejected)
    assert rejected.code == Code.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    "bulk",
    [
        # one metadata entry holding thousands of (repeated) key fields
        b"\x2a" + encode_varint(2 * MAX_REQUEST_FIELDS) + b"\x0a\x00" * MAX_REQUEST_FIELDS,
        # one unknown group (field 15) holding thousands of empty varint fields
        b"\x7b" + b"\x08\x00" * MAX_REQUEST_FIELDS + b"\x7c",
        # thousands of unknown top-level fields
        b"\x78\x00" * MAX_REQUEST_FIELDS,
    ],
    ids=["inside-a-metadata-entry", "inside-a-group", "unknown-fields"],
)
def test_every_kind_of_field_counts(bulk: bytes) -> None:
    conn = ServerConnection()
    conn.receive_data(frame(1, REQ, XY_REQUEST + bulk))
    [rejected] = drain(conn)
    assert isinstance(rejected, StreamRejected)
    assert rejected.code == Code.RESOURCE_EXHAUSTED
