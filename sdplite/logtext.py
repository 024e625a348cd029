"""Values from peers and user code, cut short before they reach a log line.

A device ID, a method path or an exception message can come from a peer we do
not control (a hostile client can send a 64 KiB ID) or from user code (an
exception whose message holds a whole device list). Logged whole, one such
value drowns the lines around it and can fill a node's disk. Every log call
that prints such a value passes it through `cut` first; the original length
stays in the line, so a reader knows something was left out.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["LIMIT", "cut", "cut_list"]

# Long enough for any real resource name, device ID or socket path; short
# enough that a screen of log lines stays readable.
LIMIT = 200


def cut(value: object, limit: int = LIMIT) -> str:
    """`str(value)`, or its first `limit` characters and the original length."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def cut_list(values: Iterable[object], limit: int = LIMIT) -> str:
    """Comma-joined values, each cut, the whole cut again to `limit`."""
    items = list(values)
    joined = ",".join(cut(value, limit) for value in items)
    if len(joined) <= limit:
        return joined
    return f"{joined[:limit]}... ({len(items)} values)"
