"""One type for a learned loss (domainbed_itl.losses.learned.LearnedLoss): its JSON round trip,
the --hparams form the training engine accepts, deployment of a Taylor and of an iSCE result
learned on real RotatedMNIST, one clear line for every malformed file, and the shipped presets."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from domainbed import hparams_registry
from domainbed_itl.algorithms.variants import VARIANTS
from domainbed_itl.deployment import domainbed_protocol
from domainbed_itl.deployment.candidates import learned_candidate
from domainbed_itl.losses import ITL_OMEGA, n_taylor_params
from domainbed_itl.losses.learned import (
    LearnedLoss,
    LearnedLossError,
    preset_provenance,
    presets,
)
from domainbed_itl.meta.families import make_family
from domainbed_itl.scripts import compare_losses, meta_train, plot_losses

TINY = ["--hidden", "16", "--inner_steps", "5", "--hessian_batch", "32", "--val_batch", "64",
        "--eval_examples", "50", "--neumann_terms", "2", "--threads", "1"]


def _losses() -> list[LearnedLoss]:
    g = torch.Generator().manual_seed(0)
    taylors = [LearnedLoss("taylor", tuple(torch.randn(n_taylor_params(k), generator=g).tolist()),
                           k) for k in (2, 3, 4, 5)]
    return [*taylors, LearnedLoss("isce", (0.7, 0.25))]


@pytest.mark.parametrize("loss", _losses(), ids=lambda loss: loss.describe())
def test_round_trip_through_json_and_the_engine_accepts_the_file_as_hparams(tmp_path, loss):
    path = tmp_path / "learned_loss.json"
    path.write_text(loss.to_json())
    assert LearnedLoss.from_file(path) == loss
    hparams = json.loads(path.read_text())
    assert hparams == loss.hparams()
    algorithm, deployed = loss.deployment()
    assert deployed == hparams
    assert algorithm == {"taylor": "ERM_ITL", "isce": "ERM_iSCE"}[loss.family]
    # The flat object is what `train --hparams` validates and what the algorithm builds its loss
    # from; that loss computes what the learned one does.
    hparams_registry.validate_overrides(algorithm, "RotatedMNIST", hparams)
    full = {**hparams_registry.default_hparams(algorithm, "RotatedMNIST"), **hparams}
    engine_loss = VARIANTS[algorithm].loss.build(full)
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(32, 10, generator=g), torch.randint(10, (32,), generator=g)
    torch.testing.assert_close(engine_loss(logits, labels), loss.module()(logits, labels))


def test_the_families_write_learned_losses_that_read_back():
    w = torch.linspace(-1.0, 1.0, n_taylor_params(3))
    taylor = make_family("taylor", 3).learned(w)
    assert (taylor.family, taylor.order) == ("taylor", 3)
    assert taylor.hparams() == {"itl_omega": [float(v) for v in w], "itl_order": 3}
    assert make_family("taylor", 4).learned(torch.tensor(ITL_OMEGA)).hparams() == {
        "itl_omega": [float(torch.tensor(v)) for v in ITL_OMEGA]}
    isce = make_family("isce").learned(torch.tensor([0.5, 2.0]))
    assert isce == LearnedLoss("isce", (0.5, 2.0)) and isce.order is None


@pytest.mark.parametrize(("make", "message"), [
    (lambda: LearnedLoss("taylor", (1.0, 2.0)), "needs 12 parameters, got 2"),
    (lambda: LearnedLoss("taylor", (1.0,) * 5, 1), "itl_order must be an integer >= 2"),
    (lambda: LearnedLoss("isce", (1.0, math.nan)), "must be finite"),
    (lambda: LearnedLoss("isce", (1.0, 2.0), 4), "has no order"),
    (lambda: LearnedLoss("focal", (1.0,)), "unknown loss family"),
])
def test_an_invalid_learned_loss_cannot_be_made(make, message):
    with pytest.raises(LearnedLossError, match=message):
        make()


@pytest.mark.parametrize(("content", "message"), [
    ("{broken", "cannot read learned loss"),
    (json.dumps([1.0, 2.0]), "expected a JSON object of hyperparameters, got list"),
    (json.dumps({"lr": 0.1}), "has no 'itl_omega'"),
    (json.dumps({"itl_omega": ITL_OMEGA, "isce_alpha": 1.0, "isce_beta": 0.0}), "has both"),
    (json.dumps({"isce_alpha": 1.0}), "isce_beta is missing"),
    (json.dumps({"isce_alpha": 1.0, "isce_beta": "x"}), "must hold numbers only"),
    (json.dumps({"isce_alpha": 1.0, "isce_beta": 0.5, "itl_order": 4}),
     "holds itl_order, which ERM_iSCE does not take"),
    (json.dumps({"itl_omega": ITL_OMEGA, "itl_order": True}), "itl_order must be an integer"),
])
def test_a_malformed_file_is_one_clear_line_in_every_reader(tmp_path, capsys, content, message):
    bad = tmp_path / "learned_loss.json"
    bad.write_text(content)
    out = tmp_path / "compare"
    assert compare_losses.main(["--output_dir", str(out), "--learned", f"x={bad}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("compare_losses: error: ") and message in line
    assert str(bad) in line and "learned_loss.json that domainbed_itl.scripts.meta_train" in line
    assert not out.exists()
    png = tmp_path / "fig.png"
    assert plot_losses.main(["--out", str(png), "--learned", str(bad)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("plot_losses: error: --learned ") and message in line
    assert not png.exists()


@pytest.fixture(scope="module")
def isce_learned(mnist_dir, tmp_path_factory):
    """An iSCE loss meta-learned for one outer step on real RotatedMNIST (env 0 held back)."""
    out = tmp_path_factory.mktemp("isce") / "meta"
    assert meta_train.main(["--data_dir", str(mnist_dir), "--output_dir", str(out),
                            "--family", "isce", "--surgery", "mean", "--outer_steps", "1",
                            "--exclude_envs", "0", *TINY]) == 0
    return out / "learned_loss.json"


def test_an_isce_result_deploys_with_erm_isce_and_plots(isce_learned, tmp_path, capsys):
    learned = LearnedLoss.from_file(isce_learned)
    assert learned.family == "isce" and learned.parameters != (1.0, 0.0)  # w moved
    entry = learned_candidate(f"isce={isce_learned}")
    assert (entry.label, entry.algorithm) == ("isce", "ERM_iSCE")
    assert entry.hparams == json.loads(isce_learned.read_text())

    # The whole comparison on a small real dataset: CE, published ITL and the learned iSCE.
    out = tmp_path / "compare"
    assert compare_losses.main(["--dataset", "Debug28", "--output_dir", str(out),
                                "--test_envs", "0", "--steps", "2", "--quiet",
                                "--learned", f"isce={isce_learned}"]) == 0
    report = capsys.readouterr().out
    assert "| isce | " in report
    (record,) = [r for r in (json.loads(p.read_text().splitlines()[-1])
                             for p in out.glob("*/results.jsonl"))
                 if r["args"]["algorithm"] == "ERM_iSCE"]
    assert record["args"]["algorithm"] == "ERM_iSCE"
    assert (record["hparams"]["isce_alpha"], record["hparams"]["isce_beta"]) == \
        learned.parameters

    png = tmp_path / "fig5.png"
    assert plot_losses.main(["--out", str(png), "--learned", str(isce_learned)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_an_isce_result_trains_on_real_rotated_mnist(isce_learned, mnist_dir, tmp_path):
    """The train command compare_losses builds for the learned iSCE, on RotatedMNIST itself."""
    entry = learned_candidate(f"isce={isce_learned}")
    args = compare_losses.build_parser().parse_args([
        "--output_dir", str(tmp_path), "--data_dir", str(mnist_dir), "--steps", "2"])
    (run,) = domainbed_protocol.plan(args, [entry])
    os.makedirs(run.job.output_dir)
    subprocess.run(run.job.command_str, shell=True, check=True,
                   stdout=subprocess.DEVNULL, timeout=1800)
    record = json.loads(Path(run.job.output_dir, "results.jsonl").read_text().splitlines()[-1])
    assert record["args"]["dataset"] == "RotatedMNIST" and record["step"] == 1
    assert record["hparams"]["isce_alpha"] == LearnedLoss.from_file(isce_learned).parameters[0]
    assert all(0.0 <= record[f"env{e}_in_acc"] <= 1.0 for e in range(6))


REPO_ROOT = Path(__file__).resolve().parents[3]


def test_the_shipped_preset_is_the_run_its_provenance_names():
    assert "rmnist-ift" in presets()
    for name in presets():
        provenance = preset_provenance(name)
        assert {"summary", "source", "command", "budget", "date", "meta"} <= set(provenance)
        meta = provenance["meta"]
        assert set(meta) == {"dataset", "seed", "exclude_envs", "family", "order",
                             "outer_steps", "run_dir"}
        loss = LearnedLoss.from_file(f"preset:{name}")
        assert (loss.family, loss.order) == (meta["family"], meta["order"])
    shipped = preset_provenance("rmnist-ift")
    # The shipped preset is the Fig. 4 run's loss, meta-trained without environment 0.
    assert LearnedLoss.from_file("preset:rmnist-ift") == LearnedLoss.from_file(
        REPO_ROOT / shipped["source"])
    run_dir = REPO_ROOT / shipped["meta"]["run_dir"]
    assert len((run_dir / "log.jsonl").read_text().splitlines()) == shipped["meta"][
        "outer_steps"] == 100
    assert shipped["meta"]["exclude_envs"] == [0] and "--exclude_envs 0" in shipped["command"]


def test_an_unknown_preset_is_one_line_naming_the_shipped_ones(tmp_path, capsys):
    with pytest.raises(LearnedLossError, match="unknown preset 'nope'.*rmnist-ift"):
        LearnedLoss.from_file("preset:nope")
    out = tmp_path / "compare"
    assert compare_losses.main(["--output_dir", str(out), "--learned", "x=preset:nope"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("compare_losses: error: unknown preset 'nope'")
    assert "rmnist-ift" in line and not out.exists()


@pytest.mark.slow
def test_the_presets_are_in_the_wheel(tmp_path):
    """setup.cfg ships every preset and its provenance (built from a copy of the sources, so
    the work tree gets no build folder)."""
    src = tmp_path / "src"
    for name in ("domainbed", "domainbed_itl"):
        shutil.copytree(REPO_ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", str(src), "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in presets():
        for suffix in (".json", ".provenance.json"):
            assert f"domainbed_itl/losses/presets/{name}{suffix}" in names
