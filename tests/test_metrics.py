"""The metrics endpoint, read by Prometheus's own text parser (prometheus_client), and /healthz.

Every test binds 127.0.0.1 with port 0 (any free port) and asks the plugin
where it listens.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sdplite import Device, build
from sdplite.healthcheck import HealthCheck
from sdplite.testing import KubeletEmulator

from conftest import wait_until

RESOURCE = "example.com/gpu"


def get(address: tuple[str, int], path: str) -> tuple[int, str, str]:
    url = f"http://{address[0]}:{address[1]}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


class Scrape:
    """One /metrics page as Prometheus parses it."""

    def __init__(self, address: tuple[str, int]) -> None:
        status, content_type, self.text = get(address, "/metrics")
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        self.families = {f.name: f for f in text_string_to_metric_families(self.text)}

    def value(self, sample: str, **labels: str) -> float:
        found = [
            s.value
            for f in self.families.values()
            for s in f.samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(found) == 1, f"{sample}{labels}: {found}\n{self.text}"
        return found[0]


def broken_gpu_1(device: Device) -> None:
    if device.id == "gpu-1":
        raise OSError("no response from the GPU")


class Gpus:
    def list_and_watch(self, watch: Any) -> None:
        watch.send([Device("gpu-0"), Device("gpu-1")])
        watch.wait()


def test_metrics_count_what_the_plugin_does(sock_dir: str, baseline: Callable[[], None]) -> None:
    with KubeletEmulator(sock_dir) as kubelet:
        plugin = build(
            RESOURCE,
            "gpu.sock",
            Gpus(),
            plugin_dir=sock_dir,
            replicas=2,
            health_check=HealthCheck(broken_gpu_1, interval=0.05, failures=2),
            metrics_port=0,
            metrics_host="127.0.0.1",
        )
        assert plugin.metrics_address is None, "nothing listens before the plugin runs"
        with plugin:
            kubelet.wait_for_devices(RESOURCE, healthy=2)
            address = plugin.metrics_address
            assert address is not None and address[0] == "127.0.0.1" and address[1] > 0
            kubelet.allocate(RESOURCE, ["gpu-0::0", "gpu-0::1"])
            with pytest.raises(Exception, match="unknown device IDs"):
                kubelet.allocate(RESOURCE, ["gpu-7::0"])
            wait_until(lambda: plugin.registered, what="registration")
            page = Scrape(address)
            for family in page.families.values():
                assert family.name.startswith("sdplite_") and family.documentation, family.name
            assert page.families["sdplite_allocate_duration_seconds"].type == "histogram"
            assert page.families["sdplite_allocations"].type == "counter"
            r = {"resource": RESOURCE}
            assert page.value("sdplite_devices", health="Healthy", **r) == 2
            assert page.value("sdplite_devices", health="Unhealthy", **r) == 2
            assert page.value("sdplite_physical_devices", health="Unhealthy", **r) == 1
            reason = "OSError: no response from the GPU (2 checks in a row)"
            assert page.value("sdplite_device_unhealthy", device="gpu-1", reason=reason, **r) == 1
            assert page.value("sdplite_registered", **r) == 1
            assert page.value("sdplite_list_and_watch_streams", **r) == 1
            assert page.value("sdplite_allocations_total", result="granted", **r) == 1
            assert page.value("sdplite_allocations_total", result="refused", **r) == 1
            assert page.value("sdplite_allocations_total", result="failed", **r) == 0
            assert page.value("sdplite_allocate_duration_seconds_count", **r) == 2
            assert page.value("sdplite_allocate_duration_seconds_bucket", le="+Inf", **r) == 2
            assert page.value("sdplite_registrations_total", **r) == 1
            assert page.value("sdplite_kubelet_restarts_total", **r) == 0
            assert page.value("sdplite_health_check_failures_total", reason="OSError", **r) >= 2
            assert page.value("sdplite_errors_total", kind="allocate_refused", **r) == 1
            status, _, body = get(address, "/healthz")
            assert (status, body) == (200, "ok: 1 plugin(s) registered and watched\n")

            kubelet.restart()  # sockets wiped, a new kubelet.sock: the plugin registers again
            kubelet.wait_for_registration(RESOURCE, count=2)
            wait_until(
                lambda: Scrape(address).value("sdplite_registrations_total", **r) == 2,
                what="2nd registration",
            )
            page = Scrape(address)
            assert page.value("sdplite_kubelet_restarts_total", **r) == 1
            assert page.value("sdplite_restarts_total", cause="kubelet", **r) == 1

            kubelet.stop()
            wait_until(lambda: get(address, "/healthz")[0] == 503, what="/healthz to fail without a kubelet")
            assert get(address, "/healthz")[2].startswith(f"unhealthy: {RESOURCE}: ")
            assert get(address, "/nothing")[0] == 404
        with pytest.raises(OSError):  # the port is closed with the plugin
            get(address, "/metrics")
    baseline()


def test_plugins_on_one_port_share_it(sock_dir: str) -> None:
    with KubeletEmulator(sock_dir) as kubelet:
        first = build("example.com/a", "a.sock", lambda: ["a-0"], plugin_dir=sock_dir, metrics_port=0)
        second = build("example.com/b", "b.sock", lambda: ["b-0", "b-1"], plugin_dir=sock_dir, metrics_port=0)
        with first, second:
            kubelet.wait_for_devices("example.com/b", count=2)
            assert first.metrics_address == second.metrics_address
            address = first.metrics_address
            assert address is not None
            page = Scrape(("127.0.0.1", address[1]))
            assert page.value("sdplite_devices", resource="example.com/a", health="Healthy") == 1
            assert page.value("sdplite_devices", resource="example.com/b", health="Healthy") == 2


def test_a_scraper_that_sends_nothing_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that never sends its request is closed after REQUEST_TIMEOUT (no thread, no fd kept)."""
    import socket

    from sdplite import metrics

    monkeypatch.setattr(metrics, "REQUEST_TIMEOUT", 0.2)
    server = metrics.MetricsServer("127.0.0.1", 0)
    silent = socket.create_connection(server.address, timeout=10.0)
    try:
        assert silent.recv(1) == b"", "the server should close a connection that sent nothing"
    finally:
        silent.close()
        server.leave(None)


def test_label_values_are_escaped_for_the_parser() -> None:
    from sdplite.metrics import render

    class Stub:
        resource_name = RESOURCE
        registered = False
        error = None

        class state:  # noqa: N801
            devices = physical_devices = (
                Device("d", healthy=False, reason='a "quoted"\\ reason\non two lines'),
            )
            stream_count = 0
            stats = None

    families = {f.name: f for f in text_string_to_metric_families(render([Stub()]))}
    (sample,) = families["sdplite_device_unhealthy"].samples
    assert sample.labels["reason"] == 'a "quoted"\\ reason\non two lines'


def test_a_bad_port_is_refused() -> None:
    with pytest.raises(ValueError, match="metrics_port must be a TCP port number"):
        build(RESOURCE, "x.sock", lambda: [], plugin_dir="/tmp", metrics_port=70000)


def test_a_port_in_use_stops_the_plugin_with_a_clear_error(sock_dir: str) -> None:
    import socket

    from sdplite import PluginError

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        plugin = build(
            RESOURCE, "x.sock", lambda: [], plugin_dir=sock_dir, metrics_port=port, metrics_host="127.0.0.1"
        )
        plugin.start()
        with pytest.raises(
            PluginError, match=f"cannot serve metrics on 127.0.0.1:{port}: .*choose another metrics_port"
        ):
            plugin.stop()
    finally:
        blocker.close()
