"""The measurements, one function per figure; each takes a running plugin (or starts one) and returns numbers.

Times are in the units the report shows (ms or µs); nothing here prints.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import measure
from session import PluginError, Session

from sdplite.api import deviceplugin_pb2 as pb

ALLOCATE = "/v1beta1.DevicePlugin/Allocate"
#: The request shapes: one container with one ID, and 8 containers with 8 IDs each.
SHAPES = {"1x1": (1, 1), "8x8": (8, 8)}
#: Devices the ListAndWatch-update figure toggles, in turn.
TOGGLED = 8


def allocate_request(ids: list[str], containers: int, per_container: int) -> bytes:
    """An AllocateRequest like the kubelet's, serialised once for all calls."""
    request = pb.AllocateRequest(
        container_requests=[
            pb.ContainerAllocateRequest(devices_ids=ids[c * per_container : (c + 1) * per_container])
            for c in range(containers)
        ]
    )
    return request.SerializeToString()


def check_allocation(raw: bytes, containers: int, per_container: int) -> None:
    response = pb.AllocateResponse.FromString(raw)
    shape = [len(c.devices) for c in response.container_responses]
    if shape != [per_container] * containers:
        raise AssertionError(f"unexpected Allocate response shape {shape}")


def start_to_register(impl: str, poll: float) -> float:
    """Milliseconds from creating the plugin process to its Register reaching the kubelet."""
    with Session(impl, poll=poll) as session:
        session.wait_ready()
        assert session.registration is not None
        return (session.registration.arrived - session.plugin.started) * 1e3


def idle(session: Session, since_cpu: dict[int, float], since: float) -> dict[str, float]:
    """Memory, threads and CPU of a registered, idle plugin (the control thread not counted).

    ``since_cpu`` is :func:`measure.thread_times` when the plugin became idle;
    the clock-tick figure would be too coarse over a few seconds of idling.
    """
    pid = session.plugin.pid
    return {
        "idle_rss_mib": measure.rss_mib(pid),
        "idle_uss_mib": measure.uss_mib(pid),
        "idle_threads": measure.threads(pid) - 1,
        "idle_cpu_ms_per_s": measure.cpu_since(pid, since_cpu) * 1e3 / (time.monotonic() - since),
    }


def allocate_sequential(
    session: Session, request: bytes, calls: int, warmup: int
) -> tuple[float, list[float], bytes]:
    """``calls`` calls in a row: the plugin's CPU seconds for them, each call's latency (s), a response."""
    assert session.endpoint is not None
    stub = session.endpoint.unary(ALLOCATE)
    response = stub(request)
    for _ in range(warmup):
        stub(request)
    latencies = []
    pid = session.plugin.pid
    clock = time.perf_counter
    cpu_before = measure.cpu_seconds(pid)
    for _ in range(calls):
        started = clock()
        stub(request)
        latencies.append(clock() - started)
    return measure.cpu_seconds(pid) - cpu_before, latencies, response


def allocate_throughput(
    session: Session, request: bytes, calls: int, threads: int = 4
) -> tuple[float, float, int]:
    """``calls`` calls from ``threads`` client threads sharing the kubelet's one connection.

    Returns the wall-clock seconds, the plugin's CPU seconds and the calls made.
    """
    assert session.endpoint is not None
    stub = session.endpoint.unary(ALLOCATE)
    per_thread = calls // threads
    gate = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def client() -> None:
        gate.wait()
        try:
            for _ in range(per_thread):
                stub(request)
        except BaseException as exc:  # reported below, in the harness's thread
            errors.append(exc)

    workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    pid = session.plugin.pid
    cpu_before = measure.cpu_seconds(pid)
    gate.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    cpu = measure.cpu_seconds(pid) - cpu_before
    if errors:
        raise PluginError(session.plugin.failure(f"Allocate failed under load: {errors[0]!r}"))
    return elapsed, cpu, per_thread * threads


def list_updates(session: Session, changes: int) -> list[float]:
    """Milliseconds from the plugin publishing a health change to the kubelet holding the new list."""
    endpoint = session.endpoint
    assert endpoint is not None
    latencies = []
    state = [True] * TOGGLED
    for i in range(changes):
        index = i % TOGGLED
        state[index] = not state[index]
        before = len(endpoint.messages)
        published = session.plugin.set_health(index, state[index])
        message = session.kubelet.wait_message(endpoint, before + 1, timeout=10)
        if message.healthy is None or message.healthy[index] != state[index]:
            raise PluginError(session.plugin.failure(f"list after change {i} does not show it"))
        latencies.append((message.arrived - published) * 1e3)
    for index, healthy in enumerate(state):  # leave every device healthy again (untimed)
        if not healthy:
            before = len(endpoint.messages)
            session.plugin.set_health(index, True)
            session.kubelet.wait_message(endpoint, before + 1, timeout=10)
    return latencies


def reregistration(session: Session, restarts: int) -> list[float]:
    """Seconds from a kubelet restart wiping the sockets to the plugin's next Register arriving."""
    kubelet = session.kubelet
    delays = []
    for _ in range(restarts):
        time.sleep(0.3)  # settle: nothing from the last round may still be in flight
        registrations = len(kubelet.registrations)
        endpoints = len(kubelet.endpoints)
        wiped = kubelet.restart()
        try:
            registration = kubelet.wait_registration(registrations + 1, timeout=30)
            endpoint = kubelet.wait_endpoint(endpoints + 1, timeout=30)
            kubelet.wait_message(endpoint, 1, timeout=30)
        except TimeoutError as exc:
            raise PluginError(session.plugin.failure(f"after a kubelet restart: {exc}")) from None
        delays.append(registration.arrived - wiped)
        session.endpoint = endpoint
    return delays


def big_list(impl: str, devices: int, poll: float, extra: Sequence[str] = ()) -> dict[str, Any]:
    """The first ListAndWatch message of a large list: how long, how big, and the plugin's peak memory."""
    with Session(impl, devices=devices, poll=poll, extra=extra) as session:
        first = session.wait_ready(timeout=180)
        assert session.endpoint is not None
        return {
            "call_ms": (first.arrived - session.endpoint.stream_opened) * 1e3,
            "start_ms": (first.arrived - session.plugin.started) * 1e3,
            "bytes": float(first.size),
            "peak_mib": measure.peak_rss_mib(session.plugin.pid),
        }
