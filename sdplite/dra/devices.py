"""A DRA driver's devices, their health with a reason, and the health streams watching them.

The same :class:`sdplite.Device` objects that feed a device plugin feed a DRA
driver: :class:`DeviceTable` checks them (with the DRA naming rules on top),
sends each device's ``reason`` (why it has its health) as the message, and pushes one
``NodeWatchResourcesResponse`` listing every device to each open
DRAResourceHealth stream on every change and on :meth:`DeviceTable.refresh`
(the kubelet marks a device Unknown if it is not re-reported within 30 s).
v1alpha1 and v1 of that message are the same bytes, so one encoding serves
both. Listeners (the ResourceSlice publisher) hear of every list change.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from ..devices import Device, normalize_devices
from ..logtext import cut
from ..wire import ResponseStream
from .slices import device_entries

__all__ = ["DeviceTable", "MAX_HEALTH_MESSAGE"]

log = logging.getLogger("sdplite.dra")

#: The kubelet cuts longer health messages (to 1021 characters and "...").
MAX_HEALTH_MESSAGE = 1024


class DeviceTable:
    """Devices by name, their health and its reason, health streams. Thread-safe."""

    def __init__(self, driver: str, pool: str) -> None:
        self.driver = driver
        self.pool = pool
        self._lock = threading.RLock()
        self._devices: tuple[Device, ...] = ()
        self._by_name: dict[str, Device] = {}
        self._checked: dict[str, int] = {}
        self._streams: set[ResponseStream] = set()
        self._listeners: list[Callable[[], None]] = []

    @property
    def devices(self) -> tuple[Device, ...]:
        return self._devices

    def snapshot(self) -> dict[str, Device]:
        return self._by_name

    def add_listener(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def publish(self, devices: Any) -> bool:
        """Replace the list (DeviceListError, and the old list stays, if the API would refuse it)."""
        new = normalize_devices(devices)
        device_entries(new)  # the ResourceSlice rules: names, attributes, capacity
        with self._lock:
            if new == self._devices:
                return False
            now = int(time.time())
            self._devices = new
            self._by_name = {d.id: d for d in new}
            self._checked = {d.id: self._checked.get(d.id, now) for d in new}
            log.info(
                "%s: device list now %d devices (%d healthy)",
                self.driver,
                len(new),
                sum(1 for d in new if d.healthy),
            )
            self._changed()
        return True

    def set_health(self, name: str, healthy: bool, message: str = "") -> bool:
        """Mark one device; ``message`` says why (shown to users in pod status). KeyError if unknown."""
        with self._lock:
            before = self._by_name.get(name)
            if before is None:
                raise KeyError(f"no device named {name!r}; known: {cut(sorted(self._by_name))}")
            self._checked[name] = int(time.time())
            if before.healthy == healthy and (before.reason or "") == message:
                return False
            after = before.with_health(healthy, message or None)
            self._devices = tuple(after if d.id == name else d for d in self._devices)
            self._by_name[name] = after
            log.info(
                "%s: device %s is now %s%s",
                self.driver,
                cut(name),
                "healthy" if healthy else "unhealthy",
                f": {cut(message)}" if message else "",
            )
            self._changed(list_changed=False)
        return True

    def _changed(self, list_changed: bool = True) -> None:
        self._send(self.encode_health())
        if list_changed:
            for callback in self._listeners:
                callback()

    # -- health streams ----------------------------------------------------------

    def encode_health(self) -> bytes:
        """One NodeWatchResourcesResponse listing every device (the v1 and v1alpha1 bytes are equal)."""
        from ..api import drahealth_v1_pb2 as health

        message = health.NodeWatchResourcesResponse()
        with self._lock:
            for device in self._devices:
                text = device.reason or ""
                if len(text) > MAX_HEALTH_MESSAGE:
                    text = text[: MAX_HEALTH_MESSAGE - 3] + "..."
                message.devices.add(
                    device=health.DeviceIdentifier(pool_name=self.pool, device_name=device.id),
                    health=health.HEALTHY if device.healthy else health.UNHEALTHY,
                    last_updated_time=self._checked.get(device.id, 0),
                    message=text,
                )
        return message.SerializeToString()

    def watch(self, stream: ResponseStream) -> None:
        with self._lock:
            stream.send(self.encode_health())
            self._streams.add(stream)

    def unwatch(self, stream: ResponseStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    @property
    def stream_count(self) -> int:
        with self._lock:
            return len(self._streams)

    def refresh(self) -> None:
        """Re-send the current health to every stream (a heartbeat, so nothing turns Unknown)."""
        with self._lock:
            if not self._streams:
                return
            now = int(time.time())
            for name in self._checked:
                self._checked[name] = now
            self._send(self.encode_health())

    def _send(self, data: bytes) -> None:
        with self._lock:
            for stream in self._streams:
                stream.send(data)

    def end_streams(self) -> None:
        with self._lock:
            streams, self._streams = self._streams, set()
        for stream in streams:
            stream.end()
