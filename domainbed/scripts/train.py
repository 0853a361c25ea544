"""Train one algorithm on one dataset with some environments held out: one cell of a sweep.

Flags, seeding, splits and output files follow the public DomainBed's `train.py`, so sweeps,
`collect_results` and published numbers stay comparable:

- every environment is split into `out` (a `--holdout_fraction` share) and `in` with
  `split_dataset(env, n, seed_hash(trial_seed, env_i))`; a test environment's `in` part gives a
  further `uda` share (`--uda_holdout_fraction`) of unlabelled examples;
- training draws one minibatch per training environment per step; every `--checkpoint_freq`
  steps (and at the last one) all splits are evaluated and one record goes to `results.jsonl`;
- `--hparams_seed 0` means the default hyperparameters, otherwise a random draw seeded by
  `seed_hash(hparams_seed, trial_seed)`; `--hparams` JSON overrides either.

Beyond upstream: the run is resumable (a killed run restarted with the same arguments carries on
from its last checkpoint, bit for bit on the same machine), every file is written atomically,
bad input stops with one line saying what to do before anything is written, a loss that
becomes NaN or infinite stops the run before it is recorded (exit 1, no `done`), in-memory
datasets are fed without worker processes, and on CUDA the fast path (`domainbed.lib.fast_path`;
`--fast_path off` to compare) keeps the device fed; it changes float rounding and, with more
loader workers, which augmentations an image dataset draws, nothing else.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import PIL
import torch
import torchvision

from domainbed import algorithms, datasets, hparams_registry
from domainbed.datasets.multiple_domain import MultipleDomainDataset
from domainbed.lib import (
    atomic,
    checkpoint,
    fast_path,
    io_errors,
    joblock,
    misc,
    precision,
    run_dir,
)
from domainbed.lib.cli import Failure, OneLineParser, UsageError, command, path_arg
from domainbed.lib.fast_data_loader import FastDataLoader, InfiniteDataLoader
from domainbed.lib.output_dir import check_output_dir, make_output_dir

PRECISIONS = ("fp32", "bf16")
PROG = "domainbed.scripts.train"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Domain generalization")
    parser.add_argument("--data_dir", type=path_arg)
    parser.add_argument("--dataset", type=str, default="RotatedMNIST")
    parser.add_argument("--algorithm", type=str, default="ERM")
    parser.add_argument("--task", type=str, default="domain_generalization",
                        choices=["domain_generalization", "domain_adaptation"])
    parser.add_argument("--hparams", type=str, help="JSON object of hyperparameter overrides")
    parser.add_argument("--hparams_seed", type=int, default=0,
                        help='seed for random hparams (0 means "default hparams")')
    parser.add_argument("--trial_seed", type=int, default=0,
                        help="trial number (seeds split_dataset and random_hparams)")
    parser.add_argument("--seed", type=int, default=0, help="seed for everything else")
    parser.add_argument("--steps", type=int, default=None,
                        help="number of steps (default: the dataset's N_STEPS)")
    parser.add_argument("--checkpoint_freq", type=int, default=None,
                        help="evaluate and checkpoint every N steps (default: the dataset's)")
    parser.add_argument("--test_envs", type=int, nargs="+", default=[0])
    parser.add_argument("--output_dir", type=path_arg, default="train_output")
    parser.add_argument("--holdout_fraction", type=float, default=0.2)
    parser.add_argument("--uda_holdout_fraction", type=float, default=0,
                        help="for domain adaptation, the share of each test env given unlabelled")
    parser.add_argument("--skip_model_save", action="store_true")
    parser.add_argument("--save_model_every_checkpoint", action="store_true")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="bf16: bfloat16 autocast in training steps and evaluation, about "
                             "2.5x faster on CPUs with AMX; not a public DomainBed flag, and its "
                             "numbers differ from fp32 by rounding (default: fp32)")
    # Not public DomainBed flags: recorded in a run's args only when given (SUPPRESS), so the
    # records of default runs stay exactly DomainBed's.
    parser.add_argument("--eval_splits", nargs="+", metavar="SPLIT", default=argparse.SUPPRESS,
                        help="evaluate only these splits (env<i>_in, env<i>_out, env<i>_uda), "
                             "for a quick look; model selection skips such records "
                             "(default: every split)")
    parser.add_argument("--no_initial_eval", action="store_true", default=argparse.SUPPRESS,
                        help="skip the evaluation and checkpoint at step 0, before any training "
                             "(default: evaluate there, as DomainBed does)")
    fast = parser.add_argument_group(
        "speed", "how the run feeds the device (domainbed.lib.fast_path); on a CPU the defaults "
        "give records identical to --fast_path off")
    fast.add_argument("--fast_path", choices=("on", "off"), default=argparse.SUPPRESS,
                      help="on CUDA: in-memory datasets resident on the device, a loader worker "
                           "per core with pinned memory for image datasets, channels-last "
                           "ResNets, large evaluation batches; off: the plain path (default: on)")
    fast.add_argument("--eval_batch_size", type=int, default=argparse.SUPPRESS,
                      help="evaluation batch size (default: 64, or 2048 for in-memory and 256 "
                           "for image datasets on CUDA with the fast path)")
    fast.add_argument("--loader_workers", type=int, default=argparse.SUPPRESS,
                      help="DataLoader workers for image datasets; each draws its own "
                           "augmentations, so the count changes them (default: the dataset's "
                           "8, or one per core on CUDA with the fast path; capped at the cores)")
    fast.add_argument("--compile", choices=fast_path.COMPILE_MODES, default=argparse.SUPPRESS,
                      help="torch.compile the algorithm's networks in this mode; reduce-overhead "
                           "captures CUDA graphs (default: off)")
    fast.add_argument("--cudnn_benchmark", action="store_true", default=argparse.SUPPRESS,
                      help="let cuDNN time and pick convolution algorithms: faster ResNets, "
                           "but float rounding may differ from run to run (default: "
                           "deterministic algorithms)")
    return parser


def split_names(args: argparse.Namespace) -> list[str]:
    """Every split a run with these arguments has (what DomainBed evaluates)."""
    n_envs = datasets.num_environments(args.dataset)
    n_uda = len(args.test_envs) if args.uda_holdout_fraction > 0 else 0
    return [f"env{i}_{part}" for part, count in (("in", n_envs), ("out", n_envs), ("uda", n_uda))
            for i in range(count)]


def autocast(precision: str, device: str) -> torch.autocast:
    """The mixed-precision context of a run; a no-op for fp32.

    Autocast state is per thread, so every evaluation thread enters its own.
    """
    return torch.autocast("cuda" if device == "cuda" else "cpu", dtype=torch.bfloat16,
                          enabled=precision == "bf16")


def check_args(args: argparse.Namespace) -> None:
    """Reject what would fail later (or silently misbehave), before anything is written."""
    if args.algorithm not in algorithms.ALGORITHMS:
        raise UsageError(f"unknown --algorithm {args.algorithm!r}; choose one of: "
                         + ", ".join(algorithms.ALGORITHMS))
    if args.dataset not in datasets.DATASETS:
        raise UsageError(f"unknown --dataset {args.dataset!r}; choose one of: "
                         + ", ".join(datasets.DATASETS))
    n_envs = datasets.num_environments(args.dataset)
    bad = [e for e in args.test_envs if not 0 <= e < n_envs]
    if bad:
        raise UsageError(f"--test_envs {bad} out of range: {args.dataset} has environments "
                         f"0..{n_envs - 1}")
    repeated = sorted({e for e in args.test_envs if args.test_envs.count(e) > 1})
    if repeated:
        # A repeat would count as one more held-out domain: the algorithm would be built for
        # fewer training domains than it is given.
        raise UsageError(f"--test_envs lists environment {repeated[0]} more than once")
    if len(args.test_envs) >= n_envs:
        raise UsageError(f"--test_envs leaves no environment of {args.dataset} to train on")
    if not 0 < args.holdout_fraction < 1:
        raise UsageError(f"--holdout_fraction must lie in (0, 1), got {args.holdout_fraction}")
    if not 0 <= args.uda_holdout_fraction < 1:
        raise UsageError("--uda_holdout_fraction must lie in [0, 1), "
                         f"got {args.uda_holdout_fraction}")
    if args.task == "domain_adaptation" and args.uda_holdout_fraction == 0:
        raise UsageError("--task domain_adaptation needs unlabelled test examples: "
                         "set --uda_holdout_fraction above 0")
    for flag in ("steps", "checkpoint_freq", "eval_batch_size"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise UsageError(f"--{flag} must be at least 1, got {value}")
    if getattr(args, "loader_workers", 0) < 0:
        raise UsageError(f"--loader_workers must be at least 0, got {args.loader_workers}")
    if args.hparams is not None:
        try:
            overrides = json.loads(args.hparams)
        except json.JSONDecodeError as err:
            raise UsageError(f"--hparams is not valid JSON ({err}); "
                             "pass an object such as '{\"lr\": 0.001}'") from None
        if not isinstance(overrides, dict):
            raise UsageError("--hparams must be a JSON object, such as '{\"lr\": 0.001}'")
        try:
            hparams_registry.validate_overrides(args.algorithm, args.dataset, overrides)
        except hparams_registry.InvalidHParam as err:
            raise UsageError(f"--hparams: {err}") from None
    known = split_names(args)
    unknown = [name for name in getattr(args, "eval_splits", []) if name not in known]
    if unknown:
        raise UsageError(f"--eval_splits: this run has no split {unknown[0]}; choose from "
                         + ", ".join(known))
    check_output_dir(args.output_dir)


def resolve_hparams(args: argparse.Namespace) -> dict[str, Any]:
    if args.hparams_seed == 0:
        hparams = hparams_registry.default_hparams(args.algorithm, args.dataset)
    else:
        hparams = hparams_registry.random_hparams(
            args.algorithm, args.dataset, misc.seed_hash(args.hparams_seed, args.trial_seed))
    if args.hparams:
        hparams.update(json.loads(args.hparams))
    return hparams


def previous_run(args: argparse.Namespace) -> tuple[bool, dict[str, Any] | None]:
    """(finished?, resume state) for what `--output_dir` already holds; raises UsageError when
    it holds something this run must not continue or overwrite."""
    out = args.output_dir
    where = f"--output_dir {out}"
    finished = run_dir.finished_records(out, where)
    if finished is not None:
        if finished:
            run_dir.refuse_other_arguments(finished[-1]["args"], vars(args), where,
                                           "a finished run")
        checkpoint.discard(out)  # left over if the run died between `done` and its cleanup
        return True, None
    state = checkpoint.load(out)  # raises UnreadableState for a damaged file
    if state is not None:
        run_dir.refuse_other_arguments(state["args"], vars(args), where, "an interrupted run")
        return False, state
    if os.path.exists(os.path.join(out, run_dir.RESULTS)):
        raise UsageError(f"{where} holds {run_dir.RESULTS} but no {run_dir.RESUME} to resume "
                         "from; delete it or choose another --output_dir")
    return False, None


def make_splits(dataset: MultipleDomainDataset, args: argparse.Namespace,
                class_balanced: bool) -> tuple[list, list, list]:
    """(in, out, uda) lists of (split, sampling weights or None), as upstream draws them."""
    in_splits, out_splits, uda_splits = [], [], []
    for env_i, env in enumerate(dataset):
        out, in_ = misc.split_dataset(env, int(len(env) * args.holdout_fraction),
                                      misc.seed_hash(args.trial_seed, env_i))
        uda = None
        if env_i in args.test_envs:
            uda, in_ = misc.split_dataset(in_, int(len(in_) * args.uda_holdout_fraction),
                                          misc.seed_hash(args.trial_seed, env_i))

        def weights(split):
            return misc.make_weights_for_balanced_classes(split) if class_balanced else None

        in_splits.append((in_, weights(in_)))
        out_splits.append((out, None))
        if uda is not None and len(uda):
            uda_splits.append((uda, weights(uda)))
    return in_splits, out_splits, uda_splits


def open_log(args: argparse.Namespace, hparams: dict[str, Any]) -> None:
    """Create the output directory, clear what killed writes left in it, copy stdout/stderr
    into it, and log the run's setup."""
    make_output_dir(args.output_dir)
    leftovers = atomic.remove_leftovers(args.output_dir)
    sys.stdout = misc.Tee(os.path.join(args.output_dir, run_dir.OUT), stream=sys.stdout)
    sys.stderr = misc.Tee(os.path.join(args.output_dir, run_dir.ERR), stream=sys.stderr)
    if leftovers:
        print(f"Removed {len(leftovers)} temporary files left by an interrupted write: "
              + ", ".join(leftovers))
    print("Environment:")
    print(f"\tPython: {sys.version.split(' ')[0]}")
    print(f"\tPyTorch: {torch.__version__}")
    print(f"\tTorchvision: {torchvision.__version__}")
    print(f"\tCUDA: {torch.version.cuda}")
    print(f"\tCUDNN: {torch.backends.cudnn.version()}")
    print(f"\tNumPy: {np.__version__}")
    print(f"\tPIL: {PIL.__version__}")
    for title, values in (("Args", vars(args)), ("HParams", hparams)):
        print(f"{title}:")
        for key, value in sorted(values.items()):
            print(f"\t{key}: {value}")


def evaluate(algorithm: algorithms.Algorithm, loaders: dict[str, FastDataLoader],
             device: str, precision: str = "fp32",
             channels_last: bool | None = None) -> dict[str, float]:
    """`<split>_acc` for every split.

    On CPU the splits are shared among as many Python threads as torch has intra-op threads,
    each running its convolutions single-threaded. Measured on this project's 2-core machine,
    torch's default of two threads cooperating on every small convolution predicted 2,048
    MNIST images in 6.5 s while one thread took 2.1 s; independent threads keep both cores
    busy without waiting on each other, also when other jobs share the machine.
    `channels_last` (default: on a CPU only) feeds inputs in NHWC layout.
    """
    if channels_last is None:
        channels_last = device == "cpu"

    def count(loader: FastDataLoader) -> tuple[float, float]:
        with autocast(precision, device):
            return misc.count_correct(algorithm, loader, None, device,
                                      channels_last=channels_last)

    threads = torch.get_num_threads()
    workers = threads if device == "cpu" else 1
    algorithm.eval()
    try:
        if workers > 1:
            torch.set_num_threads(1)
        with ThreadPoolExecutor(workers) as pool:
            counts = list(pool.map(count, loaders.values()))
    finally:
        torch.set_num_threads(threads)
        algorithm.train()
    return {f"{name}_acc": correct / total
            for name, (correct, total) in zip(loaders, counts, strict=True)}


class NonFiniteLoss(Failure):
    """The training loss became NaN or infinite: the hyperparameters make training diverge."""


def check_finite_losses(window: dict[str, list[float]], first_step: int) -> None:
    """Raise NonFiniteLoss, naming the first step, if a logged loss of the window that began at
    `first_step` is not finite.

    Checked once per evaluation, on values the algorithms have already copied to the host, so
    the check adds no device synchronisation per step; a diverged stretch is never recorded or
    checkpointed, and the run never reaches `done`.
    """
    bad = [(offset, key, value) for key, values in window.items() if "loss" in key
           for offset, value in enumerate(values) if not math.isfinite(value)]
    if bad:
        offset, key, value = min(bad)
        raise NonFiniteLoss(
            f"the training loss became {value} at step {first_step + offset} ({key}); the "
            "hyperparameters make training diverge: lower the learning rate or choose smaller "
            "loss parameters (such as itl_omega) in --hparams, with a new --output_dir")


def train(args: argparse.Namespace) -> int:
    check_args(args)
    hparams = resolve_hparams(args)
    finished, state = previous_run(args)
    if finished:
        print(f"{args.output_dir} already holds a finished run with these arguments; "
              "nothing to do")
        return 0

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    cudnn_benchmark = getattr(args, "cudnn_benchmark", False)
    torch.backends.cudnn.deterministic = not cudnn_benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision.warn_if_bf16_is_slow(args.precision, PROG, device)

    dataset = datasets.get_dataset_class(args.dataset)(args.data_dir, args.test_envs, hparams)
    in_splits, out_splits, uda_splits = make_splits(dataset, args, hparams["class_balanced"])
    if args.task == "domain_adaptation" and not uda_splits:
        raise UsageError("not enough unlabelled examples for domain adaptation: "
                         "raise --uda_holdout_fraction")
    fast = fast_path.resolve(device, dataset, enabled=getattr(args, "fast_path", "on") == "on",
                             eval_batch_size=getattr(args, "eval_batch_size", None),
                             loader_workers=getattr(args, "loader_workers", None),
                             compile_mode=getattr(args, "compile", "off"),
                             cudnn_benchmark=cudnn_benchmark)
    if fast.resident:
        fast_path.make_resident(dataset, device)
    workers = dataset.N_WORKERS if fast.loader_workers is None else fast.loader_workers

    train_loaders = [
        InfiniteDataLoader(env, weights, hparams["batch_size"], workers,
                           pin_memory=fast.pin_memory)
        for i, (env, weights) in enumerate(in_splits) if i not in args.test_envs]
    uda_loaders = [InfiniteDataLoader(env, weights, hparams["batch_size"], workers,
                                      pin_memory=fast.pin_memory)
                   for env, weights in uda_splits]
    # Upstream numbers uda splits by their position among uda splits, not by environment.
    chosen = getattr(args, "eval_splits", None)
    eval_loaders = {
        f"env{i}_{part}": FastDataLoader(split, fast.eval_batch_size, workers,
                                         pin_memory=fast.pin_memory)
        for part, splits in (("in", in_splits), ("out", out_splits), ("uda", uda_splits))
        for i, (split, _) in enumerate(splits)
        if chosen is None or f"env{i}_{part}" in chosen}
    first_eval = 1 if getattr(args, "no_initial_eval", False) else 0

    num_domains = len(dataset) - len(args.test_envs)
    try:
        algorithm = algorithms.get_algorithm_class(args.algorithm)(
            dataset.input_shape, dataset.num_classes, num_domains, hparams)
    except (ValueError, NotImplementedError) as err:  # e.g. a bad itl_omega, or vit: true
        raise UsageError(f"cannot build {args.algorithm} with these hyperparameters ({err}); "
                         "fix --hparams") from err
    algorithm.to(device)
    fast_path.prepare_model(algorithm, fast)
    streams = train_loaders + uda_loaders

    start_step, records = 0, []
    resuming = state is not None
    if resuming:
        checkpoint.restore(state, algorithm, streams, args.output_dir)
        start_step, records = state["next_step"], state["records"]
        del state

    # Setup is over and nothing failed: from here on the run writes into its directory.
    open_log(args, hparams)
    if resuming:
        # Drop anything written after the checkpoint.
        run_dir.write_records(args.output_dir, records)
        print(f"Resuming from step {start_step} ({len(records)} records so far)")

    def save_model(filename: str) -> None:
        if args.skip_model_save:
            return
        atomic.torch_save({
            "args": vars(args),
            "model_input_shape": dataset.input_shape,
            "model_num_classes": dataset.num_classes,
            "model_num_domains": num_domains,
            "model_hparams": hparams,
            "model_dict": algorithm.state_dict(),
        }, os.path.join(args.output_dir, filename))

    steps_per_epoch = min(len(env) / hparams["batch_size"] for env, _ in in_splits)
    n_steps = args.steps or dataset.N_STEPS
    checkpoint_freq = args.checkpoint_freq or dataset.CHECKPOINT_FREQ
    train_batches = zip(*train_loaders, strict=True)
    uda_batches = zip(*uda_loaders, strict=True)
    window = collections.defaultdict(list)
    window_start = start_step
    last_keys = None

    for step in range(start_step, n_steps):
        step_start = time.time()
        minibatches = [(fast.to_device(x), fast.to_device(y)) for x, y in next(train_batches)]
        unlabeled = None
        if args.task == "domain_adaptation":
            unlabeled = [fast.to_device(x) for x, _ in next(uda_batches)]
        with autocast(args.precision, device):
            step_vals = algorithm.update(minibatches, unlabeled)
        window["step_time"].append(time.time() - step_start)
        for key, value in step_vals.items():
            window[key].append(value)

        if (step % checkpoint_freq == 0 and step >= first_eval) or step == n_steps - 1:
            check_finite_losses(window, window_start)
            results: dict[str, Any] = {"step": step, "epoch": step / steps_per_epoch}
            for key, values in window.items():
                results[key] = float(np.mean(values))
            results.update(evaluate(algorithm, eval_loaders, device, args.precision,
                                    channels_last=device == "cpu" or fast.channels_last))
            results["mem_gb"] = (torch.cuda.max_memory_allocated() / 2**30
                                 if device == "cuda" else 0.0)

            keys = sorted(results)
            if keys != last_keys:
                misc.print_row(keys, colwidth=12)
                last_keys = keys
            misc.print_row([results[key] for key in keys], colwidth=12)

            results.update({"hparams": hparams, "args": vars(args)})
            records.append(json.dumps(results, sort_keys=True))
            window, window_start = collections.defaultdict(list), step + 1
            if args.save_model_every_checkpoint:
                save_model(f"model_step{step}.pkl")
            checkpoint.save(checkpoint.capture(algorithm, streams, step + 1, records, vars(args)),
                            args.output_dir)
            run_dir.write_records(args.output_dir, records)

    save_model(run_dir.MODEL)
    run_dir.mark_done(args.output_dir)
    checkpoint.discard(args.output_dir)
    return 0


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    """Exit 0 when done, 2 for input to change, 1 for a failure of the machine (a full disk)
    or of the code. Every message goes to the terminal and, once the run has opened its log,
    to its err.txt as well: `command` restores the streams only after it is printed."""
    args = build_parser().parse_args(argv)
    try:
        with joblock.running(args.output_dir):  # a sweep deletes no directory a live run holds
            return train(args)
    except (UsageError, Failure):
        raise
    except OSError as err:
        raise Failure(f"{io_errors.describe(err)}; then rerun the same command: the run "
                      "resumes from its last checkpoint") from err
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
