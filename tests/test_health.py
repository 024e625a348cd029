"""The status file and `sdplite health`: a liveness probe that reflects registration and streams."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from sdplite.status_file import judge
from sdplite.testing import KubeletEmulator

from conftest import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def health(status_file: str, max_age: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdplite", "health", "--status-file", status_file, "--max-age", str(max_age)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_health_follows_registration_streams_and_liveness(sock_dir: str) -> None:
    status = os.path.join(sock_dir, "run", "status.json")
    assert health(status).returncode == 1 and "no status file" in health(status).stderr
    kubelet = KubeletEmulator(sock_dir).start()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "examples", "superdisk.py")],
        env={**os.environ, "SDPLITE_PLUGIN_DIR": sock_dir, "SDPLITE_STATUS_FILE": status},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        kubelet.wait_for_devices("example.com/superdisk", count=2, timeout=20)
        wait_until(lambda: health(status).returncode == 0, what="a healthy status")
        assert "1 plugin(s) registered and watched" in health(status).stdout
        kubelet.stop()  # the kubelet goes away: no stream, then no registration
        wait_until(lambda: health(status).returncode == 1, what="an unhealthy status")
        assert "example.com/superdisk" in health(status).stderr
        kubelet.start()
        wait_until(
            lambda: health(status).returncode == 0, timeout=20, what="health after the kubelet is back"
        )
        proc.send_signal(signal.SIGSTOP)  # a stuck process stops writing
        wait_until(lambda: health(status, max_age=0.5).returncode == 1, what="a stale status")
        assert "old" in health(status, max_age=0.5).stderr
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not os.path.exists(status), "a cleanly stopped plugin removes its status file"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kubelet.stop()


def test_a_plugin_stopping_on_purpose_is_not_counted_as_a_failure() -> None:
    # `sdplite serve` removing a resource on reload: while it stops it is no longer
    # registered, but the process is healthy as long as the others are.
    serving = {
        "resource": "example.com/a",
        "registered": True,
        "streams": 1,
        "error": None,
        "stopping": False,
    }
    leaving = {
        "resource": "example.com/b",
        "registered": False,
        "streams": 0,
        "error": None,
        "stopping": True,
    }
    assert judge([serving, leaving]) == (True, "1 plugin(s) registered and watched")
    assert judge([serving, {**leaving, "stopping": False}])[0] is False
