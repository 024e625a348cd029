"""gRPC length-prefixed message framing (docs/design.md, "Messages").

Each message is one flag byte (compressed or not), a 4-byte big-endian length
and the payload. DATA frame boundaries have nothing to do with message
boundaries, so decoding is incremental.
"""

from __future__ import annotations

import struct

from .status import GrpcError, StatusCode

__all__ = ["DEFAULT_MAX_MESSAGE", "MESSAGE_PREFIX_BYTES", "encode_message", "MessageDecoder"]

#: grpc-go's default receive limit, and the kubelet's: 4 MiB.
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024

_PREFIX = struct.Struct(">BI")
#: Bytes in front of every message: the flag and the length.
MESSAGE_PREFIX_BYTES = _PREFIX.size


def encode_message(payload: bytes) -> bytes:
    """Frame one uncompressed message."""
    return _PREFIX.pack(0, len(payload)) + payload


class MessageDecoder:
    """Collects DATA bytes and yields whole messages.

    The length prefix is checked against ``max_length`` before any of the
    body is kept, so an oversized message costs no memory. Errors are raised
    as :class:`GrpcError` with the status the peer should see.
    """

    __slots__ = ("max_length", "_buffer", "_need")

    def __init__(self, max_length: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_length = max_length
        self._buffer = bytearray()
        self._need = 0  # body length still wanted, once a prefix has been read

    @property
    def pending(self) -> bool:
        """True while a message has started but not finished."""
        return bool(self._buffer) or self._need > 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every message they complete, in order."""
        buf = self._buffer
        buf += data
        messages: list[bytes] = []
        while True:
            if self._need == 0:
                if len(buf) < 5:
                    return messages
                flag, length = _PREFIX.unpack_from(buf)
                if flag != 0:
                    buf.clear()
                    if flag == 1:
                        raise GrpcError(
                            StatusCode.INTERNAL,
                            "compressed message received but no grpc-encoding was negotiated",
                        )
                    raise GrpcError(StatusCode.INTERNAL, f"invalid message flag {flag}")
                if length > self.max_length:
                    buf.clear()
                    raise GrpcError(
                        StatusCode.RESOURCE_EXHAUSTED,
                        f"received message larger than max ({length} vs. {self.max_length})",
                    )
                del buf[:5]
                if length == 0:
                    messages.append(b"")
                    continue
                self._need = length
            if len(buf) < self._need:
                return messages
            messages.append(bytes(buf[: self._need]))
            del buf[: self._need]
            self._need = 0
