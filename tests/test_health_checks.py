"""Health that says why: reasons on set_health, and the health-check helper with damping.

Rounds are run by hand (``HealthCheck.run_once``) where the test counts
failures, so nothing depends on timing; one test runs the real thread
against the kubelet emulator, the status file and ``sdplite inspect --status``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from typing import Any, Callable

import pytest
from state_support import watched

from sdplite import Device, build
from sdplite.healthcheck import FAILURES, SUCCESSES, HealthCheck
from sdplite.service import DeviceState
from sdplite.stats import Stats
from sdplite.testing import KubeletEmulator

from conftest import wait_until


def health_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sdplite" and "device " in r.getMessage()]


def test_set_health_keeps_the_reason_and_logs_each_change_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sdplite")
    state, watcher = watched([Device("a"), Device("b")])
    assert state.set_health("a", False, "ECC errors: 12")
    assert state.get("a") == Device("a", healthy=False, reason="ECC errors: 12")
    assert not state.set_health("a", False, "ECC errors: 12"), "nothing changed"
    assert state.set_health("a", False, "ECC errors: 40"), "a new reason is a change"
    assert len(watcher.sent) == 2, "the kubelet never sees reasons: one push only"
    assert state.get("a").reason == "ECC errors: 40"  # type: ignore[union-attr]
    assert state.set_health("a", True)
    assert state.get("a") == Device("a")
    assert health_lines(caplog) == [
        "example.com/x: device a is now Unhealthy: ECC errors: 12",
        "example.com/x: device a stays Unhealthy: ECC errors: 40",
        "example.com/x: device a is now Healthy",
    ]
    with pytest.raises(TypeError, match="reason must be a str"):
        state.set_health("a", False, 12)  # type: ignore[arg-type]


def test_a_published_list_logs_health_turns_with_their_reasons(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sdplite")
    state, _ = watched([Device("a")])
    state.publish([Device("a", healthy=False, reason="fan stopped")])
    assert "example.com/x: device a is now Unhealthy: fan stopped" in health_lines(caplog)


class Script:
    """A check function whose outcome per device the test sets: "ok", "fail", "false" or "hang"."""

    def __init__(self) -> None:
        self.outcome: dict[str, str] = {}
        self.release = threading.Event()
        self.calls: list[str] = []

    def __call__(self, device: Device) -> Any:
        self.calls.append(device.id)
        outcome = self.outcome.get(device.id, "ok")
        if outcome == "fail":
            raise OSError(f"cannot open /dev/{device.id}")
        if outcome == "hang":
            self.release.wait()
        return outcome != "false"


def rounds(check: HealthCheck, state: DeviceState, n: int) -> None:
    for _ in range(n):
        check.run_once(state)


def test_failures_in_a_row_make_a_device_unhealthy_and_successes_bring_it_back() -> None:
    state, watcher = watched([Device("gpu-0"), Device("gpu-1")])
    state.stats = Stats()
    script = Script()
    check = HealthCheck(script, failures=3, successes=2)
    script.outcome["gpu-1"] = "fail"
    rounds(check, state, 2)
    assert state.get("gpu-1").healthy, "two failures are not enough"  # type: ignore[union-attr]
    rounds(check, state, 1)
    assert state.get("gpu-1") == Device(
        "gpu-1", healthy=False, reason="OSError: cannot open /dev/gpu-1 (3 checks in a row)"
    )
    rounds(check, state, 2)
    assert len(watcher.sent) == 2, "more failures change nothing more"
    state.publish([Device("gpu-0"), Device("gpu-1")])  # a fresh list says healthy: the checks still fail
    assert not state.get("gpu-1").healthy  # type: ignore[union-attr]
    script.outcome["gpu-1"] = "ok"
    rounds(check, state, 1)
    assert not state.get("gpu-1").healthy, "one success is not enough"  # type: ignore[union-attr]
    rounds(check, state, 1)
    assert state.get("gpu-1") == Device("gpu-1", reason="health check passed 2 times in a row")
    assert state.get("gpu-0") == Device("gpu-0"), "the healthy device was never touched"
    assert state.stats.counters() == {("health_check_failures", (("reason", "OSError"),)): 5}


def test_flapping_never_reaches_the_threshold() -> None:
    state, watcher = watched([Device("nic-0")])
    script = Script()
    check = HealthCheck(script)  # the defaults
    for _ in range(4):
        script.outcome["nic-0"] = "fail"
        rounds(check, state, FAILURES - 1)
        script.outcome["nic-0"] = "ok"
        rounds(check, state, 1)
    assert state.get("nic-0") == Device("nic-0") and len(watcher.sent) == 1
    assert (FAILURES, SUCCESSES) == (3, 2), "the documented defaults"


def test_a_check_that_hangs_or_returns_false_fails_with_that_reason() -> None:
    state, _ = watched([Device("a"), Device("b"), Device("c")])
    state.stats = Stats()
    script = Script()
    script.outcome.update(a="hang", b="false")
    check = HealthCheck(script, timeout=0.2, failures=2, successes=1)
    try:
        rounds(check, state, 2)
        assert state.get("a").reason == "check timed out after 0.2s (2 checks in a row)"  # type: ignore[union-attr]
        assert state.get("b").reason == "check returned False (2 checks in a row)"  # type: ignore[union-attr]
        assert state.get("c").healthy  # type: ignore[union-attr]
        assert script.calls.count("a") == 1, "no second check while the first still hangs"
        counts = state.stats.counters()
        assert counts[("health_check_failures", (("reason", "timeout"),))] == 2
        assert counts[("health_check_failures", (("reason", "returned_false"),))] == 2
    finally:
        script.release.set()
    script.outcome.update(a="ok")
    hung = [t for t in threading.enumerate() if t.name == "sdplite-check-a"]
    wait_until(lambda: not any(t.is_alive() for t in hung), what="the hung check to return")
    rounds(check, state, 2)
    assert state.get("a") == Device("a", reason="health check passed 1 time in a row")


def test_removed_devices_are_forgotten() -> None:
    state, _ = watched([Device("a"), Device("b")])
    script = Script()
    script.outcome["b"] = "fail"
    check = HealthCheck(script, failures=1)
    rounds(check, state, 1)
    state.publish([Device("a")])
    rounds(check, state, 1)
    state.publish([Device("a"), Device("b")])  # b is back: nothing holds it down any more
    assert state.get("b").healthy  # type: ignore[union-attr]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(TypeError, match="function of a Device"):
        HealthCheck("not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="failures must be an int >= 1"):
        HealthCheck(lambda d: None, failures=0)
    with pytest.raises(ValueError, match="positive"):
        HealthCheck(lambda d: None, interval=0)


def inspect_status(path: str) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "sdplite", "inspect", "--status", path],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_checks_run_on_their_own_thread_with_the_kubelet_and_recover(
    sock_dir: str, monkeypatch: pytest.MonkeyPatch, baseline: Callable[[], None]
) -> None:
    status = os.path.join(sock_dir, "status.json")
    monkeypatch.setenv("SDPLITE_STATUS_FILE", status)
    broken = threading.Event()

    def check(device: Device) -> None:
        if device.id == "gpu-1" and broken.is_set():
            raise RuntimeError("temperature 105 C")

    with KubeletEmulator(sock_dir) as kubelet:
        plugin = build(
            "example.com/gpu",
            "gpu.sock",
            lambda: [Device("gpu-0"), Device("gpu-1")],
            plugin_dir=sock_dir,
            interval=0.05,  # rescans every 50 ms: each fresh list says healthy, the verdict must hold
            health_check=HealthCheck(check, interval=0.05, failures=2, successes=2),
        )
        with plugin:
            kubelet.wait_for_devices("example.com/gpu", healthy=2)
            assert any(t.name == "sdplite-health-example.com/gpu" for t in threading.enumerate())
            broken.set()
            resource = kubelet.wait_for_devices("example.com/gpu", healthy=1)
            assert resource.unhealthy == ["gpu-1"]
            reason = "RuntimeError: temperature 105 C (2 checks in a row)"
            assert [(d.id, d.reason) for d in plugin.physical_devices if not d.healthy] == [("gpu-1", reason)]
            wait_until(lambda: reason in inspect_status(status), what="the reason in the status file")
            broken.clear()
            kubelet.wait_for_devices("example.com/gpu", healthy=2)
            wait_until(lambda: "Unhealthy" not in inspect_status(status), what="recovery in the status file")
        assert not any(t.name.startswith("sdplite-health") for t in threading.enumerate())
    baseline()


def test_stop_is_bounded_with_a_check_that_hangs(sock_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    """A hung check holds no stop: it is named in the stop's WARNING line and left on its daemon thread."""
    caplog.set_level(logging.WARNING, logger="sdplite")
    release = threading.Event()
    started = threading.Event()

    def hangs(device: Device) -> None:
        started.set()
        release.wait()

    with KubeletEmulator(sock_dir) as kubelet:
        plugin = build(
            "example.com/hang",
            "hang.sock",
            lambda: [Device("gpu-0")],
            plugin_dir=sock_dir,
            health_check=HealthCheck(hangs, interval=0.05, timeout=60),  # a round that would wait a minute
        ).start()
        try:
            kubelet.wait_for_devices("example.com/hang", count=1)
            assert started.wait(10)
            stopped = threading.Thread(target=plugin.stop)
            stopped.start()
            stopped.join(20)  # generous; the grace is about a second
            assert not stopped.is_alive(), "stop() waited for a hung health check"
        finally:
            release.set()
    ours = [
        r.getMessage() for r in caplog.records if r.name == "sdplite" and "still running" in r.getMessage()
    ]
    assert len(ours) == 1 and "the health check of gpu-0" in ours[0], ours


def test_a_check_that_returns_late_is_not_judged_twice() -> None:
    # Round 1 counts the hung check as a timeout. Its late result must not count a second
    # time in round 2: round 2 runs a fresh check and judges that one.
    state, _ = watched([Device("a")])
    state.stats = Stats()
    script = Script()
    script.outcome["a"] = "hang"
    check = HealthCheck(script, timeout=0.2, failures=2, successes=1)
    rounds(check, state, 1)
    script.outcome["a"] = "false"
    script.release.set()
    hung = [t for t in threading.enumerate() if t.name == "sdplite-check-a"]
    wait_until(lambda: not any(t.is_alive() for t in hung), what="the hung check to return")
    rounds(check, state, 1)
    assert script.calls == ["a", "a"]
    assert state.get("a").reason == "check returned False (2 checks in a row)"  # type: ignore[union-attr]
    counts = state.stats.counters()
    assert counts[("health_check_failures", (("reason", "timeout"),))] == 1
    assert counts[("health_check_failures", (("reason", "returned_false"),))] == 1
