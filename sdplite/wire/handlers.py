"""What a handler sees: methods, the per-call context, and the response stream.

Unary handlers are ``handler(request, context) -> response``. Server-streaming
handlers are ``handler(request, stream) -> None | Iterable[response]``: they
either return an iterable, which is sent item by item, or return None and
feed ``stream`` (a ``queue.Queue`` underneath) from any thread with
``stream.send()`` until ``stream.end()``. A response may be a protobuf message
or ``bytes`` already serialised (serialise once, send to many watchers).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable
from typing import Any, Callable, Generic, Optional, TypeVar, Union

from .status import GrpcError, StatusCode

__all__ = [
    "Message",
    "ServerContext",
    "ResponseStream",
    "Method",
    "End",
    "CANCELLED",
    "status_of",
    "unary",
    "server_streaming",
]

log = logging.getLogger("sdplite.wire")

Req = TypeVar("Req")

#: A response: a protobuf message (anything with SerializeToString) or bytes.
Message = Any


class ServerContext:
    """One call as its handler sees it: method, metadata, deadline, cancellation."""

    __slots__ = ("method", "metadata", "deadline", "_cancelled", "_event", "_done", "_callbacks", "_lock")

    def __init__(self, method: str, metadata: list[tuple[bytes, bytes]], deadline: Optional[float]):
        self.method = method
        #: Request headers that are not pseudo-headers, as (name, value) bytes.
        self.metadata = metadata
        #: ``time.monotonic()`` value past which the caller has given up, or None.
        self.deadline = deadline
        self._cancelled = False
        self._event: Optional[threading.Event] = None  # made only for wait_cancelled()
        self._done = False
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def time_remaining(self) -> Optional[float]:
        """Seconds left before the deadline (never negative), or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def cancelled(self) -> bool:
        """True once the caller cancelled, the deadline passed or the connection dropped."""
        return self._cancelled

    def is_active(self) -> bool:
        """True until the call is cancelled or finished."""
        return not self._cancelled and not self._done

    def wait_cancelled(self, timeout: Optional[float] = None) -> bool:
        """Block until the call is cancelled (True) or ``timeout`` passes (False)."""
        with self._lock:
            if self._event is None:
                self._event = threading.Event()
                if self._cancelled:
                    self._event.set()
            event = self._event
        return event.wait(timeout)

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once when the call ends, however it ends."""
        with self._lock:
            if not self._done:
                self._callbacks.append(callback)
                return
        callback()

    # -- used by the server --------------------------------------------------

    def _cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            event = self._event
        if event is not None:
            event.set()

    def _finish(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a callback's failure must not hide the others
                log.exception("done callback failed")


class End:
    """Put on a stream's queue by :meth:`ResponseStream.end`: the status to finish with."""

    __slots__ = ("code", "message")

    def __init__(self, code: StatusCode, message: str) -> None:
        self.code = code
        self.message = message


#: Put on a stream's queue when the call is cancelled, to wake its sender.
CANCELLED = object()


class ResponseStream:
    """The sending half of a server-streaming call, fed through a ``queue.Queue``.

    Thread-safe: any thread may call :meth:`send` and :meth:`end`. With
    ``latest_only`` set, messages still waiting when a newer one arrives are
    dropped (for state streams such as ListAndWatch, where only the newest
    list matters).
    """

    def __init__(self, context: ServerContext, latest_only: bool = False) -> None:
        self.context = context
        self.latest_only = latest_only
        self.queue: queue.Queue[Any] = queue.Queue()
        self._ended = False

    def send(self, message: Message) -> bool:
        """Queue a message; False (and nothing queued) if the stream has ended."""
        if self._ended or self.context.cancelled():
            return False
        self.queue.put(message)
        return True

    def end(self, code: StatusCode = StatusCode.OK, message: str = "") -> None:
        """Finish the stream with a status once the queued messages are sent."""
        if not self._ended:
            self._ended = True
            self.queue.put(End(StatusCode(code), message))

    @property
    def ended(self) -> bool:
        """True once :meth:`end` was called."""
        return self._ended

    def _cancel(self) -> None:
        self.queue.put(CANCELLED)

    def next_item(self) -> Any:
        """The next message, an end marker or CANCELLED (blocks)."""
        item = self.queue.get()
        if not self.latest_only or item is CANCELLED or isinstance(item, End):
            return item
        # Skip to the newest message, but never past an end or a cancel.
        while True:
            try:
                nxt = self.queue.get_nowait()
            except queue.Empty:
                return item
            if nxt is CANCELLED or isinstance(nxt, End):
                # Put the control item back behind the newest message.
                self._pushback(nxt)
                return item
            item = nxt

    def _pushback(self, control: Any) -> None:
        with self.queue.mutex:
            self.queue.queue.appendleft(control)
            self.queue.not_empty.notify()


UnaryHandler = Callable[[Any, ServerContext], Message]
StreamHandler = Callable[[Any, ResponseStream], Optional[Iterable[Message]]]


class Method(Generic[Req]):
    """A method served at a full path such as ``/v1beta1.DevicePlugin/Allocate``."""

    __slots__ = ("path", "streaming", "handler", "decode", "latest_only")

    def __init__(
        self,
        path: str,
        handler: Union[UnaryHandler, StreamHandler],
        decode: Callable[[bytes], Req],
        streaming: bool = False,
        latest_only: bool = False,
    ) -> None:
        if not path.startswith("/") or path.count("/") != 2:
            raise ValueError(f"method path {path!r} must look like /package.Service/Method")
        self.path = path
        self.handler: Callable[..., Any] = handler
        self.decode = decode
        self.streaming = streaming
        self.latest_only = latest_only


def unary(path: str, handler: UnaryHandler, request_type: Any) -> Method[Any]:
    """A unary method; ``request_type`` is the protobuf request class."""
    return Method(path, handler, request_type.FromString)


def server_streaming(
    path: str, handler: StreamHandler, request_type: Any, latest_only: bool = False
) -> Method[Any]:
    """A server-streaming method; see :class:`ResponseStream` for ``latest_only``."""
    return Method(path, handler, request_type.FromString, streaming=True, latest_only=latest_only)


def status_of(exc: BaseException) -> tuple[StatusCode, str]:
    """The status a handler's exception becomes: its own for GrpcError, else UNKNOWN."""
    if isinstance(exc, GrpcError):
        return exc.code, exc.message
    text = str(exc)
    return StatusCode.UNKNOWN, f"{type(exc).__name__}: {text}" if text else type(exc).__name__
