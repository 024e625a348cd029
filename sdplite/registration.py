"""Registering with the kubelet: through ``kubelet.sock``, or found in plugins_registry.

The kubelet answers Register only after it has dialled our socket back and
fetched our options, so our server must already be serving (docs/design.md,
"Kubelet facts the code relies on").
Its refusals come back as UNKNOWN with a text; two of them can never
succeed on retry (an unsupported version, an invalid resource name).

Two ways to register, one interface for the plugin's controller
(:class:`Registration`): :class:`KubeletRegistration` calls Register on a
short-lived thread and retries with backoff; :class:`WatcherRegistration`
serves ``pluginregistration.Registration`` beside the plugin's own service and
waits for the kubelet's plugin watcher to call. A DRA plugin uses the second
with its own :class:`PluginInfo`.
"""

from __future__ import annotations

import enum
import logging
import threading
from typing import Any, Callable, Optional, Protocol

from .api import deviceplugin_pb2 as pb
from .api import paths
from .api import pluginregistration_pb2 as reg
from .logtext import cut
from .wire import Channel, GrpcError, Method, ServerContext, StatusCode, unary
from .wire.shutdown import Shutdown
from .wire.socket_file import FileId, file_id

__all__ = [
    "RegisterOutcome",
    "RegisterResult",
    "RegisterAttempt",
    "register",
    "plugin_watcher_methods",
    "device_plugin_info",
    "Registration",
    "KubeletRegistration",
    "WatcherRegistration",
]

log = logging.getLogger("sdplite")

#: How long to wait for Register: the kubelet's dial-back alone may take 10 s.
REGISTER_TIMEOUT = 30.0
#: How long to wait for the kubelet's HTTP/2 SETTINGS (a stop cuts the wait short).
CONNECT_TIMEOUT = 5.0
#: The pause after a failed Register: doubled after each failure up to the cap.
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 5.0

_FATAL_MARKERS = ("is not supported by kubelet", "is invalid")


class RegisterOutcome(enum.Enum):
    OK = "ok"
    RETRY = "retry"  # kubelet missing, restarting, or our socket was wiped
    FATAL = "fatal"  # the kubelet will refuse this request every time


class RegisterResult:
    """How one Register call ended (immutable; a plain class, not a dataclass, to import faster)."""

    __slots__ = ("outcome", "message")

    outcome: RegisterOutcome
    message: str

    def __init__(self, outcome: RegisterOutcome, message: str = "") -> None:
        object.__setattr__(self, "outcome", outcome)
        object.__setattr__(self, "message", message)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"RegisterResult is immutable: cannot set {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return (self.outcome, self.message) == (other.outcome, other.message)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.outcome, self.message))

    def __repr__(self) -> str:
        return f"RegisterResult(outcome={self.outcome!r}, message={self.message!r})"


def register(
    kubelet_socket: str,
    resource_name: str,
    endpoint: str,
    options: pb.DevicePluginOptions,
    timeout: float = REGISTER_TIMEOUT,
) -> RegisterResult:
    """Call Register once on a fresh connection, closed afterwards."""
    attempt = RegisterAttempt(kubelet_socket, resource_name, endpoint, options, timeout)
    attempt.run()
    assert attempt.result is not None
    return attempt.result


class RegisterAttempt:
    """One Register call, which another thread may abandon with :meth:`close`.

    The supervisor runs it on a short-lived thread so that it keeps watching
    the sockets while the kubelet dials back (up to 10 s when our socket was
    just wiped).
    """

    def __init__(
        self,
        kubelet_socket: str,
        resource_name: str,
        endpoint: str,
        options: pb.DevicePluginOptions,
        timeout: float = REGISTER_TIMEOUT,
    ) -> None:
        self.kubelet_socket = kubelet_socket
        self.request = pb.RegisterRequest(
            version=paths.VERSION, endpoint=endpoint, resource_name=resource_name, options=options
        )
        self.timeout = timeout
        self.result: Optional[RegisterResult] = None
        self._channel: Optional[Channel] = None
        self._lock = threading.Lock()
        self._closed = False

    def run(self) -> None:
        try:
            connect_timeout = min(self.timeout, CONNECT_TIMEOUT)
            channel = Channel(self.kubelet_socket, connect_timeout=connect_timeout, wait_ready=False)
            with self._lock:
                self._channel = channel
                closed = self._closed
            if closed:
                channel.close()
                raise GrpcError(StatusCode.CANCELLED, "registration abandoned")
            try:
                channel.wait_ready()  # close() ends this wait at once (a silent kubelet)
                channel.unary(paths.REGISTER, self.request, pb.Empty, timeout=self.timeout)
            finally:
                channel.close()
        except GrpcError as exc:
            fatal = any(marker in exc.message for marker in _FATAL_MARKERS)
            text = f"{exc.code.name}: {exc.message}"
            self.result = RegisterResult(RegisterOutcome.FATAL if fatal else RegisterOutcome.RETRY, text)
        else:
            self.result = RegisterResult(RegisterOutcome.OK)

    def close(self) -> None:
        """Abandon the call: its connection is closed and it ends with CANCELLED/UNAVAILABLE."""
        with self._lock:
            self._closed = True
            channel = self._channel
        if channel is not None:
            channel.close()


# -- plugin-watcher registration -------------------------------------------------------
# kubelet pkg/kubelet/pluginmanager/operationexecutor/operation_generator.go: the
# watcher dials a socket it found in plugins_registry, asks GetInfo (1 s deadline),
# hands the plugin to the handler for its type, then calls NotifyRegistrationStatus.


def device_plugin_info(resource_name: str, endpoint: str = "") -> reg.PluginInfo:
    """GetInfo's answer for a device plugin; an empty endpoint means "this same socket"."""
    return reg.PluginInfo(
        type=paths.DEVICE_PLUGIN_TYPE,
        name=resource_name,
        endpoint=endpoint,
        supported_versions=list(paths.SUPPORTED_VERSIONS),
    )


def plugin_watcher_methods(info: reg.PluginInfo, on_status: Callable[[bool, str], None]) -> list[Method[Any]]:
    """The ``pluginregistration.Registration`` service for a socket in plugins_registry.

    The kubelet finds the socket itself, asks GetInfo (answered with ``info``),
    connects to the plugin's service at ``info.endpoint`` (empty: the same
    socket) and reports the outcome with NotifyRegistrationStatus.
    """

    def get_info(request: reg.InfoRequest, context: ServerContext) -> reg.PluginInfo:
        return info

    def notify(request: reg.RegistrationStatus, context: ServerContext) -> reg.RegistrationStatusResponse:
        on_status(request.plugin_registered, request.error)
        return reg.RegistrationStatusResponse()

    return [
        unary(paths.GET_INFO, get_info, reg.InfoRequest),
        unary(paths.NOTIFY_REGISTRATION_STATUS, notify, reg.RegistrationStatus),
    ]


# -- the controller's view of registering ------------------------------------------------


class Registration(Protocol):
    """How a plugin gets registered, as its controller drives it (docs/design.md, "A plugin's life").

    Only the controller's thread calls these methods, except that
    :attr:`registered` may be read anywhere.
    """

    #: Set while the kubelet has the plugin registered.
    registered: threading.Event
    #: Why registering can never succeed (the plugin then stops), or None.
    fatal: Optional[str]
    #: The identity ``kubelet.sock`` had when the registration that holds began (None if none).
    registered_through: Optional[FileId]

    def methods(self) -> list[Method[Any]]:
        """Methods to serve beside the plugin's own (the plugin watcher's two), or none."""

    def server_started(self) -> None:
        """A fresh server listens: register (again) as soon as possible."""

    def server_stopped(self) -> None:
        """The server is going: nobody has us registered, abandon a call in flight."""

    def step(self, now: float) -> float:
        """Start or collect a registration as due; return when to be called again."""

    def request(self) -> None:
        """Try at once rather than after the backoff (``kubelet.sock`` just appeared)."""

    def peer_left(self) -> None:
        """The kubelet dropped the last stream it held on us."""

    def shutdown(self, shutdown: Shutdown) -> None:
        """Stop for good: a call in flight abandoned, its thread waited for until ``shutdown``'s deadline."""


class KubeletRegistration:
    """Register through ``kubelet.sock``: after every server start, with backoff after failures.

    Each Register runs on a short-lived thread (``make_attempt`` builds the
    call; a test gives one that needs no kubelet), so the controller keeps
    watching sockets while the kubelet dials back. ``on_attempt`` is called
    as each attempt begins, ``wake`` when one ends; ``detail`` gives a few
    words for the "registered" log line (e.g. "4 devices"); ``stats`` the
    metrics counters, or None.
    """

    def __init__(
        self,
        name: str,
        endpoint: str,
        kubelet_socket: str,
        make_attempt: Callable[[], RegisterAttempt],
        wake: Callable[[], None],
        on_attempt: Callable[[], None] = lambda: None,
        detail: Callable[[], str] = lambda: "",
        identify: Callable[[str], Optional[FileId]] = file_id,
        stats: Callable[[], Any] = lambda: None,
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.kubelet_socket = kubelet_socket
        self.registered = threading.Event()
        self.fatal: Optional[str] = None
        self.registered_through: Optional[FileId] = None
        self._make_attempt = make_attempt
        self._wake = wake
        self._on_attempt = on_attempt
        self._detail = detail
        self._stats = stats
        self._identify = identify
        self._next = 0.0
        self._backoff = BACKOFF_FIRST
        self._attempt: Optional[RegisterAttempt] = None
        self._thread: Optional[threading.Thread] = None
        self._attempt_kubelet_id: Optional[FileId] = None

    def methods(self) -> list[Method[Any]]:
        return []

    def server_started(self) -> None:
        self._next = 0.0
        self._backoff = BACKOFF_FIRST

    def server_stopped(self) -> None:
        self.registered.clear()
        self._abandon()

    def request(self) -> None:
        self._next = 0.0

    def peer_left(self) -> None:
        pass  # the restart rules decide (restarts.py): a kubelet restart may follow

    def step(self, now: float) -> float:
        self._collect(now)
        if self.registered.is_set() or self.fatal or self._attempt is not None:
            return float("inf")
        if now < self._next:
            return self._next
        self._start()
        return float("inf")  # the attempt's thread wakes us

    def shutdown(self, shutdown: Shutdown) -> None:
        self.registered.clear()
        self._abandon()
        shutdown.join(self._thread, "the Register call to the kubelet")

    def _start(self) -> None:
        attempt = self._make_attempt()
        self._attempt = attempt
        self._attempt_kubelet_id = self._identify(self.kubelet_socket)
        self._on_attempt()

        def run() -> None:
            attempt.run()
            self._wake()

        self._thread = threading.Thread(target=run, name=f"sdplite-register-{self.endpoint}", daemon=True)
        self._thread.start()

    def _abandon(self, wait: float = 0.0) -> None:
        """Close the Register call in progress, if any; its thread ends soon after.

        ``_thread`` stays set, for :meth:`shutdown` to wait for.
        """
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.close()
        thread = self._thread
        if thread is not None and wait:
            thread.join(wait)

    def _collect(self, now: float) -> None:
        attempt = self._attempt
        if attempt is None or attempt.result is None:
            return
        self._abandon(wait=1.0)
        result = attempt.result
        stats = self._stats()
        if stats is not None:
            if result.outcome is RegisterOutcome.OK:
                stats.count("registrations")
            else:
                stats.count("errors", kind="register")
        if result.outcome is RegisterOutcome.OK:
            self.registered_through = self._attempt_kubelet_id
            self._backoff = BACKOFF_FIRST
            self.registered.set()
            detail = self._detail()
            log.info(
                "%s: registered with the kubelet (endpoint %s%s)",
                self.name,
                self.endpoint,
                f", {detail}" if detail else "",
            )
            return
        if result.outcome is RegisterOutcome.FATAL:
            self.fatal = f"the kubelet refused to register {self.name}: {cut(result.message)}"
            log.error("%s", self.fatal)
            return
        log.warning(
            "%s: registration failed, retrying in %.1fs: %s", self.name, self._backoff, cut(result.message)
        )
        self._next = now + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_CAP)


class WatcherRegistration:
    """Registration by the kubelet's plugin watcher: serve GetInfo and wait to be told.

    The watcher finds our socket in plugins_registry by itself and finds it
    again after a kubelet restart, so there is nothing to retry and no
    restart to detect; a dropped stream only means we are not registered
    until the watcher calls again.
    """

    def __init__(self, info: reg.PluginInfo, where: str) -> None:
        self.info = info
        self.where = where  # the registration socket's path, for log lines
        self.registered = threading.Event()
        self.fatal: Optional[str] = None
        self.registered_through: Optional[FileId] = None

    def methods(self) -> list[Method[Any]]:
        return plugin_watcher_methods(self.info, self._status)

    def server_started(self) -> None:
        pass

    def server_stopped(self) -> None:
        self.registered.clear()

    def request(self) -> None:
        pass

    def peer_left(self) -> None:
        self.registered.clear()

    def step(self, now: float) -> float:
        return float("inf")

    def shutdown(self, shutdown: Shutdown) -> None:
        self.registered.clear()

    def _status(self, registered: bool, error: str) -> None:
        """NotifyRegistrationStatus from the kubelet's plugin watcher."""
        if registered:
            self.registered.set()
            log.info("%s: registered with the kubelet's plugin watcher (%s)", self.info.name, self.where)
        else:
            self.registered.clear()
            log.error("%s: the kubelet's plugin watcher refused the plugin: %s", self.info.name, cut(error))
