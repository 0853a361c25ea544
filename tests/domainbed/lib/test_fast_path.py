"""The fast path changes speed, not results: on a CPU its records equal the plain path's, and
on CUDA it resolves to the settings `domainbed.lib.fast_path` documents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from domainbed import datasets
from domainbed.lib import fast_path
from domainbed.lib.fast_data_loader import FastDataLoader, InfiniteDataLoader, available_cores
from domainbed.lib.misc import _SplitDataset
from domainbed.scripts import train

REPO_ROOT = Path(__file__).resolve().parents[3]
BENCHMARK = REPO_ROOT / "benchmarks" / "train_resnet50.py"
# What a run computes; step_time is a clock and args differ by the flags themselves.
COMPUTED = ("step", "epoch", "loss", "mem_gb")


def computed(output_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (output_dir / "results.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k in COMPUTED or k.endswith("_acc")} for r in records]


def test_fast_path_records_equal_the_plain_paths_on_rotated_mnist(tmp_path, mnist_dir):
    """The train command on real digits, fp32 on the CPU: the fast path (the default, here with
    large evaluation batches) writes the plain path's losses and accuracies exactly."""
    common = ["--data_dir", str(mnist_dir), "--dataset", "RotatedMNIST", "--algorithm", "ERM",
              "--test_envs", "0", "--steps", "3", "--no_initial_eval",
              "--eval_splits", "env0_out", "--skip_model_save"]
    variants = {"plain": ["--fast_path", "off"], "fast": ["--eval_batch_size", "1000"]}
    for name, flags in variants.items():
        assert train.main([*common, "--output_dir", str(tmp_path / name), *flags]) == 0
    plain = computed(tmp_path / "plain")
    assert [r["step"] for r in plain] == [2]
    assert computed(tmp_path / "fast") == plain


def test_fast_path_flags_stay_out_of_default_records(tmp_path):
    """Records of a default run carry no fast-path argument; one given is recorded."""
    base = ["--dataset", "Debug28", "--steps", "2", "--skip_model_save"]
    assert train.main([*base, "--output_dir", str(tmp_path / "a")]) == 0
    assert train.main([*base, "--output_dir", str(tmp_path / "b"), "--fast_path", "off"]) == 0
    first = json.loads((tmp_path / "a" / "results.jsonl").read_text().splitlines()[0])
    second = json.loads((tmp_path / "b" / "results.jsonl").read_text().splitlines()[0])
    assert not {"fast_path", "eval_batch_size", "loader_workers", "compile",
                "cudnn_benchmark"} & set(first["args"])
    assert second["args"]["fast_path"] == "off"
    assert computed(tmp_path / "a") == computed(tmp_path / "b")


@pytest.mark.parametrize("flags, message", [
    (["--eval_batch_size", "0"], "--eval_batch_size must be at least 1, got 0"),
    (["--loader_workers", "-1"], "--loader_workers must be at least 0, got -1"),
])
def test_bad_speed_flags_are_one_line_usage_errors(tmp_path, capsys, flags, message):
    argv = ["--dataset", "Debug28", "--output_dir", str(tmp_path / "run"), *flags]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"{train.PROG}: error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_cuda_settings_for_in_memory_and_image_datasets(tmp_path):
    """What the fast path turns on for CUDA, decided from real dataset objects; a CPU (or the
    plain path) keeps today's settings."""
    mnist_like = datasets.get_dataset_class("Debug28")(None, [0], {})
    photos_in_memory = datasets.get_dataset_class("Debug224")(None, [0], {})
    sys.path.insert(0, str(BENCHMARK.parent))
    try:
        import train_resnet50
    finally:
        sys.path.remove(str(BENCHMARK.parent))
    train_resnet50.generate_pacs(tmp_path, images_per_class=1)
    pacs = datasets.get_dataset_class("PACS")(str(tmp_path), [0], {"data_augmentation": True})

    tensors = fast_path.resolve("cuda", mnist_like)
    assert (tensors.resident, tensors.pin_memory, tensors.channels_last) == (True, False, False)
    assert tensors.eval_batch_size == 2048 and tensors.loader_workers is None
    assert fast_path.resolve("cuda", photos_in_memory).channels_last
    files = fast_path.resolve("cuda", pacs)
    assert (files.resident, files.pin_memory, files.channels_last) == (False, True, True)
    assert files.eval_batch_size == 256 and files.loader_workers == available_cores()
    assert fast_path.resolve("cuda", pacs, loader_workers=3, eval_batch_size=8).loader_workers == 3
    plain = fast_path.resolve("cpu", pacs)
    for cpu in (plain, fast_path.resolve("cuda", pacs, enabled=False)):
        assert (cpu.resident, cpu.pin_memory, cpu.channels_last) == (False, False, False)
        assert cpu.eval_batch_size == 64 and cpu.loader_workers is None


def test_resident_tensors_are_indexed_on_their_device():
    """Batches of a dataset moved to a device are gathered there (the meta device stands in for
    CUDA: it keeps shapes and devices without memory), and the rows are the plain path's."""
    x = torch.arange(40.0).reshape(20, 2)
    y = torch.arange(20)
    env = TensorDataset(x, y)
    split = _SplitDataset(env, list(range(3, 17)))
    plain = next(InfiniteDataLoader(split, None, 5, 0, seed=1))

    class OneEnv:
        datasets = [env]

    fast_path.make_resident(OneEnv, "meta")
    resident = next(InfiniteDataLoader(split, None, 5, 0, seed=1))
    assert [t.device.type for t in resident] == ["meta", "meta"]
    assert [t.shape for t in resident] == [t.shape for t in plain]
    evaluated = list(FastDataLoader(split, 4, 0))
    assert [len(b[0]) for b in evaluated] == [4, 4, 4, 2]
    assert all(b[0].device.type == "meta" for b in evaluated)


def test_benchmark_help():
    done = subprocess.run([sys.executable, str(BENCHMARK), "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--public_dir" in done.stdout and "--images_per_class" in done.stdout


@pytest.mark.slow
def test_benchmark_tiny_cpu_run(tmp_path):
    """The whole benchmark at toy sizes: data in PACS's layout, both paths timed, both files."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), "--out", str(tmp_path), "--steps", "2",
         "--images_per_class", "1", "--resnet18", "--batch_size", "2"],
        capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr + done.stdout
    for domain in ("art_painting", "cartoon", "photo", "sketch"):
        assert sorted(p.name for p in (tmp_path / "data" / "PACS" / domain).iterdir()) == [
            "dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
    report = json.loads((tmp_path / "train_resnet50.json").read_text())
    assert set(report["runs"]) == {"ours plain", "ours fast"}
    for run in report["runs"].values():
        assert run["steps_per_s"] > 0 and run["evaluations"] == 2
        assert run["gpu_utilisation_pct"] is None  # no GPU here
    plain, fast = report["runs"]["ours plain"], report["runs"]["ours fast"]
    assert plain["test_env_acc"] == fast["test_env_acc"]
    assert "randomly initialised" in (tmp_path / "train_resnet50.md").read_text()
