"""sdplite against grpc-go, the kubelet's own gRPC library (Debian's grpc-go 1.33).

The peer is tests/interop/go, built by tests/interop/build_go.sh (cached under
~/.cache/sdplite/interop). The cases are the shared specification in
tests/interop/spec.py; grpc-go's BDP estimator supplies the window-size
changes by itself.
"""

from __future__ import annotations

import pytest
from interop.spec import *  # noqa: F403  (the shared cases, collected here against grpc-go)


@pytest.fixture
def kind() -> str:
    return "go"


from interop.spec_dra import *  # noqa: F403,E402  (the DRA cases: grpc-go plays the kubelet's DRA side)
