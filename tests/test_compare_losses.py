"""compare_losses: real train subprocesses per loss, a table built from their records, and a
rerun that trains nothing new."""

import json

import pytest

from domainbed_itl.losses import ITL_OMEGA
from domainbed_itl.scripts import compare_losses


def test_compare_runs_each_loss_and_tabulates_the_last_records(tmp_path, capsys):
    learned = tmp_path / "learned_loss.json"
    learned.write_text(json.dumps({"itl_omega": [v * 0.5 for v in ITL_OMEGA]}))
    out = tmp_path / "compare"
    argv = ["--dataset", "Debug28", "--output_dir", str(out), "--test_envs", "2",
            "--trial_seeds", "0", "1", "--steps", "3", "--quiet", "--learned", f"half={learned}"]
    compare_losses.main(argv)
    report = capsys.readouterr().out
    rows = [line for line in report.splitlines() if line.startswith("| ERM")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| ERM (cross-entropy)", "| ERM_ITL (published, Tab. 8)", "| ERM_ITL (half)"]
    runs = sorted(p.parent for p in out.glob("*/*/done"))
    assert len(runs) == 3 * 2

    # Every cell is the mean over trials of the last record's test-domain accuracy.
    half = [json.loads((out / "erm_itl--half-" / f"env2_trial{t}" / "results.jsonl")
                       .read_text().splitlines()[-1]) for t in (0, 1)]
    assert all(r["hparams"]["itl_omega"] == [v * 0.5 for v in ITL_OMEGA] for r in half)
    assert all(r["step"] == 2 for r in half)
    expected = 100 * sum(r["env2_in_acc"] for r in half) / 2
    assert rows[2].split(" | ")[1].startswith(f"{expected:.1f} ± ")
    assert report.rstrip().endswith((out / "table.md").read_text().strip())
    assert all(r["args"]["precision"] == "fp32" for r in half)

    # A second call finds every run done and trains nothing.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/results.jsonl")}
    compare_losses.main(argv)
    assert "$ " not in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/results.jsonl")} == stamps


def test_precision_reaches_every_run_and_the_table(tmp_path, capsys):
    out = tmp_path / "compare"
    compare_losses.main(["--dataset", "Debug28", "--output_dir", str(out), "--test_envs", "0",
                         "--steps", "2", "--quiet", "--precision", "bf16"])
    records = [json.loads(p.read_text().splitlines()[-1]) for p in out.glob("*/*/results.jsonl")]
    assert len(records) == 2 and all(r["args"]["precision"] == "bf16" for r in records)
    assert "bf16" in (out / "table.md").read_text().splitlines()[0]


def test_a_learned_file_without_omega_is_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"lr": 0.1}))
    with pytest.raises(SystemExit, match="has no 'itl_omega'"):
        compare_losses.main(["--output_dir", str(tmp_path / "o"), "--learned", str(bad)])
    assert not (tmp_path / "o").exists()
