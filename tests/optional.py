"""Optional dependencies in tests: skipped where absent, required where CI installs them."""

import importlib
import os

import pytest


def torch_or_skip():
    """``torch``; where it is missing the test skips, unless ``RNN_JAX_REQUIRE_TORCH`` is set (CI
    installs the torch extra and sets it, so there a missing torch is an error, not a skip)."""
    if os.environ.get("RNN_JAX_REQUIRE_TORCH", "").strip().lower() not in ("", "0", "false", "no"):
        return importlib.import_module("torch")
    return pytest.importorskip("torch")
