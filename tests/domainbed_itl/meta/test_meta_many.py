"""Several meta-training runs in one process (`meta_train_many`, `meta.trainer.RunGroups`) on
real RotatedMNIST: stacked or one after another, each run must end where the same run made
alone by `meta_train` ends, resume from either command's checkpoints, keep its own guard
rails, and bad input must be refused before anything is written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from domainbed_itl.meta import data as meta_data
from domainbed_itl.meta import ift_job, ift_settings
from domainbed_itl.meta.families import initial_w, make_family
from domainbed_itl.meta.outer import MetaConfig, make_domain_set
from domainbed_itl.meta.trainer import MetaTrainer, RunGroups
from domainbed_itl.scripts import meta_train, meta_train_many

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--hidden", "16", "--inner_steps", "12", "--hessian_batch", "32", "--val_batch", "64",
        "--eval_examples", "50", "--neumann_terms", "3"]
PER_SEED = 300


@pytest.fixture
def per_seed_loader(monkeypatch, rmnist):
    """Real RotatedMNIST domains, other images for each seed (the real loader shuffles by
    seed too), without reloading the dataset for every run."""
    domains, num_classes = rmnist

    def load(dataset, data_dir, seed):
        rows = slice(PER_SEED * seed, PER_SEED * (seed + 1))
        return [(x[rows], y[rows]) for x, y in domains], num_classes

    monkeypatch.setattr(meta_data, "load_domains", load)


def _checkpoint(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=True)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _without_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _groups(argv: list[str]) -> tuple[list[str], RunGroups]:
    """The runs train_many would make for `argv` and how it would group them (nothing is
    written)."""
    args = ift_settings.parse_args(argv, meta_train_many.build_parser())
    jobs = ift_job.prepare_jobs(ift_job.checked_runs(args), None)
    return [job.name for job in jobs], RunGroups([job.trainer for job in jobs])


def _alone(tmp_path: Path, mnist_dir, *flags: str) -> Path:
    """The same run made by meta_train."""
    out = tmp_path / ("alone" + "".join(flags).replace("-", "_"))
    assert meta_train.main(["--data_dir", str(mnist_dir), "--output_dir", str(out), *TINY,
                              *flags]) == 0
    return out


def test_stacked_seeds_end_where_separate_meta_train_runs_end(tmp_path, mnist_dir,
                                                              per_seed_loader):
    many = tmp_path / "many"
    flags = ["--outer_steps", "2", "--inner_batching", "batched"]
    argv = ["--data_dir", str(mnist_dir), "--output_dir", str(many), *TINY, *flags]
    _, groups = _groups([*argv, "--seeds", "0", "1"])
    assert groups.groups == [[0, 1]] and groups.pools[0] is not None  # one stack, 12 models
    assert meta_train_many.main([*argv, "--seeds", "0", "1"]) == 0
    assert sorted(p.name for p in many.iterdir()) == ["RotatedMNIST_order4_seed0",
                                                      "RotatedMNIST_order4_seed1"]
    ends = []
    for seed in (0, 1):
        run = many / f"RotatedMNIST_order4_seed{seed}"
        alone = _alone(tmp_path, mnist_dir, "--seed", str(seed), *flags)
        stacked, single = _checkpoint(run), _checkpoint(alone)
        assert stacked["config"] == single["config"] and stacked["step"] == 2
        torch.testing.assert_close(stacked["w"], single["w"], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(stacked["w"], torch.tensor(stacked["config"]["w0"]))
        for a, b in zip(_records(run), _records(alone), strict=True):
            assert not a["skipped"] and a["held_out_accs"] == b["held_out_accs"]
            assert a["meta_loss"] == pytest.approx(b["meta_loss"], rel=1e-5)
        learned = [json.loads((d / "learned_loss.json").read_text())["itl_omega"]
                   for d in (run, alone)]
        assert learned[0] == pytest.approx(learned[1], rel=1e-5, abs=1e-5)
        assert (run / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
        ends.append(stacked["w"])
    assert not torch.allclose(ends[0], ends[1])  # each run trained on its own seed's data


def test_sequential_runs_equal_separate_runs_exactly(tmp_path, mnist_dir, per_seed_loader):
    """On a CPU `auto` is sequential: each run steps on its own, as meta_train does."""
    many = tmp_path / "many"
    argv = ["--data_dir", str(mnist_dir), "--output_dir", str(many), *TINY, "--outer_steps",
            "2", "--seeds", "1", "2"]
    _, groups = _groups(argv)
    assert groups.groups == [[0], [1]] and groups.pools == [None, None]
    assert meta_train_many.main(argv) == 0
    for seed in (1, 2):
        run = many / f"RotatedMNIST_order4_seed{seed}"
        alone = _alone(tmp_path, mnist_dir, "--seed", str(seed), "--outer_steps", "2")
        assert torch.equal(_checkpoint(run)["w"], _checkpoint(alone)["w"])
        assert _without_seconds(_records(run)) == _without_seconds(_records(alone))


def test_two_orders_are_two_stacks_each_equal_to_its_runs_alone(tmp_path, mnist_dir,
                                                                  per_seed_loader):
    many = tmp_path / "many"
    argv = ["--data_dir", str(mnist_dir), "--output_dir", str(many), *TINY, "--outer_steps",
            "1", "--inner_batching", "batched", "--orders", "2", "3", "--seeds", "0", "1"]
    names, groups = _groups(argv)
    assert names == [
        "RotatedMNIST_order2_seed0", "RotatedMNIST_order2_seed1",
        "RotatedMNIST_order3_seed0", "RotatedMNIST_order3_seed1"]
    assert groups.groups == [[0, 1], [2, 3]]
    assert meta_train_many.main(argv) == 0
    for order in (2, 3):
        run = many / f"RotatedMNIST_order{order}_seed1"
        assert json.loads((run / "learned_loss.json").read_text())["itl_order"] == order
        alone = _alone(tmp_path, mnist_dir, "--order", str(order), "--seed", "1",
                       "--outer_steps", "1", "--inner_batching", "batched")
        torch.testing.assert_close(_checkpoint(run)["w"], _checkpoint(alone)["w"], rtol=1e-5,
                                   atol=1e-5)


def test_killed_job_resumes_each_run_after_its_last_step(tmp_path, mnist_dir, per_seed_loader):
    """A job stopped after one step; then meta_train takes one run a step further; a rerun of
    the job continues each run from where it is, and meta_train resumes the job's runs."""
    many = tmp_path / "many"
    common = ["--data_dir", str(mnist_dir), *TINY, "--inner_batching", "batched"]
    job = [*common, "--output_dir", str(many), "--seeds", "0", "1"]
    assert meta_train_many.main([*job, "--outer_steps", "1"]) == 0
    seed1 = many / "RotatedMNIST_order4_seed1"
    assert meta_train.main([*common, "--output_dir", str(seed1), "--seed", "1",
                              "--outer_steps", "2"]) == 0
    (seed1 / ".checkpoint.pt.a1b2c3d4.tmp").write_bytes(b"half")  # a write killed midway
    assert meta_train_many.main([*job, "--outer_steps", "2"]) == 0
    assert not (seed1 / ".checkpoint.pt.a1b2c3d4.tmp").exists()
    for seed in (0, 1):
        run = many / f"RotatedMNIST_order4_seed{seed}"
        assert [r["step"] for r in _records(run)] == [0, 1]
        alone = _alone(tmp_path, mnist_dir, "--seed", str(seed), "--outer_steps", "2",
                       "--inner_batching", "batched")
        torch.testing.assert_close(_checkpoint(run)["w"], _checkpoint(alone)["w"], rtol=1e-5,
                                   atol=1e-5)
    seed0 = many / "RotatedMNIST_order4_seed0"
    assert meta_train.main([*common, "--output_dir", str(seed0), "--seed", "0",
                              "--outer_steps", "3"]) == 0
    assert [r["step"] for r in _records(seed0)] == [0, 1, 2]


@pytest.mark.parametrize("flags, message", [
    (["--seeds", "0", "1", "0"], "--seeds lists 0 more than once"),
    (["--orders", "3", "7"], "Taylor order must be one of"),
    (["--datasets", "RotatedMNIST", "NoSuchMNIST"], "unknown --dataset 'NoSuchMNIST'"),
    (["--family", "isce", "--orders", "2", "3"], "--orders applies to a family with orders"),
    (["--seeds", "0", "1", "--inner_lr", "0.02"], "RotatedMNIST_order4_seed1: the output "
                                                  "directory holds a run with different"),
])
def test_bad_input_exits_2_before_anything_is_written(tmp_path, mnist_dir, per_seed_loader,
                                                      capsys, flags, message):
    many = tmp_path / "many"
    seed1 = many / "RotatedMNIST_order4_seed1"
    assert meta_train.main(["--data_dir", str(mnist_dir), "--output_dir", str(seed1), *TINY,
                              "--seed", "1", "--outer_steps", "1"]) == 0
    before = {p: p.read_bytes() for p in seed1.iterdir()}
    capsys.readouterr()
    assert meta_train_many.main(["--data_dir", str(mnist_dir), "--output_dir", str(many), *TINY,
                            "--outer_steps", "2", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(many.iterdir()) == [seed1]  # no other run was started ...
    assert {p: p.read_bytes() for p in seed1.iterdir()} == before  # ... nor this one touched


def test_a_diverging_run_in_a_stack_is_skipped_alone(rmnist):
    """Guard rails per run: an overflowing w in one run of a stack skips that run's step and
    leaves its w; the other run's step is the one it takes alone."""
    domains, num_classes = rmnist
    data = [make_domain_set([(x[s:s + 200], y[s:s + 200]) for x, y in domains], num_classes,
                            50, seed) for seed, s in ((0, 0), (1, 200))]
    family = make_family("taylor", 4)
    cfg = MetaConfig(hidden=(16,), inner_steps=20, hessian_batch=32, val_batch=64,
                     eval_examples=50, neumann_terms=2, inner_batching="batched")
    good = initial_w(family, "ce_like", num_classes, torch.Generator().manual_seed(0))
    huge = torch.full((12,), 1e38)
    trainers = [MetaTrainer(data[0], family, cfg, huge),
                MetaTrainer(data[1], family, MetaConfig(**{**cfg.__dict__, "seed": 1}), good)]
    groups = RunGroups(trainers)
    assert groups.groups == [[0, 1]]
    records = groups.step([0, 1])
    assert records[0]["skipped"] and "non-finite" in records[0]["reason"]
    assert torch.equal(trainers[0].w.detach(), huge)
    assert not records[1]["skipped"]
    alone = MetaTrainer(data[1], family, MetaConfig(**{**cfg.__dict__, "seed": 1}), good)
    assert not alone.outer_step()["skipped"]
    torch.testing.assert_close(trainers[1].w.detach(), alone.w.detach(), rtol=1e-5, atol=1e-6)
    assert trainers[0].step == trainers[1].step == 1


def test_runs_that_keep_diverging_stop_with_status_3_and_finite_outputs(tmp_path, mnist_dir,
                                                                        per_seed_loader, capsys):
    init = tmp_path / "huge.json"
    init.write_text(json.dumps([1e38] * 12))
    many = tmp_path / "many"
    assert meta_train_many.main(["--data_dir", str(mnist_dir), "--output_dir", str(many), *TINY,
                            "--init", str(init), "--outer_steps", "5", "--max_skips", "2",
                            "--seeds", "0", "1", "--inner_batching", "batched"]) == 3
    err = capsys.readouterr().err
    for seed in (0, 1):
        run = many / f"RotatedMNIST_order4_seed{seed}"
        assert f"RotatedMNIST_order4_seed{seed}: 2 outer steps in a row were skipped" in err
        assert [r["skipped"] for r in _records(run)] == [True, True]
        learned = json.loads((run / "learned_loss.json").read_text())["itl_omega"]
        assert all(math.isfinite(v) for v in learned)
