"""The wheel installs in a fresh venv, pulls in no grpcio, imports and works."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
import venv

from conftest import copy_of_the_project

SMOKE = textwrap.dedent(
    """
    import os, tempfile
    import sdplite
    from sdplite.api import deviceplugin_pb2 as pb
    from sdplite.wire import Channel, Server, unary
    path = os.path.join(tempfile.mkdtemp(), "s.sock")
    def options(request, context):
        return pb.DevicePluginOptions(pre_start_required=True)
    method = "/v1beta1.DevicePlugin/GetDevicePluginOptions"
    with Server(path, [unary(method, options, pb.Empty)]):
        with Channel(path) as channel:
            reply = channel.unary(method, pb.Empty(), pb.DevicePluginOptions)
    assert reply.pre_start_required
    print("ok", sdplite.__version__)
    """
)


def test_wheel_in_a_fresh_venv_has_no_grpcio_and_works(tmp_path: object) -> None:
    out = str(tmp_path)
    source = copy_of_the_project(os.path.join(out, "source"))  # built there, not in the checkout
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, source],
        check=True,
    )
    wheels = glob.glob(os.path.join(out, "sdplite-*.whl"))
    assert len(wheels) == 1
    env_dir = os.path.join(out, "venv")
    venv.create(env_dir, with_pip=True)
    python = os.path.join(env_dir, "bin", "python")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheels[0]], check=True
    )
    installed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    names = {line.split("==")[0] for line in installed.split()}
    assert "grpcio" not in names and "h2" in names and "protobuf" in names, names
    result = subprocess.run([python, "-c", SMOKE], capture_output=True, text=True, cwd=out, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok ")
    typed = subprocess.run(
        [
            python,
            "-c",
            "import sdplite, os; "
            "print(os.path.exists(os.path.join(os.path.dirname(sdplite.__file__), 'py.typed')))",
        ],
        capture_output=True,
        text=True,
        cwd=out,
    )
    assert typed.stdout.strip() == "True"
