"""compare_losses: real train subprocesses per loss, a table built from their records, a rerun
that trains nothing new, reruns with other settings that never report the old numbers, and the
deployment records (records.jsonl) every finished run leaves."""

import json

import numpy as np
import pytest

from domainbed.scripts import train as train_script
from domainbed_itl.losses import ITL_OMEGA
from domainbed_itl.losses.learned import LearnedLoss, preset_provenance
from domainbed_itl.scripts import compare_losses


def _last_records(out, slug, env, trials):
    return [json.loads(next((out / slug).glob(f"env{env}_trial{t}_*/results.jsonl"))
                       .read_text().splitlines()[-1]) for t in trials]


def _deployment_records(out):
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def test_compare_runs_each_loss_and_tabulates_the_last_records(tmp_path, capsys):
    learned = tmp_path / "learned_loss.json"
    learned.write_text(json.dumps({"itl_omega": [v * 0.5 for v in ITL_OMEGA]}))
    out = tmp_path / "compare"
    argv = ["--dataset", "Debug28", "--output_dir", str(out), "--test_envs", "2",
            "--trial_seeds", "0", "1", "--steps", "3", "--quiet", "--learned", f"half={learned}"]
    assert compare_losses.main(argv) == 0
    report = capsys.readouterr().out
    rows = [line for line in report.splitlines() if line.startswith("| ERM")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| ERM (cross-entropy)", "| ERM_ITL (published, Tab. 8)", "| ERM_ITL (half)"]
    runs = sorted(p.parent for p in out.glob("*/*/done"))
    assert len(runs) == 3 * 2

    # Every cell is the mean over trials of the last record's test-domain accuracy, ± DomainBed's
    # standard error (population standard deviation / sqrt(n)).
    half = _last_records(out, "erm_itl--half-", 2, (0, 1))
    assert all(r["hparams"]["itl_omega"] == [v * 0.5 for v in ITL_OMEGA] for r in half)
    assert all(r["step"] == 2 for r in half)
    accs = np.array([r["env2_in_acc"] for r in half])
    se = np.sqrt(((accs - accs.mean()) ** 2).mean() / len(accs))
    assert rows[2].split(" | ")[1] == f"{100 * accs.mean():.1f} ± {100 * se:.1f}"
    assert report.rstrip().endswith((out / "table.md").read_text().strip())
    assert all(r["args"]["precision"] == "fp32" for r in half)

    # Every finished run is also a deployment record, the format scripts.deploy writes.
    records = _deployment_records(out)
    assert [(r["loss"], r["trial_seed"]) for r in records] == [
        (label, t) for label in ("CE", "ITL (Table 8)", "half") for t in (0, 1)]
    for r in records:
        last = _last_records(out, {"CE": "erm--cross-entropy-",
                                   "ITL (Table 8)": "erm_itl--published--tab--8-",
                                   "half": "erm_itl--half-"}[r["loss"]], 2, [r["trial_seed"]])[0]
        assert r["test_acc"] == last["env2_in_acc"]
        assert r["source_acc"] == (last["env0_out_acc"] + last["env1_out_acc"]) / 2
        assert (r["protocol"], r["dataset"], r["test_env"], r["steps"], r["meta"]) == (
            "domainbed", "Debug28", 2, 3, None)
        assert r["settings"] == {"seed": 0, "precision": "fp32"} and r["seconds"] > 0
        assert r["algorithm"] == last["args"]["algorithm"]
        assert r["hparams"] == ({"itl_omega": [v * 0.5 for v in ITL_OMEGA]}
                                if r["loss"] == "half" else {})

    # A second call finds every run done and trains nothing.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/results.jsonl")}
    assert compare_losses.main(argv) == 0
    assert "$ " not in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/results.jsonl")} == stamps
    assert _deployment_records(out) == records  # each run is recorded once

    # The same label for another loss trains that loss and reports it, not the old numbers.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"itl_omega": [v * 2.0 for v in ITL_OMEGA]}))
    assert compare_losses.main([*argv[:-1], f"half={other}"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("$ ") == 2  # the two new runs; the baselines are reused
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # old runs left as they were
    fresh = [json.loads(p.read_text().splitlines()[-1])
             for p in sorted(out.glob("erm_itl--half-/*/results.jsonl"))
             if p not in stamps]
    assert len(fresh) == 2
    assert all(r["hparams"]["itl_omega"] == [v * 2.0 for v in ITL_OMEGA] for r in fresh)
    fresh_accs = [r["env2_in_acc"] for r in sorted(fresh, key=lambda r: r["args"]["trial_seed"])]
    row = next(line for line in printed.splitlines() if line.startswith("| ERM_ITL (half)"))
    assert row.split(" | ")[1].startswith(f"{100 * np.mean(fresh_accs):.1f} ± ")
    relabelled = _deployment_records(out)
    assert relabelled[:6] == records and len(relabelled) == 8
    assert [r["test_acc"] for r in relabelled[6:]] == fresh_accs
    assert all(r["hparams"]["itl_omega"] == [v * 2.0 for v in ITL_OMEGA] for r in relabelled[6:])


def test_a_preset_deploys_and_runs_finished_before_their_record_are_recorded(tmp_path, capsys):
    out = tmp_path / "compare"
    argv = ["--dataset", "Debug28", "--output_dir", str(out), "--test_envs", "0", "--steps", "2",
            "--quiet", "--learned", "preset:rmnist-ift"]
    assert compare_losses.main(argv) == 0
    assert "| ERM_ITL (rmnist-ift) | " in capsys.readouterr().out
    records = _deployment_records(out)
    shipped = records[-1]
    assert (shipped["loss"], shipped["algorithm"]) == ("rmnist-ift", "ERM_ITL")
    assert shipped["hparams"] == LearnedLoss.from_file("preset:rmnist-ift").hparams()
    assert shipped["meta"] == preset_provenance("rmnist-ift")["meta"]
    # A comparison whose records were lost (or that predates them) gets them back on the next
    # call, without training, with no wall time to report.
    (out / "records.jsonl").unlink()
    assert compare_losses.main(argv) == 0
    assert "$ " not in capsys.readouterr().out
    again = _deployment_records(out)
    assert [r["seconds"] for r in again] == [None] * 3
    assert [{**r, "seconds": None} for r in records] == again


def test_precision_reaches_every_run_and_the_table(tmp_path, capsys):
    out = tmp_path / "compare"
    assert compare_losses.main(["--dataset", "Debug28", "--output_dir", str(out),
                                "--test_envs", "0", "--steps", "2", "--quiet",
                                "--precision", "bf16"]) == 0
    records = [json.loads(p.read_text().splitlines()[-1]) for p in out.glob("*/*/results.jsonl")]
    assert len(records) == 2 and all(r["args"]["precision"] == "bf16" for r in records)
    assert "bf16" in (out / "table.md").read_text().splitlines()[0]


@pytest.mark.parametrize(("content", "message"), [
    (json.dumps({"lr": 0.1}), "has no 'itl_omega'"),
    (json.dumps({"itl_omega": [0.0, 1.0]}), "itl_omega must be a list of 12 numbers"),
    (json.dumps({"itl_omega": ITL_OMEGA, "itl_order": 3}), "for itl_order 3"),
    (json.dumps({"itl_omega": ITL_OMEGA, "lrr": 0.5}), "holds lrr, which ERM_ITL does not take"),
    (json.dumps({"itl_omega": ["a"] * 12}), "must hold numbers only"),
    ('{"itl_omega": [' + ", ".join(["1e999"] * 12) + "]}", "Taylor loss param"),
    ("{broken", "cannot read learned loss"),
])
def test_a_bad_learned_file_is_refused_before_any_run(tmp_path, capsys, content, message):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"itl_omega": ITL_OMEGA}))
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    out = tmp_path / "o"
    code = compare_losses.main(["--output_dir", str(out), "--learned", f"good={good}",
                                "--learned", str(bad)])
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("compare_losses: error: ") and message in line
    assert not out.exists()


def test_labels_that_share_a_directory_are_refused(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"itl_omega": ITL_OMEGA}))
    b.write_text(json.dumps({"itl_omega": [2 * v for v in ITL_OMEGA]}))
    out = tmp_path / "o"
    for specs in ((f"a.b={a}", f"a-b={b}"), (f"x={a}", f"x={b}")):
        argv = ["--output_dir", str(out)]
        for spec in specs:
            argv += ["--learned", spec]
        assert compare_losses.main(argv) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "would share the directory" in line and "distinct NAME" in line
        assert not out.exists()


def _arguments(**changes):
    args = compare_losses.build_parser().parse_args(["--output_dir", "o"])
    for key, value in changes.items():
        setattr(args, key, value)
    return args


def test_every_training_argument_selects_its_own_run_directory(tmp_path):
    entry = compare_losses.Entry("ERM_ITL (mine)", "ERM_ITL", {"itl_omega": ITL_OMEGA})

    def directory(entry=entry, env=0, trial=0, **changes):
        argv = compare_losses.train_arguments(entry, _arguments(**changes), env, trial)
        return compare_losses.run_dir(tmp_path, entry, argv, env, trial)

    base = directory()
    assert base == directory() and base.parent == tmp_path / entry.slug
    variants = [directory(steps=7), directory(seed=1), directory(precision="bf16"),
                directory(dataset="Debug28"), directory(checkpoint_freq=5),
                directory(data_dir="elsewhere"), directory(env=1), directory(trial=1),
                directory(compare_losses.Entry(entry.name, "ERM_ITL",
                                               {"itl_omega": [2 * v for v in ITL_OMEGA]}))]
    assert len({base, *variants}) == 1 + len(variants)


def test_a_finished_run_is_reused_only_with_its_recorded_arguments(tmp_path):
    entry = compare_losses.BASELINES[0]
    argv = compare_losses.train_arguments(entry, _arguments(), 0, 0)
    directory = tmp_path / "run"
    directory.mkdir()
    assert compare_losses.finished_record(directory, argv) is None  # not finished: run it

    recorded = vars(train_script.build_parser().parse_args([*argv, "--output_dir", "x"]))
    (directory / "done").write_text("done")
    (directory / "results.jsonl").write_text(json.dumps({"env0_in_acc": 0.5,
                                                         "args": recorded}) + "\n")
    assert compare_losses.finished_record(directory, argv)["env0_in_acc"] == 0.5

    (directory / "results.jsonl").write_text(json.dumps({"args": {**recorded, "steps": 9}}))
    with pytest.raises(compare_losses.UsageError, match="differing: steps"):
        compare_losses.finished_record(directory, argv)
    (directory / "results.jsonl").write_text('{"args": {"ste')
    with pytest.raises(compare_losses.UsageError, match="results.jsonl is damaged"):
        compare_losses.finished_record(directory, argv)
