"""The implicit-gradient meta-learner: hypergradients against exact solves and finite
differences, outer steps on real RotatedMNIST, resume after a real kill, and the guard rails."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from domainbed_itl.meta import data as meta_data
from domainbed_itl.meta import outer as outer_module
from domainbed_itl.meta.base_model import init_mlp
from domainbed_itl.meta.families import initial_w, make_family
from domainbed_itl.meta.hypergrad import (
    Hypergradient,
    exact_hypergradient,
    implicit_hypergradient,
    top_hessian_eigenvalue,
)
from domainbed_itl.meta.inner import train_inner
from domainbed_itl.meta.outer import MetaConfig, make_domain_set
from domainbed_itl.meta.trainer import MetaTrainer
from domainbed_itl.scripts import meta_train

TINY = ["--hidden", "32", "--inner_steps", "30", "--hessian_batch", "64", "--val_batch", "128",
        "--eval_examples", "200", "--neumann_terms", "3"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cached_loader(monkeypatch, rmnist):
    monkeypatch.setattr(meta_data, "load_domains", lambda *args: rmnist)


def small_domain_set(rmnist, per_domain: int = 300):
    domains, num_classes = rmnist
    return make_domain_set([(x[:per_domain], y[:per_domain]) for x, y in domains], num_classes,
                           100, 0)


# --- hypergradients on a problem small enough to solve exactly -------------------------------

def _logistic_problem():
    """Softmax regression with an L2 penalty (strongly convex, well conditioned) trained to
    convergence; the loss parameters are iSCE's (alpha, beta)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g, dtype=torch.float64)
    true_w = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = (x @ true_w + 0.5 * torch.randn(300, 3, generator=g, dtype=torch.float64)).argmax(1)
    xv = torch.randn(200, 6, generator=g, dtype=torch.float64) * 1.3 + 0.2  # shifted domain
    yv = (xv @ true_w).argmax(1)
    family = make_family("isce")

    def train_loss(params, w):
        weight, bias = params
        return family.loss(x @ weight + bias, y, w) + 0.5 * (weight ** 2).sum()

    def val_loss(params):
        weight, bias = params
        return F.cross_entropy(xv @ weight + bias, yv)

    def solve(w):
        params = [torch.zeros(6, 3, dtype=torch.float64, requires_grad=True),
                  torch.zeros(3, dtype=torch.float64, requires_grad=True)]
        opt = torch.optim.LBFGS(params, max_iter=1000, tolerance_grad=1e-13,
                                tolerance_change=1e-15, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = train_loss(params, w)
            loss.backward()
            return loss

        opt.step(closure)
        return params

    return train_loss, val_loss, solve


def test_neumann_hypergradient_matches_exact_and_finite_differences():
    train_loss, val_loss, solve = _logistic_problem()
    w = torch.tensor([1.0, 0.3], dtype=torch.float64)
    params = solve(w)
    exact = exact_hypergradient(params, w, train_loss, val_loss)

    # The exact IFT gradient is the derivative of the held-out loss of the re-solved problem.
    eps = 1e-4
    fd = torch.stack([
        (val_loss(solve(w + eps * e)) - val_loss(solve(w - eps * e))) / (2 * eps)
        for e in torch.eye(2, dtype=torch.float64)
    ]).detach()
    torch.testing.assert_close(exact, fd, rtol=1e-3, atol=1e-7)

    lam = top_hessian_eigenvalue(params, w, train_loss, iters=100,
                                 generator=torch.Generator().manual_seed(0))
    neumann = implicit_hypergradient(params, w, train_loss, val_loss, alpha=1.0 / lam, terms=15)
    assert F.cosine_similarity(neumann.grad, exact, dim=0) >= 0.99
    assert neumann.neumann_ratio < 0.2  # converged: the remaining term is small
    # A truncated series is only an approximation: with 1 term it is visibly worse.
    crude = implicit_hypergradient(params, w, train_loss, val_loss, alpha=1.0 / lam, terms=1)
    assert (crude.grad - exact).norm() > (neumann.grad - exact).norm()


def test_hypergradient_alpha_scale_matters():
    """Algorithm 2 as printed omits the alpha factor; with it, the estimate has the exact
    gradient's size, without it, 1/alpha times too large."""
    train_loss, val_loss, solve = _logistic_problem()
    w = torch.tensor([1.0, 0.3], dtype=torch.float64)
    params = solve(w)
    exact = exact_hypergradient(params, w, train_loss, val_loss)
    alpha = 0.5 / top_hessian_eigenvalue(params, w, train_loss, iters=100,
                                         generator=torch.Generator().manual_seed(0))
    est = implicit_hypergradient(params, w, train_loss, val_loss, alpha=alpha, terms=60).grad
    torch.testing.assert_close(est, exact, rtol=2e-2, atol=1e-6)


# --- families -------------------------------------------------------------------------------

def test_ce_like_start_points_the_logit_gradients_like_cross_entropy():
    g = torch.Generator().manual_seed(1)
    for order in (2, 3, 4, 5):
        family = make_family("taylor", order)
        w = initial_w(family, "ce_like", 10, torch.Generator().manual_seed(0))
        assert w.shape == (family.n_params,) and torch.isfinite(w).all()
        z = (3 * torch.randn(512, 10, generator=g)).requires_grad_()
        y = torch.randint(10, (512,), generator=g)
        (ours,) = torch.autograd.grad(family.loss(z, y, w), z)
        (ce,) = torch.autograd.grad(F.cross_entropy(z, y), z)
        assert F.cosine_similarity(ours.reshape(-1), ce.reshape(-1), dim=0) > 0.5


def test_isce_at_ce_like_is_cross_entropy_and_init_files_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(64, 10, generator=g), torch.randint(10, (64,), generator=g)
    family = make_family("isce")
    w = initial_w(family, "ce_like", 10, g)
    torch.testing.assert_close(family.loss(z, y, w), F.cross_entropy(z, y))
    taylor = make_family("taylor", 4)
    learned = torch.linspace(-1, 1, 12)
    path = tmp_path / "learned_loss.json"
    path.write_text(taylor.learned(learned).to_json())
    torch.testing.assert_close(initial_w(taylor, str(path), 10, g), learned)
    with pytest.raises(ValueError, match="itl_omega must be a list of 12 numbers"):
        path.write_text(json.dumps({"itl_omega": [0.0, 1.0]}))
        initial_w(taylor, str(path), 10, g)


# --- guard rails ----------------------------------------------------------------------------

def test_inner_loop_reports_overflow():
    family = make_family("taylor", 4)
    w = torch.full((12,), 1e38)  # every power of (p - w0) overflows float32
    g = torch.Generator().manual_seed(0)
    params = init_mlp((20, 8, 3), g)
    x, y = torch.randn(50, 20, generator=g), torch.randint(3, (50,), generator=g)
    out = train_inner(params, x, y, lambda logits, t: family.loss(logits, t, w), 200, 0.01, 8, g,
                      check_every=10)
    assert not out.finite
    assert out.steps_done == 10  # stopped at the first check


def test_overflowing_loss_skips_the_update_and_keeps_w(rmnist):
    data = small_domain_set(rmnist)
    cfg = MetaConfig(hidden=(16,), inner_steps=20, hessian_batch=32, val_batch=64,
                     neumann_terms=2)
    w0 = torch.full((12,), 1e38)
    trainer = MetaTrainer(data, make_family("taylor", 4), cfg, w0)
    record = trainer.outer_step()
    assert record["skipped"] and "non-finite" in record["reason"]
    assert torch.equal(trainer.w.detach(), w0) and torch.isfinite(trainer.w).all()
    assert not record["rolled_back"]  # nothing to roll back to yet


def test_nan_hypergradient_is_skipped_and_the_last_update_rolled_back(rmnist, monkeypatch):
    data = small_domain_set(rmnist)
    cfg = MetaConfig(hidden=(16,), inner_steps=20, hessian_batch=32, val_batch=64,
                     neumann_terms=2)
    family = make_family("taylor", 4)
    w0 = initial_w(family, "ce_like", 10, torch.Generator().manual_seed(0))
    trainer = MetaTrainer(data, family, cfg, w0)
    first = trainer.outer_step()
    assert not first["skipped"]
    w1 = trainer.w.detach().clone()
    assert not torch.equal(w1, w0)

    real = outer_module.implicit_hypergradient

    def poisoned(*args, **kwargs):
        good = real(*args, **kwargs)
        return Hypergradient(torch.full_like(good.grad, math.nan), good.val_loss, good.v_norm,
                             good.neumann_ratio)

    monkeypatch.setattr(outer_module, "implicit_hypergradient", poisoned)
    second = trainer.outer_step()
    assert second["skipped"] and second["rolled_back"]
    assert "hypergradient non-finite" in second["reason"]
    torch.testing.assert_close(trainer.w.detach(), w0)  # back before the suspect update
    assert trainer.lr_scale == 0.5 and torch.isfinite(trainer.w).all()


def test_relative_step_scale_multiplies_each_coordinates_step_by_its_size(rmnist):
    data = small_domain_set(rmnist)
    cfg = MetaConfig(hidden=(16,), inner_steps=20, hessian_batch=32, val_batch=64,
                     neumann_terms=2)
    family = make_family("taylor", 4)
    w0 = initial_w(family, "ce_like", 10, torch.Generator().manual_seed(0))
    steps = {}
    for scale in ("absolute", "relative"):
        trainer = MetaTrainer(data, family, cfg, w0, step_scale=scale)
        assert not trainer.outer_step()["skipped"]
        steps[scale] = trainer.w.detach() - w0
    # Same seeds, same w: the same hypergradient, so only the applied step differs.
    size = w0.abs().clamp(min=1.0)
    assert size.max() > 50  # the CE-like start spans orders of magnitude
    torch.testing.assert_close(steps["relative"], size * steps["absolute"], rtol=1e-4, atol=1e-5)


def test_cli_stops_after_repeated_skips_without_writing_nonfinite_w(
    tmp_path, mnist_dir, cached_loader, capsys
):
    init = tmp_path / "huge.json"
    init.write_text(json.dumps({"itl_omega": [1e38] * 12}))
    out = tmp_path / "out"
    code = meta_train.main(["--data_dir", str(mnist_dir), "--output_dir", str(out), "--init",
                              str(init), "--outer_steps", "5", "--max_skips", "2", *TINY])
    assert code == 3
    assert "skipped" in capsys.readouterr().err
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records] == [True, True]
    learned = json.loads((out / "learned_loss.json").read_text())["itl_omega"]
    assert all(math.isfinite(v) for v in learned)


# --- the command line on real RotatedMNIST --------------------------------------------------

def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_one_outer_step_changes_w_and_writes_loadable_outputs(
    tmp_path, mnist_dir, cached_loader, capsys
):
    out = tmp_path / "run"
    code = meta_train.main(["--data_dir", str(mnist_dir), "--output_dir", str(out),
                              "--outer_steps", "1", *TINY])
    assert code == 0
    learned = json.loads((out / "learned_loss.json").read_text())
    assert set(learned) == {"itl_omega"}
    assert len(learned["itl_omega"]) == 12
    assert all(math.isfinite(v) for v in learned["itl_omega"])
    (record,) = _records(out)
    w0 = torch.tensor(record["w"])
    assert not torch.allclose(torch.tensor(learned["itl_omega"]), w0)
    assert record["step"] == 0 and not record["skipped"] and len(record["held_out_accs"]) == 6
    assert 0.0 <= record["held_out_acc"] <= 1.0 and record["hypergrad_norm"] > 0
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"

    # Same settings continue (clearing what a kill during a write would leave); different
    # settings are refused with a clear message.
    leftovers = [out / ".checkpoint.pt.a1b2c3d4.tmp", out / ".learned_loss.json.c3e5f7a9.tmp"]
    for path in leftovers:
        path.write_bytes(b"half")
    assert meta_train.main(["--data_dir", str(mnist_dir), "--output_dir", str(out),
                              "--outer_steps", "1", *TINY]) == 0
    assert len(_records(out)) == 1
    assert not any(path.exists() for path in leftovers)
    assert meta_train.main(["--data_dir", str(mnist_dir), "--output_dir", str(out),
                              "--outer_steps", "2", "--inner_lr", "0.02", *TINY]) == 2
    assert "inner_lr: saved 0.01, now 0.02" in capsys.readouterr().err


def test_taylor_order_and_isce_families_run(tmp_path, mnist_dir, cached_loader):
    for extra, keys in ((["--order", "3"], {"itl_omega", "itl_order"}),
                        (["--family", "isce", "--surgery", "mean", "--outer_optimizer", "sgd"],
                         {"isce_alpha", "isce_beta"})):
        out = tmp_path / "_".join(extra)
        assert meta_train.main(["--data_dir", str(mnist_dir), "--output_dir", str(out),
                                  "--outer_steps", "1", *TINY, *extra]) == 0
        assert set(json.loads((out / "learned_loss.json").read_text())) == keys


def test_killed_run_resumes_at_next_outer_step(tmp_path, mnist_dir):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "domainbed_itl.scripts.meta_train", "--data_dir", str(mnist_dir),
           "--output_dir", str(out), "--outer_steps", "3", "--hidden", "128",
           "--inner_steps", "200", "--hessian_batch", "128", "--val_batch", "256",
           "--eval_examples", "300", "--threads", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = out / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 4 minutes"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    before = _records(out)
    saved = torch.load(checkpoint, weights_only=True)
    done = saved["step"]
    # The log is appended after the checkpoint is in place, so a kill between the two leaves it
    # one line short (the resume rewrites it from the checkpoint); never a half-written line.
    assert done >= 1 and len(before) in (done - 1, done)
    if done == 3:
        pytest.skip("the run finished before it could be killed")

    finished = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    after = _records(out)
    assert [r["step"] for r in after] == [0, 1, 2]
    assert after[:done] == saved["records"]  # earlier steps were kept, not recomputed
    assert after[:len(before)] == before
    assert json.loads((out / "learned_loss.json").read_text())["itl_omega"] != after[-1]["w"]
