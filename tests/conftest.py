"""Shared fixtures: real MNIST, prepared once per test session through the project's own chain.

The data lives in `<repo>/data` (git-ignored, the same place `make demo` uses) unless
$DOMAINBED_TEST_DATA names another directory, so repeated runs reuse verified files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from domainbed.downloads.mnist_files import ensure_mnist

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """A data_dir whose MNIST/raw holds the four MD5-verified IDX files."""
    data_dir = Path(os.environ.get("DOMAINBED_TEST_DATA", REPO_ROOT / "data"))
    return ensure_mnist(data_dir)


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """Commands run in-process (`main(argv)`) may set torch's thread count for their process,
    as `--threads` asks; a later test comparing bit for bit with a subprocess, which starts with
    the default count, would then see other float rounding. Each test starts from the count the
    session started with."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def one_thread():
    """One torch thread for the meta-learning tests: their models are tiny, one thread avoids
    OpenMP spin-waits on shared cores, and it adds floats in the order a one-CPU Ray task does."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rmnist(mnist_dir):
    """RotatedMNIST's six real domains, loaded once per test module."""
    from domainbed_itl.meta import data as meta_data

    return meta_data.load_domains("RotatedMNIST", str(mnist_dir), 0)
