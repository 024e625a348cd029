"""Prototypes of sdplite changes, applied by monkeypatching, to measure their gain before anyone writes them.

(Two others landed in sdplite: building the list inside one
ListAndWatchResponse rather than copying standalone Device messages into it
(667efba), and a health change re-encoding only its device (DeviceState keeps
the list's entries).)

Only ``profiling.py`` uses these (``sdplite_plugin.py --experiment NAME``);
the benchmark proper always runs sdplite as shipped. Each function patches
the installed sdplite in this process and must run before the plugin starts.

- ``inline``: unary handlers run on the connection's reader thread instead
  of being handed to a worker (the connection lock made re-entrant so the
  handler can write while the reader holds it). Streams still get a worker.
- ``novalidate``: h2's inbound header validation and normalisation off.
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


EXPERIMENTS: dict[str, Callable[[], None]] = {
    "inline": inline,
    "novalidate": novalidate,
}


def apply(names: str) -> None:
    """Apply a comma-separated list of experiments."""
    chosen = [n for n in names.split(",") if n]
    for name in chosen:
        EXPERIMENTS[name]()
