"""The MLP deployment protocol (domainbed_itl.deployment) and its command line
(domainbed_itl.scripts.deploy): paired runs on real MNIST domains, the records, the table, the
rerun that trains only what is new, the refusal of other settings, and the provenance of
learned losses."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from domainbed_itl.deployment.candidates import CE_LABEL, ITL_LABEL, baselines, learned_candidate
from domainbed_itl.deployment.mlp_protocol import MLPProtocol, Pool, make_task, train_and_score
from domainbed_itl.losses.learned import LearnedLoss, preset_provenance
from domainbed_itl.scripts import deploy as deploy_cli
from domainbed_itl.scripts import meta_cmaes, meta_train

FORMAT = ["protocol", "dataset", "test_env", "trial_seed", "loss", "algorithm", "hparams",
          "meta", "steps", "settings", "test_acc", "source_acc", "seconds"]
SMALL = MLPProtocol(steps=40, hidden=(32,))
TINY_META = ["--hidden", "16", "--inner_steps", "5", "--val_batch", "64", "--eval_examples",
             "50", "--threads", "1"]


@pytest.fixture(scope="module")
def pool(rmnist):
    domains, num_classes = rmnist
    return Pool.of(domains, num_classes)


def _spy(loss_fn, calls):
    def spied(logits, y):
        calls.append((logits.detach().clone(), y.clone()))
        return loss_fn(logits, y)
    return spied


def test_every_loss_starts_from_the_same_model_and_sees_the_same_batches(pool):
    task = make_task(pool, 0, 3)
    seen = {}
    for candidate in baselines():
        calls = seen[candidate.label] = []
        train_and_score(pool, task, _spy(candidate.loss_fn(), calls), SMALL)
    ce, itl = seen[CE_LABEL], seen[ITL_LABEL]
    assert len(ce) == len(itl) == SMALL.steps
    assert all(torch.equal(a[1], b[1]) for a, b in zip(ce, itl, strict=True))  # same batches
    assert torch.equal(ce[0][0], itl[0][0])  # same initial model
    assert not torch.equal(ce[-1][0], itl[-1][0])  # then each loss trains its own way
    other = []
    train_and_score(pool, make_task(pool, 0, 4), _spy(F.cross_entropy, other),
                           SMALL)
    assert not torch.equal(other[0][0], ce[0][0])  # another trial seed, another model


def test_a_run_is_deterministic_and_its_curve_ends_where_the_run_does(pool):
    task = make_task(pool, 5, 0)
    (once,) = train_and_score(pool, task, F.cross_entropy, SMALL)
    (again,) = train_and_score(pool, task, F.cross_entropy, SMALL)
    assert once == again and once.step == SMALL.steps and once.finite
    curve = train_and_score(pool, task, F.cross_entropy, SMALL, score_at=[20, 40])
    assert [s.step for s in curve] == [20, 40] and curve[-1] == once


def test_the_mlp_learns_the_real_domains(pool):
    """Real learning, not a shape check: 300 CE steps of the small MLP are far above chance (10%)
    on the sources' held-out images and on the unseen 0 degrees."""
    (scores,) = train_and_score(pool, make_task(pool, 0, 0), F.cross_entropy,
                                       MLPProtocol(steps=300, hidden=(32,)))
    assert scores.source_acc > 0.35 and scores.test_acc > 0.2


def test_a_task_splits_each_source_domain_by_the_trial_seed_and_tests_on_a_whole_domain(pool):
    task = make_task(pool, 2, 0)
    start, end = pool.blocks[2]
    assert torch.equal(task.test_rows, torch.arange(start, end))
    held_out = torch.cat(task.source_out_rows)
    sources = torch.cat([torch.arange(*pool.blocks[d]) for d in range(6) if d != 2])
    assert torch.equal(torch.cat([task.train_rows, held_out]).sort().values, sources)
    assert [len(r) for r in task.source_out_rows] == [
        int((b - a) * 0.2) for d, (a, b) in enumerate(pool.blocks) if d != 2]
    other = make_task(pool, 2, 1)
    assert not torch.equal(other.source_out_rows[0].sort().values,
                           task.source_out_rows[0].sort().values)
    with pytest.raises(ValueError, match="test env 6 out of range"):
        make_task(pool, 6, 0)


def _records(out):
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def test_deploy_records_each_run_tabulates_pairs_and_reruns_only_what_is_new(
        tmp_path, mnist_dir, capsys):
    out = tmp_path / "deploy"
    base = ["--data_dir", str(mnist_dir), "--output_dir", str(out), "--dataset", "ColoredMNIST",
            "--test_envs", "2", "--steps", "30", "--hidden", "16",
            "--learned", "shipped=preset:rmnist-ift"]
    assert deploy_cli.main([*base, "--trial_seeds", "0", "1"]) == 0
    printed = capsys.readouterr().out
    records = _records(out)
    assert len(records) == 6 and all(list(r) == FORMAT for r in records)
    by = {(r["loss"], r["trial_seed"]): r for r in records}
    shipped = LearnedLoss.from_file("preset:rmnist-ift")
    assert {(label, r["algorithm"], json.dumps(r["hparams"]), json.dumps(r["meta"]))
            for (label, _), r in by.items()} == {
        ("CE", "ERM", "{}", "null"), ("ITL (Table 8)", "ERM_ITL", "{}", "null"),
        ("shipped", "ERM_ITL", json.dumps(shipped.hparams()),
         json.dumps(preset_provenance("rmnist-ift")["meta"]))}
    for r in records:
        assert (r["protocol"], r["dataset"], r["test_env"], r["steps"]) == (
            "mlp", "ColoredMNIST", 2, 30)
        assert r["settings"] == {"lr": 0.1, "batch_size": 32, "hidden": [16],
                                 "holdout_fraction": 0.2, "seed": 0}
        assert 0 <= r["test_acc"] <= 1 and 0 <= r["source_acc"] <= 1 and r["seconds"] > 0

    # The row: mean ± standard error over trials, and the paired difference against CE.
    table = (out / "table.md").read_text()
    assert printed.rstrip().endswith(table.rstrip())
    row = next(line for line in table.splitlines() if line.startswith("| shipped |"))
    accs = np.array([by["shipped", t]["test_acc"] for t in (0, 1)])
    diffs = accs - np.array([by["CE", t]["test_acc"] for t in (0, 1)])
    ahead = int((diffs > 0).sum())
    assert row == (f"| shipped | {100 * accs.mean():.1f} ± {100 * accs.std() / np.sqrt(2):.1f}"
                   f" | {100 * np.mean([by['shipped', t]['source_acc'] for t in (0, 1)]):.1f}"
                   f" | {100 * diffs.mean():+.1f} ± {100 * diffs.std() / np.sqrt(2):.1f}"
                   f" ({ahead}/2 ahead) |")
    assert "shipped: meta-learned on RotatedMNIST without environments [0]" in table

    # The same command trains nothing; another trial seed trains only its own three runs.
    before = (out / "records.jsonl").read_text()
    assert deploy_cli.main([*base, "--trial_seeds", "0", "1"]) == 0
    assert (out / "records.jsonl").read_text() == before
    assert capsys.readouterr().out.rstrip().endswith(table.rstrip())
    assert deploy_cli.main([*base, "--trial_seeds", "0", "1", "2"]) == 0
    capsys.readouterr()
    assert (out / "records.jsonl").read_text().startswith(before)
    assert [(r["loss"], r["trial_seed"]) for r in _records(out)[6:]] == [
        ("CE", 2), ("ITL (Table 8)", 2), ("shipped", 2)]

    # Other protocol settings, or another loss under a recorded label, are refused.
    after = (out / "records.jsonl").read_text()
    assert deploy_cli.main([*base, "--steps", "31", "--lr", "0.02"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("deploy: error: ") and "holds runs made with other settings" in line
    assert "lr: recorded 0.1, now 0.02; steps: recorded 30, now 31" in line
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"itl_omega": [2 * v for v in shipped.parameters]}))
    assert deploy_cli.main([*base[:-1], f"shipped={other}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "another loss labelled 'shipped'" in line
    assert (out / "records.jsonl").read_text() == after


def test_runs_side_by_side_in_worker_processes_give_the_same_records(
        tmp_path, mnist_dir, capsys):
    base = ["--data_dir", str(mnist_dir), "--dataset", "ColoredMNIST", "--test_envs", "0", "1",
            "--steps", "25", "--hidden", "16"]
    one, two = tmp_path / "one", tmp_path / "two"
    threads = torch.get_num_threads()
    assert deploy_cli.main([*base, "--output_dir", str(one)]) == 0
    assert torch.get_num_threads() == threads  # one thread while training, then restored
    assert deploy_cli.main([*base, "--output_dir", str(two), "--workers", "2"]) == 0
    capsys.readouterr()

    def results(out):
        return sorted((r["loss"], r["test_env"], r["test_acc"], r["source_acc"])
                      for r in _records(out))

    assert len(results(one)) == 4 and results(one) == results(two)
    assert (one / "table.md").read_text() == (two / "table.md").read_text()


@pytest.mark.parametrize(("argv", "message"), [
    (["--learned", "x=preset:nope"], "unknown preset 'nope'; the shipped presets are: "),
    (["--dataset", "ColoredMNIST", "--test_envs", "3"], "--test_envs [3] out of range"),
    (["--learned", "CE=preset:rmnist-ift"], "the label 'CE' names two rows"),
    (["--trial_seeds", "1", "1"], "--trial_seeds lists a value twice"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--no_baselines"], "nothing to deploy"),
    (["--steps", "0"], "--steps, --batch_size and --hidden must be at least 1"),
    (["--dataset", "Nope"], "unknown --dataset 'Nope'"),
])
def test_bad_input_is_one_line_before_anything_is_written(tmp_path, capsys, argv, message):
    out = tmp_path / "deploy"
    assert deploy_cli.main(["--output_dir", str(out), *argv]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("deploy: error: ") and message in line
    assert not out.exists()


def test_a_damaged_records_file_is_named_not_overwritten(tmp_path, capsys):
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "records.jsonl").write_text('{"protocol": "mlp"}\n')
    assert deploy_cli.main(["--output_dir", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "records.jsonl line 1 is not a deployment record" in line
    assert (out / "records.jsonl").read_text() == '{"protocol": "mlp"}\n'


def test_a_learned_file_names_the_meta_training_run_it_comes_from(tmp_path, mnist_dir):
    ift, cma = tmp_path / "ift", tmp_path / "cma"
    assert meta_train.main(["--data_dir", str(mnist_dir), "--output_dir", str(ift), *TINY_META,
                            "--hessian_batch", "32", "--neumann_terms", "2",
                            "--exclude_envs", "0", "--outer_steps", "2"]) == 0
    assert meta_cmaes.main(["--data_dir", str(mnist_dir), "--output_dir", str(cma), *TINY_META,
                              "--family", "isce", "--exclude_envs", "0", "5", "--popsize", "3",
                              "--budget", "24"]) == 0
    ift_meta = learned_candidate(f"x={ift / 'learned_loss.json'}").meta
    assert ift_meta == {"dataset": "RotatedMNIST", "seed": 0, "exclude_envs": [0],
                        "family": "taylor", "order": 4, "outer_steps": 2, "run_dir": str(ift)}
    cma_meta = learned_candidate(f"x={cma / 'learned_loss.json'}").meta
    assert cma_meta == {"dataset": "RotatedMNIST", "seed": 0, "exclude_envs": [0, 5],
                        "family": "isce", "order": None, "outer_steps": 2, "run_dir": str(cma)}
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(ift / "learned_loss.json", alone)
    candidate = learned_candidate(str(alone / "learned_loss.json"))
    assert candidate.meta is None and candidate.label == "alone"
