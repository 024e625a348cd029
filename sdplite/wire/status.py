"""gRPC status codes, the one error type, and the text headers that carry them.

Everything here is pure: no sockets, no h2. The rules come from gRPC's
doc/PROTOCOL-HTTP2.md and doc/statuscodes.md and grpc-go's
internal/transport/http_util.go, as docs/design.md ("What the wire relies
on") summarises them.
"""

from __future__ import annotations

import enum
import math
from typing import Optional

__all__ = [
    "StatusCode",
    "GrpcError",
    "encode_grpc_message",
    "decode_grpc_message",
    "parse_grpc_timeout",
    "format_grpc_timeout",
    "status_for_reset",
    "status_for_http",
]


class StatusCode(enum.IntEnum):
    """The seventeen gRPC status codes, with their wire numbers."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class GrpcError(Exception):
    """A call that ended with a status other than OK.

    Raise it from a handler to answer with that status; the client raises it
    when a call fails, whatever the cause (status from the peer, deadline,
    lost connection).
    """

    def __init__(self, code: StatusCode, message: str = "") -> None:
        self.code = StatusCode(code)
        self.message = message
        super().__init__(f"{self.code.name}: {message}" if message else self.code.name)

    def __reduce__(self) -> tuple[type[GrpcError], tuple[StatusCode, str]]:
        return (type(self), (self.code, self.message))


# grpc-message is UTF-8 then percent-encoded: printable ASCII except '%'
# passes through, everything else becomes %XX (upper-case hex). Done here
# rather than with urllib.parse, whose import (ipaddress too) every process
# would pay for a header that is almost always plain ASCII.
_ESCAPE = tuple(chr(b) if 0x20 <= b < 0x7F and b != 0x25 else f"%{b:02X}" for b in range(256))
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def encode_grpc_message(message: str) -> bytes:
    """Percent-encode a status message for the grpc-message header."""
    if message.isascii() and message.isprintable() and "%" not in message:
        return message.encode("ascii")
    data = message.encode("utf-8", errors="replace")
    return "".join([_ESCAPE[b] for b in data]).encode("ascii")


def _unescape(text: str) -> str:
    """Undo %XX escapes in ASCII text, then read the bytes as UTF-8; a broken escape stays as it is."""
    first, *rest = text.split("%")
    out = bytearray(first.encode("ascii"))
    for piece in rest:
        if len(piece) >= 2 and piece[0] in _HEX_DIGITS and piece[1] in _HEX_DIGITS:
            out.append(int(piece[:2], 16))
            out += piece[2:].encode("ascii")
        else:
            out += b"%" + piece.encode("ascii")
    return out.decode("utf-8", errors="replace")


def decode_grpc_message(value: bytes) -> str:
    """Decode grpc-message leniently: broken escapes and bad UTF-8 never raise."""
    text = value.decode("ascii", errors="replace")
    if "%" not in text:
        return text
    # A non-ASCII byte has become U+FFFD; escapes are undone between them.
    return "\ufffd".join([_unescape(part) for part in text.split("\ufffd")])


_TIMEOUT_UNITS = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}


def parse_grpc_timeout(value: bytes) -> float:
    """Turn a grpc-timeout header (1-8 digits and a unit) into seconds.

    Raises ValueError for anything else, so the server can answer INTERNAL
    as grpc-go does for a malformed value.
    """
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit():
        raise ValueError(f"malformed grpc-timeout {value!r}: want 1-8 digits and a unit of HMSmun")
    unit = _TIMEOUT_UNITS.get(value[-1])
    if unit is None:
        raise ValueError(f"malformed grpc-timeout {value!r}: unknown unit, want one of HMSmun")
    return int(value[:-1]) * unit


def format_grpc_timeout(seconds: float) -> bytes:
    """Encode a timeout with the finest unit that fits in 8 digits, rounded up."""
    if seconds <= 0:
        return b"1n"
    for unit, scale in ((b"n", 1e9), (b"u", 1e6), (b"m", 1e3), (b"S", 1.0), (b"M", 1 / 60)):
        amount = math.ceil(seconds * scale)
        if amount < 100_000_000:
            return str(amount).encode("ascii") + unit
    return str(min(math.ceil(seconds / 3600), 99_999_999)).encode("ascii") + b"H"


# RST_STREAM error codes (RFC 9113 section 7) as grpc-go maps them to statuses.
_RESET_STATUS = {
    0x0: StatusCode.INTERNAL,  # NO_ERROR before trailers: the stream ended early
    0x1: StatusCode.INTERNAL,  # PROTOCOL_ERROR
    0x2: StatusCode.INTERNAL,  # INTERNAL_ERROR
    0x3: StatusCode.RESOURCE_EXHAUSTED,  # FLOW_CONTROL_ERROR (grpc-go's choice)
    0x4: StatusCode.INTERNAL,  # SETTINGS_TIMEOUT
    0x5: StatusCode.INTERNAL,  # STREAM_CLOSED
    0x6: StatusCode.INTERNAL,  # FRAME_SIZE_ERROR
    0x7: StatusCode.UNAVAILABLE,  # REFUSED_STREAM: safe to retry
    0x8: StatusCode.CANCELLED,  # CANCEL
    0x9: StatusCode.INTERNAL,  # COMPRESSION_ERROR
    0xA: StatusCode.INTERNAL,  # CONNECT_ERROR
    0xB: StatusCode.RESOURCE_EXHAUSTED,  # ENHANCE_YOUR_CALM
    0xC: StatusCode.PERMISSION_DENIED,  # INADEQUATE_SECURITY
}


def status_for_reset(error_code: Optional[int]) -> StatusCode:
    """The status a client reports when the server resets its stream."""
    if error_code is None:
        return StatusCode.INTERNAL
    return _RESET_STATUS.get(int(error_code), StatusCode.INTERNAL)


_HTTP_STATUS = {
    400: StatusCode.INTERNAL,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.UNIMPLEMENTED,
    429: StatusCode.UNAVAILABLE,
    502: StatusCode.UNAVAILABLE,
    503: StatusCode.UNAVAILABLE,
    504: StatusCode.UNAVAILABLE,
}


def status_for_http(http_status: int) -> StatusCode:
    """The status of a response that carried no grpc-status, from its HTTP status."""
    return _HTTP_STATUS.get(http_status, StatusCode.UNKNOWN)
