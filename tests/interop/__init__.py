"""Interop peers (grpc-go, grpc-js) and the tests both are held to (spec.py)."""

import pytest

# spec.py holds test functions (collected through test_interop_*.py): give
# them, and the helpers' asserts, pytest's detailed assertion messages.
pytest.register_assert_rewrite("interop.spec", "interop.peers")
