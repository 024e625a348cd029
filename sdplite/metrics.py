"""Prometheus metrics and ``/healthz`` on a TCP port, with the standard library only.

``build(..., metrics_port=9400)`` serves, while the plugin runs:

- ``GET /metrics``: the Prometheus text exposition format (version 0.0.4):
  devices by health, registration, open ListAndWatch streams, allocations by
  result, the Allocate duration histogram, registrations, restarts (kubelet
  restarts apart), health-check failures by reason and errors by kind, every
  name prefixed ``sdplite_`` and labelled with the resource.
- ``GET /healthz``: 200 and ``ok: ...`` when every plugin on the port is
  registered and watched by the kubelet, else 503 and ``unhealthy: ...`` —
  the judgement ``sdplite health`` makes from the status file. ``/health``
  answers the same, for probes written for squat/generic-device-plugin.

Several plugins of one process that give the same port share one server. It
is off by default: without ``metrics_port`` this module is never imported,
no thread runs and nothing is counted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Optional

from .logtext import cut
from .serving import PluginError
from .stats import Stats
from .status_file import judge

if TYPE_CHECKING:
    from .wire.shutdown import Shutdown

__all__ = ["MetricsFeature", "MetricsServer", "render", "CONTENT_TYPE"]

log = logging.getLogger("sdplite")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds a scraper may take to send its request or read the answer; a connection
#: that sends nothing is closed after this, so its thread and socket do not stay forever.
REQUEST_TIMEOUT = 30.0

#: (name, type, help) of every family, in the order they are written.
FAMILIES = (
    ("sdplite_devices", "gauge", "Devices advertised to the kubelet (replicas counted), by health."),
    ("sdplite_physical_devices", "gauge", "Devices as published (before replicas), by health."),
    ("sdplite_device_unhealthy", "gauge", "1 for each unhealthy physical device, with the reason it is."),
    ("sdplite_registered", "gauge", "1 while the kubelet has the plugin registered."),
    ("sdplite_list_and_watch_streams", "gauge", "Open ListAndWatch streams."),
    ("sdplite_allocations_total", "counter", "Allocate calls by result (granted, refused, failed)."),
    ("sdplite_allocate_duration_seconds", "histogram", "Time to answer an Allocate call."),
    ("sdplite_registrations_total", "counter", "Successful registrations with the kubelet."),
    ("sdplite_restarts_total", "counter", "Server restarts, by cause (kubelet, other)."),
    (
        "sdplite_kubelet_restarts_total",
        "counter",
        "Kubelet restarts seen (our socket deleted or kubelet.sock re-created).",
    ),
    ("sdplite_health_check_failures_total", "counter", "Failed health checks, by reason."),
    ("sdplite_errors_total", "counter", "Errors, by kind."),
)
#: Counter names in :class:`~sdplite.stats.Stats` -> their family.
_COUNTERS = {
    "allocations": "sdplite_allocations_total",
    "registrations": "sdplite_registrations_total",
    "restarts": "sdplite_restarts_total",
    "kubelet_restarts": "sdplite_kubelet_restarts_total",
    "health_check_failures": "sdplite_health_check_failures_total",
    "errors": "sdplite_errors_total",
}
_RESULTS = ("granted", "refused", "failed")


def _escape(value: str) -> str:
    return cut(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample(name: str, labels: Iterable[tuple[str, str]], value: float) -> str:
    text = ",".join(f'{key}="{_escape(v)}"' for key, v in labels)
    number = repr(float(value)) if isinstance(value, float) else str(value)
    return f"{name}{{{text}}} {number}"


def _plugin_samples(plugin: Any) -> dict[str, list[str]]:
    """Every sample of one plugin, by family."""
    state = plugin.state
    resource = ("resource", plugin.resource_name)
    out: dict[str, list[str]] = {name: [] for name, _, _ in FAMILIES}
    lists = (("sdplite_devices", state.devices), ("sdplite_physical_devices", state.physical_devices))
    for family, devices in lists:
        healthy = sum(1 for d in devices if d.healthy)
        out[family] += [
            _sample(family, (resource, ("health", "Healthy")), healthy),
            _sample(family, (resource, ("health", "Unhealthy")), len(devices) - healthy),
        ]
    out["sdplite_device_unhealthy"] += [
        _sample("sdplite_device_unhealthy", (resource, ("device", d.id), ("reason", d.reason or "")), 1)
        for d in state.physical_devices
        if not d.healthy
    ]
    out["sdplite_registered"].append(_sample("sdplite_registered", (resource,), int(plugin.registered)))
    out["sdplite_list_and_watch_streams"].append(
        _sample("sdplite_list_and_watch_streams", (resource,), state.stream_count)
    )
    stats: Optional[Stats] = state.stats
    if stats is None:
        return out
    counters = stats.counters()
    for result in _RESULTS:
        counters.setdefault(("allocations", (("result", result),)), 0)
    for name in ("registrations", "kubelet_restarts"):
        counters.setdefault((name, ()), 0)
    for (name, labels), value in sorted(counters.items()):
        counter = _COUNTERS.get(name)
        if counter is not None:
            out[counter].append(_sample(counter, (resource, *labels), value))
    buckets, count, total = stats.allocate_histogram()
    family = "sdplite_allocate_duration_seconds"
    out[family] += [_sample(f"{family}_bucket", (resource, ("le", repr(b))), n) for b, n in buckets]
    out[family] += [
        _sample(f"{family}_bucket", (resource, ("le", "+Inf")), count),
        _sample(f"{family}_count", (resource,), count),
        _sample(f"{family}_sum", (resource,), float(total)),
    ]
    return out


def render(plugins: Sequence[Any]) -> str:
    """The text exposition of these plugins' metrics."""
    per_plugin = [_plugin_samples(p) for p in plugins]
    lines = []
    for name, kind, help_text in FAMILIES:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for samples in per_plugin:
            lines += samples[name]
    return "\n".join(lines) + "\n"


def healthz(plugins: Sequence[Any]) -> tuple[bool, str]:
    """``sdplite health``'s judgement of these plugins."""
    return judge([p.controller.status() for p in plugins])


class MetricsServer:
    """One HTTP server on ``(host, port)`` for the plugins that joined it."""

    def __init__(self, host: str, port: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.plugins: list[Any] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = REQUEST_TIMEOUT

            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                path = self.path.split("?", 1)[0]
                plugins = server.snapshot()
                if path == "/metrics":
                    self._answer(200, render(plugins), CONTENT_TYPE)
                elif path in ("/healthz", "/health"):  # /health: generic-device-plugin's probe path
                    ok, why = healthz(plugins)
                    self._answer(200 if ok else 503, ("ok: " if ok else "unhealthy: ") + why + "\n")
                else:
                    self._answer(404, "not found: try /metrics or /healthz\n")

            def _answer(self, code: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every few seconds is not worth a log line

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.address: tuple[str, int] = self._httpd.server_address[:2]  # type: ignore[assignment]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=f"sdplite-metrics-{port}")
        self._thread.daemon = True
        self._thread.start()

    def snapshot(self) -> list[Any]:
        with self._lock:
            return list(self.plugins)

    def join(self, plugin: Any) -> None:
        with self._lock:
            self.plugins.append(plugin)

    def leave(self, plugin: Any, shutdown: Optional[Shutdown] = None) -> bool:
        """Remove ``plugin``; True when no plugin is left (then the server is closed,
        waiting for its thread no longer than ``shutdown``'s deadline)."""
        with self._lock:
            if plugin in self.plugins:
                self.plugins.remove(plugin)
            empty = not self.plugins
        if empty:
            self._httpd.shutdown()
            self._httpd.server_close()
            if shutdown is not None:
                shutdown.join(self._thread, "the metrics server")
            else:
                self._thread.join(5.0)
        return empty


_servers: dict[tuple[str, int], MetricsServer] = {}
_servers_lock = threading.Lock()


class MetricsFeature:
    """A plugin's part in the metrics server of its port: counts, joins on start, leaves on stop."""

    def __init__(self, plugin: Any, port: int, host: str = "") -> None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"metrics_port must be a TCP port number (0 for any free one), not {port!r}")
        self.plugin = plugin
        self.key = (host, port)
        self.server: Optional[MetricsServer] = None
        plugin.state.stats = Stats()

    def __repr__(self) -> str:
        return f"MetricsFeature(port={self.key[1]})"

    @property
    def address(self) -> Optional[tuple[str, int]]:
        """The (host, port) served on, once started: the port is known even if 0 was asked for."""
        return self.server.address if self.server is not None else None

    def start(self) -> None:
        with _servers_lock:
            server = _servers.get(self.key)
            if server is None:
                try:
                    server = MetricsServer(*self.key)
                except OSError as exc:
                    host, port = self.key
                    raise PluginError(
                        f"cannot serve metrics on {host or '*'}:{port}: {exc}: choose another metrics_port"
                    ) from None
                _servers[self.key] = server
                host, port = server.address
                log.info("serving metrics on http://%s:%d/metrics", host or "0.0.0.0", port)
            server.join(self.plugin)
        self.server = server

    def stop(self, shutdown: Optional[Shutdown] = None) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        with _servers_lock:
            if server.leave(self.plugin, shutdown) and _servers.get(self.key) is server:
                del _servers[self.key]
