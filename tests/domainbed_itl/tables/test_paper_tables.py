"""The paper's tables and Fig. 2 (domainbed_itl.scripts.paper_tables) on sweep directories
written here record by record in train's own format, with accuracies chosen so that every cell,
rank, standard error and missing count below was worked out by hand.

Accuracies are percentages in the comments. Each algorithm's trials add an offset to every
test accuracy: ERM (-1, 0, +1) -> standard error 0.5; CORAL (0, 0, 0) -> 0.0; ERM_ITL
(-2, 0, +2) -> 0.9 (population std / sqrt(3)).
"""

from __future__ import annotations

import configparser
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from domainbed import datasets as registry
from domainbed.lib.results_tables import format_mean
from domainbed.scripts import train
from domainbed.scripts.sweep import Job
from domainbed_itl.scripts import paper_tables
from domainbed_itl.tables import critical_difference, paper
from domainbed_itl.tables.ranks import average_ranks

REPO = Path(__file__).resolve().parents[3]
TRIAL_OFFSET = {"ERM": (-0.01, 0.0, 0.01), "CORAL": (0.0, 0.0, 0.0), "ERM_ITL": (-0.02, 0.0, 0.02)}

# Multi-source: test-domain accuracy of the run training-domain validation selects.
MULTI = {
    "ColoredMNIST": {  # averages: ERM 50.7, CORAL 50.7 (a tie), ERM_ITL 52.0
        "ERM": [0.70, 0.72, 0.10], "CORAL": [0.70, 0.72, 0.10], "ERM_ITL": [0.71, 0.73, 0.12],
    },
    "VLCS": {  # 77.5, 78.5, 79.0
        "ERM": [0.97, 0.64, 0.73, 0.76], "CORAL": [0.98, 0.66, 0.73, 0.77],
        "ERM_ITL": [0.98, 0.65, 0.75, 0.78],
    },
    "PACS": {  # 85.0, 86.0, 86.0 (a tie)
        "ERM": [0.84, 0.80, 0.97, 0.79], "CORAL": [0.88, 0.80, 0.97, 0.79],
        "ERM_ITL": [0.87, 0.83, 0.96, 0.78],
    },
    "OfficeHome": {"ERM": [0.60, 0.50, 0.75, 0.75], "CORAL": [0.65, 0.55, 0.76, 0.78]},  # no ITL
}
# Jobs never run: (dataset, algorithm, trial, test_envs, hparams_seed).
MULTI_ABSENT = {
    ("VLCS", "CORAL", 2, (3,), 0),  # not the selected run: value unchanged, "[1 missing]"
    ("PACS", "ERM_ITL", 1, (2,), 0),  # both seeds: trial 1 has no P value, "[2 missing]"
    ("PACS", "ERM_ITL", 1, (2,), 1),
}


def _train_args(dataset, algorithm, test_envs, hseed, trial):
    """The args dict train.py writes into every record (its own parser, its defaults)."""
    argv = ["--dataset", dataset, "--algorithm", algorithm, "--hparams_seed", str(hseed),
            "--trial_seed", str(trial), "--data_dir", "/data", "--steps", "2",
            "--test_envs", *map(str, test_envs)]
    return vars(train.build_parser().parse_args(argv))


def _write_job(root, dataset, algorithm, test_envs, hseed, trial, accs_at_step):
    """One job directory with one record per step; accs_at_step(step) -> (in, out) lists."""
    sweep_args = _train_args(dataset, algorithm, test_envs, hseed, trial)
    job = Job({key: sweep_args[key] for key in ("dataset", "algorithm", "test_envs",
                                                "hparams_seed", "trial_seed")}, str(root))
    os.makedirs(job.output_dir)
    lines = []
    for step in (0, 1):
        in_accs, out_accs = accs_at_step(step)
        record = {"step": step, "epoch": step / 10, "loss": 0.5, "step_time": 0.1, "mem_gb": 0.0,
                  "hparams": {"lr": 1e-3 * (hseed + 1)},
                  "args": {**sweep_args, "output_dir": job.output_dir}}
        for env, (acc_in, acc_out) in enumerate(zip(in_accs, out_accs, strict=True)):
            record[f"env{env}_in_acc"] = acc_in
            record[f"env{env}_out_acc"] = acc_out
        lines.append(json.dumps(record, sort_keys=True))
    Path(job.output_dir, "results.jsonl").write_text("\n".join(lines) + "\n")
    Path(job.output_dir, "done").write_text("done")
    return Path(job.output_dir)


def _test_acc(base, hseed, step):
    """Training-domain validation picks (1, 0): base; oracle picks (0, 1): base + 2;
    leave-one-out picks (0, 0): base - 5."""
    return round(base + {(1, 0): 0.0, (0, 1): 0.02}.get((hseed, step), -0.05), 6)


def write_multi_source(root: Path) -> None:
    for dataset, algorithms in MULTI.items():
        n_envs = len(next(iter(algorithms.values())))
        env_sets = [(env,) for env in range(n_envs)]
        if n_envs == 3:  # a full sweep: pairs for leave-one-domain-out
            env_sets += [(0, 1), (0, 2), (1, 2)]
        for algorithm, bases in algorithms.items():
            for trial, offset in enumerate(TRIAL_OFFSET[algorithm]):
                for test_envs in env_sets:
                    for hseed in (0, 1):
                        if (dataset, algorithm, trial, test_envs, hseed) in MULTI_ABSENT:
                            continue

                        def accs(step, test_envs=test_envs, hseed=hseed, bases=bases,
                                 offset=offset, n_envs=n_envs):
                            ins, outs = [], []
                            for env in range(n_envs):
                                if len(test_envs) == 2:  # pair run
                                    ins.append(0.8 if (hseed, step) == (0, 0) else 0.4)
                                    outs.append(0.5)
                                elif env in test_envs:
                                    ins.append(_test_acc(bases[env] + offset, hseed, step))
                                    outs.append(0.9 if hseed == 0 else 0.8)
                                else:
                                    ins.append(0.5)
                                    outs.append(0.7 if (hseed, step) == (1, 0) else 0.6)
                            return ins, outs

                        _write_job(root, dataset, algorithm, list(test_envs), hseed, trial, accs)


# Single-source: target accuracy of the selected run = level + 0.04 * source + 0.01 * target
# (PACS) or level + 0.10 * source + 0.01 * target (ColoredMNIST), per (dataset, algorithm).
SINGLE = {"PACS": (0.04, {"ERM": 0.50, "CORAL": 0.50, "ERM_ITL": 0.55}),
          "ColoredMNIST": (0.10, {"ERM": 0.30, "CORAL": 0.29, "ERM_ITL": 0.32})}
SINGLE_ABSENT = {("PACS", "ERM_ITL", 2, 3, 0)}  # (dataset, algorithm, trial, source, hseed)


def write_single_source(root: Path, spec: dict = SINGLE) -> None:
    for dataset, (per_source, levels) in spec.items():
        n_envs = registry.num_environments(dataset)
        for algorithm, level in levels.items():
            for trial, offset in enumerate(TRIAL_OFFSET[algorithm]):
                for source in range(n_envs):
                    targets = [env for env in range(n_envs) if env != source]
                    for hseed in (0, 1):
                        if (dataset, algorithm, trial, source, hseed) in SINGLE_ABSENT:
                            continue

                        def accs(step, source=source, hseed=hseed, level=level, offset=offset,
                                 per_source=per_source, n_envs=n_envs):
                            ins, outs = [], []
                            for env in range(n_envs):
                                if env == source:
                                    ins.append(0.95)
                                    outs.append(0.7 if (hseed, step) == (1, 0) else 0.6)
                                else:
                                    base = level + per_source * source + 0.01 * env + offset
                                    ins.append(_test_acc(base, hseed, step))
                                    outs.append(0.9 if hseed == 0 else 0.8)
                            return ins, outs

                        _write_job(root, dataset, algorithm, targets, hseed, trial, accs)


@pytest.fixture(scope="module")
def multi_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multi")
    write_multi_source(root)
    # A job killed while writing: half a record whose accuracies would win every selection.
    victim = next(p for p in root.iterdir() if '"algorithm": "ERM"' in
                  (p / "results.jsonl").read_text().splitlines()[0]) / "results.jsonl"
    record = json.loads(victim.read_text().splitlines()[0])
    record.update({key: 0.99 for key in record if key.endswith("_acc")})
    text = json.dumps(record)
    victim.write_text(victim.read_text() + text[: len(text) // 2])
    return root


@pytest.fixture(scope="module")
def single_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("single")
    write_single_source(root)
    return root


@pytest.fixture(scope="module")
def office_terra_dir(tmp_path_factory) -> Path:
    """Single-source OfficeHome and TerraIncognita, the two datasets Table 10 prints swapped."""
    root = tmp_path_factory.mktemp("office_terra")
    levels = {"ERM": 0.50, "ERM_ITL": 0.55}
    write_single_source(root, {"OfficeHome": (0.04, levels), "TerraIncognita": (0.04, levels)})
    return root


def report(capsys, *argv) -> str:
    assert paper_tables.main([str(arg) for arg in argv]) == 0
    return capsys.readouterr().out


def rows_under(out: str, title_start: str) -> dict[str, list[str]]:
    """label -> cells of the plain-text table whose title starts with `title_start`."""
    lines = out.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(f"-------- {title_start}"))
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = [cell.strip() for cell in line.strip().split("  ") if cell.strip()]
        rows[cells[0]] = cells[1:]
    return rows


def test_table9_per_domain_cells_missing_counts_and_truncated_line(multi_dir, capsys):
    out = report(capsys, "--input_dir", multi_dir, "--table", 9)
    cmnist = rows_under(out, "Table 9: multi-source accuracy (%) per test domain, ColoredMNIST")
    assert cmnist == {
        "Algorithm": ["+90%", "+80%", "-90%", "Avg"],
        "ERM": ["70.0 +/- 0.5", "72.0 +/- 0.5", "10.0 +/- 0.5", "50.7 +/- 0.5"],
        "CORAL": ["70.0 +/- 0.0", "72.0 +/- 0.0", "10.0 +/- 0.0", "50.7 +/- 0.0"],
        "ERM_ITL": ["71.0 +/- 0.9", "73.0 +/- 0.9", "12.0 +/- 0.9", "52.0 +/- 0.9"],
    }
    vlcs = rows_under(out, "Table 9: multi-source accuracy (%) per test domain, VLCS")
    assert vlcs["CORAL"] == ["98.0 +/- 0.0", "66.0 +/- 0.0", "73.0 +/- 0.0",
                             "77.0 +/- 0.0 [1 missing]", "78.5 +/- 0.0 [1 missing]"]
    pacs = rows_under(out, "Table 9: multi-source accuracy (%) per test domain, PACS")
    # ERM_ITL's P: trials 0 and 2 only, 94 and 98; Avg: trials 0 and 2, 84 and 88.
    assert pacs["ERM_ITL"] == ["87.0 +/- 0.9", "83.0 +/- 0.9", "96.0 +/- 1.4 [2 missing]",
                               "78.0 +/- 0.9", "86.0 +/- 1.4 [2 missing]"]
    office = rows_under(out, "Table 9: multi-source accuracy (%) per test domain, OfficeHome")
    assert office["ERM_ITL"] == ["X [6 missing]"] * 4 + ["X [24 missing]"]
    assert office["CORAL"][-1] == "68.5 +/- 0.0"
    assert "model selection: training-domain validation set" in out


def test_table2_cells_ranks_with_ties_and_the_datasets_they_cover(multi_dir, capsys):
    out = report(capsys, "--input_dir", multi_dir, "--table", 2)
    rows = rows_under(out, "Table 2: multi-source accuracy (%), mean over test domains")
    assert rows == {
        "Dataset": ["ERM", "CORAL", "ERM_ITL"],
        "ColoredMNIST": ["50.7 +/- 0.5", "50.7 +/- 0.0", "52.0 +/- 0.9"],
        "VLCS": ["77.5 +/- 0.5", "78.5 +/- 0.0 [1 missing]", "79.0 +/- 0.9"],
        "PACS": ["85.0 +/- 0.5", "86.0 +/- 0.0", "86.0 +/- 1.4 [2 missing]"],
        "OfficeHome": ["65.0 +/- 0.5", "68.5 +/- 0.0", "X [24 missing]"],
        # ranks: ColoredMNIST 2.5 2.5 1; VLCS 3 2 1; PACS 3 1.5 1.5; OfficeHome left out
        "Avg. Rank": ["2.83", "2.00", "1.17"],
    }
    assert ("averaged over the 3 dataset(s) where every column has a value: ColoredMNIST, "
            "VLCS, PACS.") in out
    assert "The paper's names: ERM_ITL = ITL-Net." in out


def test_oracle_and_leave_one_out_selection(multi_dir, capsys):
    out = report(capsys, "--input_dir", multi_dir, "--table", 9, "--selection", "oracle")
    rows = rows_under(out, "Table 9: multi-source accuracy (%) per test domain, ColoredMNIST")
    assert rows["ERM"] == ["72.0 +/- 0.5", "74.0 +/- 0.5", "12.0 +/- 0.5", "52.7 +/- 0.5"]
    assert "model selection: test-domain validation set (oracle)" in out
    out = report(capsys, "--input_dir", multi_dir, "--table", 9,
                 "--selection", "leave_one_domain_out")
    rows = rows_under(out, "Table 9: multi-source accuracy (%) per test domain, ColoredMNIST")
    assert rows["ERM"] == ["65.0 +/- 0.5", "67.0 +/- 0.5", "5.0 +/- 0.5", "45.7 +/- 0.5"]
    # VLCS ran no pairs: leave-one-out has nothing to validate on, and no pair job is expected.
    vlcs = rows_under(out, "Table 9: multi-source accuracy (%) per test domain, VLCS")
    assert vlcs["ERM"] == ["X"] * 5


def test_versus_gives_paired_differences(multi_dir, capsys):
    out = report(capsys, "--input_dir", multi_dir, "--table", 2, "--versus", "ERM")
    rows = rows_under(out, "Table 2: multi-source accuracy (%), mean over test domains; model "
                           "selection: training-domain validation set; difference from ERM")
    assert rows == {
        "Dataset": ["CORAL", "ERM_ITL"],
        # CORAL - ERM per trial: (+1, 0, -1); ERM_ITL - ERM: 1.33 + (-1, 0, +1)
        "ColoredMNIST": ["0.0 +/- 0.5 (n=3)", "+1.3 +/- 0.5 (n=3)"],
        "VLCS": ["+1.0 +/- 0.5 (n=3)", "+1.5 +/- 0.5 (n=3)"],
        # ERM_ITL has trials 0 and 2 only: (84 - 84, 88 - 86)
        "PACS": ["+1.0 +/- 0.5 (n=3)", "+1.0 +/- 0.7 (n=2)"],
        "OfficeHome": ["+3.5 +/- 0.5 (n=3)", "X"],
    }
    out = report(capsys, "--input_dir", multi_dir, "--table", 9, "--versus", "CORAL")
    rows = rows_under(out, "Table 9: multi-source accuracy (%) per test domain, PACS; model "
                           "selection: training-domain validation set; difference from CORAL")
    assert rows["ERM_ITL"] == ["-1.0 +/- 0.9 (n=3)", "+3.0 +/- 0.9 (n=3)",
                               "-1.0 +/- 1.4 (n=2)", "-1.0 +/- 0.9 (n=3)", "0.0 +/- 1.4 (n=2)"]


def test_markdown_and_latex_carry_the_same_cells(multi_dir, capsys):
    md = report(capsys, "--input_dir", multi_dir, "--table", 2, "--format", "markdown")
    assert "| Dataset | ERM | CORAL | ERM_ITL |" in md
    assert "| VLCS | 77.5 +/- 0.5 | 78.5 +/- 0.0 [1 missing] | 79.0 +/- 0.9 |" in md
    assert "| Avg. Rank | 2.83 | 2.00 | 1.17 |" in md
    assert "#### Table 2: multi-source accuracy (%)" in md
    tex = report(capsys, "--input_dir", multi_dir, "--table", 9, "--format", "latex")
    rows = [[cell.strip() for cell in line.rstrip(" \\").split("&")]
            for line in tex.splitlines() if line.startswith("ERM\\_ITL")]
    assert ["ERM\\_ITL", "71.0 $\\pm$ 0.9", "73.0 $\\pm$ 0.9", "12.0 $\\pm$ 0.9",
            "52.0 $\\pm$ 0.9"] in rows
    assert ["ERM\\_ITL"] + ["X [6 missing]"] * 4 + ["X [24 missing]"] in rows
    assert "\\textbf{+90\\%}" in tex
    assert tex.count("\\begin{tabular}") == 4
    assert "% Table 9: multi-source accuracy (\\%)" not in tex  # titles are comments, verbatim
    assert "% Table 9: multi-source accuracy (%) per test domain, ColoredMNIST" in tex


def text_tables(out: str) -> list[list[list[str]]]:
    """Every plain-text table of a report: its header row and body rows, split into cells."""
    tables, lines = [], out.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("-------- "):
            rows = []
            for row in lines[i + 1:]:
                if not row.strip():
                    break
                rows.append([cell.strip() for cell in row.strip().split("  ") if cell.strip()])
            tables.append(rows)
    return tables


@pytest.mark.parametrize("table", ["1", "2", "3", "4", "9", "10"])
def test_every_table_says_the_same_in_text_markdown_and_latex(multi_dir, single_dir, capsys,
                                                              table):
    root = single_dir if table in ("4", "10") else multi_dir
    argv = ["--input_dir", root, "--table", table, "--versus", "ERM", "--compare_paper"]
    text = report(capsys, *argv)
    markdown = report(capsys, *argv, "--format", "markdown")
    latex = report(capsys, *argv, "--format", "latex")
    latex_rows = [[cell.strip() for cell in line.rstrip(" \\").split(" & ")]
                  for line in latex.splitlines() if " & " in line]
    tables = text_tables(text)
    assert len(tables) == 2 * {"1": 4, "2": 1, "3": 1, "4": 1, "9": 4, "10": 2}[table]
    assert latex.count("\\begin{tabular}") == len(tables)
    assert markdown.count("#### Table ") == len(tables)
    for header, *body in tables:
        assert "| " + " | ".join(header) + " |" in markdown
        for row in body:
            assert "| " + " | ".join(row) + " |" in markdown
            as_latex = [row[0].replace("_", "\\_")] + [
                cell.replace("+/-", "$\\pm$").replace("±", "$\\pm$") for cell in row[1:]]
            assert as_latex in latex_rows


def test_compare_paper_prints_published_figures_beside_cells(multi_dir, capsys):
    out = report(capsys, "--input_dir", multi_dir, "--table", 2, "--compare_paper")
    rows = rows_under(out, "Table 2: multi-source accuracy (%), mean over test domains")
    assert rows["ColoredMNIST"][0] == "50.7 +/- 0.5 (paper 51.5)"
    assert rows["OfficeHome"][2] == "X [24 missing] (paper 69.3)"
    assert rows["Avg. Rank"] == ["2.83 (paper 4.17)", "2.00 (paper 3.00)", "1.17 (paper 1.00)"]
    assert all(note in out for note in paper.notes("2"))
    assert "Fig. 2's caption says ITL-Net" in out
    assert "Fig. 2's caption" not in report(capsys, "--input_dir", multi_dir, "--table", 2)
    out = report(capsys, "--input_dir", multi_dir, "--table", 9, "--compare_paper")
    rows = rows_under(out, "Table 9: multi-source accuracy (%) per test domain, PACS")
    assert rows["ERM"][0] == "84.0 +/- 0.5 (paper 84.7 ± 0.4)"
    assert rows["ERM"][-1] == "85.0 +/- 0.5 (paper 85.5)"


def test_table4_single_source_cells(single_dir, capsys):
    out = report(capsys, "--input_dir", single_dir, "--table", 4)
    rows = rows_under(out, "Table 4: single-source accuracy (%)")
    assert rows == {
        "Algorithm": ["PACS", "ColoredMNIST"],
        # PACS ERM: sources' target means 52.0, 55.7, 59.3, 63.0 -> 57.5
        # ColoredMNIST ERM: 31.5, 41.0, 50.5 -> 41.0
        "ERM": ["57.5 +/- 0.5", "41.0 +/- 0.5"],
        "CORAL": ["57.5 +/- 0.0", "40.0 +/- 0.0"],
        "ERM_ITL": ["62.5 +/- 0.9 [1 missing]", "43.0 +/- 0.9"],
    }
    assert "model selection: training-domain validation set (the source domain's held-out" in out
    out = report(capsys, "--input_dir", single_dir, "--table", 4, "--selection", "oracle")
    rows = rows_under(out, "Table 4: single-source accuracy (%)")
    assert rows["ERM"] == ["59.5 +/- 0.5", "43.0 +/- 0.5"]
    assert "test-domain validation set (oracle: the target domains' held-out splits)" in out


def test_table10_targets_and_their_mean_per_source(single_dir, capsys):
    out = report(capsys, "--input_dir", single_dir, "--table", 10, "--compare_paper")
    rows = rows_under(out, "Table 10: single-source accuracy (%) per source domain, targets "
                           "a/b/c (their mean), PACS")
    assert rows["Algorithm"] == ["A: C/P/S", "C: A/P/S", "P: A/C/S", "S: A/C/P", "Avg"]
    assert rows["ERM"] == [
        "51.0/52.0/53.0 (52.0 +/- 0.5) (paper 65.36/96.23/45.41 69.0)",
        "54.0/56.0/57.0 (55.7 +/- 0.5) (paper 70.17/86.17/66.02 74.12)",
        "58.0/59.0/61.0 (59.3 +/- 0.5) (paper 68.07/20.05/16.62 34.91)",
        "62.0/63.0/64.0 (63.0 +/- 0.5) (paper 24.76/36.05/27.25 29.35)",
        "57.5 +/- 0.5 (paper 51.85)",
    ]
    assert rows["ERM_ITL"][3].startswith("67.0/68.0/69.0 (68.0 +/- 0.9) [1 missing]")
    cmnist = rows_under(out, "Table 10: single-source accuracy (%) per source domain, targets "
                             "a/b/c (their mean), ColoredMNIST")
    assert cmnist["CORAL"] == ["30.0/31.0 (30.5 +/- 0.0)", "39.0/41.0 (40.0 +/- 0.0)",
                               "49.0/50.0 (49.5 +/- 0.0)", "40.0 +/- 0.0"]


def test_table4_compare_paper_prints_the_notes_on_table4(single_dir, capsys):
    out = report(capsys, "--input_dir", single_dir, "--table", 4, "--compare_paper",
                 "--versus", "ERM")
    rows = rows_under(out, "Table 4: single-source accuracy (%)")
    assert rows["ERM"][0] == "57.5 +/- 0.5 (paper 51.85)"
    assert "Table 10's block names for its last two datasets are swapped" in out
    assert all(note in out for note in paper.notes("4"))
    versus = rows_under(out, "Table 4: single-source accuracy (%), mean over source domains of "
                             "the mean over their target domains; model selection: training-"
                             "domain validation set (the source domain's held-out split); "
                             "difference from ERM")
    # ERM_ITL - ERM per trial: 5 + (-1, 0, +1) and 2 + (-1, 0, +1); the job missing in
    # PACS was not a selected one, so every trial still pairs.
    assert versus["ERM_ITL"] == ["+5.0 +/- 0.5 (n=3)", "+2.0 +/- 0.5 (n=3)"]


def test_tables_1_and_3_from_the_loss_sweeps(tmp_path, capsys):
    root = tmp_path / "losses"
    levels = {"ERM": 0.80, "ERM_Focal": 0.81, "ERM_ITL": 0.83, "RSC": 0.79, "RSC_ITL": 0.82}
    for algorithm, level in levels.items():
        for test_env in range(4):
            for hseed in (0, 1):
                def accs(step, test_env=test_env, hseed=hseed, level=level):
                    ins = [0.5] * 4
                    ins[test_env] = _test_acc(level + 0.01 * test_env, hseed, step)
                    outs = [0.7 if (hseed, step) == (1, 0) else 0.6] * 4
                    return ins, outs

                _write_job(root, "PACS", algorithm, [test_env], hseed, 0, accs)
    out = report(capsys, "--input_dir", root, "--table", 1, "--compare_paper")
    rows = rows_under(out, "Table 1: accuracy (%) per test domain")
    assert list(rows) == ["Algorithm", "RSC", "RSC_ITL", "ERM", "ERM_ITL", "ERM_Focal"]
    assert rows["ERM_ITL"] == ["83.0 +/- 0.0 (paper 83.9 ± 0.4)", "84.0 +/- 0.0 (paper 78.9 ± 0.6)",
                               "85.0 +/- 0.0 (paper 94.8 ± 0.2)", "86.0 +/- 0.0 (paper 80.1 ± 0.6)",
                               "84.5 +/- 0.0 (paper 84.4)"]
    assert "ERM = ERM + CE" in out and "RSC = RSC (reimplemented) + CE" in out
    png = tmp_path / "too_few.png"  # one dataset is one block: no Friedman test, no file
    assert paper_tables.main(["--input_dir", str(root), "--table", "3",
                                 "--cd_diagram", str(png)]) == 2
    assert "needs at least 3 algorithms and 2 datasets" in capsys.readouterr().err
    assert not png.exists()
    out = report(capsys, "--input_dir", root, "--table", 3, "--compare_paper")
    rows = rows_under(out, "Table 3: ERM with each loss")
    assert rows == {
        "Algorithm": ["PACS"],
        "ERM": ["81.5 +/- 0.0 (paper 83.9 ± 0.5)"],
        "ERM_Focal": ["82.5 +/- 0.0 (paper 84.6 ± 0.8)"],
        "ERM_ITL": ["84.5 +/- 0.0 (paper 86.4 ± 0.5)"],
        "RSC": ["80.5 +/- 0.0"],
        "RSC_ITL": ["83.5 +/- 0.0"],
    }


def test_friedman_nemenyi_and_the_diagram(multi_dir, tmp_path, capsys):
    png = tmp_path / "fig2.png"
    out = report(capsys, "--input_dir", multi_dir, "--table", 2, "--cd_diagram", png)
    # The complete datasets' printed means (ERM, CORAL, ERM_ITL), from the table above.
    expected = stats.friedmanchisquare([50.7, 77.5, 85.0], [50.7, 78.5, 86.0], [52.0, 79.0, 86.0])
    assert (f"Friedman test over 3 datasets (blocks) and 3 algorithms: chi-square = "
            f"{expected.statistic:.3f}, p = {expected.pvalue:.4g}") in out
    # Demsar (2006), Table 5: q_0.05 = 2.343 for 3 algorithms; CD = q sqrt(3 * 4 / (6 * 3))
    cd = float(out.split("CD = ")[1].split()[0])
    assert cd == pytest.approx(2.343 * np.sqrt(12 / 18), abs=1e-3)
    assert "Average ranks (1 = best): ERM_ITL 1.17, CORAL 2.00, ERM 2.83" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000

    out = report(capsys, "--input_dir", multi_dir, "--table", 2, "--cd_diagram", png,
                 "--cd_blocks", "domain")
    per_domain = {  # ColoredMNIST, VLCS, PACS test domains; OfficeHome lacks ERM_ITL
        "ERM": [70, 72, 10, 97, 64, 73, 76, 84, 80, 97, 79],
        "CORAL": [70, 72, 10, 98, 66, 73, 77, 88, 80, 97, 79],
        "ERM_ITL": [71, 73, 12, 98, 65, 75, 78, 87, 83, 96, 78],
    }
    expected = stats.friedmanchisquare(*per_domain.values())
    assert (f"Friedman test over 11 (dataset, test domain) pairs (blocks) and 3 algorithms: "
            f"chi-square = {expected.statistic:.3f}") in out
    assert "Blocks: ColoredMNIST/+90%, ColoredMNIST/+80%" in out


def test_format_mean_keeps_the_public_digits():
    """Our format_mean now uses reporting.standard_error; the public formula is
    100 * np.std(values / sqrt(n)). Same text on many seeded draws."""
    rng = np.random.default_rng(0)
    for _ in range(3000):
        values = np.round(rng.random(rng.integers(1, 6)), 4)
        public_err = 100 * np.std(list(values) / np.sqrt(len(values)))
        public = f"{100 * np.mean(values):.1f} +/- {public_err:.1f}"
        assert format_mean(list(values), False)[2] == public


@pytest.mark.parametrize("argv, message", [
    (["--table", "7"], "unknown table '7'; choose one of 1, 2, 3, 4, "),
    (["--table", "4"], "table 4 reads single-source sweeps, but the input also holds "
                       "multi-source runs"),
    (["--table", "2", "--versus", "IRM"], "--versus IRM: no records of it"),
])
def test_usage_errors_on_multi_source_input(multi_dir, capsys, argv, message):
    assert paper_tables.main(["--input_dir", str(multi_dir), *argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines()
           if not line.startswith("warning: ")]  # the truncated line's warning
    assert len(err) == 1 and err[0].startswith(f"paper_tables: error: {message}")


def test_usage_errors_on_single_source_input(single_dir, tmp_path, capsys):
    assert paper_tables.main(["--input_dir", str(single_dir), "--table", "2"]) == 2
    assert "table 2 reads multi-source sweeps, but the input also holds single-source runs" in (
        capsys.readouterr().err)
    argv = ["--input_dir", str(single_dir), "--table", "10", "--selection",
            "leave_one_domain_out"]
    assert paper_tables.main(argv) == 2
    assert "does not apply to single-source tables" in capsys.readouterr().err
    # Single-source blocks: PACS and ColoredMNIST, 3 algorithms.
    png = tmp_path / "cd.png"
    argv = ["--input_dir", str(single_dir), "--table", "4", "--cd_diagram", str(png)]
    assert paper_tables.main(argv) == 0 and png.stat().st_size > 1000
    assert "Friedman test over 2 datasets (blocks) and 3 algorithms" in capsys.readouterr().out


def test_three_env_single_source_runs_read_as_pair_runs_in_table2(tmp_path, capsys):
    """The documented ambiguity: on a 3-env dataset a single-source job is a pair run."""
    for source in range(3):
        targets = [env for env in range(3) if env != source]
        _write_job(tmp_path, "ColoredMNIST", "ERM", targets, 0, 0,
                   lambda step: ([0.5] * 3, [0.6] * 3))
    out = report(capsys, "--input_dir", tmp_path, "--table", 10)
    rows = rows_under(out, "Table 10: single-source accuracy (%) per source domain")
    assert rows["ERM"] == ["50.0/50.0 (50.0 +/- 0.0)"] * 3 + ["50.0 +/- 0.0"]
    assert paper_tables.main(["--input_dir", str(tmp_path), "--table", "2"]) == 0
    out, err = capsys.readouterr()
    # DomainBed's selection reports single-test-env runs: none here, three expected.
    assert rows_under(out, "Table 2")["ColoredMNIST"] == ["X [3 missing]"]
    assert "ColoredMNIST has no run with a single test environment" in err


def test_cli_errors_in_a_subprocess(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "domainbed_itl.scripts.paper_tables",
         "--input_dir", str(tmp_path / "empty"), "--table", "2"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 3 and result.stdout == ""  # no records yet
    assert result.stderr.strip().splitlines() == [
        f"paper_tables: error: no records in {tmp_path / 'empty'}: run the sweep first, "
        "or give the directory that holds its job directories"
    ]


def test_several_directories_and_the_truncated_line(multi_dir, single_dir, capsys):
    argv = ["--input_dir", str(multi_dir), "--input_dir", str(single_dir), "--table", "2"]
    assert paper_tables.main(argv) == 2  # the single-source directory is not Table 2's
    assert "holds single-source runs" in capsys.readouterr().err
    argv = ["--input_dir", str(multi_dir), "--input_dir", str(multi_dir), "--table", "2"]
    assert paper_tables.main(argv) == 0
    out, err = capsys.readouterr()
    assert err.count("skipped a truncated last line") == 2
    # the same sweep twice: every record twice, the same selected runs, the same cells
    rows = rows_under(out, "Table 2: multi-source accuracy (%), mean over test domains")
    assert rows["VLCS"] == ["77.5 +/- 0.5", "78.5 +/- 0.0 [1 missing]", "79.0 +/- 0.9"]


# The published figures.

def test_published_table2_shape_and_itl_row():
    table2 = paper.published()["tables"]["2"]
    datasets = ["ColoredMNIST", "VLCS", "PACS", "TerraIncognita", "OfficeHome", "DomainNet"]
    algorithms = ["ERM", "SagNet", "CORAL", "CDANN", "RSC", "ERM_ITL"]
    assert list(table2) == datasets + ["Avg. Rank"]
    assert all(list(table2[d]) == algorithms for d in table2)
    assert [table2[d]["ERM_ITL"]["Avg"] for d in datasets] == [
        "52.0", "78.9", "86.4", "51.0", "69.3", "41.6"]
    assert paper.figure("2", "PACS", "RSC", "Avg") == "85.2"
    assert paper.figure("9", "PACS", "RSC", "Avg") == "84.9"
    assert paper.figure("9", "TerraIncognita", "ERM_ITL", "L100") == "58.4 ± 3.7"


def test_published_rank_row_is_ordinal_ranks_of_the_printed_figures():
    """The paper breaks ties by column order; ours average them (see the data file's note)."""
    table2 = paper.published()["tables"]["2"]
    values = pd.DataFrame({a: [float(table2[d][a]["Avg"]) for d in table2 if d != "Avg. Rank"]
                           for a in table2["PACS"]})
    ordinal = np.mean([stats.rankdata(-row, method="ordinal") for row in values.to_numpy()], 0)
    assert [f"{rank:.2f}" for rank in ordinal] == [
        table2["Avg. Rank"][a]["Avg"] for a in values.columns]
    assert [round(r, 2) for r in average_ranks(values)] == [4.33, 2.83, 2.92, 5.08, 4.83, 1.0]


def _number(printed: str) -> float:
    """The figure of a printed cell ('64.3 ± 0.9', '77.5')."""
    return float(printed.split(" ")[0])


def _per_target_means(cells: dict[str, str], envs: list[str]) -> list[float]:
    """Each target domain's accuracy averaged over the three sources that reach it, from a Table
    10 row ('a/b/c mean' per source, targets in environment order without the source)."""
    reached: dict[str, list[float]] = {env: [] for env in envs}
    for source in envs:
        targets = [env for env in envs if env != source]
        values = cells[source].split(" ")[0].split("/")
        for target, value in zip(targets, values, strict=True):
            reached[target].append(float(value))
    return [float(np.mean(reached[env])) for env in envs]


@pytest.mark.parametrize("dataset, other, floor", [
    ("OfficeHome", "TerraIncognita", 0.9), ("TerraIncognita", "OfficeHome", 0.5)])
def test_published_table10_blocks_hold_their_datasets_data(dataset, other, floor):
    """Which target domains are easy is a property of the data: the Table 10 block stored under
    a dataset must rank its targets as Table 9 ranks that dataset's test domains."""
    tables = paper.published()["tables"]
    envs = registry.get_dataset_class(dataset).ENVIRONMENTS
    other_envs = registry.get_dataset_class(other).ENVIRONMENTS
    for algorithm in ("ERM", "ERM_ITL"):
        means = _per_target_means(tables["10"][dataset][algorithm], envs)
        own = [_number(tables["9"][dataset][algorithm][env]) for env in envs]
        theirs = [_number(tables["9"][other][algorithm][env]) for env in other_envs]
        r_own, r_other = np.corrcoef(means, own)[0, 1], np.corrcoef(means, theirs)[0, 1]
        assert r_own > floor and r_own > r_other + 0.5, (algorithm, r_own, r_other)


def test_published_table4_is_the_mean_of_table10s_source_averages():
    """Within the 0.01 that two-decimal printing allows; the one exception is in the notes."""
    tables = paper.published()["tables"]
    off = {}
    for dataset, rows in tables["10"].items():
        for algorithm, cells in rows.items():
            envs = registry.get_dataset_class(dataset).ENVIRONMENTS
            mean = np.mean([float(cells[env].split(" ")[1]) for env in envs])
            if abs(mean - float(tables["4"][dataset][algorithm]["Avg"])) > 0.01 + 1e-9:
                off[(dataset, algorithm)] = round(float(mean), 2)
    assert off == {("VLCS", "SagNet"): 61.87}
    assert "VLCS SagNet 61.78 vs 61.87" in " ".join(paper.notes("4"))


def test_published_single_source_figures_drop_below_multi_source_as_sec_4_2_says():
    tables = paper.published()["tables"]
    pairs = [(float(cells["Avg"]), float(tables["2"][dataset][algorithm]["Avg"]))
             for dataset, rows in tables["4"].items()
             for algorithm, cells in rows.items() if algorithm in tables["2"][dataset]]
    assert len(pairs) == 16  # 4 datasets x ERM, CORAL, SagNet, ITL-Net (Mixup is not in Table 2)
    assert all(single < multi for single, multi in pairs)


def test_compare_paper_puts_officehomes_published_figures_beside_officehome(office_terra_dir,
                                                                            capsys):
    out = report(capsys, "--input_dir", office_terra_dir, "--table", 4, "--compare_paper")
    rows = rows_under(out, "Table 4: single-source accuracy (%)")
    columns = {algorithm: dict(zip(rows["Algorithm"], cells, strict=True))
               for algorithm, cells in rows.items() if algorithm != "Algorithm"}
    # Sources' target means, as in test_table4_single_source_cells: ERM 57.5, ERM_ITL 62.5.
    assert columns == {
        "ERM": {"OfficeHome": "57.5 +/- 0.5 (paper 53.57)",
                "TerraIncognita": "57.5 +/- 0.5 (paper 32.13)"},
        "ERM_ITL": {"OfficeHome": "62.5 +/- 0.9 (paper 55.04)",
                    "TerraIncognita": "62.5 +/- 0.9 (paper 35.09)"},
    }
    assert rows["Algorithm"] == ["OfficeHome", "TerraIncognita"]  # the paper's order
    out = report(capsys, "--input_dir", office_terra_dir, "--table", 10, "--compare_paper")
    title = "Table 10: single-source accuracy (%) per source domain, targets a/b/c (their mean), "
    office, terra = rows_under(out, title + "OfficeHome"), rows_under(out, title + "TerraIncognita")
    assert office["Algorithm"][0] == "A: C/P/R"
    assert office["ERM"][0] == "51.0/52.0/53.0 (52.0 +/- 0.5) (paper 43.82/60.93/69.15 57.97)"
    assert office["ERM_ITL"][-1] == "62.5 +/- 0.9 (paper 55.04)"
    assert terra["Algorithm"][0] == "L100: L38/L43/L46"
    assert terra["ERM"][0] == "51.0/52.0/53.0 (52.0 +/- 0.5) (paper 44.75/23.36/21.09 29.73)"
    assert terra["ERM_ITL"][-1] == "62.5 +/- 0.9 (paper 35.09)"
    assert all(note in out for note in paper.notes("10"))


def _significantly_behind_itl(result: critical_difference.FriedmanNemenyi,
                              ranks: pd.Series) -> set[str]:
    return {algorithm for algorithm, rank in ranks.items()
            if rank - ranks["ERM_ITL"] > result.critical_difference}


def test_published_friedman_note_is_recomputed_from_tables_2_and_9():
    """Fig. 2's caption: ITL-Net 'significantly outperforms all competitors besides SagNet'."""
    tables = paper.published()["tables"]
    algorithms = list(tables["2"]["PACS"])
    table2 = pd.DataFrame({algorithm: [_number(tables["2"][d][algorithm]["Avg"])
                                       for d in tables["2"] if d != "Avg. Rank"]
                           for algorithm in algorithms})
    table9 = pd.DataFrame({algorithm: [_number(figure) for d in tables["9"]
                                       for env, figure in tables["9"][d][algorithm].items()
                                       if env != "Avg"]
                           for algorithm in algorithms})
    note = next(note for note in paper.notes("2") if "Friedman" in note)
    assert note in paper.notes("9")
    for values, blocks in ((table2, 6), (table9, 25)):
        result = critical_difference.friedman_nemenyi(values, "blocks")
        assert result.values.shape == (blocks, 6)
        assert f"chi-square = {result.statistic:.2f}, p = {result.pvalue:.1e}" in note
        assert f"CD = {result.critical_difference:.2f}" in note
        named = result.ranks.rename({"ERM_ITL": "ITL-Net"}).sort_values()
        assert ", ".join(f"{name} {rank:.2f}" for name, rank in named.items()) in note
        assert _significantly_behind_itl(result, result.ranks) == {"ERM", "CDANN", "RSC"}
        nemenyi = result.nemenyi["ERM_ITL"]
        assert set(nemenyi[nemenyi < result.alpha].index) == {"ERM", "CDANN", "RSC"}
    printed = pd.Series({a: float(tables["2"]["Avg. Rank"][a]["Avg"]) for a in algorithms})
    result = critical_difference.friedman_nemenyi(table2, "blocks")
    assert _significantly_behind_itl(result, printed) == {"ERM", "CDANN", "RSC"}


def test_published_averages_that_do_not_match_their_domains_are_noted():
    """The mean of the printed domain figures may differ from the printed average by 0.1 at most
    (0.05 from the domains' rounding, 0.05 from the average's); these differ by more."""
    tables = paper.published()["tables"]
    off = {}
    for table in ("1", "9"):
        for dataset, rows in tables[table].items():
            for algorithm, cells in rows.items():
                mean = np.mean([_number(v) for env, v in cells.items() if env != "Avg"])
                if abs(mean - float(cells["Avg"])) > 0.1 + 1e-9:
                    off[(table, dataset, algorithm)] = (float(mean), cells["Avg"])
    noted = {("1", "PACS", "RSC"): "82.15", ("9", "ColoredMNIST", "RSC"): "51.67",
             ("9", "PACS", "RSC"): "84.78", ("9", "VLCS", "ERM"): "78.2",
             ("9", "OfficeHome", "CDANN"): "65.6"}
    assert set(off) == set(noted)
    for (table, dataset, algorithm), (mean, printed) in off.items():
        text = noted[(table, dataset, algorithm)]
        assert abs(mean - float(text)) <= 0.5 * 10.0 ** -len(text.split(".")[1]) + 1e-9
        expected = (f"average {text}, not the printed {printed}" if table == "1"
                    else f"{dataset} {algorithm} {text} (printed {printed}")
        assert expected in " ".join(paper.notes(table))


def test_published_tables_5_and_6():
    tables = paper.published()["tables"]
    assert paper.figure("5", "OfficeHome", "ITL-Net (RotatedMNIST)", "A") == "64.22 ± 0.84"
    assert paper.figure("5", "OfficeHome", "ITL-Net (RotatedKMNIST)", "Avg") == "68.74 ± 0.35"
    assert paper.figure("6", "ColoredMNIST", "Task-specific ITL-Net", "-90%") == "10.4 ± 0.7"
    for table, dataset, digits in (("5", "OfficeHome", 2), ("6", "ColoredMNIST", 1)):
        envs = registry.get_dataset_class(dataset).ENVIRONMENTS
        for cells in tables[table][dataset].values():
            assert list(cells) == [*envs, "Avg"]
            mean = np.mean([_number(cells[env]) for env in envs])
            assert abs(mean - _number(cells["Avg"])) <= 10.0 ** -digits + 1e-9
    assert tables["6"]["ColoredMNIST"]["ERM_ITL"] == tables["9"]["ColoredMNIST"]["ERM_ITL"]
    assert paper.row_label("6", "ERM_ITL") == "ITL-NET"
    assert any("standard deviation over meta-train seeds" in note for note in paper.notes("5"))


def test_published_source_names_all_four_authors():
    assert paper.published()["source"].startswith(
        "Boyan Gao, Henry Gouk, Yongxin Yang, Timothy Hospedales. Loss Function Learning")
    for path in [*(REPO / "domainbed_itl").rglob("*.py"), *(REPO / "domainbed").rglob("*.py"),
                 REPO / "domainbed_itl" / "tables" / "published.json"]:
        assert "Gouk, Hospedales" not in path.read_text("utf-8"), path


def test_published_table10_cells_are_consistent_transcriptions():
    for dataset, rows in paper.published()["tables"]["10"].items():
        envs = registry.get_dataset_class(dataset).ENVIRONMENTS
        for cells in rows.values():
            assert list(cells) == [*envs, "Avg"]
            means = []
            for source in envs:
                targets, mean = cells[source].split(" ")
                values = [float(v) for v in targets.split("/")]
                assert len(values) == 3 and abs(np.mean(values) - float(mean)) < 0.006
                means.append(float(mean))
            assert abs(np.mean(means) - float(cells["Avg"])) < 0.006


def test_published_data_ships_with_the_package():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    patterns = [p.strip() for p in config["options.package_data"]["domainbed_itl"].split(",")]
    # setuptools globs each pattern in the package's directory
    shipped = {path for pattern in patterns
               for path in glob.glob(pattern, root_dir=REPO / "domainbed_itl")}
    assert "tables/published.json" in shipped
    assert "scikit-posthocs" in config["options"]["install_requires"]
