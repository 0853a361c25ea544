"""The `ray` launcher on a real local Ray instance: a real sweep gives the same job directories
and the same results as the `local` launcher, a relaunch runs only what is missing, failures
are reported with their stderr, and bad settings are refused before any job directory exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
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
    processes_mentioning,
    run_sweep,
    training_records,
)

from domainbed import command_launchers

# A small local instance: this machine's two cores, a small object store, no dashboard. One
# torch thread per job under both launchers, so that both compute the same floats.
RAY_ENV = {
    "OMP_NUM_THREADS": "1",
    "DOMAINBED_RAY_NUM_CPUS": "2",
    "DOMAINBED_RAY_OBJECT_STORE_MB": "100",
    "DOMAINBED_RAY_ADDRESS": None,
    "RAY_ADDRESS": None,
}
RAY_SWEEP = [*SMALL_SWEEP, "--steps", "2", "--command_launcher", "ray"]


@pytest.fixture()
def ray_env(monkeypatch):
    for name, value in RAY_ENV.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def local_records(tmp_path_factory) -> dict[str, list[dict]]:
    """The small sweep's records under the `local` launcher, to compare the Ray runs with."""
    root = tmp_path_factory.mktemp("local") / "sweep"
    local = run_sweep("launch", root, *SMALL_SWEEP, "--steps", "2", "--command_launcher",
                      "local", "--max_parallel", "2", env=RAY_ENV)
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-2000:]
    records = training_records(root)
    assert len(records) == 3 and done_jobs(root) == set(records)
    assert all([r["step"] for r in job] == [0, 1] for job in records.values())
    return records


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray cluster of one node, started with `ray start --head` as on a head node, with
    token authentication; its address. Stopped with SIGTERM, as `ray start --block` expects."""
    port = _closed_port()
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
         f"--port={port}", "--num-cpus=2", "--object-store-memory=100000000",
         "--include-dashboard=false", "--disable-usage-stats"],
        env=environ_with({**RAY_ENV, "RAY_AUTH_MODE": "token"}),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, head.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "the Ray head did not start"
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


@pytest.mark.slow  # 90 s on the project's 2-core machine shared with other work; make test-all
def test_ray_sweep_matches_local_sweep_and_reruns_only_what_is_missing(tmp_path, local_records):
    ray_root = tmp_path / "ray"
    ran = run_sweep("launch", ray_root, *RAY_SWEEP, env=RAY_ENV)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert "All 3 jobs exited successfully." in ran.stdout

    # Same job directories (named by the arguments' hash), all done, same records step by step.
    assert job_dirs(ray_root) == done_jobs(ray_root) == set(local_records)
    assert training_records(ray_root) == local_records

    # Lose one job: the relaunch runs it alone and leaves the finished ones untouched.
    lost, *kept = sorted(job_dirs(ray_root))
    shutil.rmtree(ray_root / lost)
    before = fingerprint(ray_root, kept)
    again = run_sweep("launch", ray_root, *RAY_SWEEP, env=RAY_ENV)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "About to launch 1 jobs." in again.stdout
    assert "All 1 jobs exited successfully." in again.stdout
    assert fingerprint(ray_root, kept) == before
    assert training_records(ray_root) == local_records


@pytest.mark.slow
def test_ray_sweep_on_a_running_cluster_given_by_address(tmp_path, ray_cluster, local_records):
    """The sweep connects to the cluster (no Ray instance of its own) and gets the same
    results; the address is checked, and the connection made, before any job directory."""
    root = tmp_path / "sweep"
    env = {**RAY_ENV, "DOMAINBED_RAY_ADDRESS": ray_cluster, "RAY_AUTH_MODE": "token"}
    ran = run_sweep("launch", root, *RAY_SWEEP, env=env)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert "All 3 jobs exited successfully." in ran.stdout
    assert training_records(root) == local_records


def test_ray_launcher_reports_failed_jobs_with_their_stderr(ray_env, capsys):
    """Real shell commands as Ray tasks, one at a time: the failed one is returned and shown
    with the end of its stderr; the successful one's side effect happened."""
    launcher = command_launchers.REGISTRY["ray"]
    failing = "echo 'first line' >&2; echo 'it broke' >&2; exit 3"
    failed = launcher(["echo ran > ran.txt && rm ran.txt", failing], max_parallel=1)
    assert failed == [failing]
    out = capsys.readouterr().out
    assert "1 of 2 jobs failed:" in out
    assert f"  exit status 3: {failing}" in out
    assert "    | first line\n    | it broke" in out


@pytest.mark.slow
def test_sigterm_cancels_the_tasks_and_stops_their_jobs(tmp_path):
    """SIGTERM to a sweep whose jobs are mid-run on a local Ray instance: the sweep exits as
    the local launcher's does (status 130, incomplete jobs left to rerun) and no training
    process of the sweep is left."""
    root = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "domainbed.scripts.sweep", "launch", "--output_dir", str(root),
         *SMALL_SWEEP, "--steps", "400", "--command_launcher", "ray"],
        cwd=REPO_ROOT, env=environ_with(RAY_ENV), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 600
    while len(list(root.glob("*/results.jsonl"))) < 2:  # two jobs past their first step
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    assert processes_mentioning(str(root))
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, out[-3000:]
    assert "`delete_incomplete` then `launch` reruns them" in out
    assert processes_mentioning(str(root)) == []
    assert done_jobs(root) == set()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"DOMAINBED_RAY_ADDRESS": "127.0.0.1:{port}"}, "cannot reach a Ray cluster at 127.0.0.1:"),
        ({"DOMAINBED_RAY_ADDRESS": "headnode"}, "must look like host:port"),
        ({"DOMAINBED_RAY_CPUS_PER_JOB": "many"}, "DOMAINBED_RAY_CPUS_PER_JOB must be a number"),
        ({"DOMAINBED_RAY_CPUS_PER_JOB": "64"}, "no Ray node has 64 CPUs"),
    ],
)
def test_bad_ray_settings_are_refused_before_any_job_directory(
    tmp_path, ray_env, monkeypatch, capsys, settings, message
):
    for name, value in settings.items():
        monkeypatch.setenv(name, value.format(port=_closed_port()))
    assert_launch_refused(tmp_path / "sweep", RAY_SWEEP, capsys, message)


def test_unreachable_ray_address_from_the_shell(tmp_path):
    """The same refusal as users see it: one line, exit status 2, nothing created."""
    root = tmp_path / "sweep"
    address = f"127.0.0.1:{_closed_port()}"
    result = run_sweep("launch", root, *RAY_SWEEP,
                       env={**RAY_ENV, "DOMAINBED_RAY_ADDRESS": address})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("sweep: ")
    assert f": cannot reach a Ray cluster at {address} (" in lines[0]
    assert not root.exists()
