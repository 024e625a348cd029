"""Four places where h2 4.x is harsher or laxer than HTTP/2 asks, put right,
and its loggers kept quiet.

h2 is pinned below 5 (setup.cfg) because these reach into three of its
internals (``FrameBuffer``, ``_receive_headers_frame``, ``_receive_frame``);
the tests in tests/test_hostile_input.py pin 1-3 down, the drain case of
tests/interop/spec.py (run against grpc-go) pins 4.

1. A frame header declaring a body larger than our max frame size is refused
   as soon as its 9 bytes arrive; h2 would first buffer the whole declared
   body, up to 16 MiB, and only then check (RFC 9113 4.2).
2. The reserved bit of a WINDOW_UPDATE increment is ignored, as RFC 9113
   6.9 says; hyperframe rejects such a frame and h2 drops the connection.
3. A stream opened beyond our advertised SETTINGS_MAX_CONCURRENT_STREAMS is
   refused with RST_STREAM(REFUSED_STREAM) (RFC 9113 5.1.2), which a gRPC
   client retries; h2 would tear the whole connection down.
4. Frames that arrive after a GOAWAY (the peer's or ours) are dropped. h2
   moves to CLOSED on GOAWAY and raises on anything but another GOAWAY
   (h2#1199), so grpc-go's GracefulStop, a GOAWAY then a PING, looked like a
   protocol error: the GOAWAY event was lost and a GOAWAY(PROTOCOL_ERROR)
   went back. The connection is ending either way (docs/design.md, "GOAWAY").

:func:`new_connection` also installs the HPACK shortcuts of
:mod:`.hpack_shortcuts`.

hpack logs every header it encodes or decodes at DEBUG ("Encoding 3 with 7
bits"): turning DEBUG on for a program (``logging.basicConfig(level=DEBUG)``)
buried sdplite's own lines under it. On import the ``hpack`` and ``h2``
loggers are set to WARNING unless a level was already given to them; setting
one by name (``logging.getLogger("hpack").setLevel(logging.DEBUG)``) still
turns the chatter on.
"""

from __future__ import annotations

import logging
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import hyperframe.frame

from .hpack_shortcuts import install_shortcuts

__all__ = ["new_connection", "QUIET_LOGGERS"]

#: Loggers of the HTTP/2 libraries held at WARNING unless given a level by name.
QUIET_LOGGERS = ("h2", "hpack")


def _quiet_library_loggers() -> None:
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


_quiet_library_loggers()

_WINDOW_UPDATE = 0x8
_UNLIMITED = 2**31 - 1


class _StrictFrameBuffer(h2.frame_buffer.FrameBuffer):
    def __next__(self) -> Any:
        data = self._data
        if len(data) >= 9:
            length = int.from_bytes(data[:3], "big")
            if length > self.max_frame_size:
                raise h2.exceptions.FrameTooLargeError(
                    f"Received overlong frame: length {length}, max {self.max_frame_size}"
                )
            if data[3] == _WINDOW_UPDATE and length == 4 and len(data) >= 13 and data[9] & 0x80:
                self._clear_reserved_bit(data)
        return super().__next__()

    def _clear_reserved_bit(self, data: Any) -> None:
        """The reserved bit of a WINDOW_UPDATE increment is to be ignored (fix 2)."""
        if isinstance(data, bytearray):
            data[9] &= 0x7F
        else:  # h2 4.1 keeps immutable bytes
            self.data = data[:9] + bytes((data[9] & 0x7F,)) + data[10:]


if not hasattr(h2.frame_buffer.FrameBuffer(), "_data"):
    # h2 4.1 names its buffer `data` (bytes); 4.2 and later `_data` (a bytearray).
    _StrictFrameBuffer._data = property(lambda self: self.data)  # type: ignore[assignment]


class _Connection(h2.connection.H2Connection):
    def _receive_frame(self, frame: Any) -> Any:
        if self.state_machine.state is h2.connection.ConnectionState.CLOSED and not isinstance(
            frame, hyperframe.frame.GoAwayFrame
        ):
            return []
        return super()._receive_frame(frame)


class _ServerConnection(_Connection):
    def _receive_headers_frame(self, frame: Any) -> Any:
        if frame.stream_id in self.streams:
            return super()._receive_headers_frame(frame)
        values = self.local_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS]
        limit = values[0]
        # Counting open streams walks them all (h2 counts again itself): skip
        # it while there are fewer streams of any kind than the limit.
        if len(self.streams) < limit or self.open_inbound_streams < limit:
            return super()._receive_headers_frame(frame)
        # Over the limit: let h2 take the stream in (so HPACK state and stream
        # IDs stay in step with the peer), then refuse just that stream.
        values[0] = _UNLIMITED
        try:
            frames, _events = super()._receive_headers_frame(frame)
        finally:
            values[0] = limit
        frames += self.streams[frame.stream_id].reset_stream(h2.errors.ErrorCodes.REFUSED_STREAM)
        return frames, []


def new_connection(config: h2.config.H2Configuration) -> h2.connection.H2Connection:
    """An H2Connection with the fixes above (the stream limit on the server side only)."""
    cls = _Connection if config.client_side else _ServerConnection
    conn = cls(config)
    install_shortcuts(conn, server_side=not config.client_side)
    strict = _StrictFrameBuffer(server=not config.client_side)
    strict.max_frame_size = conn.max_inbound_frame_size
    conn.incoming_buffer = strict
    return conn
