"""collect_results, reporting and list_top_hparams on a sweep directory built here, whose every
table cell was worked out by hand (see `_accuracies`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from domainbed.lib import reporting, results_tables
from domainbed.scripts import collect_results, list_top_hparams
from domainbed.scripts.sweep import Job, all_test_env_combinations

# Base test-env accuracy per algorithm, trial and test env. IRM has one trial and never ran with
# env 2 held out, nor with the pair (0, 2): its env-2 cells are empty ("X") and leave-one-out
# cannot score any of its runs.
BASE = {
    ("ERM", 0): [0.50, 0.60, 0.70],
    ("ERM", 1): [0.52, 0.58, 0.74],
    ("IRM", 0): [0.30, 0.40, None],
}
# What each (hparams_seed, step) adds to the test-env in-split accuracy, so that the reported
# number tells which run a method chose.
OFFSET = {(0, 0): 0.00, (0, 1): 0.02, (1, 0): 0.04, (1, 1): 0.06}


def _accuracies(algorithm, trial, test_envs, hseed, step):
    """in/out accuracies of one evaluation, built so that each method has one clear winner:

    - training-domain validation: training-env out accs are 0.7 only at (seed 1, step 0)
      -> reports base + 0.04;
    - oracle: the last step (1) and the test env's out acc, 0.9 for seed 0 vs 0.8 -> base + 0.02;
    - leave-one-out: pair runs' in accs are 0.8 only at (seed 0, step 0) -> base + 0.00.
    """
    in_accs, out_accs = [], []
    for env in range(3):
        if len(test_envs) == 2:
            in_accs.append(0.8 if (hseed, step) == (0, 0) else 0.4)
            out_accs.append(0.5)
        elif env in test_envs:
            in_accs.append(round(BASE[(algorithm, trial)][env] + OFFSET[(hseed, step)], 6))
            out_accs.append(0.9 if hseed == 0 else 0.8)
        else:
            in_accs.append(0.5)
            out_accs.append(0.7 if (hseed, step) == (1, 0) else 0.6)
    return in_accs, out_accs


def _test_env_sets(algorithm):
    if algorithm == "IRM":
        return [[0], [1], [0, 1]]
    return list(all_test_env_combinations(3))


def write_fixture_sweep(root: Path) -> dict[str, Path]:
    """Write the sweep; return a few job directories by role for the damage tests."""
    jobs = {}
    for algorithm, trial in BASE:
        for test_envs in _test_env_sets(algorithm):
            for hseed in (0, 1):
                train_args = {
                    "dataset": "Debug28",
                    "algorithm": algorithm,
                    "test_envs": test_envs,
                    "holdout_fraction": 0.2,
                    "hparams_seed": hseed,
                    "data_dir": "/data",
                    "task": "domain_generalization",
                    "trial_seed": trial,
                    "seed": 0,
                    "steps": 2,
                }
                job = Job(train_args, str(root))
                os.makedirs(job.output_dir)
                lines = []
                for step in (0, 1):
                    in_accs, out_accs = _accuracies(algorithm, trial, test_envs, hseed, step)
                    rec = {
                        "args": job.train_args,
                        "step": step,
                        "hparams": {"lr": 0.001 * (hseed + 1)},
                    }
                    for env in range(3):
                        rec[f"env{env}_in_acc"] = in_accs[env]
                        rec[f"env{env}_out_acc"] = out_accs[env]
                    lines.append(json.dumps(rec, sort_keys=True))
                Path(job.output_dir, "results.jsonl").write_text("\n".join(lines) + "\n")
                Path(job.output_dir, "done").write_text("done")
                jobs[(algorithm, trial, tuple(test_envs), hseed)] = Path(job.output_dir)
    return jobs


N_RECORDS = 2 * 2 * (2 * 6 + 1 * 3)  # steps x hparams x (ERM trials x sets + IRM's)


@pytest.fixture()
def sweep_dir(tmp_path):
    root = tmp_path / "sweep"
    jobs = write_fixture_sweep(root)
    # A job killed while writing: half a record, with accuracies that would win every method.
    victim = jobs[("ERM", 0, (0,), 1)] / "results.jsonl"
    better = json.loads(victim.read_text().splitlines()[0])
    better.update(env0_in_acc=0.99, env0_out_acc=0.99, env1_out_acc=0.99, env2_out_acc=0.99)
    text = json.dumps(better)
    victim.write_text(victim.read_text() + text[: len(text) // 2])
    # Records that parse but cannot be used, in another job.
    odd = jobs[("ERM", 1, (2,), 0)] / "results.jsonl"
    odd.write_text('[1, 2]\n{"step": 3}\n' + odd.read_text())
    # Things that are not job directories.
    (root / "notes.txt").write_text("hello")
    (root / ".deleting-abc").mkdir()
    (root / ".deleting-abc" / "results.jsonl").write_text("garbage\n")
    return root, victim, odd


def test_format_mean_is_mean_and_standard_error_in_percent():
    # mean 0.2; population std of [0.1, 0.2, 0.3] / sqrt(3) = 0.0471
    assert results_tables.format_mean([0.1, 0.2, 0.3], False)[2] == "20.0 +/- 4.7"
    assert results_tables.format_mean([0.1, 0.2, 0.3], True)[2] == "20.0 $\\pm$ 4.7"
    assert results_tables.format_mean([], False) == (None, None, "X")


def test_render_table_text_layout():
    lines = results_tables.render_table(
        [["1", "2"], ["3", "4"]], "Header text", ["R1", "R2"], ["C1", "C2", "C3"], colwidth=4
    )
    assert "\n".join(lines) == (
        "\n-------- Header text\nC1    C2    C3   \nR1    1     2    \nR2    3     4    "
    )


def test_load_records_skips_damage_and_names_the_file(sweep_dir, capsys):
    root, victim, odd = sweep_dir
    records = reporting.load_records(str(root))
    assert len(records) == N_RECORDS
    err = capsys.readouterr().err
    assert f"{victim}:3: skipped a truncated last line" in err
    assert f"{odd}:1: skipped a record that is not a JSON object" in err
    assert f"{odd}:2: skipped a record that has no 'args' object" in err
    assert ".deleting-abc" not in err


def test_malformed_line_in_the_middle_is_skipped(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    good = {
        "args": {
            "dataset": "Debug28",
            "algorithm": "A",
            "test_envs": [0],
            "trial_seed": 0,
            "hparams_seed": 0,
        },
        "step": 0,
        "hparams": {"lr": 0.001},
        **{f"env{env}_{split}_acc": 0.5 for env in range(3) for split in ("in", "out")},
    }
    path.write_text(json.dumps(good) + "\n{not json\n" + json.dumps(good) + "\n")
    assert len(reporting.read_results_file(str(path))) == 2
    assert f"{path}:2: skipped a malformed line" in capsys.readouterr().err


EXPECTED_IID = """\
-------- Dataset: Debug28, model selection method: training-domain validation set
Algorithm             0                     1                     2                     Avg                  
ERM                   55.0 +/- 0.7          63.0 +/- 0.7          76.0 +/- 1.4          64.7                 
IRM                   34.0 +/- 0.0          44.0 +/- 0.0          X                     X                    

-------- Averages, model selection method: training-domain validation set
Algorithm                  Debug28                    Avg                       
ERM                        64.7 +/- 0.5               64.7                      
IRM                        39.0 +/- 0.0               39.0                      
"""  # noqa: W291, E501 (the public format pads every cell, the last one included)


def _cells(report: str, header: str) -> list[list[str]]:
    """The rows under `header` in the plain-text report, split into cells."""
    lines = report.split("\n")
    start = lines.index(f"-------- {header}") + 2
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append([cell.strip() for cell in line.rstrip().split("  ") if cell.strip()])
    return rows


def test_collect_results_end_to_end(sweep_dir):
    root, _, _ = sweep_dir
    result = subprocess.run(
        [sys.executable, "-m", "domainbed.scripts.collect_results", "--input_dir", str(root)],
        capture_output=True,
        text=True,
        check=True,
    )
    out = result.stdout
    assert out.startswith(f"Total records: {N_RECORDS}\n")
    assert EXPECTED_IID in out
    assert "skipped a truncated last line" in result.stderr
    # Hand-computed: oracle reports base + 0.02, leave-one-out base + 0.00 (IRM: no pairs).
    oracle = "test-domain validation set (oracle)"
    assert _cells(out, f"Dataset: Debug28, model selection method: {oracle}") == [
        ["ERM", "53.0 +/- 0.7", "61.0 +/- 0.7", "74.0 +/- 1.4", "62.7"],
        ["IRM", "32.0 +/- 0.0", "42.0 +/- 0.0", "X", "X"],
    ]
    assert _cells(out, f"Averages, model selection method: {oracle}") == [
        ["ERM", "62.7 +/- 0.5", "62.7"],
        ["IRM", "37.0 +/- 0.0", "37.0"],
    ]
    loo = "leave-one-domain-out cross-validation"
    assert _cells(out, f"Dataset: Debug28, model selection method: {loo}") == [
        ["ERM", "51.0 +/- 0.7", "59.0 +/- 0.7", "72.0 +/- 1.4", "60.7"],
        ["IRM", "X", "X", "X", "X"],
    ]
    assert _cells(out, f"Averages, model selection method: {loo}") == [
        ["ERM", "60.7 +/- 0.5", "60.7"],
        ["IRM", "X", "X"],
    ]
    assert (root / "results.txt").read_text() == out


def test_latex_and_markdown_reports(sweep_dir, capsys):
    root, _, _ = sweep_dir
    assert collect_results.main(["--input_dir", str(root), "--latex"]) == 0
    tex = capsys.readouterr().out
    assert tex.startswith("\\documentclass{article}") and tex.endswith("\\end{document}\n")
    assert tex.count("\\subsection{Model selection:") == 3
    assert "ERM                  & 55.0 $\\pm$ 0.7       & 63.0 $\\pm$ 0.7" in tex
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}}") == 6
    assert (root / "results.tex").read_text() == tex

    assert collect_results.main(["--input_dir", str(root), "--markdown"]) == 0
    md = capsys.readouterr().out
    assert "| Algorithm | 0 | 1 | 2 | Avg |" in md
    assert "| ERM | 51.0 +/- 0.7 | 59.0 +/- 0.7 | 72.0 +/- 1.4 | 60.7 |" in md
    assert (root / "results.md").read_text() == md


def test_collect_results_refuses_missing_dir(tmp_path, capsys):
    assert collect_results.main(["--input_dir", str(tmp_path / "nope")]) == 2
    assert "no directory" in capsys.readouterr().err


def test_list_top_hparams_ranks_and_points_to_runs(sweep_dir, capsys):
    root, _, _ = sweep_dir
    args = [
        "--input_dir",
        str(root),
        "--dataset",
        "Debug28",
        "--algorithm",
        "ERM",
        "--test_env",
        "2",
    ]
    assert list_top_hparams.main(args) == 0
    out = capsys.readouterr().out
    iid = out.split("Model selection: ")[1]
    # Seed 1 wins training-domain validation: its lr (0.002) is listed first, with its runs.
    assert iid.index("lr: 0.002") < iid.index("lr: 0.001")
    assert "trial_seed: 0" in iid and "trial_seed: 1" in iid
    assert str(root) in iid
    assert list_top_hparams.main(args[:-1] + ["7"]) == 1


# --- records that parse but would break model selection -------------------------------------

def _damaged(good: dict, damage) -> dict:
    """A copy of `good` that would win every selection method, then damaged."""
    record = json.loads(json.dumps(good))
    for env in range(3):
        record[f"env{env}_in_acc"] = record[f"env{env}_out_acc"] = 0.99
    damage(record)
    return record


def _drop_accuracies(record):
    for key in [key for key in record if key.endswith("_acc")]:
        del record[key]


# Each kind of bad record: how it is damaged, and the reason its warning gives.
BAD_RECORDS = {
    "no accuracies": (_drop_accuracies, "reports no accuracy"),
    "test env out of range": (lambda r: r["args"].update(test_envs=[5]),
                              "args.test_envs [5] outside the 3 environments"),
    "test env repeated": (lambda r: r["args"].update(test_envs=[0, 0]), "args.test_envs"),
    "test env not an integer": (lambda r: r["args"].update(test_envs=["0"]), "args.test_envs"),
    "list for an accuracy": (lambda r: r.update(env1_out_acc=[0.99]), "numeric env1_out_acc"),
    "list for the step": (lambda r: r.update(step=[1]), "numeric 'step'"),
    "list for a seed": (lambda r: r["args"].update(hparams_seed=[0]), "args.hparams_seed"),
    "one in-split missing": (lambda r: r.pop("env2_in_acc"), "numeric env2_in_acc"),
    "text for an accuracy": (lambda r: r.update(env0_in_acc="0.99"), "numeric env0_in_acc"),
    "hparams not an object": (lambda r: r.update(hparams=[1]), "'hparams' object"),
}


@pytest.fixture()
def hostile_sweep(sweep_dir):
    """The fixture sweep with one bad record of each kind at the top of one job's file; the
    good records, and so every table cell, are unchanged."""
    root, _, odd = sweep_dir

    def first_record(path: Path):
        return json.loads(path.read_text().splitlines()[0])

    target = next(path for path in sorted(root.glob("[!.]*/results.jsonl"))
                  if path != odd and first_record(path)["args"]["test_envs"] == [2])
    good = first_record(target)
    bad = [_damaged(good, BAD_RECORDS[kind][0]) for kind in sorted(BAD_RECORDS)]
    target.write_text("".join(json.dumps(record) + "\n" for record in bad) + target.read_text())
    return root, target


def test_bad_records_are_skipped_by_name_and_the_tables_print(hostile_sweep):
    root, target = hostile_sweep
    result = subprocess.run(
        [sys.executable, "-m", "domainbed.scripts.collect_results", "--input_dir", str(root)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for line, kind in enumerate(sorted(BAD_RECORDS), start=1):
        expected = f"{target}:{line}: skipped a record that "
        warning = next(w for w in result.stderr.splitlines() if expected in w)
        assert BAD_RECORDS[kind][1] in warning, (kind, warning)
    out = result.stdout
    assert out.startswith(f"Total records: {N_RECORDS}\n")
    assert EXPECTED_IID in out
    oracle = "test-domain validation set (oracle)"
    assert _cells(out, f"Averages, model selection method: {oracle}") == [
        ["ERM", "62.7 +/- 0.5", "62.7"],
        ["IRM", "37.0 +/- 0.0", "37.0"],
    ]


def test_list_top_hparams_survives_bad_records(hostile_sweep, capsys):
    root, target = hostile_sweep
    # Good records need no output_dir (selection never reads it): drop it from one job.
    records = [json.loads(line) for line in target.read_text().splitlines()]
    for record in records:
        record["args"].pop("output_dir", None)
    target.write_text("".join(json.dumps(record) + "\n" for record in records))
    args = ["--input_dir", str(root), "--dataset", "Debug28", "--algorithm", "ERM",
            "--test_env", "2"]
    assert list_top_hparams.main(args) == 0
    captured = capsys.readouterr()
    assert captured.err.count(f"{target}:") == len(BAD_RECORDS)
    assert "0.99" not in captured.out
    assert "(not recorded)" in captured.out
    iid = captured.out.split("Model selection: ")[1]
    assert iid.index("lr: 0.002") < iid.index("lr: 0.001")
