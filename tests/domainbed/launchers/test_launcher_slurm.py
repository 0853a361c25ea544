"""The `slurm` launcher on a real one-node Slurm cluster (tools/slurm_local.sh up): real
sweeps submitted as job arrays through submitit, one job cancelled with `scancel`, one
preempted with submitit's signal and one requeued by Slurm, each resumed job ending exactly as
an uninterrupted run; no-wait submission that never submits a job twice; bad settings refused
before any job directory exists.

The tests that need the cluster are slow: they bring it up themselves (about 25 s from nothing,
apt included, on the project's 2-core machine) and fail, never skip, if it cannot come up.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from launcher_checks import (
    REPO_ROOT,
    SMALL_SWEEP,
    assert_launch_refused,
    done_jobs,
    environ_with,
    fingerprint,
    job_dirs,
    run_sweep,
    training_records,
)

from domainbed.launchers.launcher import report
from domainbed.launchers.slurm import (
    JOBS_RECORD,
    LOG_DIR_NAME,
    QueueState,
    ShellJob,
    _finished,
    _Submitted,
    gpus_in_gres,
    parse_sbatch_options,
    queue_states,
)
from domainbed.scripts.sweep import Job, make_args_list

SLURM_ENV = {
    "DOMAINBED_SLURM_PARTITION": "debug",
    "DOMAINBED_SLURM_CPUS": "1",
    "DOMAINBED_SLURM_GPUS": "0",
    "DOMAINBED_SLURM_MEM": "2G",
    "DOMAINBED_SLURM_TIME": "60",
    "DOMAINBED_SLURM_POLL_S": "1",
    "DOMAINBED_SLURM_NO_WAIT": None,
    # One thread per job, as a one-CPU allocation should be; the reference runs use the same.
    "OMP_NUM_THREADS": "1",
}
# Checkpoints at steps 0 and 100 and the last one: a job stopped after its step-100 checkpoint
# resumes at step 101.
STEPS = 200
SLURM_SWEEP = [*SMALL_SWEEP, "--steps", str(STEPS), "--command_launcher", "slurm"]
TIMEOUT_S = 900


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    script = REPO_ROOT / "tools" / "slurm_local.sh"
    result = subprocess.run([str(script), "up"], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(
            f"no Slurm cluster for the slurm launcher's tests: `{script} up` exited with "
            f"{result.returncode}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}",
            pytrace=False,
        )


# ------------------------------------------------------------------ helpers


def _slurm(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout


def _state(job_id: str) -> str:
    """The job's state as squeue shows it, "" once Slurm has forgotten it."""
    queued = queue_states().get(job_id)
    return queued.state if queued is not None else ""


def _n_records(job_dir: Path) -> int:
    path = job_dir / "results.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _slurm_ids(root: Path) -> dict[str, str]:
    """Job directory name -> Slurm job id, from the launcher's record."""
    path = root / LOG_DIR_NAME / JOBS_RECORD
    if not path.exists():
        return {}
    pairs = (line.split("\t") for line in path.read_text().splitlines())
    return {Path(job_dir).name: job_id for job_id, job_dir in pairs}


def _until(condition, what: str, timeout: float = TIMEOUT_S, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the sweep exited while waiting for {what}:\n{out[-3000:]}{err[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _release_when_requeued(job_id: str) -> None:
    """A requeued job waits two minutes before it may start again: let it start as soon as
    Slurm can start it.

    Requeuing revokes the job's credential on the node, and slurmd refuses to launch the job
    again with a credential issued in the same second as, or before, the revocation: Slurm then
    fails the job for good ("Killing non-startable batch JobId=...: Job credential revoked"),
    which its two-minute delay exists to prevent. The revocation happened before the job shows
    as PENDING (the node's cleanup of the stopped run, which revokes first, ends COMPLETING),
    so the job is released once the clock has reached the next whole second.
    """
    _until(lambda: _state(job_id) == "PENDING", f"job {job_id} to be requeued")
    revoked_by = int(time.time())
    _until(lambda: int(time.time()) > revoked_by,
           f"the second after job {job_id}'s credential was revoked")
    _slurm("scontrol", "update", f"JobId={job_id}", "StartTime=now")


def _reference_records(names: set[str], root: Path) -> dict[str, list[dict]]:
    """The same jobs run straight through, without Slurm, for comparison."""
    args = make_args_list(
        n_trials=1, dataset_names=["Debug28"], algorithms=["ERM"], n_hparams_from=0,
        n_hparams=1, steps=STEPS, data_dir="/data", task="domain_generalization",
        holdout_fraction=0.2, single_test_envs=True, hparams='{"batch_size": 8}',
    )
    jobs = [Job(a, str(root)) for a in args]
    assert {Path(job.output_dir).name for job in jobs} == names
    env = environ_with({"OMP_NUM_THREADS": "1"})
    runs = [subprocess.Popen(job.command_str, shell=True, cwd=REPO_ROOT, env=env,
                             stdout=subprocess.DEVNULL) for job in jobs]
    assert [run.wait(timeout=TIMEOUT_S) for run in runs] == [0] * len(runs)
    return training_records(root)


def _steps(records: list[dict]) -> list[int]:
    return [record["step"] for record in records]


# ------------------------------------------------------------------ cluster tests


@pytest.mark.slow
def test_cancelled_preempted_and_requeued_jobs(tmp_path, slurm_cluster):
    """Three jobs in one array, two at a time: the first to checkpoint is cancelled with
    scancel; another gets submitit's preemption signal after its step-100 checkpoint; the third
    is requeued by `scontrol requeue` after its step-100 checkpoint. The sweep reports the
    cancelled one; the other two resume at step 101 and end exactly as uninterrupted runs. A
    relaunch then runs only the cancelled job, which resumes from its own checkpoint."""
    root = tmp_path / "sweep"
    env = SLURM_ENV
    proc = subprocess.Popen(
        [sys.executable, "-m", "domainbed.scripts.sweep", "launch", "--output_dir", str(root),
         *SLURM_SWEEP],
        cwd=REPO_ROOT, env=environ_with(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    ids = _until(lambda: len(_slurm_ids(root)) == 3 and _slurm_ids(root), "3 submitted jobs",
                 proc=proc)
    assert len({job_id.split("_")[0] for job_id in ids.values()}) == 1  # one job array

    def first_with(n: int, exclude: set[str]) -> str | None:
        return next((name for name in sorted(ids) if name not in exclude
                     and _n_records(root / name) >= n), None)

    cancelled = _until(lambda: first_with(1, set()), "a first checkpoint", proc=proc)
    _slurm("scancel", ids[cancelled])
    preempted = _until(lambda: first_with(2, {cancelled}), "a step-100 checkpoint", proc=proc)
    _slurm("scancel", "--signal=USR2", ids[preempted])  # what Slurm sends before preempting
    _release_when_requeued(ids[preempted])
    (requeued,) = set(ids) - {cancelled, preempted}
    _until(lambda: _n_records(root / requeued) >= 2, "the third job's step-100 checkpoint",
           proc=proc)
    _slurm("scontrol", "requeue", ids[requeued])
    _release_when_requeued(ids[requeued])

    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    assert "1 of 3 jobs failed:" in out
    failure = next(line for line in out.splitlines()
                   if line.startswith("  ") and f"--output_dir {root / cancelled} " in line)
    assert "CANCELLED" in failure, out
    assert done_jobs(root) == {preempted, requeued}

    for name in (preempted, requeued):
        log = (root / name / "out.txt").read_text()
        assert "Resuming from step 101" in log, (name, log[-2000:])
        assert _steps(training_records(root)[name]) == [0, 100, STEPS - 1]

    # Relaunch: only the cancelled job runs, carrying on from its last checkpoint.
    before = fingerprint(root, [preempted, requeued])
    again = run_sweep("launch", root, *SLURM_SWEEP, "--resume_incomplete", env=env,
                      timeout=TIMEOUT_S)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "About to launch 1 jobs." in again.stdout
    assert "All 1 jobs exited successfully." in again.stdout
    assert fingerprint(root, [preempted, requeued]) == before
    assert done_jobs(root) == job_dirs(root) == set(ids)
    assert "Resuming from step" in (root / cancelled / "out.txt").read_text()

    # Every job, however often it was stopped, ends exactly as a run that never stopped.
    assert training_records(root) == _reference_records(set(ids), tmp_path / "reference")


@pytest.mark.slow
def test_no_wait_submission_is_never_submitted_twice(tmp_path, slurm_cluster):
    """With --no_wait the sweep returns once the array is queued (one job at a time:
    DOMAINBED_SLURM_ARRAY_PARALLELISM=1), leaving the job ids in .slurm/jobs.tsv. Launching
    again (DOMAINBED_SLURM_NO_WAIT=1 this time) with --resume_incomplete while some are still
    queued submits nothing; the jobs finish on their own, each run once."""
    root = tmp_path / "sweep"
    env = {**SLURM_ENV, "DOMAINBED_SLURM_ARRAY_PARALLELISM": "1"}
    first = run_sweep("launch", root, *SLURM_SWEEP, "--no_wait", env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "Not waiting" in first.stdout
    ids = _slurm_ids(root)
    assert set(ids) == job_dirs(root) and len(ids) == 3
    (array,) = {job_id.split("_")[0] for job_id in ids.values()}
    assert "#SBATCH --array=0-2%1\n" in (root / LOG_DIR_NAME / f"{array}_submission.sh").read_text()

    again = run_sweep("launch", root, *SLURM_SWEEP, "--resume_incomplete",
                      env={**env, "DOMAINBED_SLURM_NO_WAIT": "1"})
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    queued = int(again.stdout.split("About to launch ")[1].split()[0])
    assert queued >= 1, "no job was left queued when the sweep was launched again"
    assert f"{queued} jobs still have a Slurm job queued or running; not submitted again" in (
        again.stdout)
    assert _slurm_ids(root) == ids  # nothing new submitted

    _until(lambda: done_jobs(root) == set(ids), "the queued jobs to finish")
    _until(lambda: all(_state(job_id) == "COMPLETED" for job_id in ids.values()),
           "Slurm to record the jobs as completed")
    for records in training_records(root).values():
        assert _steps(records) == [0, 100, STEPS - 1]
    assert "Resuming" not in "".join((root / n / "out.txt").read_text() for n in ids)


@pytest.mark.slow
def test_unknown_partition_is_refused_before_any_job_directory(tmp_path, slurm_cluster):
    root = tmp_path / "sweep"
    result = run_sweep("launch", root, *SLURM_SWEEP,
                       env={**SLURM_ENV, "DOMAINBED_SLURM_PARTITION": "nosuchpartition"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2
    assert lines == [
        "sweep: error: unknown Slurm partition 'nosuchpartition': set DOMAINBED_SLURM_PARTITION to "
        "one of debug"
    ]
    assert not root.exists()


# ------------------------------------------------------------------ without a cluster


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"DOMAINBED_SLURM_SBATCH": "-A lab"}, "DOMAINBED_SLURM_SBATCH takes long options"),
        ({"DOMAINBED_SLURM_TIME": "0"}, "DOMAINBED_SLURM_TIME must be an integer >= 1"),
        ({"DOMAINBED_SLURM_MEM": "lots"}, "DOMAINBED_SLURM_MEM must be a size such as 32G"),
        ({"DOMAINBED_SLURM_NO_WAIT": "maybe"}, "DOMAINBED_SLURM_NO_WAIT must be 1 or 0"),
    ],
)
def test_bad_slurm_settings_are_refused_before_any_job_directory(
    tmp_path, monkeypatch, capsys, settings, message
):
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    assert_launch_refused(tmp_path / "sweep", SLURM_SWEEP, capsys, message)


def test_sbatch_options_and_gpu_counts_are_read_as_slurm_writes_them():
    assert parse_sbatch_options("--account=lab --qos='high prio' --exclusive") == {
        "account": "lab", "qos": "high prio", "exclusive": True,
    }
    assert [gpus_in_gres(g) for g in ("(null)", "gpu:4", "gpu:a100:8(S:0-1)", "gpu:2,mps:100",
                                      "mps:100", "gpu")] == [0, 4, 8, 2, 0, 1]


def _run_to_the_end(command: str, folder: Path, run: int, monkeypatch) -> _Submitted:
    """`command` run as the slurm launcher's job runs on a node, through submitit (its local
    executor, so no Slurm), as the given run of its job: it leaves a real result file."""
    import submitit

    monkeypatch.setenv("SLURM_RESTART_COUNT", str(run - 1))
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=5)
    job = executor.submit(ShellJob(command, str(folder)))
    _until(job.done, f"the local run of {command!r}", timeout=120)
    return _Submitted(command, job)


def test_a_failure_left_by_a_requeued_run_is_not_the_jobs_outcome(tmp_path, monkeypatch, capsys):
    """A run that Slurm stops and requeues leaves its failure in the job's result file. The
    launcher waits while a later run is coming, and once Slurm says the job has ended, that
    failure stands only if it came from the job's last run: a job Slurm failed or cancelled
    after requeuing it ended without a result (Slurm could not start it again, say)."""
    first = _run_to_the_end("exit 3", tmp_path / "first", 1, monkeypatch)
    second = _run_to_the_end("exit 4", tmp_path / "second", 2, monkeypatch)
    succeeded = _run_to_the_end("true", tmp_path / "succeeded", 1, monkeypatch)

    def outcome(entry: _Submitted, state: str, requeues: int):
        return _finished(entry, {entry.job.job_id: QueueState(state, requeues)})

    assert outcome(first, "PENDING", 1) is None
    assert outcome(first, "RUNNING", 1) is None
    assert outcome(first, "FAILED", 0).failure == "exit status 3"
    assert outcome(first, "CANCELLED", 0).failure == "exit status 3 (CANCELLED)"
    stale = outcome(first, "FAILED", 1)
    assert stale.failure == (
        "ended without a result (FAILED after 1 requeue; run 1 had exit status 3)")
    assert outcome(first, "CANCELLED", 2).failure == (
        "ended without a result (CANCELLED after 2 requeues; run 1 had exit status 3)")
    assert outcome(second, "FAILED", 1).failure == "exit status 4"
    assert outcome(succeeded, "COMPLETED", 1).failure is None
    assert any("JobFailed: exit status 3 in run 1" in line for line in stale.log_tail)

    failed = report([stale, outcome(second, "FAILED", 1), outcome(succeeded, "COMPLETED", 0)])
    assert failed == ["exit 3", "exit 4"]
    out = capsys.readouterr().out
    assert out.startswith("2 of 3 jobs failed:\n  ended without a result (FAILED after 1 requeue;")
    assert "\n  exit status 4: exit 4\n" in out
