"""``import sdplite`` loads what a plugin needs to run, and not what only a tool or an option needs."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Modules a plugin process has no use for (or only with an option, which then imports them).
NOT_AT_IMPORT = [
    "argparse",  # the CLI
    "ctypes.util",  # find_library: subprocess, shutil, tempfile
    "tempfile",
    "subprocess",
    "json",  # only with a status file
    "urllib.parse",  # grpc-message escaping is done by hand
    "sdplite.cli",
    "sdplite.podresources",
    "sdplite.api.podresources_pb2",
    "sdplite.testing",
    "sdplite.cdi",  # only with cdi=True
    "sdplite.dra",  # a DRA driver imports it; a device plugin never pays for it
    "sdplite.api.dra_v1_pb2",
    "sdplite.api.drahealth_v1_pb2",
    "http.client",
]


def test_import_sdplite_leaves_out_what_a_plugin_does_not_need() -> None:
    # -S: no site, so nothing an editable install's import hook loads is counted.
    code = "import sys; before = set(sys.modules); import sdplite; print(sorted(set(sys.modules) - before))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, *sys.path[1:]])}
    loaded = subprocess.run(
        [sys.executable, "-S", "-c", code], check=True, capture_output=True, text=True, env=env
    ).stdout
    found = [name for name in NOT_AT_IMPORT if repr(name) in loaded]
    assert not found, f"import sdplite loads {found}"
    assert "'h2.connection'" in loaded and "'sdplite.api.deviceplugin_pb2'" in loaded


#: What the optional features (replicas, CDI, health checks, metrics) load; a plugin without them loads none.
FEATURES = [
    "sdplite.features",
    "sdplite.replicas",
    "sdplite.cdi",
    "sdplite.healthcheck",
    "sdplite.metrics",
    "sdplite.stats",
    "http.server",
]


def loaded_after(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, *sys.path[1:]])}
    return subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; {code}; print(sorted(sys.modules))"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout


def test_a_plugin_without_features_loads_none_of_their_code() -> None:
    loaded = loaded_after(
        "import sdplite; sdplite.build('example.com/x', 'x.sock', lambda: [], plugin_dir='/tmp')"
    )
    found = [name for name in FEATURES if repr(name) in loaded]
    assert not found, f"a plugin without optional features loads {found}"
    # The control: turning them on loads them (so the check above can fail).
    loaded = loaded_after(
        "import sdplite; sdplite.build('example.com/x', 'x.sock', lambda: [], plugin_dir='/tmp', replicas=2, "
        "cdi=True, health_check=lambda d: None, metrics_port=0)"
    )
    # http.server only once the metrics endpoint starts.
    assert all(repr(name) in loaded for name in FEATURES if name != "http.server"), loaded
