import os
import sys
from pathlib import Path

import pytest

from miracle import data


def run_cli(*args: str, env: dict | None = None, timeout: float = 600):
    """Run ``python -m miracle ARGS`` in a subprocess; returns the CompletedProcess."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "miracle", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    root = os.environ.get("MIRACLE_DATA")
    if not root or not data.is_available("mnist", root):
        pytest.fail("MNIST not found: set MIRACLE_DATA (scripts/test does) or run `miracle data fetch`")
    return Path(root)


@pytest.fixture(scope="session")
def mnist_train(mnist_root):
    return data.load("mnist", "train", mnist_root)


@pytest.fixture(scope="session")
def mnist_test(mnist_root):
    return data.load("mnist", "test", mnist_root)
