"""Single-source sweeps: the job list, its directory names, and real sweeps on this engine and
on a clone shaped like the public DomainBed."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
from argparse import Namespace
from pathlib import Path

import pytest
from sweep_helpers import job_states, kill_session, wait_for_done

from domainbed.lib import reporting
from domainbed.lib.misc import seed_hash
from domainbed.scripts.sweep import Job, make_args_list
from domainbed_itl.scripts import sweep_single_source
from domainbed_itl.scripts.sweep_single_source import single_source_args_list

REPO_ROOT = Path(__file__).resolve().parents[3]
MODULE = "domainbed_itl.scripts.sweep_single_source"


def sweep_args(**overrides) -> Namespace:
    values = dict(datasets=["Debug28"], algorithms=["ERM"], n_trials=1, n_hparams_from=0,
                  n_hparams=1, steps=None, data_dir="/data", task="domain_generalization",
                  holdout_fraction=0.2, hparams=None, single_test_envs=False)
    values.update(overrides)
    return Namespace(**values)


def md5_name(train_args: dict) -> str:
    return hashlib.md5(json.dumps(train_args, sort_keys=True).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------ the job list


@pytest.mark.parametrize("dataset, n_envs", [("Debug28", 3), ("VLCS", 4), ("RotatedMNIST", 6)])
def test_every_source_every_algorithm_hparam_and_trial(dataset, n_envs):
    jobs = single_source_args_list(sweep_args(datasets=[dataset], algorithms=["ERM", "CORAL"],
                                              n_trials=3, n_hparams_from=1, n_hparams=4,
                                              steps=7, hparams='{"lr": 0.1}'))
    assert len(jobs) == 3 * 2 * n_envs * 3
    sources = {(a["trial_seed"], a["algorithm"], a["hparams_seed"]): [] for a in jobs}
    for a in jobs:
        (train_env,) = set(range(n_envs)) - set(a["test_envs"])
        assert a["test_envs"] == sorted(a["test_envs"]) and len(a["test_envs"]) == n_envs - 1
        sources[(a["trial_seed"], a["algorithm"], a["hparams_seed"])].append(train_env)
        assert a["seed"] == seed_hash(dataset, a["algorithm"], a["test_envs"], a["hparams_seed"],
                                      a["trial_seed"])
        assert a["steps"] == 7 and a["hparams"] == '{"lr": 0.1}' and a["dataset"] == dataset
    assert len(sources) == 3 * 2 * 3
    assert all(found == list(range(n_envs)) for found in sources.values())


def test_a_job_is_named_as_any_domainbed_job_with_its_arguments(tmp_path):
    """The directory is the MD5 of exactly the dict a multi-source sweep would write."""
    (first, *_), = [single_source_args_list(sweep_args(datasets=["PACS"], data_dir="/d"))]
    expected = {"dataset": "PACS", "algorithm": "ERM", "test_envs": [1, 2, 3],
                "holdout_fraction": 0.2, "hparams_seed": 0, "data_dir": "/d",
                "task": "domain_generalization", "trial_seed": 0,
                "seed": seed_hash("PACS", "ERM", [1, 2, 3], 0, 0)}
    assert first == expected
    job = Job(first, str(tmp_path))
    assert job.output_dir == str(tmp_path / md5_name(expected))
    assert Path(job.output_dir).name == "234ca1a64649b2bdadef850435f251cd"  # stable across versions
    assert job.command_str.endswith("--test_envs 1 2 3 --trial_seed 0")


def test_on_three_environments_they_are_the_multi_source_pair_jobs(tmp_path):
    """Holding out two of three environments is a pair job of the ordinary sweep: same
    arguments, same directory, so the two sweeps share those runs."""
    single = single_source_args_list(sweep_args(algorithms=["ERM", "IRM"], n_trials=2,
                                                n_hparams=2, steps=5))
    multi = make_args_list(n_trials=2, dataset_names=["Debug28"], algorithms=["ERM", "IRM"],
                           n_hparams_from=0, n_hparams=2, steps=5, data_dir="/data",
                           task="domain_generalization", holdout_fraction=0.2,
                           single_test_envs=False, hparams=None)
    pairs = [a for a in multi if len(a["test_envs"]) == 2]
    names = lambda args_list: sorted(Job(a, str(tmp_path)).output_dir for a in args_list)  # noqa: E731
    assert names(single) == names(pairs) and len(single) == 2 * 2 * 3 * 2


# ------------------------------------------------------------------ the command line


@pytest.fixture()
def single_main(capsys, monkeypatch):
    def call(*argv, stdin=""):
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = sweep_single_source.main(list(argv))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, captured.out, captured.err)

    return call


def test_dry_run_lists_single_source_jobs_and_creates_nothing(tmp_path, single_main):
    out = tmp_path / "sweep"
    result = single_main("launch", "--datasets", "Debug28", "RotatedMNIST", "--algorithms", "ERM",
                         "ERM_ITL", "--n_hparams", "2", "--n_trials", "1", "--data_dir", "/d",
                         "--output_dir", str(out), "--command_launcher", "dummy",
                         "--skip_confirmation")
    assert result.returncode == 0, result.stderr
    assert "36 jobs: 0 done, 0 incomplete, 36 not launched." in result.stdout
    commands = [line for line in result.stdout.splitlines() if line.startswith("Dummy launcher: ")]
    assert len(commands) == 36
    assert sum("--test_envs 0 1 2 3 5 " in c and "--algorithm ERM_ITL" in c for c in commands) == 2
    assert all("-m domainbed.scripts.train " in c for c in commands)
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--datasets", "Debug28", "--command_launcher", "dummy", "--single_test_envs"],
     "sweep_single_source: error: --single_test_envs does not apply"),
    (["--datasets", "Nope", "--command_launcher", "dummy"],
     "sweep_single_source: error: unknown dataset 'Nope'"),
    (["--datasets", "Debug28", "--command_launcher", "nowhere"],
     "sweep_single_source: error: unknown command launcher 'nowhere'"),
])
def test_bad_input_one_line_exit_2(tmp_path, single_main, flags, message):
    result = single_main("launch", "--algorithms", "ERM", "--data_dir", "/d", "--output_dir",
                         str(tmp_path / "o"), "--skip_confirmation", *flags)
    assert result.returncode == 2
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ a public DomainBed clone

CLONE = {
    "domainbed/__init__.py": "",
    "domainbed/lib/__init__.py": "",
    "domainbed/lib/misc.py": """
        import hashlib

        def seed_hash(*args):
            return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2**31)
    """,
    "domainbed/datasets.py": """
        DATASETS = ["Debug28", "VLCS"]

        def num_environments(dataset_name):
            return {"Debug28": 3, "VLCS": 4}[dataset_name]
    """,
    "domainbed/algorithms.py": 'ALGORITHMS = ["ERM", "CORAL"]\n',
    "domainbed/command_launchers.py": """
        import os

        def dummy_launcher(commands):
            for command in commands:
                print(f"Dummy launcher: {command}")

        def recording_launcher(commands):
            with open(os.environ["RECORD"], "a") as handle:
                handle.writelines(command + "\\n" for command in commands)

        REGISTRY = {"dummy": dummy_launcher, "record": recording_launcher}
    """,
    "domainbed/scripts/__init__.py": "",
    # The public sweep's Job, as its interface is documented: MD5 of the sorted JSON names the
    # directory, `done` marks a finished job, launch creates the directories.
    "domainbed/scripts/sweep.py": """
        import hashlib, json, os, shutil

        class Job:
            NOT_LAUNCHED, INCOMPLETE, DONE = "Not launched", "Incomplete", "Done"

            def __init__(self, train_args, sweep_output_dir):
                digest = hashlib.md5(json.dumps(train_args, sort_keys=True).encode()).hexdigest()
                self.output_dir = os.path.join(sweep_output_dir, digest)
                self.train_args = dict(train_args, output_dir=self.output_dir)
                self.command_str = "python -m domainbed.scripts.train " + " ".join(
                    f"--{k} {v}" for k, v in sorted(self.train_args.items()))
                if os.path.exists(os.path.join(self.output_dir, "done")):
                    self.state = Job.DONE
                elif os.path.exists(self.output_dir):
                    self.state = Job.INCOMPLETE
                else:
                    self.state = Job.NOT_LAUNCHED

            def __str__(self):
                return f"{self.state}: {self.output_dir}"

            @staticmethod
            def launch(jobs, launcher_fn):
                for job in jobs:
                    os.makedirs(job.output_dir, exist_ok=True)
                launcher_fn([job.command_str for job in jobs])

            @staticmethod
            def delete(jobs):
                for job in jobs:
                    shutil.rmtree(job.output_dir)
    """,
}


def test_a_public_clone_runs_through_its_own_job_and_launchers(tmp_path):
    root = tmp_path / "clone"
    for rel, text in CLONE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    out, record = tmp_path / "sweep", tmp_path / "record"
    env = {**os.environ, "PYTHONPATH": str(root), "RECORD": str(record),
           "DOMAINBED_ITL_AUTOREGISTER": "0"}
    flags = ["--datasets", "Debug28", "VLCS", "--algorithms", "ERM", "CORAL", "--n_hparams", "2",
             "--n_trials", "1", "--steps", "5", "--data_dir", "/d", "--output_dir", str(out),
             "--skip_confirmation"]

    def single(command, launcher):
        return subprocess.run([sys.executable, "-m", MODULE, command, *flags,
                               "--command_launcher", launcher], cwd=root, env=env,
                              capture_output=True, text=True, timeout=120)

    dry = single("launch", "dummy")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("Dummy launcher: python -m domainbed.scripts.train ") == 28
    assert not out.exists()

    assert single("launch", "record").returncode == 0
    commands = record.read_text().splitlines()
    ours = single_source_args_list(sweep_args(datasets=["Debug28", "VLCS"],
                                              algorithms=["ERM", "CORAL"], n_hparams=2, steps=5,
                                              data_dir="/d"))
    assert sorted(os.listdir(out)) == sorted(md5_name(a) for a in ours)
    assert len(commands) == 28 and all(c.startswith("python -m domainbed.scripts.train ")
                                       for c in commands)

    (out / md5_name(ours[0]) / "done").write_text("done")
    again = single("launch", "record")
    assert "28 jobs: 1 done, 27 incomplete, 0 not launched." in again.stdout
    assert "About to launch 0 jobs." in again.stdout
    assert single("delete_incomplete", "record").returncode == 0
    assert os.listdir(out) == [md5_name(ours[0])]
    assert single("delete_all", "record").returncode == 0 and os.listdir(out) == []


# ------------------------------------------------------------------ a real sweep


@pytest.mark.slow  # over a minute of real jobs on 2 loaded cores; make test-all runs it
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_real_single_source_sweep_killed_and_relaunched(tmp_path):
    """Debug28, ERM, default hyperparameters, 3 steps: one job per source (3 jobs, one at a
    time). SIGKILL the launcher and its job once a job is done, clean up, relaunch: every job
    ends done once, trained on its source alone, and Tables 4 and 10 print its accuracies."""
    out = tmp_path / "sweep"
    flags = ["--datasets", "Debug28", "--algorithms", "ERM", "--n_hparams", "1", "--n_trials",
             "1", "--steps", "3", "--data_dir", "/data", "--output_dir", str(out),
             "--command_launcher", "local", "--skip_confirmation"]
    proc = subprocess.Popen([sys.executable, "-m", MODULE, "launch", *flags], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    wait_for_done(out, 1, proc)
    kill_session(proc.pid)
    proc.wait(timeout=30)
    done, incomplete = job_states(out)
    assert 1 <= len(done) and len(done) + len(incomplete) <= 3

    run = lambda *argv: subprocess.run([sys.executable, "-m", MODULE, *argv, *flags],  # noqa: E731
                                       cwd=REPO_ROOT, capture_output=True, text=True)
    cleaned = run("delete_incomplete")
    assert cleaned.returncode == 0 and f"About to delete {len(incomplete)} jobs." in cleaned.stdout
    final = run("launch")
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
    assert f"About to launch {3 - len(done)} jobs." in final.stdout

    expected = {md5_name(a): a for a in single_source_args_list(sweep_args(steps=3))}
    assert job_states(out) == (set(expected), set())
    for name, train_args in expected.items():
        records = reporting.read_results_file(str(out / name / "results.jsonl"))
        assert [r["step"] for r in records][-1] == 2
        assert records[0]["args"]["test_envs"] == train_args["test_envs"]
        assert records[0]["args"]["seed"] == train_args["seed"]
    assert "3 jobs: 3 done" in run("launch").stdout

    # Tables 4 and 10 read the sweep as DomainBed selects: per run, the checkpoint with the best
    # accuracy on the source's held-out split (the first of equals); its targets' in-splits.
    cells, means = [], []
    for name, train_args in expected.items():
        records = reporting.read_results_file(str(out / name / "results.jsonl"))
        (source,) = set(range(3)) - set(train_args["test_envs"])
        best = max(records, key=lambda r: r[f"env{source}_out_acc"])
        targets = [100 * best[f"env{t}_in_acc"] for t in train_args["test_envs"]]
        cells.append("/".join(f"{acc:.1f}" for acc in targets))
        means.append(sum(targets) / len(targets))

    def table(number):
        done = subprocess.run([sys.executable, "-m", "domainbed_itl.scripts.paper_tables",
                               "--input_dir", str(out), "--table", number], cwd=REPO_ROOT,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return next(line for line in done.stdout.splitlines() if line.startswith("ERM "))

    assert all(cell in table("10") for cell in cells), (cells, table("10"))
    assert table("4").split()[1] == f"{sum(means) / 3:.1f}"
