"""A bounded stop: one deadline for every wait, and a list of what did not end.

A stop must end within its grace whatever user code and peers do: a handler
that never returns, a peer that never reads, a ``get_devices`` that hangs. So
every wait during a stop is against one deadline, shared by all the steps
(and by every plugin of a process), instead of a timeout per step that adds
up. What is still running when the deadline passes is abandoned: all our
threads are daemon threads, so they do not hold the process up. It is named
in one log line, so the operator learns which code to look at.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

__all__ = ["Shutdown"]


class Shutdown:
    """The deadline of one stop and what is left running at it."""

    def __init__(self, grace: float) -> None:
        self.grace = max(0.0, grace)
        self.deadline = time.monotonic() + self.grace
        self.leftovers: list[str] = []

    def remaining(self, reserve: float = 0.0) -> float:
        """Seconds left before the deadline less ``reserve`` (never negative)."""
        return max(0.0, self.deadline - reserve - time.monotonic())

    def join(self, thread: Optional[threading.Thread], what: str) -> bool:
        """Wait for ``thread`` until the deadline; name it as left running if it has not ended."""
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(self.remaining())
        if thread.is_alive():
            self.abandon(f"{what} (thread {thread.name})")
            return False
        return True

    def abandon(self, what: str) -> None:
        """Name something that did not end within the grace."""
        self.leftovers.append(what)

    def report(self, logger: logging.Logger, who: str) -> None:
        """One WARNING line naming everything left running, if anything is."""
        if self.leftovers:
            logger.warning(
                "%s: still running after %.1f s: %s (abandoned: it runs on a daemon thread "
                "and does not hold the process)",
                who,
                self.grace,
                "; ".join(self.leftovers),
            )
