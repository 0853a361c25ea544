"""The sweep: job naming compatible with the public DomainBed, the command line, the launchers,
and real sweeps that are interrupted, cleaned up and resumed."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sweep_helpers import job_states, kill_session, session_processes, wait_for_done

from domainbed import command_launchers
from domainbed.lib import joblock, reporting
from domainbed.lib.misc import seed_hash
from domainbed.scripts import collect_results, sweep, train
from domainbed.scripts.sweep import Job, all_test_env_combinations, make_args_list

REPO_ROOT = Path(__file__).resolve().parents[3]


def args_list(**overrides):
    kwargs = dict(
        n_trials=1,
        dataset_names=["Debug28"],
        algorithms=["ERM"],
        n_hparams_from=0,
        n_hparams=1,
        steps=None,
        data_dir="/data",
        task="domain_generalization",
        holdout_fraction=0.2,
        single_test_envs=False,
        hparams=None,
    )
    kwargs.update(overrides)
    return make_args_list(**kwargs)


def sweep_cmd(command, output_dir, *extra, data_dir="/data"):
    return [
        sys.executable,
        "-m",
        "domainbed.scripts.sweep",
        command,
        "--output_dir",
        str(output_dir),
        "--data_dir",
        str(data_dir),
        *extra,
    ]


@pytest.fixture()
def sweep_main(capsys, monkeypatch):
    """Run the sweep command line in this process (no interpreter start-up per call)."""

    def call(command, output_dir, *extra, stdin=""):
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        returncode = sweep.main(sweep_cmd(command, output_dir, *extra)[3:])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess([], returncode, captured.out, captured.err)

    return call


@pytest.fixture()
def submitted():
    """Launcher `test_submit`: records the commands and runs nothing, as a cluster launcher
    submits them; the job directories are created as for any real launch."""
    seen = []

    @command_launchers.register_launcher("test_submit")
    def submit(commands):
        seen.extend(commands)

    yield seen
    del command_launchers.REGISTRY["test_submit"]


def run_sweep(command, output_dir, *extra, stdin="", data_dir="/data"):
    """Run the sweep command line as users do, in a new interpreter."""
    return subprocess.run(
        sweep_cmd(command, output_dir, *extra, data_dir=data_dir),
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )


DEBUG_FLAGS = [
    "--datasets",
    "Debug28",
    "--algorithms",
    "ERM",
    "--n_hparams",
    "1",
    "--n_trials",
    "1",
]


# ------------------------------------------------------------------ job naming


def test_job_names_match_the_public_domainbed():
    """Directory names taken from the public DomainBed's own test sweep (VLCS, ERM, 2 trials,
    2 hparams, --steps 1001): the same arguments must give the same MD5 names."""
    jobs = {
        (a["trial_seed"], a["hparams_seed"], tuple(a["test_envs"])): Job(a, "/s")
        for a in args_list(
            n_trials=2,
            dataset_names=["VLCS"],
            n_hparams=2,
            steps=1001,
            data_dir="/checkpoint/dlp/datasets_new",
        )
    }
    assert len(jobs) == 2 * 2 * (4 + 6)
    assert jobs[(0, 0, (0,))].output_dir == "/s/66006bc6faa9f96db95a5bcfc3e4340a"
    assert jobs[(1, 1, (1, 3))].output_dir == "/s/86394db2b6c2ecd1e3b08e99e14759f2"
    assert jobs[(0, 1, (2, 3))].output_dir == "/s/41b0ac2ee570d8ace449c34ada3fdd01"
    assert jobs[(1, 1, (1, 3))].train_args["seed"] == 664692933


def test_args_list_enumeration():
    assert list(all_test_env_combinations(3)) == [[0], [0, 1], [0, 2], [1], [1, 2], [2]]
    with pytest.raises(ValueError):
        list(all_test_env_combinations(2))
    full = args_list(n_trials=2, n_hparams=3, steps=123)
    assert len(full) == 2 * 3 * (3 + 3)
    single = args_list(n_hparams_from=1, n_hparams=3, single_test_envs=True, hparams='{"lr": 1}')
    assert [a["test_envs"] for a in single] == [[0], [0], [1], [1], [2], [2]]
    assert {a["hparams_seed"] for a in single} == {1, 2}
    assert all(a["hparams"] == '{"lr": 1}' and "steps" not in a for a in single)
    first = single[0]
    assert first["seed"] == seed_hash("Debug28", "ERM", [0], 1, 0)


def test_job_command_and_states(tmp_path):
    job = Job({"dataset": "Debug28", "test_envs": [0, 2], "hparams": '{"lr": 0.1}'}, str(tmp_path))
    assert job.state == Job.NOT_LAUNCHED
    assert job.command_str.endswith(
        f"-m domainbed.scripts.train --dataset Debug28 --hparams '{{\"lr\": 0.1}}' "
        f"--output_dir {job.output_dir} --test_envs 0 2"
    )
    Job.launch([job], lambda commands: None)
    assert (
        Job(
            {"dataset": "Debug28", "test_envs": [0, 2], "hparams": '{"lr": 0.1}'}, str(tmp_path)
        ).state
        == Job.INCOMPLETE
    )
    Path(job.output_dir, "done").write_text("done")
    assert (
        Job(dict(dataset="Debug28", test_envs=[0, 2], hparams='{"lr": 0.1}'), str(tmp_path)).state
        == Job.DONE
    )
    Job.delete([job])
    assert not os.path.exists(job.output_dir)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ command line


def test_launch_prints_jobs_and_asks(tmp_path, sweep_main):
    out = tmp_path / "sweep"
    refused = sweep_main("launch", out, *DEBUG_FLAGS, "--command_launcher", "dummy", stdin="n\n")
    assert refused.returncode == 0
    lines = refused.stdout.splitlines()
    job_lines = [line for line in lines if line.startswith("Not launched: ")]
    assert len(job_lines) == 6
    assert any(
        "(Debug28, ERM, test_envs=[1, 2], hparams_seed=0, trial_seed=0)" in line
        for line in job_lines
    )
    assert "6 jobs: 0 done, 0 incomplete, 6 not launched." in lines
    assert "About to launch 6 jobs." in lines
    assert "Are you sure? (y/n) Nevermind!" in refused.stdout
    assert "Dummy launcher:" not in refused.stdout
    assert not out.exists()

    accepted = sweep_main("launch", out, *DEBUG_FLAGS, "--command_launcher", "dummy", stdin="y\n")
    assert accepted.returncode == 0
    assert accepted.stdout.count("Dummy launcher: ") == 6


def test_dry_run_creates_nothing_so_the_real_launch_runs_everything(
    tmp_path, sweep_main, submitted
):
    out = tmp_path / "sweep"
    for _ in range(2):
        dry = sweep_main("launch", out, *DEBUG_FLAGS, "--command_launcher", "dummy",
                         "--skip_confirmation")
        assert dry.stdout.count("Dummy launcher: ") == 6 and not out.exists()
    real = sweep_main("launch", out, *DEBUG_FLAGS, "--command_launcher", "test_submit",
                      "--skip_confirmation")
    assert "About to launch 6 jobs." in real.stdout and len(submitted) == 6
    assert sorted(os.listdir(out)) == sorted(Path(c.split("--output_dir ")[1].split()[0]).name
                                             for c in submitted)


def test_relaunch_skips_launched_jobs_and_delete_commands(tmp_path, sweep_main, submitted):
    out = tmp_path / "sweep"
    flags = [*DEBUG_FLAGS, "--command_launcher", "test_submit", "--skip_confirmation"]
    first = sweep_main("launch", out, *flags)
    assert first.returncode == 0 and len(submitted) == 6
    again = sweep_main("launch", out, *flags)
    assert len(submitted) == 6
    assert "6 incomplete jobs are left alone" in again.stdout

    done_dir = sorted(out.iterdir())[0]
    (done_dir / "done").write_text("done")
    deleted = sweep_main("delete_incomplete", out, *flags)
    assert "About to delete 5 jobs." in deleted.stdout
    assert [p.name for p in out.iterdir()] == [done_dir.name]
    relaunched = sweep_main("launch", out, *flags)
    assert len(submitted) == 11
    assert done_dir.name not in relaunched.stdout.split("About to launch")[1]

    resumed = sweep_main("launch", out, *flags, "--resume_incomplete")
    assert len(submitted) == 16
    assert "incomplete jobs are left alone" not in resumed.stdout
    assert done_dir.name not in resumed.stdout.split("About to launch")[1]

    assert "About to delete 6 jobs." in sweep_main("delete_all", out, *flags).stdout
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--algorithms", "ERM", "NoSuchAlgo"],
         "sweep: error: unknown algorithm 'NoSuchAlgo' (known: "),
        (["--datasets", "NoSuchData"], "sweep: error: unknown dataset 'NoSuchData' (known: "),
        (["--command_launcher", "nowhere"], "sweep: error: unknown command launcher 'nowhere' "),
        (["--hparams", "{lr: 1}"], "sweep: error: --hparams is not valid JSON"),
        (["--n_hparams", "0"], "sweep: error: need --n_trials >= 1"),
        (["--max_parallel", "2"],
         "sweep: error: the 'dummy' launcher does not take --max_parallel"),
        (["--no_wait"], "sweep: error: the 'dummy' launcher does not take --no_wait"),
        (["--command_launcher", "local", "--no_wait"],
         "sweep: error: the 'local' launcher does not take --no_wait"),
    ],
)
def test_bad_input_is_refused_before_anything_starts(tmp_path, sweep_main, flags, message):
    out = tmp_path / "sweep"
    base = ["--datasets", "Debug28", "--algorithms", "ERM", "--command_launcher", "dummy"]
    result = sweep_main("launch", out, *base, *flags, "--skip_confirmation")
    assert result.returncode == 2
    assert result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Dummy launcher" not in result.stdout
    assert not out.exists()


def test_bad_name_exit_status_from_the_shell(tmp_path):
    result = run_sweep(
        "launch",
        tmp_path / "s",
        "--datasets",
        "Debug28",
        "--algorithms",
        "Nope",
        "--command_launcher",
        "local",
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweep: error: unknown algorithm 'Nope'")
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------ launchers


def test_registry_is_extensible():
    assert {"dummy", "local", "multi_gpu"} <= set(command_launchers.REGISTRY)
    seen = []

    @command_launchers.register_launcher("test_recording")
    def recording(commands):
        seen.extend(commands)

    try:
        command_launchers.REGISTRY["test_recording"](["a", "b"])
        assert seen == ["a", "b"]
        with pytest.raises(ValueError):
            command_launchers.register_launcher("test_recording")(lambda commands: None)
    finally:
        del command_launchers.REGISTRY["test_recording"]


def test_local_launcher_runs_jobs_concurrently(tmp_path):
    """Each job waits (up to 20 s) for the other's marker: they can only both succeed if they
    run at the same time."""

    def job(me, other):
        return (
            f"touch {tmp_path}/{me}; for i in $(seq 200); do "
            f"[ -e {tmp_path}/{other} ] && exit 0; sleep 0.1; done; exit 1"
        )

    failed = command_launchers.local_launcher([job("a", "b"), job("b", "a")], max_parallel=2)
    assert failed == []


def test_local_launcher_serial_order_and_failure_summary(tmp_path, capsys):
    log = tmp_path / "log"
    commands = [f"echo start {i} >> {log}; echo end {i} >> {log}" for i in range(3)]
    commands.append("echo something broke >&2; exit 3")
    failed = command_launchers.local_launcher(commands)
    assert failed == [commands[-1]]
    lines = log.read_text().split()
    assert len(lines) == 12
    # One job at a time: every start is directly followed by its own end.
    pairs = [tuple(log.read_text().splitlines()[k : k + 2]) for k in range(0, 6, 2)]
    assert all(a.split()[1] == b.split()[1] and a.startswith("start") for a, b in pairs)
    out = capsys.readouterr().out
    assert "1 of 4 jobs failed:" in out
    assert "exit status 3: echo something broke" in out
    assert "| something broke" in out
    with pytest.raises(ValueError):
        command_launchers.local_launcher(["true"], max_parallel=0)


def test_multi_gpu_launcher_gives_each_job_one_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,")
    commands = [f"echo $CUDA_VISIBLE_DEVICES > {tmp_path}/job{i}" for i in range(4)]
    assert command_launchers.multi_gpu_launcher(commands) == []
    seen = [(tmp_path / f"job{i}").read_text().strip() for i in range(4)]
    assert set(seen) <= {"3", "5"} and len(seen) == 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(RuntimeError, match="found no GPU"):
        command_launchers.REGISTRY["multi_gpu"].check_settings()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_sigterm_stops_the_jobs_processes_not_just_their_shells(tmp_path):
    """A job's command runs under a shell; stopping the launcher must reach what the shell
    started (here a background `sleep`), or it would keep running after the sweep is gone."""
    pid_file = tmp_path / "pid"
    script = (
        "from domainbed.command_launchers import local_launcher\n"
        f"local_launcher(['sleep 120 & echo $! > {pid_file}; wait'])\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    sleeper = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode != 0 and "SIGTERM" in stderr
    stat = Path(f"/proc/{sleeper}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


# ------------------------------------------------------------------ real sweeps


def _fingerprint(root: Path, names) -> dict[str, tuple]:
    return {
        name: tuple((root / name / f).stat().st_mtime_ns for f in ("done", "results.jsonl"))
        for name in names
    }


def _expected_jobs(root: Path, dataset: str, algorithms, n_hparams, steps, single, data_dir):
    """Job directory name -> training arguments, for the sweep the test launched."""
    args = make_args_list(
        n_trials=1,
        dataset_names=[dataset],
        algorithms=algorithms,
        n_hparams_from=0,
        n_hparams=n_hparams,
        steps=steps,
        data_dir=str(data_dir),
        task="domain_generalization",
        holdout_fraction=0.2,
        single_test_envs=single,
        hparams=None,
    )
    return {Path(Job(a, str(root)).output_dir).name: a for a in args}


def _check_each_job_ran_once(root: Path, expected: dict, last_step: int) -> None:
    """Every job is done, in the directory named after its arguments, with one run's records."""
    assert job_states(root) == (set(expected), set())
    for name, train_args in expected.items():
        records = reporting.read_results_file(str(root / name / "results.jsonl"))
        steps = [r["step"] for r in records]
        assert steps == sorted(set(steps)) and steps[-1] == last_step, (name, steps)
        for key in ("dataset", "algorithm", "test_envs", "hparams_seed", "trial_seed", "seed"):
            assert records[0]["args"][key] == train_args[key]


def _rows(report: str, method_name: str) -> list[str]:
    """The algorithm rows of every table of one selection method in a plain-text report."""
    sections = report.split("-------- ")
    return [
        line
        for section in sections
        if f"model selection method: {method_name}" in section
        for line in section.splitlines()[2:]
        if line.strip()
    ]


DEBUG_SWEEP = (
    "--datasets Debug28 --algorithms ERM IRM --n_hparams 2 --n_trials 1 --steps 3 "
    "--command_launcher local --max_parallel 2 --skip_confirmation"
).split()


def _start_in_new_session(root: Path, flags) -> subprocess.Popen:
    """Launch the sweep as its own session, so that the test can find and kill all of it."""
    return subprocess.Popen(
        sweep_cmd("launch", root, *flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
        start_new_session=True,
    )


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_killed_sweep_reruns_only_the_missing_jobs(tmp_path, sweep_main):
    """Debug28, ERM and IRM, 2 hparams, 1 trial, one test env per job, one step (12 jobs, 2 at
    a time): kill the sweep and its jobs once one job is done, delete the incomplete ones, launch
    again."""
    root = tmp_path / "sweep"
    flags = (
        "--datasets Debug28 --algorithms ERM IRM --n_hparams 2 --n_trials 1 "
        "--steps 1 --single_test_envs --command_launcher local --max_parallel 2 "
        "--skip_confirmation"
    ).split()
    n_jobs = 12
    proc = _start_in_new_session(root, flags)
    wait_for_done(root, 1, proc)
    kill_session(proc.pid)
    proc.wait(timeout=30)
    done, incomplete = job_states(root)
    assert len(done) >= 1 and len(done) + len(incomplete) <= n_jobs

    cleaned = sweep_main("delete_incomplete", root, *flags)
    assert f"About to delete {len(incomplete)} jobs." in cleaned.stdout
    assert job_states(root) == (done, set())
    before = _fingerprint(root, done)

    final = sweep_main("launch", root, *flags)
    assert final.returncode == 0, final.stdout + final.stderr
    assert f"About to launch {n_jobs - len(done)} jobs." in final.stdout
    assert f"All {n_jobs - len(done)} jobs exited successfully." in final.stdout
    assert _fingerprint(root, done) == before
    expected = _expected_jobs(root, "Debug28", ["ERM", "IRM"], 2, 1, True, "/data")
    assert len(expected) == n_jobs
    _check_each_job_ran_once(root, expected, last_step=0)


def test_a_held_job_lock_keeps_its_directory_until_the_holder_dies(tmp_path, capsys):
    job = Job({"dataset": "Debug28", "test_envs": [0]}, str(tmp_path))
    other = Job({"dataset": "Debug28", "test_envs": [1]}, str(tmp_path))
    for j in (job, other):
        os.makedirs(j.output_dir)
    assert not joblock.is_running(job.output_dir)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from domainbed.lib import joblock\n"
         f"with joblock.running({job.output_dir!r}):\n print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        assert joblock.is_running(job.output_dir)
        assert joblock.holder(job.output_dir).startswith(f"{holder.pid}@")
        with pytest.raises(joblock.JobRunning, match="in use by a running job"):
            with joblock.running(job.output_dir):
                pass
        assert Job.delete([job, other]) == [job]
        assert "Left alone, still running" in capsys.readouterr().out
        assert os.listdir(tmp_path) == [Path(job.output_dir).name]
    finally:
        holder.kill()
        holder.wait()
    assert not joblock.is_running(job.output_dir)
    assert Job.delete([job]) == [] and os.listdir(tmp_path) == []


def test_resume_incomplete_leaves_a_live_job_alone(tmp_path, sweep_main, submitted):
    out = tmp_path / "sweep"
    flags = [*DEBUG_FLAGS, "--command_launcher", "test_submit", "--skip_confirmation"]
    sweep_main("launch", out, *flags)
    live = sorted(out.iterdir())[0]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from domainbed.lib import joblock\n"
         f"with joblock.running({str(live)!r}):\n print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        resumed = sweep_main("launch", out, *flags, "--resume_incomplete")
    finally:
        holder.kill()
        holder.wait()
    assert f"Left alone, running elsewhere (pid@host {holder.pid}@" in resumed.stdout
    assert f"): {live}\n" in resumed.stdout
    assert "About to launch 5 jobs." in resumed.stdout and resumed.returncode == 0
    assert len(submitted) == 11 and not any(str(live) in c for c in submitted[6:])


@pytest.mark.slow  # half a minute of real jobs; the lock itself is tested just above
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_delete_spares_the_live_job_of_a_killed_launcher(tmp_path, sweep_main, capsys):
    """SIGKILL to the launcher alone leaves its running job alive (its own process group):
    `delete_incomplete` must leave that directory alone and say so, and delete it once the
    job has ended. A second run in the live directory is refused too."""
    root = tmp_path / "sweep"
    flags = (
        "--datasets Debug28 --algorithms ERM --n_hparams 1 --n_trials 1 --steps 1000000 "
        "--single_test_envs --command_launcher local --skip_confirmation"
    ).split()
    proc = _start_in_new_session(root, flags)
    deadline = time.monotonic() + 300
    while not [p for p in root.glob(f"*/{joblock.LOCK_NAME}") if p.read_text().strip()]:
        assert time.monotonic() < deadline and proc.poll() is None, "the job never started"
        time.sleep(0.1)
    (lock,) = [p for p in root.glob(f"*/{joblock.LOCK_NAME}") if p.read_text().strip()]
    live = lock.parent
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert joblock.is_running(str(live))

    refused = sweep_main("delete_incomplete", root, *flags)
    assert refused.returncode == 1
    assert "About to delete 3 jobs." in refused.stdout and "Deleted 2 jobs!" in refused.stdout
    assert f"Left alone, still running (pid@host {lock.read_text().strip()}): {live}" in (
        refused.stdout
    )
    assert "1 jobs are still running and were not deleted" in refused.stderr
    assert job_states(root) == (set(), {live.name})
    assert train.main(["--dataset", "Debug28", "--output_dir", str(live)]) == 2
    assert "is in use by a running job" in capsys.readouterr().err

    kill_session(proc.pid)  # the job ends
    cleaned = sweep_main("delete_incomplete", root, *flags)
    assert cleaned.returncode == 0 and "Deleted 1 jobs!" in cleaned.stdout
    assert list(root.iterdir()) == []


@pytest.mark.slow  # minutes of real jobs; make test-all runs it
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_real_sweep_interrupted_twice_then_completed(tmp_path, sweep_main):
    """Debug28, ERM and IRM, 2 hparams, 1 trial, one test env per job (12 jobs, 2 at a time):
    stop it with Ctrl-C, clean up and resume; kill it outright, clean up and resume. Every job
    must end up run exactly once, and the finished jobs must not be touched again."""
    root = tmp_path / "sweep"
    flags = [*DEBUG_SWEEP, "--single_test_envs"]
    n_jobs = 12

    # 1. Ctrl-C to the sweep process alone: it stops its own jobs and says what to do next.
    proc = _start_in_new_session(root, flags)
    wait_for_done(root, 1, proc)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    assert "`delete_incomplete` then `launch`" in output
    assert session_processes(proc.pid) == []
    done, incomplete = job_states(root)
    assert len(done) >= 1 and len(done) + len(incomplete) == n_jobs

    cleaned = sweep_main("delete_incomplete", root, *flags)
    assert f"About to delete {len(incomplete)} jobs." in cleaned.stdout
    assert job_states(root) == (done, set())

    # 2. SIGKILL to the sweep and all its jobs at once, as when the machine goes away.
    proc = _start_in_new_session(root, flags)
    wait_for_done(root, len(done) + 1, proc)
    kill_session(proc.pid)
    proc.wait(timeout=30)
    sweep_main("delete_incomplete", root, *flags)
    done, incomplete = job_states(root)
    assert incomplete == set() and 2 <= len(done) < n_jobs
    before = _fingerprint(root, done)

    # 3. Resume: only the missing jobs run; the finished ones are left as they were.
    final = run_sweep("launch", root, *flags)
    assert final.returncode == 0, final.stdout + final.stderr
    assert f"About to launch {n_jobs - len(done)} jobs." in final.stdout
    assert f"All {n_jobs - len(done)} jobs exited successfully." in final.stdout
    assert _fingerprint(root, done) == before
    expected = _expected_jobs(root, "Debug28", ["ERM", "IRM"], 2, 3, True, "/data")
    _check_each_job_ran_once(root, expected, last_step=2)

    again = sweep_main("launch", root, *flags)
    assert f"{n_jobs} jobs: {n_jobs} done, 0 incomplete, 0 not launched." in again.stdout
    assert "About to launch 0 jobs." in again.stdout

    # Single-test-env selection fills every cell; leave-one-out has no pair runs to use.
    report = collect_results.render_report(reporting.load_records(str(root)))
    for method in ("training-domain validation set", "test-domain validation set (oracle)"):
        rows = _rows(report, method)
        assert len(rows) == 4 and not any(" X " in f" {row} " for row in rows), rows
    loo_rows = _rows(report, "leave-one-domain-out cross-validation")
    assert len(loo_rows) == 4 and all(
        row.split()[1:] == ["X"] * (len(row.split()) - 1) for row in loo_rows
    )


@pytest.mark.slow
def test_real_full_sweep_fills_every_selection_method(tmp_path):
    """The same sweep with every pair of test envs (24 jobs): leave-one-out now has its
    validation runs, so all three methods fill every cell."""
    root = tmp_path / "sweep"
    result = run_sweep("launch", root, *DEBUG_SWEEP)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    expected = _expected_jobs(root, "Debug28", ["ERM", "IRM"], 2, 3, False, "/data")
    assert len(expected) == 24
    _check_each_job_ran_once(root, expected, last_step=2)
    report = collect_results.render_report(reporting.load_records(str(root)))
    for method in (
        "training-domain validation set",
        "leave-one-domain-out cross-validation",
        "test-domain validation set (oracle)",
    ):
        rows = _rows(report, method)
        assert len(rows) == 4 and not any(" X " in f" {row} " for row in rows), rows


@pytest.mark.slow
def test_real_rotated_mnist_sweep(tmp_path, mnist_dir):
    """RotatedMNIST built from real MNIST, ERM and IRM with default hyperparameters, one test
    env per job, one training step (12 jobs; each evaluates all 70,000 images, minutes on CPU)."""
    root = tmp_path / "sweep"
    flags = (
        "--datasets RotatedMNIST --algorithms ERM IRM --n_hparams 1 --n_trials 1 --steps 1 "
        "--single_test_envs --command_launcher local --max_parallel 2 "
        "--skip_confirmation"
    ).split()
    result = run_sweep("launch", root, *flags, data_dir=mnist_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    expected = _expected_jobs(root, "RotatedMNIST", ["ERM", "IRM"], 1, 1, True, mnist_dir)
    _check_each_job_ran_once(root, expected, last_step=0)
    records = reporting.load_records(str(root))
    assert len(records) == 12
    assert all(
        0.0 <= r[f"env{e}_{split}_acc"] <= 1.0
        for r in records
        for e in range(6)
        for split in ("in", "out")
    )
    report = collect_results.render_report(records)
    rows = _rows(report, "training-domain validation set")
    assert [row.split()[0] for row in rows] == ["ERM", "IRM", "ERM", "IRM"]
    assert not any(" X " in f" {row} " for row in rows)
