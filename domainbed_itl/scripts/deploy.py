"""Deploy losses on held-out domains with the MLP protocol, side by side, and print the table.

    python -m domainbed_itl.scripts.deploy --data_dir data --output_dir out/deploy \\
        --dataset RotatedMNIST --test_envs 0 --trial_seeds 0 1 2 3 4 \\
        --learned shipped=preset:rmnist-ift

Cross-entropy ("CE") and the published ITL ("ITL (Table 8)") are always deployed too, unless
--no_baselines. Every (loss, test env, trial seed) trains the meta-learner's own MLP on the
other environments (`domainbed_itl.deployment.mlp_protocol` explains the protocol and why) and
is appended to <output_dir>/records.jsonl as soon as it finishes, so an interrupted comparison
resumes where it stopped and a rerun with more seeds, test envs or losses trains only what is new; a
directory made with other protocol settings is refused, with what differs. The table
(<output_dir>/table.md) gives the test accuracy per test env, mean ± standard error over trial
seeds, and each loss's paired difference against CE.
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from domainbed import datasets
from domainbed.lib import atomic
from domainbed.lib.cli import OneLineParser, UsageError, command, path_arg
from domainbed.lib.output_dir import check_output_dir, make_output_dir
from domainbed_itl.deployment.candidates import (
    CE_LABEL,
    ITL_LABEL,
    Candidate,
    baselines,
    learned_candidate,
)
from domainbed_itl.deployment.mlp_protocol import Job, MLPProtocol, mlp_record, run_jobs
from domainbed_itl.deployment.records import (
    RECORDS,
    Record,
    append_record,
    check_same_losses,
    check_same_protocol,
    read_records,
)
from domainbed_itl.deployment.report import report
from domainbed_itl.losses.learned import presets
from domainbed_itl.meta import data as meta_data

PROG = "deploy"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=f"python -m domainbed_itl.scripts.{PROG}",
                      description=__doc__.split("\n\n")[0])
    d = MLPProtocol()
    p.add_argument("--data_dir", type=path_arg, default="data")
    p.add_argument("--output_dir", type=path_arg, required=True)
    p.add_argument("--dataset", default="RotatedMNIST")
    p.add_argument("--test_envs", type=int, nargs="+", default=[0])
    p.add_argument("--trial_seeds", type=int, nargs="+", default=[0],
                   help="each fixes a run's initial weights, minibatches and source holdout, "
                   "the same for every loss")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="dataset seed (which images each environment gets), as meta_train's")
    p.add_argument("--steps", type=int, default=d.steps,
                   help="SGD steps per run (default: where CE, ITL and a learned loss have "
                   "stopped improving on RotatedMNIST)")
    p.add_argument("--lr", type=float, default=d.lr,
                   help="SGD step size (default: chosen with --steps by measurement; the "
                   "meta-learner's inner loop uses 0.01)")
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--hidden", type=int, nargs="+", default=list(d.hidden),
                   help="hidden widths of the MLP")
    p.add_argument("--learned", action="append", default=[], type=path_arg,
                   metavar="LABEL=FILE_OR_PRESET",
                   help="a learned_loss.json or preset:<name> to deploy (repeatable); shipped "
                   f"presets: {', '.join(presets())}")
    p.add_argument("--no_baselines", action="store_true",
                   help=f"leave out the {CE_LABEL} and {ITL_LABEL} rows")
    p.add_argument("--workers", type=int, default=1,
                   help="runs trained side by side, in that many processes (e.g. the number of "
                   "cores); every run uses one torch thread, so its record does not depend on "
                   "where it ran")
    return p


def candidates(args: argparse.Namespace) -> list[Candidate]:
    """The rows, every learned file checked; two rows with one label are refused."""
    rows = [] if args.no_baselines else baselines()
    rows += [learned_candidate(spec) for spec in args.learned]
    if not rows:
        raise UsageError("nothing to deploy: give --learned or drop --no_baselines")
    labels = [c.label for c in rows]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise UsageError(f"the label {twice[0]!r} names two rows; give each --learned a "
                         "distinct LABEL")
    return rows


def check_runs(args: argparse.Namespace) -> None:
    meta_data.check_dataset(args.dataset)
    n_envs = datasets.num_environments(args.dataset)
    bad = [e for e in args.test_envs if not 0 <= e < n_envs]
    if bad:
        raise UsageError(f"--test_envs {bad} out of range: {args.dataset} has environments "
                         f"0..{n_envs - 1}")
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    for flag in ("test_envs", "trial_seeds"):
        values = getattr(args, flag)
        if len(set(values)) != len(values):
            raise UsageError(f"--{flag} lists a value twice: {values}")


def run_pending(args: argparse.Namespace, protocol: MLPProtocol,
                rows: list[Candidate],
                done: dict[tuple[str, int, int], Record]) -> None:
    """Train and record every run not in `done` (updated in place), each as it finishes."""
    jobs = [Job(env, trial, c) for env in args.test_envs for trial in args.trial_seeds
            for c in rows if (c.label, env, trial) not in done]
    if not jobs:
        return
    out = make_output_dir(args.output_dir)
    finished = run_jobs(jobs, args.dataset, args.data_dir, protocol, args.workers)
    for job, scores, seconds in tqdm(finished, total=len(jobs), desc="runs", unit="run",
                                     file=sys.stdout):
        if not scores.finite:
            tqdm.write(f"warning: {job.candidate.label} went non-finite on test env "
                       f"{job.test_env}, trial {job.trial_seed}; its accuracies are those of "
                       "the broken model", file=sys.stderr)
        record = mlp_record(args.dataset, job, protocol, scores, seconds)
        append_record(out / RECORDS, record)
        done[record.run] = record


@command(PROG, usage_errors=(ValueError,))
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    protocol = MLPProtocol(args.steps, args.lr, args.batch_size, tuple(args.hidden),
                                  seed=args.seed)
    check_runs(args)
    rows = candidates(args)
    out = check_output_dir(args.output_dir)
    records = read_records(out / RECORDS)
    wanted = {"protocol": "mlp", "dataset": args.dataset, "steps": protocol.steps,
              "settings": protocol.settings()}
    check_same_protocol(records, wanted, out / RECORDS)
    check_same_losses(records, rows, out / RECORDS)
    done = {r.run: r for r in records}
    run_pending(args, protocol, rows, done)
    chosen = [done[c.label, env, trial] for c in rows for env in args.test_envs
              for trial in args.trial_seeds]
    text = report(chosen, [c.label for c in rows])
    atomic.write_text(out / "table.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
