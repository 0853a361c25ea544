"""`make demo`: the whole pipeline (meta-learning, ERM deployment, the labelled table) on a tiny
budget, the expected duration it announces, and the evaluation options that make it fast."""

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

REPO_ROOT = Path(__file__).resolve().parent.parent


def read_records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "results.jsonl").read_text().splitlines()]


def test_default_budget_fits_ten_minutes_on_the_reference_machine(capsys):
    defaults = demo.build_parser().parse_args([])
    budget = demo.Budget(defaults.steps, defaults.outer_steps, defaults.inner_steps)
    reference = budget.reference_seconds()
    assert reference <= 10 * 60
    demo.announce(budget, step=2 * demo.REF_ERM_STEP_S)
    line = capsys.readouterr().out
    assert line.startswith(f"Expected duration: about {2 * reference / 60:.0f} min here (one "
                           "ERM step takes 3.00 s here")
    assert f"about {reference / 60:.0f} min)" in line


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
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ERM")]
    for row, slug in zip(rows, ("erm--cross-entropy-", "erm_itl--published--tab--8-"),
                         strict=True):
        (run,) = (out / slug).iterdir()
        (record,) = read_records(run)
        assert record["step"] == 2
        assert sorted(k for k in record if k.endswith("_acc")) == [
            "env0_out_acc", "env1_in_acc", "env2_out_acc"]
        val = (record["env0_out_acc"] + record["env2_out_acc"]) / 2
        assert row.split(" | ")[1:] == [f"{100 * record['env1_in_acc']:.1f}",
                                        f"{100 * record['env1_in_acc']:.1f}",
                                        f"{100 * val:.1f} |"]


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline_on_a_tiny_budget(tmp_path, mnist_dir):
    out = tmp_path / "demo"
    previous = os.umask(0o022)
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "domainbed_itl.scripts.demo", "--data_dir", str(mnist_dir),
             "--output_dir", str(out), "--steps", "3", "--outer_steps", "1",
             "--inner_steps", "3"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
    finally:
        os.umask(previous)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("Expected duration: about ")
    assert "REDUCED BUDGET, 1 outer steps of 3 inner steps, Hessian batch 256" in completed.stdout
    rows = [line for line in lines if line.startswith("| ERM")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| ERM (cross-entropy)", "| ERM_ITL (published, Tab. 8)", "| ERM_ITL (learned just now)"]
    learned_file = out / "meta" / "outer1_inner3" / "learned_loss.json"
    learned = json.loads(learned_file.read_text())["itl_omega"]
    runs = sorted((out / "erm").glob("*/env0_trial0_*"))
    assert len(runs) == 3
    for run in runs:
        (record,) = read_records(run)  # one evaluation, at the last step
        assert record["step"] == 2
        assert sorted(k for k in record if k.endswith("_acc")) == [
            "env0_in_acc", *(f"env{i}_out_acc" for i in range(1, 6))]
        if "learned" in run.parent.name:
            assert record["hparams"]["itl_omega"] == learned
    # Everything the commands wrote is readable by the group under umask 022.
    modes = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode))
             for p in out.rglob("*") if p.is_file()}
    assert modes and all(mode == "0o644" for mode in modes.values()), modes
