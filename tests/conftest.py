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
    """The folder holding MNIST, looked up as the library does: $MIRACLE_DATA, then the cache
    (where `scripts/test` fetches the datasets when $MIRACLE_DATA is not set)."""
    for root in (os.environ.get("MIRACLE_DATA"), data.cache_dir()):
        if root and data.is_available("mnist", root):
            return Path(root)
    pytest.fail("MNIST not found in $MIRACLE_DATA or the cache: run `miracle data fetch`")


@pytest.fixture(scope="session")
def mnist_train(mnist_root):
    return data.load("mnist", "train", mnist_root)


@pytest.fixture(scope="session")
def mnist_test(mnist_root):
    return data.load("mnist", "test", mnist_root)
