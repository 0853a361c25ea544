"""The Makefile's reproduction targets, run as users run them: `make` from the repository root.

`-o .venv/.installed` keeps make from reinstalling the environment, and PY points the recipes
at this interpreter."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make(*targets: str, stdin: str = "", **variables: str) -> subprocess.CompletedProcess:
    settings = [f"{key}={value}" for key, value in {"PY": sys.executable, **variables}.items()]
    return subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", *targets,
                           *settings], cwd=REPO_ROOT, input=stdin, capture_output=True,
                          text=True, timeout=900)


def sections(stdout: str) -> dict[str, str]:
    """Each sweep's printout, keyed by its output directory's name (table1, table2, ...)."""
    parts = re.split(r"^Plan: ", stdout, flags=re.M)[1:]
    return {re.search(r" sweep in \S+/(table\d+):", part).group(1): part for part in parts}


def commands(section: str) -> list[str]:
    return [line for line in section.splitlines() if line.startswith("Dummy launcher: ")]


def flag(command: str, name: str) -> list[str]:
    """The values of `--name` in a train command line."""
    return command.split(f" --{name} ")[1].split(" --")[0].split()


@pytest.mark.slow  # eight interpreters that each import torch: about a minute on 2 cores
def test_every_table_target_prints_its_commands_and_creates_nothing(tmp_path):
    """LAUNCHER=dummy: each sweep once, shared by the tables that read it (2, 9 and Fig. 2;
    4 and 10), with the paper's datasets, algorithms and test environments; no directory."""
    result = make("table1", "table2", "table3", "table4", "table9", "table10", "fig2",
                  LAUNCHER="dummy", YES="1", N_HPARAMS="1", N_TRIALS="1",
                  DATA_DIR=str(tmp_path / "data"), OUT_DIR=str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweeps = sections(result.stdout)
    assert sorted(sweeps) == ["table1", "table2", "table3", "table4"]
    expected = {  # (datasets, algorithms, jobs): 1 hparam x 1 trial x test-env sets
        "table1": ({"PACS"}, {"ERM", "ERM_BCE", "ERM_SCE", "ERM_iSCE", "ERM_ITL", "RSC",
                              "RSC_ITL"}, 7 * 4),
        "table2": ({"ColoredMNIST", "VLCS", "PACS", "TerraIncognita", "OfficeHome", "DomainNet"},
                   {"ERM", "SagNet", "CORAL", "CDANN", "RSC", "ERM_ITL"},
                   6 * (6 + 10 + 10 + 10 + 10 + 21)),
        "table3": ({"PACS"}, {"ERM", "ERM_BCE", "ERM_Focal", "ERM_SCE", "ERM_GCE", "ERM_LS",
                              "ERM_iSCE", "ERM_ITL"}, 8 * 10),
        "table4": ({"VLCS", "PACS", "TerraIncognita", "OfficeHome"},
                   {"ERM", "CORAL", "SagNet", "Mixup", "ERM_ITL"}, 5 * 4 * 4),
    }
    for name, (datasets, algorithms, n_jobs) in expected.items():
        section = sweeps[name]
        lines = commands(section)
        assert f"{n_jobs} of {n_jobs} jobs to run" in section
        assert f"{n_jobs} jobs: 0 done, 0 incomplete, {n_jobs} not launched." in section
        assert len(lines) == n_jobs
        assert {flag(c, "dataset")[0] for c in lines} == datasets
        assert {flag(c, "algorithm")[0] for c in lines} == algorithms
        assert all(f"--output_dir {tmp_path}/out/{name}/" in c for c in lines)
        assert all('"resnet50_augmix": false' in c for c in lines)
        assert "Estimated cost on " in section and "Based on" in section
    four_envs = [tuple(map(int, flag(c, "test_envs"))) for c in commands(sweeps["table4"])]
    assert sorted(map(tuple, four_envs)) == sorted(
        tuple(e for e in range(4) if e != source) for source in range(4) for _ in range(4 * 5))
    assert {len(flag(c, "test_envs")) for c in commands(sweeps["table1"])} == {1}
    assert {len(flag(c, "test_envs")) for c in commands(sweeps["table2"])} == {1, 2}
    for table in ("1", "2", "3", "4", "9", "10"):
        assert f"LAUNCHER=dummy: nothing ran so there is no Table {table}" in result.stdout
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


def test_reduced_table2_dry_run_prints_the_commands_and_creates_nothing(tmp_path):
    result = make("table2", LAUNCHER="dummy", YES="1", N_HPARAMS="3", N_TRIALS="2", STEPS="7",
                  DATASETS="ColoredMNIST", ALGORITHMS="ERM ERM_ITL", OUT_DIR=str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "72 of 72 jobs to run" in result.stdout
    assert "LAUNCHER=dummy: nothing ran so there is no Table 2" in result.stdout
    assert not (tmp_path / "o").exists()
    lines = commands(sections(result.stdout)["table2"])
    assert len(lines) == 2 * 2 * 6 * 3
    assert {(flag(c, "dataset")[0], flag(c, "steps")[0]) for c in lines} == {("ColoredMNIST", "7")}
    assert {flag(c, "algorithm")[0] for c in lines} == {"ERM", "ERM_ITL"}
    assert {flag(c, "hparams_seed")[0] for c in lines} == {"0", "1", "2"}


def test_declining_the_plan_launches_nothing(tmp_path):
    result = make("table4", stdin="n\n", LAUNCHER="local", DATASETS="Debug28",
                  ALGORITHMS="ERM", N_HPARAMS="1", N_TRIALS="1", OUT_DIR=str(tmp_path / "out"))
    assert result.returncode != 0
    assert "Launch 3 jobs? (y/n) Nothing launched." in result.stdout
    assert "About to launch" not in result.stdout and not (tmp_path / "out").exists()


def test_data_and_meta_train_commands():
    dry = make("-n", "data", "meta-train", DATASETS="PACS VLCS", OUT_DIR="o", DATA_DIR="d")
    assert dry.returncode == 0, dry.stderr
    assert "-m domainbed.scripts.download --data_dir d --datasets PACS VLCS" in dry.stdout
    text = " ".join(dry.stdout.replace("\\\n", " ").split())
    assert ("-m domainbed_itl.meta.train --dataset RotatedMNIST --data_dir d --output_dir o/meta "
            "--preset paper --outer_steps 200") in text
    assert "plan meta_train --output_dir o/meta --outer_steps 200" in text
    mnist_only = make("-n", "data", DATA_DIR="d")
    assert mnist_only.returncode == 0, mnist_only.stderr
    assert mnist_only.stdout.split("download --data_dir d")[1].strip() == ""


@pytest.mark.slow  # a real sweep of 3 jobs, twice, with the tables
def test_table4_target_runs_collects_and_resumes(tmp_path):
    """A real reduced Table 4 / Table 10 through make; the second run has nothing left to do."""
    variables = dict(LAUNCHER="local", YES="1", DATASETS="Debug28", ALGORITHMS="ERM",
                     N_HPARAMS="1", N_TRIALS="1", STEPS="3", OUT_DIR=str(tmp_path / "out"),
                     DATA_DIR=str(tmp_path / "data"))
    first = make("table4", "table10", **variables)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "3 of 3 jobs to run" in first.stdout and "All 3 jobs exited successfully." in (
        first.stdout)
    assert "-------- Table 4:" in first.stdout and "-------- Table 10:" in first.stdout
    erm_row = next(line for line in first.stdout.split("-------- Table 4:")[1].splitlines()
                   if line.startswith("ERM "))
    assert re.fullmatch(r"ERM\s+\d+\.\d +\+/- 0\.0\s*", erm_row), erm_row
    again = make("table4", **variables)
    assert again.returncode == 0 and "0 of 3 jobs to run" in again.stdout
    assert "About to launch 0 jobs." in again.stdout
