"""One HTTP/2 connection's I/O: the socket, the lock, the reading role and the watchdog.

The protocol object (:mod:`.h2_protocol` and its server and client kinds)
decides everything and does no I/O; a :class:`Connection` feeds it the bytes
it reads, writes the bytes it queues, and runs the calls it says are ready.

**Locking.** Every protocol call happens under one lock. The bytes it
queues are written by whichever thread is already writing (a combining
writer), so no thread holds the lock while it blocks in ``sendall``. A
sender out of flow-control window waits on a condition of the lock; every
flush ends with a wake-up, so a WINDOW_UPDATE, a SETTINGS change or the end
of a stream or connection wakes it (docs/design.md, "Flow control").

**The reading role** (docs/design.md, "The reader and the watchdog"), in
this module only:

- exactly one thread reads at a time; the role, not a thread, is what
  :attr:`Connection._reader` names;
- the reader runs the unary calls of each batch it reads itself, one after
  another, before it reads again: handing a small call to a worker costs two
  thread switches, more than h2's whole work for it;
- while it runs them a watchdog (on a worker) looks every ``handoff_after``
  seconds; if one call has run that long, the watchdog takes the role, hands
  the calls still waiting to workers and reads on. The thread of the slow
  call finds it no longer reads when the call returns, and leaves. With no
  calls to run the watchdog stands down at its next look;
- whoever meets the end of the connection (EOF, an error, a local close)
  cleans up: it ends every call, drops the calls still queued for the
  reader, closes the socket and reports the connection closed.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from typing import Any, Callable, Optional

from .h2_protocol import H2Protocol, Outgoing, StreamGone

__all__ = ["Connection"]

log = logging.getLogger("sdplite.wire")

_READ_SIZE = 256 * 1024

#: ``run_call(connection, call)``: run one call to its end; must not raise.
RunCall = Callable[["Connection", Any], None]
#: ``submit(task)``: run ``task`` on another thread; False if none is free.
Submit = Callable[[Callable[[], None]], bool]


class Connection:
    """Owns one socket and drives one :class:`~.h2_protocol.H2Protocol` over it.

    ``run_call`` and ``submit`` are given by a server (a client runs no
    calls); ``handoff_after`` is how long the reader may spend in one call
    before the watchdog takes reading over (None: every call goes to
    ``submit``). ``on_closed(connection)`` is called once the socket is
    closed.
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol: H2Protocol,
        name: str,
        *,
        run_call: Optional[RunCall] = None,
        submit: Optional[Submit] = None,
        handoff_after: Optional[float] = None,
        on_closed: Optional[Callable[[Connection], None]] = None,
    ) -> None:
        self.sock = sock
        self.protocol = protocol
        self.name = name
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self._run_call = run_call
        self._submit = submit
        self.handoff_after = handoff_after if run_call is not None and submit is not None else None
        self._on_closed = on_closed
        self._writing = False
        # The reading role, all guarded by ``lock``:
        self._started = False  # a reader was started
        self._reader: Optional[int] = None  # the thread that reads now
        self._read_done = False  # whoever met the end has closed the socket
        self._ready: list[Any] = []  # calls the reader will run, in order
        self._running_since: Optional[float] = None  # when the reader began its current call
        self._runs = 0  # calls begun by readers so far: the watchdog's sign of activity
        self._watchdog = False  # a watchdog is armed

    @property
    def closed(self) -> bool:
        """True once the connection can carry nothing more."""
        return self.protocol.closed

    # -- writing -------------------------------------------------------------

    def flush(self, timeout: Optional[float] = None) -> None:
        """Write whatever the protocol has queued, unless another thread already is.

        The active writer loops until nothing is left, checking under the
        lock, so bytes queued by a thread that returns early are never
        stranded; it wakes every waiter when it stops. With a ``timeout``, a
        peer that does not read within it loses the connection (a stop must
        not wait on it for ever).
        """
        with self.lock:
            if self._writing:
                return
            self._writing = True
        end = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                with self.lock:
                    data = self.protocol.data_to_send()
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
                self.protocol.lose(f"write failed: {exc}")
                self.cond.notify_all()
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

    def write(self, out: Outgoing) -> None:
        """Send ``out`` whole, waiting (without the lock) while the peer's windows are exhausted.

        Raises :class:`~.h2_protocol.StreamGone` if the stream or the
        connection ends first.
        """
        while True:
            try:
                with self.lock:
                    done = self.protocol.send(out)
            except StreamGone:
                if self.protocol.closed:
                    self._wake_reader()
                raise
            self.flush()
            if done:
                return
            self._wait_for_window(out)

    def _wait_for_window(self, out: Outgoing) -> None:
        with self.lock:
            self.cond.wait_for(lambda: self.protocol.can_send(out.call))

    def locked(self, action: Callable[..., Any], *args: Any) -> Any:
        """``action(*args)`` under the lock, then flush what it queued; returns its result."""
        with self.lock:
            result = action(*args)
        self.flush()
        return result

    def wait_until(self, predicate: Callable[[], bool], timeout: Optional[float]) -> bool:
        """Wait until ``predicate()`` (checked under the lock) holds; False on timeout."""
        with self.lock:
            return self.cond.wait_for(predicate, timeout)

    # -- the reading role ------------------------------------------------------

    def start_reading(self, thread_name: str) -> None:
        """Start the first reader thread."""
        with self.lock:
            self._started = True
        threading.Thread(target=self._first_reader, name=thread_name, daemon=True).start()

    def _first_reader(self) -> None:
        with self.lock:
            self._reader = threading.get_ident()
        self._read_loop()

    def _read_loop(self) -> None:
        """Read until the end of the connection, or until another thread takes reading over."""
        me = threading.get_ident()
        reason = "connection closed by peer"
        try:
            while True:
                if not self._wait_readable():
                    continue
                data = self.sock.recv(_READ_SIZE)
                if not data:
                    break
                with self.lock:
                    ready = self.protocol.receive(data)
                    if ready:
                        self._take(ready)
                self.flush()
                if self.protocol.closed:
                    reason = self.protocol.close_reason
                    break
                if self._ready and not self._run_ready(me):
                    return  # another thread reads now, and will meet the end
        except OSError as exc:
            reason = f"connection lost: {exc}"
        except Exception:  # a bug in the protocol: drop the connection, keep the process
            log.exception("%s: unexpected error in the reader", self.name)
            reason = "internal error in the connection reader"
        self._end_of_connection(reason)

    def _wait_readable(self) -> bool:
        """True when the socket may be read; False after the protocol's clock has run."""
        with self.lock:
            deadline = self.protocol.next_deadline()
        if deadline is None:
            return True
        timeout = max(deadline - time.monotonic(), 0.0)
        if select.select([self.sock], [], [], timeout)[0]:
            return True
        with self.lock:
            self.protocol.expire(time.monotonic())
        self.flush()
        return False

    def _take(self, ready: list[Any]) -> None:
        """Decide where each ready call runs (lock held): unary on the reader, the rest on workers."""
        for call in ready:
            if call.unary and self._queue_on_reader(call):
                continue
            self._hand_off(call)

    def _queue_on_reader(self, call: Any) -> bool:
        if self.handoff_after is None:
            return False
        if not self._watchdog:
            assert self._submit is not None
            if not self._submit(self._watch):
                return False
            self._watchdog = True
        self._ready.append(call)
        return True

    def _hand_off(self, call: Any) -> None:
        """Run a call on a worker (lock held); refuse it if there is none."""
        run_call = self._run_call
        if run_call is None or self._submit is None or not self._submit(lambda: run_call(self, call)):
            self.protocol.busy(call)

    def _run_ready(self, me: int) -> bool:
        """Run the calls queued for the reader; False if ``me`` no longer reads."""
        run_call = self._run_call
        assert run_call is not None
        while True:
            with self.lock:
                if self._reader != me:
                    return False
                if not self._ready:
                    return True
                call = self._ready.pop(0)
                if call.ended:  # cancelled while it waited
                    continue
                self._running_since = time.monotonic()
                self._runs += 1
            try:
                run_call(self, call)
            finally:
                with self.lock:
                    if self._reader == me:  # else the clock is the new reader's
                        self._running_since = None

    def _watch(self) -> None:
        """The watchdog: take reading over from a reader stuck in a call, or stand down."""
        period = self.handoff_after
        assert period is not None
        seen = -1
        while True:
            with self.lock:
                since = self._running_since
                now = time.monotonic()
                if since is not None and now - since >= period:
                    self._take_over()
                    break
                if since is None and (self.protocol.closed or (not self._ready and self._runs == seen)):
                    # Nothing running, and nothing waiting or begun since the last look
                    # (or the connection is over): stand down. A call queued later arms
                    # a new watchdog.
                    self._watchdog = False
                    return
                seen = self._runs
                wait = period if since is None else since + period - now
            time.sleep(wait)
        self.flush()
        log.debug("%s: a call ran over %.3f s on the reader; this thread reads now", self.name, period)
        self._read_loop()

    def _take_over(self) -> None:
        """Make this thread the reader; the calls still waiting go to workers (lock held)."""
        self._reader = threading.get_ident()
        self._running_since = None
        self._watchdog = False
        waiting, self._ready = self._ready, []
        for call in waiting:
            if not call.ended:
                self._hand_off(call)

    def _end_of_connection(self, reason: str) -> None:
        """Whoever meets the end cleans up: end every call, drop the queue, close the socket."""
        with self.lock:
            self.protocol.lose(reason)
            self._ready.clear()  # ended by lose(); no reader will run them
            self.cond.notify_all()
            self.cond.wait_for(lambda: not self._writing, timeout=5.0)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self.lock:
            self._read_done = True
            self.cond.notify_all()
        if self._on_closed is not None:
            self._on_closed(self)

    # -- closing from outside --------------------------------------------------

    def _wake_reader(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self, graceful: bool = True, timeout: float = 2.0) -> None:
        """Send GOAWAY (if graceful, for up to ``timeout`` s), then drop the connection.

        The reader notices, ends what is left and closes the socket (or this
        thread does, if no reader was ever started). A peer that does not
        read cannot hold this up beyond ``timeout``.
        """
        if graceful:
            with self.lock:
                self.protocol.close_connection()
            # Another thread may be mid-write (say, a stream's trailers): let
            # it finish before the socket is shut, then send what is left.
            end = time.monotonic() + timeout
            self.flush(timeout)
            self.wait_until(lambda: not self._writing, max(0.0, end - time.monotonic()))
            self.flush(max(0.0, end - time.monotonic()))
        with self.lock:
            self.protocol.lose("connection closed locally")
            self.cond.notify_all()
            started = self._started
        if started:
            self._wake_reader()
        else:
            self._end_of_connection("connection closed locally")

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until the socket is closed (at once if called by the reader); False on timeout."""
        with self.lock:
            if not self._started or self._reader == threading.get_ident():
                return True
            return self.cond.wait_for(lambda: self._read_done, timeout)
