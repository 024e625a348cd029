"""docs/dra.md stays true: every code block runs (the rules are in the comment at the top of the page)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from test_docs import Block, passes_under_pytest, read_blocks

from sdplite.testing import DraTestbed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "dra.md")
BLOCKS = read_blocks(PAGE)
PYTHON = [b for b in BLOCKS if b.language == "python"]
SHARED = [b for b in PYTHON if b.directive is None]
PROGRAMS = [b for b in PYTHON if b.directive == ["program"]]
PYTEST = [b for b in PYTHON if b.directive == ["pytest"]]
SHELL = [b for b in BLOCKS if b.language == "sh"]


def test_the_page_has_blocks_of_every_kind_and_no_unknown_directive() -> None:
    assert len(SHARED) >= 8 and len(PROGRAMS) >= 2 and PYTEST and SHELL
    assert all(b.directive in (None, ["program"], ["pytest"]) for b in PYTHON)
    assert {b.language for b in BLOCKS} <= {"python", "sh"}


def test_shared_blocks_run_in_order_in_one_namespace(capsys: Any) -> None:
    namespace: dict[str, Any] = {"__name__": "dra_guide"}
    try:
        for block in SHARED:
            code = compile("\n" * (block.line - 1) + block.code, PAGE, "exec")
            try:
                exec(code, namespace)
            except BaseException as exc:
                raise AssertionError(f"the block at dra.md:{block.line} failed: {exc!r}") from exc
    finally:
        for name in ("driver", "bed"):
            value = namespace.get(name)
            if value is not None:
                value.stop()
    out = capsys.readouterr().out
    assert "v1 True" in out and "ValueError: gpu-0: unknown mode 'turbo'" in out
    assert "cannot be a DRA device name" in out and "('UNHEALTHY', 'temperature 97 C')" in out


@pytest.mark.parametrize("block", PROGRAMS, ids=[f"dra.md:{b.line}" for b in PROGRAMS])
def test_program_blocks_register_and_stop_on_sigterm(block: Block, sock_dir: str) -> None:
    with DraTestbed(directory=sock_dir) as bed:
        env = {
            **os.environ,
            "NODE_NAME": bed.node,
            "POD_UID": "",
            "SDPLITE_KUBE_URL": bed.api.url,
            "SDPLITE_KUBE_TOKEN": bed.api.token,
            "SDPLITE_REGISTRY_DIR": bed.registry_dir,
            "SDPLITE_DRA_PLUGIN_DIR": bed.plugin_dir,
            "SDPLITE_CDI_DIR": os.path.join(bed.directory, "cdi"),
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", block.code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            bed.kubelet.wait_for_registration("gpu.example.com", timeout=20)
            assert bed.api.wait(lambda: len(bed.api.slices) == 1)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
            output = proc.communicate()[0]
            assert code == 0, f"dra.md:{block.line} exited {code} on SIGTERM:\n{output}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        left = [n for n in os.listdir(bed.registry_dir) if not n.startswith(".")]
        assert not left, f"dra.md:{block.line} left {left} behind"


@pytest.mark.parametrize("block", PYTEST, ids=[f"dra.md:{b.line}" for b in PYTEST])
def test_pytest_blocks_pass_under_pytest(block: Block, tmp_path: Any) -> None:
    passes_under_pytest(block.code, str(tmp_path), "test_dra_example.py")


@pytest.mark.parametrize("block", SHELL, ids=[f"dra.md:{b.line}" for b in SHELL])
def test_shell_blocks_run(block: Block) -> None:
    bin_dir = os.path.dirname(sys.executable)
    result = subprocess.run(
        ["bash", "-euc", block.code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_limits_name_what_sdplite_does_not_do() -> None:
    text = open(PAGE, encoding="utf-8").read()
    section = text.split("## Limits", 1)[1]
    for topic in ("watches", "pools", "status.devices", "metadata", "concurrently", "v1alpha"):
        assert topic in section, topic
