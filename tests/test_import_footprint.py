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
