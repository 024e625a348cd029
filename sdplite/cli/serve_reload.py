"""``sdplite serve`` at run time: one plugin per resource, moved to a new config on reload.

All the resources' plugins run in one :class:`~sdplite.supervisor.Supervisor`
(so one status file and one loop), which takes plugins in and lets them go
while it runs (``add``/``remove``). A reload touches only what changed:

- a resource that is new is built and added; one that is gone is removed
  (its stream ends and its socket goes, so the kubelet drops it);
- a resource whose devices changed keeps its plugin, socket and stream: its
  ``get_devices`` is pointed at the new definition and rescanned, and the
  kubelet gets the new list on the open stream;
- an unchanged resource is not touched at all;
- a new ``plugin_dir`` or ``interval`` replaces every plugin.

A thread watches the file through its directory (a ConfigMap update swaps a
symlink there, which a watch on the file itself would miss) and looks at it
every 10 s besides (every second where inotify is missing); SIGHUP makes it
re-read the file at once. A file that
does not parse or check is refused with one ERROR line and the running
config stays.
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
from ..lifecycle import PluginError
from ..logtext import cut
from ..plugin import DevicePlugin, build
from ..supervisor import Supervisor
from .serve_config import ConfigError, GlobDevices, GroupResource, Resource, ResourceConfig, ServeConfig

__all__ = ["Resources", "checked", "serve_forever"]

log = logging.getLogger("sdplite.serve")

Source = Union[GlobDevices, GroupDevices]

#: Seconds between looks at the file when no event came (events make it look at once).
LOOK_WITH_INOTIFY = 10.0
LOOK_WITHOUT_INOTIFY = 1.0


def _source(resource: Resource, root: str) -> Source:
    if isinstance(resource, GroupResource):
        return GroupDevices(resource.groups, root, name=resource.name)
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


def _shared(config: ServeConfig) -> tuple[Any, ...]:
    """The settings every resource's plugin is built with."""
    return (config.plugin_dir, config.interval, config.metrics_port, config.metrics_host, config.cdi)


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
            metrics_port=config.metrics_port,
            metrics_host=config.metrics_host,
            cdi=config.cdi,
        )


def checked(config: ServeConfig, root: str) -> ServeConfig:
    """``config`` once every resource's plugin could be built from it (build() refuses, e.g.,
    a resource name CDI cannot take as a kind); :class:`ConfigError` otherwise."""
    for resource in config.resources:
        try:
            _Running(resource, config, root)
        except ValueError as exc:
            raise ConfigError(f"{resource.name}: {exc}") from None
    return config


class Resources:
    """The plugins of one ``serve`` process, one per resource of the current config."""

    def __init__(self, config: ServeConfig, root: str = "/") -> None:
        self.root = root
        self.config = config
        self.running = {r.name: _Running(r, config, root) for r in config.resources}
        self.supervisor = Supervisor([r.plugin for r in self.running.values()])

    def apply(self, config: ServeConfig) -> None:
        """Move to ``config`` (from any thread but the supervisor's)."""
        old, self.config = self.config, config
        if _shared(old) != _shared(config):
            log.info("serve: plugin directory, interval, metrics or CDI changed: replacing every resource")
            for name in list(self.running):
                self._remove(name)
        wanted = {r.name: r for r in config.resources}
        removed = [n for n in self.running if n not in wanted]
        for name in removed:
            log.info("serve: %s removed from the configuration: stopping it", name)
            self._remove(name)
        added, changed = [], []
        for name, resource in wanted.items():
            running = self.running.get(name)
            if running is None:
                log.info("serve: serving %s", name)
                self._add(resource)
                added.append(name)
            elif running.resource != resource:
                self._change(running, resource)
                changed.append(name)
        log.info(
            "serve: configuration applied: %d added, %d removed, %d changed, %d unchanged",
            len(added),
            len(removed),
            len(changed),
            len(wanted) - len(added) - len(changed),
        )

    def _add(self, resource: Resource) -> None:
        running = _Running(resource, self.config, self.root)
        self.supervisor.add(running.plugin)
        self.running[resource.name] = running

    def _remove(self, name: str) -> None:
        self.supervisor.remove(self.running.pop(name).plugin)

    def _change(self, running: _Running, resource: Resource) -> None:
        if _retarget(running.source, resource):
            log.info("serve: %s changed: rescanning its devices (stream kept)", resource.name)
            running.resource = resource
            running.plugin.rescan()
        else:
            log.info("serve: %s changed its kind of definition: replacing it", resource.name)
            self._remove(resource.name)
            self._add(resource)


class _ConfigWatch:
    """A thread that notices a new version of the file: inotify on its directory, and a look now and then."""

    def __init__(self, path: str, load: Callable[[], ServeConfig], resources: Resources) -> None:
        self.path = path
        self.load = load
        self.resources = resources
        self.watch = DirWatch(os.path.dirname(os.path.abspath(path)))
        self.seen = self._read()
        self._forced = threading.Event()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="sdplite-serve-config", daemon=True)
        self._thread.start()

    def _read(self) -> Optional[bytes]:
        try:
            with open(self.path, "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def reload(self) -> None:
        """Re-read the file now, even if it looks unchanged (SIGHUP); safe in a signal handler."""
        self._forced.set()
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            fds = [self._wake_r] + (
                [self.watch.fileno()] if self.watch.active or self.watch.rewatch() else []
            )
            ready = select.select(fds, [], [], 1.0)[0]
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            if self._stop.is_set():
                return
            forced = self._forced.is_set()
            self._forced.clear()
            self.watch.drain()
            config = self._changed(forced)
            if config is not None:
                try:
                    self.resources.apply(config)
                except Exception:
                    log.exception("serve: %s: applying the new configuration failed", self.path)

    def _changed(self, forced: bool) -> Optional[ServeConfig]:
        """The new config if the file changed (or ``forced``) and checks; None otherwise."""
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

    def close(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(30.0)
        self.watch.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def serve_forever(args: argparse.Namespace, config: ServeConfig, load: Callable[[], ServeConfig]) -> int:
    """Run until SIGTERM/SIGINT (0) or until a plugin cannot run (1); from the main thread."""
    resources = Resources(config, args.host_root)
    watch = _ConfigWatch(args.config, load, resources) if args.config else None

    def on_stop(signum: int, frame: Any) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        resources.supervisor.stop()

    def on_hup(signum: int, frame: Any) -> None:
        if watch is not None:
            log.info("received SIGHUP: reloading %s", args.config)
            watch.reload()
        else:
            log.info("received SIGHUP: restarting")
            resources.supervisor.restart_all("SIGHUP")

    handlers: dict[int, Any] = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop, signal.SIGHUP: on_hup}
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        resources.supervisor.run()
        return 0
    except PluginError as exc:
        log.error("serve: stopping: %s", exc)
        return 1
    finally:
        if watch is not None:
            watch.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
