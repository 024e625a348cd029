"""A DRA test bed: the kubelet's DRA side and an API server, in a temporary directory.

:class:`DraTestbed` starts a :class:`~.dra_emulator.DraKubeletEmulator` on a
registry directory and a :class:`~.apiserver.FakeAPIServer`, and gives
:func:`sdplite.dra.build` the keywords that point a driver at both
(:meth:`DraTestbed.options`). :meth:`DraTestbed.claim` stores an allocated
ResourceClaim the way the scheduler would, so a test can prepare it through
the emulator. pytest gets it as the ``sdplite_dra`` fixture.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any, Optional

from .apiserver import FakeAPIServer
from .dra_emulator import DraKubeletEmulator

__all__ = ["DraTestbed"]


class DraTestbed:
    """The kubelet's DRA side and an API server for ``node``; ``with DraTestbed() as bed: ...``."""

    def __init__(self, node: str = "node-1", directory: Optional[str] = None) -> None:
        self.node = node
        self._own_directory = directory is None
        # A short path: Unix socket paths must fit in 107 bytes.
        self.directory = directory or tempfile.mkdtemp(prefix="sdplite-dra-")
        self.registry_dir = os.path.join(self.directory, "plugins_registry")
        self.plugin_dir = os.path.join(self.directory, "plugins")
        self.api = FakeAPIServer(nodes=[node])
        self.kubelet = DraKubeletEmulator(self.registry_dir)

    def start(self) -> DraTestbed:
        os.makedirs(self.plugin_dir, exist_ok=True)
        self.api.start()
        self.kubelet.start()
        return self

    def stop(self) -> None:
        self.kubelet.stop()
        self.api.stop()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> DraTestbed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def options(self) -> dict[str, Any]:
        """Keywords for :func:`sdplite.dra.build`: this node, this API server, these directories
        (CDI specs go to ``<directory>/cdi``)."""
        from ..dra import KubeClient

        return {
            "node_name": self.node,
            "kube": KubeClient(self.api.url, token=self.api.token),
            "registry_dir": self.registry_dir,
            "plugin_dir": self.plugin_dir,
            "pod_uid": "",
            "cdi": os.path.join(self.directory, "cdi"),
        }

    def claim(
        self,
        driver: str,
        devices: Sequence[str],
        name: str = "claim",
        namespace: str = "default",
        request: str = "req",
        config: Sequence[dict[str, Any]] = (),
    ) -> tuple[str, str, str]:
        """Store a ResourceClaim allocated ``devices`` of ``driver`` on this node; return
        (namespace, uid, name), as the kubelet names it in NodePrepareResources."""
        results = [(request, d) for d in devices]
        uid = self.api.add_claim(namespace, name, driver, results, pool=self.node, config=config)
        return namespace, uid, name

    def prepare(self, driver: str, *claims: tuple[str, str, str]) -> dict[str, dict[str, Any]]:
        """NodePrepareResources through the emulated kubelet (see DraKubeletEmulator.prepare)."""
        return self.kubelet.prepare(driver, claims)

    def unprepare(self, driver: str, *claims: tuple[str, str, str]) -> dict[str, str]:
        return self.kubelet.unprepare(driver, claims)
