# Strategy: a small, strict protobuf wire codec for the four envelope messages, so that the
# ttrpc layer needs no protobuf runtime.
#
# Encoding follows what protoc-generated code emits (and what the cross-check tests compare
# against): fields in field-number order, proto3 defaults (0, "", b"") left out, a present
# Response.status always written (an OK status is the two bytes 0a 00), negative ints as
# 10-byte two's-complement varints.
#
# Decoding follows the protobuf wire rules:
#   * varints are at most 10 bytes (bits above 64 are dropped); int64 and int32 fields
#     are read two's-complement (int32 keeps the low 32 bits), as protobuf parsers do;
#   * a field seen twice: the last scalar wins, repeated fields append, a sub-message
#     seen twice is merged (parsed as if its occurrences were concatenated);
#   * unknown fields -- and known fields with an unexpected wire type -- are skipped,
#     including groups (wire types 3/4, nested up to MAX_DEPTH);
#   * anything malformed raises DecodeError: truncated varint or field, varint over 10
#     bytes, field number 0 or > 2**29-1, wire type 6/7, stray or mismatched end-group,
#     invalid UTF-8 in a string field, nesting deeper than MAX_DEPTH.
#   * work is bounded, not only size: a Request envelope may hold at most MAX_REQUEST_FIELDS
#     field tags in all (its own fields, each metadata entry's fields, the contents of
#     skipped groups); past that, EnvelopeTooComplex. A 4 MiB frame of two-byte fields would
#     otherwise keep the decoder busy for over a second while every other stream waits;
#     containerd sends one to three metadata entries.
# Status.details stays a tuple of serialized google.protobuf.Any, checked to be well-formed.
# No I/O here; byte layout facts from the protobuf encoding spec.
"""Protobuf wire codec for ttrpc.Request, ttrpc.Response and google.rpc.Status."""

from __future__ import annotations

from typing import Final

from ._errors import DecodeError, EnvelopeTooComplex, LocalProtocolError
from ._messages import Request, Response, Status
from ._status import to_code

__all__ = [
    "MAX_DEPTH",
    "MAX_REQUEST_FIELDS",
    "decode_request",
    "decode_response",
    "decode_status",
    "encode_request",
    "encode_response",
    "encode_status",
    "encode_varint",
]

#: How deeply groups/sub-messages may nest before decoding gives up (protobuf's default).
MAX_DEPTH: Final = 100
#: How many field tags one Request envelope may hold in all (see the strategy above).
MAX_REQUEST_FIELDS: Final = 4096

_MASK64: Final = (1 << 64) - 1
_MAX_FIELD: Final = (1 << 29) - 1
_WT_VARINT, _WT_I64, _WT_LEN, _WT_SGROUP, _WT_EGROUP, _WT_I32 = 0, 1, 2, 3, 4, 5

_SMALL_VARINTS: Final = tuple(bytes((i,)) for i in range(0x80))
_OK_EMPTY: Final = Response(Status(), b"")


# --------------------------------------------------------------------------- encoding


def encode_varint(value: int) -> bytes:
    """Return ``value`` as a protobuf varint; negative values as 64-bit two's complement.

    Raises:
        LocalProtocolError: the value does not fit in 64 bits.
    """
    if 0 <= value < 0x80:
        return _SMALL_VARINTS[value]
    if value < 0:
        if value < -(1 << 63):
            raise LocalProtocolError(f"varint {value} does not fit in 64 bits")
        value &= _MASK64
    elif value > _MASK64:
        raise LocalProtocolError(f"varint {value} does not fit in 64 bits")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"{what} is not encodable as UTF-8: {exc}") from exc


def _len_field(tag: bytes, data: bytes) -> bytes:
    return tag + encode_varint(len(data)) + data


def encode_status(status: Status) -> bytes:
    """Serialize a google.rpc.Status.

    Raises:
        LocalProtocolError: the message is not valid UTF-8 text.
    """
    parts: list[bytes] = []
    if status.code:
        parts.append(b"\x08" + encode_varint(status.code))
    if status.message:
        parts.append(_len_field(b"\x12", _utf8(status.message, "status message")))
    for detail in status.details:
        parts.append(_len_field(b"\x1a", bytes(detail)))
    return b"".join(parts)


def encode_request(request: Request) -> bytes:
    """Serialize a ttrpc.Request.

    Raises:
        LocalProtocolError: a string field is not encodable as UTF-8.
    """
    parts: list[bytes] = []
    if request.service:
        parts.append(_len_field(b"\x0a", _utf8(request.service, "service")))
    if request.method:
        parts.append(_len_field(b"\x12", _utf8(request.method, "method")))
    if request.payload:
        parts.append(_len_field(b"\x1a", bytes(request.payload)))
    if request.timeout_nano:
        parts.append(b"\x20" + encode_varint(request.timeout_nano))
    for key, value in request.metadata:
        kv = b""
        if key:
            kv = _len_field(b"\x0a", _utf8(key, "metadata key"))
        if value:
            kv += _len_field(b"\x12", _utf8(value, "metadata value"))
        parts.append(_len_field(b"\x2a", kv))
    return b"".join(parts)


def encode_response(response: Response) -> bytes:
    """Serialize a ttrpc.Response (a present status is always written, even if OK).

    Raises:
        LocalProtocolError: the status message is not encodable as UTF-8.
    """
    status = response.status
    if status is None:
        out = b""
    elif not status.code and not status.message and not status.details:
        out = b"\x0a\x00"  # the common case: a present, OK status
    else:
        out = _len_field(b"\x0a", encode_status(status))
    if response.payload:
        out += _len_field(b"\x12", bytes(response.payload))
    return out


# --------------------------------------------------------------------------- decoding


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read a varint at ``pos``; return (value masked to 64 bits, new position)."""
    result = 0
    shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than 10 bytes")
    raise DecodeError("truncated varint")


def _tag(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Read a field tag; return (field number, wire type, new position)."""
    tag = buf[pos]
    if tag < 0x80:
        pos += 1
    else:
        start = pos
        tag, pos = _varint(buf, pos, end)
        # protoc (upb) reads tags as 32-bit varints: at most 5 bytes, even if overlong
        if tag > 0xFFFFFFFF or pos - start > 5:
            raise DecodeError("field tag does not fit in 32 bits")
    field = tag >> 3
    if field == 0 or field > _MAX_FIELD:
        raise DecodeError(f"invalid field number {field}")
    return field, tag & 7, pos


def _length(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read a length prefix; return (start, stop) of the delimited bytes."""
    if pos < end and buf[pos] < 0x80:
        size = buf[pos]
        pos += 1
    else:
        size, pos = _varint(buf, pos, end)
    stop = pos + size
    if stop > end:
        raise DecodeError("truncated length-delimited field")
    return pos, stop


class _Budget:
    """How many more field tags a decode may read."""

    __slots__ = ("left",)

    def __init__(self, tags: int) -> None:
        self.left = tags

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise EnvelopeTooComplex(
                f"request envelope holds more than {MAX_REQUEST_FIELDS} fields"
            )


def _skip(
    buf: bytes, pos: int, end: int, field: int, wtype: int, depth: int,
    budget: _Budget | None = None,
) -> int:
    """Skip the value of an unknown field whose tag was just read; return the new position."""
    if wtype == _WT_VARINT:
        return _varint(buf, pos, end)[1]
    if wtype == _WT_LEN:
        return _length(buf, pos, end)[1]
    if wtype in (_WT_I64, _WT_I32):
        stop = pos + (8 if wtype == _WT_I64 else 4)
        if stop > end:
            raise DecodeError("truncated fixed-width field")
        return stop
    if wtype == _WT_SGROUP:
        if depth >= MAX_DEPTH:
            raise DecodeError("groups nested too deeply")
        while pos < end:
            inner, inner_type, pos = _tag(buf, pos, end)
            if budget is not None:
                budget.take()
            if inner_type == _WT_EGROUP:
                if inner != field:
                    raise DecodeError(f"end-group {inner} does not match group {field}")
                return pos
            pos = _skip(buf, pos, end, inner, inner_type, depth + 1, budget)
        raise DecodeError(f"unterminated group {field}")
    if wtype == _WT_EGROUP:
        raise DecodeError(f"unexpected end-group {field}")
    raise DecodeError(f"invalid wire type {wtype}")


def _text(buf: bytes, start: int, stop: int, field: int) -> str:
    try:
        return buf[start:stop].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"field {field}: invalid UTF-8") from exc


def _check_any(buf: bytes, pos: int, end: int, depth: int) -> None:
    """Check a google.protobuf.Any {type_url=1 string, value=2 bytes} is well-formed."""
    if depth >= MAX_DEPTH:
        raise DecodeError("messages nested too deeply")
    while pos < end:
        field, wtype, pos = _tag(buf, pos, end)
        if wtype == _WT_LEN:
            start, pos = _length(buf, pos, end)
            if field == 1:
                _text(buf, start, pos, field)
        else:
            pos = _skip(buf, pos, end, field, wtype, depth)


def _bytes(data: bytes | bytearray | memoryview) -> bytes:
    return data if type(data) is bytes else bytes(data)


def _status(buf: bytes, pos: int, end: int, depth: int) -> Status:
    if depth >= MAX_DEPTH:
        raise DecodeError("messages nested too deeply")
    code = 0
    message = ""
    details: list[bytes] = []
    while pos < end:
        field, wtype, pos = _tag(buf, pos, end)
        if wtype == _WT_LEN and (field == 2 or field == 3):
            start, pos = _length(buf, pos, end)
            if field == 2:
                message = _text(buf, start, pos, field)
            else:
                _check_any(buf, start, pos, depth + 1)
                details.append(buf[start:pos])
        elif wtype == _WT_VARINT and field == 1:
            value, pos = _varint(buf, pos, end)
            value &= 0xFFFFFFFF
            code = value - (1 << 32) if value & 0x80000000 else value
        else:
            pos = _skip(buf, pos, end, field, wtype, depth)
    return Status(to_code(code), message, tuple(details))


def decode_status(data: bytes | bytearray | memoryview) -> Status:
    """Parse a serialized google.rpc.Status.

    Raises:
        DecodeError: the bytes are not a well-formed Status.
    """
    buf = _bytes(data)
    return _status(buf, 0, len(buf), 0)


def _key_value(buf: bytes, pos: int, end: int, depth: int, budget: _Budget) -> tuple[str, str]:
    if depth >= MAX_DEPTH:
        raise DecodeError("messages nested too deeply")
    key = value = ""
    while pos < end:
        field, wtype, pos = _tag(buf, pos, end)
        budget.take()
        if wtype == _WT_LEN and (field == 1 or field == 2):
            start, pos = _length(buf, pos, end)
            if field == 1:
                key = _text(buf, start, pos, field)
            else:
                value = _text(buf, start, pos, field)
        else:
            pos = _skip(buf, pos, end, field, wtype, depth, budget)
    return key, value


def decode_request(data: bytes | bytearray | memoryview) -> Request:
    """Parse a serialized ttrpc.Request.

    Raises:
        DecodeError: the bytes are not a well-formed Request.
        EnvelopeTooComplex: it holds more than MAX_REQUEST_FIELDS field tags.
    """
    buf = _bytes(data)
    pos, end = 0, len(buf)
    service = method = ""
    payload = b""
    timeout_nano = 0
    metadata: list[tuple[str, str]] = []
    budget = _Budget(MAX_REQUEST_FIELDS)
    while pos < end:
        field, wtype, pos = _tag(buf, pos, end)
        budget.take()
        if wtype == _WT_LEN and field != 4:
            start, stop = _length(buf, pos, end)
            if field == 1:
                service = _text(buf, start, stop, field)
            elif field == 2:
                method = _text(buf, start, stop, field)
            elif field == 3:
                payload = buf[start:stop]
            elif field == 5:
                metadata.append(_key_value(buf, start, stop, 1, budget))
            pos = stop
        elif wtype == _WT_VARINT and field == 4:
            value, pos = _varint(buf, pos, end)
            timeout_nano = value - (1 << 64) if value >> 63 else value
        else:
            pos = _skip(buf, pos, end, field, wtype, 0, budget)
    return Request(service, method, payload, timeout_nano, tuple(metadata))


def decode_response(data: bytes | bytearray | memoryview) -> Response:
    """Parse a serialized ttrpc.Response.

    Raises:
        DecodeError: the bytes are not a well-formed Response.
    """
    buf = _bytes(data)
    if buf == b"\x0a\x00":
        return _OK_EMPTY  # the common case: OK status, no payload
    pos, end = 0, len(buf)
    status_parts: list[bytes] = []
    payload = b""
    while pos < end:
        field, wtype, pos = _tag(buf, pos, end)
        if wtype == _WT_LEN and (field == 1 or field == 2):
            start, pos = _length(buf, pos, end)
            if field == 1:
                status_parts.append(buf[start:pos])
            else:
                payload = buf[start:pos]
        else:
            pos = _skip(buf, pos, end, field, wtype, 0)
    status: Status | None = None
    if len(status_parts) == 1:
        status = _status(status_parts[0], 0, len(status_parts[0]), 1)
    elif status_parts:
        # A sub-message seen more than once is merged, which is what parsing the
        # concatenation gives; each part must also be well-formed on its own.
        for part in status_parts:
            _status(part, 0, len(part), 1)
        merged = b"".join(status_parts)
        status = _status(merged, 0, len(merged), 1)
    return Response(status, payload)
