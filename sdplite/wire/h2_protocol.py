"""What both ends of a connection do with h2, without a socket or a thread.

h2 is a state machine that does no I/O: bytes in (``receive_data``), events
out, bytes to send collected (``data_to_send``). :class:`H2Protocol` keeps
that shape one level up, as grpclib's ``EventsProcessor`` does: it turns
received bytes into call decisions and sends through named steps, and it
never blocks, sleeps or touches a socket. The server (:mod:`.server_protocol`)
and the client (:mod:`.client`) extend it; :mod:`.connection` does the I/O
and holds the one lock every method here is called under.

Sending is split into steps a caller repeats (:meth:`H2Protocol.send`): the
headers, then as much data as the flow-control windows allow, then the end
(trailers or END_STREAM). When a window is exhausted the step returns False
and the I/O layer waits for a WINDOW_UPDATE or a SETTINGS change, then calls
again (RFC 9113 6.9; docs/design.md, "Flow control").
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from typing import Any, Optional

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from .h2_fixes import new_connection

__all__ = [
    "CallState",
    "H2Call",
    "H2Protocol",
    "Headers",
    "Outgoing",
    "StreamGone",
    "error_name",
    "make_config",
]

log = logging.getLogger("sdplite.wire")

Headers = Sequence["tuple[bytes, bytes]"]


class StreamGone(Exception):
    """The stream or its connection is closed: nothing more can be sent on it."""


class CallState(enum.Enum):
    """Where one call (one stream) stands, seen from our end.

    ``RECEIVING`` -> ``RECEIVED`` -> ``SENDING`` -> ``ENDED`` on the server
    (a client call starts in ``SENDING``, as its headers go out at once). Any
    state may jump to ``ENDED``; nothing leaves it. Only the owning protocol's
    one ending transition sets ``ENDED``.
    """

    RECEIVING = "receiving"  # the peer is still sending the request
    RECEIVED = "received"  # the peer has sent everything; we have sent nothing
    SENDING = "sending"  # our headers are out; trailers or END_STREAM will follow
    ENDED = "ended"  # nothing more goes either way


# Enum members as module names: a class attribute of an Enum costs four times a global
# lookup, and the call path tests the state about ten times per call.
_RECEIVING, _RECEIVED, _SENDING, _ENDED = (
    CallState.RECEIVING,
    CallState.RECEIVED,
    CallState.SENDING,
    CallState.ENDED,
)


class H2Call:
    """What the protocol needs to know of one stream; server and client extend it."""

    __slots__ = ("stream_id", "state")

    def __init__(self, stream_id: int, state: CallState) -> None:
        self.stream_id = stream_id
        self.state = state

    @property
    def ended(self) -> bool:
        return self.state is _ENDED


class Outgoing:
    """One send in progress: headers, then data, then trailers or END_STREAM.

    ``end_stream`` closes our side after the data when no trailers are given.
    The protocol's send steps consume it; the I/O layer only repeats
    :meth:`H2Protocol.send` until it returns True.
    """

    __slots__ = ("call", "headers", "data", "offset", "trailers", "end_stream", "ended")

    def __init__(
        self,
        call: H2Call,
        headers: Optional[Headers] = None,
        data: bytes = b"",
        trailers: Optional[Headers] = None,
        end_stream: bool = False,
    ) -> None:
        self.call = call
        self.headers = headers
        self.data = data
        self.offset = 0  # bytes of ``data`` sent so far
        self.trailers = trailers
        self.end_stream = end_stream or trailers is not None
        self.ended = False  # END_STREAM has gone out


def make_config(client_side: bool) -> h2.config.H2Configuration:
    """h2 settings shared by both ends.

    Headers stay bytes (no decoding per call), and outbound header
    validation is off: we only ever send header lists built by this package,
    already lower-case with pseudo-headers first. Inbound validation and
    normalisation are off too: the peer is not trusted, but
    :mod:`.header_checks` does the checks that matter in one pass, for a
    fraction of h2's cost, and a failure resets only the stream
    (docs/design.md, "What we take over from h2").
    """
    return h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )


class H2Protocol:
    """One connection's h2 state, its calls' sending, and how it ended; no I/O.

    Not thread-safe: the owner (:class:`.connection.Connection`) calls every
    method with its lock held.
    """

    def __init__(self, client_side: bool) -> None:
        self.h2 = new_connection(make_config(client_side))
        #: True once the connection can carry nothing more.
        self.closed = False
        self.close_reason = ""

    # -- bytes in --------------------------------------------------------------

    def receive(self, data: bytes) -> list[Any]:
        """Feed received bytes; return the calls now ready to run (in order).

        A protocol error from the peer ends the connection (h2 has queued a
        GOAWAY naming it: send it, then drop). Always send
        :meth:`data_to_send` afterwards, even when nothing came out: h2
        answers SETTINGS and PING on its own (RFC 9113 6.5.3, 6.7).
        """
        if self.closed:
            return []
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.lose(f"protocol error from peer: {exc}")
            return []
        return self.on_events(events)

    #: A side's handler per h2 event type, called as ``handler(self, event)``.
    _handlers: dict[type, Callable[[Any, Any], None]] = {}

    def on_events(self, events: list[Any]) -> list[Any]:
        """Handle a batch of h2 events through :attr:`_handlers`; a GOAWAY ends the connection.

        Returns the calls now ready to run (none here; the server side collects them).
        """
        for event in events:
            handler = self._handlers.get(type(event))
            if handler is not None:
                handler(self, event)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.lose(f"peer sent GOAWAY ({error_name(event.error_code)})")
        return []

    def data_to_send(self) -> bytes:
        """Bytes h2 has queued for the peer (and forgets)."""
        return self.h2.data_to_send()

    # -- bytes out: the send steps ----------------------------------------------

    def send(self, out: Outgoing) -> bool:
        """Send what the windows allow of ``out``; True once all of it has gone.

        Raises :class:`StreamGone` if the stream or the connection ended
        first; whatever was sent before that stays sent.
        """
        call = out.call
        if call.state is _ENDED or self.closed:
            raise StreamGone(self.close_reason or "stream closed")
        try:
            if out.headers is not None:
                self._send_headers(out)
            if out.offset < len(out.data) and not self._send_data(out):
                return False
            self._send_end(out)
        except (h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError) as exc:
            self.stream_gone(call)
            raise StreamGone(f"stream {call.stream_id} closed") from exc
        except h2.exceptions.ProtocolError as exc:
            self.lose(f"h2 refused to send: {exc}")
            raise StreamGone(self.close_reason) from exc
        return True

    def _send_headers(self, out: Outgoing) -> None:
        headers = out.headers
        assert headers is not None
        ends = out.end_stream and not out.data and out.trailers is None
        self.h2.send_headers(out.call.stream_id, headers, end_stream=ends)
        out.headers = None
        out.ended = ends
        if out.call.state is not _ENDED:
            out.call.state = _SENDING

    def _send_data(self, out: Outgoing) -> bool:
        """Send data frames while the stream and connection windows allow; True when all are out."""
        h2conn = self.h2
        sid = out.call.stream_id
        data = out.data
        total = len(data)
        while out.offset < total:
            window = min(h2conn.local_flow_control_window(sid), h2conn.max_outbound_frame_size)
            if window <= 0:  # may be negative after a SETTINGS decrease (RFC 9113 6.9.2)
                return False
            n = min(window, total - out.offset)
            chunk = data if n == total else data[out.offset : out.offset + n]
            out.offset += n
            ends = out.end_stream and out.offset == total and out.trailers is None
            h2conn.send_data(sid, chunk, end_stream=ends)
            out.ended = ends
        return True

    def _send_end(self, out: Outgoing) -> None:
        if out.trailers is not None:
            self.h2.send_headers(out.call.stream_id, out.trailers, end_stream=True)
            out.trailers = None
            out.ended = True
            self.sent_trailers(out.call)
        elif out.end_stream and not out.ended:
            self.h2.end_stream(out.call.stream_id)
            out.ended = True

    def can_send(self, call: H2Call) -> bool:
        """True when a blocked :meth:`send` on ``call`` should try again."""
        if call.state is _ENDED or self.closed:
            return True
        try:
            return self.h2.local_flow_control_window(call.stream_id) > 0
        except h2.exceptions.StreamClosedError:
            return True

    def reset(self, call: H2Call, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        """Send RST_STREAM; a no-op if the stream or the connection is already gone."""
        if self.closed:
            return
        try:
            self.h2.reset_stream(call.stream_id, error_code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass

    def close_connection(self) -> None:
        """Queue a GOAWAY(NO_ERROR) (RFC 9113 6.8); h2 accepts nothing after it."""
        if not self.closed:
            try:
                self.h2.close_connection()
            except h2.exceptions.ProtocolError:
                pass

    # -- endings ---------------------------------------------------------------

    def lose(self, reason: str) -> None:
        """The connection can carry nothing more: end every call."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.on_lost(reason)

    def on_lost(self, reason: str) -> None:
        """End every call of a connection that is gone (subclasses)."""

    def stream_gone(self, call: H2Call) -> None:
        """h2 says the stream is closed: end the call (subclasses)."""
        call.state = _ENDED

    def sent_trailers(self, call: H2Call) -> None:
        """Our trailers went out: the call is over on our side (subclasses)."""

    def busy(self, call: Any) -> None:
        """No thread can run a call :meth:`receive` returned: refuse it (servers)."""
        raise NotImplementedError

    # -- the reader's clock -----------------------------------------------------

    def next_deadline(self) -> Optional[float]:
        """``time.monotonic()`` value at which :meth:`expire` is due, or None."""
        return None

    def expire(self, now: float) -> None:
        """End the calls whose deadline is at or before ``now``."""


def error_name(error_code: Optional[int]) -> str:
    try:
        return h2.errors.ErrorCodes(error_code or 0).name
    except ValueError:
        return f"error code {error_code}"
