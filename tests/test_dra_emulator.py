"""The DRA test bed: the emulated kubelet registers a driver, prepares claims, watches health, restarts."""

from __future__ import annotations

import pytest

from sdplite import Device, DeviceNode, dra
from sdplite.testing.dra import DraTestbed

from conftest import wait_until

DRIVER = "gpu.example.com"
GPUS = [Device(f"gpu-{i}", nodes=[DeviceNode("/dev/null", f"/dev/gpu{i}")]) for i in range(2)]


def test_the_fixture_registers_prepares_and_watches_health(sdplite_dra: DraTestbed) -> None:
    driver = dra.build(DRIVER, devices=GPUS, **sdplite_dra.options()).start()
    try:
        registered = sdplite_dra.kubelet.wait_for_registration(DRIVER)
        assert (registered.version, registered.health_version) == ("v1", "v1")
        assert registered.endpoint == driver.service_path
        claim = sdplite_dra.claim(DRIVER, ["gpu-1"])
        (result,) = sdplite_dra.prepare(DRIVER, claim).values()
        cdi_id = f"k8s.{DRIVER}/claim={claim[1]}-gpu-1"
        assert result == {"error": "", "devices": [(["req"], "node-1", "gpu-1", [cdi_id])]}
        driver.set_health("gpu-1", False, "fan stopped")
        health = sdplite_dra.kubelet.wait_for_health(
            DRIVER, lambda h: h.get("gpu-1", ("",))[0] == "UNHEALTHY"
        )
        assert health == {"gpu-0": ("HEALTHY", ""), "gpu-1": ("UNHEALTHY", "fan stopped")}
        sdplite_dra.kubelet.restart()
        sdplite_dra.kubelet.wait_for_registration(DRIVER, count=2)
        assert sdplite_dra.prepare(DRIVER, claim) == {claim[1]: result}
        assert sdplite_dra.unprepare(DRIVER, claim) == {claim[1]: ""}
    finally:
        driver.stop()
    assert sdplite_dra.api.slices, "the slices stay after the driver stops"


def test_a_device_plugin_socket_is_refused_with_the_kubelets_text(sdplite_dra: DraTestbed) -> None:
    from sdplite import build

    plugin = build(
        "example.com/gpu",
        "dp.sock",
        lambda: GPUS,
        registration="plugins_registry",
        registry_dir=sdplite_dra.registry_dir,
    ).start()
    try:
        wait_until(lambda: bool(sdplite_dra.kubelet.refusals), 20, "the refusal")
        assert sdplite_dra.kubelet.refusals == [
            "RegisterPlugin error -- no handler registered for plugin type: DevicePlugin"
        ]
    finally:
        plugin.stop()
    with pytest.raises(LookupError, match="not registered"):
        sdplite_dra.prepare("example.com/gpu", ("default", "u", "c"))
