"""Test device plugins without a node: a kubelet emulator and a pytest fixture.

``KubeletEmulator`` serves ``kubelet.sock`` in a directory and treats plugins
as the kubelet does. With sdplite installed, pytest also gets the
``sdplite_kubelet`` fixture: a running emulator in a temporary directory.
For DRA drivers, :mod:`.dra` has ``DraTestbed`` (the kubelet's DRA side,
:mod:`.dra_emulator`, and an API server, :mod:`.apiserver`), which pytest
gets as the ``sdplite_dra`` fixture.
"""

from .emulator import Admission, KubeletEmulator, Resource

__all__ = ["Admission", "KubeletEmulator", "Resource"]
