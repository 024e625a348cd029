"""Plugins joining and leaving a running supervisor (what ``sdplite serve``'s reload uses)."""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Callable

import pytest

from sdplite import Device, build
from sdplite.supervisor import Supervisor
from sdplite.testing import KubeletEmulator

from conftest import wait_until


def test_add_and_remove_leave_the_other_plugins_alone(
    sock_dir: str, baseline: Callable[[], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    status = os.path.join(sock_dir, "status.json")
    with KubeletEmulator(os.path.join(sock_dir, "dp")) as kubelet:
        first = build("example.com/a", "a.sock", lambda: [Device("a0")], plugin_dir=kubelet.directory)
        second = build("example.com/b", "b.sock", lambda: [Device("b0")], plugin_dir=kubelet.directory)
        supervisor = Supervisor([first], status_file=status)
        loop = threading.Thread(target=supervisor.run)
        loop.start()
        try:
            a = kubelet.wait_for_devices("example.com/a", count=1, timeout=20)
            stream = a.stream
            supervisor.add(second)
            kubelet.wait_for_devices("example.com/b", count=1, timeout=20)
            twin = build("example.com/c", "b.sock", lambda: [], plugin_dir=kubelet.directory)
            with pytest.raises(ValueError, match="already serves"):
                supervisor.add(twin)
            wait_until(lambda: len(json.load(open(status))["plugins"]) == 2, 20, "both in the status file")
            assert supervisor.remove(first) is True
            assert not os.path.exists(first.socket_path) and not first.registered
            kubelet.wait(lambda: not kubelet.resource("example.com/a").connected, 20, "a's stream ended")
            assert a.stream is stream  # a was never restarted: its one stream just ended
            assert kubelet.resource("example.com/b").connected and second.wait_registered(20)
            wait_until(
                lambda: [p["resource"] for p in json.load(open(status))["plugins"]] == ["example.com/b"],
                20,
                "only b in the status file",
            )
            assert sum(r.resource_name == "example.com/a" for r in kubelet.registrations) == 1
        finally:
            supervisor.stop()
            loop.join(30)
        assert not loop.is_alive() and not os.path.exists(second.socket_path)
        assert supervisor.remove(second) is True  # after the loop ended: already stopped
        with pytest.raises(RuntimeError, match="has stopped"):
            supervisor.add(first)
    baseline()


def test_a_supervisor_may_run_empty_for_a_while(sock_dir: str) -> None:
    with KubeletEmulator(os.path.join(sock_dir, "dp")) as kubelet:
        only = build("example.com/a", "a.sock", lambda: [Device("a0")], plugin_dir=kubelet.directory)
        supervisor = Supervisor([only])
        loop = threading.Thread(target=supervisor.run)
        loop.start()
        try:
            kubelet.wait_for_registration("example.com/a", timeout=20)
            assert supervisor.remove(only)
            again: Any = build(
                "example.com/a", "a.sock", lambda: [Device("a1")], plugin_dir=kubelet.directory
            )
            supervisor.add(again)
            kubelet.wait_for_devices("example.com/a", predicate=lambda r: r.healthy == ["a1"], timeout=20)
        finally:
            supervisor.stop()
            loop.join(30)
        assert not loop.is_alive()
