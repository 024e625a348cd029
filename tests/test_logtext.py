"""Log-line helpers: long values are cut and say how long they were."""

from __future__ import annotations

from sdplite.logtext import LIMIT, cut, cut_list


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
