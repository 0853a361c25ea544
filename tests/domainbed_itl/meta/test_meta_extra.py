"""Meta-learning extras: leaving environments out, the CMA-ES baseline with its Fig. 4 plot, and
the hypergradient accuracy study, all on real MNIST with tiny settings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from domainbed_itl.meta import cma_run, cost_curves, ift_settings
from domainbed_itl.meta import data as meta_data
from domainbed_itl.meta.families import make_family
from domainbed_itl.meta.hypergrad_study import run_study
from domainbed_itl.meta.run_settings import run_config
from domainbed_itl.scripts import meta_cmaes, meta_curves, meta_train

TINY = ["--hidden", "16", "--inner_steps", "5", "--val_batch", "64", "--eval_examples", "50"]
TINY_IFT = [*TINY, "--hessian_batch", "32", "--neumann_terms", "2"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cached_loader(monkeypatch, rmnist):
    """Both CLIs load the data through meta.data.load_domains; reuse one load."""
    monkeypatch.setattr(meta_data, "load_domains", lambda *args: rmnist)


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_exclude_envs_meta_trains_on_the_rest_and_is_part_of_the_config(
    tmp_path, mnist_dir, cached_loader, capsys
):
    out = tmp_path / "ift"
    base = ["--data_dir", str(mnist_dir), "--output_dir", str(out), *TINY_IFT]
    assert meta_train.main([*base, "--outer_steps", "1", "--exclude_envs", "0"]) == 0
    (record,) = _records(out / "log.jsonl")
    assert len(record["held_out_accs"]) == 5
    assert all(math.isfinite(v) for v in json.loads((out / "learned_loss.json").read_text())
               ["itl_omega"])

    assert meta_train.main([*base, "--outer_steps", "2"]) == 2
    assert "exclude_envs" in capsys.readouterr().err
    assert meta_train.main([*base, "--outer_steps", "1", "--exclude_envs", "6"]) == 2
    assert "out of range" in capsys.readouterr().err
    bad = tmp_path / "never"
    assert meta_train.main(["--data_dir", str(mnist_dir), "--output_dir", str(bad),
                              *TINY_IFT, "--exclude_envs", "0", "1", "2", "3", "4"]) == 2
    assert not bad.exists()


def test_cmaes_spends_its_budget_resumes_and_plots_against_ift(
    tmp_path, mnist_dir, cached_loader, capsys
):
    out = tmp_path / "cma"
    base = ["--data_dir", str(mnist_dir), "--output_dir", str(out), *TINY,
            "--exclude_envs", "0", "1", "2", "--popsize", "3"]
    # Three domains and three candidates: 9 inner trainings per generation.
    assert meta_cmaes.main([*base, "--budget", "20"]) == 0
    records = _records(out / "log.jsonl")
    assert [r["inner_trainings"] for r in records] == [9, 18]
    for r in records:
        assert 0.0 <= r["mean_held_out_acc"] <= r["best_held_out_acc"] <= 1.0
        assert math.isfinite(r["best_fitness"]) and r["best_fitness"] <= r["mean_fitness"]
        assert r["n_diverged"] == 0 and r["sigma"] > 0
    learned = json.loads((out / "learned_loss.json").read_text())["itl_omega"]
    assert len(learned) == 12 and all(math.isfinite(v) for v in learned)
    assert learned in [r["best_w"] for r in records]

    # A larger budget continues the same search; other settings are refused.
    assert meta_cmaes.main([*base, "--budget", "27"]) == 0
    assert [r["generation"] for r in _records(out / "log.jsonl")] == [0, 1, 2]
    assert meta_cmaes.main([*base, "--budget", "40", "--sigma0", "0.5"]) == 2
    assert len(_records(out / "log.jsonl")) == 3

    ift = tmp_path / "ift"
    assert meta_train.main(["--data_dir", str(mnist_dir), "--output_dir", str(ift), *TINY_IFT,
                              "--outer_steps", "2", "--exclude_envs", "0", "1", "2"]) == 0
    curve = cost_curves.read_curve(ift)
    assert curve["x"] == [3, 6]
    steps = _records(ift / "log.jsonl")
    assert curve["seconds"] == pytest.approx([steps[0]["seconds"],
                                              steps[0]["seconds"] + steps[1]["seconds"]])
    png = tmp_path / "fig4.png"
    capsys.readouterr()
    assert meta_curves.main(["--runs", str(ift), str(out), "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    table = capsys.readouterr().out
    assert "| ift | implicit gradient | 2 | 6 |" in table
    assert "| cma | CMA-ES | 3 | 27 |" in table
    last = _records(out / "log.jsonl")[-1]
    assert f"| {last['mean_held_out_acc']:.4f} |" in table
    timed = tmp_path / "fig4_seconds.png"
    assert meta_curves.main(["--runs", str(ift), str(out), "--out", str(timed),
                                "--x", "seconds"]) == 0
    assert timed.read_bytes()[:4] == b"\x89PNG"
    assert meta_curves.main(["--runs", str(tmp_path), "--out", str(png)]) == 2


def test_hypergradient_study_converges_in_j(mnist_dir):
    result = run_study(str(mnist_dir), problems=["logreg"], js=(1, 10, 100), inner_lengths=(20,),
                       n_train=100, n_val=100)
    (summary,) = result["summaries"]
    assert summary["exact_vs_fd_cosine"] > 0.999 and summary["lambda_min"] > 0
    j_rows = [r for r in result["rows"] if r["sweep"] == "J" and r["alpha"] == "1/lambda_max"]
    assert [r["J"] for r in j_rows] == [1, 10, 100]
    errors = [r["rel_error"] for r in j_rows]
    assert errors[0] > errors[1] > errors[2]
    assert j_rows[-1]["cosine"] > 0.99
    (inner,) = [r for r in result["rows"] if r["sweep"] == "inner_steps"]
    assert inner["inner_steps"] == 20 and math.isfinite(inner["cosine"])


def test_cmaes_resumed_from_its_json_state_matches_an_uninterrupted_search(
    tmp_path, mnist_dir, cached_loader, capsys
):
    def run(out, budget):
        return meta_cmaes.main(["--data_dir", str(mnist_dir), "--output_dir", str(out), *TINY,
                                  "--exclude_envs", "0", "1", "2", "--popsize", "3",
                                  "--budget", str(budget)])

    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    assert run(whole, 27) == 0
    assert run(pieces, 9) == 0
    # What a kill during a write leaves behind is removed by the next run; other files stay.
    planted = [pieces / ".state.json.k1ll3d00.tmp", pieces / ".log.jsonl.x0000000.tmp",
               pieces / "mine.tmp"]
    for path in planted:
        path.write_text("half")
    assert run(pieces, 18) == 0 and run(pieces, 27) == 0
    assert [p.exists() for p in planted] == [False, False, True]
    planted[-1].unlink()

    def without_timing(out):
        return [{k: v for k, v in r.items() if k != "seconds"}
                for r in _records(out / "log.jsonl")]

    assert [r["generation"] for r in without_timing(pieces)] == [0, 1, 2]
    assert without_timing(pieces) == without_timing(whole)
    state = json.loads((pieces / "state.json").read_text())
    assert state["generations"] == json.loads((whole / "state.json").read_text())["generations"]
    assert (pieces / "learned_loss.json").read_text() == (whole / "learned_loss.json").read_text()
    # Later generations really moved: the replay is not trivially the start again.
    first, last = (np.array(g["candidates"]) for g in (state["generations"][0],
                                                      state["generations"][-1]))
    assert not np.array_equal(first, last)

    # A state whose candidates were edited no longer replays: refused, not silently resumed.
    state["generations"][1]["candidates"][0][0] += 1e-9
    (pieces / "state.json").write_text(json.dumps(state))
    capsys.readouterr()
    assert run(pieces, 36) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "replaying generation 1 proposes other candidates" in line
    assert len(_records(pieces / "log.jsonl")) == 3


# The run configurations the commands recorded before the shared settings module existed, for
# default arguments (w0 replaced by zeros): a saved run resumes only if today's equal them.
OLDER_TRAIN_CONFIG = {
    "dataset": "RotatedMNIST", "eval_examples": 2000, "family": "taylor",
    "family_spec": {"family": "taylor", "order": 4}, "hessian_batch": 1024,
    "hidden": [1024, 256], "init": "ce_like", "inner_batch": 32, "inner_lr": 0.01,
    "inner_steps": 2000, "neumann_alpha": 0.01, "neumann_terms": 15, "order": 4,
    "outer_lr": 0.01, "outer_optimizer": "adam", "seed": 0, "surgery": "pcgrad",
    "val_batch": 2048, "w0": [0.0] * 12}
OLDER_CMAES_CONFIG = {
    "dataset": "RotatedMNIST", "eval_examples": 2000, "exclude_envs": [], "family": "taylor",
    "family_spec": {"family": "taylor", "order": 4}, "fitness": "ce", "hidden": [1024, 256],
    "init": "ce_like", "inner_batch": 32, "inner_lr": 0.01, "inner_steps": 2000, "order": 4,
    "popsize": 0, "seed": 0, "sigma0": 0.1, "val_batch": 2048, "w0": [0.0] * 12}


def test_run_configs_of_older_runs_still_match_so_they_resume():
    family = make_family("taylor", 4)
    where = ["--data_dir", "d", "--output_dir", "o", "--threads", "1", "--backend", "ray",
             "--ray_address", "h:1"]
    args = meta_train.build_parser().parse_args([*where, "--outer_steps", "7",
                                                   "--inner_batching", "batched"])
    config = run_config(args, family, torch.zeros(12), ift_settings.OPERATIONAL,
                        ift_settings.RECORDED_OFF_DEFAULT)
    assert config == OLDER_TRAIN_CONFIG
    # A setting of RECORDED_OFF_DEFAULT is recorded once it leaves its default.
    args.hypergrad_solver = "cg"
    assert run_config(args, family, torch.zeros(12), ift_settings.OPERATIONAL,
                      ift_settings.RECORDED_OFF_DEFAULT) == {**OLDER_TRAIN_CONFIG,
                                                         "hypergrad_solver": "cg"}
    args = meta_cmaes.build_parser().parse_args([*where, "--budget", "10"])
    assert run_config(args, family, torch.zeros(12), cma_run.OPERATIONAL) == \
        OLDER_CMAES_CONFIG
