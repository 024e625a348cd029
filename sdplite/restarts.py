"""When a plugin's server must start over: the restart rules, with no I/O of their own.

The kubelet never tells a device plugin that it restarted. A restarting
kubelet deletes every socket in the device-plugins directory, then listens on
a new ``kubelet.sock``, and forgets its registrations; the plugin must notice,
serve a fresh socket and register again (docs/design.md, "How a restart is
detected"). :class:`RestartWatch` decides, from what the controller observes:

- a restart was asked for (SIGHUP, :meth:`DevicePlugin.restart`);
- our socket is gone or replaced (the kubelet wiped the directory);
- ``kubelet.sock`` is not the file we registered through (a new kubelet);
- the kubelet ended our ListAndWatch stream while its socket stayed: a
  restarting kubelet wipes our socket next, so this waits
  :data:`STREAM_LOSS_GRACE` to restart once rather than twice.

A plugin registered through the plugin watcher needs only the first two
(the watcher re-registers its sockets after a kubelet restart): give it no
``kubelet_socket``.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from .wire.socket_file import FileId, file_id

__all__ = ["RestartWatch", "STREAM_LOSS_GRACE", "KUBELET_RESTARTED", "SOCKET_GONE", "is_kubelet_restart"]

#: After the kubelet ends our stream, how long to wait for signs of a kubelet
#: restart (sockets wiped, kubelet.sock re-created) before restarting anyway.
STREAM_LOSS_GRACE = 1.0
# The two signs of a kubelet restart (it deletes the plugins' sockets, then
# serves a new kubelet.sock), as restart reasons; the metrics count them.
KUBELET_RESTARTED = "kubelet.sock was re-created (kubelet restart)"
SOCKET_GONE = "was removed or replaced"


def is_kubelet_restart(reason: str) -> bool:
    """Whether a restart reason is one of the signs of a kubelet restart."""
    return reason == KUBELET_RESTARTED or reason.endswith(SOCKET_GONE)


class RestartWatch:
    """Why the server must restart now, if it must; thread-safe :meth:`request`.

    ``identify`` reads a file's identity (:func:`~.wire.socket_file.file_id`);
    a test gives a stand-in and needs no files at all.
    """

    def __init__(
        self,
        kubelet_socket: Optional[str] = None,
        identify: Callable[[str], Optional[FileId]] = file_id,
        grace: float = STREAM_LOSS_GRACE,
    ) -> None:
        self.kubelet_socket = kubelet_socket
        self.grace = grace
        self._identify = identify
        self._lock = threading.Lock()
        self._requested: Optional[str] = None
        self._stream_lost_at: Optional[float] = None

    def request(self, reason: str) -> None:
        """Ask for a restart at the next check (any thread); the first reason is kept."""
        with self._lock:
            if self._requested is None:
                self._requested = reason

    def register_started(self) -> None:
        """A Register call began: only stream losses after it count."""
        self._stream_lost_at = None

    def stream_lost(self, now: float) -> None:
        """The kubelet ended the last stream it held (ignored without a ``kubelet_socket``)."""
        if self.kubelet_socket is not None:
            self._stream_lost_at = now

    @property
    def stream_loss_pending(self) -> bool:
        return self._stream_lost_at is not None

    def reset(self) -> None:
        """A new server: nothing observed about the old one counts any more."""
        self._stream_lost_at = None

    def due(
        self,
        now: float,
        lost_socket: Optional[str],
        registered: bool,
        registered_through: Optional[FileId] = None,
    ) -> tuple[Optional[str], Optional[float]]:
        """(why restart now, or None; when to look again, or None if only an event can change it).

        ``lost_socket``: the path of one of our sockets whose file is gone or
        is no longer the one we bound, or None. ``registered``: the kubelet has
        us registered; ``registered_through``: the identity ``kubelet.sock``
        had when that Register call began.
        """
        with self._lock:
            reason, self._requested = self._requested, None
        if reason is not None:
            return reason, None
        if lost_socket is not None:
            return f"our socket {lost_socket} {SOCKET_GONE}", None
        if not registered or self.kubelet_socket is None:
            return None, None
        current = self._identify(self.kubelet_socket)
        if current is not None and current != registered_through:
            return KUBELET_RESTARTED, None
        lost_at = self._stream_lost_at
        if lost_at is not None and current is not None:
            # The kubelet is (still) there but dropped our stream. A restarting
            # kubelet wipes our socket next: give it a moment, to restart once.
            if now - lost_at >= self.grace:
                return "the kubelet ended our ListAndWatch stream", None
            return None, lost_at + self.grace
        return None, None
