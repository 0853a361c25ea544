"""Figs. 3 and 6 from real (tiny) meta-training runs on ColoredMNIST: the printed numbers
against the runs' own logs, the refusals, and Fig. 6's launch file."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from domainbed_itl.meta import data as meta_data
from domainbed_itl.scripts import meta_figures, meta_train_many

REPO = Path(__file__).resolve().parents[3]
TINY = ["--hidden", "16", "--inner_steps", "5", "--outer_steps", "3", "--hessian_batch", "64",
        "--val_batch", "64", "--eval_examples", "64", "--threads", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_dir) -> Path:
    """Two seeds x Taylor orders 2 and 3, three outer steps each, on ColoredMNIST's three
    domains (the MNIST dataset that loads in seconds)."""
    out = tmp_path_factory.mktemp("meta")
    domains = meta_data.load_domains("ColoredMNIST", str(mnist_dir), 0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(meta_data, "load_domains", lambda *args: domains)
        assert meta_train_many.main(["--data_dir", str(mnist_dir), "--output_dir", str(out),
                                "--datasets", "ColoredMNIST", "--seeds", "0", "1",
                                "--orders", "2", "3", *TINY]) == 0
    return out


def log(run: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (run / "log.jsonl").read_text().splitlines()]


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def table_rows(out: str) -> dict[str, list[str]]:
    """first cell -> other cells of the Markdown table rows."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_fig3_mean_and_range_over_seeds(runs, tmp_path, capsys):
    seeds = [runs / f"ColoredMNIST_order3_seed{s}" for s in (0, 1)]
    png = tmp_path / "figs" / "fig3.png"
    assert meta_figures.main(["fig3", "--runs", *map(str, seeds), "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    assert "Fig. 3: ColoredMNIST, taylor, seeds 0 1; 3 outer steps reached by all 2 runs" in out
    rows = table_rows(out)
    assert list(rows) == ["outer step", "0", "1", "2"]
    for step in range(3):
        cells = []
        for key in ("inner_acc", "held_out_acc"):
            values = [log(seed, key)[step] for seed in seeds]
            cells.append(f"{pct(statistics.mean(values))} ({pct(min(values))}-"
                         f"{pct(max(values))})")
        assert rows[str(step)] == cells


def test_fig6_per_order_mean_of_the_last_steps(runs, tmp_path, capsys):
    png = tmp_path / "fig6.png"
    assert meta_figures.main(["fig6", "--runs", str(runs), "--out", str(png), "--last", "2"]) == 0
    out = capsys.readouterr().out
    assert png.read_bytes()[:4] == b"\x89PNG"
    rows = table_rows(out)
    assert list(rows) == ["order", "2", "3"]
    for order in (2, 3):
        cells = ["2", "3"]  # runs, outer steps
        for key in ("inner_acc", "held_out_acc"):
            tails = [statistics.mean(log(runs / f"ColoredMNIST_order{order}_seed{s}", key)[-2:])
                     for s in (0, 1)]
            cells.append(f"{pct(statistics.mean(tails))} +/- {pct(statistics.pstdev(tails))}")
        assert rows[str(order)] == cells


def test_runs_of_other_settings_and_damaged_logs(runs, tmp_path, capsys):
    png = tmp_path / "fig.png"
    # Fig. 3 over two orders would average two settings' curves.
    assert meta_figures.main(["fig3", "--runs", str(runs), "--out", str(png)]) == 2
    err = capsys.readouterr().err
    assert "ColoredMNIST_order2_seed0 and " in err and "differ in family_spec, order" in err
    assert not png.exists()
    # A line cut short by a kill is skipped with a warning; the run still counts.
    copy = tmp_path / "copy"
    shutil.copytree(runs / "ColoredMNIST_order2_seed0", copy)
    with open(copy / "log.jsonl", "a") as handle:
        handle.write('{"step": 3, "inner_ac')
    assert meta_figures.main(["fig3", "--runs", str(copy), "--out", str(png)]) == 0
    out, err = capsys.readouterr()
    assert f"{copy / 'log.jsonl'}:4: skipped a malformed line" in err
    assert "3 outer steps reached by all 1 runs" in out
    # Not meta_train runs.
    (tmp_path / "empty").mkdir()
    assert meta_figures.main(["fig6", "--runs", str(tmp_path / "empty"), "--out", str(png)]) == 2
    assert "no meta-training run (log.jsonl) at or below" in capsys.readouterr().err
    (copy / "checkpoint.pt").unlink()
    assert meta_figures.main(["fig3", "--runs", str(copy), "--out", str(png)]) == 2
    assert "has no checkpoint.pt: not a meta_train run" in capsys.readouterr().err


def test_fig6_launch_file_prints_its_commands_and_runs_nothing(tmp_path):
    env = {**os.environ, "LAUNCHER": "dummy", "PY": "python", "OUT_ROOT": "o",
           "META_SEEDS": "0 1", "ORDERS": "3 5", "META_EXTRA": "--device cuda"}
    proc = subprocess.run(["bash", str(REPO / "sweeps" / "fig6_orders.sh")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines() == [
        "python -m domainbed_itl.scripts.meta_train_many --data_dir data --output_dir o/fig6/meta "
        "--preset paper --outer_steps 200 --orders 3 5 --seeds 0 1 --datasets RotatedMNIST "
        "--device cuda ",
        "python -m domainbed_itl.scripts.meta_figures fig6 --runs o/fig6/meta --out o/fig6.png ",
    ]
    assert list(tmp_path.iterdir()) == []
