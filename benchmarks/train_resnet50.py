"""Time a PACS-shaped ResNet-50 job: our engine's plain and fast paths, and optionally the public
DomainBed, side by side in one run on one machine.

    python benchmarks/train_resnet50.py --out results/bench_resnet50            # 300 steps
    python benchmarks/train_resnet50.py --out /tmp/r --public_dir /tmp/DomainBed --bf16
    python benchmarks/train_resnet50.py --out /tmp/r --steps 3 --images_per_class 2 \\
        --resnet18 --batch_size 2                                               # a CPU smoke run

The data are generated (once, cached in `--data_dir`): four domains of 227 x 227 JPEGs in PACS's
real layout, `<data_dir>/PACS/<domain>/<class>/`, with its domain and class folder names; each
class is a shape, each domain a style, so the task can be learned and the domains differ. Every
engine trains ERM with DomainBed's default PACS hyperparameters and augmentation for `--steps`
steps, with its checkpoint evaluations (step 0 and the last step at the default frequency).

ImageNet weights cannot be fetched here: every engine starts from the same randomly initialised
ResNet, written where torchvision looks for ImageNet weights ($TORCH_HOME/hub/checkpoints, under
torchvision's file names), so the public DomainBed's `pretrained=True` load and ours read the
same file. Accuracies are therefore those of a network trained from scratch for a few hundred
steps, not DomainBed's.

Each run is a subprocess running the engine's own `domainbed.scripts.train` command line under
thin timers on what every DomainBed engine reaches through module attributes: waiting for a
training minibatch (data), `update` (forward, backward and optimiser step; it ends when the
algorithm reads its loss back, so the device's work is inside it), and the split evaluations.
Reported: wall time, training steps per second (steps over the training loop's time outside
evaluations), evaluation images per second, where the time goes, GPU utilisation (sampled with
`torch.cuda.utilization()` where pynvml is installed, otherwise n/a), and a projected wall time
of a 5,000-step job. `--out` gets train_resnet50.json and train_resnet50.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CHILD_FLAG = "--_timed_train"
TIMINGS_ENV = "DOMAINBED_BENCH_TIMINGS"
DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
IMAGE_SIZE = 227
# torchvision's cache file names for ImageNet weights (V1 and V2 of ResNet-50), so whichever
# one an engine asks for is found.
WEIGHT_FILES = {"resnet50": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
                "resnet18": ("resnet18-f37072fd.pth",)}
PROJECTED_STEPS = 5000
PACS_CHECKPOINT_FREQ = 300
NOTE = ("ResNet weights are randomly initialised (ImageNet weights cannot be fetched here); "
        "every engine loads the same file, so timings compare, accuracies are not DomainBed's.")


# --- data ---------------------------------------------------------------------------------


def _draw_image(domain: str, class_i: int, rng: random.Random):
    """One 227 x 227 RGB image: the class's shape at a random place and scale, in the domain's
    style (painted colour fields, flat cartoon colours, noisy photo gradients, pencil sketch)."""
    from PIL import Image, ImageDraw, ImageFilter

    size = IMAGE_SIZE
    if domain == "sketch":
        image = Image.new("RGB", (size, size), (245, 245, 240))
    elif domain == "cartoon":
        image = Image.new("RGB", (size, size), tuple(rng.randrange(120, 256) for _ in range(3)))
    else:
        image = Image.effect_noise((size, size), 60 if domain == "photo" else 25).convert("RGB")
        tint = Image.new("RGB", (size, size), tuple(rng.randrange(0, 256) for _ in range(3)))
        image = Image.blend(image, tint, 0.6)
    draw = ImageDraw.Draw(image)
    radius = rng.randrange(35, 80)
    cx, cy = rng.randrange(radius, size - radius), rng.randrange(radius, size - radius)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    fill = None if domain == "sketch" else tuple(rng.randrange(0, 200) for _ in range(3))
    outline = (20, 20, 20) if domain in ("sketch", "cartoon") else None
    width = 4 if outline else 0
    shape = CLASSES[class_i]
    if shape == "dog":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif shape == "elephant":
        draw.rectangle(box, fill=fill, outline=outline, width=width)
    elif shape == "giraffe":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)],
                     fill=fill, outline=outline, width=width)
    elif shape == "guitar":
        bar = radius // 3
        for rect in ((cx - bar, cy - radius, cx + bar, cy + radius),
                     (cx - radius, cy - bar, cx + radius, cy + bar)):
            draw.rectangle(rect, fill=fill, outline=outline, width=width)
    elif shape == "horse":
        draw.ellipse(box, outline=fill or outline, width=max(6, radius // 4))
    elif shape == "house":
        draw.polygon([(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)],
                     fill=fill, outline=outline, width=width)
    else:
        for k in range(-2, 3):
            x = cx + k * radius // 3
            draw.line((x, cy - radius, x, cy + radius), fill=fill or outline, width=6)
    if domain == "art_painting":
        image = image.filter(ImageFilter.GaussianBlur(2))
    if domain == "sketch":
        image = image.convert("L").convert("RGB")
    return image


def generate_pacs(data_dir: Path, images_per_class: int, seed: int = 0) -> int:
    """Write the PACS-shaped JPEGs under `data_dir/PACS` unless the same set is there already;
    the number of images."""
    root = data_dir / "PACS"
    stamp = root / ".generated.json"
    spec = {"images_per_class": images_per_class, "seed": seed, "size": IMAGE_SIZE}
    total = len(DOMAINS) * len(CLASSES) * images_per_class
    if stamp.exists() and json.loads(stamp.read_text()) == spec:
        return total
    rng = random.Random(seed)
    for domain in DOMAINS:
        for class_i, name in enumerate(CLASSES):
            folder = root / domain / name
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.glob("*.jpg"):
                old.unlink()
            for i in range(images_per_class):
                _draw_image(domain, class_i, rng).save(folder / f"{i:05d}.jpg", quality=90)
    stamp.write_text(json.dumps(spec))
    return total


def write_random_weights(torch_home: Path, arch: str) -> None:
    """A randomly initialised ResNet's state dict under torchvision's ImageNet file names."""
    import torch
    import torchvision

    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    missing = [folder / name for name in WEIGHT_FILES[arch] if not (folder / name).exists()]
    if not missing:
        return
    torch.manual_seed(0)
    state = getattr(torchvision.models, arch)().state_dict()
    for path in missing:
        torch.save(state, path)


# --- one timed run (in the child process) --------------------------------------------------


def timed_train(train_argv: list[str]) -> None:
    """Run the engine's `domainbed.scripts.train` as __main__ with timers; write them at exit."""
    import atexit
    import runpy
    import threading

    import torch

    from domainbed import algorithms
    from domainbed.lib import fast_data_loader, misc

    clock = time.perf_counter
    times = {"start": clock(), "first_batch": None, "data_s": 0.0, "update_s": 0.0}
    intervals: list[tuple[float, float]] = []
    utilisation: list[float] = []
    stop = threading.Event()

    def sample_utilisation() -> None:
        while not stop.wait(0.2):
            if times["first_batch"] is not None:
                utilisation.append(float(torch.cuda.utilization()))

    loader_iter = fast_data_loader.InfiniteDataLoader.__iter__

    def timed_iter(self):
        batches = loader_iter(self)
        while True:
            start = clock()
            if times["first_batch"] is None:
                times["first_batch"] = start
            batch = next(batches)
            times["data_s"] += clock() - start
            yield batch

    algorithm_class = algorithms.get_algorithm_class("ERM")
    update = algorithm_class.update

    def timed_update(self, *args, **kwargs):
        start = clock()
        try:
            return update(self, *args, **kwargs)
        finally:
            times["update_s"] += clock() - start

    def timed(function):
        def wrapper(*args, **kwargs):
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                intervals.append((start, clock()))
        return wrapper

    def dump() -> None:
        end = clock()
        stop.set()
        # Ours counts several splits at once in threads on a CPU: count the union of intervals.
        busy, reach = 0.0, float("-inf")
        for start, finish in sorted(intervals):
            busy += max(0.0, finish - max(start, reach))
            reach = max(reach, finish)
        first = times["first_batch"] or end
        timings = {
            "engine": str(Path(algorithms.__file__).resolve().parent.parent),
            "setup_s": first - times["start"],
            "loop_s": end - first,
            "data_s": times["data_s"],
            "update_s": times["update_s"],
            "evaluation_s": busy,
            "gpu_utilisation": (sum(utilisation) / len(utilisation)) if utilisation else None,
        }
        Path(os.environ[TIMINGS_ENV]).write_text(json.dumps(timings))

    fast_data_loader.InfiniteDataLoader.__iter__ = timed_iter
    algorithm_class.update = timed_update
    # Upstream evaluates through misc.accuracy, ours through misc.count_correct.
    for name in ("accuracy", "count_correct"):
        if hasattr(misc, name):
            setattr(misc, name, timed(getattr(misc, name)))
    if torch.cuda.is_available():
        try:
            torch.cuda.utilization()
            threading.Thread(target=sample_utilisation, daemon=True).start()
        except Exception:  # no pynvml, or no NVML on this machine: reported as n/a
            pass
    atexit.register(dump)
    sys.argv = ["train", *train_argv]
    runpy.run_module("domainbed.scripts.train", run_name="__main__")


# --- the comparison (in the parent process) -------------------------------------------------


def evaluations(steps: int, freq: int) -> int:
    return len({s for s in range(steps) if s % freq == 0} | {steps - 1})


def run_engine(label: str, pythonpath: list[str], data_dir: Path, work_dir: Path,
               args: argparse.Namespace, n_images: int, extra: list[str]) -> dict:
    """Train once under the timers; the figures of the run."""
    output_dir = work_dir / label
    timings_path = work_dir / f"{label}_timings.json"
    hparams = {"resnet50_augmix": False, "resnet18": args.resnet18}
    if args.batch_size:
        hparams["batch_size"] = args.batch_size
    train_argv = ["--data_dir", str(data_dir), "--dataset", "PACS", "--algorithm", "ERM",
                  "--test_envs", "0", "--steps", str(args.steps), "--output_dir", str(output_dir),
                  "--checkpoint_freq", str(args.checkpoint_freq), "--hparams", json.dumps(hparams),
                  *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath), PYTHONUNBUFFERED="1",
               TORCH_HOME=str(work_dir / "torch_home"))
    env[TIMINGS_ENV] = str(timings_path)
    command = [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, *train_argv]
    print(f"[{label}] {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    with open(work_dir / f"{label}.log", "w") as log:
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=args.timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = (work_dir / f"{label}.log").read_text()[-2000:]
        sys.exit(f"[{label}] train failed (exit {done.returncode}):\n{tail}")
    timings = json.loads(timings_path.read_text())
    records = [json.loads(line)
               for line in (output_dir / "results.jsonl").read_text().splitlines()]
    n_eval = len(records)  # every record comes from one evaluation of every split
    eval_s = timings["evaluation_s"]
    train_s = timings["loop_s"] - eval_s
    figures = {
        "engine": timings["engine"],
        "flags": " ".join(extra),
        "steps": args.steps,
        "evaluations": n_eval,
        "wall_s": wall,
        "setup_s": timings["setup_s"],
        "train_s": train_s,
        "steps_per_s": args.steps / train_s,
        "data_wait_s": timings["data_s"],
        "update_s": timings["update_s"],
        "other_train_s": train_s - timings["data_s"] - timings["update_s"],
        "evaluation_s": eval_s,
        "eval_images_per_s": n_images * n_eval / eval_s if eval_s > 0 else None,
        "gpu_utilisation_pct": timings["gpu_utilisation"],
        "mem_gb": max(r["mem_gb"] for r in records),
        "test_env_acc": records[-1]["env0_in_acc"],
        "train_env_acc": sum(records[-1][f"env{i}_out_acc"] for i in (1, 2, 3)) / 3,
    }
    # A 5,000-step job at these rates with DomainBed's PACS checkpoint frequency.
    projected_eval = evaluations(PROJECTED_STEPS, PACS_CHECKPOINT_FREQ)
    figures["projected_5000_step_wall_s"] = (
        figures["setup_s"] + PROJECTED_STEPS / figures["steps_per_s"]
        + projected_eval * eval_s / n_eval)
    print(f"[{label}] {json.dumps(figures)}", flush=True)
    return figures


ROWS = [
    ("flags", "flags", "{}"),
    ("wall time of the run (s)", "wall_s", "{:.1f}"),
    ("setup: data scan, model, weights (s)", "setup_s", "{:.1f}"),
    ("training steps per second", "steps_per_s", "{:.2f}"),
    ("  waiting for data (s)", "data_wait_s", "{:.1f}"),
    ("  forward/backward/step (s)", "update_s", "{:.1f}"),
    ("  copies, checkpoints, the rest (s)", "other_train_s", "{:.1f}"),
    ("evaluation (s)", "evaluation_s", "{:.1f}"),
    ("evaluation images per second", "eval_images_per_s", "{:.0f}"),
    ("GPU utilisation (%)", "gpu_utilisation_pct", "{:.0f}"),
    ("peak GPU memory (GB)", "mem_gb", "{:.1f}"),
    ("test env (art_painting) accuracy", "test_env_acc", "{:.3f}"),
    ("training envs' held-out accuracy", "train_env_acc", "{:.3f}"),
    (f"projected {PROJECTED_STEPS}-step job wall (s)", "projected_5000_step_wall_s", "{:.0f}"),
]
# Figures where more is better, for the speed-up columns.
FASTER = {"steps_per_s": True, "eval_images_per_s": True, "wall_s": False,
          "projected_5000_step_wall_s": False}


def _cell(value, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def table(columns: dict[str, dict], baselines: list[str]) -> str:
    """One column per run, then a speed-up column of the fast path over each baseline."""
    header = ["figure", *columns, *(f"fast / {b}" for b in baselines)]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    fast = columns["ours fast"]
    for title, key, fmt in ROWS:
        cells = [_cell(f[key], fmt) for f in columns.values()]
        for base in baselines:
            mine, theirs = fast[key], columns[base][key]
            if key in FASTER and mine and theirs:
                cells.append(f"{(mine / theirs if FASTER[key] else theirs / mine):.2f}x")
            else:
                cells.append("")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Time a PACS-shaped ResNet-50 DomainBed job: our plain and fast paths, and "
                    "the public DomainBed with --public_dir, side by side.")
    parser.add_argument("--out", required=True, help="folder for train_resnet50.{json,md}")
    parser.add_argument("--data_dir", help="where the generated PACS goes (default: --out/data)")
    parser.add_argument("--work_dir", help="where the runs write (default: --out/runs)")
    parser.add_argument("--images_per_class", type=int, default=100,
                        help="per class and domain; 100 makes 2,800 images (default: 100)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--checkpoint_freq", type=int, default=PACS_CHECKPOINT_FREQ)
    parser.add_argument("--resnet18", action="store_true", help="ResNet-18 instead of -50")
    parser.add_argument("--batch_size", type=int,
                        help="per-domain batch size (default: DomainBed's 32)")
    parser.add_argument("--fast_flags", default="",
                        help="extra train flags for the fast column, e.g. '--cudnn_benchmark'")
    parser.add_argument("--bf16", action="store_true",
                        help="also time the fast path with --precision bf16")
    parser.add_argument("--public_dir", help="a clone of the public DomainBed to time as well")
    parser.add_argument("--public_pythonpath", action="append", default=[],
                        help="extra import path for the public run (where timm lives)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    return parser


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD_FLAG:
        timed_train(sys.argv[2:])
        return
    args = build_parser().parse_args()
    if args.public_dir and not (Path(args.public_dir) / "domainbed/scripts/train.py").exists():
        sys.exit(f"--public_dir {args.public_dir} is not a clone of the public DomainBed")
    out = Path(args.out)
    data_dir = Path(args.data_dir) if args.data_dir else out / "data"
    work_dir = Path(args.work_dir) if args.work_dir else out / "runs"
    work_dir.mkdir(parents=True, exist_ok=True)
    for stale in work_dir.iterdir():  # each run starts afresh, never resumes an older one
        if stale.is_dir() and stale.name != "torch_home":
            shutil.rmtree(stale)

    import torch

    start = time.perf_counter()
    n_images = generate_pacs(data_dir, args.images_per_class)
    print(f"data: {n_images} JPEGs in {data_dir / 'PACS'} "
          f"({time.perf_counter() - start:.1f} s)", flush=True)
    write_random_weights(work_dir / "torch_home", "resnet18" if args.resnet18 else "resnet50")
    print(f"note: {NOTE}", flush=True)

    ours = [str(REPO_ROOT)]
    fast_extra = shlex.split(args.fast_flags)
    columns = {
        "ours plain": run_engine("ours-plain", ours, data_dir, work_dir, args, n_images,
                                 ["--fast_path", "off"]),
        "ours fast": run_engine("ours-fast", ours, data_dir, work_dir, args, n_images,
                                fast_extra),
    }
    if args.bf16:
        columns["ours fast bf16"] = run_engine("ours-fast-bf16", ours, data_dir, work_dir, args,
                                               n_images, [*fast_extra, "--precision", "bf16"])
    baselines = ["ours plain"]
    if args.public_dir:
        columns["public"] = run_engine("public", [args.public_dir, *args.public_pythonpath],
                                       data_dir, work_dir, args, n_images, [])
        baselines.append("public")

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else (
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    report = {
        "device": device,
        "torch": torch.__version__,
        "command": shlex.join([sys.executable, *sys.argv]),
        "images": n_images,
        "note": NOTE,
        "runs": columns,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_resnet50.json").write_text(json.dumps(report, indent=2) + "\n")
    arch = "ResNet-18" if args.resnet18 else "ResNet-50"
    markdown = (f"# PACS-shaped {arch} job, {args.steps} steps, on {device}\n\n"
                f"`{report['command']}`\n\n{n_images} generated JPEGs. {NOTE}\n\n"
                f"{table(columns, baselines)}\n")
    (out / "train_resnet50.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
