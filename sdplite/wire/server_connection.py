"""Running server calls, and one accepted connection as the server sees it.

:func:`run_call` runs one call to its end: decode the request, call the
handler, send the answer or the status its exception maps to. It needs only
a :class:`Link` (send through the flow-control windows, act under the lock),
so the same code runs on a real :class:`.connection.Connection` and, in
tests and benchmarks, on a :class:`MemoryLink` with no socket and no thread.

:class:`ServerConnection` is the narrow face :class:`.server.Server` keeps
for each connection: start, drain, wait until idle, close, join, and
name the handlers still running. It joins a
:class:`.server_protocol.ServerProtocol` (decisions) to a
:class:`.connection.Connection` (I/O); the server never sees either's lock
or calls.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Any, Callable, Optional

from ..logtext import cut, cut_traceback
from .connection import Connection, Submit
from .h2_protocol import Outgoing, StreamGone
from .handlers import CANCELLED, End, Method, status_of
from .server_protocol import Limits, ServerCall, ServerProtocol
from .status import GrpcError, StatusCode

__all__ = ["Link", "MemoryLink", "ServerConnection", "run_call"]

log = logging.getLogger("sdplite.wire")


class Link:
    """What running a call needs of its connection (the interface; see :class:`MemoryLink`)."""

    protocol: ServerProtocol

    def write(self, out: Outgoing) -> None:
        """Send ``out`` whole through the flow-control windows; raise StreamGone if the stream ends."""
        raise NotImplementedError

    def locked(self, action: Callable[..., Any], *args: Any) -> Any:
        """``action(*args)`` under the protocol's lock, then send what it queued."""
        raise NotImplementedError


class MemoryLink(Link):
    """A link with no socket and no thread: for tests and profiling.

    Sends go straight into the protocol; a send that would have to wait for
    the peer's window raises :class:`StreamGone` instead (nobody else can
    open it). The bytes to send are the protocol's ``data_to_send()``.
    """

    def __init__(self, protocol: ServerProtocol) -> None:
        self.protocol = protocol

    def write(self, out: Outgoing) -> None:
        if not self.protocol.send(out):
            raise StreamGone("the peer's flow-control window is exhausted (a MemoryLink cannot wait)")

    def locked(self, action: Callable[..., Any], *args: Any) -> Any:
        return action(*args)


def run_call(link: Any, call: ServerCall) -> None:
    """Run one call to its end; never raises (the client gets a status instead)."""
    protocol: ServerProtocol = link.protocol
    context = call.context
    method = call.method
    assert context is not None and method is not None
    protocol.running.add(call)
    try:
        try:
            request = method.decode(call.messages[0])
        except Exception as exc:
            raise GrpcError(StatusCode.INTERNAL, f"could not decode the request message: {exc}") from exc
        if call.stream is None:
            link.write(protocol.response(call, method.handler(request, context)))
        else:
            _run_streaming(link, protocol, call, method, request)
    except StreamGone:
        pass
    except BaseException as exc:
        code, message = status_of(exc)
        if not isinstance(exc, GrpcError):
            log.error("handler for %s raised %s\n%s", context.method, cut(message), cut_traceback(exc))
        link.locked(protocol.finish, call, code, message)
    finally:
        protocol.running.discard(call)
        context._finish()


def _run_streaming(
    link: Any, protocol: ServerProtocol, call: ServerCall, method: Method[Any], request: Any
) -> None:
    """Send what the handler returns or feeds into its stream, until an end or a cancel."""
    stream = call.stream
    assert stream is not None
    items = method.handler(request, stream)
    if items is not None:
        for item in items:
            if call.ended:
                return
            link.write(protocol.stream_message(call, item))
        stream.end()
    while True:
        item = stream.next_item()
        if item is CANCELLED:
            return
        if isinstance(item, End):
            out = link.locked(protocol.stream_end, call, item.code, item.message)
            if out is not None:
                link.write(out)
            return
        link.write(protocol.stream_message(call, item))


class ServerConnection:
    """One accepted connection: what :class:`.server.Server` may do with it, and nothing more."""

    def __init__(
        self,
        sock: socket.socket,
        methods: Mapping[str, Method[Any]],
        limits: Limits,
        name: str,
        *,
        submit: Submit,
        handoff_after: Optional[float],
        on_closed: Callable[[ServerConnection], None],
    ) -> None:
        self.name = name
        self._protocol = ServerProtocol(methods, limits, name)
        self._conn = Connection(
            sock,
            self._protocol,
            name,
            run_call=run_call,
            submit=submit,
            handoff_after=handoff_after,
            on_closed=lambda _conn: on_closed(self),
        )

    def start(self) -> None:
        """Send our SETTINGS at once (grpc-go waits for them), then read."""
        self._conn.locked(self._protocol.start)
        self._conn.start_reading(f"sdplite-conn-{self.name}")

    def drain(self) -> None:
        """Refuse new calls; end open streams with UNAVAILABLE."""
        self._conn.locked(self._protocol.drain)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in progress (or the connection is gone)."""
        protocol = self._protocol
        return self._conn.wait_until(lambda: protocol.idle, timeout)

    def close(self, graceful: bool = True, timeout: float = 2.0) -> None:
        """GOAWAY (if graceful, for up to ``timeout`` s), then drop the connection."""
        self._conn.close(graceful, timeout)

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until the socket is closed; False on timeout."""
        return self._conn.join(timeout)

    def running_handlers(self) -> list[str]:
        """The methods whose handlers are running now (for a stop to name what it abandons)."""
        return [call.context.method for call in list(self._protocol.running) if call.context is not None]
