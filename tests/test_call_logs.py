"""Every decision the kubelet asks for is one INFO line on ``sdplite``; h2/hpack stay quiet.

Allocate, GetPreferredAllocation and PreStartContainer each log the resource,
the device IDs (cut short) and the outcome: granted, or refused and why.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sdplite import Allocation, Device, build
from sdplite.testing import KubeletEmulator
from sdplite.wire import GrpcError, StatusCode

RESOURCE = "example.com/gpu"


class Gpus:
    def __init__(self) -> None:
        self.refuse_start = False

    def list_and_watch(self, watch: Any) -> None:
        watch.send([Device("gpu-0"), Device("gpu-1"), Device("gpu-2", healthy=False)])
        watch.wait()

    def get_preferred_allocation(self, available: list[str], must_include: list[str], size: int) -> list[str]:
        return sorted(available, reverse=True)[:size]

    def pre_start_container(self, device_ids: list[str]) -> None:
        if self.refuse_start:
            raise GrpcError(StatusCode.FAILED_PRECONDITION, "firmware still loading")


def call_lines(caplog: Any) -> list[str]:
    calls = ("Allocate", "GetPreferredAllocation", "PreStartContainer")
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "sdplite" and r.levelno == logging.INFO and r.getMessage().split(" ")[1] in calls
    ]


def test_allocate_and_friends_log_one_info_line_each(sdplite_kubelet: KubeletEmulator, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="sdplite")
    gpus = Gpus()
    with build(RESOURCE, "gpu.sock", gpus, plugin_dir=sdplite_kubelet.directory):
        sdplite_kubelet.wait_for_devices(RESOURCE, count=3)
        sdplite_kubelet.admit(RESOURCE, 1)
        with pytest.raises(GrpcError):
            sdplite_kubelet.allocate(RESOURCE, ["gpu-0"], ["nope", "gpu-2"])
        with pytest.raises(GrpcError):
            sdplite_kubelet.allocate(RESOURCE, ["gpu-2"])
        gpus.refuse_start = True
        with pytest.raises(GrpcError):
            sdplite_kubelet.pre_start_container(RESOURCE, ["gpu-0"])
    assert call_lines(caplog) == [
        "example.com/gpu: GetPreferredAllocation 1 of [gpu-0,gpu-1] with []: preferred [gpu-1]",
        "example.com/gpu: Allocate [gpu-1] granted",
        "example.com/gpu: PreStartContainer [gpu-1] done",
        "example.com/gpu: Allocate [gpu-0] [nope,gpu-2] refused: "
        "INVALID_ARGUMENT: example.com/gpu: unknown device IDs ['nope']",
        "example.com/gpu: Allocate [gpu-2] refused: "
        "INVALID_ARGUMENT: example.com/gpu: cannot allocate unhealthy devices ['gpu-2']",
        "example.com/gpu: PreStartContainer [gpu-0] refused: FAILED_PRECONDITION: firmware still loading",
    ]


def test_peer_supplied_ids_are_cut_in_the_log(sdplite_kubelet: KubeletEmulator, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="sdplite")
    with build(RESOURCE, "gpu.sock", lambda: ["gpu-0"], plugin_dir=sdplite_kubelet.directory):
        sdplite_kubelet.wait_for_devices(RESOURCE, count=1)
        with pytest.raises(GrpcError) as refused:
            sdplite_kubelet.allocate(RESOURCE, ["x" * 20000] * 50)
    assert refused.value.code == StatusCode.INVALID_ARGUMENT
    (line,) = call_lines(caplog)
    assert line.startswith("example.com/gpu: Allocate [xxx") and "refused: INVALID_ARGUMENT" in line
    assert len(line) < 1000 and "characters)" in line


def test_a_hook_that_raises_is_logged_as_refused(sdplite_kubelet: KubeletEmulator, caplog: Any) -> None:
    class Broken:
        def list_and_watch(self, watch: Any) -> None:
            watch.send(["a"])
            watch.wait()

        def allocate(self, device_ids: list[str]) -> Allocation:
            raise RuntimeError("driver gone")

    caplog.set_level(logging.INFO, logger="sdplite")
    with build(RESOURCE, "gpu.sock", Broken(), plugin_dir=sdplite_kubelet.directory):
        sdplite_kubelet.wait_for_devices(RESOURCE, count=1)
        with pytest.raises(GrpcError):
            sdplite_kubelet.allocate(RESOURCE, ["a"])
    assert call_lines(caplog) == ["example.com/gpu: Allocate [a] refused: UNKNOWN: RuntimeError: driver gone"]


def test_debug_for_everything_leaves_out_hpack_unless_asked_by_name(
    sdplite_kubelet: KubeletEmulator, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: DEBUG for every logger left at NOTSET
    with build(RESOURCE, "gpu.sock", lambda: ["gpu-0"], plugin_dir=sdplite_kubelet.directory):
        sdplite_kubelet.wait_for_devices(RESOURCE, count=1)
        sdplite_kubelet.allocate(RESOURCE, ["gpu-0"])
        names = {r.name.split(".")[0] for r in caplog.records}
        assert "sdplite" in names and not names & {"h2", "hpack"}, names
        caplog.clear()
        hpack = logging.getLogger("hpack")
        hpack.setLevel(logging.DEBUG)  # asked for by name: on
        try:
            sdplite_kubelet.allocate(RESOURCE, ["gpu-0"])
        finally:
            hpack.setLevel(logging.WARNING)
    assert any(r.name.startswith("hpack") for r in caplog.records)
