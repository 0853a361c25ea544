"""Time `train --dataset RotatedMNIST --algorithm ERM --test_envs 0`, ours and the public one's.

Each engine's real command line runs in a subprocess, under a thin wrapper that times what
every DomainBed train script reaches through module attributes: the dataset constructor and the
`misc` function that evaluates a split (`accuracy` upstream, `count_correct` here). Seconds per
step come from the `step_time` the run itself writes to results.jsonl (data loading included).
Nothing in either engine is changed.

    python benchmarks/train_rotatedmnist.py --data_dir data
    DOMAINBED_ITL_AUTOREGISTER=0 python benchmarks/train_rotatedmnist.py --data_dir data \\
        --bf16 --upstream /tmp/upstream_domainbed --upstream_pythonpath /tmp/timm_site

The public DomainBed is not installable: pass a clone of it. It imports `timm`, which this
project does not need; `pip install --target DIR --no-deps timm` and pass DIR as
`--upstream_pythonpath`. DOMAINBED_ITL_AUTOREGISTER=0 keeps our import hook out of the public
run. `--bf16` adds a column for ours with `--precision bf16`, `--plain` one for ours with
`--fast_path off`, and `--ours_flags` passes more train flags to ours (e.g. `--compile
reduce-overhead`). `--upstream_steps` can shorten the
upstream run; the table then also projects every run to the same length.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMINGS_ENV = "DOMAINBED_BENCH_TIMINGS"


def timed_train(train_argv: list[str]) -> None:
    """Run `domainbed.scripts.train` as __main__ with timers around dataset and evaluation."""
    import atexit
    import runpy

    from domainbed import datasets
    from domainbed.lib import misc

    dataset_s = [0.0]
    intervals: list[tuple[float, float]] = []
    dataset_init = datasets.RotatedMNIST.__init__

    def timed_init(self, *args, **kwargs):
        start = time.perf_counter()
        dataset_init(self, *args, **kwargs)
        dataset_s[0] += time.perf_counter() - start

    def timed(function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                intervals.append((start, time.perf_counter()))
        return wrapper

    def dump():
        # Evaluation time is the union of the intervals spent inside the evaluation functions:
        # ours counts several splits at once in threads, upstream one after another.
        busy, reach = 0.0, float("-inf")
        for start, end in sorted(intervals):
            busy += max(0.0, end - max(start, reach))
            reach = max(reach, end)
        timings = {"dataset_s": dataset_s[0], "evaluation_s": busy,
                   "engine": os.path.dirname(os.path.dirname(datasets.__file__))}
        with open(os.environ[TIMINGS_ENV], "w") as handle:
            json.dump(timings, handle)

    datasets.RotatedMNIST.__init__ = timed_init
    # upstream evaluates through misc.accuracy; ours through misc.count_correct
    for name in ("accuracy", "count_correct"):
        if hasattr(misc, name):
            setattr(misc, name, timed(getattr(misc, name)))
    atexit.register(dump)
    sys.argv = ["train", *train_argv]
    runpy.run_module("domainbed.scripts.train", run_name="__main__")


def run_engine(label: str, pythonpath: list[str], data_dir: str, steps: int,
               checkpoint_freq: int | None, work_dir: Path, extra: tuple[str, ...] = ()) -> dict:
    output_dir = work_dir / label
    timings_path = work_dir / f"{label}_timings.json"
    train_argv = ["--data_dir", data_dir, "--dataset", "RotatedMNIST", "--algorithm", "ERM",
                  "--test_envs", "0", "--steps", str(steps), "--output_dir", str(output_dir),
                  "--skip_model_save", *extra]
    if checkpoint_freq is not None:
        train_argv += ["--checkpoint_freq", str(checkpoint_freq)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath))
    env[TIMINGS_ENV] = str(timings_path)
    command = [sys.executable, __file__, "--_timed_train", *train_argv]
    print(f"[{label}] {' '.join(command)}", flush=True)
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the run and of every process it started (DataLoader workers included).
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    if done.returncode != 0:
        sys.exit(f"[{label}] train failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    timings = json.loads(timings_path.read_text())
    records = [json.loads(line) for line in (output_dir / "results.jsonl").read_text().splitlines()]
    # Each record's step_time is the mean over the steps since the previous record.
    previous, total, count = -1, 0.0, 0
    for record in records:
        total += record["step_time"] * (record["step"] - previous)
        count += record["step"] - previous
        previous = record["step"]
    evaluations = len(records)  # every record comes from one evaluation of all splits
    figures = {
        "engine": timings["engine"],
        "steps": steps,
        "evaluations": evaluations,
        "dataset_s": timings["dataset_s"],
        "step_s": total / count,
        "eval_s": timings["evaluation_s"] / evaluations,
        "wall_s": wall,
        "cpu_s": cpu,
        "test_acc": records[-1]["env0_in_acc"],
        "loadavg": os.getloadavg()[0],
    }
    figures["other_s"] = wall - figures["dataset_s"] - total - timings["evaluation_s"]
    print(f"[{label}] {json.dumps(figures)}", flush=True)
    return figures


def projected_wall(figures: dict, steps: int, evaluations: int) -> float:
    return (figures["other_s"] + figures["dataset_s"] + steps * figures["step_s"]
            + evaluations * figures["eval_s"])


def checkpoints(steps: int, freq: int) -> int:
    return len({s for s in range(steps) if s % freq == 0} | {steps - 1})


def table(columns: dict[str, dict], steps: int, freq: int) -> str:
    """One column per run; with an upstream run, a ratio column per other run."""
    n_eval = checkpoints(steps, freq)
    rows = [
        ("engine", "engine", None),
        ("steps run", "steps", None),
        ("evaluations of all 12 splits", "evaluations", None),
        ("dataset construction (s)", "dataset_s", "{:.1f}"),
        ("seconds per step", "step_s", "{:.3f}"),
        ("one evaluation of 12 splits (s)", "eval_s", "{:.1f}"),
        ("startup and the rest (s)", "other_s", "{:.1f}"),
        ("wall time of the run (s)", "wall_s", "{:.0f}"),
        ("CPU time of the run, workers included (s)", "cpu_s", "{:.0f}"),
        ("env0_in_acc (test env) at the end", "test_acc", "{:.4f}"),
        ("1-minute load average after the run", "loadavg", "{:.1f}"),
    ]
    upstream = columns.get("upstream")
    mine = [label for label in columns if label != "upstream"]
    ratios = mine if upstream else []
    header = ["figure", *columns, *(f"upstream / {label}" for label in ratios)]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for title, key, fmt in rows:
        cells = [fmt.format(f[key]) if fmt else str(f[key]) for f in columns.values()]
        for label in ratios:
            ours = columns[label][key]
            timed = key in ("dataset_s", "step_s", "eval_s", "wall_s", "cpu_s")
            cells.append(f"{upstream[key] / ours:.1f}x" if timed and ours > 0 else "")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    projected = {label: projected_wall(f, steps, n_eval) for label, f in columns.items()}
    cells = [f"{value:.0f}" for value in projected.values()]
    cells += [f"{projected['upstream'] / projected[label]:.1f}x" for label in ratios]
    lines.append(f"| projected wall, {steps} steps, {n_eval} evaluations (s) | "
                 + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_timed_train":
        timed_train(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(REPO_ROOT / "data"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--checkpoint_freq", type=int, default=100,
                        help="RotatedMNIST's default checkpoint frequency")
    parser.add_argument("--upstream", help="path to a clone of the public DomainBed")
    parser.add_argument("--upstream_steps", type=int, help="default: --steps")
    parser.add_argument("--upstream_checkpoint_freq", type=int, help="default: --checkpoint_freq")
    parser.add_argument("--upstream_pythonpath", action="append", default=[],
                        help="extra import path for the upstream run (where timm lives)")
    parser.add_argument("--bf16", action="store_true",
                        help="also time ours with --precision bf16 (a third column)")
    parser.add_argument("--plain", action="store_true",
                        help="also time ours with --fast_path off (a column before ours)")
    parser.add_argument("--ours_flags", default="",
                        help="more train flags for ours, e.g. '--compile reduce-overhead'")
    parser.add_argument("--skip_ours", action="store_true",
                        help="time only the upstream run (then no table is printed)")
    parser.add_argument("--work_dir", help="where the runs write (default: a temporary folder)")
    args = parser.parse_args()

    if args.upstream and not (Path(args.upstream) / "domainbed" / "scripts" / "train.py").exists():
        sys.exit(f"--upstream {args.upstream} is not a clone of the public DomainBed")
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_rotatedmnist_"))
    work_dir.mkdir(parents=True, exist_ok=True)
    columns = {}
    ours_flags = tuple(shlex.split(args.ours_flags))
    if not args.skip_ours:
        if args.plain:
            columns["ours plain"] = run_engine(
                "ours-plain", [str(REPO_ROOT)], args.data_dir, args.steps, args.checkpoint_freq,
                work_dir, ("--fast_path", "off"))
        columns["ours"] = run_engine("ours", [str(REPO_ROOT)], args.data_dir, args.steps,
                                     args.checkpoint_freq, work_dir, ours_flags)
        if args.bf16:
            columns["ours bf16"] = run_engine(
                "ours-bf16", [str(REPO_ROOT)], args.data_dir, args.steps, args.checkpoint_freq,
                work_dir, (*ours_flags, "--precision", "bf16"))
    if args.upstream:
        columns["upstream"] = run_engine(
            "upstream", [args.upstream, *args.upstream_pythonpath], args.data_dir,
            args.upstream_steps or args.steps,
            args.upstream_checkpoint_freq or args.checkpoint_freq, work_dir)
    if not args.skip_ours:
        print(table(columns, args.steps, args.checkpoint_freq))
    print(f"runs kept in {work_dir}")


if __name__ == "__main__":
    main()
