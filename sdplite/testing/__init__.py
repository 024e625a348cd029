"""Test device plugins without a node: a kubelet emulator and a pytest fixture.

``KubeletEmulator`` serves ``kubelet.sock`` in a directory and treats plugins
as the kubelet does. With sdplite installed, pytest also gets the
``sdplite_kubelet`` fixture: a running emulator in a temporary directory.
For DRA drivers, :mod:`.dra` has ``DraTestbed`` (the kubelet's DRA side,
:mod:`.dra_emulator`, and an API server, :mod:`.apiserver`), which pytest
gets as the ``sdplite_dra`` fixture.
"""

from typing import TYPE_CHECKING, Any

from .emulator import Admission, KubeletEmulator, Resource

if TYPE_CHECKING:
    from .apiserver import FakeAPIServer
    from .dra import DraTestbed
    from .dra_emulator import DraKubeletEmulator

__all__ = ["Admission", "DraKubeletEmulator", "DraTestbed", "FakeAPIServer", "KubeletEmulator", "Resource"]

_LAZY = {"FakeAPIServer": ".apiserver", "DraTestbed": ".dra", "DraKubeletEmulator": ".dra_emulator"}


def __getattr__(name: str) -> Any:
    # The DRA pieces load on first use: a device-plugin test run does not need
    # http.server and the DRA messages.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
