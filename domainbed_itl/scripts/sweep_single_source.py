"""Single-source domain generalisation sweeps (the paper's Tables 4 and 10).

    python -m domainbed_itl.scripts.sweep_single_source {launch,delete_incomplete,delete_all} \\
        --datasets PACS --algorithms ERM ERM_ITL --data_dir D --output_dir O \\
        --command_launcher local [every other flag of domainbed.scripts.sweep]

For a dataset of N environments, source s gives the jobs whose only training environment is s:
`--test_envs` is the other N-1, sorted. Each job is an ordinary `domainbed.scripts.train` run whose
arguments have exactly the form, and the directory exactly the MD5 name, that a multi-source
sweep gives the same arguments (its `seed` is `seed_hash(dataset, algorithm, test_envs,
hparams_seed, trial_seed)` as there). So the directories are resumed, deleted and read like any
other sweep's, and on a 3-environment dataset they are the very pair-of-test-envs jobs of the
multi-source sweep, which two sweeps sharing an output directory run once.

It drives whichever `domainbed` is importable: this project's engine (its sweep, launchers and
checks), or a clone of the public DomainBed with this project installed (its `Job` and
`command_launchers.REGISTRY`, and the flags its sweep has).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import domainbed
from domainbed_itl.public_hook import OUR_ENGINE

PROG = "sweep_single_source"


def single_source_test_envs(n_envs: int) -> list[list[int]]:
    """For each source environment, in order, every other environment: its test envs."""
    if n_envs < 2:
        raise ValueError(f"single-source DG needs at least 2 environments, got {n_envs}")
    return [[env for env in range(n_envs) if env != source] for source in range(n_envs)]


def single_source_args_list(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every job's training arguments, in the order and form of DomainBed's `make_args_list`.

    The keys and values must stay exactly these: their JSON text names each job's directory.
    Raises ValueError, saying what to change, for arguments a single-source sweep cannot use.
    """
    from domainbed import datasets
    from domainbed.lib.misc import seed_hash

    if getattr(args, "single_test_envs", False):
        raise ValueError("--single_test_envs does not apply: a single-source sweep holds out "
                         "every environment but the source; drop the flag")
    sets = {}
    for dataset in args.datasets:
        try:
            sets[dataset] = single_source_test_envs(datasets.num_environments(dataset))
        except ValueError as err:
            raise ValueError(f"{dataset}: {err}") from None
    args_list = []
    for trial_seed in range(args.n_trials):
        for dataset in args.datasets:
            for algorithm in args.algorithms:
                for test_envs in sets[dataset]:
                    for hparams_seed in range(args.n_hparams_from, args.n_hparams):
                        train_args: dict[str, Any] = {
                            "dataset": dataset,
                            "algorithm": algorithm,
                            "test_envs": test_envs,
                            "holdout_fraction": args.holdout_fraction,
                            "hparams_seed": hparams_seed,
                            "data_dir": args.data_dir,
                            "task": args.task,
                            "trial_seed": trial_seed,
                            "seed": seed_hash(
                                dataset, algorithm, test_envs, hparams_seed, trial_seed
                            ),
                        }
                        if args.steps is not None:
                            train_args["steps"] = args.steps
                        if args.hparams is not None:
                            train_args["hparams"] = args.hparams
                        args_list.append(train_args)
    return args_list


def uses_our_engine() -> bool:
    return getattr(domainbed, "ENGINE", None) == OUR_ENGINE


DESCRIPTION = "Run a single-source DG sweep: each job trains on one environment, tests on the rest"


# ------------------------------------------------------------------ a public DomainBed clone


def public_parser() -> argparse.ArgumentParser:
    """The public DomainBed sweep's flags (it has no parser to import: its sweep parses in
    `__main__`), and `delete_all`."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    parser.add_argument("command", choices=["launch", "delete_incomplete", "delete_all"])
    parser.add_argument("--datasets", nargs="+", type=str, default=None)
    parser.add_argument("--algorithms", nargs="+", type=str, default=None)
    parser.add_argument("--task", type=str, default="domain_generalization")
    parser.add_argument("--n_hparams_from", type=int, default=0)
    parser.add_argument("--n_hparams", type=int, default=20)
    parser.add_argument("--output_dir", type=str, required=True)
    parser.add_argument("--data_dir", type=str, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_trials", type=int, default=3)
    parser.add_argument("--command_launcher", type=str, required=True)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--hparams", type=str, default=None)
    parser.add_argument("--holdout_fraction", type=float, default=0.2)
    parser.add_argument("--skip_confirmation", action="store_true")
    return parser


def _public_usage_error(args: argparse.Namespace, known_datasets: Sequence[str],
                        known_algorithms: Sequence[str], launchers: dict) -> str | None:
    for name in args.datasets:
        if name not in known_datasets:
            return f"unknown dataset {name!r} (known: {', '.join(known_datasets)})"
    for name in args.algorithms:
        if name not in known_algorithms:
            return f"unknown algorithm {name!r} (known: {', '.join(known_algorithms)})"
    if args.command_launcher not in launchers:
        return (f"unknown command launcher {args.command_launcher!r} "
                f"(known: {', '.join(launchers)})")
    if args.n_trials < 1 or not 0 <= args.n_hparams_from < args.n_hparams:
        return "need --n_trials >= 1 and 0 <= --n_hparams_from < --n_hparams"
    return None


def _confirmed(skip: bool) -> bool:
    if skip:
        return True
    try:
        answer = input("Are you sure? (y/n) ")
    except EOFError:
        answer = ""
    if answer.strip().lower().startswith("y"):
        return True
    print("Nevermind!")
    return False


def run_public(args: argparse.Namespace) -> int:
    """The sweep on a public DomainBed clone, through its own `Job` and launchers.

    Its dummy launcher is run without `Job.launch`, which would create every job directory
    for a dry run.
    """
    from domainbed import algorithms, command_launchers, datasets
    from domainbed.scripts.sweep import Job

    if args.datasets is None:
        args.datasets = [name for name in datasets.DATASETS if "Debug" not in name]
    if args.algorithms is None:
        args.algorithms = list(algorithms.ALGORITHMS)
    try:
        error = _public_usage_error(args, datasets.DATASETS, algorithms.ALGORITHMS,
                                    command_launchers.REGISTRY)
        if error:
            raise ValueError(error)
        jobs = [Job(train_args, args.output_dir) for train_args in single_source_args_list(args)]
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    for job in jobs:
        print(job)
    counts = {state: sum(job.state == state for job in jobs)
              for state in (Job.DONE, Job.INCOMPLETE, Job.NOT_LAUNCHED)}
    print(f"{len(jobs)} jobs: {counts[Job.DONE]} done, {counts[Job.INCOMPLETE]} incomplete, "
          f"{counts[Job.NOT_LAUNCHED]} not launched.")

    if args.command == "launch":
        to_launch = [job for job in jobs if job.state == Job.NOT_LAUNCHED]
        print(f"About to launch {len(to_launch)} jobs.")
        if not to_launch or not _confirmed(args.skip_confirmation):
            return 0
        launcher = command_launchers.REGISTRY[args.command_launcher]
        if args.command_launcher == "dummy":
            launcher([job.command_str for job in to_launch])
        else:
            Job.launch(to_launch, launcher)
        return 0

    wanted = {Job.INCOMPLETE} if args.command == "delete_incomplete" else {Job.INCOMPLETE,
                                                                          Job.DONE}
    to_delete = [job for job in jobs if job.state in wanted]
    print(f"About to delete {len(to_delete)} jobs.")
    if to_delete and _confirmed(args.skip_confirmation):
        Job.delete(to_delete)
    return 0


# ------------------------------------------------------------------ entry point


def run_on_our_engine(argv: list[str] | None) -> int:
    """The sweep on this project's engine: its parser, checks, launchers and resumption, with
    the single-source job list."""
    from domainbed.scripts import sweep

    parser = sweep.build_parser()
    parser.prog = PROG
    parser.description = DESCRIPTION
    return sweep.run_command(argv, parser, single_source_args_list)


def main(argv: list[str] | None = None) -> int:
    """On this project's engine, `run_on_our_engine` under the engine's error convention
    (`domainbed.lib.cli.command`, imported here: a public clone has none, and `run_public`
    reports bad input in the same one-line form)."""
    if not uses_our_engine():
        return run_public(public_parser().parse_args(argv))
    from domainbed.lib.cli import command

    return command(PROG)(run_on_our_engine)(argv)


if __name__ == "__main__":
    sys.exit(main())
