"""Every code block in README.md runs, as written."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from sdplite.testing import KubeletEmulator

from conftest import copy_of_the_project

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
BLOCKS = re.findall(r"```(python|sh)\n(.*?)```", README, re.S)
PYTHON = [code for kind, code in BLOCKS if kind == "python"]
SHELL = [code.strip() for kind, code in BLOCKS if kind == "sh"]
VENV_BIN = os.path.dirname(sys.executable)


def test_the_readme_has_the_blocks_these_tests_expect() -> None:
    assert len(PYTHON) == 4 and len(SHELL) == 4
    assert "kustomize edit set image" in SHELL[3]  # Deploy; tests/test_deploy.py checks the name
    assert SHELL[1] == "bash scripts/test.sh"
    assert "bash scripts/test.sh" in open(os.path.join(ROOT, ".ci", "run")).read()


def run_against_emulator(command: list[str], resource: str, sock_dir: str) -> str:
    """Start a long-running snippet with SDPLITE_PLUGIN_DIR set, see it register, SIGTERM it."""
    with KubeletEmulator(sock_dir) as kubelet:
        env = {
            **os.environ,
            "SDPLITE_PLUGIN_DIR": sock_dir,
            "PATH": VENV_BIN + os.pathsep + os.environ["PATH"],
        }
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            kubelet.wait_for_registration(resource, timeout=20)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            out = proc.communicate()[0]
    return out


@pytest.mark.parametrize("index,resource", [(0, "example.com/superdisk"), (1, "example.com/gpu")])
def test_plugin_snippets_register_and_stop_on_sigterm(index: int, resource: str, sock_dir: str) -> None:
    run_against_emulator([sys.executable, "-c", PYTHON[index]], resource, sock_dir)


def test_fixture_snippet_passes_under_pytest(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "test_snippet.py")
    with open(path, "w") as handle:
        handle.write(PYTHON[2])
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_transport_snippet_prints_the_answer(sock_dir: str) -> None:
    """Run where its relative socket path is ours alone: at a fixed path such as
    /tmp/hello.sock, two runs at once (CI runs two suites side by side) collide
    (EADDRINUSE)."""
    result = subprocess.run(
        [sys.executable, "-c", PYTHON[3]], capture_output=True, text=True, timeout=60, cwd=sock_dir
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello node\n"
    assert os.listdir(sock_dir) == [], "the server left its socket file behind"


def test_serve_snippet_registers(sock_dir: str) -> None:
    run_against_emulator(["bash", "-c", SHELL[2]], "example.com/serial", sock_dir)


def test_demo_command_works_from_a_fresh_copy(tmp_path: object) -> None:
    """The first set-up command, verbatim, in a copy of the tracked files (its own .venv)."""
    copy = copy_of_the_project(os.path.join(str(tmp_path), "clone"))
    result = subprocess.run(["bash", "-c", SHELL[0]], cwd=copy, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, textwrap.shorten(result.stdout + result.stderr, 3000)
    assert "registered again" in result.stdout and result.stdout.rstrip().endswith("done.")
