"""Before a sweep starts: how many jobs it will run, and roughly what they will cost.

    python -m domainbed_itl.scripts.plan --kind {multi_source,single_source} launch \\
        <the sweep's own flags> [--estimate_for {auto,cpu,h100}] [--yes]
    python -m domainbed_itl.scripts.plan meta_train --output_dir O [--outer_steps 200] ...

It builds the very job list the sweep builds (same flags, same builder) and counts, per dataset,
the jobs a `launch --resume_incomplete` would start: those not launched yet, and those
incomplete that no live process runs. Their cost is estimated from throughput figures measured
on named machines (each printed with its source; the one that is not measured says so), then
it asks whether to go on: exit status 0 for yes, 1 for no, 2 for bad input. The Makefile's
table targets run it before each sweep; `--yes` (YES=1) skips the question.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from domainbed import datasets, launchers
from domainbed.lib import joblock
from domainbed.lib.cli import OneLineParser, command, path_arg
from domainbed.scripts import sweep
from domainbed.scripts.train import resolve_hparams
from domainbed_itl.meta.run_files import LOG
from domainbed_itl.scripts.sweep_single_source import single_source_args_list

BUILDERS = {"multi_source": sweep.multi_source_args_list,
            "single_source": single_source_args_list}

MACHINES = {
    "cpu": "the project's 2-core CPU machines (Intel Xeon), one job at a time",
    "h100": "one NVIDIA H100 80GB GPU per job",
}


@dataclass(frozen=True)
class Throughput:
    """Speed of one backbone on one machine, per image, so that batch sizes and environment
    counts scale it."""

    train_s_per_image: float  # one training step's time per image of its minibatches
    eval_s_per_image: float  # one evaluation's time per image evaluated
    overhead_s: float  # start-up and dataset construction, once per job
    source: str


THROUGHPUT = {
    ("MNIST CNN", "cpu"): Throughput(
        0.638 / 320, 37.5 / 70_000, 4.4,
        "measured: RotatedMNIST ERM, fp32, 64 images x 5 environments per step: 0.638 s per "
        "step, 37.5 s per evaluation of all 70,000 images, 4.4 s start-up "
        "(results/benchmark_train_rotatedmnist_fp32.txt, machine otherwise idle)"),
    ("MNIST CNN", "h100"): Throughput(
        0.0050 / 320, (22.0 - 1000 * 0.0050 - 4.4) / 3 / 70_000, 4.4,
        "measured: RotatedMNIST ERM, 1,000 steps and 3 evaluations in 22 s wall, 5.0 ms per "
        "step (this project at 1276af5); of the rest, 4.4 s count as start-up (the CPU "
        "figure) and 12.6 s as the 3 evaluations"),
    ("ResNet-50", "cpu"): Throughput(
        1.117, 0.383, 10.0,
        "measured under a 1-minute load of 6 to 9 on the 2 cores (other work running): "
        "torchvision ResNet-50, 224x224, fp32, batch 32 to train, 64 to evaluate, no JPEG "
        "decoding; an upper bound for an idle machine (results/benchmark_resnet50_cpu.txt)"),
    ("ResNet-50", "h100"): Throughput(
        1 / 1000, 1 / 3000, 30.0,
        "ROUGH, NOT MEASURED: an assumed 1,000 training and 3,000 evaluated images per second "
        "for fp32 PyTorch ResNet-50 fed by DomainBed's JPEG loaders; the data pipeline decides"),
}
# FLOPs per 224x224 image, ResNet-18 / ResNet-50 (1.81 / 4.09 GFLOPs, torchvision's model table)
RESNET18_SCALE = 1.81 / 4.09

# Images over all environments (DomainBed's and WILDS' dataset tables); every split is evaluated.
IMAGES = {
    "Debug28": 48, "Debug224": 48, "ColoredMNIST": 70_000, "RotatedMNIST": 70_000,
    "VLCS": 10_729, "PACS": 9_991, "OfficeHome": 15_588, "TerraIncognita": 24_788,
    "DomainNet": 586_575, "WILDSCamelyon": 455_954, "WILDSFMoW": 523_846,
}


def backbone(dataset: str, hparams: dict) -> str:
    shape = datasets.get_dataset_class(dataset).INPUT_SHAPE
    if shape is not None and tuple(shape[1:]) == (28, 28):
        return "MNIST CNN"
    return "ResNet-18" if hparams.get("resnet18") else "ResNet-50"


def throughput(net: str, machine: str) -> tuple[Throughput, float]:
    """The figure for `net` on `machine` and the factor applied to it."""
    if net == "ResNet-18":
        return THROUGHPUT[("ResNet-50", machine)], RESNET18_SCALE
    return THROUGHPUT[(net, machine)], 1.0


def evaluations(steps: int, freq: int) -> int:
    """Records a run of `steps` steps writes: every `freq` steps and at the last one."""
    return len(range(0, steps, freq)) + (1 if (steps - 1) % freq else 0)


@functools.cache
def _hparams(algorithm: str, dataset: str, hparams_seed: int, trial_seed: int,
             overrides: str | None) -> dict:
    """A job's hyperparameters, as train resolves them; the same for all its test envs."""
    return resolve_hparams(argparse.Namespace(algorithm=algorithm, dataset=dataset,
                                              hparams_seed=hparams_seed, trial_seed=trial_seed,
                                              hparams=overrides))


def job_seconds(train_args: dict, machine: str) -> tuple[float | None, str]:
    """(estimated seconds, backbone) of one job; None where no image count is known."""
    dataset = train_args["dataset"]
    hparams = _hparams(train_args["algorithm"], dataset, train_args["hparams_seed"],
                       train_args["trial_seed"], train_args.get("hparams"))
    net = backbone(dataset, hparams)
    cls = datasets.get_dataset_class(dataset)
    if dataset not in IMAGES:
        return None, net
    steps = train_args.get("steps") or cls.N_STEPS
    figure, scale = throughput(net, machine)
    n_train = datasets.num_environments(dataset) - len(train_args["test_envs"])
    train = steps * hparams["batch_size"] * n_train * figure.train_s_per_image
    evaluate = evaluations(steps, cls.CHECKPOINT_FREQ) * IMAGES[dataset] * figure.eval_s_per_image
    return figure.overhead_s + scale * (train + evaluate), net


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def report(jobs: Sequence[sweep.Job], launching: Sequence[sweep.Job], machine: str) -> tuple[
        str, float, set[str]]:
    """The per-dataset table, the summed estimate (seconds) of the jobs to launch, and their
    backbones."""
    chosen = {id(job) for job in launching}
    rows: dict[str, dict] = {}
    for job in jobs:
        dataset = job.train_args["dataset"]
        row = rows.setdefault(dataset, {"jobs": 0, "done": 0, "running": 0, "to run": 0,
                                        "seconds": 0.0, "nets": set(), "unknown": False})
        row["jobs"] += 1
        row["done"] += job.state == sweep.DONE
        row["running"] += job.state == sweep.INCOMPLETE and joblock.is_running(job.output_dir)
        if id(job) in chosen:
            seconds, net = job_seconds(job.train_args, machine)
            row["to run"] += 1
            row["nets"].add(net)
            row["unknown"] |= seconds is None
            row["seconds"] += seconds or 0.0
    header = ["dataset", "backbone", "jobs", "done", "running", "to run", "est. to run"]
    lines = [header]
    for dataset, row in rows.items():
        cost = "unknown" if row["unknown"] else duration(row["seconds"]) if row["to run"] else "-"
        lines.append([dataset, "/".join(sorted(row["nets"])) or "-", *(str(row[key]) for key in (
            "jobs", "done", "running", "to run")), cost])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines)
    nets = set().union(*(row["nets"] for row in rows.values()))
    return text, sum(row["seconds"] for row in rows.values()), nets


def _ask(question: str) -> bool:
    try:
        answer = input(question)
    except EOFError:
        answer = ""
    return answer.strip().lower().startswith("y")


def build_parser() -> argparse.ArgumentParser:
    parser = sweep.build_parser()
    parser.prog = "plan"
    parser.description = "Count a sweep's jobs and estimate their cost before it is launched"
    parser.add_argument("--kind", choices=sorted(BUILDERS), required=True)
    parser.add_argument("--estimate_for", choices=["auto", *MACHINES], default="auto",
                        help="whose throughput figures to use (auto: h100 if CUDA is available)")
    parser.add_argument("--yes", action="store_true", help="do not ask; go on")
    return parser


def _machine(choice: str) -> str:
    if choice != "auto":
        return choice
    import torch

    return "h100" if torch.cuda.is_available() else "cpu"


# Seconds per outer step of `domainbed_itl.scripts.meta_train --preset paper` on RotatedMNIST
# (six inner loops of 1,000 steps), which `make meta-train` runs.
META_STEP_S = {
    "cpu": (78.0, "projected: 60-68 s measured per outer step of the preset on RotatedMNIST "
                  "without env 0 (five inner loops), under a load of about 5 on 2 cores, "
                  "scaled to six loops (results/hypergrad_paper/COMMAND)"),
    "h100": (0.53, "projected: 1.06 s measured per outer step of 2,000-step inner loops, "
                   "stacked with CUDA graphs, halved for the preset's 1,000 steps "
                   "(results/meta_step_benchmark_h100.txt)"),
}


def meta_main(argv: list[str]) -> int:
    """`plan meta_train --output_dir O --outer_steps N`: the outer steps left and their cost."""
    parser = OneLineParser(prog="plan meta_train")
    parser.add_argument("--output_dir", type=path_arg, required=True)
    parser.add_argument("--outer_steps", type=int, default=200)
    parser.add_argument("--estimate_for", choices=["auto", *MACHINES], default="auto")
    parser.add_argument("--yes", action="store_true")
    args = parser.parse_args(argv)
    try:
        with open(Path(args.output_dir) / LOG) as handle:
            done = sum(1 for line in handle if line.strip())
    except FileNotFoundError:
        done = 0
    left = max(args.outer_steps - done, 0)
    machine = _machine(args.estimate_for)
    seconds, source = META_STEP_S[machine]
    print(f"Plan: meta-training in {args.output_dir}: {done} of {args.outer_steps} outer steps "
          f"done, {left} to run; estimated {duration(left * seconds)} on {MACHINES[machine]}.")
    print(f"Based on {seconds} s per outer step, {source}.")
    if not left or args.yes or _ask(f"Run {left} outer steps? (y/n) "):
        return 0
    print("Nothing launched.")
    return 1


@command("plan")
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["meta_train"]:
        return meta_main(argv[1:])
    args = build_parser().parse_args(argv)
    jobs = sweep.prepare(args, BUILDERS[args.kind])
    machine = _machine(args.estimate_for)
    launching = sweep.to_launch(jobs, resume_incomplete=True)
    dry_run = launchers.REGISTRY[args.command_launcher].dry_run
    kind = args.kind.replace("_", "-")
    print(f"Plan: {kind} sweep in {args.output_dir}: {', '.join(args.algorithms)}; "
          f"{args.n_hparams - args.n_hparams_from} hyperparameter draws x {args.n_trials} trials"
          + (f"; {args.steps} steps per job" if args.steps else "; each dataset's own steps"))
    table, seconds, nets = report(jobs, launching, machine)
    print(table)
    print(f"{len(launching)} of {len(jobs)} jobs to run (not launched, or incomplete and not "
          "running: launch --resume_incomplete continues them from their last checkpoint).")
    if launching:
        slots = (args.max_parallel or 1) if args.command_launcher == "local" else None
        wall = (f"; {slots} at a time with the local launcher: about "
                f"{duration(seconds / slots)} of wall time" if slots else
                f"; wall time depends on how many jobs the {args.command_launcher} launcher "
                "runs at once")
        print(f"Estimated cost on {MACHINES[machine]}: {duration(seconds)} of job time{wall}.")
        print("Based on (ERM-like cost per step: algorithms that take extra passes, such as "
              "SagNet, RSC or CDANN, cost more):")
        for net in sorted(nets):
            figure, scale = throughput(net, machine)
            scaled = "" if scale == 1 else f" (ResNet-50 figure x {scale:.2f}, by FLOPs)"
            print(f"  {net} on {machine}{scaled}: {figure.source}")
    if dry_run:
        print(f"The {args.command_launcher} launcher only prints the commands: nothing runs.")
        return 0
    if not launching or args.yes or _ask(f"Launch {len(launching)} jobs? (y/n) "):
        return 0
    print("Nothing launched.")
    return 1


if __name__ == "__main__":
    sys.exit(main())

