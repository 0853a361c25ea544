"""Deploy losses with ERM on one dataset, side by side, and print the table.

A learned loss only matters if training with it generalises better, so this is the check after
meta-learning: ERM with cross-entropy, ERM_ITL with the published omega and, for every
`--learned NAME=FILE`, ERM_ITL with the omega in that file (the JSON `meta.train` writes), all
on the same splits, test domains and trial seeds. Each run is a real `domainbed.scripts.train`
subprocess in its own directory, so an interrupted comparison picks up where it stopped: finished
runs are skipped and a killed run resumes from its last checkpoint.

    python -m domainbed_itl.scripts.compare_losses --data_dir data --output_dir out/compare \\
        --test_envs 0 5 --steps 1000 --learned learned=results/meta_rotatedmnist/learned_loss.json
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from domainbed.lib import atomic


@dataclass(frozen=True)
class Entry:
    """One row of the table: an algorithm and the hyperparameters that pick its loss."""

    name: str
    algorithm: str
    hparams: dict | None = None

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_" else "-" for c in self.name.lower())


BASELINES = (Entry("ERM (cross-entropy)", "ERM"), Entry("ERM_ITL (published, Tab. 8)", "ERM_ITL"))


def learned_entry(spec: str) -> Entry:
    """`NAME=FILE` (or just FILE) -> an ERM_ITL entry with the hyperparameters in FILE."""
    name, _, path = spec.rpartition("=")
    try:
        hparams = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"compare_losses: error: cannot read learned loss {path!r} ({err}); "
                         "give the learned_loss.json that domainbed_itl.meta.train wrote") from None
    if not isinstance(hparams, dict) or "itl_omega" not in hparams:
        raise SystemExit(f"compare_losses: error: {path!r} has no 'itl_omega'; give the "
                         "learned_loss.json that domainbed_itl.meta.train wrote")
    return Entry(f"ERM_ITL ({name or Path(path).parent.name})", "ERM_ITL", hparams)


def train_command(entry: Entry, args: argparse.Namespace, test_env: int, trial: int,
                  run_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "domainbed.scripts.train", "--dataset", args.dataset,
           "--algorithm", entry.algorithm, "--data_dir", args.data_dir,
           "--test_envs", str(test_env), "--trial_seed", str(trial),
           "--seed", str(args.seed), "--steps", str(args.steps),
           "--checkpoint_freq", str(args.checkpoint_freq or args.steps),
           "--output_dir", str(run_dir), "--skip_model_save"]
    if args.precision != "fp32":
        cmd += ["--precision", args.precision]
    if entry.hparams:
        cmd += ["--hparams", json.dumps(entry.hparams)]
    return cmd


def run(cmd: list[str], quiet: bool = False, prog: str = "compare_losses") -> None:
    """Run one job, echoing its command; a failure ends the caller with one line naming it."""
    print("$", " ".join(cmd), flush=True)
    completed = subprocess.run(cmd, stdout=subprocess.DEVNULL if quiet else None)
    if completed.returncode != 0:
        sys.exit(f"{prog}: a step failed (exit {completed.returncode}): {' '.join(cmd)}")


def final_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.jsonl").read_text().splitlines()[-1])


def mean_se(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{100 * mean:.1f}"
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return f"{100 * mean:.1f} ± {100 * math.sqrt(var / len(values)):.1f}"


def table(results: dict[tuple[str, int], list[dict]], entries: list[Entry],
          test_envs: list[int]) -> str:
    """Test-domain accuracy (%) of the last checkpoint per test domain, and the average.

    The last checkpoint is what DomainBed's training-domain validation keeps from a run with fixed
    hyperparameters; the train-domain validation column is the mean over runs of the source
    domains' `out` accuracy, the figure that selection would compare.
    """
    some_record = next(iter(results.values()))[0]
    n_envs = sum(1 for key in some_record if key.startswith("env") and key.endswith("_in_acc"))
    head = "| loss | " + " | ".join(f"env{e} (test)" for e in test_envs)
    head += " | avg | train-domain val |"
    lines = [head, "|---" * (len(test_envs) + 3) + "|"]
    for entry in entries:
        cells, averages, vals = [], [], []
        for env in test_envs:
            records = results[entry.name, env]
            accs = [r[f"env{env}_in_acc"] for r in records]
            cells.append(mean_se(accs))
            averages.append(sum(accs) / len(accs))
            sources = [i for i in range(n_envs) if i != env]
            vals += [sum(r[f"env{i}_out_acc"] for i in sources) / len(sources) for r in records]
        lines.append(f"| {entry.name} | " + " | ".join(cells)
                     + f" | {100 * sum(averages) / len(averages):.1f}"
                     + f" | {100 * sum(vals) / len(vals):.1f} |")
    return "\n".join(lines)


def compare(args: argparse.Namespace, entries: list[Entry]) -> str:
    """Run every (entry, test env, trial) that is not finished yet; return the table."""
    out = Path(args.output_dir)
    jobs = [(entry, env, trial) for entry in entries for env in args.test_envs
            for trial in args.trial_seeds]
    results: dict[tuple[str, int], list[dict]] = {}
    for entry, env, trial in tqdm(jobs, desc="runs", unit="run", file=sys.stdout):
        run_dir = out / entry.slug / f"env{env}_trial{trial}"
        if not (run_dir / "done").exists():
            run(train_command(entry, args, env, trial, run_dir), args.quiet)
        results.setdefault((entry.name, env), []).append(final_record(run_dir))
    budget = (f"{args.dataset}, REDUCED BUDGET: {args.steps} ERM steps per run (DomainBed's is "
              f"5000), default hyperparameters, trial seeds {args.trial_seeds}, "
              f"{args.precision}; test-domain accuracy (%) at the last step, mean ± standard "
              "error over trials")
    report = budget + "\n\n" + table(results, entries, args.test_envs) + "\n"
    atomic.write_text(out / "table.md", report)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dataset", default="RotatedMNIST")
    parser.add_argument("--test_envs", type=int, nargs="+", default=[0])
    parser.add_argument("--trial_seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--checkpoint_freq", type=int,
                        help="default: --steps (evaluate only at the first and last step)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="passed to train: bf16 autocast is ~2.5x faster on CPUs with "
                        "bf16 units")
    parser.add_argument("--learned", action="append", default=[], metavar="NAME=FILE",
                        help="a learned_loss.json to deploy with ERM_ITL (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="hide the runs' own stdout")
    return parser


def entries(args: argparse.Namespace) -> list[Entry]:
    """The baselines, then one row per `--learned`."""
    return [*BASELINES, *(learned_entry(spec) for spec in args.learned)]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    print(compare(args, entries(args)))


if __name__ == "__main__":
    main()
