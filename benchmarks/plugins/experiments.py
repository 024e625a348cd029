"""Prototypes of sdplite changes, applied by monkeypatching, to measure their gain before anyone writes them.

(A third, building the list inside one ListAndWatchResponse rather than
copying standalone Device messages into it, landed in sdplite as 667efba.)

Only ``profiling.py`` uses these (``sdplite_plugin.py --experiment NAME``);
the benchmark proper always runs sdplite as shipped. Each function patches
the installed sdplite in this process and must run before the plugin starts.

- ``inline``: unary handlers run on the connection's reader thread instead
  of being handed to a worker (the connection lock made re-entrant so the
  handler can write while the reader holds it). Streams still get a worker.
- ``novalidate``: h2's inbound header validation and normalisation off.
- ``cache``: ``encode_device_list`` keeps each Device object's encoded
  bytes (a ListAndWatchResponse is just its devices' entries one after
  another), so a health change re-encodes one device and joins the rest.
  DeviceState could keep such a list itself; a cache keyed by object
  identity is the smallest patch that shows the gain.
"""

from __future__ import annotations

import threading
from typing import Any, Callable


def inline() -> None:
    from sdplite.wire import connection, server_connection

    original_init = connection.Transport.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)

    original_dispatch = server_connection.ServerConnection._dispatch_call

    def dispatch(self: Any, call: Any) -> None:
        method = call.method
        if method is None or method.streaming or call.decoder.pending or len(call.messages) != 1:
            original_dispatch(self, call)
        else:
            self._run(call)

    connection.Transport.__init__ = init  # type: ignore[method-assign]
    server_connection.ServerConnection._dispatch_call = dispatch  # type: ignore[method-assign]


def novalidate() -> None:
    from sdplite.wire import connection

    original = connection.make_config

    def make_config(client_side: bool) -> Any:
        config = original(client_side)
        config.validate_inbound_headers = False
        config.normalize_inbound_headers = False
        return config

    connection.make_config = make_config


def cache() -> None:
    import weakref

    from sdplite import devices, service

    store: dict[int, tuple[Any, bytes]] = {}

    def entry(device: Any) -> bytes:
        key = id(device)
        hit = store.get(key)
        if hit is not None and hit[0]() is device:
            return hit[1]
        body = device.to_proto().SerializeToString()
        size, prefix = len(body), bytearray(b"\x0a")  # field 1, length-delimited
        while size > 0x7F:
            prefix.append(size & 0x7F | 0x80)
            size >>= 7
        prefix.append(size)
        data = bytes(prefix) + body
        store[key] = (weakref.ref(device, lambda _ref, key=key: store.pop(key, None)), data)
        return data

    def encode_device_list(items: Any) -> bytes:
        data = b"".join([entry(device) for device in items])
        if len(data) > devices.MAX_LIST_BYTES:
            raise devices.DeviceListError(f"{len(items)} devices make a {len(data)}-byte message")
        return data

    setattr(devices, "encode_device_list", encode_device_list)  # noqa: B010 - a deliberate patch
    setattr(service, "encode_device_list", encode_device_list)  # noqa: B010


EXPERIMENTS: dict[str, Callable[[], None]] = {
    "inline": inline,
    "novalidate": novalidate,
    "cache": cache,
}


def apply(names: str) -> None:
    """Apply a comma-separated list of experiments."""
    chosen = [n for n in names.split(",") if n]
    for name in chosen:
        EXPERIMENTS[name]()
