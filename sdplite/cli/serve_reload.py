"""``sdplite serve`` at run time: one plugin per resource, moved to a new config on reload.

Each resource is a :class:`~sdplite.plugin.DevicePlugin` started on its own
(``start()``/``stop()``, the public way to run plugins in the background),
so a reload touches only what changed:

- a resource that is new is built and started; one that is gone is stopped
  (its stream ends and its socket goes, so the kubelet drops it);
- a resource whose devices changed keeps its plugin, socket and stream: its
  ``get_devices`` is pointed at the new definition and rescanned, and the
  kubelet gets the new list on the open stream;
- an unchanged resource is not touched at all;
- a new ``plugin_dir`` or ``interval`` restarts every plugin.

The file is watched through its directory (a ConfigMap update swaps a
symlink there, which a watch on the file itself would miss), and looked at
once a second besides; SIGHUP re-reads it at once. A file that does not
parse or check is refused with one ERROR line and the running config stays.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import threading
from typing import Any, Callable, Optional, Union

from ..dirwatch import DirWatch
from ..discovery import GroupDevices
from ..logtext import cut
from ..plugin import DevicePlugin, build
from .serve_config import ConfigError, GlobDevices, GroupResource, Resource, ResourceConfig, ServeConfig

__all__ = ["Resources", "serve_forever"]

log = logging.getLogger("sdplite.serve")

Source = Union[GlobDevices, GroupDevices]


def _source(resource: Resource, root: str) -> Source:
    if isinstance(resource, GroupResource):
        return GroupDevices(resource.groups, root)
    return GlobDevices(resource, root)


def _retarget(source: Source, resource: Resource) -> bool:
    """Point ``source`` at the resource's new definition; False if it cannot follow."""
    if isinstance(source, GroupDevices) and isinstance(resource, GroupResource):
        source.groups = resource.groups
        return True
    if isinstance(source, GlobDevices) and isinstance(resource, ResourceConfig):
        source.update(resource)
        return True
    return False


class _Running:
    def __init__(self, resource: Resource, config: ServeConfig, root: str) -> None:
        self.resource = resource
        self.source = _source(resource, root)
        self.plugin: DevicePlugin = build(
            resource.name,
            resource.socket_name,
            self.source,
            plugin_dir=config.plugin_dir,
            interval=config.interval,
        )
        self.plugin.start()


class Resources:
    """The plugins of one ``serve`` process, one per resource of the current config."""

    def __init__(self, root: str = "/") -> None:
        self.root = root
        self.config: Optional[ServeConfig] = None
        self.running: dict[str, _Running] = {}

    def apply(self, config: ServeConfig) -> None:
        old, self.config = self.config, config
        if old is not None and (old.plugin_dir, old.interval) != (config.plugin_dir, config.interval):
            log.info("serve: plugin directory or interval changed: restarting every resource")
            self.stop()
        wanted = {r.name: r for r in config.resources}
        for name in [n for n in self.running if n not in wanted]:
            log.info("serve: %s removed from the configuration: stopping it", name)
            self.running.pop(name).plugin.stop()
        for name, resource in wanted.items():
            running = self.running.get(name)
            if running is None:
                log.info("serve: serving %s", name)
                self.running[name] = _Running(resource, config, self.root)
            elif running.resource != resource:
                self._change(running, resource, config)

    def _change(self, running: _Running, resource: Resource, config: ServeConfig) -> None:
        if _retarget(running.source, resource):
            log.info("serve: %s changed: rescanning its devices (stream kept)", resource.name)
            running.resource = resource
            running.plugin.rescan()
        else:
            log.info("serve: %s changed its kind of definition: restarting it", resource.name)
            running.plugin.stop()
            self.running[resource.name] = _Running(resource, config, self.root)

    def failure(self) -> Optional[str]:
        """Why a plugin stopped on its own (the kubelet refused it), if one did."""
        for name, running in self.running.items():
            if running.plugin.error:
                return f"{name}: {running.plugin.error}"
        return None

    def restart(self, reason: str) -> None:
        for running in self.running.values():
            running.plugin.restart(reason)

    def stop(self) -> None:
        while self.running:
            _name, running = self.running.popitem()
            running.plugin.stop()


class _ConfigFile:
    """Notices a new version of the file: inotify on its directory, a stat once a second."""

    def __init__(self, path: str, load: Callable[[], ServeConfig]) -> None:
        self.path = path
        self.load = load
        self.watch = DirWatch(os.path.dirname(os.path.abspath(path)))
        self.seen = self._read()

    def _read(self) -> Optional[bytes]:
        try:
            with open(self.path, "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def fds(self) -> list[int]:
        return [self.watch.fileno()] if self.watch.active or self.watch.rewatch() else []

    def changed(self, forced: bool) -> Optional[ServeConfig]:
        """The new config if the file changed (or ``forced``) and checks; None otherwise."""
        self.watch.drain()
        content = self._read()
        if content == self.seen and not forced:
            return None
        self.seen = content
        try:
            config = self.load()
        except ConfigError as exc:
            log.error(
                "serve: %s: new configuration refused, the running one stays: %s",
                self.path,
                cut(str(exc), 500),
            )
            return None
        log.info("serve: %s: applying the new configuration", self.path)
        return config


def serve_forever(args: argparse.Namespace, config: ServeConfig, load: Callable[[], ServeConfig]) -> int:
    """Run until SIGTERM/SIGINT (0) or until a plugin cannot run (1)."""
    resources = Resources(args.host_root)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    events = {"stop": threading.Event(), "hup": threading.Event()}

    def on_signal(signum: int, frame: Any) -> None:
        log.info(
            "received %s: %s",
            signal.Signals(signum).name,
            "reloading" if signum == signal.SIGHUP else "stopping",
        )
        events["hup" if signum == signal.SIGHUP else "stop"].set()
        try:
            os.write(wake_w, b"\0")
        except OSError:
            pass

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    watched = _ConfigFile(args.config, load) if args.config else None
    try:
        resources.apply(config)
        return _loop(resources, watched, events, wake_r)
    finally:
        resources.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if watched is not None:
            watched.watch.close()
        os.close(wake_r)
        os.close(wake_w)
        log.info("serve: stopped")


def _loop(
    resources: Resources, watched: Optional[_ConfigFile], events: dict[str, threading.Event], wake_r: int
) -> int:
    while not events["stop"].is_set():
        fds = [wake_r] + (watched.fds() if watched is not None else [])
        select.select(fds, [], [], 1.0)
        try:
            while os.read(wake_r, 64):
                pass
        except BlockingIOError:
            pass
        hup = events["hup"].is_set()
        events["hup"].clear()
        if watched is not None:
            config = watched.changed(forced=hup)
            if config is not None:
                resources.apply(config)
        elif hup:
            resources.restart("SIGHUP")
        failure = resources.failure()
        if failure:
            log.error("serve: stopping: %s", failure)
            return 1
    return 0
