# Strategy: the public face of shim.ttrpc; everything else is private (_*.py).
#
# Layers: _frames (header), _wire + _messages (protobuf envelope), _status (codes),
# _errors, _events, _state (transition tables), _connection (sans-IO ServerConnection /
# ClientConnection), then the only I/O modules: _server (asyncio Server) and _client
# (asyncio Client). Design after h11 (sans-IO, events, typed errors); wire behaviour after
# containerd/ttrpc v1.1.1.
"""ttrpc for Python: a sans-IO codec plus an asyncio server and client.

The protocol modules do no I/O: feed bytes to a ServerConnection/ClientConnection with
receive_data(), read events with next_event(), and write what send() returns. Server and
Client run that over unix sockets with asyncio.
"""

from ._client import Client, MetadataArg
from ._connection import ClientConnection, ServerConnection
from ._errors import (
    ClosedError,
    DecodeError,
    EnvelopeTooComplex,
    LocalProtocolError,
    MessageTooLargeError,
    ProtocolError,
    RemoteProtocolError,
    TtrpcError,
)
from ._events import (
    NEED_DATA,
    ConnectionClosed,
    Event,
    RequestReceived,
    ResponseReceived,
    StreamRejected,
)
from ._frames import MAX_DATA, MessageType
from ._messages import Metadata, Request, Response, Status
from ._server import (
    NAMESPACE_KEY,
    ErrorMapper,
    Handler,
    RequestContext,
    Server,
    default_error_mapper,
)
from ._state import ConnectionState
from ._status import Code

__all__ = [
    "MAX_DATA",
    "NAMESPACE_KEY",
    "NEED_DATA",
    "Client",
    "ClientConnection",
    "ClosedError",
    "Code",
    "ConnectionClosed",
    "ConnectionState",
    "DecodeError",
    "EnvelopeTooComplex",
    "ErrorMapper",
    "Event",
    "Handler",
    "LocalProtocolError",
    "MessageTooLargeError",
    "MessageType",
    "Metadata",
    "MetadataArg",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "RequestContext",
    "RequestReceived",
    "Response",
    "ResponseReceived",
    "Server",
    "ServerConnection",
    "Status",
    "StreamRejected",
    "TtrpcError",
    "default_error_mapper",
]
