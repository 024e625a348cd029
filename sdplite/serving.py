"""Serving one socket of a plugin: a fresh gRPC server each time, never two at once.

A plugin's server starts over whenever the kubelet wipes its socket (a
kubelet restart does: docs/design.md, "How a restart is detected"), so
:class:`Serving` makes a new :class:`~.wire.Server` per start and owns the
rules around the socket file: wait for the directory to exist, replace a stale
socket nobody listens on, never touch a live one or something that is not a
socket, and say whether the file at the path is still the one we bound.

It knows nothing of devices or registration; a DRA plugin serves its two
sockets (service, then registration) with two of these.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from collections.abc import Sequence
from typing import Any, Callable, Optional

from .logtext import cut
from .wire import Method, Server
from .wire.shutdown import Shutdown

__all__ = ["PluginError", "Serving", "clear_stale_socket"]

log = logging.getLogger("sdplite")

#: Retrying a server that cannot bind its socket (permissions, a read-only or
#: unreal directory): first after this long, doubling up to the cap.
SERVE_RETRY_FIRST = 0.5
SERVE_RETRY_CAP = 30.0


class PluginError(RuntimeError):
    """The plugin cannot run: the message says why and what to change."""


def clear_stale_socket(path: str) -> None:
    """Remove a leftover socket at ``path``, but only if nobody listens on it.

    Never follows a symlink and never removes anything that is not a socket.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a socket"
        raise PluginError(f"{path} exists and is {kind}: remove it or choose another socket name")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise PluginError(f"cannot tell whether {path} is in use: {exc}") from None
    else:
        raise PluginError(f"another process is serving on {path}: stop it or choose another socket name")
    finally:
        probe.close()
    try:
        os.unlink(path)
        log.info("removed stale socket %s", path)
    except FileNotFoundError:
        pass


def serve_hint(exc: OSError, directory: str) -> str:
    """What to do about a socket that cannot be bound in ``directory``."""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f" (the plugin cannot create files in {directory}: run it as root, as the kubelet's "
            f"directory is root-owned, and mount the host's directory read-write into the container)"
        )
    if exc.errno == errno.ENOENT:
        return f" ({directory} does not take new files: is it the kubelet's device-plugins directory?)"
    return ""


#: What makes a server: ``Server(path, methods, **options)``; a test passes a stand-in.
ServerFactory = Callable[..., Server]


class Serving:
    """The server of one socket path, started and stopped by the plugin's controller.

    Only the controller's thread calls :meth:`start` and :meth:`stop`; other
    threads may read :attr:`server`.
    """

    def __init__(
        self,
        path: str,
        name: str,
        server_options: Optional[dict[str, Any]] = None,
        make_server: ServerFactory = Server,
        clear: Callable[[str], None] = clear_stale_socket,
        directory_hint: str = "",
    ) -> None:
        self.path = path
        self.name = name  # who is serving, for log lines
        self.server_options = dict(server_options or {})
        #: What to tell a user whose socket directory is a file (how to name the right one).
        self.directory_hint = directory_hint
        #: The running server, or None.
        self.server: Optional[Server] = None
        #: After a failed bind, no new start before this (monotonic) time.
        self.retry_at = 0.0
        self._make_server = make_server
        self._clear = clear
        self._retry = SERVE_RETRY_FIRST
        self._dir_missing_logged = False

    def start(self, methods: Sequence[Method[Any]], now: float) -> bool:
        """Serve ``methods`` on a new server; False (logged) to try again later.

        A directory that does not exist yet is waited for; a socket that
        cannot be bound is retried after :attr:`retry_at`, with backoff.
        Raises :class:`PluginError` when retrying cannot help: the directory
        is a file, or the path is taken by a live server or by something that
        is not a socket.
        """
        if self.server is not None:
            raise RuntimeError(f"{self.path} is already served: stop() first")
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            if os.path.exists(directory):
                hint = f": {self.directory_hint}" if self.directory_hint else ""
                raise PluginError(f"{directory} is a file, not a directory{hint}")
            if not self._dir_missing_logged:
                log.warning(
                    "%s: waiting for %s to exist (is the kubelet's directory mounted into the container?)",
                    self.name,
                    directory,
                )
                self._dir_missing_logged = True
            return False
        self._dir_missing_logged = False
        self._clear(self.path)
        try:
            server = self._make_server(self.path, methods, **self.server_options)
            server.start(accept_thread=False)  # the supervisor accepts (one thread fewer)
        except OSError as exc:
            log.error(
                "%s: cannot serve on %s: %s%s; retrying in %.1fs",
                self.name,
                self.path,
                cut(exc.strerror or exc),
                serve_hint(exc, directory),
                self._retry,
            )
            self.retry_at = now + self._retry
            self._retry = min(self._retry * 2, SERVE_RETRY_CAP)
            return False
        self._retry = SERVE_RETRY_FIRST
        self.server = server
        return True

    def stop(self, shutdown: Shutdown) -> None:
        """Stop the server by ``shutdown``'s deadline (streams end, the socket file goes if still ours)."""
        server, self.server = self.server, None
        if server is not None:
            server.stop(shutdown=shutdown)

    def owns_socket(self) -> bool:
        """True while serving and the file at the path is the socket we bound."""
        server = self.server
        return server is not None and server.owns_socket()

    @property
    def stopping(self) -> bool:
        """True while no server runs or the running one has begun to stop."""
        server = self.server
        return server is None or server.stopping
