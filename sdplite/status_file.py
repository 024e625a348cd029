"""The process status file: what a plugin process writes about itself, and the probe's check.

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
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from .files import write_atomic

__all__ = ["StatusFile", "check_status", "judge", "HEARTBEAT"]

HEARTBEAT = 10.0


class StatusFile:
    """Rewrites one JSON file from plain snapshots of the plugins (it reads no live object)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._last: Optional[list[dict[str, Any]]] = None
        self._written = 0.0

    def update(self, snapshots: Sequence[Mapping[str, Any]], force: bool = False) -> None:
        """Rewrite the file if a snapshot changed or the heartbeat is due (atomic replace).

        One snapshot per plugin: "resource", "socket", "registered", "error"
        and, for a plugin the kubelet watches through streams, "streams";
        any other plain JSON values are written as they are.
        """
        plugins = [dict(snapshot) for snapshot in snapshots]
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


def judge(plugins: Sequence[Mapping[str, Any]]) -> tuple[bool, str]:
    """(healthy, why) for plugin statuses (as :class:`StatusFile` writes them): each
    must be registered and watched. The status file's check and ``/healthz`` share it.

    A plugin that is stopping on purpose (``sdplite serve`` removing a resource on
    reload) is leaving, not failing: it is left out of the judgement."""
    plugins = [plugin for plugin in plugins if not plugin.get("stopping")]
    problems = []
    for plugin in plugins:
        name = plugin.get("resource")
        if plugin.get("error"):
            problems.append(f"{name}: {plugin['error']}")
        elif not plugin.get("registered"):
            problems.append(f"{name}: not registered with the kubelet")
        elif "streams" in plugin and not plugin["streams"]:
            problems.append(f"{name}: registered but the kubelet holds no ListAndWatch stream")
    if not plugins:
        problems.append("no plugins in the status file")
    if problems:
        return False, "; ".join(problems)
    return True, f"{len(plugins)} plugin(s) registered and watched"
