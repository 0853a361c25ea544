"""Planted input that must not stop or change a table, a sweep or a comparison: a results line
nested too deep or too long, records that disagree with the dataset registry, hyperparameter
keys no algorithm has, LaTeX's special characters in a name, and a FIFO for a learned loss."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_collect_results import EXPECTED_IID, N_RECORDS, write_fixture_sweep

from domainbed.lib import joblock, latex, reporting
from domainbed.scripts import collect_results as domainbed_collect
from domainbed_itl.scripts import paper_tables as itl_collect

ITL_TABLE2 = ["--table", "2"]


@pytest.fixture()
def sweep(tmp_path) -> tuple[Path, Path]:
    """A finished Debug28 sweep (test_collect_results.py) and one job's results file."""
    root = tmp_path / "sweep"
    jobs = write_fixture_sweep(root)
    return root, jobs[("ERM", 0, (0,), 0)] / "results.jsonl"


def _plant(path: Path, *lines: str) -> None:
    path.write_text("".join(line + "\n" for line in lines) + path.read_text())


def _itl_table2(capsys, root: Path, *extra: str) -> tuple[str, str]:
    assert itl_collect.main(["--input_dir", str(root), *ITL_TABLE2, *extra]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: ")]


def test_nested_line_leaves_the_public_table_printed_with_one_warning(sweep):
    root, target = sweep
    _plant(target, "[" * 200_000)
    result = subprocess.run(
        [sys.executable, "-m", "domainbed.scripts.collect_results", "--input_dir", str(root)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"Total records: {N_RECORDS}\n")
    assert EXPECTED_IID in result.stdout
    assert _warnings(result.stderr) == [
        f"warning: {target}:1: skipped a line nested too deeply to parse"]


def test_nested_and_overlong_lines_leave_table2_as_it_was(sweep, capsys):
    root, target = sweep
    clean, _ = _itl_table2(capsys, root)
    _plant(target, "[" * 200_000, '{"args": "' + "x" * (reporting.MAX_LINE_CHARS + 10) + '"}')
    out, err = _itl_table2(capsys, root)
    assert out == clean
    assert _warnings(err) == [
        f"warning: {target}:1: skipped a line nested too deeply to parse",
        f"warning: {target}:2: skipped a line longer than {reporting.MAX_LINE_CHARS} characters",
    ]


def _record_like(path: Path, **changes) -> dict:
    record = json.loads(path.read_text().splitlines()[0])
    record.update(changes)
    return record


def test_records_that_disagree_with_the_registry_are_warned_about_and_skipped(sweep, capsys):
    root, target = sweep
    clean, _ = _itl_table2(capsys, root)
    four_envs = _record_like(target, env3_in_acc=0.9, env3_out_acc=0.9)
    unregistered = _record_like(target)
    unregistered["args"] = {**unregistered["args"], "dataset": "Planted"}
    _plant(target, json.dumps(four_envs), json.dumps(unregistered))

    out, err = _itl_table2(capsys, root)
    assert out == clean  # the expected grid (no "[k missing]") and the columns are the registry's
    assert _warnings(err) == [
        f"warning: {target}:1: skipped a record that reports 4 environments, but Debug28 has 3",
        f"warning: {target}:2: skipped a record that names a dataset not registered here: "
        "'Planted'",
    ]
    report = domainbed_collect.render_report(reporting.load_records(str(root)))
    assert "Planted" not in report and EXPECTED_IID in report


def test_a_file_warns_about_its_first_skipped_lines_then_counts_the_rest(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    path.write_text("{not json\n" * (reporting.WARNINGS_PER_FILE + 7))
    assert reporting.read_results_file(str(path)) == []
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == reporting.WARNINGS_PER_FILE + 1
    assert warnings[-1] == f"warning: {path}: skipped 7 more lines like these"


@pytest.mark.parametrize("module", ["domainbed.scripts.sweep",
                                    "domainbed_itl.scripts.sweep_single_source"])
def test_sweeps_refuse_an_unknown_hyperparameter_before_creating_anything(tmp_path, module):
    out = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", module, "launch", "--datasets", "Debug28", "--algorithms", "ERM",
         "--data_dir", str(tmp_path / "data"), "--output_dir", str(out),
         "--command_launcher", "local", "--skip_confirmation", "--n_hparams", "1",
         "--n_trials", "1", "--steps", "1", "--hparams", '{"lrr": 1}'],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "unknown hyperparameter 'lrr' for ERM (did you mean 'lr'?)" in result.stderr
    assert not out.exists()


def test_latex_escapes_every_special_character_and_keeps_a_name_on_one_line():
    assert latex.escape("a\\b $^~{}&%#_ c\n  d") == (
        "a\\textbackslash{}b \\$\\^{}\\~{}\\{\\}\\&\\%\\#\\_ c d")
    assert latex.escape("ERM_ITL") == "ERM\\_ITL"


HOSTILE_NAME = "I\\R$M^~{x}&%#_\nsecond line"
ESCAPED_NAME = "I\\textbackslash{}R\\$M\\^{}\\~{}\\{x\\}\\&\\%\\#\\_ second line"


def _rename_irm(root: Path) -> None:
    for path in root.glob("*/results.jsonl"):
        lines = []
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["args"]["algorithm"] == "IRM":
                record["args"]["algorithm"] = HOSTILE_NAME
            lines.append(json.dumps(record))
        path.write_text("\n".join(lines) + "\n")


def _rows_of(tex: str, label: str) -> list[str]:
    return [line for line in tex.splitlines() if line.startswith(label)]


def test_both_latex_tables_escape_an_algorithm_name(sweep, capsys):
    root, _ = sweep
    _rename_irm(root)
    tex, _ = _itl_table2(capsys, root, "--format", "latex")
    assert "second line" not in tex.replace(ESCAPED_NAME, "")
    header = _rows_of(tex, "\\textbf{Dataset}")  # Table 2: an algorithm per column
    assert len(header) == 1 and header[0].endswith(f"& \\textbf{{{ESCAPED_NAME}}} \\\\")

    public = domainbed_collect.render_report(reporting.load_records(str(root)), "latex")
    assert "second line" not in public.replace(ESCAPED_NAME, "")
    rows = _rows_of(public, ESCAPED_NAME + " ")
    assert rows and all(row.endswith(" \\\\") for row in rows)


def test_compare_losses_refuses_a_fifo_for_a_learned_loss_at_once(tmp_path):
    fifo = tmp_path / "loss.json"
    os.mkfifo(fifo)
    result = subprocess.run(
        [sys.executable, "-m", "domainbed_itl.scripts.compare_losses", "--data_dir",
         str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), "--learned",
         f"x={fifo}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == (f"compare_losses: error: learned loss {str(fifo)!r} is not a "
                             "regular file; give a learned_loss.json or preset:<name>\n")
    assert not (tmp_path / "out").exists()


def test_tables_5_and_6_skip_a_fifo_for_records(tmp_path):
    (tmp_path / "deploy").mkdir()
    os.mkfifo(tmp_path / "deploy" / "records.jsonl")
    result = subprocess.run(
        [sys.executable, "-m", "domainbed_itl.scripts.paper_tables", "--input_dir",
         str(tmp_path), "--table", "6"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("paper_tables: error: no deployment records")


def _resume_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "domainbed.scripts.sweep", "launch", "--datasets", "Debug28",
            "--algorithms", "ERM", "--data_dir", str(out.parent / "data"), "--output_dir",
            str(out), "--command_launcher", "local", "--skip_confirmation", "--n_hparams", "1",
            "--n_trials", "1", "--steps", "2", "--single_test_envs", "--resume_incomplete",
            *extra]


def test_jobs_another_process_runs_are_running_elsewhere_not_failed(tmp_path):
    """This test holds each job's lock, as another launcher's runs would, from the moment the
    sweep has created the directories until its runs have found them taken."""
    out = tmp_path / "sweep"
    sweep = subprocess.Popen(_resume_command(out, "--max_parallel", "3"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    with contextlib.ExitStack() as held:
        for line in sweep.stdout:
            lines.append(line)
            if line.startswith("Launching "):
                for job_dir in sorted(out.iterdir()):
                    held.enter_context(joblock.running(str(job_dir)))
        assert sweep.wait(timeout=300) == 0, "".join(lines)
        mine = f"running elsewhere (pid@host {os.getpid()}@"
        assert sum(line.startswith(f"  {mine}") for line in lines) == 3, "".join(lines)
        assert not any("failed" in line for line in lines), "".join(lines)

        again = subprocess.run(_resume_command(out), capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.count(f"Left alone, {mine}") == 3
        assert "About to launch 0 jobs." in again.stdout


@pytest.mark.slow
def test_two_resuming_launchers_at_once_both_exit_0_and_report_no_failure(tmp_path):
    out = tmp_path / "sweep"
    launchers = [subprocess.Popen(_resume_command(out), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [launcher.communicate(timeout=900)[0] for launcher in launchers]
    for launcher, output in zip(launchers, outputs, strict=True):
        assert launcher.returncode == 0, output
        assert "failed" not in output, output
    assert sorted(path.name for path in out.glob("*/done")) == ["done"] * 3
