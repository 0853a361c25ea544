"""Deploy losses with ERM on one dataset, side by side, and print the table.

A learned loss only matters if training with it generalises better, so this is the check after
meta-learning: ERM with cross-entropy, ERM_ITL with the published omega and, for every
`--learned NAME=FILE`, the learned loss in that file (the `learned_loss.json` that `meta.train`
or `meta.cmaes` writes: a Taylor loss deploys with ERM_ITL, iSCE with ERM_iSCE), all on the
same splits, test domains and trial seeds. Each run is a real `domainbed.scripts.train`
subprocess in its own directory, so an interrupted comparison picks up where it stopped: finished
runs are reused and a killed run resumes from its last checkpoint. Every finished run is also
appended to `<output_dir>/records.jsonl` as a deployment record of protocol "domainbed", the
format `scripts.deploy` writes for its MLP runs (`domainbed_itl.deployment.records`), so one
reader tabulates both.

A run's directory is named by its row and a hash of its complete training arguments
(`<row>/env<E>_trial<T>_<hash>`), as sweep jobs are: a rerun with another learned loss, other
steps, seeds or precision trains afresh instead of reporting old numbers under new settings, and
a finished run is reused only after its recorded arguments are checked against the requested
ones. Every learned loss is validated, and labels that would share a directory are refused,
before the first run starts.

    python -m domainbed_itl.scripts.compare_losses --data_dir data --output_dir out/compare \\
        --test_envs 0 5 --steps 1000 --learned learned=results/meta_rotatedmnist/learned_loss.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from domainbed import datasets
from domainbed.lib import atomic
from domainbed.lib.cli import Failure, OneLineParser, UsageError, command, path_arg
from domainbed.lib.output_dir import check_output_dir
from domainbed.lib.precision import warn_if_bf16_is_slow
from domainbed.lib.reporting import standard_error
from domainbed.lib.run_dir import finished_records, refuse_other_arguments
from domainbed.scripts import train as train_script
from domainbed_itl.deployment.candidates import CE_LABEL, ITL_LABEL, learned_candidate
from domainbed_itl.deployment.records import RECORDS, Record, append_record, read_records

PROG = "compare_losses"


class StepFailed(Failure):
    """A subprocess of the comparison exited with an error."""


@dataclass(frozen=True)
class Entry:
    """One row of the table: an algorithm and the hyperparameters that pick its loss; `label`
    and `meta` are its deployment record's `loss` and `meta`."""

    name: str
    algorithm: str
    hparams: dict | None = None
    label: str = ""
    meta: dict | None = None

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_" else "-" for c in self.name.lower())


BASELINES = (Entry("ERM (cross-entropy)", "ERM", label=CE_LABEL),
             Entry("ERM_ITL (published, Tab. 8)", "ERM_ITL", label=ITL_LABEL))


def learned_entry(spec: str) -> Entry:
    """`NAME=FILE` or `NAME=preset:<name>` (or just the source) -> the entry that deploys the
    learned loss (ERM_ITL for a Taylor loss, ERM_iSCE for iSCE), checked now, so a bad file
    stops the comparison before its first run rather than after the baselines."""
    c = learned_candidate(spec)
    return Entry(f"{c.algorithm} ({c.label})", c.algorithm, c.hparams, c.label, c.meta)


def train_arguments(entry: Entry, args: argparse.Namespace, test_env: int,
                    trial: int) -> list[str]:
    """`domainbed.scripts.train`'s arguments for one run, all but --output_dir."""
    argv = ["--dataset", args.dataset, "--algorithm", entry.algorithm,
            "--data_dir", args.data_dir, "--test_envs", str(test_env),
            "--trial_seed", str(trial), "--seed", str(args.seed), "--steps", str(args.steps),
            "--checkpoint_freq", str(args.checkpoint_freq or args.steps), "--skip_model_save"]
    if args.precision != "fp32":
        argv += ["--precision", args.precision]
    if args.table_splits_only:
        n_envs = datasets.num_environments(args.dataset)
        argv += ["--no_initial_eval", "--eval_splits", f"env{test_env}_in",
                 *(f"env{i}_out" for i in range(n_envs) if i != test_env)]
    if entry.hparams:
        argv += ["--hparams", json.dumps(entry.hparams, sort_keys=True)]
    return argv


def run_dir(out: Path, entry: Entry, argv: list[str], test_env: int, trial: int) -> Path:
    """Where the run with these training arguments lives: the hash makes runs with different
    arguments land in different directories."""
    digest = hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:10]
    return out / entry.slug / f"env{test_env}_trial{trial}_{digest}"


def train_command(argv: list[str], directory: Path) -> list[str]:
    return [sys.executable, "-m", "domainbed.scripts.train", *argv, "--output_dir",
            str(directory)]


def run(cmd: list[str], quiet: bool = False) -> None:
    """Run one job, echoing its command; StepFailed names it if it fails."""
    print("$", " ".join(cmd), flush=True)
    completed = subprocess.run(cmd, stdout=subprocess.DEVNULL if quiet else None)
    if completed.returncode != 0:
        raise StepFailed(f"a step failed (exit {completed.returncode}): {' '.join(cmd)}")


def finished_record(directory: Path, argv: list[str]) -> dict | None:
    """The last record of a finished run made with exactly `argv`, None if the run is not
    finished; UsageError if the directory holds something else."""
    records = finished_records(directory)
    if records is None:
        return None
    if not records:
        raise UsageError(f"{directory} holds a finished run without records; delete the "
                         "directory to run it again")
    requested = vars(train_script.build_parser().parse_args(argv))
    refuse_other_arguments(records[-1]["args"], requested, str(directory), "a finished run")
    return records[-1]


def mean_se(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * standard_error(values):.1f}"


def source_out_accs(record: dict, test_env: int) -> list[float]:
    """The `out` accuracies of the training domains, whichever splits the run evaluated."""
    return [value for key, value in record.items()
            if key.startswith("env") and key.endswith("_out_acc")
            and key != f"env{test_env}_out_acc"]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def table(results: dict[tuple[str, int], list[dict]], entries: list[Entry],
          test_envs: list[int]) -> str:
    """Test-domain accuracy (%) of the last checkpoint per test domain, and the average.

    The last checkpoint is what DomainBed's training-domain validation keeps from a run with fixed
    hyperparameters; the train-domain validation column is the mean over runs of the source
    domains' `out` accuracy, the figure that selection would compare.
    """
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
            vals += [_mean(source_out_accs(r, env)) for r in records]
        lines.append(f"| {entry.name} | " + " | ".join(cells)
                     + f" | {100 * sum(averages) / len(averages):.1f}"
                     + f" | {100 * sum(vals) / len(vals):.1f} |")
    return "\n".join(lines)


def deployment_record(entry: Entry, args: argparse.Namespace, test_env: int, trial: int,
                      record: dict, seconds: float | None) -> Record:
    """A finished run as a deployment record: its last evaluation's test-domain `in` accuracy
    (what the table shows) and mean source-domain `out` accuracy; `seconds` None for a run
    found finished."""
    return Record("domainbed", args.dataset, test_env, trial, entry.label,
                         entry.algorithm, entry.hparams or {}, entry.meta, args.steps,
                         {"seed": args.seed, "precision": args.precision},
                         record[f"env{test_env}_in_acc"],
                         _mean(source_out_accs(record, test_env)), seconds)


def compare(args: argparse.Namespace, entries: list[Entry]) -> str:
    """Run every (entry, test env, trial) that is not finished yet, recording each finished
    run once in records.jsonl; return the table."""
    warn_if_bf16_is_slow(args.precision, PROG)
    out = Path(args.output_dir)
    records_path = out / RECORDS
    recorded = {r.key() for r in read_records(records_path)}
    jobs = [(entry, env, trial) for entry in entries for env in args.test_envs
            for trial in args.trial_seeds]
    results: dict[tuple[str, int], list[dict]] = {}
    for entry, env, trial in tqdm(jobs, desc="runs", unit="run", file=sys.stdout):
        argv = train_arguments(entry, args, env, trial)
        directory = run_dir(out, entry, argv, env, trial)
        record = finished_record(directory, argv)
        seconds = None
        if record is None:
            start = time.perf_counter()
            run(train_command(argv, directory), args.quiet)
            seconds = time.perf_counter() - start
            record = finished_record(directory, argv)
        results.setdefault((entry.name, env), []).append(record)
        deployed = deployment_record(entry, args, env, trial, record, seconds)
        if deployed.key() not in recorded:
            append_record(records_path, deployed)
            recorded.add(deployed.key())
    budget = (f"{args.dataset}, REDUCED BUDGET: {args.steps} ERM steps per run (DomainBed's is "
              f"5000), default hyperparameters, trial seeds {args.trial_seeds}, "
              f"{args.precision}; test-domain accuracy (%) at the last step, mean ± standard "
              "error over trials")
    report = budget + "\n\n" + table(results, entries, args.test_envs) + "\n"
    atomic.write_text(out / "table.md", report)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", type=path_arg, default="data")
    parser.add_argument("--output_dir", type=path_arg, required=True)
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
    parser.add_argument("--table_splits_only", action="store_true",
                        help="evaluate only at the last step and only the splits the table "
                        "reads (the test domain's in split, the others' out splits): about 3x "
                        "less evaluation, but the runs cannot serve DomainBed model selection")
    parser.add_argument("--learned", action="append", default=[], type=path_arg,
                        metavar="NAME=FILE",
                        help="a learned_loss.json to deploy (Taylor with ERM_ITL, iSCE with "
                        "ERM_iSCE; repeatable)")
    parser.add_argument("--quiet", action="store_true", help="hide the runs' own stdout")
    return parser


def entries(args: argparse.Namespace) -> list[Entry]:
    """The baselines, then one row per `--learned`; every learned file is read and checked, and
    labels that would share a run directory are refused."""
    rows = [*BASELINES, *(learned_entry(spec) for spec in args.learned)]
    by_slug: dict[str, str] = {}
    for entry in rows:
        other = by_slug.setdefault(entry.slug, entry.name)
        if other != entry.name or sum(e.name == entry.name for e in rows) > 1:
            raise UsageError(f"the rows {other!r} and {entry.name!r} would share the directory "
                             f"{entry.slug}; give each --learned a distinct NAME")
    return rows


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows = entries(args)
    check_output_dir(args.output_dir)
    print(compare(args, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
