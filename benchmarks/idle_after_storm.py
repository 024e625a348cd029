"""Does the sdplite plugin go back to idle after a storm of hostile connections? (issue 12)

    .venv/bin/python benchmarks/idle_after_storm.py [--cases N] [--idle S]

The benchmark's sdplite plugin (64 devices, a process of its own, registered
with the grpcio kubelet stand-in, which holds its ListAndWatch open) settles
for ``--idle`` seconds (default 12: longer than the 10 s worker idle
timeout); then its idle CPU, threads and wake-ups are measured over the same
time. Then ``--cases`` hostile connections (random bytes, random frames,
broken HPACK, a call sent together with GOAWAY, abandoned requests, PING
floods, connection storms over max_connections), one valid Allocate every
10; it settles again and is measured again. Prints one table.

*Wake-ups* are each thread's context switches per second (a thread that
sleeps until something wakes it switches once per wake-up); the figure is
the busiest thread's.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import struct
import sys
import time

import measure
from session import Session

from sdplite.api import deviceplugin_pb2 as pb
from sdplite.wire import Channel

ALLOCATE = "/v1beta1.DevicePlugin/Allocate"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def blast(path: str, data: bytes) -> None:
    """Send ``data`` on a fresh connection, say no more, read until the server closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        while True:
            try:
                sock.connect(path)
                break
            except BlockingIOError:  # backlog full after a storm
                time.sleep(0.01)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except OSError:
            pass


def request_with_goaway() -> bytes:
    """A whole Allocate and GOAWAY in one write (HPACK literal headers, no indexing)."""

    def literal(name: bytes, value: bytes) -> bytes:
        return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value

    block = b"".join(
        literal(n, v)
        for n, v in [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", ALLOCATE.encode()),
            (b":authority", b"localhost"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
    )
    body = pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest()]).SerializeToString()
    message = b"\x00" + len(body).to_bytes(4, "big") + body
    goaway = frame(0x7, 0, 0, struct.pack(">II", 0, 0))
    return PREFACE + SETTINGS + frame(0x1, 0x4, 1, block) + frame(0x0, 0x1, 1, message) + goaway


def storm(path: str, cases: int, rng: random.Random) -> None:
    valid = Channel(path)
    request = pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest()])
    goaway = request_with_goaway()
    try:
        for i in range(cases):
            kind = rng.randrange(7)
            if kind == 0:
                blast(path, rng.randbytes(rng.randint(0, 512)))
            elif kind == 1:
                frames = b"".join(
                    frame(
                        rng.randint(0, 12),
                        rng.randint(0, 255),
                        rng.randint(0, 9),
                        rng.randbytes(rng.randint(0, 64)),
                    )
                    for _ in range(rng.randint(0, 6))
                )
                blast(path, PREFACE + SETTINGS + frames)
            elif kind == 2:
                blast(path, PREFACE + SETTINGS + frame(0x1, 0x5, 1, rng.randbytes(rng.randint(1, 200))))
            elif kind == 3:
                blast(path, goaway)
            elif kind == 4:
                blast(path, goaway[: rng.randint(len(PREFACE), len(goaway) - 1)])  # abandoned mid-request
            elif kind == 5:
                blast(
                    path,
                    PREFACE + SETTINGS + b"".join(frame(0x6, 0, 0, struct.pack(">Q", n)) for n in range(500)),
                )
            elif rng.random() < 0.05:
                socks = []
                for _ in range(100):
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    socks.append(sock)
                    try:
                        sock.connect(path)
                    except OSError:
                        break
                for sock in socks:
                    sock.close()
            if i % 10 == 0:
                valid.unary(ALLOCATE, request, pb.AllocateResponse, timeout=30)
    finally:
        valid.close()


def switches(pid: int) -> dict[int, int]:
    counts = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as status:
                counts[int(tid)] = sum(int(line.split(":")[1]) for line in status if "ctxt_switches" in line)
        except OSError:
            pass
    return counts


def idle_figures(pid: int, seconds: float) -> dict[str, float]:
    cpu, woken, since = measure.thread_times(pid), switches(pid), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - since
    after = switches(pid)
    rates = [(after[t] - woken[t]) / elapsed for t in after if t in woken]
    return {
        "idle CPU, ms per s": measure.cpu_since(pid, cpu) * 1e3 / elapsed,
        "threads (control thread excluded)": measure.threads(pid) - 1,
        "wake-ups of the busiest thread, per s": max(rates, default=0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--idle", type=float, default=12.0)
    args = parser.parse_args()
    with Session("sdplite", devices=64) as session:
        session.wait_ready()
        pid = session.plugin.pid
        path = os.path.join(session.directory, session.plugin.socket)
        time.sleep(args.idle)
        before = idle_figures(pid, args.idle)
        started = time.monotonic()
        storm(path, args.cases, random.Random(12))
        took = time.monotonic() - started
        time.sleep(args.idle)
        after = idle_figures(pid, args.idle)
        alive = session.plugin.proc.poll() is None
    print(f"{args.cases} hostile connections in {took:.1f} s; plugin alive after: {alive}")
    print("| figure | before the storm | after the storm |")
    print("|---|---|---|")
    for key in before:
        print(f"| {key} | {before[key]:.2f} | {after[key]:.2f} |")
    sys.exit(0 if alive else 1)


if __name__ == "__main__":
    main()
