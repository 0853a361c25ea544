"""Deploying losses with DomainBed's own training: every (loss, test env, trial seed) is a job of
`domainbed.scripts.sweep`, so a comparison directory is a sweep directory.

Each run is a `domainbed.lib.sweep_jobs.Job`: its directory is the MD5 of its training
arguments, its state (done, incomplete, not launched) and command line are the sweep's, and a
registered launcher runs it, so `collect_results` reads the directory and a run is resumed as a
sweep's is: one not launched or incomplete (killed, failed) and not held by a live process is
started, and train carries an incomplete one on from its last checkpoint. A finished run is
reused only after its recorded arguments are checked against the requested ones; every other
change of loss, steps, seeds or precision names another directory, so old numbers are never
reported under new settings.

Every finished run becomes a deployment record of protocol "domainbed" in
`<output_dir>/records.jsonl` (`domainbed_itl.deployment.records`), once, and the table is the
deployment table `scripts.deploy` prints (`domainbed_itl.deployment.report`).

Comparisons made before the runs were sweep jobs named each run `<row>/env<E>_trial<T>_<hash>`;
`adopt_legacy_runs` moves such a directory to its job's name, so that a finished run is reused
and a killed one resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainbed import datasets, launchers
from domainbed.lib import atomic, joblock, run_dir
from domainbed.lib.cli import Failure, UsageError
from domainbed.lib.run_dir import finished_records, refuse_other_arguments
from domainbed.lib.sweep_jobs import Job, report_left_alone, to_launch
from domainbed_itl.deployment.candidates import (
    CE_LABEL,
    ITL_LABEL,
    Candidate,
    baselines,
    learned_candidate,
)
from domainbed_itl.deployment.records import RECORDS, Record, append_record, read_records
from domainbed_itl.deployment.report import report

# DomainBed's number of training steps; fewer make the table a reduced-budget one.
DOMAINBED_STEPS = 5000
TABLE = "table.md"


class RunsFailed(Failure):
    """Runs of the comparison exited with an error; the message names one."""


@dataclass(frozen=True)
class Run:
    """One (loss, test env, trial seed) of a comparison and the sweep job that trains it."""

    candidate: Candidate
    test_env: int
    trial_seed: int
    job: Job


@dataclass(frozen=True)
class Outcome:
    """What a comparison left: the report (None when no run is finished, or for a dry run) and
    the directories of the runs that failed."""

    report: str | None
    failed: list[str]


def candidates(learned: Sequence[str]) -> list[Candidate]:
    """The baselines, then one row per `--learned` spec, each file read and checked now, so a
    bad one stops the comparison before its first run; two rows with one label are refused, as
    records are keyed by label."""
    rows = [*baselines(), *(learned_candidate(spec) for spec in learned)]
    seen: set[str] = set()
    for row in rows:
        if row.label in seen:
            raise UsageError(f"two rows are labelled {row.label!r}; give each --learned a "
                             "distinct NAME")
        seen.add(row.label)
    return rows


def train_args(candidate: Candidate, args: argparse.Namespace, test_env: int,
               trial_seed: int) -> dict[str, Any]:
    """The training arguments of one run, as a sweep job holds them (all but output_dir)."""
    out: dict[str, Any] = {
        "dataset": args.dataset, "algorithm": candidate.algorithm, "data_dir": args.data_dir,
        "test_envs": [test_env], "trial_seed": trial_seed, "seed": args.seed,
        "steps": args.steps, "checkpoint_freq": args.checkpoint_freq or args.steps,
        "skip_model_save": True}
    if args.precision != "fp32":
        out["precision"] = args.precision
    if args.table_splits_only:
        out["no_initial_eval"] = True
        out["eval_splits"] = [f"env{test_env}_in", *table_out_splits(args.dataset, test_env)]
    if candidate.hparams:
        out["hparams"] = json.dumps(candidate.hparams, sort_keys=True)
    return out


def table_out_splits(dataset: str, test_env: int) -> list[str]:
    """The held-out splits of the source domains: the table's `source` column."""
    return [f"env{i}_out" for i in range(datasets.num_environments(dataset)) if i != test_env]


def plan(args: argparse.Namespace, rows: Sequence[Candidate]) -> list[Run]:
    """Every run of the comparison, in table order."""
    return [Run(row, env, trial, Job(train_args(row, args, env, trial), args.output_dir))
            for row in rows for env in args.test_envs for trial in args.trial_seeds]


_LEGACY_ROW_NAMES = {CE_LABEL: "ERM (cross-entropy)", ITL_LABEL: "ERM_ITL (published, Tab. 8)"}


def legacy_run_dir(run: Run, args: argparse.Namespace) -> Path:
    """Where a comparison made before runs were sweep jobs kept this run: under its row's
    name, with a hash of the training arguments in the order it passed them."""
    c, env, trial = run.candidate, run.test_env, run.trial_seed
    argv = ["--dataset", args.dataset, "--algorithm", c.algorithm,
            "--data_dir", args.data_dir, "--test_envs", str(env),
            "--trial_seed", str(trial), "--seed", str(args.seed), "--steps", str(args.steps),
            "--checkpoint_freq", str(args.checkpoint_freq or args.steps), "--skip_model_save"]
    if args.precision != "fp32":
        argv += ["--precision", args.precision]
    if args.table_splits_only:
        argv += ["--no_initial_eval", "--eval_splits", f"env{env}_in",
                 *table_out_splits(args.dataset, env)]
    if c.hparams:
        argv += ["--hparams", json.dumps(c.hparams, sort_keys=True)]
    name = _LEGACY_ROW_NAMES.get(c.label, f"{c.algorithm} ({c.label})")
    slug = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name.lower())
    digest = hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:10]
    return Path(args.output_dir) / slug / f"env{env}_trial{trial}_{digest}"


def adopt_legacy_runs(runs: Sequence[Run], args: argparse.Namespace,
                      dry_run: bool = False) -> int:
    """Move every old-layout run directory whose job directory does not exist yet to the job's
    name (train resumes a run whatever its recorded output_dir); how many it moved. A dry run
    only says what it would move. UsageError if a live process still writes an old directory:
    moving it would pull the files from under it."""
    moves = [(run, old) for run in runs if not os.path.lexists(run.job.output_dir)
             and (old := legacy_run_dir(run, args)).is_dir()]
    for _, old in moves:
        if joblock.is_running(str(old)):
            raise UsageError(f"{old} is still being trained (pid@host "
                             f"{joblock.holder(str(old))}); let it finish or stop it, then rerun")
    for run, old in moves:
        print(f"{'Would move' if dry_run else 'Moved'} {old} -> {run.job.output_dir}")
        if not dry_run:
            os.replace(old, run.job.output_dir)
            try:
                old.parent.rmdir()
            except OSError:  # other runs of the row are still there
                pass
    return 0 if dry_run else len(moves)


def finished_record(job: Job) -> dict | None:
    """The last record of the job's finished run, None if it is not finished; UsageError if
    the directory holds a run made with other values of the job's training arguments (a
    directory moved in from the older layout, or one written by hand)."""
    records = finished_records(job.output_dir)
    if records is None:
        return None
    if not records:
        raise UsageError(f"{job.output_dir} holds a finished run without records; delete the "
                         "directory to run it again")
    recorded = records[-1]["args"]
    refuse_other_arguments({key: recorded.get(key) for key in job.train_args}, job.train_args,
                           job.output_dir, "a finished run")
    return records[-1]


def run_seconds(output_dir: str) -> float | None:
    """Wall time of the run's last process: from taking the directory's lock (train's start)
    to writing `done`; None without a lock file."""
    lock = os.path.join(output_dir, joblock.LOCK_NAME)
    if not os.path.exists(lock):
        return None
    return os.path.getmtime(os.path.join(output_dir, run_dir.DONE)) - os.path.getmtime(lock)


def deployment_record(run: Run, args: argparse.Namespace, record: dict,
                      seconds: float | None) -> Record:
    """A finished run as a deployment record: its last evaluation's test-domain `in` accuracy
    and mean source-domain `out` accuracy; `seconds` None for a run found finished."""
    env = run.test_env
    sources = [value for key, value in record.items()
               if key.startswith("env") and key.endswith("_out_acc") and key != f"env{env}_out_acc"]
    c = run.candidate
    return Record("domainbed", args.dataset, env, run.trial_seed, c.label, c.algorithm,
                  c.hparams or {}, c.meta, args.steps,
                  {"seed": args.seed, "precision": args.precision},
                  record[f"env{env}_in_acc"], sum(sources) / len(sources), seconds)


def budget_line(args: argparse.Namespace) -> str:
    """The settings the table's caption does not name, and a warning for a reduced budget."""
    line = f"{args.precision}, seed {args.seed}"
    if args.steps < DOMAINBED_STEPS:
        line += (f"; REDUCED BUDGET: {args.steps} steps per run (DomainBed's is "
                 f"{DOMAINBED_STEPS})")
    return line


def launch(runs: Sequence[Run], launcher: launchers.Launcher,
           options: dict[str, Any]) -> tuple[list[Run], list[Run]]:
    """Start the runs `sweep launch --resume_incomplete` would start: (started, failed).

    An incomplete run that a live process still trains is left to it, and said so."""
    jobs = [run.job for run in runs]
    launching = to_launch(jobs, resume_incomplete=True)
    report_left_alone(jobs, launching)
    starting = {id(job) for job in launching}
    started = [run for run in runs if id(run.job) in starting]
    if not started:
        return [], []
    failed = set(Job.launch([run.job for run in started], launcher, **options) or ())
    return started, [run for run in started if run.job.command_str in failed]


def compare(args: argparse.Namespace, rows: Sequence[Candidate], launcher: launchers.Launcher,
            options: dict[str, Any], verbose: bool = True) -> Outcome:
    """Launch every run of the comparison that is not finished, record each finished run once
    in records.jsonl and tabulate the finished runs in `<output_dir>/table.md`.

    A dry-run launcher only prints the plan: nothing is created or moved."""
    runs = plan(args, rows)
    if adopt_legacy_runs(runs, args, dry_run=launcher.dry_run):
        runs = plan(args, rows)  # the moved runs' states
    if verbose:
        for run in runs:
            print(f"{run.job.state}: {run.job.output_dir} ({run.candidate.label}, test env "
                  f"{run.test_env}, trial seed {run.trial_seed})")
    done = sum(run.job.state == Job.DONE for run in runs)
    print(f"{len(runs)} runs: {done} done, {len(runs) - done} to run or running.")
    started, failed = launch(runs, launcher, options)
    started_dirs = {run.job.output_dir for run in started}
    if launcher.dry_run:
        return Outcome(None, [])

    out = Path(args.output_dir)
    recorded = {r.key() for r in read_records(out / RECORDS)}
    records, missing = [], 0
    for run in runs:
        record = finished_record(run.job)
        if record is None:
            missing += 1
            continue
        seconds = run_seconds(run.job.output_dir) if run.job.output_dir in started_dirs else None
        deployed = deployment_record(run, args, record, seconds)
        records.append(deployed)
        if deployed.key() not in recorded:
            append_record(out / RECORDS, deployed)
            recorded.add(deployed.key())
    note = (f"{missing} of {len(runs)} runs are not finished (queued, running or failed); run "
            "this command again to tabulate them\n" if missing else "")
    if not records:
        print(note, end="")
        return Outcome(None, [run.job.output_dir for run in failed])
    labels = [row.label for row in rows if any(r.loss == row.label for r in records)]
    text = budget_line(args) + "\n" + report(records, labels) + note
    atomic.write_text(out / TABLE, text)
    return Outcome(text, [run.job.output_dir for run in failed])


def failure(outcome: Outcome) -> RunsFailed:
    """The one-line error for the runs that failed."""
    first = outcome.failed[0]
    more = f" and {len(outcome.failed) - 1} more" if len(outcome.failed) > 1 else ""
    return RunsFailed(f"the run in {first}{more} failed (the launcher's report above, or "
                      "the run's err.txt, says why); fix the cause and rerun the same command: "
                      "failed runs resume from their last checkpoint")
