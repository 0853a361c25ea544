"""The project's main job on its embedded default, offline MNIST, in a few minutes on a laptop CPU.

It walks the whole pipeline a user cares about, on a deliberately short budget that the printed
table labels as such: get MNIST offline, meta-learn a loss by implicit gradients on RotatedMNIST's
source domains (a few outer steps), then train ERM with cross-entropy, with the published ITL and
with the freshly learned loss on the same splits, and compare them on the held-out domain.
Every stage is a real subprocess of the public command lines, so the demo doubles as a recipe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from domainbed.data.mnist import MnistUnavailable, ensure_mnist
from domainbed_itl.scripts import compare_losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--output_dir", default="out/demo")
    parser.add_argument("--steps", type=int, default=200, help="ERM training steps per run")
    parser.add_argument("--test_env", type=int, default=0)
    parser.add_argument("--outer_steps", type=int, default=3)
    parser.add_argument("--inner_steps", type=int, default=100)
    args = parser.parse_args(argv)

    out = Path(args.output_dir)
    meta_dir = out / "meta"
    try:
        ensure_mnist(args.data_dir)
        compare_losses.run(
            [sys.executable, "-m", "domainbed_itl.meta.train", "--dataset", "RotatedMNIST",
             "--data_dir", args.data_dir, "--output_dir", str(meta_dir),
             "--exclude_envs", str(args.test_env),
             "--outer_steps", str(args.outer_steps), "--inner_steps", str(args.inner_steps)])
        compare_args = compare_losses.build_parser().parse_args([
            "--data_dir", args.data_dir, "--output_dir", str(out / "erm"),
            "--test_envs", str(args.test_env), "--steps", str(args.steps), "--quiet",
            "--learned", f"learned just now={meta_dir / 'learned_loss.json'}"])
        report = compare_losses.compare(compare_args, compare_losses.entries(compare_args))
    except (compare_losses.UsageError, compare_losses.StepFailed, MnistUnavailable) as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, compare_losses.UsageError) else 1
    print()
    print(f"Meta-learning: REDUCED BUDGET, {args.outer_steps} outer steps of {args.inner_steps} "
          "inner steps on the source domains only (the paper's is 200 outer steps).")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
