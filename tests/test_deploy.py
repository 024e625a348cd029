"""Deployment: manifests checked against the Kubernetes API schema; the image's install steps run."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from typing import Any

import pytest
import yaml
from kubernetes import client

from sdplite.cli.serve_config import GroupResource, parse_config
from sdplite.cli.serve_load import parse_any

from conftest import copy_of_the_project

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
MODELS = {("apps/v1", "DaemonSet"): "V1DaemonSet", ("v1", "ConfigMap"): "V1ConfigMap"}


def manifests(directory: str = DEPLOY) -> list[dict[str, Any]]:
    """The documents of ``directory``'s manifests (kustomization.yaml apart)."""
    documents = []
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        if os.path.basename(path) != "kustomization.yaml":
            with open(path) as handle:
                documents += [d for d in yaml.safe_load_all(handle) if d]
    return documents


def typed(document: dict[str, Any], models: dict[tuple[str, str], str] = MODELS) -> Any:
    """Deserialise into the API model; serialising it back must give the same document."""
    model = models[(document["apiVersion"], document["kind"])]
    api = client.ApiClient()
    # The client's own deserialiser (its public wrapper's signature differs across versions).
    obj = api._ApiClient__deserialize(document, model)
    assert api.sanitize_for_serialization(obj) == document, (
        f"{document['kind']} has fields the {model} schema does not know (misspelled or misplaced)"
    )
    return obj


@pytest.mark.parametrize("document", manifests(), ids=lambda d: f"{d['kind']}-{d['metadata']['name']}")
def test_manifests_match_the_api_schema(document: dict[str, Any]) -> None:
    typed(document)


def test_kustomization_lists_every_manifest() -> None:
    with open(os.path.join(DEPLOY, "kustomization.yaml")) as handle:
        kustomization = yaml.safe_load(handle)
    listed = set(kustomization["resources"])
    present = {os.path.basename(p) for p in glob.glob(os.path.join(DEPLOY, "*.yaml"))} - {
        "kustomization.yaml"
    }
    assert listed == present


def test_daemonset_is_least_privilege_and_probed() -> None:
    daemonset = next(typed(d) for d in manifests() if d["kind"] == "DaemonSet")
    pod = daemonset.spec.template.spec
    container = pod.containers[0]
    security = container.security_context
    assert not security.privileged and not security.allow_privilege_escalation
    assert security.read_only_root_filesystem and security.capabilities.drop == ["ALL"]
    assert container.liveness_probe._exec.command == ["sdplite", "health"]
    assert container.resources.requests and container.resources.limits
    assert any(t.operator == "Exists" for t in pod.tolerations)
    host_paths = {v.host_path.path for v in pod.volumes if v.host_path}
    assert "/var/lib/kubelet/device-plugins" in host_paths
    mounts = {m.mount_path: m for m in container.volume_mounts}
    assert mounts["/dev"].read_only
    status_env = {e.name: e.value for e in container.env}["SDPLITE_STATUS_FILE"]
    assert status_env.startswith("/run/sdplite/") and "/run/sdplite" in mounts


def test_the_configmap_is_a_valid_serve_config() -> None:
    configmap = next(d for d in manifests() if d["kind"] == "ConfigMap")
    config = parse_config(json.loads(configmap["data"]["serve.json"]))
    assert config.resources[0].name == "example.com/serial"


def test_the_configmap_has_a_generic_device_plugin_example_with_group_usb_and_optional() -> None:
    configmap = next(d for d in manifests() if d["kind"] == "ConfigMap")
    resources = parse_any(json.loads(configmap["data"]["devices.json"])).resources
    groups = [g for r in resources if isinstance(r, GroupResource) for g in r.groups]
    assert any(len(g.paths) >= 2 for g in groups), "a group of several paths"
    assert any(g.usb for g in groups), "a USB device"
    assert any(p.optional for g in groups for p in g.paths), "an optional path"


def dockerfile_stages() -> list[tuple[str, list[str], list[str]]]:
    """(FROM line, RUN commands, COPY lines) of each stage of the Dockerfile."""
    with open(os.path.join(ROOT, "Dockerfile")) as handle:
        text = handle.read()
    stages = []
    for chunk in re.split(r"^(?=FROM )", text, flags=re.M)[1:]:
        first = chunk.splitlines()[0]
        stages.append(
            (first, re.findall(r"^RUN (.+)$", chunk, re.M), re.findall(r"^COPY (.+)$", chunk, re.M))
        )
    return stages


def test_dockerfile_steps_give_a_working_sdplite_without_pip(tmp_path: Any) -> None:
    """Both stages' RUN lines as written, in a venv standing in for the base image's /usr/local:
    the build stage installs into /install, the final stage drops pip and copies /install in."""
    (build_from, build_runs, _), (final_from, final_runs, final_copies) = dockerfile_stages()
    assert build_from.endswith(" AS build") and "AS" not in final_from
    assert final_copies == ["--from=build /install /usr/local"]
    assert not any("pip" in command and "rm " not in command for command in final_runs), final_runs
    usr_local = os.path.join(str(tmp_path), "usr-local")
    venv.create(usr_local, with_pip=True)
    bin_dir = os.path.join(usr_local, "bin")
    context = copy_of_the_project(os.path.join(str(tmp_path), "context"))  # builds there, not in the checkout
    mapped = {
        "/wheels": os.path.join(str(tmp_path), "wheels"),
        "/install": os.path.join(str(tmp_path), "install"),
        "/usr/local": usr_local,
    }

    def run(command: str) -> None:
        for path, there in mapped.items():
            command = re.sub(re.escape(path) + r"\b", there, command)
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=context,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]},
        )
        assert result.returncode == 0, command + "\n" + result.stdout + result.stderr

    for command in build_runs:
        run(command)
    assert not os.path.exists(mapped["/wheels"])
    for command in final_runs:
        run(command)
    shutil.copytree(mapped["/install"], usr_local, dirs_exist_ok=True)  # the COPY --from=build
    python = os.path.join(bin_dir, "python")
    assert not glob.glob(os.path.join(bin_dir, "pip*")), "the final stage keeps pip"
    assert subprocess.run([python, "-c", "import pip"], capture_output=True).returncode != 0
    listing = subprocess.run(
        [
            python,
            "-c",
            "import importlib.metadata as m; print([d.metadata['Name'] for d in m.distributions()])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    assert "grpcio" not in listing and "sdplite" in listing and "pip" not in listing.split("'")
    for args in (["--version"], ["serve", "--help"], ["health", "--help"]):
        assert (
            subprocess.run(
                [os.path.join(bin_dir, "sdplite"), *args], capture_output=True, timeout=60
            ).returncode
            == 0
        )


def test_kustomize_images_entry_names_the_daemonsets_image() -> None:
    """`kustomize edit set image NAME=...` (README, Deploy) only rewrites images called NAME."""
    with open(os.path.join(DEPLOY, "kustomization.yaml")) as handle:
        (entry,) = yaml.safe_load(handle)["images"]
    daemonset = next(d for d in manifests() if d["kind"] == "DaemonSet")
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    name = container["image"].rsplit(":", 1)[0]
    assert entry["name"] == name
    with open(os.path.join(ROOT, "README.md")) as handle:
        readme = handle.read()
    assert f"kustomize edit set image {name}=" in readme


def test_python_m_build_makes_a_wheel_and_sdist_that_run_the_demo(tmp_path: Any) -> None:
    out = os.path.join(str(tmp_path), "dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", out, ROOT], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheel = glob.glob(os.path.join(out, "sdplite-*.whl"))
    sdist = glob.glob(os.path.join(out, "sdplite-*.tar.gz"))
    assert len(wheel) == 1 and len(sdist) == 1
    env_dir = os.path.join(str(tmp_path), "venv")
    venv.create(env_dir, with_pip=True)
    bin_dir = os.path.join(env_dir, "bin")
    subprocess.run([os.path.join(bin_dir, "pip"), "install", "-q", wheel[0]], check=True, timeout=600)
    demo = subprocess.run(
        [os.path.join(bin_dir, "sdplite"), "demo"], capture_output=True, text=True, timeout=120
    )
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.rstrip().endswith("done.")


def test_metrics_and_cdi_are_wired_through_the_daemonset() -> None:
    """The config turns both on; the pod exposes and announces the metrics port and mounts the CDI dir."""
    configmap = next(d for d in manifests() if d["kind"] == "ConfigMap")
    config = parse_config(json.loads(configmap["data"]["serve.json"]))
    daemonset = next(typed(d) for d in manifests() if d["kind"] == "DaemonSet")
    template = daemonset.spec.template
    container = template.spec.containers[0]
    (port,) = [p for p in container.ports if p.name == "metrics"]
    assert config.metrics_port == port.container_port
    assert template.metadata.annotations["prometheus.io/port"] == str(port.container_port)
    assert config.cdi and {m.mount_path for m in container.volume_mounts} >= {"/var/run/cdi"}
    assert {v.host_path.path for v in template.spec.volumes if v.host_path} >= {"/var/run/cdi"}
    with open(os.path.join(DEPLOY, "monitoring", "podmonitor.yaml")) as handle:
        monitor = yaml.safe_load(handle)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= template.metadata.labels.items()
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
