"""gRPC over HTTP/2 on Unix sockets, built on h2. Knows nothing about devices.

The pieces: :mod:`.status` (codes, the error type, header text),
:mod:`.framing` (length-prefixed messages), :mod:`.connection` (one h2
connection and its locks), :mod:`.server` and :mod:`.client`.
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
