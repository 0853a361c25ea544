"""The project's main job on its embedded default, offline MNIST, within 10 minutes on a 2-core CPU.

It walks the whole pipeline a user cares about, on a deliberately short budget that the printed
table labels as such: get MNIST offline, meta-learn a loss by implicit gradients on RotatedMNIST's
source domains (a few outer steps), then train ERM with cross-entropy, with the published ITL and
with the freshly learned loss on the same splits, and compare them on the held-out domain.
Every stage is a real subprocess of the public command lines, so the demo doubles as a recipe.

The ERM runs dominate the cost, so they evaluate once, at the end, and only the splits the table
reads (compare_losses --table_splits_only); the expected duration printed at the start comes from
costs measured on a slow 2-core machine, scaled by how fast one ERM step runs here.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from domainbed.data.mnist import MnistUnavailable, ensure_mnist
from domainbed_itl.scripts import compare_losses

# Costs on the reference machine, a 2-core AMD EPYC with AVX2 only, where the demo's first
# version (200 ERM steps evaluated on every split at the first and last step; 3 outer steps of
# 100 inner steps) took 29 min 17 s: one ERM step of RotatedMNIST (5 source domains x 64 images)
# 1.5 s, evaluating one image 1.3 ms (90 s for all 70,000), starting a command and loading
# RotatedMNIST about 10 s. What is left of the 29 minutes, about 240 s, was meta-learning; its
# split into a per-outer-step part (the hypergradients: 15 Hessian-vector products on
# --hessian_batch examples per source domain) and a per-inner-step part, and the hypergradients'
# cost at a 4x smaller Hessian batch, follow a profile on the project's 2-core machine.
REFERENCE_MACHINE = "a 2-core AVX2 CPU (AMD EPYC)"
REF_ERM_STEP_S = 1.5
REF_EVAL_IMAGE_S = 90 / 70_000
REF_STARTUP_S = 10.0
REF_OUTER_FIXED_S = 15.0
REF_INNER_STEP_S = 0.28
# Source examples per Hessian-vector product (meta.train's default is 1024): 4x cheaper
# hypergradients, which dominate an outer step of few inner steps.
HESSIAN_BATCH = 256
# RotatedMNIST: 6 domains of 70,000 / 6 images, 20% of each held out for validation.
DOMAIN_IMAGES = 70_000 / 6
HOLDOUT = 0.2
CALIBRATION_STEPS = 2


@dataclass(frozen=True)
class Budget:
    steps: int
    outer_steps: int
    inner_steps: int

    def reference_seconds(self) -> float:
        """The demo's wall time on the reference machine."""
        meta = self.outer_steps * (REF_OUTER_FIXED_S + self.inner_steps * REF_INNER_STEP_S)
        # The test domain's in split and the five source domains' out splits, once per run.
        images = DOMAIN_IMAGES * ((1 - HOLDOUT) + 5 * HOLDOUT)
        erm_run = self.steps * REF_ERM_STEP_S + images * REF_EVAL_IMAGE_S
        runs = len(compare_losses.BASELINES) + 1
        return (1 + runs) * REF_STARTUP_S + meta + runs * erm_run


def erm_step_seconds() -> float:
    """Seconds of one real ERM step of RotatedMNIST's shape here (after a warm-up step)."""
    import torch

    from domainbed import algorithms, hparams_registry

    hparams = hparams_registry.default_hparams("ERM", "RotatedMNIST")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        algorithm = algorithms.get_algorithm_class("ERM")((1, 28, 28), 10, 5, hparams)
        batch = [(torch.rand(hparams["batch_size"], 1, 28, 28),
                  torch.randint(0, 10, (hparams["batch_size"],))) for _ in range(5)]
        algorithm.update(batch)
        start = time.perf_counter()
        for _ in range(CALIBRATION_STEPS):
            algorithm.update(batch)
    return (time.perf_counter() - start) / CALIBRATION_STEPS


def announce(budget: Budget, step: float) -> None:
    """Print the expected duration, scaled from the reference machine by `step`, the seconds
    of one ERM step here."""
    reference = budget.reference_seconds()
    here = reference * step / REF_ERM_STEP_S
    print(f"Expected duration: about {here / 60:.0f} min here (one ERM step takes {step:.2f} s "
          f"here, {REF_ERM_STEP_S} s on {REFERENCE_MACHINE}, where the demo takes about "
          f"{reference / 60:.0f} min)", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--output_dir", default="out/demo")
    parser.add_argument("--steps", type=int, default=60, help="ERM training steps per run")
    parser.add_argument("--test_env", type=int, default=0)
    parser.add_argument("--outer_steps", type=int, default=3)
    parser.add_argument("--inner_steps", type=int, default=50)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    start = time.perf_counter()
    announce(Budget(args.steps, args.outer_steps, args.inner_steps), erm_step_seconds())
    out = Path(args.output_dir)
    # Named by its budget: meta.train refuses to resume a directory made with other settings.
    meta_dir = out / "meta" / f"outer{args.outer_steps}_inner{args.inner_steps}"
    try:
        ensure_mnist(args.data_dir)
        compare_losses.run(
            [sys.executable, "-m", "domainbed_itl.meta.train", "--dataset", "RotatedMNIST",
             "--data_dir", args.data_dir, "--output_dir", str(meta_dir),
             "--exclude_envs", str(args.test_env),
             "--outer_steps", str(args.outer_steps), "--inner_steps", str(args.inner_steps),
             "--hessian_batch", str(HESSIAN_BATCH)])
        compare_args = compare_losses.build_parser().parse_args([
            "--data_dir", args.data_dir, "--output_dir", str(out / "erm"),
            "--test_envs", str(args.test_env), "--steps", str(args.steps), "--quiet",
            "--table_splits_only",
            "--learned", f"learned just now={meta_dir / 'learned_loss.json'}"])
        report = compare_losses.compare(compare_args, compare_losses.entries(compare_args))
    except (compare_losses.UsageError, compare_losses.StepFailed, MnistUnavailable) as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, compare_losses.UsageError) else 1
    print()
    print(f"Meta-learning: REDUCED BUDGET, {args.outer_steps} outer steps of {args.inner_steps} "
          f"inner steps, Hessian batch {HESSIAN_BATCH}, on the source domains only (the "
          "paper's is 200 outer steps).")
    print(report)
    print(f"The demo took {(time.perf_counter() - start) / 60:.1f} min.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
