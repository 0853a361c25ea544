"""`meta_train --preset paper` and the end-point study behind its unstated settings, on real
RotatedMNIST with tiny settings."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from domainbed_itl.meta import data as meta_data
from domainbed_itl.meta import endpoint_references, ift_settings, splits
from domainbed_itl.meta.families import initial_w, make_family
from domainbed_itl.meta.outer import leave_one_domain_out, make_domain_set
from domainbed_itl.meta.run_settings import meta_config
from domainbed_itl.meta.splits import MetaConfig, held_out_loss
from domainbed_itl.meta.trainer import MetaTrainer
from domainbed_itl.scripts import check_endpoints, meta_train

pytestmark = pytest.mark.usefixtures("one_thread")

WHERE = ["--data_dir", "d", "--output_dir", "o"]
# Tiny problem settings; the preset keeps its outer-loop settings (gradient descent at 0.01).
TINY = ["--hidden", "8", "--inner_steps", "5", "--hessian_batch", "32", "--val_batch", "64",
        "--eval_examples", "50", "--exclude_envs", "0", "1", "2"]


@pytest.fixture
def cached_loader(monkeypatch, rmnist):
    monkeypatch.setattr(meta_data, "load_domains", lambda *args: rmnist)


def test_the_paper_preset_sets_what_the_paper_states_and_the_measured_rest():
    args = ift_settings.parse_args([*WHERE, "--preset", "paper"], meta_train.build_parser())
    stated = {"outer_optimizer": "sgd", "outer_lr": 0.01, "outer_step_scale": "absolute",
              "surgery": "pcgrad", "outer_steps": 200, "hidden": [1024, 256],
              "inner_lr": 0.01, "inner_batch": 32, "neumann_terms": 15,
              "hypergrad_solver": "neumann", "exclude_envs": []}
    assert {k: getattr(args, k) for k in stated} == stated
    unstated = ("init", "neumann_alpha", "inner_steps", "hessian_batch")
    assert {k: getattr(args, k) for k in unstated} == \
        {k: ift_settings.PRESETS["paper"][k] for k in unstated}
    assert args.preset == "paper"
    # Without the preset the earlier defaults stand.
    plain = ift_settings.parse_args(WHERE, meta_train.build_parser())
    assert (plain.preset, plain.outer_optimizer, plain.init) == ("none", "adam", "ce_like")


def test_explicit_flags_override_the_preset_also_in_an_extended_parser():
    parser = meta_train.build_parser()
    parser.add_argument("--extra", type=int, default=3)
    args = ift_settings.parse_args([*WHERE, "--preset", "paper", "--outer_lr", "0.05",
                                    "--hidden", "64", "--init", "ce_like",
                                    "--neumann_alpha", "0.1"], parser)
    assert (args.outer_lr, args.hidden, args.init, args.neumann_alpha) == \
        (0.05, [64], "ce_like", 0.1)
    assert (args.outer_optimizer, args.outer_steps, args.extra) == ("sgd", 200, 3)
    # Flags placed before --preset win as well.
    args = ift_settings.parse_args(["--outer_steps", "7", *WHERE, "--preset", "paper"],
                                   meta_train.build_parser())
    assert args.outer_steps == 7


def test_help_lists_the_preset_and_its_values(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # no line breaks inside flag names
    with pytest.raises(SystemExit) as stop:
        meta_train.main(["--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    paper = ift_settings.PRESETS["paper"]
    assert "--preset {none,paper}" in text
    for key in ("outer_optimizer", "outer_lr", "init", "neumann_alpha", "inner_steps",
                "hessian_batch"):
        assert f"--{key} {paper[key]}" in text
    assert "--hidden 1024 256" in text


def _records(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_a_preset_run_resumes_refuses_a_changed_setting_and_old_runs_still_resume(
    tmp_path, mnist_dir, cached_loader, capsys
):
    out = tmp_path / "paper"
    base = ["--data_dir", str(mnist_dir), "--output_dir", str(out), "--preset", "paper", *TINY]
    assert meta_train.main([*base, "--outer_steps", "1"]) == 0
    assert json.loads((out / "log.jsonl").read_text())["step"] == 0
    assert torch.load(out / "checkpoint.pt")["config"]["preset"] == "paper"
    assert meta_train.main([*base, "--outer_steps", "2"]) == 0
    assert [r["step"] for r in _records(out)] == [0, 1]
    assert meta_train.main([*base, "--outer_steps", "3", "--neumann_alpha", "0.5"]) == 2
    assert "neumann_alpha" in capsys.readouterr().err
    assert len(_records(out)) == 2
    # The same run without the preset is another run.
    assert meta_train.main([*base[:4], *TINY, "--outer_steps", "3"]) == 2
    capsys.readouterr()
    # A run saved without any preset resumes, with --preset none spelled out or not.
    old = tmp_path / "old"
    plain = ["--data_dir", str(mnist_dir), "--output_dir", str(old), *TINY]
    assert meta_train.main([*plain, "--outer_steps", "1"]) == 0
    assert "preset" not in torch.load(old / "checkpoint.pt")["config"]
    assert meta_train.main([*plain, "--preset", "none", "--outer_steps", "2"]) == 0
    assert len(_records(old)) == 2


def test_the_preset_outer_step_is_plain_gradient_descent(tmp_path, mnist_dir, rmnist,
                                                         cached_loader):
    out = tmp_path / "gd"
    argv = ["--data_dir", str(mnist_dir), "--output_dir", str(out), "--preset", "paper", *TINY,
            "--outer_steps", "1"]
    assert meta_train.main(argv) == 0
    (record,) = _records(out)
    w0 = torch.tensor(record["w"])
    w1 = torch.load(out / "checkpoint.pt")["w"]
    # The hypergradient of that step, recomputed from the same splits.
    args = ift_settings.parse_args(argv, meta_train.build_parser())
    cfg = meta_config(args)
    domains, num_classes = rmnist
    data = make_domain_set(meta_data.drop_envs(domains, args.exclude_envs), num_classes,
                           cfg.eval_examples, args.seed)
    family = make_family(args.family, args.order)
    trainer = MetaTrainer(data, family, cfg, w0, "sgd", 0.01)
    h = trainer.combine(leave_one_domain_out(data, w0, family, cfg, 0))
    assert float(h.norm()) == pytest.approx(record["hypergrad_norm"], rel=1e-6)
    assert float(h.norm()) > 0
    torch.testing.assert_close(w1, w0 - 0.01 * h, rtol=0, atol=1e-7)


def test_ce_bounded_start_stays_at_the_published_scale_and_trains_like_ce():
    family = make_family("taylor", 4)
    w = initial_w(family, "ce_bounded", 10, torch.Generator().manual_seed(0))
    assert float(w.abs().max()) <= 2.0 + 1e-6
    logits = torch.randn(256, 10, generator=torch.Generator().manual_seed(1)) * 3
    y = torch.randint(10, (256,), generator=torch.Generator().manual_seed(2))
    z = logits.clone().requires_grad_()
    (g,) = torch.autograd.grad(family.loss(z, y, w), z)
    (g_ce,) = torch.autograd.grad(torch.nn.functional.cross_entropy(z, y), z)
    assert float(torch.nn.functional.cosine_similarity(g.flatten(), g_ce.flatten(), dim=0)) > 0.5


def test_minres_solves_an_indefinite_system():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(60, 60, generator=g, dtype=torch.float64))
    eig = torch.cat([torch.linspace(-2, -0.1, 20), torch.linspace(0.1, 3, 40)]).double()
    a = q @ torch.diag(eig) @ q.T
    b = torch.randn(60, generator=g, dtype=torch.float64)
    x, spent = endpoint_references.minres(lambda v: a @ v, b, 1e-10, 500)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-7, atol=1e-8)
    assert spent <= 120


def test_unrolled_hypergradient_matches_finite_differences_of_the_real_inner_loop(
    rmnist, monkeypatch
):
    # In float64 (the trainer's splits, cast), so finite differences are precise.
    def start_split(*args):
        split = splits.start_split(*args)
        split.params = [p.double().requires_grad_() for p in split.params]
        return split

    monkeypatch.setattr(endpoint_references, "start_split", start_split)
    domains, num_classes = rmnist
    data = make_domain_set(meta_data.drop_envs(domains, [0, 1, 2]), num_classes, 50, 0)
    family = make_family("taylor", 4)
    w = initial_w(family, "ce_bounded", num_classes, torch.Generator().manual_seed(0)).double()
    data.x = data.x.double()
    cfg = MetaConfig(hidden=(8,), inner_steps=40, hessian_batch=32, val_batch=128)
    end = endpoint_references.train_endpoint(data, family, w, cfg, 0)
    grad, gap = endpoint_references.unrolled_hypergradient(data, family, w, end,
                                                           cfg.inner_lr, segment=7)
    assert gap == 0.0
    eps = 1e-5
    for k in (0, 1, 5, 11):
        e = torch.zeros_like(w)
        e[k] = eps
        up, down = (float(held_out_loss(endpoint_references.train_endpoint(
            data, family, w + s * e, cfg, 0).params, end.batches)) for s in (1, -1))
        assert (up - down) / (2 * eps) == pytest.approx(float(grad[k]), rel=1e-4, abs=1e-9)


def test_check_endpoints_writes_its_tables(tmp_path, mnist_dir, cached_loader):
    out = tmp_path / "study"
    assert check_endpoints.main(["--data_dir", str(mnist_dir), "--out", str(out), "--hidden",
                                 "8", "--inner_steps", "20", "--hessian_batches", "32",
                                 "--held_out", "0", "--inits", "ce_bounded", "--alphas",
                                 "0.01", "auto", "--max_hvps", "40", "--val_batch", "64",
                                 "--exclude_envs", "0", "1", "2"]) == 0
    with open(out / "check_endpoints.csv") as handle:
        rows = list(csv.DictReader(handle))
    # 3 references x (2 Neumann + CG + the 2 other references) candidates.
    assert len(rows) == 15
    assert {r["reference"] for r in rows} == {"unrolled", "ift delta=0.1*lam",
                                              "ift delta=0.01*lam"}
    assert all(-1.0 <= float(r["cosine"]) <= 1.0 for r in rows)
    assert "| init | inner_steps |" in (out / "check_endpoints.md").read_text()
    assert check_endpoints.main(["--out", str(out), "--held_out", "9",
                                 "--data_dir", str(mnist_dir)]) == 2
