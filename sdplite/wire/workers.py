"""A small elastic thread pool for call handlers and reader watchdogs.

A handler must never hold up its connection's reading (a slow Allocate
would stall ListAndWatch and every other call on that connection): streams
and concurrent calls run here, and so do the watchdogs that take reading
over from a reader that runs a call itself for too long (see connection.py).
Long-lived streams must never starve short calls, as a fixed pool does. So a
task takes an idle worker if there is one and otherwise starts a new thread,
up to ``max_workers``; idle workers exit after ``idle_timeout`` seconds, so
an idle plugin keeps few threads.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Optional

__all__ = ["WorkerPool"]

log = logging.getLogger("sdplite.wire")

Task = Callable[[], None]


class WorkerPool:
    def __init__(self, max_workers: int = 256, idle_timeout: float = 10.0, name: str = "sdplite") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self.idle_timeout = idle_timeout
        self.name = name
        self._lock = threading.Lock()
        self._tasks: queue.SimpleQueue[Optional[Task]] = queue.SimpleQueue()
        self._idle = 0  # workers waiting for a task that nobody has claimed
        self._threads: set[threading.Thread] = set()
        self._closed = False
        self._seq = 0

    @property
    def size(self) -> int:
        """Threads alive now (busy or idle)."""
        with self._lock:
            return len(self._threads)

    def submit(self, task: Task) -> bool:
        """Run ``task`` on a worker; False if the pool is full or closed."""
        with self._lock:
            if self._closed:
                return False
            if self._idle:
                # Claim an idle worker; the put happens under the lock so a
                # worker that times out sees the claim (see _worker).
                self._idle -= 1
                self._tasks.put(task)
                return True
            if len(self._threads) >= self.max_workers:
                return False
            self._seq += 1
            thread = threading.Thread(
                target=self._worker,
                args=(task,),
                name=f"{self.name}-worker-{self._seq}",
                daemon=True,
            )
            self._threads.add(thread)
        thread.start()
        return True

    def _worker(self, task: Optional[Task]) -> None:
        me = threading.current_thread()
        try:
            while task is not None:
                try:
                    task()
                except Exception:  # tasks handle their own errors; this is a last resort
                    log.exception("unhandled error in a worker task")
                task = None
                with self._lock:
                    if self._closed:
                        return
                    self._idle += 1
                try:
                    task = self._tasks.get(timeout=self.idle_timeout)
                except queue.Empty:
                    with self._lock:
                        if self._tasks.empty():
                            self._idle -= 1
                            return
                    # Claimed between our timeout and taking the lock: take it.
                    task = self._tasks.get()
        finally:
            with self._lock:
                self._threads.discard(me)

    def close(self, timeout: Optional[float] = None) -> list[threading.Thread]:
        """Refuse new tasks, stop idle workers and wait for busy ones.

        ``timeout`` bounds the whole wait, not each worker's; returns the
        workers still busy after it (daemon threads: they do not hold the
        process up).
        """
        with self._lock:
            self._closed = True
            threads = list(self._threads)
            for _ in range(self._idle):
                self._tasks.put(None)
            self._idle = 0
        me = threading.current_thread()
        end = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            if thread is not me:
                thread.join(None if end is None else max(0.0, end - time.monotonic()))
        return [thread for thread in threads if thread is not me and thread.is_alive()]
