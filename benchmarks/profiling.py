"""Where sdplite spends its time: importing, serving one Allocate, pushing one ListAndWatch update.

    python benchmarks/profiling.py [--calls 3000] [--out benchmarks/results]

Four views, each written to ``<out>/profile-*.txt``:

1. ``python -X importtime -c 'import sdplite'``, summed per top-level package.
2. The server side of a unary Allocate, driven synchronously in this
   process: the real ServerProtocol and DevicePlugin methods, a plain h2
   client, bytes handed across in memory (no socket, no thread), each call
   run by ``run_call`` on a ``MemoryLink`` once its request is read, as the
   reader runs it. The time per call is the CPU the server path costs
   without the two system calls of the socket, and variants give the gain
   of some changes.
3. A ListAndWatch push: ``DeviceState.set_health`` for 64, 10k and 70k
   devices (the part before the bytes reach the stream).
4. The real plugin process: each thread's CPU per operation from /proc
   (all three stacks), then ``plugins/sdplite_plugin.py --profile`` with
   every thread under cProfile on CPU time, start-up subtracted.
It uses the wire's seam for this (``ServerProtocol``, ``run_call``,
``MemoryLink``) and ``DeviceState``; if those change, this script needs
adjusting, the benchmark does not.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

import h2.config
import h2.connection
import h2.events
import hpack.hpack
import measure
import scenarios
from session import PLUGINS_DIR, Session, child_env

from sdplite.api import deviceplugin_pb2 as pb
from sdplite.devices import Device
from sdplite.service import DeviceState, device_plugin_methods
from sdplite.wire.framing import encode_message
from sdplite.wire.handlers import ServerContext
from sdplite.wire.server_connection import MemoryLink, run_call
from sdplite.wire.server_protocol import ServerCall, ServerProtocol

ALLOCATE = "/v1beta1.DevicePlugin/Allocate"
#: What a grpcio client sends with each call (grpc-go's kubelet sends much the same).
REQUEST_HEADERS = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", ALLOCATE.encode()),
    (b":authority", b"localhost"),
    (b"te", b"trailers"),
    (b"content-type", b"application/grpc"),
    (b"user-agent", b"grpc-python/1.85.3 grpc-c/51.0.0 (linux; chttp2)"),
    (b"grpc-accept-encoding", b"identity, deflate, gzip"),
]


def _bench_impl() -> Any:
    """The benchmark plugin's own implementation class (plugins/sdplite_plugin.py)."""
    if PLUGINS_DIR not in sys.path:
        sys.path.insert(0, PLUGINS_DIR)
    return importlib.import_module("sdplite_plugin").BenchDevices


Rows = dict[tuple[str, int, str], tuple[float, float, float]]


def _rows(stats: pstats.Stats) -> Rows:
    """function -> (calls, self seconds, cumulative seconds)."""
    return {key: (nc, tt, ct) for key, (_cc, nc, tt, ct, _) in stats.stats.items()}  # type: ignore[attr-defined]


def _minus(full: Rows, base: Rows) -> Rows:
    """What ``full`` spent beyond ``base``: the operations, without start-up and stop."""
    zero = (0.0, 0.0, 0.0)
    return {key: tuple(a - b for a, b in zip(value, base.get(key, zero))) for key, value in full.items()}  # type: ignore[misc]


def _top(rows: Rows | pstats.Stats, per: int, sort: str, limit: int = 25) -> str:
    """The heaviest functions, with time per operation (µs) rather than totals."""
    if isinstance(rows, pstats.Stats):
        rows = _rows(rows)
    table = []
    for (path, line, name), (nc, tt, ct) in rows.items():
        where = f"{os.path.basename(path)}:{line}({name})" if line else name
        table.append((tt if sort == "tottime" else ct, nc / per, tt / per * 1e6, ct / per * 1e6, where))
    table.sort(reverse=True)
    lines = [f"{'calls/op':>9} {'self us/op':>10} {'cum us/op':>10}  function (sorted by {sort})"]
    for _, calls, self_us, cum_us, where in table[:limit]:
        lines.append(f"{calls:9.1f} {self_us:10.1f} {cum_us:10.1f}  {where}")
    return "\n".join(lines)


# -- 1. import time -------------------------------------------------------------------


def import_profile() -> str:
    command = [sys.executable, "-X", "importtime", "-c", "import sdplite"]
    subprocess.run(command, capture_output=True, check=True, cwd=os.sep, env=child_env())  # warm the cache
    err = subprocess.run(
        command, capture_output=True, text=True, check=True, cwd=os.sep, env=child_env()
    ).stderr
    by_package: dict[str, int] = {}
    total = 0
    rows = []
    for line in err.splitlines():
        if not line.startswith("import time:") or "|" not in line or "self" in line:
            continue
        _, self_text, cumulative_text, name = (
            part.strip() for part in line.replace("import time:", "|").split("|")
        )
        self_us, cumulative = int(self_text), int(cumulative_text)
        top = name.split(".")[0]
        by_package[top] = by_package.get(top, 0) + self_us
        rows.append((cumulative, self_us, name))
        if name == "sdplite":
            total = cumulative
    lines = [f"import sdplite: {total / 1000:.1f} ms cumulative (one run; see run.py for medians)", ""]
    lines.append("self time by top-level package, ms:")
    for name, us in sorted(by_package.items(), key=lambda kv: -kv[1])[:15]:
        lines.append(f"  {us / 1000:7.1f}  {name}")
    lines.append("")
    lines.append("heaviest modules by cumulative time, ms (self in brackets):")
    for cumulative, self_us, name in sorted(rows, reverse=True)[:25]:
        lines.append(f"  {cumulative / 1000:7.1f} ({self_us / 1000:5.1f})  {name}")
    return "\n".join(lines)


# -- 2. the server side of Allocate ---------------------------------------------------


class SyncServer:
    """One sdplite server connection's call handling, driven call by call from this thread."""

    def __init__(self, impl: Any, devices: list[Device]) -> None:
        state = DeviceState("bench.example.com/dev")
        state.publish(devices)
        methods = device_plugin_methods(impl, state, lambda ctx: None)
        self.protocol = ServerProtocol({m.path: m for m in methods})
        self.link = MemoryLink(self.protocol)
        self.protocol.start()
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.client.initiate_connection()
        self.to_server = self.client.data_to_send()
        self.server_seconds = 0.0
        self.server_step(None)
        self.client_step()

    def server_step(self, profiler: cProfile.Profile | None) -> None:
        raw, self.to_server = self.to_server, b""
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        for call in self.protocol.receive(raw):
            run_call(self.link, call)
        self.to_client = self.protocol.data_to_send()
        if profiler:
            profiler.disable()
        self.server_seconds += time.perf_counter() - started

    def client_step(self) -> bytes:
        body = b""
        for event in self.client.receive_data(self.to_client):
            if isinstance(event, h2.events.DataReceived):
                body += event.data
                self.client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.to_server += self.client.data_to_send()
        return body

    def call(self, payload: bytes, profiler: cProfile.Profile | None = None) -> bytes:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, REQUEST_HEADERS)
        self.client.send_data(sid, encode_message(payload), end_stream=True)
        self.to_server += self.client.data_to_send()
        self.server_step(profiler)
        return self.client_step()

    def close(self) -> None:
        self.protocol.lose("benchmark done")


class ProtoDevices:
    """The benchmark impl, answering with a ContainerAllocateResponse instead of an Allocation."""

    def __init__(self, ids: list[str]) -> None:
        self.healthy = dict.fromkeys(ids, True)

    def list_and_watch(self, watch: Any) -> None:
        watch.wait()

    def allocate(self, device_ids: list[str]) -> Any:
        paths = ["/dev/bench/" + i for i in device_ids]
        return pb.ContainerAllocateResponse(
            envs={"BENCH_DEVICES": ",".join(device_ids)},
            devices=[pb.DeviceSpec(container_path=p, host_path=p, permissions="rw") for p in paths],
        )


def _server_us_once(make: Callable[[], SyncServer], payload: bytes, calls: int) -> float:
    """One run: the server's µs per call over ``calls`` calls after a warm-up."""
    server = make()
    try:
        for _ in range(200):
            server.call(payload)
        server.server_seconds = 0.0
        for _ in range(calls):
            server.call(payload)
        return server.server_seconds / calls * 1e6
    finally:
        server.close()


def _quiet_hpack() -> Callable[[], None]:
    """Replace hpack's logger.debug with a no-op; returns the undo."""
    debug = hpack.hpack.log.debug
    hpack.hpack.log.debug = lambda *args, **kwargs: None  # type: ignore[method-assign]

    def undo() -> None:
        hpack.hpack.log.debug = debug  # type: ignore[method-assign]

    return undo


def allocate_profile(calls: int, repeats: int = 7) -> str:
    """Server CPU per Allocate for each variant; variants interleaved so drift hits all alike."""
    ids = [f"dev-{i:036d}" for i in range(64)]
    devices = [Device(i, numa_nodes=[0]) for i in ids]
    bench_impl = _bench_impl()
    variants: list[tuple[str, Callable[[], SyncServer], bool]] = [
        ("as shipped", lambda: SyncServer(bench_impl(ids), devices), False),
        ("hook returns a ContainerAllocateResponse", lambda: SyncServer(ProtoDevices(ids), devices), False),
        ("hpack's per-header log.debug calls removed", lambda: SyncServer(bench_impl(ids), devices), True),
    ]
    lines = []
    for shape, (containers, per) in scenarios.SHAPES.items():
        payload = scenarios.allocate_request(ids, containers, per)
        runs: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        for _ in range(repeats):
            for name, make, quiet in variants:
                undo = _quiet_hpack() if quiet else None
                try:
                    runs[name].append(_server_us_once(make, payload, calls))
                finally:
                    if undo:
                        undo()
        base = statistics.median(runs["as shipped"])
        lines.append(
            f"Allocate {shape}: server CPU per call, one thread, no hand-offs "
            f"(median of {repeats} interleaved runs of {calls}):"
        )
        for name, _, _ in variants:
            value = statistics.median(runs[name])
            delta = "" if name == "as shipped" else f" ({value - base:+.1f})"
            lines.append(f"  {name + ':':48} {value:7.1f} us{delta}")
        lines.append("")
    started = time.perf_counter()
    for n in range(10_000):
        ServerCall(n, None, 4 << 20)
        ServerContext(ALLOCATE, [], None)
    per_call = (time.perf_counter() - started) / 10_000 * 1e6
    lines += [
        f"Per-call objects (ServerCall + decoder, ServerContext + Event + Lock): {per_call:.1f} us",
        "",
    ]
    payload = scenarios.allocate_request(ids, 1, 1)
    server = SyncServer(bench_impl(ids), devices)
    for _ in range(200):
        server.call(payload)
    profiler = cProfile.Profile()
    for _ in range(calls):
        server.call(payload, profiler)
    server.close()
    stats = pstats.Stats(profiler)
    lines += [
        f"cProfile of the server side of {calls} Allocate 1x1 calls (times inflated by the profiler):",
        _top(stats, calls, "tottime"),
        "",
        _top(stats, calls, "cumtime", 30),
    ]
    return "\n".join(lines)


def handoff_us(rounds: int = 2000) -> float:
    """Median one-way wake-up time from one thread to another through a SimpleQueue (µs)."""
    import queue

    there: queue.SimpleQueue[float] = queue.SimpleQueue()
    back: queue.SimpleQueue[float] = queue.SimpleQueue()

    def echo() -> None:
        while True:
            item = there.get()
            if item < 0:
                return
            back.put(time.perf_counter() - item)

    thread = threading.Thread(target=echo)
    thread.start()
    samples = []
    for _ in range(rounds):
        there.put(time.perf_counter())
        samples.append(back.get())
    there.put(-1.0)
    thread.join()
    return statistics.median(samples) * 1e6


# -- 3. a ListAndWatch push -----------------------------------------------------------


def law_profile(changes: int) -> str:
    lines = [
        "DeviceState.set_health (re-encode one device, join the entries, queue to streams), per change;",
        "the first change after a publish also cuts the encoded list into entries:",
    ]
    profiled: pstats.Stats | None = None
    for size in (64, 10_000, 70_000):
        state = DeviceState("bench.example.com/dev")
        ids = [f"dev-{i:036d}" for i in range(size)]
        state.publish([Device(i, numa_nodes=[0]) for i in ids])
        count = changes if size == 64 else 5
        profiler = cProfile.Profile() if size == 64 else None
        started = time.perf_counter()
        for n in range(count):
            if profiler:
                profiler.enable()
            state.set_health(ids[n % 8], n % 16 >= 8)
            if profiler:
                profiler.disable()
        elapsed = (time.perf_counter() - started) / count
        lines.append(f"  {size:6d} devices: {elapsed * 1e3:8.2f} ms")
        if profiler:
            profiled = pstats.Stats(profiler)
    grpcio_like = []
    for size in (64, 10_000, 70_000):
        devices = [
            pb.Device(
                ID=f"dev-{i:036d}", health="Healthy", topology=pb.TopologyInfo(nodes=[pb.NUMANode(ID=0)])
            )
            for i in range(size)
        ]
        started = time.perf_counter()
        for n in range(5):
            devices[n].health = "Unhealthy"
            pb.ListAndWatchResponse(devices=devices).SerializeToString()
        grpcio_like.append(f"  {size:6d} devices: {(time.perf_counter() - started) / 5 * 1e3:8.2f} ms")
    lines += ["", "For comparison, what the grpcio plugin does per change (mutate, build, serialise):"]
    lines += grpcio_like
    lines += ["", "Building the list a plugin hands to publish(), 70k devices:"]
    started = time.perf_counter()
    big = [Device(f"dev-{i:036d}", numa_nodes=[0]) for i in range(70_000)]
    lines.append(f"  Device(...) x70k: {(time.perf_counter() - started) * 1e3:.0f} ms")
    size = sys.getsizeof(big[0]) + sys.getsizeof(big[0].__dict__) + 2 * sys.getsizeof({})
    lines.append(
        f"  one Device: about {size} bytes of objects (instance, __dict__, two empty dicts) + its ID"
    )
    if profiled is not None:
        lines += [
            "",
            f"cProfile of {changes} set_health calls on 64 devices:",
            _top(profiled, changes, "tottime", 20),
        ]
    return "\n".join(lines)


# -- 4. the real plugin process -------------------------------------------------------


def _exercise(session: Session, what: str, count: int) -> None:
    assert session.first is not None and session.first.ids is not None
    if what == "allocate":
        request = scenarios.allocate_request(session.first.ids, 1, 1)
        for _ in range(count):
            session.endpoint.unary(scenarios.ALLOCATE)(request)  # type: ignore[union-attr]
    else:
        scenarios.list_updates(session, count)


def _profiled_rows(what: str, count: int) -> Rows:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "plugin.prof")
        session = Session("sdplite", extra=["--profile", path])
        try:
            session.wait_ready()
            _exercise(session, what, count)
        finally:
            session.close()
        return _rows(pstats.Stats(path, stream=io.StringIO()))


def thread_split(impl: str, what: str, count: int) -> str:
    """CPU per operation of each thread of a plugin, from /proc, without a profiler."""
    with Session(impl) as session:
        session.wait_ready()
        pid = session.plugin.pid
        _exercise(session, what, 100)  # warm-up; lets the pools grow
        names = {tid: name for name, tid in session.plugin.threads().items()}
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        before = {tid: measure.thread_cpu_seconds(pid, tid) for tid in tids}
        total_before = measure.cpu_seconds(pid)
        _exercise(session, what, count)
        total = (measure.cpu_seconds(pid) - total_before) / count * 1e6
        spent: dict[str, float] = {}
        for tid in tids:
            try:
                used = measure.thread_cpu_seconds(pid, tid) - before[tid]
            except OSError:
                continue  # the thread has gone
            name = names.get(tid, "(not a Python thread)")
            name = name.split("-worker-")[0] + "-worker-*" if "-worker-" in name else name
            spent[name] = spent.get(name, 0.0) + used / count * 1e6
    lines = [f"  {impl}: {total:.0f} us per op in all"]
    for name, us in sorted(spent.items(), key=lambda kv: -kv[1]):
        if us >= 1:
            lines.append(f"    {us:6.0f} us  {name}")
    return "\n".join(lines)


def process_profile(calls: int, changes: int) -> str:
    out = []
    for what, count in (("allocate", calls), ("law", changes)):
        label = f"Allocate 1x1 x{count}" if what == "allocate" else f"ListAndWatch update x{count}"
        out.append(f"CPU per op by thread, {label} (from /proc/<pid>/task/*/schedstat, no profiler):")
        out += [thread_split(impl, what, count) for impl in ("sdplite", "grpcio", "grpclib")]
        rows = _minus(_profiled_rows(what, count), _profiled_rows(what, 0))
        out += [
            "",
            f"sdplite plugin process, every thread under cProfile on CPU time, {label}, start-up subtracted"
            " (thread_time is a system call per event, so many small calls look heavier than they are):",
            _top(rows, count, "tottime", 30),
            "",
        ]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--only", help="one section: import, allocate, law or process")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    sections = {
        "import": import_profile,
        "allocate": lambda: (
            allocate_profile(args.calls)
            + f"\n\nThread hand-off (SimpleQueue put -> other thread running), median: {handoff_us():.1f} us"
        ),
        "law": lambda: law_profile(args.changes),
        "process": lambda: process_profile(args.calls, args.changes),
    }
    if args.only:
        sections = {args.only: sections[args.only]}
    for name, produce in sections.items():
        print(f"== {name}", file=sys.stderr, flush=True)
        text = produce()
        with open(os.path.join(args.out, f"profile-{name}.txt"), "w") as f:
            f.write(text + "\n")
        print(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
