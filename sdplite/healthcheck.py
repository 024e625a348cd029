"""Health checks: a per-device check function, run on a schedule, that explains its verdicts.

``build(..., health_check=HealthCheck(check, interval=10))`` runs
``check(device)`` for every physical device every ``interval`` seconds, each
call on its own short-lived thread so that a check that hangs holds up
nothing: after ``timeout`` seconds it counts as failed ("timed out"). A check
fails by raising (the exception is the reason) or by returning False; it
passes by returning None or True.

One bad reading should not take a device away from the scheduler, nor one
good reading give a broken device back: a device turns Unhealthy after
``failures`` failed checks in a row and Healthy again after ``successes``
passed checks in a row. Each turn is one :meth:`set_health`-like change with
its reason, which a later device list cannot undo while the checks still fail.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from .devices import Device
from .logtext import cut
from .wire.shutdown import Shutdown

if TYPE_CHECKING:
    from .service import DeviceState

__all__ = ["HealthCheck", "FAILURES", "SUCCESSES", "INTERVAL", "TIMEOUT"]

log = logging.getLogger("sdplite")

#: Defaults: failed checks in a row before Unhealthy, passed ones before Healthy again.
FAILURES = 3
SUCCESSES = 2
#: Defaults: seconds between rounds, and how long one check may take.
INTERVAL = 10.0
TIMEOUT = 5.0

Check = Callable[[Device], Any]


class _Track:
    """One device's run of results, and the check thread still running for it."""

    __slots__ = ("failed", "passed", "unhealthy", "thread", "outcome", "timed_out")

    def __init__(self) -> None:
        self.failed = 0
        self.passed = 0
        self.unhealthy = False
        self.thread: Optional[threading.Thread] = None
        #: (reason, or None if it passed; kind), set when the check returns.
        self.outcome: Optional[tuple[Optional[str], str]] = None
        #: The running check was already judged a timeout: its late result must not count again.
        self.timed_out = False

    @property
    def running(self) -> bool:
        return self.thread is not None and self.outcome is None


class HealthCheck:
    """Run ``check(device)`` on every physical device every ``interval`` seconds.

    Defaults: ``interval`` 10 s, ``timeout`` 5 s, ``failures`` 3, ``successes`` 2.
    """

    def __init__(
        self,
        check: Check,
        interval: float = INTERVAL,
        timeout: float = TIMEOUT,
        failures: int = FAILURES,
        successes: int = SUCCESSES,
    ) -> None:
        if not callable(check):
            raise TypeError(f"the health check must be a function of a Device, not {type(check).__name__}")
        if interval <= 0 or timeout <= 0:
            raise ValueError("health check interval and timeout must be positive")
        for name, value in (("failures", failures), ("successes", successes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, not {value!r}")
        self.check = check
        self.interval = interval
        self.timeout = timeout
        self.failures = failures
        self.successes = successes
        self._tracks: dict[str, _Track] = {}
        self._stop = threading.Event()
        #: Notified when a check returns (and on stop).
        self._done = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._state: Optional[DeviceState] = None

    def __repr__(self) -> str:
        name = getattr(self.check, "__qualname__", repr(self.check))
        return (
            f"HealthCheck({name}, interval={self.interval}, timeout={self.timeout}, "
            f"failures={self.failures}, successes={self.successes})"
        )

    # -- running -----------------------------------------------------------------

    def start(self, state: DeviceState) -> None:
        """Check ``state``'s devices from a thread of our own until :meth:`stop`."""
        if self._thread is not None:
            return
        self._state = state
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"sdplite-health-{state.resource_name}", daemon=True
        )
        self._thread.start()

    def stop(self, shutdown: Optional[Shutdown] = None) -> None:
        """Stop checking: the round in progress ends at once, without a verdict.

        Waits for our thread until ``shutdown``'s deadline (or 1 s); a check
        still running is left on its daemon thread and named in ``shutdown``.
        """
        with self._done:
            self._stop.set()
            self._done.notify_all()
        thread, self._thread = self._thread, None
        if shutdown is None:
            if thread is not None:
                thread.join(1.0)
            return
        shutdown.join(thread, "the health check")
        for device_id, track in list(self._tracks.items()):
            if track.running:
                shutdown.abandon(f"the health check of {cut(device_id)}")

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_once()
            except Exception:  # a bug of ours must not end the checks
                log.exception("health check round failed")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def run_once(self, state: Optional[DeviceState] = None) -> None:
        """One round: check every device (in parallel), wait up to ``timeout``, judge.

        ``state`` defaults to the one given to :meth:`start`; pass it to run
        rounds by hand (tests, or a plugin that schedules checks itself).
        """
        state = state or self._state
        if state is None:
            raise RuntimeError("give run_once() a DeviceState, or start() the health check first")
        devices = {d.id: d for d in state.physical_devices}
        gone = [i for i in self._tracks if i not in devices]
        for device_id in gone:
            del self._tracks[device_id]
        if gone:
            state.forget(gone)
        for device_id, device in devices.items():
            track = self._tracks.setdefault(device_id, _Track())
            if track.timed_out and not track.running:
                track.thread, track.timed_out = None, False  # late, and already counted: check afresh
            if track.thread is None:
                track.outcome = None
                track.thread = thread = threading.Thread(target=self._check_one, args=(device, track))
                thread.name, thread.daemon = f"sdplite-check-{device_id}", True
                thread.start()
        tracks = [self._tracks[i] for i in devices]

        def finished() -> bool:
            return self._stop.is_set() or not any(t.running for t in tracks)

        with self._done:
            self._done.wait_for(finished, self.timeout)
        if self._stop.is_set():
            return  # stopping: cut short, judge nothing
        for device_id in devices:
            self._judge(state, device_id, self._tracks[device_id])

    def _check_one(self, device: Device, track: _Track) -> None:
        outcome: tuple[Optional[str], str]
        try:
            result = self.check(device)
        except Exception as exc:
            kind = type(exc).__name__
            outcome = (cut(f"{kind}: {exc}") if str(exc) else kind, kind)  # the message may be huge
        else:
            outcome = (None, "passed") if result is not False else ("check returned False", "returned_false")
        with self._done:
            track.outcome = outcome
            self._done.notify_all()

    def _judge(self, state: DeviceState, device_id: str, track: _Track) -> None:
        reason: Optional[str]
        if track.running:
            reason, kind = f"check timed out after {self.timeout:g}s", "timeout"
            track.timed_out = True
        else:
            track.thread = None
            reason, kind = track.outcome or ("check ended without a result", "error")
        if reason is None:
            track.failed = 0
            track.passed += 1
            if track.unhealthy and track.passed >= self.successes:
                track.unhealthy = False
                times = "1 time" if track.passed == 1 else f"{track.passed} times"
                state.hold(device_id, None, f"health check passed {times} in a row")
            return
        track.passed = 0
        track.failed += 1
        if state.stats is not None:
            state.stats.count("health_check_failures", reason=kind)
        log.debug(
            "%s: health check of %s failed (%d in a row): %s",
            state.resource_name,
            cut(device_id),
            track.failed,
            cut(reason),
        )
        if not track.unhealthy and track.failed >= self.failures:
            track.unhealthy = True
            state.hold(device_id, f"{reason} ({track.failed} checks in a row)")
