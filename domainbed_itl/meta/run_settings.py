"""What the meta-learning command lines (`meta_train`, `meta_cmaes`) share: the arguments that
define the problem (dataset, loss family, base model, inner loop), where the work runs, the
checks made before anything is loaded, the preparation of a run (family, output directory,
data, starting w) and the configuration a resumed run must match.

Each command adds only its own optimiser's arguments; everything here means the same in both.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from domainbed.lib.cli import path_arg
from domainbed.lib.misc import seed_hash
from domainbed.lib.output_dir import check_output_dir
from domainbed_itl.meta import data as meta_data
from domainbed_itl.meta.families import (
    LossFamily,
    family_names,
    init_presets,
    initial_w,
    make_family,
    w_from_file,
)
from domainbed_itl.meta.splits import MetaConfig

BACKENDS = ("local", "ray")
# Settings no command records in its run configuration: they change where and how fast the
# work runs, never its results.
WHERE_IT_RUNS = ("threads", "data_dir", "output_dir", "backend", "ray_address")

Saved = TypeVar("Saved")


def add_problem_arguments(p: argparse.ArgumentParser) -> None:
    """The dataset, the loss family and its start, the base model and the inner loop."""
    d = MetaConfig()
    p.add_argument("--dataset", default="RotatedMNIST", help="any dataset of domainbed.datasets")
    p.add_argument("--exclude_envs", type=int, nargs="+", default=[],
                   help="environments left out of meta-training entirely (e.g. the test "
                   "domain a learned loss will later be deployed on)")
    p.add_argument("--data_dir", type=path_arg, required=True)
    p.add_argument("--output_dir", type=path_arg, required=True)
    p.add_argument("--family", default="taylor", choices=family_names(),
                   help="the loss family to learn (domainbed_itl.losses.families)")
    p.add_argument("--order", type=int, default=4,
                   help="the family's order, for a family that has one (Taylor: 2-5)")
    p.add_argument("--init", type=path_arg, default="ce_like",
                   help=f"starting w: {', '.join(init_presets())} or a JSON file (a "
                   "learned_loss.json or a list of numbers)")
    p.add_argument("--hidden", type=int, nargs="+", default=list(d.hidden),
                   help="hidden widths of the MLP base model")
    p.add_argument("--inner_steps", type=int, default=d.inner_steps)
    p.add_argument("--inner_lr", type=float, default=d.inner_lr)
    p.add_argument("--inner_batch", type=int, default=d.inner_batch)
    p.add_argument("--val_batch", type=int, default=d.val_batch,
                   help="held-out examples for the meta-loss (0 = all)")
    p.add_argument("--eval_examples", type=int, default=d.eval_examples,
                   help="examples per domain for the logged accuracies (0 = all)")
    p.add_argument("--seed", type=int, default=0)


def add_execution_arguments(p: argparse.ArgumentParser) -> None:
    """Where the inner loops run: threads here, or tasks on a Ray cluster."""
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch's default); 1 is fastest on a shared "
                   "2-core machine, where threads of concurrent jobs otherwise spin-wait")
    p.add_argument("--backend", default="local", choices=BACKENDS,
                   help="local: in this process; ray: the inner trainings of a step (or the "
                   "candidates of a CMA-ES generation) as parallel Ray tasks (same results)")
    p.add_argument("--ray_address", default=None,
                   help="a running Ray cluster for --backend ray (host:port, ray://host:port or "
                   "auto); default: a Ray instance started here")


def validate_problem(args: argparse.Namespace) -> None:
    """Reject shared settings that cannot work, before anything is loaded or written."""
    for name in ("inner_steps", "inner_batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    if not args.inner_lr > 0:
        raise ValueError("--inner_lr must be positive")
    if any(h < 1 for h in args.hidden):
        raise ValueError("--hidden widths must be >= 1")
    if len(set(args.exclude_envs)) != len(args.exclude_envs):
        raise ValueError(f"--exclude_envs lists an environment twice: {args.exclude_envs}")
    if args.ray_address is not None and args.backend != "ray":
        raise ValueError("--ray_address needs --backend ray")
    meta_data.check_dataset(args.dataset)


def meta_config(args: argparse.Namespace) -> MetaConfig:
    """The MetaConfig named by the arguments a command has (the others keep their defaults)."""
    names = {f.name for f in dataclasses.fields(MetaConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["hidden"] = tuple(args.hidden)
    if "cuda_graphs" in values:
        values["cuda_graphs"] = values["cuda_graphs"] == "on"
    return MetaConfig(**values)


@dataclass
class Prepared(Generic[Saved]):
    """A run ready to start or resume: what it found in its output directory and what it
    trains on."""

    out: Path
    family: LossFamily
    saved: Saved | None
    domains: meta_data.Domains
    num_classes: int
    w0: torch.Tensor


def prepare(args: argparse.Namespace,
            read_saved: Callable[[Path, LossFamily], Saved | None]) -> Prepared[Saved]:
    """Family, --init file, output directory and what it holds (`read_saved`), data and the
    starting w, in that order, so that cheap mistakes are refused before the data loads.
    Nothing is written. ValueError (or DataUnavailableError) says what is wrong."""
    family = make_family(args.family, args.order)
    if args.init not in init_presets():
        w_from_file(family, args.init)  # a bad file is refused before the data loads
    out = check_output_dir(args.output_dir)
    saved = read_saved(out, family)
    domains, num_classes = meta_data.load_domains(args.dataset, args.data_dir, args.seed)
    domains = meta_data.drop_envs(domains, args.exclude_envs)
    w0 = initial_w(family, args.init, num_classes,
                   torch.Generator().manual_seed(seed_hash(args.seed, "init")))
    return Prepared(out, family, saved, domains, num_classes, w0)


def run_config(args: argparse.Namespace, family: LossFamily, w0: torch.Tensor,
               operational: Iterable[str], later: Mapping[str, Any] | None = None
               ) -> dict[str, Any]:
    """What a resumed run must share with the original: every setting that changes results
    (all arguments but WHERE_IT_RUNS and the command's `operational` ones), with the starting w
    by value (an --init file could have changed). Settings added after runs had been saved
    (`later`, name -> default) are recorded only when not at their default, so those runs
    still resume."""
    skip = {*WHERE_IT_RUNS, *operational}
    config = {k: v for k, v in vars(args).items() if k not in skip}
    config["hidden"] = list(args.hidden)
    config["exclude_envs"] = sorted(args.exclude_envs)
    for key, default in (later or {}).items():
        if config[key] == default:
            del config[key]
    config["family_spec"] = family.spec()
    config["w0"] = [float(v) for v in w0]
    return config
