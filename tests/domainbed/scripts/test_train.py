"""The training script end to end, its loaders, its resume logic and its refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from domainbed import algorithms, datasets, hparams_registry
from domainbed.lib import atomic, misc
from domainbed.lib.fast_data_loader import FastDataLoader, InfiniteDataLoader, tensor_view
from domainbed.scripts import train

REPO_ROOT = Path(__file__).resolve().parents[3]
UPSTREAM_ARG_KEYS = {
    "data_dir", "dataset", "algorithm", "task", "hparams", "hparams_seed", "trial_seed", "seed",
    "steps", "checkpoint_freq", "test_envs", "output_dir", "holdout_fraction",
    "uda_holdout_fraction", "skip_model_save", "save_model_every_checkpoint",
}
MODEL_KEYS = {"args", "model_input_shape", "model_num_classes", "model_num_domains",
              "model_hparams", "model_dict"}


def read_records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "results.jsonl").read_text().splitlines()]


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "domainbed.scripts.train", *argv],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)


def check_record_fields(record: dict, n_envs: int, argv_dict: dict) -> None:
    env_keys = {f"env{i}_{part}_acc" for i in range(n_envs) for part in ("in", "out")}
    expected = env_keys | {"step", "epoch", "loss", "step_time", "mem_gb", "hparams", "args"}
    assert set(record) == expected
    for key in env_keys:
        assert 0.0 <= record[key] <= 1.0
    assert record["step_time"] > 0
    assert record["mem_gb"] >= 0
    for key, value in argv_dict.items():
        assert record["args"][key] == value
    assert set(record["args"]) == UPSTREAM_ARG_KEYS | {"precision"}  # our one extra flag


# --- end to end ---------------------------------------------------------------------------


def test_debug_run_writes_what_upstream_writes(tmp_path):
    out = tmp_path / "run"
    argv = ["--dataset", "Debug28", "--algorithm", "ERM", "--steps", "5",
            "--checkpoint_freq", "2", "--output_dir", str(out)]
    assert train.main(argv) == 0

    assert sorted(os.listdir(out)) == ["done", "err.txt", "model.pkl", "out.txt",
                                       "results.jsonl"]
    assert (out / "done").read_text() == "done"
    records = read_records(out)
    assert [r["step"] for r in records] == [0, 2, 4]
    # Debug28: 16 examples per environment, 3 held out, so 13 in the in-split.
    hparams = hparams_registry.default_hparams("ERM", "Debug28")
    for record in records:
        check_record_fields(record, 3, {"dataset": "Debug28", "steps": 5, "test_envs": [0],
                                        "output_dir": str(out), "checkpoint_freq": 2})
        assert record["hparams"] == hparams
        assert record["epoch"] == pytest.approx(record["step"] / (13 / hparams["batch_size"]))

    # The saved model, rebuilt from its own record, reproduces the last accuracies on the
    # device the run trained and evaluated on (cuDNN's TF32 convolutions round otherwise).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    saved = torch.load(out / "model.pkl", weights_only=False, map_location=device)
    assert set(saved) == MODEL_KEYS
    assert saved["model_num_domains"] == 2 and saved["model_num_classes"] == 2
    model = algorithms.get_algorithm_class("ERM")(
        saved["model_input_shape"], saved["model_num_classes"], saved["model_num_domains"],
        saved["model_hparams"])
    model.load_state_dict(saved["model_dict"])
    model.to(device)
    torch.manual_seed(0)
    dataset = datasets.get_dataset_class("Debug28")(None, [0], hparams)
    for env_i, env in enumerate(dataset):
        out_split, in_split = misc.split_dataset(env, int(len(env) * 0.2),
                                                 misc.seed_hash(0, env_i))
        for name, split in (("in", in_split), ("out", out_split)):
            acc = misc.accuracy(model, FastDataLoader(split, 64, 0), None, device)
            assert acc == pytest.approx(records[-1][f"env{env_i}_{name}_acc"])

    log = (out / "out.txt").read_text()
    assert "HParams:" in log and "env0_in_acc" in log

    # A finished run started again does nothing and changes nothing; with other arguments it
    # is refused.
    before = (out / "results.jsonl").read_bytes()
    assert train.main(argv) == 0
    longer = [a if a != "5" else "6" for a in argv]
    assert train.main(longer) == 2
    assert (out / "results.jsonl").read_bytes() == before


def test_hparams_seed_and_overrides_reach_the_record(tmp_path):
    out = tmp_path / "run"
    argv = ["--dataset", "Debug28", "--algorithm", "ERM", "--steps", "1", "--hparams_seed", "3",
            "--trial_seed", "1", "--hparams", '{"lr": 0.0005}', "--skip_model_save",
            "--output_dir", str(out)]
    assert train.main(argv) == 0
    expected = hparams_registry.random_hparams("ERM", "Debug28", misc.seed_hash(3, 1))
    expected["lr"] = 0.0005
    (record,) = read_records(out)
    assert record["hparams"] == expected
    assert not (out / "model.pkl").exists()


def test_domain_adaptation_evaluates_uda_splits(tmp_path):
    out = tmp_path / "run"
    argv = ["--dataset", "Debug28", "--algorithm", "ERM", "--steps", "2", "--task",
            "domain_adaptation", "--uda_holdout_fraction", "0.5", "--test_envs", "1",
            "--hparams", '{"class_balanced": true}', "--skip_model_save",
            "--output_dir", str(out)]
    assert train.main(argv) == 0
    record = read_records(out)[-1]
    # Upstream names uda splits by their position among uda splits, not by environment.
    assert set(k for k in record if k.endswith("_uda_acc")) == {"env0_uda_acc"}
    # Environment 1's in-split gave half (6 of 13) of its examples to the uda split.
    assert 0 <= record["env0_uda_acc"] <= 1


def test_rotated_mnist_one_step(tmp_path, mnist_dir):
    """Real data, the benchmark's job cut to one step: one evaluation of all 12 splits."""
    out = tmp_path / "run"
    done = cli("--data_dir", str(mnist_dir), "--dataset", "RotatedMNIST", "--algorithm", "ERM",
               "--test_envs", "0", "--steps", "1", "--output_dir", str(out))
    assert done.returncode == 0, done.stderr
    (record,) = read_records(out)
    check_record_fields(record, 6, {"dataset": "RotatedMNIST", "steps": 1, "test_envs": [0]})
    assert record["step"] == 0 and record["epoch"] == 0
    assert record["hparams"] == hparams_registry.default_hparams("ERM", "RotatedMNIST")
    # One step of Adam from random weights: near chance, never near perfect.
    assert record["env0_in_acc"] < 0.5
    assert torch.load(out / "model.pkl", weights_only=False)["model_num_domains"] == 5


@pytest.mark.slow
def test_rotated_mnist_learns(tmp_path, mnist_dir):
    out = tmp_path / "run"
    done = cli("--data_dir", str(mnist_dir), "--dataset", "RotatedMNIST", "--algorithm", "ERM",
               "--test_envs", "0", "--steps", "101", "--checkpoint_freq", "50",
               "--output_dir", str(out))
    assert done.returncode == 0, done.stderr
    records = read_records(out)
    assert [r["step"] for r in records] == [0, 50, 100]
    for record in records:
        check_record_fields(record, 6, {"dataset": "RotatedMNIST"})
    # From chance (about 0.1) at step 0, 100 Adam steps reach about 0.56 on a training domain's
    # held-out split (0.38 at step 50, identical before and after the 2026-11 refactors), and
    # the unseen 0-degree domain gains too.
    assert records[0]["env1_out_acc"] < 0.2
    assert records[-1]["env1_out_acc"] > 0.45
    assert records[-1]["env0_in_acc"] > 2 * records[0]["env0_in_acc"]
    assert records[-1]["loss"] < records[0]["loss"]


# --- resume ---------------------------------------------------------------------------------


def kill_after_first_checkpoint(argv: list[str], out: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "domainbed.scripts.train", *argv],
                               cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 300
    while not (results.exists() and results.stat().st_size > 0):
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "done").exists(), "the run finished before it could be killed"


def test_killed_run_resumes_bit_exactly(tmp_path, capsys):
    # Random hyperparameters: numpy scalars among them must survive the resume state.
    common = ["--dataset", "Debug28", "--algorithm", "ERM", "--hparams_seed", "1",
              "--hparams", '{"batch_size": 8}', "--steps", "24", "--checkpoint_freq", "4"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    # Every training part runs in a fresh process, as a sweep runs it: in-process runs would
    # inherit torch state that earlier tests of the session changed, and round differently.
    done = cli(*common, "--output_dir", str(whole))
    assert done.returncode == 0, done.stderr

    kill_after_first_checkpoint([*common, "--output_dir", str(cut)], cut)
    resume_step = torch.load(cut / "resume.pt", weights_only=True)["next_step"]
    assert 1 <= resume_step < 24
    # A crash after the resume state but before results.jsonl: a stray record must vanish.
    with open(cut / "results.jsonl", "a") as handle:
        handle.write((cut / "results.jsonl").read_text().splitlines()[0] + "\n")

    # Other arguments are refused, and nothing is touched.
    state = (cut / "resume.pt").read_bytes()
    assert train.main([*common[:-1], "5", "--output_dir", str(cut)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint_freq" in err[0]
    assert (cut / "resume.pt").read_bytes() == state

    done = cli(*common, "--output_dir", str(cut))
    assert done.returncode == 0, done.stderr
    assert f"Resuming from step {resume_step}" in (cut / "out.txt").read_text()
    assert not (cut / "resume.pt").exists()

    whole_records, cut_records = read_records(whole), read_records(cut)
    assert [r["step"] for r in cut_records] == [0, 4, 8, 12, 16, 20, 23]

    def comparable(record):
        return {k: v for k, v in record.items() if k not in ("step_time", "args")}

    assert [comparable(r) for r in cut_records] == [comparable(r) for r in whole_records]
    whole_model = torch.load(whole / "model.pkl", weights_only=False)["model_dict"]
    cut_model = torch.load(cut / "model.pkl", weights_only=False)["model_dict"]
    assert whole_model.keys() == cut_model.keys()
    for key in whole_model:
        assert torch.equal(whole_model[key], cut_model[key]), key


def test_foreign_results_are_not_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.jsonl").write_text('{"step": 0}\n')
    assert train.main(["--dataset", "Debug28", "--steps", "1", "--output_dir", str(out)]) == 2
    assert (out / "results.jsonl").read_text() == '{"step": 0}\n'


# --- bad input ------------------------------------------------------------------------------

BAD_INPUTS = {
    "unknown algorithm": (["--dataset", "Debug28", "--algorithm", "NoSuchAlgo"], "NoSuchAlgo"),
    "unknown dataset": (["--dataset", "NoSuchData"], "NoSuchData"),
    "missing data": (["--dataset", "RotatedMNIST", "--data_dir", "{empty}"], "download"),
    "malformed hparams": (["--dataset", "Debug28", "--hparams", "{lr: 1}"], "JSON"),
    "hparams not an object": (["--dataset", "Debug28", "--hparams", "[1]"], "JSON object"),
    "test env out of range": (["--dataset", "Debug28", "--test_envs", "3"], "0..2"),
    "no training env": (["--dataset", "Debug28", "--test_envs", "0", "1", "2"], "train on"),
    "holdout fraction": (["--dataset", "Debug28", "--holdout_fraction", "1.5"], "(0, 1)"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_nothing_written(case, tmp_path, capsys):
    argv, hint = BAD_INPUTS[case]
    argv = [a.replace("{empty}", str(tmp_path / "empty")) for a in argv]
    out = tmp_path / "run"
    assert train.main([*argv, "--steps", "1", "--output_dir", str(out)]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and hint in lines[0]
    assert not out.exists()


def test_bad_input_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    done = cli("--dataset", "Debug28", "--hparams", "{oops", "--output_dir", str(out))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not out.exists()


def test_unparsable_flag_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--steps", "many", "--output_dir", str(out)])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--steps" in lines[0]
    assert not out.exists()


# --- loaders and helpers --------------------------------------------------------------------


class ListDataset(Dataset):
    """Not tensor-backed: forces the DataLoader path."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __len__(self):
        return len(self.x)


def split_of_tensors():
    x = torch.arange(100, dtype=torch.float32).view(100, 1)
    y = torch.arange(100) % 3
    _, rest = misc.split_dataset(TensorDataset(x, y), 20, seed=1)
    part, _ = misc.split_dataset(rest, 50, seed=2)
    return x, y, part


def test_tensor_view_follows_nested_splits():
    x, y, part = split_of_tensors()
    tensors, rows = tensor_view(part)
    assert [int(part[i][0]) for i in range(len(part))] == x[rows].view(-1).long().tolist()
    assert tensor_view(ListDataset(x, y)) is None


@pytest.mark.parametrize("num_workers", [0, 2])
def test_infinite_loader_paths_agree_and_resume(num_workers):
    x, y, part = split_of_tensors()
    as_list = ListDataset([part[i][0] for i in range(len(part))],
                          [part[i][1] for i in range(len(part))])
    fast = InfiniteDataLoader(part, None, 8, 0, seed=5)
    slow = InfiniteDataLoader(as_list, None, 8, num_workers, seed=5)
    batches = [next(fast) for _ in range(6)]
    for bx, by in batches:
        assert bx.shape == (8, 1) and by.shape == (8,)
        assert set(bx.view(-1).long().tolist()) <= {int(part[i][0]) for i in range(len(part))}
        assert torch.equal(by, y[bx.view(-1).long()])
    for (fx, fy), (sx, sy) in zip(batches, (next(slow) for _ in range(6)), strict=True):
        assert torch.equal(fx, sx) and torch.equal(fy, sy)

    restored = InfiniteDataLoader(as_list, None, 8, num_workers, seed=99)
    fast_again = InfiniteDataLoader(part, None, 8, 0, seed=99)
    position = InfiniteDataLoader(part, None, 8, 0, seed=5)
    for _ in range(3):
        next(position)
    restored.load_state_dict(position.state_dict())
    fast_again.load_state_dict(position.state_dict())
    for bx, _ in batches[3:]:
        assert torch.equal(next(restored)[0], bx)
        assert torch.equal(next(fast_again)[0], bx)


def test_infinite_loader_default_seed_comes_from_torch_seed():
    _, _, part = split_of_tensors()
    torch.manual_seed(3)
    a = next(InfiniteDataLoader(part, None, 16, 0))[0]
    torch.manual_seed(3)
    b = next(InfiniteDataLoader(part, None, 16, 0))[0]
    c = next(InfiniteDataLoader(part, None, 16, 0))[0]
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_class_balanced_weights_balance_the_batches():
    y = torch.cat([torch.zeros(90, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    data = TensorDataset(torch.randn(100, 2), y)
    weights = misc.make_weights_for_balanced_classes(data)
    assert weights.sum().item() == pytest.approx(1.0)
    assert weights[0].item() == pytest.approx(1 / 180) and weights[-1].item() == pytest.approx(
        1 / 20)
    loader = InfiniteDataLoader(data, weights, 64, 0, seed=0)
    labels = torch.cat([next(loader)[1] for _ in range(100)])
    assert 0.45 < labels.float().mean().item() < 0.55
    uniform = InfiniteDataLoader(data, None, 64, 0, seed=0)
    assert torch.cat([next(uniform)[1] for _ in range(100)]).float().mean().item() < 0.15


@pytest.mark.parametrize("backed", ["tensor", "list"])
def test_fast_loader_visits_every_example_once(backed):
    x, y, part = split_of_tensors()
    if backed == "list":
        part = ListDataset([part[i][0] for i in range(len(part))],
                           [part[i][1] for i in range(len(part))])
    loader = FastDataLoader(part, 16, 0)
    seen = torch.cat([bx for bx, _ in loader]).view(-1).tolist()
    assert len(loader) == 4
    assert seen == [float(part[i][0]) for i in range(len(part))]
    assert torch.cat([bx for bx, _ in loader]).view(-1).tolist() == seen  # iterable again


class Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def predict(self, x):
        return self.logits[x.view(-1).long()]


def test_accuracy_weighted_and_binary():
    data = TensorDataset(torch.arange(4).view(4, 1), torch.tensor([1, 0, 1, 1]))
    multi = Fixed(torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    assert misc.accuracy(multi, FastDataLoader(data, 3, 0), None, "cpu") == pytest.approx(0.5)
    weights = torch.tensor([1.0, 0.0, 0.0, 3.0])
    assert misc.accuracy(multi, FastDataLoader(data, 3, 0), weights, "cpu") == 1.0
    binary = Fixed(torch.tensor([[2.0], [-1.0], [-0.5], [0.1]]))
    assert misc.accuracy(binary, FastDataLoader(data, 3, 0), None, "cpu") == 0.75
    assert multi.training


def test_channels_last_evaluation_predicts_the_same():
    torch.manual_seed(0)
    model = algorithms.get_algorithm_class("ERM")(
        (1, 28, 28), 10, 2, hparams_registry.default_hparams("ERM", "RotatedMNIST"))
    x = torch.rand(96, 1, 28, 28)
    with torch.inference_mode():
        logits = model.predict(x)
        nhwc = model.predict(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(logits, nhwc, atol=1e-5)
    # Labels = predictions wherever the top two logits are clearly apart: both layouts agree.
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3
    data = TensorDataset(x[clear], logits.argmax(1)[clear])
    for layout in (False, True):
        loader = FastDataLoader(data, 32, 0)
        assert misc.accuracy(model, loader, None, "cpu", channels_last=layout) == 1.0


def test_atomic_write_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "file.txt"
    atomic.write_text(target, "old")
    with pytest.raises(RuntimeError), atomic.atomic_open(target) as handle:
        handle.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["file.txt"]


def test_bf16_precision_trains_under_autocast_and_is_recorded(tmp_path):
    """Same seed and data, fp32 against bf16: the bf16 run records its flag and finite values,
    and its first loss differs by bfloat16 rounding (autocast really was on)."""
    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        argv = ["--dataset", "Debug28", "--algorithm", "ERM", "--steps", "3",
                "--output_dir", str(out), "--skip_model_save", "--precision", precision]
        assert train.main(argv) == 0
        runs[precision] = read_records(out)
    fp32, bf16 = runs["fp32"][0], runs["bf16"][0]
    assert fp32["args"]["precision"] == "fp32" and bf16["args"]["precision"] == "bf16"
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=0.05)
    assert bf16["loss"] != fp32["loss"]
    assert all(0 <= bf16[f"env{i}_{p}_acc"] <= 1 for i in range(3) for p in ("in", "out"))


def test_autocast_reaches_every_evaluation_thread():
    """Autocast is per thread: the evaluation workers must each see it."""
    seen = []

    class Probe(torch.nn.Module):
        def predict(self, x):
            seen.append(torch.is_autocast_enabled("cpu"))
            return torch.zeros(len(x), 2)

    loaders = {f"env{i}_in": [(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))]
               for i in range(4)}
    train.evaluate(Probe(), loaders, "cpu", "bf16")
    assert seen == [True] * 4
    seen.clear()
    train.evaluate(Probe(), loaders, "cpu", "fp32")
    assert seen == [False] * 4
