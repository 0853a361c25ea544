"""A loss family added from outside the package, as one file: installed with an entry point of
the `domainbed_itl.loss_families` group, it is meta-learned by `meta_train --family`, read back
as a learned-loss file, and deployed by a two-step `train --hparams` of its own ERM_<suffix>.

The plugin lives in a temporary directory on PYTHONPATH beside a dist-info folder naming its
entry point, which is how a pip-installed package announces one; every command runs in a
fresh process, as a user or a sweep would run it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

PLUGIN = '''"""Temperature-scaled cross-entropy, w = (a, t): a * CE(t * logits)."""
import torch
import torch.nn.functional as F
from torch import nn

from domainbed_itl.losses.families import LossFamily


class ScaledCE(nn.Module):
    def __init__(self, scale, temperature, reduction="mean"):
        super().__init__()
        self.scale, self.temperature, self.reduction = scale, temperature, reduction

    def forward(self, logits, targets):
        return self.scale * F.cross_entropy(self.temperature * logits, targets,
                                            reduction=self.reduction)


FAMILY = LossFamily(
    name="tce", suffix="TCE", bases=("ERM",), keys=("tce_scale", "tce_temperature"),
    default=(1.0, 1.0), size=lambda order: 2,
    loss=lambda logits, targets, w, order: w[0] * F.cross_entropy(w[1] * logits, targets),
    module=lambda parameters, order, reduction: ScaledCE(*parameters, reduction),
    starts={"ce_like": lambda order, classes, generator: torch.tensor([1.0, 1.0]),
            "random": lambda order, classes, generator: 0.5 + torch.rand(2, generator=generator)},
)
'''

TINY = ["--hidden", "16", "--inner_steps", "5", "--hessian_batch", "32", "--val_batch", "64",
        "--eval_examples", "50", "--neumann_terms", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """An environment whose Python finds the plugin module and its entry point."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "tce_family.py").write_text(PLUGIN)
    info = root / "tce_family-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tce-family\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[domainbed_itl.loss_families]\ntce = tce_family:FAMILY\n")
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_a_family_from_one_file_is_meta_learned_and_deployed(plugin_env, mnist_dir, tmp_path):
    meta = tmp_path / "meta"
    run(plugin_env, "-m", "domainbed_itl.scripts.meta_train", "--family", "tce", "--init", "random",
        "--data_dir", str(mnist_dir), "--output_dir", str(meta), "--surgery", "mean",
        "--outer_steps", "1", "--exclude_envs", "0", *TINY)
    learned = json.loads((meta / "learned_loss.json").read_text())
    assert set(learned) == {"tce_scale", "tce_temperature"}
    assert all(math.isfinite(v) for v in learned.values())

    read = run(plugin_env, "-c", "import sys; from domainbed_itl.losses.learned import "
               "LearnedLoss; loss = LearnedLoss.from_file(sys.argv[1]); "
               "print(loss.family, loss.deployment()[0], type(loss.module()).__name__)",
               str(meta / "learned_loss.json"))
    assert read.stdout.split() == ["tce", "ERM_TCE", "ScaledCE"]

    out = tmp_path / "train"
    run(plugin_env, "-m", "domainbed.scripts.train", "--dataset", "Debug28", "--algorithm",
        "ERM_TCE", "--steps", "2", "--output_dir", str(out), "--skip_model_save",
        "--hparams", json.dumps({"batch_size": 8, **learned}))
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]
    assert {k: records[-1]["hparams"][k] for k in learned} == learned
    assert all(math.isfinite(r["loss"]) for r in records)


def test_a_family_is_refused_without_its_entry_point(tmp_path):
    """The same command without the plugin installed: a usage error naming the choices."""
    done = subprocess.run([sys.executable, "-m", "domainbed_itl.scripts.meta_train",
                           "--family", "tce",
                           "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "invalid choice: 'tce'" in done.stderr and "'taylor'" in done.stderr
