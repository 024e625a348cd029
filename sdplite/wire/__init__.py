"""gRPC over HTTP/2 on Unix sockets, built on h2. Knows nothing about devices.

The pieces: :mod:`.status` (codes, the error type, header text),
:mod:`.framing` (length-prefixed messages), :mod:`.h2_protocol` and
:mod:`.server_protocol` (call handling, no I/O), :mod:`.connection` (the
socket, the lock, the reading role), :mod:`.server` and :mod:`.client`.
docs/design.md, "Connections", says which may import which.
"""

from .client import Channel, StreamingCall
from .handlers import Method, ResponseStream, ServerContext, server_streaming, unary
from .server import Server
from .status import GrpcError, StatusCode

__all__ = [
    "Channel",
    "GrpcError",
    "Method",
    "ResponseStream",
    "Server",
    "ServerContext",
    "StatusCode",
    "StreamingCall",
    "server_streaming",
    "unary",
]
