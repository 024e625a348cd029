"""Test device plugins without a node: a kubelet emulator and a pytest fixture.

``KubeletEmulator`` serves ``kubelet.sock`` in a directory and treats plugins
as the kubelet does. With sdplite installed, pytest also gets the
``sdplite_kubelet`` fixture: a running emulator in a temporary directory.
"""

from .emulator import Admission, KubeletEmulator, Resource

__all__ = ["Admission", "KubeletEmulator", "Resource"]
