"""Time implicit-gradient outer steps, sequential and batched inner loops side by side, and
project the paper's full schedule.

    python benchmarks/meta_step.py --data_dir data --inner_steps 300 --threads 1
    python benchmarks/meta_step.py --data_dir data --device cuda --inner_steps 2000

For each path (`--paths`, default both) runs `--outer_steps` real outer steps of the default
setting (six leave-one-out MLPs 784-1024-256-10, J = 15) and reports seconds per outer step
split into inner training, hypergradient (the Hessian-vector products and their solve) and the
rest (evaluation, sampling, surgery, the update), the mean over the steps after the first when
there are several (the first pays for CUDA graph capture and library warm-up). Then projects
the paper's schedule (200 outer steps at --full_inner_steps; 8 hours on one V100, Sec. A.5)
from the measured costs: inner time scaled to the full inner length, the rest as measured.
One inner SGD step of the functional MLP is also compared with the same MLP as an nn.Module
(`--micro_steps`, 0 to skip). Prints only the tables; `--out` also writes them to a file,
headed by the command line and the machine.

`--runs 1 3` adds seconds per outer step of several independent runs (seeds 0, 1, ...; each
on its own seed's data) advanced together as `meta_train_many` does (`trainer.RunGroups`),
per path: on the batched path the runs' splits form one stack, on the sequential path each run
steps on its own. Small settings for a CPU:

    python benchmarks/meta_step.py --data_dir data --threads 1 --hidden 64 --inner_steps 100 \
        --outer_steps 3 --micro_steps 0 --runs 1 3
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from domainbed.lib.misc import seed_hash
from domainbed_itl.meta import batched, outer
from domainbed_itl.meta.base_model import init_mlp, mlp_forward
from domainbed_itl.meta.data import load_domains
from domainbed_itl.meta.families import initial_w, make_family
from domainbed_itl.meta.outer import MetaConfig, make_domain_set
from domainbed_itl.meta.splits import BATCHING
from domainbed_itl.meta.trainer import MetaTrainer, RunGroups

PAPER_OUTER_STEPS = 200
# The functions each path spends its inner training and its hypergradients in.
PHASES = {
    "sequential": {"inner": (outer, "train_on_batches"),
                   "hypergradient": (outer, "implicit_hypergradient")},
    "batched": {"inner": (batched, "train_stacked"),
                "hypergradient": (batched, "stacked_hypergradients")},
}


class Timed:
    """Wraps a function and accumulates its wall time (synchronising the GPU around it)."""

    def __init__(self, fn: Callable[..., Any], sync: Callable[[], None]) -> None:
        self.fn, self.sync, self.seconds = fn, sync, 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.sync()
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.sync()
            self.seconds += time.perf_counter() - start


def synchroniser(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in info.splitlines()
             if line.startswith("model name")]
    isa = "AVX-512" if "avx512f" in info else "AVX2" if "avx2" in info else "no AVX2"
    return (f"CPU {names[0] if names else platform.machine()}, {os.cpu_count()} cores, {isa}, "
            "no GPU")


def per_step(fn: Callable[[], None], steps: int, sync: Callable[[], None],
             warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps


def step_costs(data, family, w, cfg: MetaConfig, steps: int,
               sync: Callable[[], None]) -> dict[str, float]:
    """Seconds per SGD step on one batch of inner_batch examples, three ways."""
    device = data.x.device
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(len(data.y), (cfg.inner_batch,), generator=g).to(device)
    x, y = data.x[rows], data.y[rows]
    widths = (x.shape[1], *cfg.hidden, data.num_classes)
    params = init_mlp(widths, g, device=device)

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
    module = nn.Sequential(*layers).to(device)
    opt = torch.optim.SGD(module.parameters(), lr=cfg.inner_lr)
    criterion = nn.CrossEntropyLoss()

    def module_step():
        opt.zero_grad()
        criterion(module(x), y).backward()
        opt.step()

    w_fixed = w.detach().to(device)
    return {
        "nn.Module + CE + optim.SGD": per_step(module_step, steps, sync),
        "functional MLP + CE": per_step(functional(F.cross_entropy), steps, sync),
        "functional MLP + Taylor loss (inner step)":
            per_step(functional(lambda z, t: family.loss(z, t, w_fixed)), steps, sync),
    }


def time_path(path: str, data, family, w0, cfg: MetaConfig, outer_steps: int,
              sync: Callable[[], None]) -> dict[str, float]:
    """Mean seconds per outer step (after the first, when there are several) by phase."""
    cfg = MetaConfig(**{**cfg.__dict__, "inner_batching": path})
    trainer = MetaTrainer(data, family, cfg, w0, "adam", 0.01, "pcgrad")
    timers = {}
    originals = {}
    for phase, (module, name) in PHASES[path].items():
        originals[phase] = getattr(module, name)
        timers[phase] = Timed(originals[phase], sync)
        setattr(module, name, timers[phase])
    steps = []
    try:
        for _ in range(outer_steps):
            before = {k: t.seconds for k, t in timers.items()}
            start = time.perf_counter()
            trainer.outer_step()
            sync()
            total = time.perf_counter() - start
            parts = {k: t.seconds - before[k] for k, t in timers.items()}
            steps.append({**parts, "rest": total - sum(parts.values()), "total": total})
    finally:
        for phase, (module, name) in PHASES[path].items():
            setattr(module, name, originals[phase])
    kept = steps[1:] if len(steps) > 1 else steps
    return {k: sum(s[k] for s in kept) / len(kept) for k in steps[0]}


def time_runs(n_runs: int, path: str, args: argparse.Namespace, cfg: MetaConfig, family,
              device: torch.device, sync: Callable[[], None]) -> float:
    """Mean seconds per outer step of `n_runs` runs (seeds 0..n-1) advanced together, after
    the first step when there are several (CUDA graph capture, warm-up)."""
    trainers = []
    for seed in range(n_runs):
        domains, num_classes = load_domains("RotatedMNIST", args.data_dir, seed)
        data = make_domain_set(domains, num_classes, cfg.eval_examples, seed, device)
        w0 = initial_w(family, "ce_like", num_classes,
                       torch.Generator().manual_seed(seed_hash(seed, "init")))
        run_cfg = MetaConfig(**{**cfg.__dict__, "seed": seed, "inner_batching": path})
        trainers.append(MetaTrainer(data, family, run_cfg, w0))
    groups = RunGroups(trainers)
    seconds = []
    for _ in range(args.outer_steps):
        sync()
        start = time.perf_counter()
        groups.step(range(n_runs))
        sync()
        seconds.append(time.perf_counter() - start)
    kept = seconds[1:] if len(seconds) > 1 else seconds
    return sum(kept) / len(kept)


def runs_table(args: argparse.Namespace, cfg: MetaConfig, family, device: torch.device,
               sync: Callable[[], None]) -> list[str]:
    lines = ["", f"Several runs advanced together (meta_train_many), seconds per outer step of "
             f"all runs ({cfg.inner_steps} inner steps, MLP {cfg.hidden}; mean of "
             f"{max(args.outer_steps - 1, 1)} step(s)):", "",
             f"| path | runs | s per outer step | s per run and step | {PAPER_OUTER_STEPS} "
             "outer steps |", "|---|---|---|---|---|"]
    for path in args.paths:
        for n in args.runs:
            sec = time_runs(n, path, args, cfg, family, device, sync)
            name = f"{path} (stacked)" if path == "batched" else path
            lines.append(f"| {name} | {n} | {sec:.2f} s | {sec / n:.2f} s | "
                         f"{PAPER_OUTER_STEPS * sec / 3600:.2f} h |")
    return lines


def report(args: argparse.Namespace, device: torch.device) -> list[str]:
    sync = synchroniser(device)
    lines = [f"$ python {' '.join(sys.argv)}", "",
             f"machine: {machine(device)}; torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads; load average before: "
             f"{tuple(round(v, 2) for v in os.getloadavg())}"]
    domains, num_classes = load_domains("RotatedMNIST", args.data_dir, 0)
    cfg = MetaConfig(inner_steps=args.inner_steps, hypergrad_solver=args.hypergrad_solver,
                     hidden=tuple(args.hidden))
    data = make_domain_set(domains, num_classes, cfg.eval_examples, 0, device)
    family = make_family("taylor", 4)
    w0 = initial_w(family, "ce_like", num_classes, torch.Generator().manual_seed(0))

    if args.micro_steps > 0:
        costs = step_costs(data, family, w0, cfg, args.micro_steps, sync)
        base = costs["nn.Module + CE + optim.SGD"]
        lines += ["", f"One SGD step, MLP {cfg.hidden}, batch {cfg.inner_batch} "
                  f"(mean of {args.micro_steps}):"]
        lines += [f"  {name:45s} {1e3 * sec:7.2f} ms   {sec / base:5.2f}x"
                  for name, sec in costs.items()]

    n = data.n_domains
    scale = args.full_inner_steps / cfg.inner_steps
    lines += ["", f"Seconds per outer step ({n} inner loops of {cfg.inner_steps} steps, "
              f"{cfg.hypergrad_solver} with {cfg.neumann_terms} HVPs, Hessian batch "
              f"{cfg.hessian_batch}; mean of {max(args.outer_steps - 1, 1)} step(s)) and the "
              f"projected paper schedule ({PAPER_OUTER_STEPS} outer steps x {n} inner loops of "
              f"{args.full_inner_steps} steps):", "",
              "| path | inner training | hypergradient | rest | total | projected s/step | "
              "projected schedule |", "|---|---|---|---|---|---|---|"]
    for path in args.paths:
        t = time_path(path, data, family, w0, cfg, args.outer_steps, sync)
        full = t["inner"] * scale + t["hypergradient"] + t["rest"]
        lines.append(f"| {path} | {t['inner']:.2f} s | {t['hypergradient']:.2f} s | "
                     f"{t['rest']:.2f} s | {t['total']:.2f} s | {full:.2f} s | "
                     f"{PAPER_OUTER_STEPS * full / 3600:.2f} h |")
    if args.runs:
        lines += runs_table(args, cfg, family, device, sync)
    lines += ["", f"`--inner_batching auto` picks "
              f"{'sequential' if device.type == 'cpu' else 'batched'} on this device; the "
              "paper: 8 V100-hours for its schedule (Sec. A.5)",
              f"load average after: {tuple(round(v, 2) for v in os.getloadavg())}"]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default="data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--inner_steps", type=int, default=MetaConfig().inner_steps)
    p.add_argument("--full_inner_steps", type=int, default=MetaConfig().inner_steps,
                   help="inner-loop length assumed for the projection")
    p.add_argument("--outer_steps", type=int, default=2, help="outer steps timed per path")
    p.add_argument("--paths", nargs="+", default=["sequential", "batched"],
                   choices=[b for b in BATCHING if b != "auto"])
    p.add_argument("--hypergrad_solver", default=MetaConfig().hypergrad_solver)
    p.add_argument("--micro_steps", type=int, default=200)
    p.add_argument("--hidden", type=int, nargs="+", default=list(MetaConfig().hidden),
                   help="hidden widths of the MLP base model")
    p.add_argument("--runs", type=int, nargs="+", default=[],
                   help="also time this many runs advanced together (e.g. 1 3)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", help="also write the report here")
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.inner_steps < 1 or args.outer_steps < 1 or any(n < 1 for n in args.runs):
        p.error("--inner_steps, --outer_steps and --runs must be >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    text = "\n".join(report(args, device)) + "\n"
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
