"""Log-line helpers: long values are cut and say how long they were."""

from __future__ import annotations

import logging
from typing import Any

from sdplite.logtext import LIMIT, Repeats, cut, cut_list, cut_traceback


def test_short_values_pass_unchanged() -> None:
    assert cut("gpu-0") == "gpu-0"
    assert cut(42) == "42"
    assert cut("x" * LIMIT) == "x" * LIMIT


def test_long_values_are_cut_and_keep_their_length() -> None:
    line = cut("d" * 65536)
    assert line.startswith("d" * LIMIT + "...")
    assert "65536 characters" in line
    assert len(line) < LIMIT + 40
    assert cut("abcdef", limit=3) == "abc... (6 characters)"


def test_lists_are_cut_per_value_and_as_a_whole() -> None:
    assert cut_list(["a", "b"]) == "a,b"
    line = cut_list([f"dev-{i}" for i in range(1000)], limit=50)
    assert line.startswith("dev-0,dev-1,")
    assert line.endswith("(1000 values)")
    assert len(line) < 80


def test_a_traceback_keeps_its_frames_and_cuts_its_message() -> None:
    def fail() -> None:
        raise ValueError("d" * 65536)

    try:
        fail()
    except ValueError as exc:
        text = cut_traceback(exc)
    assert "in fail" in text and 'raise ValueError("d" * 65536)' in text
    assert "65548 characters" in text  # "ValueError: " and the message
    assert len(text) < 2000


def test_repeats_log_the_first_event_and_count_the_rest(caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="test.repeats")
    repeats = Repeats(logging.getLogger("test.repeats"), period=3600)
    for i in range(136):
        repeats.note(
            "full", "refused {count} connections over max_connections", logging.WARNING, "refused #%d", i
        )
    repeats.note("other", "{count} others", logging.INFO, "another kind")
    assert [r.getMessage() for r in caplog.records] == ["refused #0", "another kind"]
    repeats.flush(due_only=True)  # the windows are not over yet
    assert len(caplog.records) == 2
    repeats.flush()
    messages = [r.getMessage() for r in caplog.records]
    # A lone event needs no summary; 136 get one line.
    assert messages[2:] == ["refused 136 connections over max_connections in the last 1 s"]
    assert caplog.records[2].levelno == logging.WARNING


def test_repeats_sum_up_a_window_when_the_next_one_begins(caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="test.repeats")
    repeats = Repeats(logging.getLogger("test.repeats"), period=0.0)  # every event opens a window
    repeats.note("k", "{count} events", logging.INFO, "event %s", "a")
    repeats.note("k", "{count} events", logging.INFO, "event %s", "b")
    assert [r.getMessage() for r in caplog.records] == ["event a", "event b"]
