"""Run a DomainBed hyperparameter sweep, and pick it up again after an interruption.

    python -m domainbed.scripts.sweep launch --datasets RotatedMNIST --algorithms ERM \\
        --data_dir D --output_dir O --command_launcher local [--max_parallel 2]
    python -m domainbed.scripts.sweep delete_incomplete ...same flags...
    python -m domainbed.scripts.sweep delete_all ...same flags...

Each job (trial x dataset x algorithm x test envs x hyperparameter seed) lives in
`O/<md5 of its training arguments>`, named exactly as the public DomainBed names it, so a
directory it wrote is recognised job for job. A job is done when its directory holds `done`,
incomplete when the directory exists without it (running, failed or killed), and not launched
otherwise. `launch` starts only jobs not launched; `delete_incomplete` clears failed or killed
ones so that the next `launch` reruns exactly those, from scratch. `launch --resume_incomplete`
(ours, not upstream's) starts the incomplete ones again in place instead, and the training
script carries each on from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from domainbed import datasets, hparams_registry, launchers
from domainbed.lib.cli import OneLineParser, UsageError, command, path_arg
from domainbed.lib.misc import seed_hash
from domainbed.lib.output_dir import check_output_dir
from domainbed.lib.sweep_jobs import (
    DONE,
    INCOMPLETE,
    NOT_LAUNCHED,
    Job,
    check_launcher,
    report_left_alone,
    to_launch,
)


def all_test_env_combinations(n: int) -> Iterator[list[int]]:
    """Every single test env and every pair, in the order [0], [0, 1], [0, 2], ..., [1], ...

    The pairs are what leave-one-domain-out model selection validates on.
    """
    if n < 3:
        raise ValueError(f"leave-one-domain-out needs at least 3 environments, got {n}")
    for first in range(n):
        yield [first]
        for second in range(first + 1, n):
            yield [first, second]


def make_args_list(
    n_trials: int,
    dataset_names: Sequence[str],
    algorithms: Sequence[str],
    n_hparams_from: int,
    n_hparams: int,
    steps: int | None,
    data_dir: str,
    task: str,
    holdout_fraction: float,
    single_test_envs: bool,
    hparams: str | None,
) -> list[dict[str, Any]]:
    """The training arguments of every job, in the public DomainBed's order and form.

    The keys and values (the per-job `seed` included) must stay exactly as they are: their
    JSON text names each job's directory.
    """
    args_list = []
    for trial_seed in range(n_trials):
        for dataset in dataset_names:
            n_envs = datasets.num_environments(dataset)
            for algorithm in algorithms:
                if single_test_envs:
                    test_env_sets: list[list[int]] = [[env] for env in range(n_envs)]
                else:
                    test_env_sets = list(all_test_env_combinations(n_envs))
                for test_envs in test_env_sets:
                    for hparams_seed in range(n_hparams_from, n_hparams):
                        train_args: dict[str, Any] = {
                            "dataset": dataset,
                            "algorithm": algorithm,
                            "test_envs": test_envs,
                            "holdout_fraction": holdout_fraction,
                            "hparams_seed": hparams_seed,
                            "data_dir": data_dir,
                            "task": task,
                            "trial_seed": trial_seed,
                            "seed": seed_hash(
                                dataset, algorithm, test_envs, hparams_seed, trial_seed
                            ),
                        }
                        if steps is not None:
                            train_args["steps"] = steps
                        if hparams is not None:
                            train_args["hparams"] = hparams
                        args_list.append(train_args)
    return args_list


def ask_for_confirmation() -> bool:
    """True only for an answer starting with 'y'; end of input counts as no."""
    try:
        answer = input("Are you sure? (y/n) ")
    except EOFError:
        answer = ""
    return answer.strip().lower().startswith("y")


def _default_datasets() -> list[str]:
    return [name for name in datasets.DATASETS if "Debug" not in name]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="sweep", description="Run a sweep")
    parser.add_argument("command", choices=["launch", "delete_incomplete", "delete_all"])
    parser.add_argument(
        "--datasets",
        nargs="+",
        type=str,
        default=None,
        help="default: every registered dataset except the Debug ones",
    )
    parser.add_argument(
        "--algorithms",
        nargs="+",
        type=str,
        default=None,
        help="default: every registered algorithm",
    )
    parser.add_argument(
        "--task",
        type=str,
        default="domain_generalization",
        choices=["domain_generalization", "domain_adaptation"],
    )
    parser.add_argument("--n_hparams_from", type=int, default=0)
    parser.add_argument("--n_hparams", type=int, default=20)
    parser.add_argument("--output_dir", type=path_arg, required=True)
    parser.add_argument("--data_dir", type=path_arg, required=True)
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the order in which jobs are launched"
    )
    parser.add_argument("--n_trials", type=int, default=3)
    parser.add_argument("--command_launcher", type=str, required=True)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument(
        "--hparams",
        type=str,
        default=None,
        help="JSON dict of hyperparameters that override every job's",
    )
    parser.add_argument("--holdout_fraction", type=float, default=0.2)
    parser.add_argument("--single_test_envs", action="store_true")
    parser.add_argument("--skip_confirmation", action="store_true")
    parser.add_argument(
        "--max_parallel",
        type=int,
        default=None,
        help="jobs run at once by the local launcher (default 1)",
    )
    parser.add_argument(
        "--no_wait",
        action="store_true",
        help="return once the jobs are queued, for launchers that queue them (slurm); launch "
        "again later to see what is done",
    )
    parser.add_argument(
        "--resume_incomplete",
        action="store_true",
        help="launch incomplete jobs too (not those still running); each continues from its "
        "last checkpoint",
    )
    return parser


def _check(args: argparse.Namespace) -> None:
    """Refuse any input that would make jobs fail, before a single one is created."""
    import domainbed.algorithms  # registers every algorithm and runs the plugins

    known_algorithms = domainbed.algorithms.ALGORITHMS
    for name in args.datasets:
        if name not in datasets.DATASETS:
            raise UsageError(f"unknown dataset {name!r} (known: {', '.join(datasets.DATASETS)})")
    for name in args.algorithms:
        if name not in known_algorithms:
            raise UsageError(f"unknown algorithm {name!r} (known: {', '.join(known_algorithms)})")
    check_launcher(args.command_launcher, launcher_options(args), args.command == "launch")
    if args.command == "launch":
        check_output_dir(args.output_dir)
    if args.n_trials < 1 or args.n_hparams <= args.n_hparams_from or args.n_hparams_from < 0:
        raise UsageError(
            "need --n_trials >= 1 and 0 <= --n_hparams_from < --n_hparams "
            f"(got {args.n_trials}, {args.n_hparams_from}, {args.n_hparams})"
        )
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if not 0.0 < args.holdout_fraction < 1.0:
        raise UsageError(f"--holdout_fraction must lie in (0, 1), got {args.holdout_fraction}")
    if args.hparams is not None:
        try:
            overrides = json.loads(args.hparams)
        except json.JSONDecodeError as err:
            raise UsageError(f"--hparams is not valid JSON: {err}") from None
        if not isinstance(overrides, dict):
            raise UsageError("--hparams must be a JSON object, like '{\"lr\": 0.001}'")
        _check_overrides(overrides, args.algorithms, args.datasets)


def _check_overrides(
    overrides: dict[str, Any], algorithms: Sequence[str], dataset_names: Sequence[str]
) -> None:
    """Refuse the overrides `train` would refuse in any job: every job gets all of them, so a
    key one algorithm lacks would fail each of its jobs (train's own check, and message)."""
    for algorithm in algorithms:
        for dataset in dataset_names:
            try:
                hparams_registry.validate_overrides(algorithm, dataset, overrides)
            except hparams_registry.InvalidHParam as err:
                raise UsageError(f"--hparams: {err}") from None


def launcher_options(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given that go to the launcher as keyword arguments of the same name."""
    options: dict[str, Any] = {}
    if args.max_parallel is not None:
        options["max_parallel"] = args.max_parallel
    if args.no_wait:
        options["no_wait"] = True
    return options


def _summary(jobs: Sequence[Job]) -> str:
    counts = {
        state: sum(job.state == state for job in jobs) for state in (DONE, INCOMPLETE, NOT_LAUNCHED)
    }
    return (
        f"{len(jobs)} jobs: {counts[DONE]} done, {counts[INCOMPLETE]} incomplete, "
        f"{counts[NOT_LAUNCHED]} not launched."
    )


def _confirmed(args: argparse.Namespace) -> bool:
    if args.skip_confirmation or ask_for_confirmation():
        return True
    print("Nevermind!")
    return False


ArgsListBuilder = Callable[[argparse.Namespace], "list[dict[str, Any]]"]


def multi_source_args_list(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The jobs of a DomainBed sweep: one or two test environments each (or one with
    --single_test_envs). Raises ValueError for a dataset it cannot split that way."""
    if not args.single_test_envs:
        for name in args.datasets:
            if datasets.num_environments(name) < 3:
                raise ValueError(f"{name} has fewer than 3 environments: add --single_test_envs")
    return make_args_list(
        n_trials=args.n_trials,
        dataset_names=args.datasets,
        algorithms=args.algorithms,
        n_hparams_from=args.n_hparams_from,
        n_hparams=args.n_hparams,
        steps=args.steps,
        data_dir=args.data_dir,
        task=args.task,
        holdout_fraction=args.holdout_fraction,
        single_test_envs=args.single_test_envs,
        hparams=args.hparams,
    )


def prepare(
    args: argparse.Namespace, args_list_for: ArgsListBuilder = multi_source_args_list
) -> list[Job]:
    """The sweep's jobs, after filling in the default datasets and algorithms and checking
    every argument (UsageError). Creates nothing.

    `args_list_for` turns the arguments into every job's training arguments; other kinds of
    sweep (single-source DG, say) pass their own and get launching, resuming and deletion as
    they are here. It raises ValueError, with what to change, for arguments it cannot use.
    """
    args.datasets = args.datasets if args.datasets is not None else _default_datasets()
    if args.algorithms is None:
        import domainbed.algorithms

        args.algorithms = list(domainbed.algorithms.ALGORITHMS)
    _check(args)
    try:
        args_list = args_list_for(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return [Job(train_args, args.output_dir) for train_args in args_list]


def run(args: argparse.Namespace, args_list_for: ArgsListBuilder = multi_source_args_list) -> int:
    """Carry out one sweep command on already-parsed arguments; the exit status.

    `launch` exits 1 only if a job it started failed: a job another live process runs (one
    left alone, or one that another launcher took over meanwhile) is that process's to finish,
    and a relaunch shows it done. A deletion that leaves a running job alone exits 1: the
    sweep is not yet as asked.
    """
    jobs = prepare(args, args_list_for)
    for job in jobs:
        print(job)
    print(_summary(jobs))

    if args.command == "launch":
        launching = to_launch(jobs, args.resume_incomplete)
        incomplete = sum(job.state == INCOMPLETE for job in jobs)
        if incomplete and not args.resume_incomplete:
            print(
                f"{incomplete} incomplete jobs are left alone; if they are not running, "
                "`delete_incomplete` and launch again to rerun them, or launch with "
                "--resume_incomplete to continue them from their last checkpoint."
            )
        elif args.resume_incomplete:
            report_left_alone(jobs, launching)
        print(f"About to launch {len(launching)} jobs.")
        if not launching or not _confirmed(args):
            return 0
        launcher = launchers.REGISTRY[args.command_launcher]
        try:
            failed = Job.launch(launching, launcher, seed=args.seed, **launcher_options(args))
        except KeyboardInterrupt:
            print(
                "Interrupted: unfinished jobs are incomplete; `delete_incomplete` then `launch` "
                "reruns them.",
                file=sys.stderr,
            )
            return 130
        return 1 if failed else 0

    wanted = INCOMPLETE if args.command == "delete_incomplete" else None
    to_delete = [job for job in jobs if job.state != NOT_LAUNCHED and wanted in (None, job.state)]
    print(f"About to delete {len(to_delete)} jobs.")
    if to_delete and _confirmed(args):
        running = Job.delete(to_delete)
        if running:
            print(
                f"{len(running)} jobs are still running and were not deleted; stop them "
                "or let them finish, then run this again.",
                file=sys.stderr,
            )
            return 1
    return 0


def run_command(
    argv: list[str] | None, parser: argparse.ArgumentParser, args_list_for: ArgsListBuilder
) -> int:
    """Parse `argv` and carry out the sweep command: the body of this command line and of
    those built on it (another kind of sweep passes its parser and job list builder). Input
    errors propagate as UsageError, for the caller's `command` to report."""
    args = parser.parse_args(argv)
    try:
        return run(args, args_list_for)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


@command("sweep")
def main(argv: list[str] | None = None) -> int:
    return run_command(argv, build_parser(), multi_source_args_list)


if __name__ == "__main__":
    sys.exit(main())
