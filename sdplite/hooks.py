"""The author's ``refresh()`` and ``destroy()`` hooks, on a thread of their own.

A hook is user code: it may hang. Run on the supervisor's thread, a hung
``destroy()`` would hold up every stop and a hung ``refresh()`` would freeze
every plugin of the process. So each call runs on a short-lived daemon thread
(``sdplite-hook-<socket>``), one at a time: while one has not returned, a
later one is skipped with a WARNING. The caller waits a bounded time (a
stop's deadline, or :data:`REFRESH_WAIT` at a start, which a stop cuts
short); a hook still running at a stop's deadline is named in its
"still running after" line (docs/design.md, "A plugin's life").
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

from .impl import has_hook
from .logtext import cut_traceback
from .wire.shutdown import Shutdown

__all__ = ["Hooks", "REFRESH_WAIT"]

log = logging.getLogger("sdplite")

#: How long a server start waits for ``refresh()`` before serving and registering anyway.
REFRESH_WAIT = 2.0


class Hooks:
    """Calls ``impl``'s hooks one at a time on their own thread (see the module docstring)."""

    def __init__(self, impl: Any, name: str, label: str) -> None:
        self.impl = impl
        self.name = name  # whose hooks, for log lines
        self.label = label  # for thread names
        self._thread: Optional[threading.Thread] = None
        self._running = ""  # the hook on that thread
        self._named = False  # already named in a "still running after" line
        self._wake = threading.Event()
        self._interrupted = False

    def refresh(self) -> None:
        """Call ``refresh()``; wait up to :data:`REFRESH_WAIT` (less after :meth:`interrupt`)."""
        if not self._start("refresh"):
            return
        if not self._interrupted:
            self._wake.wait(REFRESH_WAIT)
        if self._busy() and not self._interrupted:  # (a stop names it in its own line)
            log.warning(
                "%s: refresh() has not returned after %.0f s; serving and registering without waiting "
                "for it (no hook is called again until it returns)",
                self.name,
                REFRESH_WAIT,
            )

    def destroy(self, shutdown: Shutdown) -> None:
        """Call ``destroy()``; wait for it until ``shutdown``'s deadline."""
        if self._start("destroy"):
            self.join(shutdown)

    def join(self, shutdown: Shutdown) -> None:
        """Wait for a hook still running until ``shutdown``'s deadline; name it if it has not returned."""
        if self._busy() and not self._named:
            self._named = not shutdown.join(self._thread, f"the {self._running}() hook")

    def interrupt(self) -> None:
        """The process is stopping: cut short the wait for ``refresh()`` (any thread)."""
        self._interrupted = True
        self._wake.set()

    def resume(self) -> None:
        self._interrupted = False

    def _busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start(self, hook: str) -> bool:
        """Start ``hook`` on its thread; False if the impl has none or an earlier hook still runs."""
        if not has_hook(self.impl, hook):
            return False
        if self._busy():
            log.warning("%s: %s() not called: %s() has not returned yet", self.name, hook, self._running)
            return False
        wake = self._wake = threading.Event()
        self._running, self._named = hook, False
        self._thread = threading.Thread(
            target=self._call, args=(hook, wake), name=f"sdplite-hook-{self.label}", daemon=True
        )
        self._thread.start()
        return True

    def _call(self, hook: str, wake: threading.Event) -> None:
        started = time.monotonic()
        try:
            getattr(self.impl, hook)()
        except Exception as exc:
            log.error("%s: %s() raised\n%s", self.name, hook, cut_traceback(exc))
        finally:
            wake.set()
        if time.monotonic() - started > REFRESH_WAIT:
            log.info("%s: %s() returned after %.1f s", self.name, hook, time.monotonic() - started)
