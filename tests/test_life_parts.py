"""The parts of a plugin's life, each on its own, with no socket and no kubelet.

Restart rules, registration with backoff, the device feed, serving and the
controller that composes them are driven here through their interfaces with
stand-ins (docs/design.md, "A plugin's life"); the end-to-end tests
(test_plugin_lifecycle.py, test_faults.py, the interop suites) run them together.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

import pytest

from sdplite import Device, PluginError, Watch
from sdplite.api import paths
from sdplite.api import pluginregistration_pb2 as reg
from sdplite.devices import DeviceListError
from sdplite.feed import FIRST_LIST_WAIT, DeviceFeed
from sdplite.impl import SimpleImpl
from sdplite.lifecycle import Controller, Waker
from sdplite.registration import (
    BACKOFF_CAP,
    BACKOFF_FIRST,
    KubeletRegistration,
    RegisterOutcome,
    RegisterResult,
    WatcherRegistration,
    device_plugin_info,
)
from sdplite.restarts import RestartWatch
from sdplite.serving import Serving
from sdplite.status_file import StatusFile, check_status
from sdplite.supervisor import BackgroundRunner
from sdplite.wire import Channel, Method, unary
from sdplite.wire.shutdown import Shutdown

from conftest import wait_until

INF = float("inf")


# -- restart rules ------------------------------------------------------------------


class Files:
    """Stands in for the file system: path -> identity."""

    def __init__(self) -> None:
        self.ids: dict[str, tuple[int, int, int]] = {}

    def identify(self, path: str) -> Optional[tuple[int, int, int]]:
        return self.ids.get(path)


def test_a_requested_restart_is_due_once_with_its_first_reason() -> None:
    watch = RestartWatch()
    watch.request("SIGHUP")
    watch.request("second")
    assert watch.due(0.0, None, True) == ("SIGHUP", None)
    assert watch.due(0.0, None, True) == (None, None)


def test_a_lost_socket_is_a_restart() -> None:
    reason, _ = RestartWatch().due(0.0, "/plugins/x.sock", True)
    assert reason == "our socket /plugins/x.sock was removed or replaced"


def test_a_new_kubelet_sock_is_a_restart_once_registered() -> None:
    files = Files()
    files.ids["/k.sock"] = (1, 10, 100)
    watch = RestartWatch("/k.sock", identify=files.identify)
    assert watch.due(0.0, None, True, (1, 10, 100)) == (None, None)
    files.ids["/k.sock"] = (1, 10, 200)  # same inode number, new file (ext4 reuses numbers)
    assert watch.due(0.0, None, False, (1, 10, 100)) == (None, None)  # not registered: nothing to redo
    assert watch.due(0.0, None, True, (1, 10, 100))[0] == "kubelet.sock was re-created (kubelet restart)"
    del files.ids["/k.sock"]  # kubelet gone: wait for it rather than restart
    assert watch.due(0.0, None, True, (1, 10, 100)) == (None, None)


def test_a_lost_stream_waits_for_signs_of_a_kubelet_restart_then_restarts() -> None:
    files = Files()
    files.ids["/k.sock"] = (1, 1, 1)
    watch = RestartWatch("/k.sock", identify=files.identify, grace=1.0)
    watch.stream_lost(10.0)
    assert watch.stream_loss_pending
    assert watch.due(10.2, None, True, (1, 1, 1)) == (None, 11.0)
    assert watch.due(11.0, None, True, (1, 1, 1))[0] == "the kubelet ended our ListAndWatch stream"
    watch.register_started()  # a loss before a new Register no longer counts
    assert not watch.stream_loss_pending
    watch.stream_lost(20.0)
    watch.reset()  # nor one from a server that is gone
    assert watch.due(30.0, None, True, (1, 1, 1)) == (None, None)


def test_the_plugin_watchers_plugins_ignore_the_kubelet_and_streams() -> None:
    watch = RestartWatch()  # no kubelet.sock: the watcher finds us again by itself
    watch.stream_lost(0.0)
    assert not watch.stream_loss_pending
    assert watch.due(5.0, None, True) == (None, None)


# -- registration through kubelet.sock ---------------------------------------------------


class FakeAttempt:
    """A Register call whose outcome the test chooses; run() blocks until released."""

    def __init__(self, outcome: RegisterOutcome, message: str = "", hold: bool = False) -> None:
        self.outcome = outcome
        self.message = message
        self.result: Optional[RegisterResult] = None
        self.closed = False
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def run(self) -> None:
        self.release.wait(10)
        self.result = RegisterResult(self.outcome, self.message)

    def close(self) -> None:
        self.closed = True
        self.release.set()


class Registrar:
    """A KubeletRegistration fed with FakeAttempts, counting wake-ups and attempts."""

    def __init__(self, outcomes: list[FakeAttempt]) -> None:
        self.outcomes = outcomes
        self.made: list[FakeAttempt] = []
        self.woken = threading.Event()
        self.attempts_begun = 0
        files = Files()
        files.ids["/d/kubelet.sock"] = (7, 7, 7)
        self.registration = KubeletRegistration(
            "example.com/x",
            "x.sock",
            "/d/kubelet.sock",
            self.make,
            self.woken.set,
            on_attempt=self.begun,
            detail=lambda: "3 devices",
            identify=files.identify,
        )

    def make(self) -> Any:
        attempt = self.outcomes.pop(0)
        self.made.append(attempt)
        return attempt

    def begun(self) -> None:
        self.attempts_begun += 1

    def step(self, now: float) -> float:
        """One controller step once the running attempt (if any) has ended."""
        if self.made and not self.made[-1].closed:
            wait_until(lambda: self.made[-1].result is not None, what="the attempt to end")
        return self.registration.step(now)


def test_register_retries_with_doubling_backoff_until_the_kubelet_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sdplite")
    failures = [FakeAttempt(RegisterOutcome.RETRY, "UNAVAILABLE: no kubelet") for _ in range(8)]
    r = Registrar([*failures, FakeAttempt(RegisterOutcome.OK)])
    assert r.registration.step(0.0) == INF  # attempt 1 runs; its thread wakes us
    now, pauses = 0.0, []
    for _ in range(8):
        wait_at = r.step(now)  # collects the failure, schedules the next
        pauses.append(round(wait_at - now, 3))
        assert r.registration.step(wait_at - 0.001) == wait_at  # not before its time
        now = wait_at
        r.registration.step(now)  # the next attempt begins
    assert pauses == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert pauses[0] == BACKOFF_FIRST and max(pauses) == BACKOFF_CAP
    r.step(now)
    assert r.registration.registered.is_set()
    assert r.registration.registered_through == (7, 7, 7)
    assert r.attempts_begun == 9
    assert "registered with the kubelet (endpoint x.sock, 3 devices)" in caplog.text
    assert r.woken.is_set()


def test_register_stops_for_good_on_a_refusal_that_cannot_change() -> None:
    r = Registrar([FakeAttempt(RegisterOutcome.FATAL, 'UNKNOWN: the ResourceName "x" is invalid')])
    r.registration.step(0.0)
    assert r.step(0.0) == INF
    assert r.registration.fatal is not None
    assert (
        "refused to register example.com/x" in r.registration.fatal and "is invalid" in r.registration.fatal
    )
    assert not r.registration.registered.is_set()


def test_a_server_restart_abandons_the_call_in_flight_and_registers_again_at_once() -> None:
    hung = FakeAttempt(RegisterOutcome.OK, hold=True)
    r = Registrar([hung, FakeAttempt(RegisterOutcome.RETRY, "x"), FakeAttempt(RegisterOutcome.OK)])
    r.registration.step(0.0)
    r.registration.server_stopped()
    assert hung.closed
    r.registration.server_started()
    r.registration.step(0.0)  # a new attempt at once, not after a backoff
    assert len(r.made) == 2
    later = r.step(1.0)
    assert later == pytest.approx(1.0 + BACKOFF_FIRST)
    r.registration.request()  # kubelet.sock appeared: no need to wait out the backoff
    r.registration.step(1.0)
    r.step(1.0)
    assert r.registration.registered.is_set()
    r.registration.shutdown(Shutdown(1.0))
    assert not r.registration.registered.is_set()


# -- registration through the plugin watcher ---------------------------------------------


def call(methods: Sequence[Method[Any]], path: str, request: Any) -> Any:
    """Call a unary handler directly, as the server would after decoding."""
    method = {m.path: m for m in methods}[path]
    return method.handler(method.decode(request.SerializeToString()), None)


def test_the_plugin_watcher_learns_who_we_are_and_tells_us_the_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registration = WatcherRegistration(device_plugin_info("example.com/x"), "/registry/x.sock")
    methods = registration.methods()
    info = call(methods, paths.GET_INFO, reg.InfoRequest())
    assert (info.type, info.name, info.endpoint) == ("DevicePlugin", "example.com/x", "")
    assert list(info.supported_versions) == ["v1beta1"]
    call(methods, paths.NOTIFY_REGISTRATION_STATUS, reg.RegistrationStatus(plugin_registered=True))
    assert registration.registered.is_set()
    registration.peer_left()  # the kubelet dropped our stream: registered again only when it says so
    assert not registration.registered.is_set()
    call(
        methods,
        paths.NOTIFY_REGISTRATION_STATUS,
        reg.RegistrationStatus(plugin_registered=False, error="e" * 999),
    )
    assert not registration.registered.is_set()
    assert "refused the plugin" in caplog.text and "(999 characters)" in caplog.text
    assert registration.step(0.0) == INF and registration.fatal is None


def test_plugin_info_is_any_kind_of_plugin() -> None:
    info = reg.PluginInfo(type="DRAPlugin", name="gpu.example.com", endpoint="/p/dra.sock")
    registration = WatcherRegistration(info, "/registry/gpu-reg.sock")
    got = call(registration.methods(), paths.GET_INFO, reg.InfoRequest())
    assert (got.type, got.endpoint) == ("DRAPlugin", "/p/dra.sock")


# -- the device feed ----------------------------------------------------------------------


class Published:
    def __init__(self, refuse: Callable[[Any], bool] = lambda devices: False) -> None:
        self.lists: list[Any] = []
        self.refuse = refuse
        self.changed = threading.Condition()

    def __call__(self, devices: Any) -> None:
        if self.refuse(devices):
            raise DeviceListError("no good")
        with self.changed:
            self.lists.append(list(devices))
            self.changed.notify_all()


def test_simple_mode_scans_at_start_then_on_interval_and_request() -> None:
    count = iter(range(100))
    published = Published()
    woken = threading.Event()
    feed = DeviceFeed(
        SimpleImpl(lambda: [Device(f"d{next(count)}")], 30.0), published, "x", "x.sock", woken.set
    )
    feed.start()  # waits for the first list
    assert published.lists == [[Device("d0")]]
    start = published.lists
    assert feed.step(0.0) > 0.0  # nothing due before the interval
    feed.request_scan()
    assert woken.is_set()
    feed.step(1.0)
    wait_until(lambda: len(start) == 2, what="the requested scan")
    feed.shutdown(Shutdown(1.0))


def test_a_hanging_get_devices_is_reported_once_and_never_run_twice(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    calls = []

    def get_devices() -> list[str]:
        calls.append(1)
        release.wait(10)
        return ["a"]

    published = Published()
    feed = DeviceFeed(SimpleImpl(get_devices, 0.01), published, "example.com/x", "x.sock")
    now = 1e9
    feed.step(now)  # first scan starts, hangs
    assert feed.step(now + 1) == pytest.approx(now + 1 + 5.0)  # overdue: look again later
    feed.step(now + 2)
    assert len(calls) == 1
    assert caplog.text.count("get_devices has not returned") == 1
    release.set()
    wait_until(lambda: published.lists == [["a"]], what="the late list")
    feed.step(now + 3)  # the kept request runs now
    wait_until(lambda: len(calls) == 2, what="a new scan")
    feed.shutdown(Shutdown(1.0))


def test_flexible_mode_runs_list_and_watch_and_keeps_the_last_good_list(
    caplog: pytest.LogCaptureFixture,
) -> None:
    published = Published(refuse=lambda devices: devices == ["bad"])
    stopped = threading.Event()

    class Impl:
        def list_and_watch(self, watch: Watch) -> None:
            watch.send(["a"])
            watch.send(["bad"])
            watch.wait()
            stopped.set()

    feed = DeviceFeed(Impl(), published, "example.com/x", "x.sock")
    feed.start()
    wait_until(lambda: "list_and_watch sent a bad list" in caplog.text, what="the bad list logged")
    assert published.lists == [["a"]]  # handed on as sent; the device state checks it
    assert feed.step(0.0) == INF  # nothing to schedule: the impl sends by itself
    feed.stop(Shutdown(1.0))
    assert stopped.is_set()


def test_a_stop_cuts_the_wait_for_the_first_list_short() -> None:
    release = threading.Event()

    def get_devices() -> list[str]:
        release.wait(10)
        return ["a"]

    feed = DeviceFeed(SimpleImpl(get_devices, 30.0), Published(), "example.com/x", "x.sock")
    threading.Timer(0.05, feed.interrupt).start()
    started = time.monotonic()
    feed.start()  # would wait FIRST_LIST_WAIT (2 s) for the hung scan
    assert time.monotonic() - started < FIRST_LIST_WAIT
    shutdown = Shutdown(0.1)
    feed.shutdown(shutdown)
    assert shutdown.leftovers and "get_devices" in shutdown.leftovers[0]  # named, not waited for
    release.set()
    feed.resume()


def test_list_and_watch_that_raises_is_called_again(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    class Impl:
        def list_and_watch(self, watch: Watch) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("device driver not loaded")
            watch.send(["a"])
            watch.wait()

    published = Published()
    feed = DeviceFeed(Impl(), published, "example.com/x", "x.sock")
    feed.start()
    wait_until(lambda: published.lists, timeout=15, what="the second call's list")
    assert "list_and_watch raised" in caplog.text
    feed.shutdown(Shutdown(1.0))


# -- serving ----------------------------------------------------------------------------


class FakeServer:
    """Stands in for wire.Server: records what it serves and whether it runs."""

    made: list[FakeServer] = []

    def __init__(self, path: str, methods: Sequence[Method[Any]], **options: Any) -> None:
        self.path = path
        self.methods = list(methods)
        self.options = options
        self.started = False
        self.stopping = False
        self.stop_grace: Optional[float] = None
        self.owns = True
        FakeServer.made.append(self)

    def start(self, accept_thread: bool = True) -> None:
        self.started = not accept_thread

    def stop(self, grace: Optional[float] = None, shutdown: Optional[Shutdown] = None) -> None:
        self.stopping, self.stop_grace = True, shutdown.grace if shutdown else grace

    def owns_socket(self) -> bool:
        return self.owns and not self.stopping

    def fileno(self) -> int:
        return -1


def test_serving_waits_for_its_directory_and_makes_a_new_server_each_start(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = os.path.join(str(tmp_path), "later", "x.sock")
    cleared: list[str] = []
    serving = Serving(path, "example.com/x", {"max_workers": 4}, FakeServer, cleared.append)
    assert not serving.start([], 0.0) and not serving.start([], 0.0)
    assert caplog.text.count("waiting for") == 1  # said once, not on every try
    os.mkdir(os.path.dirname(path))
    assert serving.start([], 0.0) and serving.owns_socket() and not serving.stopping
    first = serving.server
    assert isinstance(first, FakeServer) and first.started and first.options == {"max_workers": 4}
    assert cleared == [path]
    with pytest.raises(RuntimeError, match="already served"):
        serving.start([], 0.0)
    serving.stop(Shutdown(1.0))
    assert first.stop_grace == 1.0 and serving.server is None and serving.stopping
    assert not serving.owns_socket()
    assert serving.start([], 0.0) and serving.server is not first


def test_serving_refuses_a_path_that_is_not_a_socket(tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), "x.sock")
    with open(path, "w"):
        pass
    with pytest.raises(PluginError, match="not a socket"):
        Serving(path, "example.com/x", make_server=FakeServer).start([], 0.0)
    os.symlink(path, path + ".link")
    with pytest.raises(PluginError, match="symlink"):
        Serving(path + ".link", "example.com/x", make_server=FakeServer).start([], 0.0)
    assert os.path.exists(path)


def test_serving_refuses_a_directory_that_is_a_file_with_the_fix(tmp_path: Any) -> None:
    afile = os.path.join(str(tmp_path), "hostname")
    with open(afile, "w"):
        pass
    serving = Serving(
        os.path.join(afile, "x.sock"), "example.com/x", make_server=FakeServer, directory_hint="set X"
    )
    with pytest.raises(PluginError, match="hostname is a file, not a directory: set X"):
        serving.start([], 0.0)


def test_serving_retries_when_the_os_refuses(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    def refuse(path: str, methods: Any, **options: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    serving = Serving(os.path.join(str(tmp_path), "x.sock"), "example.com/x", make_server=refuse)
    assert not serving.start([], 100.0)
    assert "cannot serve on" in caplog.text and serving.server is None
    assert "retrying in 0.5s" in caplog.text and "run it as root" in caplog.text
    assert serving.retry_at == 100.5
    assert not serving.start([], 100.5)
    assert serving.retry_at == 101.5  # doubled


# -- the controller, composing stand-ins -----------------------------------------------


class FakeService:
    name = "example.com/x"

    def __init__(self) -> None:
        self.events: list[str] = []
        self.streams = 0
        self.stream_ended: Optional[Callable[[Any], None]] = None
        self.next_step = INF

    def methods(self, stream_ended: Callable[[Any], None]) -> list[Method[Any]]:
        self.stream_ended = stream_ended
        return [Method("/svc.S/M", lambda request, context: None, bytes)]

    def started(self) -> None:
        self.events.append("started")

    def stopping(self) -> None:
        self.events.append("stopping")

    def stopped(self, shutdown: Shutdown) -> None:
        self.events.append("stopped")

    def step(self, now: float) -> float:
        return self.next_step

    def status(self) -> dict[str, Any]:
        return {"resource": self.name, "streams": self.streams}

    def interrupt(self) -> None:
        self.events.append("interrupt")

    def resume(self) -> None:
        pass

    def shutdown(self, shutdown: Shutdown) -> None:
        self.events.append("shutdown")


class FakeRegistration:
    def __init__(self, extra: Sequence[Method[Any]] = ()) -> None:
        self.registered = threading.Event()
        self.fatal: Optional[str] = None
        self.registered_through: Optional[tuple[int, int, int]] = None
        self.events: list[str] = []
        self.extra = list(extra)

    def methods(self) -> list[Method[Any]]:
        return self.extra

    def server_started(self) -> None:
        self.events.append("server_started")

    def server_stopped(self) -> None:
        self.events.append("server_stopped")
        self.registered.clear()

    def step(self, now: float) -> float:
        return INF

    def request(self) -> None:
        self.events.append("request")

    def peer_left(self) -> None:
        self.events.append("peer_left")

    def shutdown(self, shutdown: Shutdown) -> None:
        self.events.append("shutdown")


class Cancelled:
    def cancelled(self) -> bool:
        return True


def make_controller(
    tmp_path: Any, sockets: int = 1, kubelet: bool = True
) -> tuple[Controller, FakeService, FakeRegistration, Files]:
    FakeServer.made = []
    files = Files()
    files.ids[os.path.join(str(tmp_path), "kubelet.sock")] = (1, 1, 1)
    servings = [
        Serving(
            os.path.join(str(tmp_path), f"s{i}.sock"),
            "example.com/x",
            make_server=FakeServer,
            clear=lambda p: None,
        )
        for i in range(sockets)
    ]
    watch_methods = [Method("/pluginregistration.Registration/GetInfo", lambda r, c: None, bytes)]
    registration = FakeRegistration(watch_methods)
    kubelet_sock = os.path.join(str(tmp_path), "kubelet.sock") if kubelet else None
    restarts = RestartWatch(kubelet_sock, identify=files.identify)
    service = FakeService()
    controller = Controller(service, servings, registration, restarts, Waker())
    return controller, service, registration, files


def test_the_controller_serves_first_then_registers_and_restarts_in_order(tmp_path: Any) -> None:
    controller, service, registration, _ = make_controller(tmp_path)
    woken = threading.Event()
    controller.attach(woken.set)
    with pytest.raises(RuntimeError, match="already running"):
        controller.attach(woken.set)
    controller.step(0.0)
    (server,) = FakeServer.made
    assert [m.path for m in server.methods] == ["/svc.S/M", "/pluginregistration.Registration/GetInfo"]
    assert service.events == ["started"] and registration.events == ["server_started"]
    controller.request_restart("SIGHUP")
    assert woken.is_set()
    controller.step(1.0)
    assert service.events == ["started", "stopping", "stopped", "started"]
    assert server.stop_grace == 1.0 and len(FakeServer.made) == 2
    FakeServer.made[-1].owns = False  # the kubelet wiped our socket
    controller.step(2.0)
    assert len(FakeServer.made) == 3
    controller.shutdown(Shutdown(1.0))
    assert service.events[-3:] == ["stopping", "stopped", "shutdown"]
    assert registration.events[-1] == "shutdown" and not controller.running
    controller.attach(woken.set)  # a plugin can run again after it stopped
    controller.shutdown(Shutdown(1.0))


def test_the_controller_starts_sockets_in_order_and_puts_registration_on_the_last(tmp_path: Any) -> None:
    controller, _, _, _ = make_controller(tmp_path, sockets=2, kubelet=False)
    controller.attach(lambda: None)
    controller.step(0.0)
    service_server, registration_server = FakeServer.made
    assert service_server.path.endswith("s0.sock") and registration_server.path.endswith("s1.sock")
    assert [m.path for m in service_server.methods] == ["/svc.S/M"]
    assert [m.path for m in registration_server.methods] == ["/pluginregistration.Registration/GetInfo"]
    assert controller.status()["socket"].endswith("s1.sock")
    registration_server.owns = False  # either socket lost: both start over
    controller.step(1.0)
    assert len(FakeServer.made) == 4
    controller.shutdown(Shutdown(1.0))


def test_a_stream_the_kubelet_drops_leads_to_one_restart_after_the_grace(tmp_path: Any) -> None:
    controller, service, registration, _ = make_controller(tmp_path)
    controller.attach(lambda: None)
    controller.step(0.0)
    registration.registered.set()
    registration.registered_through = (1, 1, 1)
    assert service.stream_ended is not None
    service.streams = 1
    service.stream_ended(Cancelled())  # another stream (sdplite inspect) still open: nothing
    assert not controller.restarts.stream_loss_pending
    service.streams = 0
    service.stream_ended(Cancelled())
    assert registration.events[-1] == "peer_left" and controller.restarts.stream_loss_pending
    assert len(FakeServer.made) == 1
    first_servers_streams = service.stream_ended
    controller.step(1e9)  # long after the grace (stream_lost took time.monotonic())
    assert len(FakeServer.made) == 2 and not controller.restarts.stream_loss_pending
    registration.registered.set()
    first_servers_streams(Cancelled())  # a stream of the previous server no longer counts
    assert not controller.restarts.stream_loss_pending
    controller.step(1e9 + 1)
    assert len(FakeServer.made) == 2
    controller.shutdown(Shutdown(1.0))


def test_a_new_kubelet_sock_makes_the_controller_register_now(tmp_path: Any) -> None:
    controller, _, registration, _ = make_controller(tmp_path)
    assert controller.directories() == {str(tmp_path)}
    controller.dir_changed(str(tmp_path), ["other.sock"])
    controller.dir_changed(str(tmp_path), ["kubelet.sock"])
    assert registration.events == ["request"]


def test_an_interrupted_controller_takes_no_more_steps(tmp_path: Any) -> None:
    controller, service, _, _ = make_controller(tmp_path)
    controller.attach(lambda: None)
    controller.step(0.0)
    controller.interrupt()
    assert "interrupt" in service.events
    assert controller.step(1.0) == INF and len(FakeServer.made) == 1
    controller.shutdown(Shutdown(1.0))
    controller.attach(lambda: None)  # a new run steps again
    controller.step(2.0)
    assert len(FakeServer.made) == 2
    controller.shutdown(Shutdown(1.0))


def test_a_fatal_registration_stops_the_controller(tmp_path: Any) -> None:
    controller, _, registration, _ = make_controller(tmp_path)
    controller.attach(lambda: None)
    controller.step(0.0)
    registration.fatal = "the kubelet refused to register example.com/x: no"
    assert controller.step(1.0) == INF
    assert controller.fatal == registration.fatal and controller.status()["error"] == controller.fatal
    controller.shutdown(Shutdown(1.0))


# -- the status file --------------------------------------------------------------------


def test_the_status_file_is_written_from_plain_snapshots(tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), "run", "status.json")
    status = StatusFile(path)
    device_plugin = {"resource": "example.com/x", "registered": True, "streams": 1, "error": None}
    no_streams = {"resource": "gpu.example.com", "registered": True, "error": None}  # e.g. DRA
    status.update([device_plugin, no_streams])
    with open(path) as handle:
        assert json.load(handle)["plugins"] == [device_plugin, no_streams]
    assert check_status(path) == (True, "2 plugin(s) registered and watched")
    status.update([{**device_plugin, "streams": 0}, no_streams])
    healthy, why = check_status(path)
    assert not healthy and "example.com/x: registered but the kubelet holds no ListAndWatch stream" == why
    status.remove()
    assert not os.path.exists(path)


# -- a second kind of plugin, built from the same parts ------------------------------------


class EchoService:
    """A made-up kind of plugin: one unary RPC, no streams (as a DRA plugin has none to the kubelet)."""

    name = "echo.example.com"
    streams = 0

    def __init__(self) -> None:
        self.starts = 0

    def methods(self, stream_ended: Callable[[Any], None]) -> list[Method[Any]]:
        return [
            unary(
                "/echo.Echo/Say", lambda request, context: reg.RegistrationStatusResponse(), reg.InfoRequest
            )
        ]

    def started(self) -> None:
        self.starts += 1

    def stopping(self) -> None:
        pass

    def stopped(self, shutdown: Shutdown) -> None:
        pass

    def step(self, now: float) -> float:
        return INF

    def status(self) -> dict[str, Any]:
        return {"resource": self.name}

    def interrupt(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def shutdown(self, shutdown: Shutdown) -> None:
        pass


class EchoPlugin:
    """Serves its service socket, then a registration socket the plugin watcher finds."""

    def __init__(self, directory: str) -> None:
        self.service_socket = os.path.join(directory, "echo.sock")
        self.registration_socket = os.path.join(directory, "echo-reg.sock")
        info = reg.PluginInfo(
            type="DRAPlugin", name=EchoService.name, endpoint=self.service_socket, supported_versions=["v1"]
        )
        self.service = EchoService()
        self.controller = Controller(
            self.service,
            [
                Serving(self.service_socket, EchoService.name),
                Serving(self.registration_socket, EchoService.name),
            ],
            WatcherRegistration(info, self.registration_socket),
            RestartWatch(),
        )


def test_a_second_kind_of_plugin_reuses_serving_registration_restarts_and_the_status_file(
    sock_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    status = os.path.join(sock_dir, "status.json")
    monkeypatch.setenv("SDPLITE_STATUS_FILE", status)
    plugin = EchoPlugin(sock_dir)
    runner = BackgroundRunner([plugin])
    try:
        wait_until(lambda: os.path.exists(plugin.registration_socket), what="the registration socket")
        with Channel(plugin.registration_socket) as channel:
            info = channel.unary(paths.GET_INFO, reg.InfoRequest(), reg.PluginInfo, timeout=5)
            assert (info.type, info.endpoint) == ("DRAPlugin", plugin.service_socket)
            notify = reg.RegistrationStatus(plugin_registered=True)
            channel.unary(paths.NOTIFY_REGISTRATION_STATUS, notify, reg.RegistrationStatusResponse, timeout=5)
        assert plugin.controller.registered.is_set()
        with Channel(plugin.service_socket) as channel:
            channel.unary("/echo.Echo/Say", reg.InfoRequest(), reg.RegistrationStatusResponse, timeout=5)
        wait_until(lambda: check_status(status)[0], what="a healthy status without streams")
        os.unlink(plugin.registration_socket)  # deregistered: start over, service socket first
        wait_until(lambda: plugin.service.starts == 2, what="a restart")
        wait_until(lambda: os.path.exists(plugin.registration_socket), what="a new registration socket")
        assert not plugin.controller.registered.is_set()  # until the watcher says so again
    finally:
        runner.stop()
    assert runner.error is None
    assert not os.path.exists(plugin.service_socket) and not os.path.exists(plugin.registration_socket)
    assert not os.path.exists(status)
