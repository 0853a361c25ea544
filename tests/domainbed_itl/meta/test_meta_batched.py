"""The stacked (batched) inner loops against the sequential ones on real RotatedMNIST, the
device-side step that a GPU replays from a CUDA graph, and the choice of path per device."""

from __future__ import annotations

import json

import pytest
import torch

from domainbed_itl.meta import data as meta_data
from domainbed_itl.meta.base_model import init_mlp, model_view, stack_params
from domainbed_itl.meta.device_loop import CapturedStep, CounterStep, train_stacked
from domainbed_itl.meta.families import initial_w, make_family
from domainbed_itl.meta.inner import train_on_batches
from domainbed_itl.meta.outer import MetaConfig, leave_one_domain_out, make_domain_set
from domainbed_itl.meta.splits import batching_for, start_split
from domainbed_itl.meta.trainer import MetaTrainer
from domainbed_itl.scripts import meta_train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_rmnist(rmnist):
    """300 images of each domain, pooled."""
    domains, num_classes = rmnist
    return make_domain_set([(x[:300], y[:300]) for x, y in domains], num_classes, 100, 0)


def _config(**kwargs) -> MetaConfig:
    return MetaConfig(hidden=(24,), inner_steps=25, hessian_batch=48, val_batch=64,
                      eval_examples=100, neumann_terms=4, **kwargs)


@pytest.mark.parametrize("solver", [
    {"hypergrad_solver": "neumann"},
    {"hypergrad_solver": "neumann", "neumann_alpha": "auto"},
    {"hypergrad_solver": "cg", "cg_warm_start": True},
])
def test_batched_and_sequential_give_the_same_w_after_three_outer_steps(small_rmnist, solver):
    family = make_family("taylor", 4)
    w0 = initial_w(family, "ce_like", 10, torch.Generator().manual_seed(0))
    runs = {}
    for mode in ("sequential", "batched"):
        trainer = MetaTrainer(small_rmnist, family, _config(inner_batching=mode, **solver), w0)
        records = [trainer.outer_step() for _ in range(3)]
        assert not any(r["skipped"] for r in records)
        runs[mode] = (trainer, records)
    (seq, seq_records), (bat, bat_records) = runs["sequential"], runs["batched"]
    assert not torch.equal(seq.w.detach(), w0)  # w moved, identically on both paths
    torch.testing.assert_close(bat.w.detach(), seq.w.detach(), rtol=1e-5, atol=1e-6)
    for a, b in zip(seq_records, bat_records, strict=True):
        assert a["held_out_accs"] == b["held_out_accs"]
        assert a["hypergrad_norm"] == pytest.approx(b["hypergrad_norm"], rel=1e-4)
        assert a["meta_loss"] == pytest.approx(b["meta_loss"], rel=1e-5)
    if solver.get("cg_warm_start"):
        assert set(seq.warm) == set(bat.warm) == set(range(6))


def test_counter_step_trains_each_stacked_model_on_its_own_split(small_rmnist):
    """The step a GPU captures, run eagerly: it reads step t's rows of the one data tensor at
    the device counter, and model k ends where the sequential loop over split k ends."""
    cfg = _config()
    family = make_family("taylor", 4)
    w = initial_w(family, "ce_like", 10, torch.Generator().manual_seed(0))

    def loss(z, t):
        return family.loss(z, t, w)

    splits = [start_split(small_rmnist, d, cfg, 0) for d in range(small_rmnist.n_domains)]
    table = torch.stack([s.batches for s in splits], dim=1)
    assert table.shape == (cfg.inner_steps, 6, cfg.inner_batch)
    for k in range(len(splits)):  # every row comes from the pooled tensor, off domain k
        start, end = small_rmnist.blocks[k]
        assert not ((table[:, k] >= start) & (table[:, k] < end)).any()
    stacked = stack_params([s.params for s in splits])
    step = CounterStep(stacked, small_rmnist.x, small_rmnist.y, table, loss, cfg.inner_lr)
    for _ in range(cfg.inner_steps):
        step()
    assert int(step.counter) == cfg.inner_steps and not bool(step.bad)
    for k, split in enumerate(splits):
        alone = train_on_batches(split.params, small_rmnist.x, small_rmnist.y, loss,
                                 split.batches, cfg.inner_lr)
        for a, b in zip(model_view(stacked, k), alone.params, strict=True):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


def test_one_diverging_stacked_model_leaves_the_others_alone():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 10, generator=g), torch.randint(3, (200,), generator=g)
    models = [init_mlp((10, 8, 3), g) for _ in range(3)]
    with torch.no_grad():
        models[1][0].fill_(float("nan"))
    table = torch.randint(200, (60, 3, 16), generator=g)
    stacked = stack_params(models)

    def ce(z, t):
        return torch.nn.functional.cross_entropy(z, t)

    finite = train_stacked(stacked, x, y, ce, table, 0.1, check_every=10)
    assert finite == [True, False, True]
    for k in (0, 2):
        alone = train_on_batches([p.detach().clone().requires_grad_() for p in models[k]], x, y,
                                 ce, table[:, k], 0.1)
        for a, b in zip(model_view(stacked, k), alone.params, strict=True):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


def test_auto_batching_is_sequential_on_cpu_and_batched_on_gpus():
    assert batching_for(MetaConfig(), torch.device("cpu")) == "sequential"
    assert batching_for(MetaConfig(), torch.device("cuda", 0)) == "batched"
    assert batching_for(MetaConfig(inner_batching="batched"), torch.device("cpu")) == "batched"
    with pytest.raises(ValueError, match="unknown inner batching"):
        MetaConfig(inner_batching="parallel")


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="CUDA graphs need a CUDA device (the captured step itself runs on "
                           "CPU in test_counter_step_trains_each_stacked_model_on_its_own_split)")
def test_cuda_graph_replay_matches_eager_steps(small_rmnist):
    cfg = _config()
    family = make_family("taylor", 4)
    w = initial_w(family, "ce_like", 10, torch.Generator().manual_seed(0)).cuda()

    def loss(z, t):
        return family.loss(z, t, w)

    x, y = small_rmnist.x.cuda(), small_rmnist.y.cuda()
    splits = [start_split(small_rmnist, d, cfg, 0) for d in range(small_rmnist.n_domains)]
    table = torch.stack([s.batches for s in splits], dim=1).cuda()
    ends = []
    for captured in (False, True):
        stacked = [p.cuda() for p in stack_params([s.params for s in splits])]
        stacked = [p.detach().requires_grad_() for p in stacked]
        step = CounterStep(stacked, x, y, table, loss, cfg.inner_lr)
        run = CapturedStep(step) if captured else step
        for _ in range(cfg.inner_steps):
            run()
        torch.cuda.synchronize()
        assert int(step.counter) == cfg.inner_steps
        if captured:
            assert run.graph is not None and not run.eager
        ends.append([p.detach().cpu() for p in stacked])
    for a, b in zip(*ends, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_cli_solver_and_batching_flags(tmp_path, mnist_dir, rmnist, monkeypatch, capsys):
    monkeypatch.setattr(meta_data, "load_domains", lambda *args: rmnist)
    out = tmp_path / "run"
    tiny = ["--data_dir", str(mnist_dir), "--output_dir", str(out), "--hidden", "16",
            "--inner_steps", "5", "--hessian_batch", "32", "--val_batch", "64",
            "--eval_examples", "50", "--neumann_terms", "3"]
    assert meta_train.main([*tiny, "--outer_steps", "1", "--hypergrad_solver", "cg",
                              "--cg_damping", "0.1", "--inner_batching", "batched"]) == 0
    record = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert not record["skipped"] and record["neumann_alpha_min"] is None
    # The path is operational (same results): resuming on the other one is accepted ...
    assert meta_train.main([*tiny, "--outer_steps", "2", "--hypergrad_solver", "cg",
                              "--cg_damping", "0.1", "--inner_batching", "sequential"]) == 0
    # ... the solver is not.
    assert meta_train.main([*tiny, "--outer_steps", "3"]) == 2
    assert "hypergrad_solver: saved 'cg', now None" in capsys.readouterr().err
    auto = tmp_path / "auto"
    assert meta_train.main([*tiny[:2], "--output_dir", str(auto), *tiny[4:],
                              "--outer_steps", "1", "--neumann_alpha", "auto"]) == 0
    record = json.loads((auto / "log.jsonl").read_text().splitlines()[0])
    assert record["neumann_alpha_min"] > 0 and record["neumann_alpha_min"] != 0.01
    with pytest.raises(SystemExit) as exit_info:
        meta_train.main([*tiny, "--neumann_alpha", "0"])
    assert exit_info.value.code == 2
    assert "positive number or 'auto'" in capsys.readouterr().err


def test_batched_evaluation_without_hypergradients_matches_sequential(small_rmnist):
    """The CMA-ES baseline's use: held-out loss and accuracy only."""
    family = make_family("taylor", 4)
    w = initial_w(family, "ce_like", 10, torch.Generator().manual_seed(0))
    runs = [leave_one_domain_out(small_rmnist, w, family, _config(inner_batching=mode), 4,
                                 compute_hypergrad=False)
            for mode in ("sequential", "batched")]
    for a, b in zip(*runs, strict=True):
        assert a.hypergrad is None and b.hypergrad is None and a.finite and b.finite
        assert a.held_out_acc == b.held_out_acc and a.inner_acc == b.inner_acc
        assert a.meta_loss == pytest.approx(b.meta_loss, rel=1e-5)
