"""A gRPC server on a Unix socket: listen, accept, stop.

One thread accepts; each connection gets a reader thread
(:class:`.server_connection.ServerConnection`); streams and concurrent calls
run on a shared :class:`.workers.WorkerPool`, and the reader runs a lone
unary call itself, handing reading over if it runs long.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Iterable
from typing import Any, Optional

from ..logtext import Repeats, cut
from .framing import DEFAULT_MAX_MESSAGE
from .handlers import Method
from .server_connection import ServerConnection
from .server_protocol import Limits
from .shutdown import Shutdown
from .socket_file import MAX_UNIX_PATH, FileId, file_id, path_too_long
from .workers import WorkerPool

__all__ = ["Server", "MAX_UNIX_PATH"]

log = logging.getLogger("sdplite.wire")

#: Seconds a stop gives itself, after the calls' grace, to send GOAWAY and
#: close (at most half of a deadline it is handed).
_CLOSING_TIME = 0.2

#: struct ucred: pid, uid, gid.
_PEERCRED = struct.Struct("3i")


class Server:
    """Serves registered methods on one Unix socket path.

    ``stop(grace)`` is graceful and bounded: no new connections or calls,
    streams are ended with UNAVAILABLE, unary calls get ``grace`` seconds to
    finish, then connections get GOAWAY and close (within 0.2 s more) and the
    socket file is removed. ``stop(0)`` does the same without waiting for calls.
    """

    def __init__(
        self,
        path: str,
        methods: Iterable[Method[Any]] = (),
        *,
        max_receive_message: int = DEFAULT_MAX_MESSAGE,
        max_workers: int = 256,
        worker_idle_timeout: float = 10.0,
        max_concurrent_streams: int = 100,
        max_header_list_size: int = 16 * 1024,
        stream_window: int = 1024 * 1024,
        connection_window: int = 4 * 1024 * 1024,
        socket_mode: int = 0o600,
        backlog: int = 64,
        max_connections: int = 64,
        allowed_uids: Optional[Iterable[int]] = None,
        handoff_after: Optional[float] = 0.005,
    ) -> None:
        size = path_too_long(path)
        if size is not None:
            raise ValueError(
                f"socket path {path!r} is {size} bytes; a Unix socket path "
                f"must be at most {MAX_UNIX_PATH}: use a shorter directory or name"
            )
        self.path = path
        self.methods: dict[str, Method[Any]] = {}
        self.services: set[str] = set()
        self._listener: Optional[socket.socket] = None
        for method in methods:
            self.add_method(method)
        self.max_receive_message = max_receive_message
        self.max_concurrent_streams = max_concurrent_streams
        self.max_header_list_size = max_header_list_size
        self.stream_window = stream_window
        self.connection_window = max(connection_window, 65535)
        self.socket_mode = socket_mode
        self.backlog = backlog
        self.max_connections = max_connections
        #: Peer UIDs allowed to connect (checked with SO_PEERCRED); None allows any.
        self.allowed_uids = None if allowed_uids is None else frozenset(allowed_uids)
        #: A unary call runs on its connection's reader (no thread switch); if it
        #: takes longer than this many seconds, another thread reads instead.
        #: None: every call goes to a worker.
        self.handoff_after = handoff_after
        self.pool = WorkerPool(max_workers=max_workers, idle_timeout=worker_idle_timeout, name="sdplite")
        self.stopping = False
        self._lock = threading.Lock()
        self._connections: set[ServerConnection] = set()
        self._accept_thread: Optional[threading.Thread] = None
        self._inode: Optional[FileId] = None
        self._count = 0
        self._idle = threading.Condition(self._lock)
        #: Refusals and accept failures come in storms: one line, then a count.
        self._repeats = Repeats(log)

    def add_method(self, method: Method[Any]) -> None:
        """Serve one more method (before :meth:`start`)."""
        if self._listener is not None:
            raise RuntimeError("add methods before start()")
        self.methods[method.path] = method
        self.services.add(method.path.split("/")[1])

    # -- lifecycle -----------------------------------------------------------

    def start(self, accept_thread: bool = True) -> None:
        """Bind and listen (the socket file must not exist), then accept.

        By default a thread accepts. With ``accept_thread=False`` the caller
        watches :meth:`fileno` (select/poll) and calls :meth:`accept_ready`
        when it is readable: the plugin supervisor does this, to keep an idle
        plugin's thread count low.
        """
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o777 & ~self.socket_mode)
            try:
                listener.bind(self.path)
            finally:
                os.umask(old_umask)
            os.chmod(self.path, self.socket_mode)
            listener.listen(self.backlog)
            bound = file_id(self.path)
        except BaseException:
            listener.close()
            raise
        self._inode = bound
        self._listener = listener
        if accept_thread:
            self._accept_thread = threading.Thread(
                target=self._accept_loop,
                name=f"sdplite-accept-{os.path.basename(self.path)}",
                daemon=True,
            )
            self._accept_thread.start()
        else:
            listener.setblocking(False)
        log.debug("serving on %s", self.path)

    def fileno(self) -> int:
        """The listening socket's fd (-1 before start and after stop)."""
        return self._listener.fileno() if self._listener is not None else -1

    def accept_ready(self) -> None:
        """Accept every connection waiting now (``accept_thread=False`` mode)."""
        listener = self._listener
        while listener is not None and not self.stopping:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._accept_failed(exc)
                return
            sock.setblocking(True)
            self._admit(sock)

    def __enter__(self) -> Server:
        if self._listener is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(0)

    @property
    def connection_count(self) -> int:
        """Connections open now."""
        with self._lock:
            return len(self._connections)

    def owns_socket(self) -> bool:
        """True while the socket file at ``path`` is the one we bound."""
        return self._inode is not None and file_id(self.path) == self._inode

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while True:
            try:
                sock, _ = listener.accept()
            except OSError as exc:
                if self.stopping or listener.fileno() < 0:
                    return
                self._accept_failed(exc)
                time.sleep(0.05)  # EMFILE and friends: back off rather than spin
                continue
            if not self._admit(sock):
                return

    def _admit(self, sock: socket.socket) -> bool:
        """Start serving an accepted connection; False once the server is stopping."""
        refusal = self._refusal(sock)
        if refusal:
            kind, summary, why = refusal
            self._repeats.note(
                kind,
                f"{self.path}: refused {{count}} connections {summary}",
                logging.WARNING,
                "%s: refused a connection: %s (more like it are counted, not logged)",
                self.path,
                why,
            )
            sock.close()
            return True
        with self._lock:
            if self.stopping:
                sock.close()
                return False
            self._count += 1
            conn = ServerConnection(
                sock,
                self.methods,
                self._limits(),
                f"{self.path}#{self._count}",
                submit=self.pool.submit,
                handoff_after=self.handoff_after,
                on_closed=self._forget,
            )
            self._connections.add(conn)
        try:
            conn.start()
        except Exception:
            log.exception("could not start a connection on %s", self.path)
            conn.close(graceful=False)
        return True

    def _refusal(self, sock: socket.socket) -> Optional[tuple[str, str, str]]:
        """Why a new connection must be closed at once (kind, summary, the whole reason), or None."""
        if self.allowed_uids is not None:
            try:
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
                pid, uid, _gid = _PEERCRED.unpack(creds)
            except OSError as exc:
                why = f"cannot read the peer's credentials: {exc}"
                return "credentials", "whose credentials could not be read", why
            if uid not in self.allowed_uids:
                allowed = cut(sorted(self.allowed_uids))
                why = f"peer pid {pid} runs as uid {uid}, not one of allowed_uids {allowed}"
                return "uid", "from uids not in allowed_uids", why
        if self.connection_count >= self.max_connections:
            why = f"already {self.max_connections} connections (max_connections)"
            return "max_connections", f"over max_connections ({self.max_connections})", why
        return None

    def _accept_failed(self, exc: OSError) -> None:
        self._repeats.note(
            f"accept:{exc.errno}",
            f"{self.path}: accept failed {{count}} times ({exc})",
            logging.WARNING,
            "%s: accept failed: %s",
            self.path,
            exc,
        )

    def _limits(self) -> Limits:
        return Limits(
            max_receive_message=self.max_receive_message,
            max_concurrent_streams=self.max_concurrent_streams,
            max_header_list_size=self.max_header_list_size,
            stream_window=self.stream_window,
            connection_window=self.connection_window,
        )

    def _forget(self, conn: ServerConnection) -> None:
        """A connection's socket is closed (called by whoever met its end)."""
        with self._lock:
            self._connections.discard(conn)
            self._idle.notify_all()
        self._repeats.flush(due_only=True)  # a storm that has passed is summed up now

    def stop(self, grace: Optional[float] = 1.0, shutdown: Optional[Shutdown] = None) -> None:
        """Stop serving within ``grace`` (+0.2) seconds; see the class docstring. Safe to call more than once.

        Whatever has not ended by then (a handler that never returns) is
        abandoned on its daemon thread and named in one WARNING line. Pass a
        :class:`.shutdown.Shutdown` to share its deadline with other steps of
        a larger stop; the caller then reports what is left.
        """
        own = shutdown is None
        if shutdown is None:
            shutdown = Shutdown((grace or 0.0) + _CLOSING_TIME)
            reserve = _CLOSING_TIME
        else:  # a share of the caller's deadline
            reserve = min(_CLOSING_TIME, shutdown.remaining() / 2)
        with self._lock:
            first = not self.stopping
            self.stopping = True
            connections = list(self._connections)
        listener = self._listener
        if first and listener is not None:
            self._close_listener(listener)
        # Refuse new calls; end the open streams with a status the client can read.
        for conn in connections:
            conn.drain()
        # Calls get the grace; saying GOAWAY and closing, a moment more.
        for conn in connections:
            conn.wait_idle(shutdown.remaining(reserve))
        for conn in connections:
            conn.close(graceful=True, timeout=shutdown.remaining())
        for conn in connections:
            conn.join(shutdown.remaining())
        accept = self._accept_thread
        if accept is not None and accept is not threading.current_thread():
            accept.join(shutdown.remaining())  # woken by the listener's shutdown: ends at once
        self.pool.close(timeout=shutdown.remaining())
        for conn in connections:
            for method in conn.running_handlers():
                shutdown.abandon(f"the handler of {method} on connection {conn.name}")
        self._repeats.flush()
        if own:
            shutdown.report(log, self.path)

    def _close_listener(self, listener: socket.socket) -> None:
        # Remove the file only if it is still ours: a new server may own the path.
        if self.owns_socket():
            try:
                os.unlink(self.path)
            except OSError:
                pass
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        except OSError:
            pass
        listener.close()
