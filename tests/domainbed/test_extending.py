"""Extending the engine takes one file: a module that defines an algorithm and a dataset,
declared as a `domainbed.plugins` entry point, trains with the unmodified command line.

The test writes the module into a temporary folder with the entry point metadata that
`pip install` would write for it, puts the folder on PYTHONPATH and runs
`python -m domainbed.scripts.train` in a subprocess.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

EXTENSION = '''
"""An algorithm and a dataset in one file."""

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from domainbed.algorithms import register_algorithm
from domainbed.algorithms.erm import ERM
from domainbed.datasets import register_dataset
from domainbed.datasets.multiple_domain import MultipleDomainDataset
from domainbed.lib.hparam_space import POSITIVE, HParamSpace, register_hparams


@register_hparams("ERM_Brier")
def _space(space: HParamSpace) -> None:
    space.add("brier_scale", 2.0, lambda r: 10 ** r.uniform(-1, 1), POSITIVE)


@register_algorithm
class ERM_Brier(ERM):
    """ERM with the (scaled) Brier score as its loss: one method overridden, ERM's update kept."""

    def classification_loss(self, logits, y):
        target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        return self.hparams["brier_scale"] * ((F.softmax(logits, 1) - target) ** 2).sum(1).mean()


@register_dataset
class Stripes(MultipleDomainDataset):
    """Horizontal (label 0) or vertical (label 1) stripes; each domain its own stripe colour."""

    ENVIRONMENTS = ["red", "green", "blue"]
    INPUT_SHAPE = (3, 28, 28)
    SMALL_IMAGES = True

    def __init__(self, root, test_envs, hparams):
        super().__init__()
        self.input_shape = self.INPUT_SHAPE
        self.num_classes = 2
        generator = torch.Generator().manual_seed(0)
        self.datasets = []
        for colour in range(len(self.ENVIRONMENTS)):
            labels = torch.randint(0, 2, (40,), generator=generator)
            rows = (torch.arange(28) % 4 < 2).float()
            horizontal = rows[:, None].expand(28, 28)
            images = torch.zeros(40, 3, 28, 28)
            images[:, colour] = torch.where(labels[:, None, None] == 0, horizontal,
                                            horizontal.T)
            self.datasets.append(TensorDataset(images, labels))
'''


@pytest.fixture(scope="module")
def extension(tmp_path_factory) -> Path:
    """A folder holding the one-file extension and the entry point a pip install declares."""
    folder = tmp_path_factory.mktemp("extension")
    (folder / "my_extension.py").write_text(EXTENSION)
    info = folder / "my_extension-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-extension\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[domainbed.plugins]\nmine = my_extension\n")
    return folder


def train(extension: Path, out: Path, *args: str) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(extension), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-m", "domainbed.scripts.train", *args, "--steps", "2",
         "--output_dir", str(out), "--skip_model_save"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_a_new_algorithm_trains_from_its_one_file(extension, tmp_path):
    records = train(extension, tmp_path / "run", "--dataset", "Debug28",
                    "--algorithm", "ERM_Brier", "--hparams", json.dumps({"batch_size": 8}))
    assert [r["step"] for r in records] == [0, 1]
    assert records[-1]["hparams"]["brier_scale"] == 2.0
    # The Brier score of two classes, times 2, lies in [0, 4].
    assert all(0 <= r["loss"] <= 4 for r in records)


def test_a_new_dataset_trains_from_its_one_file(extension, tmp_path):
    records = train(extension, tmp_path / "run", "--dataset", "Stripes", "--algorithm", "ERM",
                    "--test_envs", "2", "--hparams", json.dumps({"batch_size": 8}))
    assert [r["step"] for r in records] == [0, 1]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert all(0 <= records[-1][f"env{env}_{split}_acc"] <= 1
               for env in range(3) for split in ("in", "out"))
    assert (tmp_path / "run" / "done").exists()
    # SMALL_IMAGES = True gave it the optimiser defaults of DomainBed's MNIST datasets.
    assert records[-1]["hparams"]["lr"] == 1e-3

