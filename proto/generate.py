#!/usr/bin/env python3
"""Generate ``sdplite/api/*_pb2.py`` and ``*_pb2.pyi`` from the ``.proto`` files here.

    python proto/generate.py            # regenerate, write into sdplite/api/
    python proto/generate.py --check    # regenerate into a temp dir, fail if sdplite/api/ differs

The compiler is the protoc bundled in the ``grpcio-tools`` version pinned in
``proto/requirements.txt``, with mypy-protobuf's ``protoc-gen-mypy`` for the
stubs. Those pins need an older protobuf than sdplite's dev venv has, so this
script installs them into a venv of their own (made once, then reused; see
``--tools-venv``) and runs protoc from there. The interpreter running this
script needs nothing but the standard library.

Each source is staged as ``sdplite/api/<module>.proto`` under a temp include
root, so protoc names the outputs ``sdplite/api/<module>_pb2.py``, registers the
files under those unique paths in protobuf's descriptor pool, and the modules'
classes report ``sdplite.api.<module>_pb2`` as their module. The output is
written exactly as protoc produced it: no post-processing.
"""

from __future__ import annotations

import argparse
import difflib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
REQUIREMENTS = PROTO_DIR / "requirements.txt"
OUT_PACKAGE = Path("sdplite") / "api"

# source under proto/  ->  module base name in sdplite/api/
SOURCES = {
    "v1beta1/api.proto": "deviceplugin",
    "pluginregistration/api.proto": "pluginregistration",
    "podresources/api.proto": "podresources",
    "dra/v1/api.proto": "dra_v1",
    "dra/v1beta1/api.proto": "dra_v1beta1",
    "dra-health/v1alpha1/api.proto": "drahealth_v1alpha1",
    "dra-health/v1/api.proto": "drahealth_v1",
}

# What the pinned grpcio-tools must report. Python output of newer protoc (35.1,
# for one) calls google.protobuf.runtime_version, which protobuf 4.25 lacks and
# which rejects runtimes older than the compiler; 25.1 matches the oldest runtime
# we support, and newer runtimes load its output.
EXPECTED_PROTOC = "libprotoc 25.1"
FORBIDDEN_IN_OUTPUT = "runtime_version"

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi")


class GenerateError(Exception):
    pass


def _requirements_digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]


def _default_tools_venv() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "sdplite" / f"proto-tools-{_requirements_digest()}"


def _venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=cwd)


def ensure_tools_venv(venv_dir: Path, base_python: str) -> Path:
    """Return the python of a venv holding proto/requirements.txt, making it if needed."""
    stamp = venv_dir / ".sdplite-requirements"
    digest = _requirements_digest()
    python = _venv_python(venv_dir)
    if stamp.is_file() and stamp.read_text().strip() == digest and python.exists():
        return python
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv_dir.parent / (venv_dir.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building the same venv
        if stamp.is_file() and stamp.read_text().strip() == digest and python.exists():
            return python
        print(f"generate.py: installing {REQUIREMENTS.relative_to(ROOT)} into {venv_dir}", file=sys.stderr)
        if venv_dir.exists():
            shutil.rmtree(venv_dir)
        made = _run([base_python, "-m", "venv", str(venv_dir)])
        if made.returncode != 0:
            raise GenerateError(f"could not create a venv with {base_python}:\n{made.stderr}")
        pip = [str(python), "-m", "pip", "--disable-pip-version-check", "install", "-q"]
        installed = _run([*pip, "-r", str(REQUIREMENTS)])
        if installed.returncode != 0:
            raise GenerateError(
                f"pip could not install {REQUIREMENTS}:\n{installed.stdout}{installed.stderr}\n"
                "(grpcio-tools 1.62.3 has wheels for CPython 3.7-3.12; pass --python with one of those)"
            )
        stamp.write_text(digest + "\n")
    return python


def check_tools(python: Path) -> Path:
    """Check the pinned protoc is there; return the protoc-gen-mypy plugin path."""
    version = _run([str(python), "-m", "grpc_tools.protoc", "--version"])
    found = version.stdout.strip()
    if version.returncode != 0 or found != EXPECTED_PROTOC:
        raise GenerateError(
            f"{python} -m grpc_tools.protoc --version gave {found or version.stderr.strip()!r}, "
            f"expected {EXPECTED_PROTOC!r}: install proto/requirements.txt"
        )
    plugin = python.parent / "protoc-gen-mypy"
    if not plugin.exists():
        raise GenerateError(f"{plugin} is missing: install proto/requirements.txt")
    return plugin


def generate(python: Path, plugin: Path, out_root: Path) -> dict[str, bytes]:
    """Run protoc on every source; return {file name: content} of the generated files."""
    with tempfile.TemporaryDirectory(prefix="sdplite-proto-") as tmp:
        include = Path(tmp) / "include"
        staged = include / OUT_PACKAGE
        staged.mkdir(parents=True)
        protos = []
        for source, module in SOURCES.items():
            shutil.copyfile(PROTO_DIR / source, staged / f"{module}.proto")
            protos.append((OUT_PACKAGE / f"{module}.proto").as_posix())
        out_root.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(python),
            "-m",
            "grpc_tools.protoc",
            "-I.",
            f"--plugin=protoc-gen-mypy={plugin}",
            f"--python_out={out_root}",
            f"--mypy_out={out_root}",
            *protos,
        ]
        result = _run(cmd, cwd=include)
        if result.returncode != 0:
            raise GenerateError(f"protoc failed:\n{result.stdout}{result.stderr}")
    produced: dict[str, bytes] = {}
    for module in SOURCES.values():
        for suffix in GENERATED_SUFFIXES:
            name = module + suffix
            path = out_root / OUT_PACKAGE / name
            if not path.is_file():
                raise GenerateError(f"protoc did not write {OUT_PACKAGE / name}")
            produced[name] = path.read_bytes()
        if FORBIDDEN_IN_OUTPUT.encode() in produced[module + "_pb2.py"]:
            raise GenerateError(
                f"{module}_pb2.py uses google.protobuf.{FORBIDDEN_IN_OUTPUT}, which protobuf 4.25 lacks: "
                "the pinned protoc is too new (see proto/README.md)"
            )
    return produced


def _stale(target: Path, produced: dict[str, bytes]) -> list[Path]:
    return sorted(
        p for p in target.iterdir() if p.name.endswith(GENERATED_SUFFIXES) and p.name not in produced
    )


def check(produced: dict[str, bytes], target: Path) -> list[str]:
    """Return a description of every difference between produced and target/."""
    problems = []
    for name, content in sorted(produced.items()):
        path = target / name
        rel = (OUT_PACKAGE / name).as_posix()
        if not path.is_file():
            problems.append(f"{rel}: missing")
            continue
        current = path.read_bytes()
        if current == content:
            continue
        diff = difflib.unified_diff(
            current.decode(errors="replace").splitlines(),
            content.decode(errors="replace").splitlines(),
            f"{rel} (committed)",
            f"{rel} (regenerated)",
            lineterm="",
        )
        lines = list(diff)
        shown = "\n".join(line[:200] for line in lines[:40])
        more = f"\n... {len(lines) - 40} more diff lines" if len(lines) > 40 else ""
        problems.append(f"{rel}: differs\n{shown}{more}")
    for path in _stale(target, produced):
        problems.append(f"{(OUT_PACKAGE / path.name).as_posix()}: not generated from any proto/ source")
    return problems


def write(produced: dict[str, bytes], target: Path) -> None:
    for name, content in produced.items():
        path = target / name
        if not path.is_file() or path.read_bytes() != content:
            path.write_bytes(content)
            print(f"wrote {(OUT_PACKAGE / name).as_posix()}")
    for path in _stale(target, produced):
        path.unlink()
        print(f"removed {(OUT_PACKAGE / path.name).as_posix()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temp dir and exit 1 if sdplite/api/ differs from it",
    )
    parser.add_argument(
        "--tools-venv",
        type=Path,
        default=Path(os.environ["SDPLITE_PROTO_TOOLS_VENV"])
        if os.environ.get("SDPLITE_PROTO_TOOLS_VENV")
        else None,
        help="venv for the pinned tools (default: $SDPLITE_PROTO_TOOLS_VENV, else "
        "~/.cache/sdplite/proto-tools-<hash of requirements.txt>); made if missing",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter that makes the tools venv (default: this one); needs CPython <= 3.12",
    )
    parser.add_argument(
        "--no-venv",
        action="store_true",
        help="run the tools from --python itself, which must already have proto/requirements.txt",
    )
    args = parser.parse_args(argv)

    target = ROOT / OUT_PACKAGE
    try:
        if args.no_venv:
            python = Path(args.python)
        else:
            python = ensure_tools_venv(args.tools_venv or _default_tools_venv(), args.python)
        plugin = check_tools(python)
        with tempfile.TemporaryDirectory(prefix="sdplite-proto-out-") as out:
            produced = generate(python, plugin, Path(out))
    except GenerateError as exc:
        print(f"generate.py: {exc}", file=sys.stderr)
        return 2

    if args.check:
        problems = check(produced, target)
        if problems:
            print("generate.py --check: sdplite/api/ is not what proto/ generates:", file=sys.stderr)
            for problem in problems:
                print(problem, file=sys.stderr)
            print("run: python proto/generate.py", file=sys.stderr)
            return 1
        where = OUT_PACKAGE.as_posix()
        print(f"generate.py --check: the {len(produced)} generated files in {where}/ are up to date")
        return 0
    target.mkdir(parents=True, exist_ok=True)
    write(produced, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
