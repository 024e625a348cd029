"""Checks of received header lists, done by us in one pass instead of by h2.

h2's inbound validation (``validate_inbound_headers``) runs each header
through a chain of seven generators and cost about a fifth of the server's
CPU per unary call; it is off (see :func:`.connection.make_config`), and
these functions enforce what matters of RFC 9113 8.2 and 8.3 for gRPC:

- field names are non-empty, with no byte in 0x00-0x20, 0x41-0x5a (upper
  case), 0x7f-0xff, and no colon except as a pseudo-header's first byte;
- field values hold no NUL, CR or LF and neither start nor end with a space
  or tab;
- pseudo-headers come before every regular field, each at most once, and
  only those defined for the message: ``:method :scheme :path :authority``
  in a request (``:scheme`` and a non-empty ``:path`` required, except for
  CONNECT, which has neither), ``:status`` (three digits, required) in a
  response, none in trailers;
- no connection-specific field (``connection``, ``keep-alive``,
  ``proxy-connection``, ``transfer-encoding``, ``upgrade``), and ``te``
  only as ``trailers``;
- ``host``, if sent, only once and equal to ``:authority`` (RFC 9113
  8.3.1's SHOULD, which h2 enforced too).

A message that breaks one of these is malformed: RFC 9113 8.1.1 makes that a
stream error of type PROTOCOL_ERROR, so the caller resets that stream alone
(h2 raised, and the whole connection went down with GOAWAY).

What h2 still checks with validation off: HPACK decoding, the header list
size, ``content-length`` against the DATA received, END_STREAM on trailers,
and a 1xx ``:status`` in a request (a connection error). What we no longer
get, and gRPC does not use: cookie fields joined into one
(``normalize_inbound_headers``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

__all__ = ["MalformedHeaders", "RequestHeaders", "parse_request", "check_response", "check_trailers"]


class MalformedHeaders(Exception):
    """A received header list breaks RFC 9113 8.2/8.3: a stream error (PROTOCOL_ERROR)."""


#: Bytes a regular field name may hold (RFC 9113 8.2.1): visible ASCII, no
#: upper case, no colon. ``name.translate(None, _NAME_BYTES)`` is what is left.
_NAME_BYTES = bytes(c for c in range(0x21, 0x7F) if not 0x41 <= c <= 0x5A and c != 0x3A)
_REQUEST_PSEUDO_HEADERS = frozenset([b":method", b":scheme", b":path", b":authority"])
_CONNECTION_SPECIFIC = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"]
)


def _bad_value(value: bytes) -> bool:
    """NUL, LF or CR anywhere, or a space or tab at either end (RFC 9113 8.2.1).

    The int operands of ``in`` take bytes' memchr fast path; a bytes operand
    costs several times more. :func:`parse_request` inlines this (it runs for
    every header of every call).
    """
    return 0 in value or 10 in value or 13 in value or value.strip(b" \t") != value


def _check_regular(name: bytes, value: bytes) -> None:
    """The rules for one regular (non-pseudo) field; the caller checks the value."""
    if not name or name.translate(None, _NAME_BYTES):
        raise MalformedHeaders(f"invalid header name {name!r}")
    if name in _CONNECTION_SPECIFIC:
        raise MalformedHeaders(f"connection-specific header {name.decode('latin-1')!r}")
    if name == b"te" and value != b"trailers" and value.lower() != b"trailers":
        raise MalformedHeaders(f"te header other than 'trailers': {value!r}")


class RequestHeaders:
    """What the server needs from a request's header list."""

    __slots__ = ("method", "path", "authority", "content_type", "timeout", "encoding", "metadata")

    def __init__(
        self,
        method: bytes,
        path: bytes,
        authority: Optional[bytes],
        content_type: bytes,
        timeout: Optional[bytes],
        encoding: Optional[bytes],
        metadata: list[tuple[bytes, bytes]],
    ) -> None:
        self.method = method
        #: Empty only for CONNECT.
        self.path = path
        #: ``:authority``, else ``host``; None when the request has neither.
        self.authority = authority
        self.content_type = content_type
        self.timeout = timeout
        self.encoding = encoding
        #: The regular fields but content-type, grpc-timeout and grpc-encoding.
        self.metadata = metadata


def parse_request(headers: Iterable[tuple[bytes, bytes]]) -> RequestHeaders:
    """Check a request's header list and pick out its parts, in one pass.

    Raises :class:`MalformedHeaders`.
    """
    pseudo: dict[bytes, bytes] = {}
    host = None
    content_type = b""
    timeout = encoding = None
    metadata: list[tuple[bytes, bytes]] = []
    regular = False  # a regular field has been seen: no more pseudo-headers
    for name, value in headers:
        if 0 in value or 10 in value or 13 in value or value.strip(b" \t") != value:
            raise MalformedHeaders(f"invalid value for header {name!r}")
        if name[:1] == b":":
            if regular:
                raise MalformedHeaders(f"pseudo-header {name!r} after a regular header")
            if name not in _REQUEST_PSEUDO_HEADERS:
                raise MalformedHeaders(f"pseudo-header {name!r} is not allowed in a request")
            if name in pseudo:
                raise MalformedHeaders(f"duplicate {name.decode('ascii')}")
            pseudo[name] = value
            continue
        regular = True
        if name == b"content-type":
            content_type = value
        elif name == b"grpc-timeout":
            timeout = value
        elif name == b"grpc-encoding":
            encoding = value
        else:
            _check_regular(name, value)
            if name == b"host":
                if host is not None:
                    raise MalformedHeaders("duplicate host header")
                host = value
            metadata.append((name, value))
    method = pseudo.get(b":method")
    path = pseudo.get(b":path")
    authority = pseudo.get(b":authority")
    if method is None:
        raise MalformedHeaders("missing :method")
    if method == b"CONNECT":
        if b":scheme" in pseudo or path is not None or authority is None:
            raise MalformedHeaders("CONNECT needs :authority and neither :scheme nor :path")
    else:
        if b":scheme" not in pseudo:
            raise MalformedHeaders("missing :scheme")
        if not path:
            raise MalformedHeaders("missing or empty :path")
    if host is not None:
        if authority is None:
            authority = host
        elif host != authority:
            raise MalformedHeaders(f"host {host!r} differs from :authority {authority!r}")
    return RequestHeaders(method, path or b"", authority, content_type, timeout, encoding, metadata)


def check_response(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Check the header list that starts a response. Raises :class:`MalformedHeaders`."""
    status = None
    regular = False
    for name, value in headers:
        if _bad_value(value):
            raise MalformedHeaders(f"invalid value for header {name!r}")
        if name[:1] == b":":
            if regular:
                raise MalformedHeaders(f"pseudo-header {name!r} after a regular header")
            if name != b":status":
                raise MalformedHeaders(f"pseudo-header {name!r} is not allowed in a response")
            if status is not None:
                raise MalformedHeaders("duplicate :status")
            status = value
            continue
        regular = True
        _check_regular(name, value)
    if status is None:
        raise MalformedHeaders("missing :status")
    if len(status) != 3 or not status.isdigit():
        raise MalformedHeaders(f"invalid :status {status!r}")


def check_trailers(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Check a trailer list (request or response). Raises :class:`MalformedHeaders`."""
    for name, value in headers:
        if _bad_value(value):
            raise MalformedHeaders(f"invalid value for header {name!r}")
        if name[:1] == b":":
            raise MalformedHeaders(f"pseudo-header {name!r} in trailers")
        _check_regular(name, value)
