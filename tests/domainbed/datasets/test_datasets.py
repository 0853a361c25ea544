"""The dataset classes on real MNIST and on small image trees laid out like the real benchmarks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torchvision.datasets import MNIST

from domainbed import datasets
from domainbed.datasets.folders import load_rgb
from domainbed.datasets.mnist import rotate_like_pil
from domainbed.datasets.multiple_domain import DataUnavailableError
from domainbed.downloads.layouts import LAYOUTS

# Protocol constants of the public DomainBed: (environments, N_STEPS, CHECKPOINT_FREQ, N_WORKERS,
# input shape).
UPSTREAM = {
    "Debug28": (["0", "1", "2"], 5001, 100, 8, (3, 28, 28)),
    "Debug224": (["0", "1", "2"], 5001, 100, 8, (3, 224, 224)),
    "ColoredMNIST": (["+90%", "+80%", "-90%"], 5001, 100, 8, (2, 28, 28)),
    "RotatedMNIST": (["0", "15", "30", "45", "60", "75"], 5001, 100, 8, (1, 28, 28)),
    "VLCS": (["C", "L", "S", "V"], 5001, 300, 8, (3, 224, 224)),
    "PACS": (["A", "C", "P", "S"], 5001, 300, 8, (3, 224, 224)),
    "OfficeHome": (["A", "C", "P", "R"], 5001, 300, 8, (3, 224, 224)),
    "TerraIncognita": (["L100", "L38", "L43", "L46"], 5001, 300, 8, (3, 224, 224)),
    "DomainNet": (
        ["clip", "info", "paint", "quick", "real", "sketch"],
        5001,
        1000,
        8,
        (3, 224, 224),
    ),
    "WILDSCamelyon": ([f"hospital_{i}" for i in range(5)], 5001, 100, 8, (3, 224, 224)),
    "WILDSFMoW": ([f"region_{i}" for i in range(6)], 5001, 100, 8, (3, 224, 224)),
}
FOLDER_DATASETS = ["VLCS", "PACS", "OfficeHome", "TerraIncognita", "DomainNet"]


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_protocol_constants_match_upstream(name):
    cls = datasets.get_dataset_class(name)
    envs, n_steps, checkpoint_freq, n_workers, shape = UPSTREAM[name]
    assert (cls.ENVIRONMENTS, cls.N_STEPS, cls.CHECKPOINT_FREQ, cls.N_WORKERS) == (
        envs,
        n_steps,
        checkpoint_freq,
        n_workers,
    )
    assert tuple(cls.INPUT_SHAPE) == shape
    assert datasets.num_environments(name) == len(envs)


@pytest.mark.parametrize("name", ["Debug28", "Debug224"])
def test_debug_datasets_are_seeded_noise(name):
    torch.manual_seed(3)
    first = datasets.get_dataset_class(name)(None, [0], {})
    torch.manual_seed(3)
    again = datasets.get_dataset_class(name)(None, [0], {})
    assert len(first) == 3 and first.num_classes == 2
    for a, b in zip(first.datasets, again.datasets, strict=True):
        assert a.tensors[0].shape == (16, *first.input_shape)
        assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    assert not torch.equal(first.datasets[0].tensors[0], first.datasets[1].tensors[0])


# --- MNIST ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_pool(mnist_dir):
    parts = [MNIST(str(mnist_dir), train=t, download=False) for t in (True, False)]
    return torch.cat([p.data for p in parts]), torch.cat([p.targets for p in parts])


@pytest.fixture(scope="module")
def rotated(mnist_dir):
    torch.manual_seed(0)
    return datasets.get_dataset_class("RotatedMNIST")(str(mnist_dir), [0], {})


@pytest.fixture(scope="module")
def colored(mnist_dir):
    torch.manual_seed(0)
    return datasets.get_dataset_class("ColoredMNIST")(str(mnist_dir), [0], {})


def _dealt(pool, n_envs: int, seed: int = 0):
    """Replay the documented split: one randperm of the pooled digits, dealt round-robin."""
    images, labels = pool
    torch.manual_seed(seed)
    order = torch.randperm(len(images))
    return [(images[order][i::n_envs], labels[order][i::n_envs]) for i in range(n_envs)]


def _pil_rotate(image: torch.Tensor, degrees: float) -> torch.Tensor:
    rotated = Image.fromarray(image.numpy(), mode="L").rotate(degrees, Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(rotated))


def test_rotated_mnist_environments(rotated, mnist_pool):
    assert [len(env) for env in rotated.datasets] == [11667] * 4 + [11666] * 2
    assert rotated.input_shape == (1, 28, 28) and rotated.num_classes == 10
    expected = _dealt(mnist_pool, 6)
    for env, (images, labels), angle in zip(
        rotated.datasets, expected, range(0, 90, 15), strict=True
    ):
        x, y = env.tensors
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
        assert torch.equal(y, labels)
        pixels = x.squeeze(1) * 255
        assert torch.equal(pixels, pixels.round())
        if angle == 0:
            assert torch.equal(pixels.to(torch.uint8), images)
        else:
            assert not torch.equal(pixels.to(torch.uint8), images)
            # Pillow, image by image, is the reference the public DomainBed uses.
            for i in (0, 1, 2, len(images) - 1):
                assert torch.equal(pixels[i].to(torch.uint8), _pil_rotate(images[i], angle))


@pytest.mark.parametrize("degrees", [15, 45, 90, 180, 270, -33.3, 400.0])
def test_batched_rotation_matches_pillow_pixel_for_pixel(degrees):
    generator = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (12, 28, 28), dtype=torch.uint8, generator=generator)
    ours = rotate_like_pil(images, degrees)
    assert torch.equal(ours, torch.stack([_pil_rotate(im, degrees) for im in images]))


def test_colored_mnist_environments(colored, mnist_pool):
    assert [len(env) for env in colored.datasets] == [23334, 23333, 23333]
    assert colored.input_shape == (2, 28, 28) and colored.num_classes == 2
    expected = _dealt(mnist_pool, 3)
    for env, (images, digits), colour_flip in zip(
        colored.datasets, expected, (0.1, 0.2, 0.9), strict=True
    ):
        x, y = env.tensors
        assert x.shape[1:] == (2, 28, 28) and set(y.unique().tolist()) <= {0, 1}
        red, green = x[:, 0], x[:, 1]
        lit = (green.flatten(1).sum(1) > 0).long()  # which channel carries the digit
        assert torch.all((red.flatten(1).sum(1) > 0) != (green.flatten(1).sum(1) > 0))
        assert torch.equal(x.sum(1), images.float() / 255.0)
        # 25% label noise against digit < 5; colour disagrees with the label at the env's rate.
        label_noise = (y != (digits < 5).long()).float().mean().item()
        disagreement = (lit != y).float().mean().item()
        assert abs(label_noise - 0.25) < 0.015
        assert abs(disagreement - colour_flip) < 0.015


def test_colored_mnist_draws_noise_in_upstream_order(colored, mnist_pool):
    """Seed-for-seed compatibility: after the randperm, each environment draws its label noise,
    then its colour noise, from the global generator."""
    images, digits = mnist_pool
    torch.manual_seed(0)
    order = torch.randperm(len(images))
    for i, (env, colour_flip) in enumerate(zip(colored.datasets, (0.1, 0.2, 0.9), strict=True)):
        share = digits[order][i::3]
        label = (share < 5) ^ (torch.rand(len(share)) < 0.25)
        colour = label ^ (torch.rand(len(share)) < colour_flip)
        x, y = env.tensors
        assert torch.equal(y, label.long())
        assert torch.equal((x[:, 1].flatten(1).sum(1) > 0), colour)


def test_mnist_split_follows_the_global_seed(mnist_dir, colored):
    torch.manual_seed(1)
    other = datasets.get_dataset_class("ColoredMNIST")(str(mnist_dir), [0], {})
    assert not torch.equal(other.datasets[0].tensors[0], colored.datasets[0].tensors[0])


# --- image folders --------------------------------------------------------------------------


def _image_tree(root: Path, name: str, n_classes: int = 3, per_class: int = 2) -> Path:
    layout = LAYOUTS[name]
    for d, domain in enumerate(layout.domains):
        for c in range(n_classes):
            folder = root / layout.folder / domain / f"class_{c}"
            folder.mkdir(parents=True)
            for k in range(per_class):
                colour = (40 * c, 60 * d, 20 * k)
                Image.new("RGB", (40 + 3 * k, 30 + d), colour).save(folder / f"{k}.jpg")
    return root


@pytest.mark.parametrize("name", FOLDER_DATASETS)
def test_image_folder_datasets(tmp_path, name):
    root = _image_tree(tmp_path, name)
    dataset = datasets.get_dataset_class(name)(str(root), [0], {"data_augmentation": True})
    n_domains = len(LAYOUTS[name].domains)
    assert len(dataset) == n_domains and dataset.num_classes == 3
    assert dataset.input_shape == (3, 224, 224)
    assert [len(env) for env in dataset.datasets] == [6] * n_domains

    # Environment i is the i-th domain in sorted order; labels follow the sorted class folders.
    x, y = dataset[1][5]
    assert x.shape == (3, 224, 224) and y == 2
    assert Path(dataset[1].samples[0][0]).parts[-3] == sorted(LAYOUTS[name].domains)[1]

    # The test environment is deterministic and equals the plain resize + normalise...
    first, second = dataset[0][3][0], dataset[0][3][0]
    assert torch.equal(first, second)
    colour = torch.tensor([40 * 1, 0, 20 * 1]) / 255.0
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    centre = first[:, 100:120, 100:120].mean(dim=(1, 2))
    assert torch.allclose(centre, (colour - mean) / std, atol=0.03)
    # ...while training environments are augmented at random.
    torch.manual_seed(0)
    draws = [dataset[1][0][0] for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


def test_image_folders_without_augmentation_are_deterministic(tmp_path):
    root = _image_tree(tmp_path, "PACS")
    dataset = datasets.get_dataset_class("PACS")(str(root), [0], {"data_augmentation": False})
    assert torch.equal(dataset[2][1][0], dataset[2][1][0])


def test_wrong_number_of_domains_is_refused(tmp_path):
    root = _image_tree(tmp_path, "VLCS")
    (root / "VLCS" / "extra").mkdir()
    with pytest.raises(DataUnavailableError, match="5 domain folders"):
        datasets.get_dataset_class("VLCS")(str(root), [0], {"data_augmentation": False})


def test_domains_must_share_their_classes(tmp_path):
    root = _image_tree(tmp_path, "PACS")
    (root / "PACS" / "sketch" / "class_2").rename(root / "PACS" / "sketch" / "class_9")
    with pytest.raises(DataUnavailableError, match="class folders"):
        datasets.get_dataset_class("PACS")(str(root), [0], {"data_augmentation": False})


def test_truncated_jpeg_is_decoded_without_touching_the_global_flag(tmp_path):
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    with pytest.raises(OSError), Image.open(path) as image:
        image.load()
    assert load_rgb(str(path)).size == (128, 128)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- missing data ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in UPSTREAM if not n.startswith("Debug")])
def test_missing_data_gives_one_line_with_the_fix(tmp_path, name):
    with pytest.raises(DataUnavailableError) as info:
        datasets.get_dataset_class(name)(str(tmp_path), [0], {"data_augmentation": True})
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message
    family = "MNIST" if name.endswith("MNIST") else name
    assert f"python -m domainbed.scripts.download --data_dir {tmp_path} --datasets {family}" in (
        message
    )


def test_wilds_loader_asks_for_the_package_when_it_is_absent(tmp_path, monkeypatch):
    release = tmp_path / "camelyon17_v1.0" / "RELEASE_v1.0.txt"
    release.parent.mkdir()
    release.write_text("")
    monkeypatch.setitem(__import__("sys").modules, "wilds.datasets.camelyon17_dataset", None)
    with pytest.raises(ImportError, match="needs the wilds package"):
        datasets.get_dataset_class("WILDSCamelyon")(str(tmp_path), [0], {})


def test_wilds_loader_reports_an_incomplete_download(tmp_path):
    pytest.importorskip("wilds", reason="the wilds extra is not installed "
                                        "(pip install 'domainbed-itl[wilds]')")
    release = tmp_path / "fmow_v1.1" / "RELEASE_v1.1.txt"
    release.parent.mkdir()
    release.write_text("")
    with pytest.raises(DataUnavailableError, match="is incomplete") as info:
        datasets.get_dataset_class("WILDSFMoW")(str(tmp_path), [0], {})
    assert "\n" not in str(info.value) and "--datasets WILDSFMoW" in str(info.value)


class _FakeWilds:
    """Just the surface of a WILDS dataset that the loader reads."""

    metadata_fields = ["hospital", "slide", "y"]
    n_classes = 2

    def __init__(self, root_dir: str) -> None:
        self.metadata_array = torch.tensor([[2, 0, 1], [0, 0, 0], [2, 1, 0], [4, 1, 1], [0, 2, 1]])
        self.y_array = self.metadata_array[:, 2]

    def get_input(self, index):
        return np.full((8, 8, 3), 10 * int(index), dtype=np.uint8)


def test_wilds_environments_split_by_metadata(tmp_path, monkeypatch):
    release = tmp_path / "camelyon17_v1.0" / "RELEASE_v1.0.txt"
    release.parent.mkdir()
    release.write_text("")
    cls = datasets.get_dataset_class("WILDSCamelyon")
    monkeypatch.setattr(cls, "_wilds_class", lambda self: _FakeWilds)
    dataset = cls(str(tmp_path), [0], {"data_augmentation": False})
    assert [env.name for env in dataset.datasets] == ["hospital_0", "hospital_2", "hospital_4"]
    assert [env.indices.tolist() for env in dataset.datasets] == [[1, 4], [0, 2], [3]]
    x, y = dataset[1][1]
    assert x.shape == (3, 224, 224) and int(y) == 0
    assert dataset.num_classes == 2
