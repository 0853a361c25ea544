"""The settings of an implicit-gradient meta-training run: its flags, the paper preset, the
checks made before anything is loaded, and which settings a resumed run may change or records
only off their default.

Shared by the command lines that make such runs (`meta_train` one, `meta_train_many` several),
so a run made by either has the same recorded settings and either resumes it.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

from domainbed_itl.meta.linear_solve import SOLVERS, parse_alpha
from domainbed_itl.meta.run_settings import (
    add_execution_arguments,
    add_problem_arguments,
    validate_problem,
)
from domainbed_itl.meta.splits import BATCHING, MetaConfig
from domainbed_itl.meta.surgery import METHODS

# Settings that may change between the pieces of one resumed run (besides
# run_settings.WHERE_IT_RUNS).
OPERATIONAL = ("outer_steps", "device", "max_skips", "inner_batching", "cuda_graphs")
# Settings recorded in a run's configuration only when not at their default, so that a run saved
# without them resumes, and a run with them is refused by a command that would ignore them.
RECORDED_OFF_DEFAULT: dict[str, Any] = {"exclude_envs": [], "outer_step_scale": "absolute",
                                        "hypergrad_solver": "neumann", "cg_damping": 0.0,
                                        "cg_warm_start": False, "preset": "none"}

# The paper's method. Stated by the paper: the outer optimiser and its step (Algorithm 1 line
# 16, A.5), PCGrad, 200 outer steps, the base model, the inner SGD and J. Unstated, chosen by
# check_endpoints at the real inner end points (results/hypergrad_paper): the start w,
# the Neumann step, the inner length and the Hessian batch.
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "paper": {
        "outer_optimizer": "sgd", "outer_lr": 0.01, "outer_step_scale": "absolute",
        "surgery": "pcgrad", "outer_steps": 200, "hidden": [1024, 256], "inner_lr": 0.01,
        "inner_batch": 32, "neumann_terms": 15, "hypergrad_solver": "neumann",
        "init": "ce_bounded", "neumann_alpha": 0.1, "inner_steps": 1000,
        "hessian_batch": 1024,
    },
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every flag of one run: the preset, the problem, the outer loop, the hypergradient solver
    and where it runs."""
    defaults = MetaConfig()
    p.add_argument("--preset", default="none", choices=tuple(PRESETS),
                   help="paper: " + ", ".join(f"--{k} {_shown(v)}"
                                              for k, v in PRESETS["paper"].items())
                   + " (explicit flags override these); none: the defaults below")
    add_problem_arguments(p)
    p.add_argument("--outer_steps", type=int, default=200)
    p.add_argument("--outer_lr", type=float, default=0.01)
    p.add_argument("--outer_optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--outer_step_scale", default="absolute", choices=("absolute", "relative"),
                   help="relative: coordinate i's outer step is multiplied by max(|w0_i|, 1), "
                   "as CMA-ES's --sigma0 is; the CE-like start has coefficients near 100, "
                   "which an absolute step of lr 0.01 barely moves")
    p.add_argument("--surgery", default="pcgrad", choices=METHODS)
    p.add_argument("--neumann_terms", type=int, default=defaults.neumann_terms)
    p.add_argument("--neumann_alpha", type=parse_alpha, default=defaults.neumann_alpha,
                   help="Neumann step, or auto: 1 / |largest Hessian eigenvalue| by 10 power "
                   "iterations per split")
    p.add_argument("--hypergrad_solver", default=defaults.hypergrad_solver, choices=SOLVERS,
                   help="how H^-1 v is solved, with --neumann_terms Hessian-vector products")
    p.add_argument("--cg_damping", type=float, default=defaults.cg_damping,
                   help="CG solves (H + damping I) u = v")
    p.add_argument("--cg_warm_start", action="store_true",
                   help="start each CG solve from the previous outer step's solution of the "
                   "same held-out domain (optimally rescaled; costs one HVP of the budget)")
    p.add_argument("--inner_batching", default=defaults.inner_batching, choices=BATCHING,
                   help="train the leave-one-out models one after another or stacked; auto: "
                   "stacked on GPUs, sequential on CPUs (same results either way)")
    p.add_argument("--cuda_graphs", default="on", choices=("on", "off"),
                   help="replay the stacked inner step from a CUDA graph (GPU only)")
    p.add_argument("--hessian_batch", type=int, default=defaults.hessian_batch,
                   help="source examples for the Hessian and mixed derivative")
    p.add_argument("--max_skips", type=int, default=5,
                   help="stop after this many skipped outer steps in a row")
    p.add_argument("--device", default="cpu")
    add_execution_arguments(p)


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def parse_args(argv: list[str] | None, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line with `parser` (built with `add_arguments`) and apply --preset: its
    values stand in for the defaults, so a flag given explicitly still wins. The preset's name
    stays in the result, and so in the run's config."""
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    if not preset:
        return args
    # argparse fills in a default only where the namespace has no value yet.
    return parser.parse_args(argv, argparse.Namespace(**copy.deepcopy(preset)))


def validate(args: argparse.Namespace) -> None:
    """Reject settings that cannot work before anything is loaded or written."""
    for name in ("hessian_batch", "outer_steps", "max_skips"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    if not args.outer_lr > 0:
        raise ValueError("--outer_lr must be positive")
    if not args.cg_damping >= 0:
        raise ValueError("--cg_damping must be >= 0")
    if args.neumann_terms < 0:
        raise ValueError("--neumann_terms must be >= 0")
    if args.backend == "ray" and args.device != "cpu":
        raise ValueError("--backend ray trains on the Ray workers' CPUs; leave --device out")
    validate_problem(args)
