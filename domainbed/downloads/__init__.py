"""Where the benchmark's data comes from, and proof that it arrived whole.

`domainbed.datasets` only reads finished layouts; everything that fetches, converts or checks files
lives here so that a half-written or corrupt file can never reach a training run.
"""

from domainbed.downloads.integrity import CorruptFileError, FileSpec
from domainbed.downloads.mnist_files import ensure_mnist

__all__ = ["CorruptFileError", "FileSpec", "ensure_mnist"]
