"""docs/serve.md stays true: its configurations are accepted and its Python runs."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml

from sdplite.cli.serve_load import parse_any

PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "serve.md")
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```$", open(PAGE, encoding="utf-8").read(), re.M | re.S)


def test_the_page_has_both_formats_and_python() -> None:
    assert sorted({language for language, _ in BLOCKS}) == ["json", "python", "yaml"]


@pytest.mark.parametrize("code", [c for lang, c in BLOCKS if lang in ("json", "yaml")])
def test_configurations_are_accepted(code: str) -> None:
    raw = json.loads(code) if code.lstrip().startswith("{") else yaml.safe_load(code)
    assert parse_any(raw).resources


@pytest.mark.parametrize("code", [c for lang, c in BLOCKS if lang == "python"])
def test_python_runs(code: str) -> None:
    exec(compile(code, PAGE, "exec"), {})


def test_every_generic_device_plugin_field_is_in_the_table() -> None:
    from sdplite.cli import serve_gdp

    page = open(PAGE, encoding="utf-8").read()
    table = page[page.index("## Side by side") : page.index("## Where sdplite differs")]
    names = (
        serve_gdp.FILE_FIELDS
        + serve_gdp.DEVICE_FIELDS
        + serve_gdp.GROUP_FIELDS
        + serve_gdp.PATH_FIELDS
        + serve_gdp.USB_FIELDS
    )
    flags = ("--device", "--config", "--domain", "--plugin-directory", "--log-level", "--listen", "--version")
    for name in (*names, *flags, "/health", "/metrics"):
        assert f"`{name}" in table, name
