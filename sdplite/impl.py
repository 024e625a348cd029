"""What a plugin author implements, and the simple mode built on it.

Flexible mode takes any object with these methods (all names Pythonic):

``list_and_watch(watch)`` (required)
    Send the device list with ``watch.send(devices)``, then keep sending a new
    complete list whenever it changes, until ``watch.wait(seconds)`` returns
    True (the server is stopping). Runs on its own thread, started at each
    server start and joined at each stop. Returning early is fine (the last
    list stays); raising is logged and it is called again after a pause.
``allocate(device_ids)`` (optional)
    Return what one container gets for these IDs: an :class:`Allocation`, a
    ``ContainerAllocateResponse``, or None for the default built from the
    devices' data. Raise :class:`~sdplite.wire.GrpcError` (e.g.
    INVALID_ARGUMENT) to refuse; any other exception is UNKNOWN.
``get_preferred_allocation(available, must_include, size)`` (optional)
    Return the preferred device IDs; offering it sets
    ``get_preferred_allocation_available``.
``pre_start_container(device_ids)`` (optional)
    Called before each container start (30 s deadline); offering it sets
    ``pre_start_required``.
``refresh()`` / ``destroy()`` (optional)
    Called each time the server starts / stops.

Simple mode wraps a ``get_devices()`` callable into such an object.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, Callable, Optional, Protocol, runtime_checkable

from .logtext import cut

__all__ = ["Watch", "DevicePluginImpl", "SimpleImpl"]

log = logging.getLogger("sdplite")


@runtime_checkable
class DevicePluginImpl(Protocol):
    """The one required method of a flexible-mode implementation; the optional
    hooks are listed in this module's docstring."""

    def list_and_watch(self, watch: Watch) -> None:
        """Send complete device lists with ``watch.send`` until ``watch.wait`` is True."""


class Watch:
    """Handed to ``list_and_watch``: where device lists go, and the stop signal."""

    def __init__(self, publish: Callable[[Any], None], stop: threading.Event) -> None:
        self._publish = publish
        self._stop = stop
        #: Set once the first list has been sent.
        self.sent = threading.Event()

    def send(self, devices: Sequence[Any]) -> None:
        """Publish a complete new device list (it replaces the previous one)."""
        self._publish(devices)
        self.sent.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Sleep up to ``timeout`` seconds; True as soon as the server is stopping."""
        return self._stop.wait(timeout)

    @property
    def stopping(self) -> bool:
        """True once the server is stopping: return from list_and_watch."""
        return self._stop.is_set()


class SimpleImpl:
    """Simple mode: ``get_devices()`` re-read every ``interval`` seconds and on demand.

    The plugin calls :meth:`scan` from its supervisor (no thread of its own)
    and pushes the list only when it changed. A ``get_devices`` that raises
    or returns garbage is logged and the last good list stays.
    """

    def __init__(self, get_devices: Callable[[], Sequence[Any]], interval: float = 10.0) -> None:
        if not callable(get_devices):
            raise TypeError(
                f"get_devices must be a callable returning the devices, not {type(get_devices).__name__}"
            )
        if interval <= 0:
            raise ValueError("the rescan interval must be positive")
        self.get_devices = get_devices
        self.interval = interval

    def scan(self, resource: str = "sdplite") -> Optional[Sequence[Any]]:
        """What get_devices returned (checked when published), or None (logged
        for ``resource``, with the traceback) if it raised."""
        try:
            return self.get_devices()
        except Exception as exc:
            log.error(
                "%s: get_devices raised %s: %s; keeping the last good list",
                resource,
                type(exc).__name__,
                cut(exc),
                exc_info=True,
            )
        return None

    def list_and_watch(self, watch: Watch) -> None:
        """The same behaviour as a flexible-mode impl, for use outside the supervisor."""
        while True:
            devices = self.scan()
            if devices is not None:
                watch.send(devices)
            if watch.wait(self.interval):
                return

    def __repr__(self) -> str:
        name = getattr(self.get_devices, "__qualname__", repr(self.get_devices))
        return f"SimpleImpl({name}, interval={self.interval})"


def has_hook(impl: Any, name: str) -> bool:
    return callable(getattr(impl, name, None))
