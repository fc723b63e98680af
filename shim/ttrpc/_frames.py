# Strategy: the ttrpc frame header and nothing else.
#
# Every ttrpc frame is a 10-byte header followed by `length` bytes of data. The header is
# four big-endian fields: data length (u32, header not included), stream id (u32), message
# type (u8) and flags (u8, reserved in ttrpc 1.1.1). Data longer than MAX_DATA (4 MiB) is
# refused by the receiver; see _connection.py for what "refused" means.
#
# Facts from containerd/ttrpc v1.1.1 channel.go and PROTOCOL.md (read, not copied). This
# module does no I/O and knows nothing about streams or protobuf.
"""The ttrpc frame header: layout, message types and size limit."""

from __future__ import annotations

import enum
import struct
from typing import Final

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "MAX_DATA",
    "MAX_STREAM_ID",
    "MessageType",
    "encode_frame",
]

#: length u32, stream id u32, message type u8, flags u8 -- all big-endian.
HEADER: Final = struct.Struct(">IIBB")
#: Size of the header in bytes (10).
HEADER_SIZE: Final = HEADER.size
#: Largest data length a receiver accepts (4 MiB); a larger frame is discarded and refused.
MAX_DATA: Final = 4 << 20
#: Stream ids are u32.
MAX_STREAM_ID: Final = 0xFFFFFFFF


class MessageType(enum.IntEnum):
    """The frame's message type byte."""

    REQUEST = 1
    RESPONSE = 2
    #: Stream data; exists from ttrpc 1.2 on, never sent by 1.1.1 peers.
    DATA = 3


def encode_frame(stream_id: int, mtype: int, data: bytes, flags: int = 0) -> bytes:
    """Return one whole frame: header followed by ``data``.

    Args:
        stream_id: the stream id (u32).
        mtype: the message type byte (normally a MessageType).
        data: the frame data (an encoded protobuf message).
        flags: the flags byte (0 in ttrpc 1.1.1).

    Raises:
        struct.error: a field does not fit its header slot.
    """
    return HEADER.pack(len(data), stream_id, mtype, flags) + data
