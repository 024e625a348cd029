"""A status file the plugin process keeps, and the check a liveness probe runs on it.

With ``SDPLITE_STATUS_FILE`` set (or ``status_file`` given to the
supervisor), the process writes a small JSON document whenever something
changes and at least every ``HEARTBEAT`` seconds: for each plugin, whether it
is registered, how many ListAndWatch streams are open, and which devices are
unhealthy and why (``sdplite inspect --status`` shows them). ``sdplite health``
(a DaemonSet's exec liveness probe) reads it and fails when the process has
stopped writing, or when a plugin is not registered or nobody watches it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from .files import write_atomic
from .logtext import cut

if TYPE_CHECKING:
    from .lifecycle import Controller

__all__ = ["StatusFile", "check_status", "judge", "plugin_status", "HEARTBEAT"]

HEARTBEAT = 10.0


class StatusFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self._last: Optional[list[dict[str, Any]]] = None
        self._written = 0.0

    def update(self, controllers: Sequence[Controller], force: bool = False) -> None:
        """Rewrite the file if the state changed or the heartbeat is due (atomic replace)."""
        plugins = [plugin_status(c.plugin, c.registered.is_set(), c.fatal) for c in controllers]
        now = time.time()
        if not force and plugins == self._last and now - self._written < HEARTBEAT:
            return
        document = {"time": now, "pid": os.getpid(), "plugins": plugins}
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        import json  # here, not at the top: only a process with a status file needs it

        write_atomic(self.path, json.dumps(document).encode())
        self._last, self._written = plugins, now

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


#: At most this many unhealthy devices (with their reasons) are listed per plugin.
MAX_LISTED = 100


def plugin_status(plugin: Any, registered: bool, error: Optional[str]) -> dict[str, Any]:
    """One plugin's entry in the status file (and in ``/healthz``'s judgement).

    ``plugin`` is a :class:`~sdplite.plugin.DevicePlugin` (typed loosely: this
    module stays below the plugin in the import order)."""
    state = plugin.state
    unhealthy = [d for d in state.physical_devices if not d.healthy]
    return {
        "resource": plugin.resource_name,
        "socket": plugin.socket_path,
        "registered": registered,
        "streams": state.stream_count,
        "devices": len(state.devices),
        "healthy": sum(1 for d in state.devices if d.healthy),
        "unhealthy": [
            {"id": cut(d.id), "reason": cut(d.reason) if d.reason else None} for d in unhealthy[:MAX_LISTED]
        ],
        "error": error,
    }


def check_status(path: str, max_age: float = 3 * HEARTBEAT) -> tuple[bool, str]:
    """(healthy, why) for a status file, as a liveness probe should judge it."""
    import json  # here, not at the top: see StatusFile.update

    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError:
        return False, f"no status file at {path}: is the plugin running with SDPLITE_STATUS_FILE set?"
    except (OSError, ValueError) as exc:
        return False, f"unreadable status file {path}: {exc}"
    age = time.time() - float(document.get("time", 0))
    if age > max_age:
        return False, f"status is {age:.1f}s old (over {max_age:g}s): the plugin process is stuck or gone"
    return judge(document.get("plugins") or [])


def judge(plugins: Sequence[dict[str, Any]]) -> tuple[bool, str]:
    """(healthy, why) for plugin statuses (as :class:`StatusFile` writes them): each
    must be registered and watched. The status file's check and ``/healthz`` share it."""
    problems = []
    for plugin in plugins:
        name = plugin.get("resource")
        if plugin.get("error"):
            problems.append(f"{name}: {plugin['error']}")
        elif not plugin.get("registered"):
            problems.append(f"{name}: not registered with the kubelet")
        elif not plugin.get("streams"):
            problems.append(f"{name}: registered but the kubelet holds no ListAndWatch stream")
    if not plugins:
        problems.append("no plugins in the status file")
    if problems:
        return False, "; ".join(problems)
    return True, f"{len(plugins)} plugin(s) registered and watched"
