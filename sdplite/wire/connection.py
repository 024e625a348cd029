"""One HTTP/2 connection: a socket, its H2Connection, and the locks around them.

h2 does no I/O; this module is the thin layer that does. One reader thread
per connection feeds received bytes to h2 and dispatches the events (the
server and client say what each event means). Any thread may send: every h2
call happens under one lock, and the bytes h2 produces are written by
whichever thread is already writing (a combining writer), so a thread never
holds the h2 lock while it blocks in ``sendall``.

Flow control (GRPC-H2.md 1.9): a sender waits on a condition of the h2 lock,
which releases it, and the reader wakes every waiter on WINDOW_UPDATE, on a
SETTINGS change (it resizes every stream window) and on stream or connection
loss.

Reading is a role, not a thread: the thread that reads may change (see
:mod:`.reader_calls`). Whichever reader meets the end of the connection
closes the socket.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from .h2_fixes import new_connection

__all__ = ["H2Stream", "StreamGone", "Transport", "Headers", "error_name"]

log = logging.getLogger("sdplite.wire")

Headers = Sequence["tuple[bytes, bytes]"]

_READ_SIZE = 256 * 1024


class StreamGone(Exception):
    """The stream or its connection is closed: nothing more can be sent on it."""


class H2Stream:
    """What the transport needs to know of one stream; server and client extend it."""

    __slots__ = ("stream_id", "closed", "headers_sent")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        #: Set (under the transport lock) once nothing more may be sent.
        self.closed = False
        #: Set (under the lock) once our HEADERS went out; a second must be trailers.
        self.headers_sent = False


def make_config(client_side: bool) -> h2.config.H2Configuration:
    """h2 settings shared by both ends.

    Headers stay bytes (no decoding per call), and outbound header
    validation is off: we only ever send header lists built by this package,
    already lower-case with pseudo-headers first (GRPC-H2.md 2.4).
    Inbound validation and normalisation are off too: the peer is not
    trusted, but :mod:`.header_checks` does the checks that matter in one
    pass, for a fraction of h2's cost, and a failure resets only the stream.
    """
    return h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )


class Transport:
    """Owns one socket and its :class:`h2.connection.H2Connection`."""

    def __init__(self, sock: socket.socket, client_side: bool, name: str) -> None:
        self.sock = sock
        self.name = name
        self.h2 = new_connection(make_config(client_side))
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        #: True once the connection can carry nothing more; guarded by ``lock``.
        self.closed = False
        self.close_reason = ""
        self._writing = False
        # The reading role (see the module docstring), all guarded by ``lock``:
        self._reading = False  # a reader was started
        self._reader_ident: Optional[int] = None  # the thread that reads now
        self._read_done = False  # the last reader has closed the socket

    # -- writing -------------------------------------------------------------

    def flush(self, timeout: Optional[float] = None) -> None:
        """Write whatever h2 has queued, unless another thread already is.

        The active writer loops until h2 has nothing left, checking under the
        lock, so bytes queued by a thread that returns early are never
        stranded. With a ``timeout``, a peer that does not read within it
        loses the connection (a stop must not wait on it for ever).
        """
        with self.lock:
            if self._writing:
                return
            self._writing = True
        data = b""
        end = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                with self.lock:
                    data = self.h2.data_to_send()
                    if not data:
                        self._writing = False
                        self.cond.notify_all()
                        return
                if end is None:
                    self.sock.sendall(data)
                else:
                    self._send_until(data, end)
        except OSError as exc:
            with self.lock:
                self._writing = False
                self.cond.notify_all()
                self._lose(f"write failed: {exc}")
            self._wake_reader()

    def _send_until(self, data: bytes, end: float) -> None:
        """``sendall`` that gives up at monotonic time ``end`` (raises OSError)."""
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view, socket.MSG_DONTWAIT) :]
                continue
            except BlockingIOError:
                pass
            left = end - time.monotonic()
            if left <= 0 or not select.select([], [self.sock], [], left)[1]:
                raise OSError("the peer has not read what we sent in time")

    def write(
        self,
        stream: H2Stream,
        headers: Optional[Headers] = None,
        data: bytes = b"",
        trailers: Optional[Headers] = None,
        end_stream: bool = False,
    ) -> None:
        """Send headers, then data within the flow-control windows, then trailers.

        ``end_stream`` closes our side after the data when no trailers are
        given. Blocks while the peer's windows are exhausted, without holding
        the lock. Raises :class:`StreamGone` if the stream or connection ends
        first; whatever was sent before that stays sent.
        """
        h2conn = self.h2
        sid = stream.stream_id
        total = len(data)
        offset = 0
        ended = False  # END_STREAM has gone out
        done = False
        while not done:
            with self.lock:
                try:
                    while True:
                        if stream.closed or self.closed:
                            raise StreamGone(self.close_reason or "stream closed")
                        if headers is not None:
                            ended = end_stream and total == 0 and trailers is None
                            h2conn.send_headers(sid, headers, end_stream=ended)
                            stream.headers_sent = True
                            headers = None
                        if offset < total:
                            window = min(
                                h2conn.local_flow_control_window(sid),
                                h2conn.max_outbound_frame_size,
                            )
                            if window <= 0:
                                break
                            n = min(window, total - offset)
                            chunk = data if n == total else data[offset : offset + n]
                            offset += n
                            ended = end_stream and offset == total and trailers is None
                            h2conn.send_data(sid, chunk, end_stream=ended)
                            continue
                        if trailers is not None:
                            h2conn.send_headers(sid, trailers, end_stream=True)
                        elif end_stream and not ended:
                            h2conn.end_stream(sid)
                        done = True
                        break
                except (h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError) as exc:
                    stream.closed = True
                    raise StreamGone(f"stream {sid} closed") from exc
                except h2.exceptions.ProtocolError as exc:
                    self._lose(f"h2 refused to send: {exc}")
                    raise StreamGone(self.close_reason) from exc
            self.flush()
            if not done:
                with self.lock:
                    self.cond.wait_for(lambda: self._can_send(stream))

    def _can_send(self, stream: H2Stream) -> bool:
        if stream.closed or self.closed:
            return True
        try:
            return self.h2.local_flow_control_window(stream.stream_id) > 0
        except h2.exceptions.StreamClosedError:
            return True

    def reset(self, stream: H2Stream, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        """Reset a stream (caller holds the lock); a no-op if it is already gone."""
        stream.closed = True
        if self.closed:
            return
        try:
            self.h2.reset_stream(stream.stream_id, error_code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self.cond.notify_all()

    # -- reading -------------------------------------------------------------

    def start_reader(self, name: str) -> None:
        with self.lock:
            self._reading = True
        threading.Thread(target=self._first_reader, name=name, daemon=True).start()

    def _first_reader(self) -> None:
        with self.lock:
            self._reader_ident = threading.get_ident()
        self._read_loop()

    def _read_loop(self) -> None:
        """Read until the connection ends, or until another thread takes the role over."""
        me = threading.get_ident()
        handed_over = False
        reason = "connection closed by peer"
        try:
            while True:
                with self.lock:  # calls end on other threads meanwhile
                    timeout = self.poll_timeout()
                if timeout is not None:
                    ready = select.select([self.sock], [], [], max(timeout, 0.0))[0]
                    if not ready:
                        with self.lock:
                            self.on_timer()
                        self.flush()
                        continue
                data = self.sock.recv(_READ_SIZE)
                if not data:
                    break
                with self.lock:
                    if self.closed:
                        reason = self.close_reason
                        break
                    try:
                        events = self.h2.receive_data(data)
                    except h2.exceptions.ProtocolError as exc:
                        # h2 queued a GOAWAY naming the error; send it, then drop.
                        reason = f"protocol error from peer: {exc}"
                        events = None
                    if events:
                        self._dispatch(events)
                self.flush()
                if events is None or self.closed:
                    reason = self.close_reason or reason
                    break
                if not self.after_read(me):
                    handed_over = True  # another thread reads now and will close the socket
                    return
        except OSError as exc:
            reason = f"connection lost: {exc}"
        except Exception:  # a bug in an event handler: drop the connection, keep the process
            log.exception("%s: unexpected error in the reader", self.name)
            reason = "internal error in the connection reader"
        finally:
            if not handed_over:
                self._close_socket(reason)

    def _close_socket(self, reason: str) -> None:
        with self.lock:
            self._lose(reason)
            self.cond.wait_for(lambda: not self._writing, timeout=5.0)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self.lock:
            self._read_done = True
            self.cond.notify_all()
        self.on_closed()

    def _dispatch(self, events: list[Any]) -> None:
        """Route h2 events (lock held)."""
        for event in events:
            handler = self._event_handlers.get(type(event))
            if handler is not None:
                handler(self, event)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._lose(f"peer sent GOAWAY ({error_name(event.error_code)})")
            elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self.cond.notify_all()

    #: Subclasses map event types to ``handler(transport, event)`` (lock held);
    #: GOAWAY and window changes are handled here unless they do.
    _event_handlers: dict[type, Callable[[Any, Any], None]] = {}

    def _lose(self, reason: str) -> None:
        """Mark the connection dead and cancel every stream (lock held)."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.on_lost(reason)
        self.cond.notify_all()

    def _wake_reader(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self, graceful: bool = True, timeout: float = 2.0) -> None:
        """Send GOAWAY (if graceful, for up to ``timeout`` s), then drop the connection.

        The reader thread notices, cancels what is left and closes the socket.
        A peer that does not read cannot hold this up beyond ``timeout``.
        """
        with self.lock:
            if graceful and not self.closed:
                try:
                    self.h2.close_connection()
                except h2.exceptions.ProtocolError:
                    pass
        if graceful:
            # Another thread may be mid-write (say, a stream's trailers): let
            # it finish before the socket is shut, then send what is left.
            end = time.monotonic() + timeout
            self.flush(timeout)
            with self.lock:
                self.cond.wait_for(lambda: not self._writing, max(0.0, end - time.monotonic()))
            self.flush(max(0.0, end - time.monotonic()))
        with self.lock:
            self._lose("connection closed locally")
        self._wake_reader()

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait until the reader has closed the socket (at once if called by the reader)."""
        with self.lock:
            if not self._reading or self._reader_ident == threading.get_ident():
                return
            self.cond.wait_for(lambda: self._read_done, timeout)

    # -- hooks for the server and client (called with the lock held) ----------

    def poll_timeout(self) -> Optional[float]:
        """Seconds until :meth:`on_timer` should run, or None for never (lock held)."""
        return None

    def on_timer(self) -> None:
        """Called by the reader when :meth:`poll_timeout` has elapsed."""

    def on_lost(self, reason: str) -> None:
        """The connection is gone: cancel every stream."""

    def on_closed(self) -> None:
        """Called (without the lock) once the socket is closed."""

    def after_read(self, reader: int) -> bool:
        """Called (without the lock) after each batch of events is dispatched and flushed.

        Returns False if thread ``reader`` is no longer the reader and must
        leave the connection alone.
        """
        return True


def error_name(error_code: Optional[int]) -> str:
    try:
        return h2.errors.ErrorCodes(error_code or 0).name
    except ValueError:
        return f"error code {error_code}"
