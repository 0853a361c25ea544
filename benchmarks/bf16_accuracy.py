"""Does `--precision bf16` reach fp32's accuracy? The same ERM job in both precisions over
several seeds, and each precision's mean and spread of the final accuracies.

    python benchmarks/bf16_accuracy.py --data_dir data --out results/bf16 --steps 1000

bf16 is accepted when its mean test-domain accuracy lies within the spread (the larger of the
two standard deviations over seeds) of fp32's. Runs are real `domainbed.scripts.train` command
lines; only the final record of each is read. Reduced step counts are stated in the output.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def final_record(output_dir: Path) -> dict:
    return json.loads((output_dir / "results.jsonl").read_text().splitlines()[-1])


def run(args: argparse.Namespace, precision: str, seed: int, work_dir: Path) -> dict:
    """One training run; its final accuracies and wall time."""
    output_dir = work_dir / f"{precision}_seed{seed}"
    shutil.rmtree(output_dir, ignore_errors=True)  # a fresh run, never a resumed or finished one
    command = [sys.executable, "-m", "domainbed.scripts.train", "--data_dir", args.data_dir,
               "--dataset", args.dataset, "--algorithm", "ERM", "--test_envs", "0",
               "--steps", str(args.steps), "--checkpoint_freq", str(args.steps),
               "--no_initial_eval", "--seed", str(seed), "--trial_seed", str(seed),
               "--precision", precision, "--skip_model_save", "--output_dir", str(output_dir),
               *shlex.split(args.train_flags)]
    print(shlex.join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
    record = final_record(output_dir)
    train_envs = [k for k in record if k.endswith("_out_acc") and not k.startswith("env0_")]
    return {"precision": precision, "seed": seed, "wall_s": time.perf_counter() - start,
            "test_acc": record["env0_out_acc"],
            "train_envs_acc": sum(record[k] for k in train_envs) / len(train_envs)}


def summary(runs: list[dict], precision: str, key: str) -> tuple[float, float]:
    values = [r[key] for r in runs if r["precision"] == precision]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(REPO_ROOT / "data"))
    parser.add_argument("--dataset", default="RotatedMNIST")
    parser.add_argument("--steps", type=int, default=1000,
                        help="training steps per run (DomainBed's full job: 5,000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train_flags", default="", help="more flags for every train run")
    parser.add_argument("--out", required=True, help="folder for bf16_accuracy.{json,md}")
    args = parser.parse_args()
    out = Path(args.out)
    work_dir = out / "runs"
    work_dir.mkdir(parents=True, exist_ok=True)
    runs = [run(args, precision, seed, work_dir)
            for seed in args.seeds for precision in ("fp32", "bf16")]
    lines = [f"# bf16 against fp32: {args.dataset} ERM, test env 0, {args.steps} steps "
             f"(reduced from 5,000), seeds {args.seeds}", "",
             f"`{shlex.join([sys.executable, *sys.argv])}`", "",
             "| precision | test env acc (mean +/- sd) | training envs' held-out acc | "
             "wall per run (s) |", "|---|---|---|---|"]
    stats = {}
    for precision in ("fp32", "bf16"):
        test, test_sd = summary(runs, precision, "test_acc")
        held, held_sd = summary(runs, precision, "train_envs_acc")
        wall, _ = summary(runs, precision, "wall_s")
        stats[precision] = {"test_acc": test, "test_sd": test_sd, "train_envs_acc": held,
                            "train_envs_sd": held_sd, "wall_s": wall}
        lines.append(f"| {precision} | {test:.4f} +/- {test_sd:.4f} | "
                     f"{held:.4f} +/- {held_sd:.4f} | {wall:.1f} |")
    spread = max(stats["fp32"]["test_sd"], stats["bf16"]["test_sd"])
    gap = stats["bf16"]["test_acc"] - stats["fp32"]["test_acc"]
    verdict = "within" if abs(gap) <= spread else "outside"
    lines += ["", f"bf16 - fp32 test accuracy: {gap:+.4f}, {verdict} the spread over seeds "
              f"({spread:.4f})."]
    report = {"dataset": args.dataset, "steps": args.steps, "seeds": args.seeds, "runs": runs,
              "summary": stats, "gap": gap, "spread": spread, "within_spread": verdict == "within"}
    (out / "bf16_accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bf16_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
