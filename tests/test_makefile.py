"""The Makefile's reproduction targets, run as users run them: `make` from the repository root.

`-o .venv/.installed` keeps make from reinstalling the environment, and PY points the recipes
at this interpreter."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make(*targets: str, stdin: str = "", timeout: float = 900,
         **variables: str) -> subprocess.CompletedProcess:
    """Run make; past `timeout` seconds, its whole process group (the stages it started,
    training included) is killed and the test fails."""
    settings = [f"{key}={value}" for key, value in {"PY": sys.executable, **variables}.items()]
    argv = ["make", "--no-print-directory", "-o", ".venv/.installed", *targets, *settings]
    with subprocess.Popen(argv, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"make {' '.join(targets)} still running after {timeout} s")
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


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


def test_data_and_meta_train_dry_run_prints_the_plan_and_commands(tmp_path):
    """LAUNCHER=dummy: the download and the meta-training printed, with the meta-training's
    plan; nothing downloaded, trained or written."""
    data, out = tmp_path / "d", tmp_path / "o"
    dry = make("data", "meta-train", LAUNCHER="dummy", DATASETS="PACS VLCS", OUT_DIR=str(out),
               DATA_DIR=str(data))
    assert dry.returncode == 0, dry.stderr
    assert (f"-m domainbed.scripts.download --data_dir {data} --datasets PACS VLCS \n"
            in dry.stdout)
    assert (f"Plan: meta-training in {out}/meta: 0 of 200 outer steps done, 200 to run; "
            "estimated ") in dry.stdout
    assert (f"-m domainbed_itl.scripts.meta_train --dataset RotatedMNIST --data_dir {data} "
            "--output_dir "
            f"{out}/meta --preset paper --outer_steps 200 \n") in dry.stdout
    assert "Learned loss:" not in dry.stdout and list(tmp_path.iterdir()) == []
    mnist_only = make("data", LAUNCHER="dummy", DATA_DIR="d")
    assert mnist_only.returncode == 0, mnist_only.stderr
    assert mnist_only.stdout.split("download --data_dir d")[1].strip() == ""


def test_make_variables_reach_the_sweep_as_written_and_the_shell_runs_none(tmp_path):
    """`$$(...)` (make's escape of `$(...)`), backticks, quotes and a space in OUT_DIR: the
    sweep gets the directory as written, and nothing in it runs."""
    out = f"{tmp_path}/o u't\"$$(touch {tmp_path}/p1)`touch {tmp_path}/p2`"
    written = out.replace("$$", "$")
    result = make("table2", LAUNCHER="dummy", YES="1", N_HPARAMS="1", N_TRIALS="1",
                  DATASETS="ColoredMNIST", ALGORITHMS="ERM", OUT_DIR=out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(tmp_path.iterdir()) == [] and not (REPO_ROOT / "p1").exists()
    assert f"Plan: multi-source sweep in {written}/table2: ERM;" in result.stdout
    lines = [shlex.split(line) for line in result.stdout.splitlines()
             if line.startswith("Dummy launcher: ")]
    assert len(lines) == 6
    assert all(words[words.index("--output_dir") + 1].startswith(f"{written}/table2/")
               for words in lines)
    assert "LAUNCHER=dummy: nothing ran so there is no Table 2" in result.stdout


@pytest.mark.parametrize("variable", ["DATASETS", "ALGORITHMS"])
def test_list_variables_are_split_into_words_never_evaluated(tmp_path, variable):
    """A list variable is split into names, never run or globbed: `*` stays a name."""
    settings = {"DATASETS": "ColoredMNIST", "ALGORITHMS": "ERM"}
    settings[variable] = f"* $$(touch {tmp_path}/p1) `touch {tmp_path}/p2` " + settings[variable]
    result = make("table2", LAUNCHER="dummy", YES="1", N_HPARAMS="1", N_TRIALS="1",
                  OUT_DIR=str(tmp_path / "o"), **settings)
    assert result.returncode != 0 and "Dummy launcher" not in result.stdout
    assert list(tmp_path.iterdir()) == [] and not (REPO_ROOT / "p1").exists()
    assert "'*'" in result.stderr.splitlines()[0], result.stderr


def test_a_table_step_notes_unfinished_jobs_and_fails_on_an_error(tmp_path):
    """Jobs launched but with no record yet: a note, and make goes on; any collect_results
    failure (no sweep directory, a bad flag) fails make. `-o sweep-table4` runs the table step
    alone."""
    out = tmp_path / "o u"
    (out / "table4" / "job0").mkdir(parents=True)
    waiting = make("-o", "sweep-table4", "table4", LAUNCHER="local", OUT_DIR=str(out))
    assert waiting.returncode == 0, waiting.stderr
    assert waiting.stdout.splitlines()[-1] == (
        f"No Table 4 yet: run make again once the jobs in {out}/table4 have finished")
    assert f"paper_tables: error: no records in {out}/table4" in waiting.stderr
    bad_flag = make("-o", "sweep-table4", "table10", LAUNCHER="local", OUT_DIR=str(out),
                    COLLECT_FLAGS="--selection nonsense")
    assert bad_flag.returncode != 0 and "No Table" not in bad_flag.stdout
    assert "argument --selection: invalid choice: 'nonsense'" in bad_flag.stderr
    (out / "table4" / "job0").rmdir()
    (out / "table4").rmdir()
    missing = make("-o", "sweep-table4", "table4", LAUNCHER="local", OUT_DIR=str(out))
    assert missing.returncode != 0 and "No Table" not in missing.stdout
    assert f"paper_tables: error: no sweep directory at {out}/table4" in missing.stderr


def test_table6_dry_run_keeps_a_directory_with_a_space_one_word(tmp_path):
    """Every learned-loss file of Table 6 names the directory as written: one argument each."""
    out = f"{tmp_path}/o u"
    result = make("table6", LAUNCHER="dummy", META_SEEDS="0", OUT_DIR=out)
    assert result.returncode == 0, result.stderr
    deploy = next(shlex.split(line) for line in result.stdout.splitlines()
                  if "scripts.deploy" in line and "--test_envs 2" in line)
    assert [deploy[i + 1] for i, word in enumerate(deploy) if word == "--learned"] == [
        f"generic0={out}/table5/meta/RotatedMNIST_order4_seed0/learned_loss.json",
        f"task0={out}/table6/meta/without_env2/ColoredMNIST_order4_seed0/learned_loss.json"]
    assert deploy[deploy.index("--output_dir") + 1] == f"{out}/table6/deploy/env2"
    assert list(tmp_path.iterdir()) == []


def test_a_trial_count_is_checked_before_any_arithmetic(tmp_path):
    """Bash arithmetic runs a `$(...)` in an array subscript: the count is refused first."""
    result = make("table5", LAUNCHER="dummy", DEPLOY_TRIALS=f"x[$$(touch {tmp_path}/p1)]",
                  OUT_DIR=str(tmp_path / "o"))
    assert result.returncode != 0 and result.stdout.splitlines()[-1:] == [
        "N_TRIALS=\"$DEPLOY_TRIALS\" bash sweeps/table5_meta_seeds.sh"]
    assert result.stderr.splitlines()[0] == (
        f"table5_meta_seeds.sh: error: N_TRIALS=x[$(touch {tmp_path}/p1)]: give a whole "
        "number of trial seeds")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # nine interpreters that each import torch: 45 s on 2 idle cores
def test_reproduce_dry_run_prints_every_stage_and_runs_nothing(tmp_path):
    """`make reproduce LAUNCHER=dummy` ends within a minute: every stage's plan and commands
    printed, data and meta-training included; no download, no run directory."""
    data, out = tmp_path / "data", tmp_path / "out"
    result = make("reproduce", timeout=60, LAUNCHER="dummy", YES="1", N_HPARAMS="1",
                  N_TRIALS="1", ALGORITHMS="ERM", META_SEEDS="0", ORDERS="2",
                  DATA_DIR=str(data), OUT_DIR=str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []
    text = result.stdout
    assert f"-m domainbed.scripts.download --data_dir {data} \n" in text
    assert f"Plan: meta-training in {out}/meta: 0 of 200 outer steps done" in text
    assert f"-m domainbed_itl.scripts.meta_train --dataset RotatedMNIST --data_dir {data}" in text
    for name in ("table1", "table2", "table3", "table4"):
        assert f" sweep in {out}/{name}: ERM; 1 hyperparameter draws x 1 trials" in text
    for table in ("1", "2", "3", "4", "9", "10"):
        assert f"LAUNCHER=dummy: nothing ran so there is no Table {table}" in text
    for meta in ("table5/meta", "table6/meta/without_env2", "fig6/meta"):
        assert (f"-m domainbed_itl.scripts.meta_train_many --data_dir {data} "
                f"--output_dir {out}/{meta} ") in text
    for table, deploy in (("5", "table5/deploy"), ("6", "table6/deploy")):
        assert (f"-m domainbed_itl.scripts.paper_tables --input_dir {out}/{deploy} "
                f"--table {table} --compare_paper") in text


@pytest.mark.slow  # a real sweep of 3 jobs, twice, with the tables
def test_table4_target_runs_collects_and_resumes(tmp_path):
    """A real reduced Table 4 / Table 10 through make, into a directory whose name holds a
    space; the second run has nothing left to do."""
    variables = dict(LAUNCHER="local", YES="1", DATASETS="Debug28", ALGORITHMS="ERM",
                     N_HPARAMS="1", N_TRIALS="1", STEPS="3", OUT_DIR=str(tmp_path / "out dir"),
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
