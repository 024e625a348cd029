"""One plugin under test: its subprocess, its control line, and its own kubelet stand-in and directory.

Each plugin runs in a process of its own, started the same way
(``python benchmarks/plugins/<impl>_plugin.py``), so its CPU and memory can
be read from /proc without the harness in them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Optional

from kubelet import Endpoint, Kubelet, ListMessage, Registration

IMPLS = ("sdplite", "grpcio", "grpclib")
PLUGINS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")
RESOURCE = "bench.example.com/dev"


#: Byte-code cache for every child process. The environment may say PYTHONDONTWRITEBYTECODE,
#: and an editable sdplite then has no .pyc at all: each start would compile its sources,
#: which an installed package never does. A cache of the harness's own, used by all three
#: stacks alike, gives every child compiled byte-code without writing into the source tree.
PYCACHE = os.path.join(tempfile.gettempdir(), "sdplite-bench-pycache")


def child_env() -> dict[str, str]:
    """The environment of every process the harness starts."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = PYCACHE
    return env


class PluginError(RuntimeError):
    """A plugin process misbehaved; the message carries the end of its stderr."""


class PluginProcess:
    def __init__(
        self, impl: str, directory: str, log_path: str, devices: int, poll: float, extra: Sequence[str] = ()
    ) -> None:
        self.impl = impl
        self.socket = f"bench-{impl}.sock"
        self.log_path = log_path
        command = [
            sys.executable,
            os.path.join(PLUGINS_DIR, f"{impl}_plugin.py"),
            "--dir",
            directory,
            "--socket",
            self.socket,
            "--resource",
            RESOURCE,
            "--devices",
            str(devices),
            "--poll",
            str(poll),
        ]
        command += extra
        self._log = open(log_path, "w")  # closed in stop()
        #: Taken just before the process is created: the start of "start -> Register".
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
            env=child_env(),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def set_health(self, index: int, healthy: bool) -> float:
        """Have the plugin change one device's health; returns the monotonic time it began publishing."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(f"health {index} {int(healthy)}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise PluginError(self.failure("the control line is closed")) from None
        reply = self.proc.stdout.readline().split()
        if not reply or reply[0] != "ok":
            raise PluginError(self.failure(f"control reply {' '.join(reply)!r}"))
        return float(reply[1])

    def threads(self) -> dict[str, int]:
        """The plugin's Python threads, name to native thread ID."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("threads\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().split()
        if not reply or reply[0] != "ok":
            raise PluginError(self.failure(f"control reply {' '.join(reply)!r}"))
        return {name: int(tid) for name, _, tid in (word.partition("=") for word in reply[1:])}

    def failure(self, what: str) -> str:
        self._log.flush()
        with open(self.log_path) as f:
            tail = f.read()[-2000:]
        state = "running" if self.proc.poll() is None else f"exited with {self.proc.returncode}"
        return f"{self.impl} plugin: {what} ({state}); its stderr ends:\n{tail}"

    def stop(self, timeout: float = 10.0) -> None:
        """Close the control line (the plugin then stops itself on SIGTERM); kill it if it hangs."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._log.close()


class Session:
    """A fresh directory and kubelet stand-in, and one plugin process registered with it."""

    def __init__(self, impl: str, devices: int = 64, poll: float = 0.1, extra: Sequence[str] = ()) -> None:
        """``extra``: more plugin arguments (``--profile``: profiling.py only)."""
        self.impl = impl
        self.devices = devices
        self.base = tempfile.mkdtemp(prefix="sdpb-")
        self.directory = os.path.join(self.base, "dp")
        self.kubelet = Kubelet(self.directory)
        self.plugin = PluginProcess(
            impl, self.directory, os.path.join(self.base, f"{impl}.log"), devices, poll, extra
        )
        self.registration: Optional[Registration] = None
        self.endpoint: Optional[Endpoint] = None
        self.first: Optional[ListMessage] = None

    def wait_ready(self, timeout: float = 60.0) -> ListMessage:
        """Wait for Register, the dial-back and the first complete device list."""
        try:
            self.registration = self.kubelet.wait_registration(1, timeout)
            self.endpoint = self.kubelet.wait_endpoint(1, timeout)
            self.first = self.kubelet.wait_message(self.endpoint, 1, timeout)
        except TimeoutError as exc:
            raise PluginError(self.plugin.failure(str(exc))) from None
        if self.first.count != self.devices:
            raise PluginError(self.plugin.failure(f"first list has {self.first.count} devices"))
        return self.first

    def close(self) -> None:
        try:
            self.plugin.stop()
        finally:
            self.kubelet.stop()
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
