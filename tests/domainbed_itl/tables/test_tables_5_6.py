"""Tables 5 and 6 from deployment records: cells worked out by hand on written records, the
refusals, one real pipeline on ColoredMNIST (meta-training, deployment, tables), and the launch
files' commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from domainbed_itl.meta import data as meta_data
from domainbed_itl.scripts import deploy, meta_train_many, paper_tables

REPO = Path(__file__).resolve().parents[3]
R0, C2 = ("RotatedMNIST", 0), ("ColoredMNIST", 2)


def meta(dataset: str, seed: int, exclude: list[int]) -> dict:
    return {"dataset": dataset, "seed": seed, "exclude_envs": exclude, "family": "taylor",
            "order": 4, "outer_steps": 200, "run_dir": f"meta/{dataset}_x{exclude}_seed{seed}"}


def record(loss: str, column: tuple[str, int], trial: int, acc: float, learned: dict | None = None,
           protocol: str = "mlp", steps: int = 100) -> dict:
    dataset, env = column
    return {"protocol": protocol, "dataset": dataset, "test_env": env, "trial_seed": trial,
            "loss": loss, "algorithm": "ERM" if loss == "CE" else "ERM_ITL", "hparams": {},
            "meta": learned, "steps": steps, "settings": {"lr": 0.01}, "test_acc": acc,
            "source_acc": 0.9, "seconds": 1.0}


def write(directory: Path, records: list[dict], tail: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def table5_records() -> list[dict]:
    """Two trial seeds; learned: three meta seeds of the loss meta-learned on RotatedMNIST
    without env 0, accuracy 0.50 + 0.02 seed + 0.10 trial on RotatedMNIST env 0 and
    0.10 + 0.01 seed + 0.10 trial on ColoredMNIST env 2."""
    records = []
    for trial in (0, 1):
        records += [record("CE", R0, trial, [0.50, 0.58][trial]),
                    record("CE", C2, trial, [0.10, 0.20][trial]),
                    record("ITL (Table 8)", R0, trial, [0.52, 0.62][trial]),
                    record("ITL (Table 8)", C2, trial, [0.14, 0.22][trial])]
        for seed in (0, 1, 2):
            learned = meta("RotatedMNIST", seed, [0])
            records += [record(f"seed{seed}", R0, trial, 0.50 + 0.02 * seed + 0.10 * trial,
                               learned),
                        record(f"seed{seed}", C2, trial, 0.10 + 0.01 * seed + 0.10 * trial,
                               learned)]
    return records


def report(capsys, *argv) -> str:
    assert paper_tables.main([str(arg) for arg in argv]) == 0
    return capsys.readouterr().out


def rows_under(out: str, title_start: str, skip: int = 0) -> dict[str, list[str]]:
    """label -> cells of the (skip+1)-th plain-text table whose title starts so."""
    lines = out.split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith(f"-------- {title_start}")]
    rows = {}
    for line in lines[starts[skip] + 1:]:
        if not line.strip():
            break
        cells = [cell.strip() for cell in line.strip().split("  ") if cell.strip()]
        rows[cells[0]] = cells[1:]
    return rows


def test_table5_learned_rows_over_meta_seeds_and_paired_differences(tmp_path, capsys):
    write(tmp_path / "deploy", table5_records())
    out = report(capsys, "--input_dir", tmp_path, "--table", 5)
    assert "protocol mlp, 100 training steps per run" in out
    assert rows_under(out, "Table 5") == {
        "Loss": ["ColoredMNIST -90%", "RotatedMNIST 0", "Avg"],
        # over trial seeds: mean +/- population std / sqrt(2)
        "CE": ["15.0 +/- 3.5", "54.0 +/- 2.8", "34.5 +/- 3.2"],
        "ITL (Table 8)": ["18.0 +/- 2.8", "57.0 +/- 3.5", "37.5 +/- 3.2"],
        # seed means 0.15/0.16/0.17, 0.55/0.57/0.59, Avg 0.35/0.365/0.38: mean +/- std
        "ITL-Net (RotatedMNIST)": ["16.0 +/- 0.8", "57.0 +/- 1.6", "36.5 +/- 1.2"],
    }
    # Learned side per trial averaged over seeds (0.11/0.21, 0.52/0.62), paired with CE.
    assert rows_under(out, "Table 5", skip=1) == {
        "Difference": ["ColoredMNIST -90%", "RotatedMNIST 0", "Avg"],
        "ITL-Net (RotatedMNIST) - CE": ["+1.0 +/- 0.0 (n=2)", "+3.0 +/- 0.7 (n=2)",
                                        "+2.0 +/- 0.4 (n=2)"],
        "ITL-Net (RotatedMNIST) - ITL (Table 8)": ["-2.0 +/- 0.7 (n=2)", "0.0 +/- 0.0 (n=2)",
                                                   "-1.0 +/- 0.4 (n=2)"],
        "ITL (Table 8) - CE": ["+3.0 +/- 0.7 (n=2)", "+3.0 +/- 0.7 (n=2)",
                               "+3.0 +/- 0.0 (n=2)"],
    }
    assert "standard deviation over meta-training seeds (population, ddof 0)" in out
    assert ("ITL-Net (RotatedMNIST): the taylor loss of order 4 meta-learned on RotatedMNIST "
            "(without env 0) for 200 outer steps, meta-training seeds 0 1 2.") in out
    assert "(seen)" not in out


def test_missing_runs_are_counted_and_seen_environments_marked(tmp_path, capsys):
    records = [r for r in table5_records()
               if not (r["loss"] == "seed2" and r["trial_seed"] == 1 and r["dataset"] ==
                       "RotatedMNIST")]
    # Deployed on an environment it was meta-trained on.
    records.append(record("seed0", ("RotatedMNIST", 1), 0, 0.9, meta("RotatedMNIST", 0, [0])))
    write(tmp_path, records)
    out = report(capsys, "--input_dir", tmp_path, "--table", 5)
    rows = rows_under(out, "Table 5")
    assert rows["Loss"] == ["ColoredMNIST -90%", "RotatedMNIST 0", "RotatedMNIST 15", "Avg"]
    # RotatedMNIST 0, seed 2 has trial 0 only (0.54): seeds 0.55/0.57/0.54. RotatedMNIST 15:
    # one run of 3 seeds x 2 trials. Avg: seed 0 alone has every column, (0.15+0.55+0.9)/3.
    assert rows["ITL-Net (RotatedMNIST)"] == [
        "16.0 +/- 0.8", "55.3 +/- 1.2 [1 missing]", "90.0 +/- 0.0 [5 missing] (seen)",
        "53.3 +/- 0.0 [6 missing] (seen)"]
    assert rows["CE"][2] == "X [2 missing]"
    # Trial 1's learned side on RotatedMNIST 0 is the mean of seeds 0 and 1 (0.61): pairs
    # 0.02 and 0.03, standard error 0.005 / sqrt(2).
    differences = rows_under(out, "Table 5", skip=1)
    assert differences["ITL-Net (RotatedMNIST) - CE"][1] == "+2.5 +/- 0.4 (n=2)"
    assert differences["ITL-Net (RotatedMNIST) - CE"][2] == "X"
    assert "(seen): a learned loss in this cell was meta-trained on data of its test" in out


def test_protocols_and_step_counts_get_tables_of_their_own(tmp_path, capsys):
    write(tmp_path / "mlp", table5_records())
    write(tmp_path / "domainbed", [record("CE", R0, 0, 0.90, protocol="domainbed", steps=1000),
                                   record("CE", R0, 0, 0.80, steps=2000)])
    out = report(capsys, "--input_dir", tmp_path, "--table", 5)
    titles = [line for line in out.splitlines() if line.startswith("-------- Table 5")]
    assert [title.split("; ")[-1] for title in titles if "paired" not in title] == [
        "protocol domainbed, 1000 training steps per run",
        "protocol mlp, 100 training steps per run",
        "protocol mlp, 2000 training steps per run",
    ]
    assert rows_under(out, "Table 5")["CE"] == ["90.0 +/- 0.0", "90.0 +/- 0.0"]
    assert rows_under(out, "Table 5", skip=1)["CE"] == ["15.0 +/- 3.5", "54.0 +/- 2.8",
                                                        "34.5 +/- 3.2"]
    assert rows_under(out, "Table 5", skip=3)["CE"] == ["80.0 +/- 0.0", "80.0 +/- 0.0"]


def test_damaged_lines_skipped_duplicates_counted_once_conflicts_refused(tmp_path, capsys):
    first = write(tmp_path / "a", table5_records(), tail='{"protocol": "mlp", "datas')
    expected = rows_under(report(capsys, "--input_dir", tmp_path, "--table", 5), "Table 5")
    lines = first.read_text().splitlines()
    lines.insert(0, '["not", "a", "record"]')
    first.write_text("\n".join(lines))
    # The same directory twice: every run counted once.
    assert paper_tables.main(["--input_dir", str(tmp_path), "--input_dir",
                                 str(tmp_path / "a"), "--table", "5"]) == 0
    out, err = capsys.readouterr()
    assert rows_under(out, "Table 5") == expected
    assert f"{first}:1: skipped a record that is not a JSON object" in err
    assert f"{first}:{len(lines)}: skipped a truncated last line" in err
    # Another result for a run already recorded: which one would a cell show?
    write(tmp_path / "b", [record("seed1", C2, 0, 0.5, meta("RotatedMNIST", 1, [0]))])
    assert paper_tables.main(["--input_dir", str(tmp_path), "--table", "5"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines()
              if not line.startswith("warning: ")]  # the damaged lines' warnings
    assert len(errors) == 1 and errors[0].startswith(
        "paper_tables: error: two different results for one run (meta seed 1's loss from "
        "meta/RotatedMNIST_x[0]_seed1, ColoredMNIST env 2, trial 0, protocol mlp")


def table6_records() -> list[dict]:
    """ColoredMNIST, two trial seeds: CE base + 0.02 trial, ITL 0.01 above, the generic loss
    (RotatedMNIST, seeds 0 and 1) base + 0.01 seed + 0.02 trial, the task-specific one
    (ColoredMNIST without the test env, seeds 0 and 1) 0.02 above the generic."""
    base = [0.70, 0.72, 0.10]
    records = [record("CE", R0, 0, 0.5)]  # not ColoredMNIST: left out of Table 6
    for env, level in enumerate(base):
        column = ("ColoredMNIST", env)
        for trial in (0, 1):
            acc = level + 0.02 * trial
            records += [record("CE", column, trial, acc),
                        record("ITL (Table 8)", column, trial, acc + 0.01)]
            for seed in (0, 1):
                records += [
                    record(f"generic{seed}", column, trial, acc + 0.01 * seed,
                           meta("RotatedMNIST", seed, [0])),
                    record(f"task{seed}", column, trial, acc + 0.02 + 0.01 * seed,
                           meta("ColoredMNIST", seed, [env])),
                ]
    return records


def test_table6_task_specific_against_generic_with_the_papers_figures(tmp_path, capsys):
    write(tmp_path, table6_records())
    out = report(capsys, "--input_dir", tmp_path, "--table", 6, "--compare_paper")
    assert rows_under(out, "Table 6") == {
        "Loss": ["+90%", "+80%", "-90%", "Avg"],
        "CE": ["71.0 +/- 0.7", "73.0 +/- 0.7", "11.0 +/- 0.7", "51.7 +/- 0.7"],
        "ITL (Table 8)": ["72.0 +/- 0.7 (paper 71.3 ± 0.6)", "74.0 +/- 0.7 (paper 73.4 ± 0.1)",
                          "12.0 +/- 0.7 (paper 11.3 ± 0.7)", "52.7 +/- 0.7 (paper 52.0)"],
        "ITL-Net (RotatedMNIST)": ["71.5 +/- 0.7 (paper 71.3 ± 0.6)",
                                   "73.5 +/- 0.7 (paper 73.4 ± 0.1)",
                                   "11.5 +/- 0.7 (paper 11.3 ± 0.7)",
                                   "52.2 +/- 0.7 (paper 52.0)"],
        "Task-specific ITL-Net (ColoredMNIST)": ["73.5 +/- 0.7 (paper 72.2 ± 0.7)",
                                                 "75.5 +/- 0.7 (paper 73.9 ± 0.5)",
                                                 "13.5 +/- 0.7 (paper 10.4 ± 0.7)",
                                                 "54.2 +/- 0.7 (paper 52.2)"],
    }
    differences = rows_under(out, "Table 6", skip=1)
    assert differences["Task-specific ITL-Net (ColoredMNIST) - ITL-Net (RotatedMNIST)"] == [
        "+2.0 +/- 0.0 (n=2)"] * 4
    assert differences["ITL-Net (RotatedMNIST) - CE"] == ["+0.5 +/- 0.0 (n=2)"] * 4
    assert differences["Task-specific ITL-Net (ColoredMNIST) - CE"] == [
        "+2.5 +/- 0.0 (n=2)"] * 4
    assert differences["ITL (Table 8) - CE"] == ["+1.0 +/- 0.0 (n=2)"] * 4
    assert "1 runs on other datasets than ColoredMNIST are not part of Table 6" in out
    assert "(seen)" not in out


def test_formats_carry_the_same_cells(tmp_path, capsys):
    write(tmp_path, table6_records())
    markdown = report(capsys, "--input_dir", tmp_path, "--table", 6, "--format", "markdown")
    assert "| Task-specific ITL-Net (ColoredMNIST) | 73.5 +/- 0.7 | 75.5 +/- 0.7 |" in markdown
    latex = report(capsys, "--input_dir", tmp_path, "--table", 5, "--format", "latex",
                   "--compare_paper")
    assert "71.5 $\\pm$ 0.5" in latex  # the generic loss on +90%: seed means 0.71 and 0.72
    body = [line for line in latex.splitlines() if not line.startswith("%")]
    assert "64.22 $\\pm$ 0.84" in latex and not any("±" in line for line in body)


def test_table5_compare_paper_prints_the_published_table_below(tmp_path, capsys):
    write(tmp_path, table5_records())
    out = report(capsys, "--input_dir", tmp_path, "--table", 5, "--compare_paper")
    assert rows_under(out, "The paper's Table 5") == {
        "Loss": ["A", "C", "P", "R", "Avg"],
        "ITL-Net (RotatedMNIST)": ["64.22 ± 0.84", "56.25 ± 0.38", "77.52 ± 0.32",
                                   "78.12 ± 0.32", "69.03 ± 0.18"],
        "ITL-Net (RotatedKMNIST)": ["64.28 ± 0.30", "55.84 ± 0.29", "76.89 ± 1.04",
                                    "77.96 ± 0.30", "68.74 ± 0.35"],
    }
    assert out.index("-------- Table 5") < out.index("-------- The paper's Table 5")


@pytest.mark.parametrize("argv, message", [
    (["--table", "6"], "table 6 reads runs deployed on ColoredMNIST; these records are on "
                       "RotatedMNIST"),
    (["--table", "5", "--versus", "CE"], "table 5 reads deployment records, to which --versus "
                                         "does not apply"),
    (["--table", "5", "--selection", "oracle", "--cd_diagram", "x.png"],
     "table 5 reads deployment records, to which --selection, --cd_diagram does not apply"),
    (["--table", "7"], "unknown table '7'; choose one of 1, 2, 3, 4, 5, 6, 9, 10"),
])
def test_usage_errors_are_one_line(tmp_path, capsys, argv, message):
    write(tmp_path, [record("CE", R0, 0, 0.5)])
    assert paper_tables.main(["--input_dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"paper_tables: error: {message}")


def test_no_records_exit_2_in_a_subprocess(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "domainbed_itl.scripts.paper_tables",
                           "--input_dir", str(tmp_path / "empty"), "--table", "5"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("paper_tables: error: no deployment records "
                                  "(records.jsonl) under")


# --- The real pipeline, on ColoredMNIST (the MNIST dataset that loads in seconds) -------------

TINY_META = ["--hidden", "16", "--inner_steps", "5", "--outer_steps", "1", "--hessian_batch",
             "64", "--val_batch", "64", "--eval_examples", "64", "--threads", "1"]


@pytest.fixture
def cached_cmnist(monkeypatch, mnist_dir):
    domains = meta_data.load_domains("ColoredMNIST", str(mnist_dir), 0)
    monkeypatch.setattr(meta_data, "load_domains", lambda *args: domains)


def test_meta_training_deployment_and_tables_on_real_coloredmnist(tmp_path, mnist_dir,
                                                                  cached_cmnist, capsys,
                                                                  one_thread):
    runs = tmp_path / "meta"
    assert meta_train_many.main(["--data_dir", str(mnist_dir), "--output_dir", str(runs),
                            "--datasets", "ColoredMNIST", "--exclude_envs", "2",
                            "--seeds", "0", "1", *TINY_META]) == 0
    learned = [f"task{s}={runs}/ColoredMNIST_order4_seed{s}/learned_loss.json" for s in (0, 1)]
    specs = [arg for spec in [*learned, "generic=preset:rmnist-ift"]
             for arg in ("--learned", spec)]
    out = tmp_path / "deploy"
    assert deploy.main(["--data_dir", str(mnist_dir), "--output_dir", str(out), "--dataset",
                        "ColoredMNIST", "--test_envs", "2", "--trial_seeds", "0", "1",
                        "--steps", "20", "--hidden", "16", *specs]) == 0
    capsys.readouterr()
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 5 * 2

    def accs(prefix: str, trial: int) -> list[float]:
        return [r["test_acc"] for r in records
                if r["loss"].startswith(prefix) and r["trial_seed"] == trial]

    def mean_se(values: list[float]) -> str:
        mean = sum(values) / len(values)
        spread = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
        return f"{100 * mean:.1f} +/- {100 * spread / len(values) ** 0.5:.1f}"

    task_by_trial = [sum(accs("task", t)) / 2 for t in (0, 1)]
    table6 = rows_under(report(capsys, "--input_dir", out, "--table", 6), "Table 6")
    assert table6["Task-specific ITL-Net (ColoredMNIST)"] == [mean_se(task_by_trial)] * 2
    assert table6["ITL-Net (RotatedMNIST)"] == [mean_se(accs("generic", 0) + accs("generic",
                                                                                  1))] * 2
    assert table6["CE"] == [mean_se(accs("CE", 0) + accs("CE", 1))] * 2
    table5 = rows_under(report(capsys, "--input_dir", out, "--table", 5), "Table 5")
    seed_means = [sum(r["test_acc"] for r in records if r["loss"] == f"task{s}") / 2
                  for s in (0, 1)]
    mean = sum(seed_means) / 2
    std = abs(seed_means[0] - seed_means[1]) / 2
    assert table5["ITL-Net (ColoredMNIST)"] == [f"{100 * mean:.1f} +/- {100 * std:.1f}"] * 2


# --- Launch files ---------------------------------------------------------------------------


def dummy_launch(script: str, tmp_path: Path, *args: str, **env: str) -> list[str]:
    settings = {**os.environ, "LAUNCHER": "dummy", "PY": "python", "OUT_ROOT":
                str(tmp_path / "out"), "DATA_DIR": "data", **env}
    proc = subprocess.run(["bash", str(REPO / "sweeps" / script), *args], env=settings,
                          capture_output=True, text=True, cwd=tmp_path, check=True)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []
    return proc.stdout.splitlines()


def test_table5_launch_file_prints_its_commands_and_runs_nothing(tmp_path):
    lines = dummy_launch("table5_meta_seeds.sh", tmp_path, META_SEEDS="3 4", META_STEPS="7")
    out = tmp_path / "out"
    learned = " ".join(f"--learned seed{s}={out}/table5/meta/RotatedMNIST_order4_seed{s}/"
                       "learned_loss.json" for s in (3, 4))
    assert lines == [
        "python -m domainbed_itl.scripts.meta_train_many --data_dir data "
        f"--output_dir {out}/table5/meta "
        "--preset paper --outer_steps 7 --orders 4 --seeds 3 4 --datasets RotatedMNIST "
        "--exclude_envs 0 ",
        f"python -m domainbed_itl.scripts.meta_figures fig3 --runs {out}/table5/meta --out "
        f"{out}/fig3.png ",
        f"python -m domainbed_itl.scripts.deploy --data_dir data --output_dir "
        f"{out}/table5/deploy/RotatedMNIST --dataset RotatedMNIST --test_envs 0 --trial_seeds "
        f"0 1 2 3 4 {learned} ",
        f"python -m domainbed_itl.scripts.deploy --data_dir data --output_dir "
        f"{out}/table5/deploy/ColoredMNIST --dataset ColoredMNIST --test_envs 0 1 2 "
        f"--trial_seeds 0 1 2 3 4 {learned} ",
        f"python -m domainbed_itl.scripts.paper_tables --input_dir {out}/table5/deploy "
        "--table 5 --compare_paper ",
    ]
    fig3 = dummy_launch("table5_meta_seeds.sh", tmp_path, "fig3")
    assert [line.split()[2] for line in fig3] == ["domainbed_itl.scripts.meta_train_many",
                                                  "domainbed_itl.scripts.meta_figures"]


def test_table6_launch_file_meta_trains_leave_one_out(tmp_path):
    lines = dummy_launch("table6_coloredmnist_task_loss.sh", tmp_path, META_SEEDS="0",
                         N_TRIALS="2", DEPLOY="domainbed", STEPS="300", COLLECT_FLAGS="")
    out = tmp_path / "out"
    assert len(lines) == 1 + 3 * 2 + 1
    assert "--output_dir " + f"{out}/table5/meta " in lines[0]
    for env in range(3):
        train, deployment = lines[1 + 2 * env], lines[2 + 2 * env]
        assert (f"--output_dir {out}/table6/meta/without_env{env} " in train
                and train.endswith(f"--datasets ColoredMNIST --exclude_envs {env} "))
        assert deployment == (
            f"python -m domainbed_itl.scripts.compare_losses --data_dir data --output_dir "
            f"{out}/table6/deploy/env{env} --dataset ColoredMNIST --test_envs {env} "
            f"--trial_seeds 0 1 --learned generic0={out}/table5/meta/RotatedMNIST_order4_seed0/"
            f"learned_loss.json --learned task0={out}/table6/meta/without_env{env}/"
            "ColoredMNIST_order4_seed0/learned_loss.json --steps 300 ")
    assert lines[-1] == (f"python -m domainbed_itl.scripts.paper_tables --input_dir "
                         f"{out}/table6/deploy --table 6 ")


@pytest.mark.parametrize("env, message", [
    ({"LAUNCHER": "slurm"}, "LAUNCHER=slurm: these stages run in this shell; use local or dummy"),
    ({"DEPLOY": "gpu"}, "DEPLOY=gpu: choose mlp or domainbed"),
])
def test_launch_files_refuse_settings_they_cannot_use(tmp_path, env, message):
    settings = {**os.environ, "PY": "python", "OUT_ROOT": str(tmp_path / "out"), **env}
    proc = subprocess.run(["bash", str(REPO / "sweeps" / "table6_coloredmnist_task_loss.sh")],
                          env=settings, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"table6_coloredmnist_task_loss.sh: error: {message}\n"
    assert not (tmp_path / "out").exists()
