"""`make demo`: MNIST laid out offline, then CE, the published ITL and the shipped learned loss
deployed with the MLP protocol on five trial seeds, reused on a rerun; and the evaluation options
that keep short DomainBed comparisons fast (train --eval_splits, compare_losses
--table_splits_only)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from domainbed.scripts import train
from domainbed_itl.scripts import compare_losses, demo

REPO_ROOT = Path(__file__).resolve().parents[3]


def read_records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "results.jsonl").read_text().splitlines()]


def test_eval_splits_and_no_initial_eval_evaluate_only_what_is_asked(tmp_path):
    base = ["--dataset", "Debug28", "--steps", "3", "--checkpoint_freq", "2", "--output_dir"]
    full, quick = tmp_path / "full", tmp_path / "quick"
    assert train.main([*base, str(full)]) == 0
    assert train.main([*base, str(quick), "--no_initial_eval",
                       "--eval_splits", "env0_in", "env2_out"]) == 0
    assert [r["step"] for r in read_records(full)] == [0, 2]
    (record,) = read_records(quick)
    assert record["step"] == 2
    assert sorted(k for k in record if k.endswith("_acc")) == ["env0_in_acc", "env2_out_acc"]
    assert record["args"]["eval_splits"] == ["env0_in", "env2_out"]
    # Default runs record DomainBed's arguments only.
    assert not {"eval_splits", "no_initial_eval"} & set(read_records(full)[0]["args"])


def test_an_unknown_eval_split_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(["--dataset", "Debug28", "--steps", "1", "--output_dir", str(out),
                       "--eval_splits", "env7_in"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no split env7_in" in err[0] and "env0_in" in err[0]
    assert not out.exists()


def test_table_splits_only_evaluates_what_the_table_reads_once(tmp_path, capsys):
    out = tmp_path / "compare"
    assert compare_losses.main(["--dataset", "Debug28", "--output_dir", str(out),
                                "--test_envs", "1", "--steps", "3", "--quiet",
                                "--table_splits_only"]) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = [line for line in printed if line.startswith(("| CE |", "| ITL (Table 8) |"))]
    by_algorithm = {r["args"]["algorithm"]: r for run in out.iterdir() if run.is_dir()
                    for r in read_records(run)}
    for row, algorithm in zip(rows, ("ERM", "ERM_ITL"), strict=True):
        record = by_algorithm[algorithm]
        assert record["step"] == 2
        assert sorted(k for k in record if k.endswith("_acc")) == [
            "env0_out_acc", "env1_in_acc", "env2_out_acc"]
        val = (record["env0_out_acc"] + record["env2_out_acc"]) / 2
        assert row.split(" | ")[1:3] == [f"{100 * record['env1_in_acc']:.1f}",
                                         f"{100 * val:.1f}"]
    assert len(by_algorithm) == 2 and sum(1 for run in out.iterdir() if run.is_dir()) == 2


def test_bad_steps_are_one_line(capsys):
    assert demo.main(["--steps", "0"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == "demo: error: --steps and --workers must be at least 1"


@pytest.mark.slow
def test_demo_deploys_three_losses_on_five_seeds_and_reuses_them(tmp_path, mnist_dir):
    out = tmp_path / "demo"

    def run_demo():
        previous = os.umask(0o022)
        try:
            return subprocess.run(
                [sys.executable, "-m", "domainbed_itl.scripts.demo", "--data_dir",
                 str(mnist_dir), "--output_dir", str(out), "--steps", "5", "--workers", "2"],
                cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
        finally:
            os.umask(previous)

    completed = run_demo()
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("Expected duration: about ")
    assert "with 2 free cores (15 runs of 5 SGD steps, 2 at a time" in lines[0]
    commands = [line for line in lines if line.startswith("$ ")]
    assert [c.split()[3] for c in commands] == ["domainbed.scripts.download",
                                                "domainbed_itl.scripts.deploy"]
    rows = [line.split(" | ")[0] for line in lines if line.startswith("| ")][1:]
    assert rows == ["| CE", "| ITL (Table 8)", "| shipped (rmnist-ift)"]
    assert lines[-1] == demo.closing_sentence(5)
    deployed = out / "mlp_steps5"
    records = [json.loads(line) for line in (deployed / "records.jsonl").read_text().splitlines()]
    assert sorted((r["loss"], r["trial_seed"]) for r in records) == sorted(
        (loss, t) for loss in ("CE", "ITL (Table 8)", "shipped (rmnist-ift)") for t in range(5))
    assert {(r["dataset"], r["test_env"], r["steps"]) for r in records} == {
        ("RotatedMNIST", 0, 5)}
    shipped = [r for r in records if r["loss"] == "shipped (rmnist-ift)"]
    assert all(r["meta"]["exclude_envs"] == [0] for r in shipped)  # env 0 never seen
    # Everything the commands wrote is readable by the group under umask 022.
    modes = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode))
             for p in out.rglob("*") if p.is_file()}
    assert modes and all(mode == "0o644" for mode in modes.values()), modes

    # A rerun trains nothing and prints the same table.
    before = (deployed / "records.jsonl").read_text()
    again = run_demo()
    assert again.returncode == 0, again.stderr
    assert (deployed / "records.jsonl").read_text() == before
    table = (deployed / "table.md").read_text().strip()
    assert table in completed.stdout and table in again.stdout
