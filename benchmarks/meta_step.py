"""Time one implicit-gradient outer step and project the paper's full schedule.

    python benchmarks/meta_step.py --data_dir data [--inner_steps 200] [--threads 1]

Reports where an outer step's time goes (inner training, the hypergradient's Hessian-vector
products, the rest: evaluation, sampling, surgery, the update), and how close one inner SGD step
on the functional MLP comes to the bare cost of the same MLP as an nn.Module with
nn.CrossEntropyLoss and torch.optim.SGD on the same batch (the target is <= 1.3x). The
functional MLP is also timed with cross-entropy, to separate the cost of the Taylor loss from
that of the functional model. Then projects the paper's schedule (200 outer steps of 6 inner
loops; 8 hours on one V100, Sec. A.5) from the measured per-step costs at --full_inner_steps.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from domainbed_itl.meta import outer
from domainbed_itl.meta.base_model import init_mlp, mlp_forward
from domainbed_itl.meta.families import initial_w, make_family
from domainbed_itl.meta.outer import MetaConfig, make_domain_set
from domainbed_itl.meta.train import MetaTrainer, load_domains


class Timed:
    """Wraps a function and accumulates its wall time."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def per_step(fn, steps: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def step_costs(data, family, w, cfg: MetaConfig, steps: int) -> dict[str, float]:
    """Seconds per SGD step on one batch of inner_batch examples, three ways."""
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(len(data.y), (cfg.inner_batch,), generator=g)
    x, y = data.x[rows], data.y[rows]
    widths = (x.shape[1], *cfg.hidden, data.num_classes)
    params = init_mlp(widths, g)

    def functional(loss_fn):
        def step():
            loss = loss_fn(mlp_forward(params, x), y)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, d in zip(params, grads, strict=True):
                    p.sub_(d, alpha=cfg.inner_lr)
        return step

    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    module = nn.Sequential(*layers)
    opt = torch.optim.SGD(module.parameters(), lr=cfg.inner_lr)
    criterion = nn.CrossEntropyLoss()

    def module_step():
        opt.zero_grad()
        criterion(module(x), y).backward()
        opt.step()

    w_fixed = w.detach()
    return {
        "nn.Module + CE + optim.SGD": per_step(module_step, steps),
        "functional MLP + CE": per_step(functional(F.cross_entropy), steps),
        "functional MLP + Taylor loss (inner step)":
            per_step(functional(lambda z, t: family.loss(z, t, w_fixed)), steps),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default="data")
    p.add_argument("--inner_steps", type=int, default=MetaConfig().inner_steps)
    p.add_argument("--full_inner_steps", type=int, default=MetaConfig().inner_steps,
                   help="inner-loop length assumed for the projection")
    p.add_argument("--micro_steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average before: {os.getloadavg()}")
    domains, num_classes = load_domains("RotatedMNIST", args.data_dir, 0)
    cfg = MetaConfig(inner_steps=args.inner_steps)
    data = make_domain_set(domains, num_classes, cfg.eval_examples, 0)
    family = make_family("taylor", 4)
    w0 = initial_w(family, "ce_like", num_classes, torch.Generator().manual_seed(0))

    costs = step_costs(data, family, w0, cfg, args.micro_steps)
    base = costs["nn.Module + CE + optim.SGD"]
    print(f"\nOne SGD step, MLP {cfg.hidden}, batch {cfg.inner_batch} "
          f"(mean of {args.micro_steps}):")
    for name, sec in costs.items():
        print(f"  {name:45s} {1e3 * sec:7.2f} ms   {sec / base:5.2f}x")

    inner, hyper = Timed(outer.train_inner), Timed(outer.implicit_hypergradient)
    outer.train_inner, outer.implicit_hypergradient = inner, hyper
    trainer = MetaTrainer(data, family, cfg, w0, "adam", 0.01, "pcgrad")
    start = time.perf_counter()
    trainer.outer_step()
    total = time.perf_counter() - start
    rest = total - inner.seconds - hyper.seconds
    n = data.n_domains
    print(f"\nOne outer step ({n} inner loops of {cfg.inner_steps} steps, J = "
          f"{cfg.neumann_terms}, Hessian batch {cfg.hessian_batch}): {total:.1f} s")
    for name, sec in (("inner training", inner.seconds), ("hypergradient (HVPs)", hyper.seconds),
                      ("rest (evaluation, sampling, surgery, update)", rest)):
        print(f"  {name:45s} {sec:7.1f} s  {100 * sec / total:5.1f}%")
    print(f"  inner step inside the loop: {1e3 * inner.seconds / (n * cfg.inner_steps):.2f} ms")

    scale = args.full_inner_steps / cfg.inner_steps
    full_step = inner.seconds * scale + hyper.seconds + rest
    hours = 200 * full_step / 3600
    print(f"\nProjected paper schedule, 200 outer steps x {n} inner loops of "
          f"{args.full_inner_steps} steps on this machine: {full_step:.0f} s per outer step, "
          f"{hours:.1f} hours (paper: 8 V100-hours, Sec. A.5)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
