"""sdplite against @grpc/grpc-js on Node.js.

The peer is tests/interop/js/peer.js; its packages come from `npm ci` in
tests/interop/js. The cases are the shared specification in
tests/interop/spec.py; grpc-js has no BDP estimator, so its peer changes its
window size mid-stream on purpose when a case asks for it.
"""

from __future__ import annotations

import pytest
from interop.spec import *  # noqa: F403  (the shared cases, collected here against grpc-js)


@pytest.fixture
def kind() -> str:
    return "js"
