"""docs/ stays true: every code block of the guide runs, and the API reference is current.

How each ```python block of docs/guide.md runs is set by the HTML comment right above it
(see the comment at the top of the guide): ``docs-test: subprocess RESOURCE...`` runs it as a
program against a kubelet emulator, ``docs-test: pytest`` runs it under pytest, and all other
blocks run in order in one shared namespace.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Optional

import pytest

import sdplite
import sdplite.testing
import sdplite.wire
from sdplite import DevicePlugin
from sdplite.cli.serve_config import parse_config
from sdplite.testing import KubeletEmulator
from sdplite.wire import Server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(ROOT, "docs", "guide.md")
API = os.path.join(ROOT, "docs", "api.md")
GEN_API = os.path.join(ROOT, "docs", "gen_api.py")

_FENCE = re.compile(r"^```(\w+)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    language: str
    line: int  # 1-based line of the block's first code line in guide.md
    code: str
    directive: Optional[list[str]]  # e.g. ["subprocess", "example.com/gpu"], or None: shared

    @property
    def name(self) -> str:
        return f"guide.md:{self.line}"


def read_blocks(path: str) -> list[Block]:
    lines = open(path, encoding="utf-8").read().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        directive = _DIRECTIVE.match(previous)
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        assert end < len(lines), f"guide.md:{i + 1}: unclosed code block"
        code = "\n".join(lines[i + 1 : end]) + "\n"
        blocks.append(Block(match.group(1), i + 2, code, directive.group(1).split() if directive else None))
        i = end + 1
    return blocks


BLOCKS = read_blocks(GUIDE)
PYTHON = [b for b in BLOCKS if b.language == "python"]
SHARED = [b for b in PYTHON if b.directive is None]
SUBPROCESS = [b for b in PYTHON if b.directive and b.directive[0] == "subprocess"]
PYTEST = [b for b in PYTHON if b.directive and b.directive[0] == "pytest"]


def test_the_guide_has_blocks_of_every_kind_and_no_unknown_directive() -> None:
    assert len(SHARED) >= 10 and len(SUBPROCESS) >= 3 and len(PYTEST) >= 1
    for block in PYTHON:
        assert block.directive is None or block.directive[0] in ("subprocess", "pytest"), block.name
        if block.directive and block.directive[0] == "subprocess":
            assert len(block.directive) > 1, f"{block.name}: name the resources that must register"
    assert {b.language for b in BLOCKS} <= {"python", "sh", "json"}


# -- the shared namespace ---------------------------------------------------------------------


def _stop_everything(namespace: dict[str, Any]) -> None:
    """Whatever the blocks left running (a failed block stops before its own stop())."""
    for value in list(namespace.values()):
        if isinstance(value, DevicePlugin):
            try:
                value.stop()
            except Exception:
                pass
    for value in list(namespace.values()):
        if isinstance(value, KubeletEmulator):
            value.stop()
    directory = namespace.get("directory")
    if isinstance(directory, str) and os.path.basename(directory).startswith("sdp-"):
        shutil.rmtree(directory, ignore_errors=True)


def test_shared_blocks_run_in_order_in_one_namespace() -> None:
    """The guide's examples, as a reader would paste them into one Python session."""
    loggers = [logging.getLogger(name) for name in ("", "sdplite", "sdplite.wire")]
    saved = [(logger, logger.level, list(logger.handlers)) for logger in loggers]
    namespace: dict[str, Any] = {"__name__": "guide"}
    try:
        for block in SHARED:
            # Padded so that tracebacks name the guide's own line numbers.
            code = compile("\n" * (block.line - 1) + block.code, GUIDE, "exec")
            try:
                exec(code, namespace)
            except BaseException as exc:
                raise AssertionError(f"the block at {block.name} failed: {exc!r}") from exc
    finally:
        _stop_everything(namespace)
        for logger, level, handlers in saved:
            logger.setLevel(level)
            logger.handlers[:] = handlers


# -- programs that run until SIGTERM ------------------------------------------------------------


@pytest.mark.parametrize("block", SUBPROCESS, ids=[b.name for b in SUBPROCESS])
def test_program_blocks_register_and_stop_on_sigterm(block: Block, sock_dir: str) -> None:
    plugin_dir = os.path.join(sock_dir, "dp")
    registry = os.path.join(sock_dir, "reg")
    resources = block.directive[1:] if block.directive else []
    with KubeletEmulator(plugin_dir, registry_dir=registry) as kubelet:
        env = {**os.environ, "SDPLITE_PLUGIN_DIR": plugin_dir, "SDPLITE_REGISTRY_DIR": registry}
        proc = subprocess.Popen(
            [sys.executable, "-c", block.code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output = ""
        try:
            try:
                for resource in resources:
                    kubelet.wait_for_registration(resource, timeout=20)
            except TimeoutError as exc:
                proc.kill()
                output = proc.communicate()[0]
                raise AssertionError(f"{block.name}: {exc}\n{output}") from None
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
            output = proc.communicate()[0]
            assert code == 0, f"{block.name} exited {code} on SIGTERM:\n{output}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for name in os.listdir(plugin_dir) + os.listdir(registry):
        assert name == "kubelet.sock", f"{block.name} left {name} behind"


# -- pytest examples ---------------------------------------------------------------------------


def passes_under_pytest(code: str, directory: str, file_name: str) -> None:
    """Run ``code`` as the test file ``file_name`` in its own pytest; it must pass, and run something."""
    path = os.path.join(directory, file_name)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(code)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b\d+ passed\b", result.stdout) and "failed" not in result.stdout


@pytest.mark.parametrize("block", PYTEST, ids=[b.name for b in PYTEST])
def test_pytest_blocks_pass_under_pytest(block: Block, tmp_path: Any) -> None:
    passes_under_pytest(block.code, str(tmp_path), "test_guide_example.py")


# -- what the guide says about commands and options --------------------------------------------


def test_json_blocks_are_valid_serve_configurations() -> None:
    blocks = [b for b in BLOCKS if b.language == "json"]
    assert blocks
    for block in blocks:
        config = parse_config(json.loads(block.code))
        assert config.resources, block.name


def _help(command: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "sdplite", command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"`sdplite {command}`: {result.stderr}"
    return result.stdout


def test_every_sdplite_command_line_in_the_guide_uses_real_options() -> None:
    helps: dict[str, str] = {}
    checked = 0
    for block in (b for b in BLOCKS if b.language == "sh"):
        for line in block.code.splitlines():
            words = shlex.split(line, comments=True)
            if len(words) < 2 or words[0] != "sdplite":
                continue
            command = words[1]
            if command not in helps:
                helps[command] = _help(command)
            for word in words[2:]:
                if word.startswith("--"):
                    option = word.split("=", 1)[0]
                    assert re.search(rf"{re.escape(option)}\b", helps[command]), (
                        f"{block.name}: `sdplite {command}` has no option {option}"
                    )
                    checked += 1
    assert "demo" in helps and "serve" in helps and "inspect" in helps and checked >= 5


def test_the_limits_table_names_only_real_server_keywords() -> None:
    text = open(GUIDE, encoding="utf-8").read()
    section = text.split("## Security and limits", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"^\| `(\w+)`(?:, `(\w+)`)?", section, re.M)
    keywords = {name for pair in names for name in pair if name}
    parameters = set(inspect.signature(Server.__init__).parameters) - {"self", "path", "methods"}
    assert keywords and keywords <= parameters, keywords - parameters
    for name in keywords:  # the defaults in the table are the real ones
        default = inspect.signature(Server.__init__).parameters[name].default
        row = next(
            line for line in section.splitlines() if line.startswith(f"| `{name}`") or f", `{name}`" in line
        )
        if name == "socket_mode":
            assert f"`{oct(default)}`" in row, row
        elif isinstance(default, int):
            assert re.search(rf"`{default}`|\b{default // (1024 * 1024)} MiB", row), (name, default, row)


# -- the API reference -------------------------------------------------------------------------


def test_api_reference_is_current() -> None:
    result = subprocess.run(
        [sys.executable, GEN_API, "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (
        f"docs/api.md is stale: run `python docs/gen_api.py`\n{result.stdout}{result.stderr}"
    )


def test_api_reference_covers_the_public_api() -> None:
    text = open(API, encoding="utf-8").read()
    wanted = [f"sdplite.{n}" for n in sdplite.__all__]
    wanted += [f"sdplite.wire.{n}" for n in sdplite.wire.__all__]
    wanted += [f"sdplite.testing.{n}" for n in sdplite.testing.__all__]
    wanted.append("sdplite.podresources.PodResourcesClient")
    missing = [name for name in wanted if f"### `{name}`" not in text]
    assert not missing
    assert not re.search(r" at 0x[0-9a-f]+", text), "a memory address in docs/api.md"
