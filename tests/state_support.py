"""A stand-in ListAndWatch stream for tests that drive a DeviceState directly."""

from __future__ import annotations

from typing import Optional

from sdplite import Device
from sdplite.replicas import Replicas
from sdplite.service import DeviceState


class Watcher:
    """Stands in for a ListAndWatch stream: keeps what it is sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, message: bytes) -> bool:
        self.sent.append(message)
        return True


def watched(devices: list[Device], replicas: Optional[Replicas] = None) -> tuple[DeviceState, Watcher]:
    """A DeviceState holding ``devices`` (and ``replicas``), watched by a :class:`Watcher`."""
    state = DeviceState("example.com/x", replicas)
    state.publish(devices)
    watcher = Watcher()
    state.watch(watcher)  # type: ignore[arg-type]
    return state, watcher
