"""compare_losses: sweep jobs per loss, run by a launcher, a table built from their last records,
a rerun that trains nothing new, reruns with other settings that never report the old numbers,
the deployment records (records.jsonl) every finished run leaves, a dry run that creates
nothing, old-layout comparisons adopted (a finished run reused, a killed one resumed), and the
directory read by collect_results as any sweep's."""

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from domainbed.launchers import Launcher
from domainbed.lib.cli import UsageError
from domainbed.scripts import collect_results
from domainbed.scripts import train as train_script
from domainbed.scripts.sweep import Job
from domainbed_itl.deployment import domainbed_protocol
from domainbed_itl.deployment.candidates import baselines, learned_candidate
from domainbed_itl.losses import ITL_OMEGA
from domainbed_itl.losses.learned import LearnedLoss, preset_provenance
from domainbed_itl.scripts import compare_losses


def _last_records(out):
    """{(algorithm, hparams overrides, trial seed): last record} of every run directory."""
    found = {}
    for path in out.glob("*/results.jsonl"):
        record = json.loads(path.read_text().splitlines()[-1])
        args = record["args"]
        key = (args["algorithm"], args["hparams"] or "{}", args["trial_seed"])
        found[key] = record
    return found


def _overrides(omega=None):
    return "{}" if omega is None else json.dumps({"itl_omega": omega}, sort_keys=True)


def _deployment_records(out):
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def _rows(report):
    """{label: cells} of the printed table."""
    lines = [line for line in report.splitlines()
             if line.startswith("| ") and not line.startswith("| loss |")]
    return {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines}


def test_compare_runs_each_loss_and_tabulates_the_last_records(tmp_path, capsys):
    half = [v * 0.5 for v in ITL_OMEGA]
    learned = tmp_path / "learned_loss.json"
    learned.write_text(json.dumps({"itl_omega": half}))
    out = tmp_path / "compare"
    argv = ["--dataset", "Debug28", "--output_dir", str(out), "--test_envs", "2",
            "--trial_seeds", "0", "1", "--steps", "3", "--quiet", "--learned", f"half={learned}"]
    assert compare_losses.main(argv) == 0
    report = capsys.readouterr().out
    rows = _rows(report)
    assert list(rows) == ["CE", "ITL (Table 8)", "half"]
    assert len(list(out.glob("*/done"))) == 3 * 2
    assert "REDUCED BUDGET: 3 steps" in report

    # Every cell is the mean over trials of the last record's test-domain accuracy, ± DomainBed's
    # standard error (population standard deviation / sqrt(n)).
    last = _last_records(out)
    halves = [last["ERM_ITL", _overrides(half), t] for t in (0, 1)]
    assert all(r["hparams"]["itl_omega"] == half for r in halves)
    assert all(r["step"] == 2 and r["args"]["precision"] == "fp32" for r in halves)
    accs = np.array([r["env2_in_acc"] for r in halves])
    se = np.sqrt(((accs - accs.mean()) ** 2).mean() / len(accs))
    assert rows["half"][0] == f"{100 * accs.mean():.1f} ± {100 * se:.1f}"
    assert report.rstrip().endswith((out / "table.md").read_text().strip())

    # Every finished run is also a deployment record, the format scripts.deploy writes.
    records = _deployment_records(out)
    assert [(r["loss"], r["trial_seed"]) for r in records] == [
        (label, t) for label in ("CE", "ITL (Table 8)", "half") for t in (0, 1)]
    runs = {"CE": ("ERM", _overrides()), "ITL (Table 8)": ("ERM_ITL", _overrides()),
            "half": ("ERM_ITL", _overrides(half))}
    for r in records:
        run = last[(*runs[r["loss"]], r["trial_seed"])]
        assert r["test_acc"] == run["env2_in_acc"]
        assert r["source_acc"] == (run["env0_out_acc"] + run["env1_out_acc"]) / 2
        assert (r["protocol"], r["dataset"], r["test_env"], r["steps"], r["meta"]) == (
            "domainbed", "Debug28", 2, 3, None)
        assert r["settings"] == {"seed": 0, "precision": "fp32"} and r["seconds"] > 0
        assert r["algorithm"] == run["args"]["algorithm"]
        assert r["hparams"] == ({"itl_omega": half} if r["loss"] == "half" else {})

    # A second call finds every run done and trains nothing.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/results.jsonl")}
    assert compare_losses.main(argv) == 0
    assert "Launching" not in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/results.jsonl")} == stamps
    assert _deployment_records(out) == records  # each run is recorded once

    # The same label for another loss trains that loss and reports it, not the old numbers.
    double = [v * 2.0 for v in ITL_OMEGA]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"itl_omega": double}))
    assert compare_losses.main([*argv[:-1], f"half={other}"]) == 0
    printed = capsys.readouterr().out
    assert "Launching 2 jobs" in printed  # the two new runs; the baselines are reused
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # old runs left as they were
    last = _last_records(out)
    fresh = [last["ERM_ITL", _overrides(double), t] for t in (0, 1)]
    assert all(r["hparams"]["itl_omega"] == double for r in fresh)
    fresh_accs = [r["env2_in_acc"] for r in fresh]
    assert _rows(printed)["half"][0].startswith(f"{100 * np.mean(fresh_accs):.1f} ± ")
    relabelled = _deployment_records(out)
    assert relabelled[:6] == records and len(relabelled) == 8
    assert [r["test_acc"] for r in relabelled[6:]] == fresh_accs
    assert all(r["hparams"]["itl_omega"] == double for r in relabelled[6:])


def test_a_preset_deploys_and_runs_finished_before_their_record_are_recorded(tmp_path, capsys):
    out = tmp_path / "compare"
    argv = ["--dataset", "Debug28", "--output_dir", str(out), "--test_envs", "0", "--steps", "2",
            "--quiet", "--learned", "preset:rmnist-ift"]
    assert compare_losses.main(argv) == 0
    assert "rmnist-ift" in _rows(capsys.readouterr().out)
    records = _deployment_records(out)
    shipped = records[-1]
    assert (shipped["loss"], shipped["algorithm"]) == ("rmnist-ift", "ERM_ITL")
    assert shipped["hparams"] == LearnedLoss.from_file("preset:rmnist-ift").hparams()
    assert shipped["meta"] == preset_provenance("rmnist-ift")["meta"]
    # A comparison whose records were lost (or that predates them) gets them back on the next
    # call, without training, with no wall time to report.
    (out / "records.jsonl").unlink()
    assert compare_losses.main(argv) == 0
    assert "Launching" not in capsys.readouterr().out
    again = _deployment_records(out)
    assert [r["seconds"] for r in again] == [None] * 3
    assert [{**r, "seconds": None} for r in records] == again


def test_precision_reaches_every_run_and_the_table(tmp_path, capsys):
    out = tmp_path / "compare"
    assert compare_losses.main(["--dataset", "Debug28", "--output_dir", str(out),
                                "--test_envs", "0", "--steps", "2", "--quiet",
                                "--precision", "bf16"]) == 0
    records = [json.loads(p.read_text().splitlines()[-1]) for p in out.glob("*/results.jsonl")]
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


def test_two_rows_with_one_label_are_refused(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"itl_omega": ITL_OMEGA}))
    b.write_text(json.dumps({"itl_omega": [2 * v for v in ITL_OMEGA]}))
    out = tmp_path / "o"
    for specs in ((f"x={a}", f"x={b}"), (f"CE={a}",)):
        argv = ["--output_dir", str(out)]
        for spec in specs:
            argv += ["--learned", spec]
        assert compare_losses.main(argv) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "two rows are labelled" in line and "distinct NAME" in line
        assert not out.exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--steps", "0"], "--steps and --checkpoint_freq must be at least 1"),
    (["--dataset", "Nope"], "unknown dataset 'Nope'"),
    (["--command_launcher", "dummy", "--max_parallel", "2"], "does not take --max_parallel"),
    (["--no_wait"], "'local' launcher does not take --no_wait"),
    (["--max_parallel", "0"], "--max_parallel must be at least 1"),
])
def test_bad_settings_are_refused_before_any_run(tmp_path, capsys, flags, message):
    out = tmp_path / "o"
    assert compare_losses.main(["--output_dir", str(out), *flags]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("compare_losses: error: ") and message in line
    assert not out.exists()


def _arguments(**changes):
    args = compare_losses.build_parser().parse_args(["--output_dir", "o"])
    for key, value in changes.items():
        setattr(args, key, value)
    return args


def _job(root, candidate=None, env=0, trial=0, **changes):
    candidate = candidate or baselines()[1]
    args = domainbed_protocol.train_args(candidate, _arguments(**changes), env, trial)
    return Job(args, str(root))


def test_every_training_argument_selects_its_own_run_directory(tmp_path):
    learned = learned_candidate("preset:rmnist-ift")
    base = _job(tmp_path, learned).output_dir
    assert base == _job(tmp_path, learned).output_dir
    variants = [_job(tmp_path, learned, **{key: value}).output_dir for key, value in [
        ("steps", 7), ("seed", 1), ("precision", "bf16"), ("dataset", "Debug28"),
        ("checkpoint_freq", 5), ("data_dir", "elsewhere"), ("table_splits_only", True)]]
    variants += [_job(tmp_path, learned, env=1).output_dir, _job(tmp_path, learned, trial=1)
                 .output_dir, _job(tmp_path).output_dir]
    assert len({base, *variants}) == 1 + len(variants)


def test_a_job_command_line_is_the_training_it_stands_for(tmp_path):
    job = _job(tmp_path, learned_candidate("preset:rmnist-ift"),
               env=1, trial=2, table_splits_only=True, precision="bf16", checkpoint_freq=4)
    words = job.command_str.split()
    assert words[1:3] == ["-m", "domainbed.scripts.train"]
    parsed = train_script.build_parser().parse_args(
        shlex.split(job.command_str)[3:])
    assert (parsed.test_envs, parsed.trial_seed, parsed.steps, parsed.checkpoint_freq) == (
        [1], 2, 1000, 4)
    assert parsed.skip_model_save and parsed.no_initial_eval and parsed.precision == "bf16"
    assert parsed.eval_splits == ["env1_in", "env0_out", "env2_out", "env3_out", "env4_out",
                                  "env5_out"]
    assert json.loads(parsed.hparams) == LearnedLoss.from_file("preset:rmnist-ift").hparams()
    assert parsed.output_dir == job.output_dir


def test_a_finished_run_is_reused_only_with_its_recorded_arguments(tmp_path):
    job = _job(tmp_path, baselines()[0])
    os.makedirs(job.output_dir)
    assert domainbed_protocol.finished_record(job) is None  # not finished: run it

    argv = shlex.split(job.command_str)[3:]
    recorded = vars(train_script.build_parser().parse_args([*argv, "--output_dir", "x"]))
    directory = tmp_path / os.path.basename(job.output_dir)
    (directory / "done").write_text("done")
    (directory / "results.jsonl").write_text(json.dumps({"env0_in_acc": 0.5,
                                                         "args": recorded}) + "\n")
    assert domainbed_protocol.finished_record(job)["env0_in_acc"] == 0.5

    (directory / "results.jsonl").write_text(json.dumps({"args": {**recorded, "steps": 9}}))
    with pytest.raises(UsageError, match="differing: steps"):
        domainbed_protocol.finished_record(job)
    (directory / "results.jsonl").write_text('{"args": {"ste')
    with pytest.raises(UsageError, match="results.jsonl is damaged"):
        domainbed_protocol.finished_record(job)


def test_the_dummy_launcher_prints_the_commands_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "compare"
    assert compare_losses.main(["--dataset", "Debug28", "--output_dir", str(out), "--steps", "2",
                                "--test_envs", "0", "1", "--command_launcher", "dummy"]) == 0
    printed = capsys.readouterr().out
    commands = [line for line in printed.splitlines() if line.startswith("Dummy launcher: ")]
    assert len(commands) == 2 * 2
    assert all(" -m domainbed.scripts.train " in c and f"--output_dir {out}/" in c
               for c in commands)
    assert printed.count("Not launched: ") == 4 and "| CE |" not in printed
    assert not out.exists()


def test_parallel_local_runs_make_a_sweep_directory_collect_results_reads(tmp_path, capsys):
    out = tmp_path / "compare"
    assert compare_losses.main(["--dataset", "Debug28", "--output_dir", str(out), "--steps", "2",
                                "--test_envs", "0", "--quiet", "--command_launcher", "local",
                                "--max_parallel", "2"]) == 0
    rows = _rows(capsys.readouterr().out)
    last = _last_records(out)
    assert rows["CE"][0] == f"{100 * last['ERM', '{}', 0]['env0_in_acc']:.1f}"
    assert rows["ITL (Table 8)"][0] == f"{100 * last['ERM_ITL', '{}', 0]['env0_in_acc']:.1f}"
    assert len(last) == 2

    assert collect_results.main(["--input_dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Total records: 4" in text  # the step-0 and last evaluations of both runs
    oracle = text.split("test-domain validation set (oracle)")[1]
    assert f"ERM_ITL               {100 * last['ERM_ITL', '{}', 0]['env0_in_acc']:.1f} +/- 0.0" \
        in oracle


def _old_layout_run(out, slug, algorithm, steps, checkpoint_freq):
    """The directory and train argv a comparison gave this run before its runs were sweep
    jobs: `<row slug>/env<E>_trial<T>_<sha256 of the argv>`."""
    argv = ["--dataset", "Debug28", "--algorithm", algorithm, "--data_dir", "data",
            "--test_envs", "0", "--trial_seed", "0", "--seed", "0", "--steps", str(steps),
            "--checkpoint_freq", str(checkpoint_freq), "--skip_model_save"]
    digest = hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:10]
    directory = out / slug / f"env0_trial0_{digest}"
    return directory, [sys.executable, "-m", "domainbed.scripts.train", *argv,
                       "--output_dir", str(directory)]


def test_an_old_comparison_is_moved_into_place_reused_and_resumed(tmp_path, capsys):
    out = tmp_path / "compare"
    finished, command = _old_layout_run(out, "erm--cross-entropy-", "ERM", 4, 2)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    killed, command = _old_layout_run(out, "erm_itl--published--tab--8-", "ERM_ITL", 4, 2)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "resume.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (killed / "resume.pt").exists() and not (killed / "done").exists()
    finished_results = (finished / "results.jsonl").read_bytes()

    argv = ["--dataset", "Debug28", "--output_dir", str(out), "--test_envs", "0", "--steps", "4",
            "--checkpoint_freq", "2", "--quiet"]
    assert compare_losses.main(argv) == 0
    printed = capsys.readouterr().out
    moved = [line for line in printed.splitlines() if line.startswith("Moved ")]
    assert len(moved) == 2 and not finished.exists() and not killed.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [os.path.basename(line.split(" -> ")[1]) for line in moved] + ["records.jsonl",
                                                                       "table.md"])
    assert "Launching 1 jobs" in printed  # only the killed run trains

    ce, itl = (out / os.path.basename(line.split(" -> ")[1]) for line in moved)
    assert (ce / "results.jsonl").read_bytes() == finished_results  # reused as it was
    assert "Resuming from step" in (itl / "out.txt").read_text()
    last = _last_records(out)
    assert last["ERM_ITL", "{}", 0]["step"] == 3
    rows = _rows(printed)
    for label, key in (("CE", ("ERM", "{}", 0)), ("ITL (Table 8)", ("ERM_ITL", "{}", 0))):
        assert rows[label][0] == f"{100 * last[key]['env0_in_acc']:.1f}"
    records = _deployment_records(out)
    assert [r["seconds"] is None for r in records] == [True, False]

    # Adopted, the directory reads as this comparison's own: a rerun trains and moves nothing.
    assert compare_losses.main(argv) == 0
    printed = capsys.readouterr().out
    assert "Moved " not in printed and "Launching" not in printed


def test_failed_runs_exit_1_naming_one_and_are_not_tabulated(tmp_path, capsys):
    out = tmp_path / "compare"
    assert compare_losses.main(["--dataset", "RotatedMNIST", "--data_dir",
                                str(tmp_path / "no_data"), "--output_dir", str(out),
                                "--steps", "1", "--quiet"]) == 1
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()[-1:]
    assert line.startswith(f"compare_losses: error: the run in {out}/") and "and 1 more" in line
    assert "2 of 2 runs are not finished" in captured.out
    assert not (out / "records.jsonl").exists() and not (out / "table.md").exists()


def test_a_launcher_that_does_not_wait_gets_the_finished_runs_tabulated(tmp_path, capsys):
    """A queueing launcher returns before its jobs end: here one job has ended by then."""

    def submit(commands, no_wait=False):
        assert no_wait
        subprocess.run(commands[0], shell=True, check=True, stdout=subprocess.DEVNULL)

    queue = Launcher("queue", submit, takes_no_wait=True)
    out = tmp_path / "compare"
    args = compare_losses.build_parser().parse_args(
        ["--dataset", "Debug28", "--output_dir", str(out), "--steps", "2", "--no_wait"])
    outcome = domainbed_protocol.compare(args, baselines(), queue, {"no_wait": True})
    assert outcome.failed == []
    (record,) = _deployment_records(out)
    assert list(_rows(outcome.report)) == [record["loss"]]
    assert outcome.report.rstrip().endswith(
        "1 of 2 runs are not finished (queued, running or failed); run this command again to "
        "tabulate them")
    assert (out / "table.md").read_text() == outcome.report
    assert "Launching 2 jobs" in capsys.readouterr().out
