"""Registering with the kubelet: through ``kubelet.sock``, or found in plugins_registry.

The kubelet answers Register only after it has dialled our socket back and
fetched our options, so our server must already be serving (KUBELET.md 2).
Its refusals come back as UNKNOWN with a text; two of them can never
succeed on retry (an unsupported version, an invalid resource name).
"""

from __future__ import annotations

import enum
import threading
from typing import Any, Callable, Optional

from .api import deviceplugin_pb2 as pb
from .api import paths
from .api import pluginregistration_pb2 as reg
from .wire import Channel, GrpcError, Method, ServerContext, StatusCode, unary

__all__ = [
    "RegisterOutcome",
    "RegisterResult",
    "RegisterAttempt",
    "register",
    "plugin_watcher_methods",
]

#: How long to wait for Register: the kubelet's dial-back alone may take 10 s.
REGISTER_TIMEOUT = 30.0

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
            channel = Channel(self.kubelet_socket, connect_timeout=min(self.timeout, 5.0))
            with self._lock:
                self._channel = channel
                closed = self._closed
            if closed:
                channel.close()
                raise GrpcError(StatusCode.CANCELLED, "registration abandoned")
            try:
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


# -- plugin-watcher registration (KUBELET.md 6) -------------------------------------


def plugin_watcher_methods(resource_name: str, on_status: Callable[[bool, str], None]) -> list[Method[Any]]:
    """The ``pluginregistration.Registration`` service for a socket in plugins_registry.

    The kubelet finds the socket itself, asks GetInfo, connects to the
    DevicePlugin service on the same socket (empty endpoint) and reports the
    outcome with NotifyRegistrationStatus.
    """
    info = reg.PluginInfo(
        type=paths.DEVICE_PLUGIN_TYPE,
        name=resource_name,
        endpoint="",
        supported_versions=list(paths.SUPPORTED_VERSIONS),
    )

    def get_info(request: reg.InfoRequest, context: ServerContext) -> reg.PluginInfo:
        return info

    def notify(request: reg.RegistrationStatus, context: ServerContext) -> reg.RegistrationStatusResponse:
        on_status(request.plugin_registered, request.error)
        return reg.RegistrationStatusResponse()

    return [
        unary(paths.GET_INFO, get_info, reg.InfoRequest),
        unary(paths.NOTIFY_REGISTRATION_STATUS, notify, reg.RegistrationStatus),
    ]
