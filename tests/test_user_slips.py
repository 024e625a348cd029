"""What a new user ran into (issue 13, minor items): each now gets a clear error or log line.

Every error names the fix; every test here failed before its fix.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from sdplite import Allocation, Device, DeviceListError, InvalidNameError, PluginError, build
from sdplite.cli.serve_config import GlobDevices, parse_config
from sdplite.devices import normalize_devices
from sdplite.status_file import check_status
from sdplite.testing import KubeletEmulator
from sdplite.wire import GrpcError, StatusCode
from sdplite.wire.shutdown import Shutdown

from conftest import wait_until

SDPLITE = [sys.executable, "-m", "sdplite"]
RESOURCE = "example.com/x"


def sdplite(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SDPLITE, *args], capture_output=True, text=True, timeout=timeout)


def messages(caplog: Any, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


# -- 4, 5: a plugin directory it cannot use ----------------------------------------------


def test_a_directory_it_cannot_serve_in_is_retried_with_backoff_and_a_hint(caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="sdplite")
    plugin = build(RESOURCE, "x.sock", lambda: [], plugin_dir="/sys")  # EPERM or EACCES
    controller = plugin.controller
    controller.attach(lambda: None)
    attempts = []
    now = 1000.0
    while now < 1100.0:
        before = len(caplog.records)
        wake_at = controller.step(now)
        if len(caplog.records) > before:
            attempts.append(now)
        assert not controller.listeners() and not controller.fatal
        now = max(wake_at, now + 0.1)
    controller.shutdown(Shutdown(1.0))
    gaps = [round(b - a, 1) for a, b in zip(attempts, attempts[1:])]
    assert gaps[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0], gaps
    (first, *_) = messages(caplog, logging.ERROR)
    assert "cannot serve on /sys/x.sock" in first and "retrying in 0.5s" in first
    assert "run it as root" in first and "mount the host's directory read-write" in first


def test_a_plugin_dir_that_is_a_file_stops_the_plugin_with_the_fix(tmp_path: Any) -> None:
    afile = tmp_path / "hostname"
    afile.write_text("x")
    plugin = build(RESOURCE, "x.sock", lambda: [], plugin_dir=str(afile)).start()
    wait_until(lambda: plugin.error is not None, what="the plugin to give up")
    with pytest.raises(PluginError, match="is a file, not a directory: set plugin_dir"):
        plugin.stop()


# -- 6: a bad list, told as it is ------------------------------------------------------------


def test_a_bad_first_list_says_there_is_no_good_list_yet(
    sdplite_kubelet: KubeletEmulator, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="sdplite")
    answers: list[Any] = [[Device("a"), Device("a")], ["a"]]
    plugin = build(
        RESOURCE,
        "x.sock",
        lambda: answers.pop(0) if len(answers) > 1 else answers[0],
        plugin_dir=sdplite_kubelet.directory,
        interval=3600,
    )
    with plugin:
        sdplite_kubelet.wait_for_registration(RESOURCE)
        plugin.rescan()
        sdplite_kubelet.wait_for_devices(RESOURCE, count=1)
    errors = messages(caplog, logging.ERROR)
    assert errors == [
        "example.com/x: get_devices sent a bad list, no good list yet, so the kubelet sees 0 devices "
        "until one comes: device ID 'a' appears twice: IDs must be unique"
    ], errors


def test_get_devices_raising_is_logged_with_the_resource_and_the_traceback(
    sdplite_kubelet: KubeletEmulator, caplog: Any
) -> None:
    def get_devices() -> list[str]:
        raise RuntimeError("sysfs gone")

    caplog.set_level(logging.INFO, logger="sdplite")
    with build(RESOURCE, "x.sock", get_devices, plugin_dir=sdplite_kubelet.directory):
        sdplite_kubelet.wait_for_registration(RESOURCE)
    (record,) = [r for r in caplog.records if "get_devices raised" in r.getMessage()]
    assert record.getMessage().startswith("example.com/x: get_devices raised RuntimeError: sysfs gone")
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


def test_an_oversize_list_from_get_devices_names_get_devices(
    sdplite_kubelet: KubeletEmulator, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="sdplite")
    huge = [f"{i:040d}" for i in range(80_000)]
    with build(RESOURCE, "x.sock", lambda: huge, plugin_dir=sdplite_kubelet.directory):
        sdplite_kubelet.wait_for_registration(RESOURCE)
    (error,) = messages(caplog, logging.ERROR)
    assert error.startswith("example.com/x: get_devices sent a bad list") and "4 MiB" in error


@pytest.mark.parametrize(
    "devices", [{"a": 1}, {"a", "b"}, (d for d in ["a"]), "ab"], ids=["dict", "set", "generator", "str"]
)
def test_a_list_that_is_not_a_list_is_refused(devices: Any) -> None:
    with pytest.raises(DeviceListError, match=f"must be a list of devices, not a {type(devices).__name__}"):
        normalize_devices(devices)
    assert normalize_devices(("a", "b"))  # a tuple is a sequence: fine


# -- 9: inspect --json keeps zeros and falses ---------------------------------------------


def test_inspect_json_keeps_zeros_falses_and_numbers(sdplite_kubelet: KubeletEmulator) -> None:
    devices = [Device("d0", numa_nodes=[0]), Device("d1", numa_nodes=[1])]
    with build(RESOURCE, "x.sock", lambda: devices, plugin_dir=sdplite_kubelet.directory) as plugin:
        sdplite_kubelet.wait_for_devices(RESOURCE, count=2)
        result = sdplite("inspect", plugin.socket_path, "--json")
    assert result.returncode == 0, result.stderr
    options, listed = [json.loads(line) for line in result.stdout.splitlines()]
    assert options == {"options": {"pre_start_required": False, "get_preferred_allocation_available": False}}
    assert [d["topology"]["nodes"] for d in listed["devices"]["devices"]] == [[{"ID": 0}], [{"ID": 1}]]


# -- 10: sdplite kubelet --dir ----------------------------------------------------------------


def test_kubelet_dir_that_is_a_file_or_under_nothing_is_refused(tmp_path: Any) -> None:
    afile = tmp_path / "hostname"
    afile.write_text("x")
    result = sdplite("kubelet", "--dir", str(afile))
    assert result.returncode == 2 and "is a file, not a directory" in result.stderr, result.stderr
    result = sdplite("kubelet", "--dir", str(tmp_path / "nonexistent" / "x"))
    assert result.returncode == 2 and "does not exist: create it first" in result.stderr, result.stderr
    assert not (tmp_path / "nonexistent").exists()


def test_a_second_kubelet_on_the_same_directory_is_refused(sock_dir: str) -> None:
    with KubeletEmulator(sock_dir) as first:
        result = sdplite("kubelet", "--dir", sock_dir)
        assert result.returncode == 1 and "another kubelet is serving on" in result.stderr, result.stderr
        assert os.path.exists(first.socket)
        with build(RESOURCE, "x.sock", lambda: ["a"], plugin_dir=sock_dir):
            first.wait_for_devices(RESOURCE, count=1)  # the first one still works


def test_a_stale_kubelet_socket_is_removed_and_logged(sock_dir: str, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="sdplite")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(os.path.join(sock_dir, "kubelet.sock"))
    stale.close()  # the file stays: a kubelet that crashed
    with KubeletEmulator(sock_dir):
        pass
    assert any("removed stale" in m and "kubelet.sock" in m for m in messages(caplog))


# -- 11, 12: bad names and bad allocations ---------------------------------------------------


def test_a_nul_byte_in_the_socket_name_is_refused_by_build(sock_dir: str) -> None:
    with pytest.raises(InvalidNameError, match="contains a NUL byte"):
        build(RESOURCE, "x\0.sock", lambda: [], plugin_dir=sock_dir)


def test_an_allocation_with_a_non_str_env_value_names_the_field(sdplite_kubelet: KubeletEmulator) -> None:
    class Impl:
        def list_and_watch(self, watch: Any) -> None:
            watch.send(["a"])
            watch.wait()

        def allocate(self, device_ids: list[str]) -> Allocation:
            return Allocation(envs={"A": 1})  # type: ignore[dict-item]

    with build(RESOURCE, "x.sock", Impl(), plugin_dir=sdplite_kubelet.directory):
        sdplite_kubelet.wait_for_devices(RESOURCE, count=1)
        with pytest.raises(GrpcError) as refused:
            sdplite_kubelet.allocate(RESOURCE, ["a"])
    assert refused.value.code == StatusCode.INTERNAL
    assert "envs['A'] = 1: envs keys and values must be str" in refused.value.message


# -- 13: mypy --strict holds flexible-mode objects to the protocol --------------------------


def test_mypy_strict_checks_a_flexible_mode_object(tmp_path: Any) -> None:
    (tmp_path / "good.py").write_text(
        textwrap.dedent("""
        from sdplite import Device, Watch, build

        class Good:
            def list_and_watch(self, watch: Watch) -> None:
                watch.send([Device("a")])

        build("example.com/x", "x.sock", Good())
        build("example.com/x", "x.sock", lambda: ["a"])
    """)
    )
    (tmp_path / "bad.py").write_text(
        textwrap.dedent("""
        from sdplite import build

        class Bad:
            def list_and_watch(self) -> None:
                pass

        build("example.com/x", "x.sock", Bad())
    """)
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            # The user's files are under test; sdplite itself is checked by CI's own
            # mypy run. (Under an editable install its modules count as the user's,
            # and on h2 4.1, which ships no py.typed, they would report h2 as untyped.)
            "--follow-imports=silent",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(tmp_path / "good.py"),
            str(tmp_path / "bad.py"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "bad.py:8" in errors[0] and "arg-type" in errors[0], result.stdout


# -- 14: CLI slips ---------------------------------------------------------------------------------


def test_unknown_options_are_named_with_the_right_usage() -> None:
    top = sdplite("--bogus")
    assert top.returncode == 2 and "unrecognized arguments: --bogus" in top.stderr, top.stderr
    serve = sdplite("serve", "--bogus")
    assert serve.returncode == 2 and serve.stderr.startswith("usage: sdplite serve"), serve.stderr
    assert "unrecognized arguments: --bogus" in serve.stderr
    none = sdplite()
    assert none.returncode == 2 and "give a COMMAND: demo, kubelet, serve, inspect, health" in none.stderr


@pytest.mark.parametrize("command", ["demo", "kubelet", "serve", "inspect", "health"])
def test_subcommand_help_has_no_rest_markup(command: str) -> None:
    result = sdplite(command, "--help")
    assert result.returncode == 0 and "``" not in result.stdout, result.stdout


def test_health_reports_a_fractional_max_age(tmp_path: Any) -> None:
    path = tmp_path / "status.json"
    path.write_text(json.dumps({"time": time.time() - 2, "plugins": []}))
    healthy, why = check_status(str(path), 0.5)
    assert not healthy and "(over 0.5s)" in why


def test_inspect_calls_preferred_and_pre_start_and_refuses_an_empty_id(
    sdplite_kubelet: KubeletEmulator,
) -> None:
    class Impl:
        started: list[list[str]] = []

        def list_and_watch(self, watch: Any) -> None:
            watch.send(["a", "b", "c"])
            watch.wait()

        def get_preferred_allocation(self, available: list[str], must: list[str], size: int) -> list[str]:
            return (must + sorted(set(available) - set(must), reverse=True))[:size]

        def pre_start_container(self, device_ids: list[str]) -> None:
            self.started.append(device_ids)

    impl = Impl()
    with build(RESOURCE, "x.sock", impl, plugin_dir=sdplite_kubelet.directory) as plugin:
        sdplite_kubelet.wait_for_devices(RESOURCE, count=3)
        result = sdplite(
            "inspect",
            plugin.socket_path,
            "--preferred",
            "a,b,c",
            "--size",
            "2",
            "--must-include",
            "a",
            "--pre-start",
            "a,c",
        )
        assert result.returncode == 0, result.stderr
        assert "preferred 2 of a,b,c: a,c" in result.stdout and "pre-start a,c: done" in result.stdout
        assert impl.started == [["a", "c"]]
        empty = sdplite("inspect", plugin.socket_path, "--allocate", "")
    assert empty.returncode == 2 and "has an empty device ID" in empty.stderr, empty.stderr


# -- 15: what the log leaves out -----------------------------------------------------------------


def test_globs_that_match_nothing_warn_once(caplog: Any, tmp_path: Any) -> None:
    caplog.set_level(logging.INFO, logger="sdplite")
    pattern = str(tmp_path / "ttyUSB*")
    (resource,) = parse_config({"resources": [{"name": RESOURCE, "paths": [pattern]}]}).resources
    devices = GlobDevices(resource)
    assert devices() == [] and devices() == []
    (warning,) = messages(caplog, logging.WARNING)
    assert f"example.com/x: no file matches {pattern}" in warning and "check the paths" in warning
    (tmp_path / "ttyUSB0").write_text("")
    assert len(devices()) == 1


def test_a_stale_plugin_socket_is_logged_and_sigterm_ends_with_a_stopped_line(sock_dir: str) -> None:
    stale = socket.socket(socket.AF_UNIX)
    path = os.path.join(sock_dir, "sdplite-example.com_x.sock")  # serve's socket for RESOURCE
    stale.bind(path)
    stale.close()
    with KubeletEmulator(sock_dir) as kubelet:
        proc = subprocess.Popen(
            [*SDPLITE, "serve", "--resource", f"{RESOURCE}=/nonexistent-sdplite-*", "--plugin-dir", sock_dir],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            kubelet.wait_for_registration(RESOURCE, timeout=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert f"removed stale socket {path}" in output
    assert "no file matches /nonexistent-sdplite-*" in output
    lines = output.splitlines()
    stopping = next(i for i, line in enumerate(lines) if "received SIGTERM: stopping" in line)
    assert any("stopped: example.com/x" in line for line in lines[stopping:]), output


def test_two_plugins_on_one_socket_are_named_with_the_fix(sock_dir: str) -> None:
    from sdplite.supervisor import Supervisor

    first = build("example.com/a", "same.sock", lambda: ["a"], plugin_dir=sock_dir)
    second = build("example.com/b", "same.sock", lambda: ["b"], plugin_dir=sock_dir)
    other = build("example.com/c", "other.sock", lambda: ["c"], plugin_dir=sock_dir)
    with pytest.raises(ValueError) as info:
        Supervisor([first, other, second])
    message = str(info.value)
    assert os.path.join(sock_dir, "same.sock") in message and "other.sock" not in message
    assert "its own socket name" in message
